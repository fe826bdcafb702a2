"""CLI: ``publish`` (a systemd-sysupdate feed from built images) and ``sign-feed``."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import InputError
from . import clikit


def cmd_publish(args) -> int:
    from ..release.feed import publish

    clikit.preflight("publish", features=set() if args.unsigned else {"sign"})
    index = publish(args.images, args.feed, args.url, read=built_image,
                    gnupghome=args.gnupghome, key=args.key, unsigned=args.unsigned,
                    instances=args.instances_max, compress=args.compress,
                    features=args.features)
    if args.compress == "zstd":
        print("warning: .raw.zst needs systemd 262+ on hosts (254 and 257 install the zstd "
              "bytes undecompressed; install --feed refuses them); --compress xz works with "
              "254+", file=sys.stderr)
    if args.json:  # the envelope (pipeline/commands/clikit.py) around index.json's content
        return clikit.emit(args, {"feed": str(args.feed), "index": index})
    else:
        for image in index["images"]:
            print(f"{args.feed}/{image['file']} ({image['version']}, sha256 "
                  f"{image['sha256'][:16]}…)", file=sys.stderr)
        print(f"{'signed' if index['signed'] else 'UNSIGNED (run sign-feed)'}: "
              f"{args.feed}/SHA256SUMS; set a host up with `sysext-pipeline install --feed "
              f"{index['url']}` (or install {args.feed}/sysupdate.d/NAME.transfer (systemd >= "
              "257) or sysupdate.d/legacy/NAME.conf and import-pubring.gpg as "
              "/etc/systemd/import-pubring.gpg)", file=sys.stderr)
    return 0


def built_image(path: Path):
    """What publish needs of ``NAME.raw`` or ``NAME.manifest.json``, read through the manifest
    model (pipeline/stages/manifest.py: the whole manifest checked, one error naming the file
    and field); release/feed.py gets it as a plain :class:`~pipeline.release.feed.Built`."""
    import hashlib
    import os

    from ..outdir import MAX_MANIFEST, read_entry
    from ..release.feed import Built
    from ..stages import manifest as manifest_mod

    path = Path(path)
    manifest_path = path if path.name.endswith(".manifest.json") else \
        path.with_name(path.name.removesuffix(".raw") + ".manifest.json")
    data = read_entry(manifest_path.parent, manifest_path.name, MAX_MANIFEST)
    if data is None:
        if not os.path.lexists(manifest_path):
            raise InputError(str(manifest_path), "no such manifest",
                             "publish takes NAME.raw or NAME.manifest.json from a build")
        raise InputError(str(manifest_path), f"not a regular file (a symlink?) or over "
                         f"{MAX_MANIFEST} bytes", "publish reads only regular files")
    model = manifest_mod.read(manifest_path, data)
    return Built(
        image=manifest_path.with_name(Path(model.image.file).name), manifest_path=manifest_path,
        manifest_sha256=hashlib.sha256(data).hexdigest(), name=model.name,
        version=model.version, kind=model.kind, format=model.image.format,
        sha256=model.image.sha256,
        architecture=model.extension_release.fields.get("ARCHITECTURE"),
        sbom=(model.sbom.file, model.sbom.sha256) if model.sbom else None,
        provenance=model.provenance.file if model.provenance else None)


def cmd_sign_feed(args) -> int:
    from ..release.feed import sign_feed

    clikit.preflight("sign-feed", features=({"sign"} if args.gnupghome else set())
                     | ({"check"} if args.signature else set()))
    sign_feed(args.feed, gnupghome=args.gnupghome, key=args.key, signature=args.signature,
              keyring=args.keyring)
    print(f"signed {args.feed}/SHA256SUMS → SHA256SUMS.gpg", file=sys.stderr)
    if args.json:
        return clikit.emit(args, {"feed": str(args.feed),
                                  "signature": str(args.feed / "SHA256SUMS.gpg")})
    return 0


def _download(url: str, dest: Path, limit: int) -> None:
    """A feed file, downloaded as every other download is (pipeline/sources/fetch.py: the
    --timeout wait, retries with a line each; at most ``limit`` bytes)."""
    from ..sources.fetch import http_download

    http_download(url, dest, max_size=limit, recorded_by="a feed file may have")


def cmd_install_feed(args) -> int:
    """``install --feed FEED``: set the host (or --root) up to update from a feed."""
    from ..host import facts as hostmod
    from ..release.feed import host_setup

    given = [option for option, value in (
        ("--runtime", getattr(args, "runtime", False)), ("--force", getattr(args, "force", False)), ("--kind", getattr(args, "kind", None)),
        ("--refresh", getattr(args, "refresh", False)),
        ("--no-refresh", getattr(args, "no_refresh", False))) if value]
    if given:  # they are about placing an image; a feed's versions are placed by sysupdate
        raise InputError(given[0], "does not apply to install --feed",
                         "install --feed writes transfer files, the key and directories; "
                         "systemd-sysupdate places the images")
    root = Path(args.root) if args.root else None
    host = hostmod.detect(root, systemd=args.systemd)
    done = host_setup(args.image, host.base, host.version[0], download=_download)
    where = f" in {root}" if root else ""
    for path in done["written"]:
        print(f"wrote {path}{where}", file=sys.stderr)
    for path in done["removed"]:
        print(f"removed {path}{where} (the other layout: both would be read)", file=sys.stderr)
    warnings = []
    if root is not None and done["legacy"]:
        warnings.append(f"systemd {done['systemd']}'s systemd-sysupdate must run on the host "
                        "itself, not with --root: with --root it follows the CurrentSymlink "
                        "and turns the previous version into a link instead of retargeting "
                        "NAME.raw (seen with 254)")
    if done["new_key_fingerprints"]:
        warnings.append(f"the release key was taken from the feed ({done['key']}, fingerprint "
                        f"{', '.join(done['new_key_fingerprints'])}): compare it with the "
                        "release machine's, or put that key into /etc/systemd/import-pubring.gpg "
                        "before install --feed")
    if not done["written"] and not done["removed"]:
        print(f"already set up{where}: nothing changed", file=sys.stderr)
    enabled = None
    if getattr(args, "enable", False):  # the timer fetches; the merge service applies at boot
        from .. import tools

        units = ["systemd-sysupdate.timer", *(hostmod.UNITS[k] for k in done["kinds"])]
        tools.run("systemctl", [*([f"--root={root}"] if root else []), "enable", *units],
                  what="enabling " + " ".join(units))
        print(f"enabled {', '.join(units)}{where}", file=sys.stderr)
        enabled = True
    print(f"systemd {host.version[0]} ({done['layout']}): `systemd-sysupdate update` installs "
          f"the newest version from {done['url']}; systemd-sysupdate.timer does it regularly "
          "(install --feed --enable), merged at the next boot or `systemd-sysext refresh`",
          file=sys.stderr)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:  # install's members (the first transfer file as "installed") and the setup
        return clikit.emit(args, {"installed": done["transfers"][0], "kind": done["kinds"][0],
                                  "name": done["extensions"][0], "previous": done["removed"],
                                  "refreshed": False, "enabled": enabled, "visible": [],
                                  "warnings": warnings, "check": {}, "feed": done})
    return 0


def register(sub) -> None:
    p = sub.add_parser("publish", help="add built images to a systemd-sysupdate feed directory "
                       "(versioned names, SHA256SUMS + OpenPGP signature, transfer files, "
                       "index.json)")
    p.add_argument("images", type=Path, nargs="+", help="NAME.raw or NAME.manifest.json")
    p.add_argument("--feed", type=Path, required=True, help="the feed directory (created)")
    p.add_argument("--url", required=True, help="where hosts fetch the feed (http(s) URL)")
    clikit.add_gnupg(p)
    p.add_argument("--unsigned", action="store_true", help="leave SHA256SUMS unsigned (sign it "
                   "later with sign-feed, e.g. on an offline machine)")
    p.add_argument("--instances-max", type=int, default=2, metavar="N",
                   help="versions a host keeps (InstancesMax=, default 2)")
    p.add_argument("--compress", choices=("none", "xz", "zstd"), default="none",
                   help="feed files NAME_VERSION_ARCH.raw.xz / .raw.zst (the same bytes each "
                   "time; systemd-pull decompresses them; one choice per extension and feed)")
    p.add_argument("--features", action="store_true", help="each extension is also an "
                   "optional feature (sysupdate.d/NAME.feature, Features= in NAME.transfer; "
                   "systemd >= 257): a host disables it with a drop-in Enabled=false")
    clikit.add_json(p)  # {"feed", "index": index.json's content} in the envelope
    p.set_defaults(func=cmd_publish)

    s = sub.add_parser("sign-feed", help="sign a feed's SHA256SUMS (publish --unsigned): with a "
                       "key, or a detached signature made elsewhere, checked first")
    s.add_argument("feed", type=Path, help="the feed directory `publish --unsigned` wrote")
    clikit.add_gnupg(s)
    s.add_argument("--signature", type=Path, help="SHA256SUMS.gpg made elsewhere (gpg "
                   "--detach-sign SHA256SUMS)")
    s.add_argument("--keyring", type=Path, help="public key to check --signature with "
                   "(default: the feed's import-pubring.gpg)")
    clikit.add_json(s)
    s.set_defaults(func=cmd_sign_feed)
