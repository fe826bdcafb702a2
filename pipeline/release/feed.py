"""``publish``: a feed directory that systemd-sysupdate consumes with ``Verify=yes``.

From built images (``NAME.raw`` + ``NAME.manifest.json``) a feed gets, served by any static web
server:

- ``NAME_VERSION_ARCH.raw`` — the image under sysupdate's versioned name (VERSION from the
  recipe, ARCH the image's ``ARCHITECTURE=``, ``any`` without one), with its SBOM and provenance
  as ``NAME_VERSION_ARCH.spdx.json`` / ``.provenance.json`` when the build wrote them. A version
  once published never changes: the same name with other bytes is refused.
- ``SHA256SUMS`` over every file of the feed's top level, and ``SHA256SUMS.gpg``: a detached
  OpenPGP signature made with ``gpg`` and the release OpenPGP key (``keys generate --openpgp
  GNUPGHOME``). ``publish --unsigned`` leaves the signature out (and removes a stale one);
  ``sign-feed`` adds it later, from a key or from a signature made elsewhere (checked with
  ``gpgv`` against the public key first).
- ``sysupdate.d/NAME.transfer`` (systemd ≥ 257; the newest image of ``NAME.raw.v/`` is what
  systemd-sysext ≥ 256 merges) and ``sysupdate.d/legacy/NAME.conf`` (systemd 254–256: versioned
  files in ``/var/lib/extensions.d/`` and ``CurrentSymlink=/var/lib/extensions/NAME.raw``), both
  ``Verify=yes`` and ``InstancesMax=`` (older versions stay on the host up to that many).
- ``index.json``: what the feed holds (also printed by ``publish --json``), and
  ``import-pubring.gpg``, the public key hosts install as ``/etc/systemd/import-pubring.gpg``.

Files appear by rename from temporary names in the feed directory; SHA256SUMS is written after
the images it lists and its signature after it, so a host that fetches in between sees a
mismatch and refuses — never an unverified image.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from ..digest import hash_file
from ..errors import BuildError, InputError
from ..outdir import MAX_MANIFEST

SUMS, SIGNATURE, INDEX, KEYRING = "SHA256SUMS", "SHA256SUMS.gpg", "index.json", \
    "import-pubring.gpg"
#: What sysupdate's ``@v`` accepts and what keeps NAME_VERSION_ARCH unambiguous.
VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+~^-]{0,63}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+-]{0,127}$")
DEFAULT_INSTANCES = 2


def _image_and_manifest(path: Path) -> tuple[Path, Path, dict]:
    path = Path(path)
    if path.name.endswith(".manifest.json"):
        manifest_path = path
    else:
        manifest_path = path.with_name(path.name.removesuffix(".raw") + ".manifest.json")
    try:
        if manifest_path.stat().st_size > MAX_MANIFEST:
            raise InputError(str(manifest_path), "too large for a manifest")
        manifest = json.loads(manifest_path.read_bytes())
    except FileNotFoundError:
        raise InputError(str(manifest_path), "no such manifest",
                         "publish takes NAME.raw or NAME.manifest.json from a build") from None
    except ValueError as err:
        raise InputError(str(manifest_path), f"not JSON: {err}") from None
    image = manifest.get("image") if isinstance(manifest, dict) else None
    if not isinstance(image, dict) or not isinstance(image.get("file"), str):
        raise InputError(str(manifest_path), "not a build manifest (no image.file)")
    if image.get("format") == "directory" or not image.get("sha256"):
        raise InputError(str(manifest_path), "a directory image cannot be published",
                         "build it as squashfs, erofs or ddi")
    return manifest_path.with_name(Path(image["file"]).name), manifest_path, manifest


def entry_for(path: Path) -> tuple[dict, Path, Path]:
    """(index entry, image path, manifest path) of one built image, its bytes checked against
    its manifest."""
    image_path, manifest_path, manifest = _image_and_manifest(path)
    name, version = manifest.get("name"), manifest.get("version")
    if not isinstance(name, str) or not NAME.match(name):
        raise InputError(f"{manifest_path}:name", f"{name!r} cannot be a feed name",
                         "letters, digits, '.', '+', '-' (no '_': it separates the version)")
    if not isinstance(version, str) or not VERSION.match(version):
        raise InputError(f"{manifest_path}:version", f"{version!r} is not a version sysupdate "
                         "can order", "set [extension] version, e.g. \"1.2.0\" (no '_' or '/')")
    fields = (manifest.get("extension_release") or {}).get("fields") or {}
    arch = fields.get("ARCHITECTURE") or "any"
    if not NAME.match(arch):
        raise InputError(f"{manifest_path}:extension_release", f"architecture {arch!r}")
    try:
        sha, size = hash_file(image_path)
    except FileNotFoundError:
        raise InputError(str(image_path), "the image the manifest names is not there") from None
    if sha != manifest["image"]["sha256"]:
        raise InputError(str(image_path), f"sha256 {sha} is not the {manifest['image']['sha256']}"
                         " its manifest records", "publish the image of this manifest (rebuild?)")
    entry = {"name": name, "version": version, "architecture": arch,
             "kind": manifest.get("kind"), "file": f"{name}_{version}_{arch}.raw",
             "sha256": sha, "size": size,
             "manifest_sha256": hashlib.sha256(manifest_path.read_bytes()).hexdigest()}
    return entry, image_path, manifest_path


def _companions(manifest_path: Path, entry: dict) -> list[tuple[Path, str]]:
    manifest = json.loads(manifest_path.read_bytes())
    found = []
    for key, suffix in (("sbom", ".spdx.json"), ("provenance", ".provenance.json")):
        section = manifest.get(key)
        if isinstance(section, dict) and isinstance(section.get("file"), str) and \
                "/" not in section["file"] and (manifest_path.parent / section["file"]).is_file():
            found.append((manifest_path.parent / section["file"],
                          entry["file"].removesuffix(".raw") + suffix))
    return found


def _place(src: Path, feed: Path, name: str) -> None:
    """Copy ``src`` to ``feed/name`` by rename; an existing one must have the same bytes."""
    dest = feed / name
    if dest.is_symlink() or (dest.exists() and not dest.is_file()):
        raise InputError(str(dest), "is not a regular file", "the feed holds only files")
    if dest.exists():
        if hash_file(dest)[0] != hash_file(src)[0]:
            raise InputError(str(dest), "is already published with other bytes",
                             "a published version never changes: raise [extension] version")
        return
    def copy(fh) -> None:
        with open(src, "rb") as source:
            shutil.copyfileobj(source, fh, 1 << 20)

    _write(feed, name, copy)


def _write(feed: Path, name: str, fill) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=feed)
    try:
        with os.fdopen(fd, "wb") as fh:
            fill(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, feed / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_bytes(feed: Path, name: str, data: bytes) -> None:
    _write(feed, name, lambda fh: fh.write(data))


def transfer(name: str, arch: str, url: str, instances: int, legacy: bool = False) -> str:
    source = url if url.endswith("/") else url + "/"
    head = (f"# {name}: installed by systemd-sysupdate from {source} (sysext-pipeline publish)\n"
            "[Transfer]\nVerify=yes\n\n[Source]\nType=url-file\n"
            f"Path={source}\nMatchPattern={name}_@v_{arch}.raw\n\n[Target]\n"
            "Type=regular-file\n")
    if legacy:  # systemd 254-256: no NAME.raw.v/ in systemd-sysext; a symlink names the current
        target = (f"Path=/var/lib/extensions.d/\nMatchPattern={name}_@v.raw\n"
                  f"CurrentSymlink=/var/lib/extensions/{name}.raw\n")
    else:
        target = f"Path=/var/lib/extensions/{name}.raw.v/\nMatchPattern={name}_@v.raw\n"
    return head + target + f"InstancesMax={instances}\n"


def _load_index(feed: Path) -> list[dict]:
    path = feed / INDEX
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_bytes())
        images = data["images"]
        assert isinstance(images, list) and all(isinstance(i, dict) for i in images)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise InputError(str(path), "not an index this tool wrote",
                         "publish into an empty directory or a feed made by publish") from None
    return images


def sums_text(feed: Path) -> bytes:
    """``SHA256SUMS`` over every regular file at the feed's top level (but the sums and their
    signature), sorted by name, in sha256sum's format."""
    lines = []
    for entry in sorted(os.scandir(feed), key=lambda e: e.name):
        if entry.name in (SUMS, SIGNATURE) or entry.name.startswith(".") or \
                not entry.is_file(follow_symlinks=False):
            continue
        lines.append(f"{hash_file(Path(entry.path))[0]}  {entry.name}\n")
    return "".join(lines).encode()


def publish(images: list[Path], feed: Path, url: str, *, gnupghome: Path | None = None,
            key: str | None = None, unsigned: bool = False,
            instances: int = DEFAULT_INSTANCES) -> dict:
    """Add ``images`` to the feed directory ``feed`` (created if missing); the index."""
    if not unsigned and gnupghome is None:
        raise InputError("publish", "no OpenPGP key to sign SHA256SUMS with",
                         "give --gnupghome (keys generate --openpgp DIR), or --unsigned and "
                         "sign-feed later")
    if not re.match(r"^https?://[^\s]+$", url or ""):
        raise InputError("--url", f"{url!r} is not an http(s) URL", "where hosts fetch the feed")
    if instances < 1:
        raise InputError("--instances-max", "must be at least 1")
    entries = [entry_for(Path(p)) for p in images]  # everything checked before writing
    feed = Path(feed)
    feed.mkdir(parents=True, exist_ok=True)
    index = _load_index(feed)
    for entry, image_path, manifest_path in entries:
        _place(image_path, feed, entry["file"])
        for src, name in _companions(manifest_path, entry):
            _place(src, feed, name)
        index = [i for i in index if i.get("file") != entry["file"]] + [entry]
    index.sort(key=lambda i: (str(i.get("name")), str(i.get("architecture")),
                              _version_key(str(i.get("version")))))
    names = sorted({(i["name"], i["architecture"]) for i in index})
    sysupdate = feed / "sysupdate.d"
    (sysupdate / "legacy").mkdir(parents=True, exist_ok=True)
    for name, arch in names:
        _write_bytes(sysupdate, f"{name}.transfer", transfer(name, arch, url, instances).encode())
        _write_bytes(sysupdate / "legacy", f"{name}.conf",
                     transfer(name, arch, url, instances, legacy=True).encode())
    document = {"schema": 1, "url": url, "images": index,
                "transfers": {f"{n}": {"systemd>=257": f"sysupdate.d/{n}.transfer",
                                       "systemd<257": f"sysupdate.d/legacy/{n}.conf"}
                              for n, _ in names}}
    if not unsigned:
        _write_bytes(feed, KEYRING, export_public(gnupghome, key))
    _write_bytes(feed, INDEX, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())
    _write_bytes(feed, SUMS, sums_text(feed))
    if unsigned:
        (feed / SIGNATURE).unlink(missing_ok=True)  # it signs other sums
    else:
        sign_feed(feed, gnupghome=gnupghome, key=key)
    document["signed"] = not unsigned
    return document


def _version_key(version: str) -> list:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.+~^-]", version)]


# --- OpenPGP through gpg ----------------------------------------------------------------------

def _gpg(gnupghome: Path, *args: str, what: str, input: bytes | None = None,
         tool: str = "gpg") -> bytes:
    from .. import tools

    home = Path(gnupghome)
    st = home.stat() if home.exists() else None
    if st is None or not stat.S_ISDIR(st.st_mode):
        raise InputError(str(home), "not a GnuPG home directory",
                         "make one with keys generate --openpgp DIR")
    if st.st_mode & 0o077:
        raise InputError(str(home), f"accessible by group or others (mode "
                         f"{stat.S_IMODE(st.st_mode):04o})", f"chmod 700 {home}")
    try:
        proc = tools.run(tool, ["--homedir", str(home), "--batch", "--no-tty", *args],
                         what=what, input=input, timeout=300)
    finally:  # no gpg-agent left running after us
        if tools.have("gpgconf"):
            import subprocess

            subprocess.run([tools.find("gpgconf"), "--homedir", str(home), "--kill", "all"],
                           capture_output=True, check=False, timeout=60)
    return proc.stdout


def generate_openpgp(gnupghome: Path, user_id: str) -> str:
    """A new RSA-4096 signing key (no passphrase: protect the directory, or move the key to
    an offline machine) in the GnuPG home ``gnupghome`` (created 0700); its fingerprint."""
    home = Path(gnupghome)
    if home.exists() and any(home.iterdir()):
        raise InputError(str(home), "already exists and is not empty",
                         "refusing to add a key to an existing GnuPG home; choose a new directory")
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    _gpg(home, "--pinentry-mode", "loopback", "--passphrase", "", "--quick-generate-key",
         user_id, "rsa4096", "sign", "never", what="generating an OpenPGP key")
    out = _gpg(home, "--with-colons", "--list-secret-keys", what="listing the new key")
    fprs = [line.split(":")[9] for line in out.decode().splitlines() if line.startswith("fpr:")]
    return fprs[0]


def export_public(gnupghome: Path, key: str | None) -> bytes:
    data = _gpg(gnupghome, "--export", *([key] if key else []), what="exporting the public key")
    if not data:
        raise InputError(str(gnupghome), f"no public key{' ' + key if key else ''} in it")
    return data


def sign_feed(feed: Path, *, gnupghome: Path | None = None, key: str | None = None,
              signature: Path | None = None, keyring: Path | None = None) -> None:
    """Write ``SHA256SUMS.gpg``: made here with the key in ``gnupghome``, or ``signature`` made
    elsewhere, which must verify against ``keyring`` (binary public key(s)) before it is put."""
    feed = Path(feed)
    sums = feed / SUMS
    if not sums.is_file():
        raise InputError(str(sums), "missing", "run publish --unsigned first")
    if sums.read_bytes() != sums_text(feed):
        raise InputError(str(sums), "does not match the feed's files",
                         "run publish again: something changed since")
    if signature is None:
        if gnupghome is None:
            raise InputError("sign-feed", "needs --gnupghome, or --signature and --keyring")
        data = _gpg(gnupghome, *(["--local-user", key] if key else []), "--detach-sign",
                    "--output", "-", str(sums), what="signing SHA256SUMS")
    else:
        if keyring is None:
            keyring = feed / KEYRING
        if not Path(keyring).is_file():
            raise InputError(str(keyring), "no public keyring to check the signature with",
                             "give --keyring (the release key's public part)")
        data = Path(signature).read_bytes()
        check_signature(sums, data, Path(keyring), where=str(signature))
        if keyring != feed / KEYRING:
            _write_bytes(feed, KEYRING, Path(keyring).read_bytes())
    _write_bytes(feed, SIGNATURE, data)


def check_signature(sums: Path, signature: bytes, keyring: Path, *, where: str) -> None:
    """gpgv against ``keyring`` only: the signature must be good and by one of its keys."""
    from .. import tools

    with tempfile.TemporaryDirectory(prefix="sysext-feed-") as tmp:
        sig = Path(tmp) / "sig"
        sig.write_bytes(signature)
        try:
            tools.run("gpgv", ["--homedir", tmp, "--keyring", str(Path(keyring).resolve()),
                               str(sig), str(sums)],
                      what="checking the feed signature", timeout=120)
        except BuildError as err:
            raise InputError(where, "does not verify SHA256SUMS with the release key",
                             err.hint) from None
