"""CLI: ``keys generate``, ``sign``, ``inspect`` — the signing side of DDIs and detached verity."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import VERDICT, InputError
from . import clikit

DEFAULT_KEY, DEFAULT_CERT = Path("keys/release.key"), Path("keys/release.crt")


def _passphrase_args(p) -> None:
    p.add_argument("--passphrase-env", metavar="VAR", help="environment variable holding the "
                   "key's passphrase")
    p.add_argument("--passphrase-file", type=Path, metavar="FILE", help="file holding it")


def cmd_keys_generate(args) -> int:
    from ..keys import generate, read_passphrase

    if args.openpgp is not None:  # the feed's OpenPGP key (pipeline/release/feed.py)
        from ..release.feed import generate_openpgp

        fpr = generate_openpgp(args.openpgp, args.subject.removeprefix("CN="))
        print(f"OpenPGP key {fpr} in {args.openpgp} (mode 0700; no passphrase: keep the "
              "directory private or offline)", file=sys.stderr)
        if args.json:
            return clikit.emit(args, {"key": str(args.openpgp), "cert": None,
                                      "encrypted": False, "fingerprint": fpr,
                                      "openpgp": True})
        return 0

    passphrase = read_passphrase(args.passphrase_env, args.passphrase_file)
    signer = generate(args.key, args.cert, subject=args.subject, days=args.days,
                      passphrase=passphrase)
    print(f"key  {args.key} (mode 0600{', encrypted' if passphrase else ''})", file=sys.stderr)
    print(f"cert {args.cert} (sha256 {signer.fingerprint})", file=sys.stderr)
    print("install the certificate on hosts as /etc/verity.d/NAME.crt to trust signed images",
          file=sys.stderr)
    if args.json:
        return clikit.emit(args, {"key": str(args.key), "cert": str(args.cert),
                                  "encrypted": bool(passphrase),
                                  "fingerprint": signer.fingerprint})
    return 0


def cmd_sign(args) -> int:
    from ..image.ddi import sign_ddi, sign_detached
    from ..image.ddi.gpt import has_gpt
    from ..keys import load_signer, read_passphrase

    image = args.image
    if not image.exists():
        raise InputError(str(image), "no such file")
    if not image.is_file():
        raise InputError(str(image), "not a regular file", "sign takes an image file")
    signer = None
    if args.signature is None:
        if args.key is None or args.cert is None:
            raise InputError("sign", "needs --key and --cert, or --signature and --cert")
        signer = load_signer(args.key, args.cert,
                             read_passphrase(args.passphrase_env, args.passphrase_file))
    elif args.cert is None:
        raise InputError("sign", "--signature needs --cert (to check it before writing)")
    options = {"signer": signer, "p7s": args.signature, "cert": args.cert, "replace": args.force}
    manifest = _read_manifest(image)  # a manifest that is not one refuses before any signing
    if not has_gpt(image):
        found = sign_detached(image, **options)
        fmt, signature_file, sha256 = "verity", str(found.signature_path), None
        line = f"signed {found.roothash_path} → {found.signature_path}"
    else:
        found = sign_ddi(image, **options)
        fmt, signature_file, sha256 = "ddi", None, found.sha256
        line = f"signed {image}"
    _update_manifest(manifest, fmt, found, signer)
    _warn(found.warnings)
    print(f"{line}: root hash {found.root_hash}, certificate {found.certificate_fingerprint}"
          + (f", sha256 {sha256}" if sha256 else ""), file=sys.stderr)
    if args.json:
        return clikit.emit(args, {
            "image": str(image), "format": fmt, "root_hash": found.root_hash,
            "certificate_fingerprint": found.certificate_fingerprint,
            "signature_file": signature_file, "sha256": sha256, "warnings": list(found.warnings)})
    return 0


def _warn(warnings) -> None:
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


def _read_manifest(image: Path):
    """(path, model) of NAME.manifest.json next to ``image``, read through the model
    (pipeline/stages/manifest.py), or None when there is none."""
    from ..stages import manifest as mf

    path = image.with_name(image.name.removesuffix(".raw") + ".manifest.json")
    if not path.exists() and not path.is_symlink():
        return None
    return path, mf.read(path)


def _update_manifest(found, section: str, signed, signer=None) -> None:
    """Keep NAME.manifest.json (``found``: from :func:`_read_manifest`) true after signing, so
    that it equals a signed build's: the model's ``signed_ddi``/``signed_verity`` with what
    ``sign`` read back (``signed``: a DdiInfo or an assemble.DetachedVerity), then the SBOM
    and provenance. A manifest that describes another root hash (a different build next to
    this image) is left alone, with a warning."""
    from ..release import provenance
    from ..stages import manifest as mf

    if found is None:
        return
    path, manifest = found
    part = manifest.ddi if section == "ddi" else manifest.verity
    recorded = part.root_hash if part is not None else None
    if recorded != signed.root_hash:
        _warn([f"{path}: not updated: it records root hash {recorded}, the image has "
               f"{signed.root_hash}"])
        return
    if section == "ddi":
        manifest.signed_ddi(signed)
    else:
        manifest.signed_verity(signed)
    data = manifest.to_json()
    provenance.after_signing(path.parent, data, signer)  # SBOM + provenance (W3)
    manifest = mf.Manifest.from_json(data, str(path))  # what it changed, checked like a read
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(manifest.dumps())
    tmp.replace(path)


def cmd_inspect(args) -> int:
    from ..image.ddi import inspect_image

    clikit.preflight("inspect", [args.image])  # its readers, before any work
    report = inspect_image(args.image, cert=args.cert)
    problems = report["problems"]
    if args.json:
        error = {"message": f"{len(problems)} problem{'s' if len(problems) > 1 else ''}: "
                            f"{problems[0] if problems else ''}",
                 "subject": str(args.image), "field": None, "hint": None}
        return clikit.emit(args, snake_case(report), VERDICT if problems else 0, error)
    print(render(report))
    return VERDICT if problems else 0


def snake_case(value):
    """inspect's report with snake_case keys (``diskUuid`` → ``disk_uuid``) for --json; the
    manifest's own format is a separate contract and keeps its keys."""
    import re

    if isinstance(value, dict):
        return {re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", k).lower() if isinstance(k, str) else k:
                snake_case(v) for k, v in value.items()}
    if isinstance(value, list):
        return [snake_case(v) for v in value]
    return value


def render(report: dict) -> str:
    """A short human summary of ``inspect_image``'s report; every failure says FAILED or NOT."""
    lines = [f"{report['path']}: {report['format']}, {report['size']} bytes, sha256 "
             f"{report['sha256']}"]
    for part in report.get("partitions", []):
        lines.append(f"  partition {part['index']}: {part.get('type') or part['typeUuid']} "
                     f"uuid {part['uuid']} offset {part['offset']} size {part['size']}")
    verity = report.get("verity")
    if verity:
        if not verity.get("verified"):
            state = f"NOT verified ({verity.get('reason')})"
        elif verity.get("uuidsMatchRootHash") is False:
            state = (f"tree verified, but FAILED: the partition UUIDs spell root hash "
                     f"{verity.get('rootHashFromUuids')} (systemd 258+ derives the root hash "
                     "from them and refuses the image)")
        else:
            state = "verified"
        lines.append(f"  verity: root hash {verity.get('rootHash')} — {state}")
    signature = report.get("signature")
    if signature and signature.get("present"):
        state = f"verified with {signature.get('verifiedWith')}" if signature.get("verified") \
            else f"NOT verified ({signature.get('reason')})"
        embedded = signature.get("embeddedCertificates") or [{}]
        named = signature.get("certificateFingerprint") or embedded[0].get("fingerprint")
        lines.append(f"  signature: certificate {named or '(not named)'} — {state}")
    elif signature is not None:
        lines.append("  signature: none")
    fs = report.get("filesystem") or {}
    if fs.get("error"):
        lines.append(f"  file system: {fs.get('type') or 'unknown'} — NOT readable "
                     f"({fs['error']})")
    elif fs:
        if fs.get("readWith") == "mount":
            how = "mounted read-only: verity and signature verified with --cert"
        else:
            how = f"read with {fs.get('readWith')} in userspace" + (
                "" if fs.get("trusted") else "; not mounted: untrusted image")
        lines.append(f"  file system: {fs.get('type')}, {clikit.count(fs.get('files'), 'file')}, "
                     f"{fs.get('bytes')} bytes ({how})")
        release = fs.get("release") or {}
        if release:
            lines.append(f"  {release.get('path')}:")
            lines += [f"    {k}={v}" for k, v in (release.get("fields") or {}).items()]
    if report.get("manifest"):
        lines.append(f"  manifest: {report['manifest'].get('path', 'next to the image')}")
    found = report.get("problems") or []
    if report.get("certificate") and not (signature or {}).get("present"):
        lines.append(f"  FAILED: no signature to check against {report['certificate']}: the "
                     "image is not signed")
    lines.append(f"  FAILED: {len(found)} problem{'s' if len(found) > 1 else ''}" if found
                 else "  result: no problems found")
    return "\n".join(lines)


def register(sub) -> None:
    p = sub.add_parser("keys", help="signing keys")
    ksub = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    g = ksub.add_parser("generate", help="make an RSA-4096 key (0600, in a directory "
                        "created 0700 if missing) and a self-signed certificate; never overwrites")
    g.add_argument("--key", type=Path, default=DEFAULT_KEY,
                   help=f"where the private key goes (default {DEFAULT_KEY})")
    g.add_argument("--cert", type=Path, default=DEFAULT_CERT,
                   help=f"where its certificate goes (default {DEFAULT_CERT})")
    g.add_argument("--subject", default="CN=sysext-pipeline release signing",
                   help="certificate subject, e.g. 'CN=Example release,O=Example'")
    g.add_argument("--days", type=int, default=3650, help="validity in days (default 3650)")
    clikit.add_json(g)
    g.add_argument("--openpgp", type=Path, metavar="GNUPGHOME", help="instead: an OpenPGP "
                   "RSA-4096 signing key (for publish's SHA256SUMS.gpg) in a new GnuPG home "
                   "directory (0700); --subject is its user id")
    _passphrase_args(g)
    g.set_defaults(func=cmd_keys_generate)

    p = sub.add_parser("sign", help="fill the signature partition of a DDI built --unsigned "
                       "(no other byte changes), or write NAME.roothash.p7s; the verity data "
                       "is checked first and NAME.manifest.json updated")
    p.add_argument("image", type=Path, help="the image (NAME.raw) to sign")
    p.add_argument("--key", type=Path, help="private key (PEM)")
    p.add_argument("--cert", type=Path, help="its certificate (PEM)")
    p.add_argument("--signature", type=Path, metavar="P7S", help="a detached DER PKCS#7 "
                   "without signed attributes (openssl smime -sign -binary -noattr) over the hex "
                   "root hash, made elsewhere (checked against --cert and the image first)")
    p.add_argument("--force", action="store_true", help="replace a signature by a different "
                   "certificate (without it, sign refuses to; re-signing with the same "
                   "certificate needs no --force)")
    _passphrase_args(p)
    clikit.add_json(p)
    p.set_defaults(func=cmd_sign)

    p = sub.add_parser("inspect", help="partitions, verity, signature and release of any image "
                       "(exit 3 when verity, the partition UUIDs, the signature or the file "
                       "system fail; an image is mounted only if verified and signed by --cert)")
    p.add_argument("image", type=Path, help="a raw image (DDI, squashfs, erofs) or directory")
    p.add_argument("--cert", type=Path, help="check the signature against this certificate "
                   "(an image without a signature then fails)")
    clikit.add_json(p)
    p.set_defaults(func=cmd_inspect)
