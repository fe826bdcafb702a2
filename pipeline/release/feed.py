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
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..digest import hash_file, hash_open
from ..errors import INPUT, BuildError, InputError, PipelineError, VerdictError
from ..outdir import open_entry

SUMS, SIGNATURE, INDEX, KEYRING = "SHA256SUMS", "SHA256SUMS.gpg", "index.json", \
    "import-pubring.gpg"
#: What sysupdate's ``@v`` accepts and what keeps NAME_VERSION_ARCH unambiguous.
VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+~^-]{0,63}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+-]{0,127}$")
DEFAULT_INSTANCES = 2
#: ``publish --compress``: codec → the feed file's suffix. systemd-pull decompresses while it
#: downloads (SHA256SUMS lists the compressed file), so hosts still get ``NAME_VERSION.raw``.
SUFFIXES = {"none": ".raw", "xz": ".raw.xz", "zstd": ".raw.zst"}
#: Fixed settings, single-threaded: the same image compresses to the same bytes every time
#: (with the same liblzma/libzstd; a republish compares the decompressed sha256, not these).
XZ_PRESET, ZSTD_LEVEL = 6, 19


@dataclass(frozen=True)
class Built:
    """One built image as publish needs it. The caller reads it from ``NAME.manifest.json``
    through the manifest model (pipeline/commands/publish.py; release/ may not import
    stages/), so a manifest is checked whole before any of it is used here."""

    image: Path  # the image file beside the manifest (its name as the manifest records it)
    manifest_path: Path
    manifest_sha256: str  # of the manifest's bytes as they were read
    name: str
    version: str | None
    kind: str
    format: str  # squashfs | erofs | ddi | directory
    sha256: str | None  # None: a directory image
    architecture: str | None  # the extension-release file's ARCHITECTURE=
    sbom: tuple[str, str | None] | None = None  # (file, sha256 the manifest records)
    provenance: str | None = None  # file


def entry_for(built: Built) -> tuple[dict, Built]:
    """(index entry, ``built``) of one built image, its bytes checked against its manifest."""
    manifest_path, name, version = built.manifest_path, built.name, built.version
    if built.format == "directory" or not built.sha256:
        raise InputError(str(manifest_path), "a directory image cannot be published",
                         "build it as squashfs, erofs or ddi")
    if not NAME.match(name):
        raise InputError(f"{manifest_path}:name", f"{name!r} cannot be a feed name",
                         "letters, digits, '.', '+', '-' (no '_': it separates the version)")
    if not isinstance(version, str) or not VERSION.match(version):
        raise InputError(f"{manifest_path}:version", f"{version!r} is not a version sysupdate "
                         "can order", "set [extension] version, e.g. \"1.2.0\" (no '_' or '/')")
    arch = built.architecture or "any"
    if not NAME.match(arch):
        raise InputError(f"{manifest_path}:extension_release", f"architecture {arch!r}")
    with _open_output(built.image) as fh:
        sha, size = hash_open(fh)
    if sha != built.sha256:
        raise InputError(str(built.image), f"sha256 {sha} is not the {built.sha256} its "
                         "manifest records", "publish the image of this manifest (rebuild?)")
    entry = {"name": name, "version": version, "architecture": arch, "kind": built.kind,
             "file": f"{name}_{version}_{arch}.raw", "sha256": sha, "size": size,
             "manifest_sha256": built.manifest_sha256}
    return entry, built


def _stem(entry: dict) -> str:
    return f"{entry['name']}_{entry['version']}_{entry['architecture']}"


def suffix_of(entry: dict) -> str:
    """The suffix of an index entry's feed file (``.raw``, ``.raw.xz``, ``.raw.zst``)."""
    suffix = str(entry.get("file", "")).removeprefix(_stem(entry))
    if suffix not in SUFFIXES.values():
        raise InputError(f"index.json: {entry.get('file')!r}", "not a file name publish writes")
    return suffix


def _open_output(path: Path):
    """A file of the output directory, opened never through a symlink and never blocking on a
    FIFO (:func:`pipeline.outdir.open_entry`): whatever else was planted there is refused."""
    fd = open_entry(path.parent, path.name)
    if fd is None:
        if not os.path.lexists(path):
            raise InputError(str(path), "missing", "publish what a build wrote (rebuild?)")
        raise InputError(str(path), "not a regular file (a symlink?)",
                         "publish reads only regular files of the output directory")
    return os.fdopen(fd, "rb")


def _companions(built: Built, entry: dict) -> list[tuple[Path, str, str | None]]:
    """(file, its name in the feed, its sha256 when the manifest records it) of the SBOM,
    its CycloneDX twin and the provenance that sit beside the image."""
    folder = built.manifest_path.parent
    found, sections = [], []
    if built.sbom is not None:
        sections.append((built.sbom[0], ".spdx.json", built.sbom[1]))
    if built.provenance is not None:
        sections.append((built.provenance, ".provenance.json", None))
    for file, suffix, digest in sections:
        if "/" in file or not os.path.lexists(folder / file):
            continue
        found.append((folder / file, _stem(entry) + suffix, digest))
        cdx = file.removesuffix(".spdx.json") + ".cdx.json"
        if suffix == ".spdx.json" and cdx != file and os.path.lexists(folder / cdx):
            found.append((folder / cdx, _stem(entry) + ".cdx.json", None))  # CycloneDX twin
    return found


def _place(src: Path, feed: Path, name: str, sha256: str | None = None) -> None:
    """Copy ``src`` to ``feed/name`` by rename; an existing one must have the same bytes. With
    ``sha256`` the bytes copied must have it (the file may have changed since it was checked)."""
    dest = feed / name
    if dest.is_symlink() or (dest.exists() and not dest.is_file()):
        raise InputError(str(dest), "is not a regular file", "the feed holds only files")
    if dest.exists():
        with _open_output(src) as fh:
            if hash_file(dest)[0] != hash_open(fh)[0]:
                raise InputError(str(dest), "is already published with other bytes",
                                 "a published version never changes: raise [extension] "
                                 "version")
        return

    def copy(fh) -> None:
        digest = hashlib.sha256()
        with _open_output(src) as source:
            while chunk := source.read(1 << 20):
                digest.update(chunk)
                fh.write(chunk)
        if sha256 is not None and digest.hexdigest() != sha256:
            raise InputError(str(src), f"sha256 {digest.hexdigest()} is not the {sha256} its "
                             "manifest records", "it changed: rebuild, then publish")

    _write(feed, name, copy)


def _compressor(codec: str):
    if codec == "xz":
        import lzma

        return lzma.LZMACompressor(lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=XZ_PRESET)
    import pyzstd

    return pyzstd.ZstdCompressor({pyzstd.CParameter.compressionLevel: ZSTD_LEVEL,
                                  pyzstd.CParameter.checksumFlag: 1})


def _decompressed_sha256(path: Path, codec: str) -> str:
    import lzma

    import pyzstd

    digest = hashlib.sha256()
    opener = lzma.open if codec == "xz" else pyzstd.ZstdFile
    try:
        with opener(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except (lzma.LZMAError, pyzstd.ZstdError, EOFError, OSError) as err:
        raise InputError(str(path), f"not a readable {codec} file: {err}",
                         "remove it: publish writes it again") from None
    return digest.hexdigest()


def _place_compressed(src: Path, feed: Path, name: str, codec: str, sha256: str) -> None:
    """``src`` compressed with ``codec`` as ``feed/name``; an existing one must decompress to
    the same image (``sha256``)."""
    dest = feed / name
    if dest.is_symlink() or (dest.exists() and not dest.is_file()):
        raise InputError(str(dest), "is not a regular file", "the feed holds only files")
    if dest.exists():
        if _decompressed_sha256(dest, codec) != sha256:
            raise InputError(str(dest), "is already published with other bytes",
                             "a published version never changes: raise [extension] version")
        return

    def fill(fh) -> None:
        compressor = _compressor(codec)
        digest = hashlib.sha256()
        with _open_output(src) as source:
            while chunk := source.read(1 << 20):
                digest.update(chunk)
                fh.write(compressor.compress(chunk))
        fh.write(compressor.flush())
        if digest.hexdigest() != sha256:
            raise InputError(str(src), f"sha256 {digest.hexdigest()} is not the {sha256} its "
                             "manifest records", "it changed: rebuild, then publish")

    _write(feed, name, fill)


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


#: Where each kind's versions land on a host (``NAME.raw.v/`` below it; legacy: ``DIR.d/``).
TARGET_DIRS = {"sysext": "/var/lib/extensions", "confext": "/var/lib/confexts"}


def transfer(name: str, arch: str, url: str, instances: int, legacy: bool = False,
             kind: str | None = "sysext", suffix: str = ".raw", feature: bool = False) -> str:
    source = url if url.endswith("/") else url + "/"
    directory = TARGET_DIRS.get(kind or "sysext", TARGET_DIRS["sysext"])
    head = (f"{MARK_PREFIX}{name}{MARK_SUFFIX}{source} (sysext-pipeline publish)\n"
            "[Transfer]\nVerify=yes\n" + (f"Features={name}\n" if feature and not legacy
                                           else "") + "\n[Source]\nType=url-file\n"
            f"Path={source}\nMatchPattern={name}_@v_{arch}{suffix}\n\n[Target]\n"
            "Type=regular-file\n")
    if legacy:  # systemd 254-256: no NAME.raw.v/ in systemd-sysext; a symlink names the current
        target = (f"Path={directory}.d/\nMatchPattern={name}_@v.raw\n"
                  f"CurrentSymlink={directory}/{name}.raw\n")
    else:
        target = f"Path={directory}/{name}.raw.v/\nMatchPattern={name}_@v.raw\n"
    return head + target + f"InstancesMax={instances}\n"


def feature(name: str, kind: str | None, url: str) -> str:
    """``sysupdate.d/NAME.feature`` (systemd ≥ 257, ``publish --features``): the extension as
    an optional feature, enabled; a drop-in ``NAME.feature.d/*.conf`` with ``Enabled=false``
    stops its updates and makes systemd-sysupdate remove the installed versions."""
    what = "configuration extension" if kind == "confext" else "system extension"
    return (f"{MARK_PREFIX}{name}{MARK_SUFFIX}{url} (sysext-pipeline publish)\n"
            f"[Feature]\nDescription={name} ({what}, updated from {url})\nEnabled=true\n")


#: systemd-sysupdate reads ``*.feature`` files from this version on.
FEATURES_SINCE = 257


#: The first line of every transfer file publish writes: how install recognises its own.
MARK_PREFIX, MARK_SUFFIX = "# ", ": installed by systemd-sysupdate from "


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


def publish(images: list[Path], feed: Path, url: str, *, read: Callable[[Path], Built],
            gnupghome: Path | None = None, key: str | None = None, unsigned: bool = False,
            instances: int = DEFAULT_INSTANCES, compress: str = "none",
            features: bool = False) -> dict:
    """Add ``images`` (``NAME.raw`` or ``NAME.manifest.json``; ``read`` gives what their
    manifest says, see :class:`Built`) to the feed directory ``feed`` (created if missing);
    the index. With
    ``compress`` ``xz`` or ``zstd`` the feed files are ``NAME_VERSION_ARCH.raw.xz``/``.raw.zst``
    (one suffix per extension in a feed: its transfer file matches one). With ``features`` each
    extension is also an optional feature: ``sysupdate.d/NAME.feature`` and ``Features=NAME`` in
    its ``.transfer`` (systemd ≥ 257; the legacy ``.conf`` has none)."""
    if not unsigned and gnupghome is None:
        raise InputError("publish", "no OpenPGP key to sign SHA256SUMS with",
                         "give --gnupghome (keys generate --openpgp DIR), or --unsigned and "
                         "sign-feed later")
    if not re.match(r"^https?://[^\s]+$", url or ""):
        raise InputError("--url", f"{url!r} is not an http(s) URL", "where hosts fetch the feed")
    if instances < 1:
        raise InputError("--instances-max", "must be at least 1")
    if compress not in SUFFIXES:
        raise InputError("--compress", f"{compress!r}", f"one of {', '.join(SUFFIXES)}")
    entries = [entry_for(read(Path(p))) for p in images]  # everything checked before writing
    feed = Path(feed)
    index = _load_index(feed) if feed.exists() else []
    for entry, _ in entries:
        entry["file"] = _stem(entry) + SUFFIXES[compress]
        if compress != "none":
            entry["compression"] = compress
        for other in index:
            if other.get("name") == entry["name"] and suffix_of(other) != SUFFIXES[compress]:
                raise InputError(f"{feed / INDEX}", f"{entry['name']} is published as "
                                 f"{other.get('file')}", "publish every version of an extension "
                                 "with the same --compress: its transfer file matches one "
                                 "suffix")
    for entry, built in entries:  # a planted companion: refused before any write
        for src, _, _ in _companions(built, entry):
            _open_output(src).close()
    feed.mkdir(parents=True, exist_ok=True)
    for entry, built in entries:
        image_path = built.image
        if compress == "none":
            _place(image_path, feed, entry["file"], entry["sha256"])
        else:
            _place_compressed(image_path, feed, entry["file"], compress, entry["sha256"])
            entry["file_sha256"], entry["file_size"] = hash_file(feed / entry["file"])
        for src, name, digest in _companions(built, entry):
            _place(src, feed, name, digest)
        index = [i for i in index if i.get("file") != entry["file"]] + [entry]
    index.sort(key=lambda i: (str(i.get("name")), str(i.get("architecture")),
                              _version_key(str(i.get("version")))))
    names = sorted({(i["name"], i["architecture"]) for i in index})
    sysupdate = feed / "sysupdate.d"
    (sysupdate / "legacy").mkdir(parents=True, exist_ok=True)
    kinds = {i["name"]: i.get("kind") for i in index}
    suffixes = {i["name"]: suffix_of(i) for i in index}
    for stale in sysupdate.glob("*.feature"):  # publish without --features: none
        stale.unlink()
    for name, arch in names:
        _write_bytes(sysupdate, f"{name}.transfer", transfer(
            name, arch, url, instances, kind=kinds[name], suffix=suffixes[name],
            feature=features).encode())
        if features:
            _write_bytes(sysupdate, f"{name}.feature", feature(name, kinds[name], url).encode())
        _write_bytes(sysupdate / "legacy", f"{name}.conf", transfer(
            name, arch, url, instances, legacy=True, kind=kinds[name],
            suffix=suffixes[name]).encode())
    document = {"schema": 1, "url": url, "images": index, "instances_max": instances,
                "features": features,
                "transfers": {f"{n}": {"systemd>=257": f"sysupdate.d/{n}.transfer",
                                       "systemd<257": f"sysupdate.d/legacy/{n}.conf",
                                       **({"feature": f"sysupdate.d/{n}.feature"} if features
                                          else {})}
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


# --- setting a host up for a feed (``install --feed``) ----------------------------------------

#: The keyring systemd-pull checks ``Verify=yes`` signatures with, relative to the host's root.
#: 254 and 257 read ``/etc/systemd/import-pubring.gpg`` (then ``/usr/lib/systemd/``'s); 262 reads
#: every one of ``/etc/systemd/import-pubring.pgp``, ``/etc/systemd/import-pubring.gpg`` and
#: ``/usr/lib/systemd/import-pubring.pgp`` that exists (and ``$SYSTEMD_OPENPGP_KEYRING``): the
#: ``.gpg`` name is the one every version reads, so it survives an upgrade of the host's systemd.
HOST_KEYRING = "etc/systemd/import-pubring.gpg"
#: The oldest systemd whose systemd-sysupdate this layout was run with (Debian 12's 252 ships
#: no systemd-sysupdate; 254 is in bookworm-backports).
OLDEST_SYSUPDATE = 254
#: 257 reads ``*.transfer`` (and ``*.conf``); 254-256 only ``*.conf``; sysext merges the newest
#: image of ``NAME.raw.v/`` from 256 on, but 256's sysupdate still wants ``*.conf``.
TRANSFER_SUFFIX_SINCE = 257
MAX_FEED_FILE = 1 << 20
#: systemd-pull of 254 and 257 does not recognise zstd: it stores the compressed bytes as
#: ``NAME_VERSION.raw`` (its checksum is of the download, so nothing notices); 262 decompresses
#: (seen with the real binaries, tests/test_feed_compress.py; 258-261 were not run).
ZSTD_SINCE = 262


def _is_url(source: str) -> bool:
    return bool(re.match(r"^https?://", source))


#: How ``install --feed`` downloads a feed file: ``download(url, dest, limit)`` writes at most
#: ``limit`` bytes of ``url`` to ``dest`` or raises a PipelineError (with the HTTP ``status``
#: when it has one). The command passes pipeline/sources/fetch.py's ``http_download``, so a feed
#: is read with the waits, retries and retry lines of every other download (``--timeout``,
#: $SYSEXT_PIPELINE_TIMEOUT); release/ may not import sources/.
Download = Callable[[str, Path, int], None]


def _feed_file(source: str, name: str, download: Download, limit: int = MAX_FEED_FILE) -> bytes:
    """One file of a feed (a directory or an http(s) URL, read with ``download``), at most
    ``limit`` bytes."""
    if _is_url(source):
        where = source.rstrip("/") + "/" + name
        with tempfile.TemporaryDirectory(prefix="sysext-feed-") as tmp:
            dest = Path(tmp) / name
            try:
                download(where, dest, limit)
            except PipelineError as err:  # one line naming the whole URL, the class kept
                status = getattr(err, "status", None)
                if status in (403, 404, 410):
                    raise InputError(where, f"HTTP {status}",
                                     "is this the URL of a feed made by publish?") from None
                if err.exit_code == INPUT:
                    raise InputError(where, err.what, "not a file publish writes") from None
                raise BuildError(where, err.what,
                                 "check the URL and the network, then retry") from None
            data = dest.read_bytes()
    else:
        where = str(Path(source) / name)
        try:
            fd = os.open(where, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise InputError(where, "missing", "give a feed directory made by publish, or its "
                             "URL") from None
        except OSError as err:
            raise InputError(where, f"cannot read: {err.strerror}") from None
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise InputError(where, "not a regular file")
            data = fh.read(limit + 1)
    if len(data) > limit:
        raise InputError(where, f"larger than {limit} bytes", "not a file publish writes")
    return data


def _fingerprints(keyring: Path) -> set[str]:
    from .. import tools

    with tempfile.TemporaryDirectory(prefix="sysext-feed-") as home:
        os.chmod(home, 0o700)
        try:
            out = tools.run("gpg", ["--homedir", home, "--batch", "--no-tty", "--with-colons",
                                    "--show-keys", str(keyring)],
                            what="reading a keyring", timeout=120).stdout
        finally:
            if tools.have("gpgconf"):
                import subprocess

                subprocess.run([tools.find("gpgconf"), "--homedir", home, "--kill", "all"],
                               capture_output=True, check=False, timeout=60)
    return {line.split(":")[9] for line in out.decode(errors="replace").splitlines()
            if line.startswith("fpr:")}


def _verifies(sums: Path, signature: bytes, keyring: Path) -> bool:
    try:
        check_signature(sums, signature, keyring, where=str(keyring))
    except InputError:
        return False
    return True


def _target_dir(base: Path, rel: str) -> Path:
    """``base/rel``, created 0755 component by component; a symlink on the way is refused (a
    --root tree must not redirect writes out of it)."""
    path = base
    for part in Path(rel).parts:
        path = path / part
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            os.mkdir(path, 0o755)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise InputError(str(path), "is not a directory (a symlink?)",
                             "install --feed writes only into real directories of the tree")
    return path


def host_setup(source: str, base: Path, systemd: int, *, download: Download) -> dict:
    """Set the host whose root is ``base`` (``/`` or a --root tree), running systemd
    ``systemd`` (major), up to update from the feed at ``source`` (a directory made by publish
    or its URL, whose files ``download`` fetches): the transfer file of every extension of the feed into ``/etc/sysupdate.d/``
    (``NAME.transfer`` for systemd ≥ 257, the legacy ``NAME.conf`` before), the release key in
    the keyring systemd-pull reads (added to one already there), and the target directories.

    Nothing is written unless SHA256SUMS.gpg verifies SHA256SUMS, and SHA256SUMS lists
    ``index.json`` with its sha256: the transfer files are made from that verified index. The
    key is the host's own keyring when it already verifies the feed, else the feed's
    ``import-pubring.gpg`` (trust on first use: its fingerprint is reported)."""
    if systemd < OLDEST_SYSUPDATE:
        raise InputError("--systemd", f"systemd {systemd} has no systemd-sysupdate that "
                         "was checked with feeds", f"feeds need systemd {OLDEST_SYSUPDATE}+ "
                         "(Debian 12: systemd and systemd-container from bookworm-backports)")
    base = Path(base)
    sums = _feed_file(source, SUMS, download)
    try:
        signature = _feed_file(source, SIGNATURE, download, 64 << 10)
    except InputError as err:
        raise InputError(err.where, f"{err.what}: the feed is not signed",
                         "Verify=yes needs SHA256SUMS.gpg: run sign-feed on the release "
                         "machine and upload it") from None
    index_bytes = _feed_file(source, INDEX, download)
    host_keyring = base / HOST_KEYRING
    with tempfile.TemporaryDirectory(prefix="sysext-feed-") as tmp:
        sums_path = Path(tmp) / SUMS
        sums_path.write_bytes(sums)
        if host_keyring.is_file() and not host_keyring.is_symlink() and \
                _verifies(sums_path, signature, host_keyring):
            key_source, new_key = str(host_keyring), None
        else:
            new_key = Path(tmp) / KEYRING
            new_key.write_bytes(_feed_file(source, KEYRING, download))
            if not _verifies(sums_path, signature, new_key):
                raise VerdictError(f"{source.rstrip('/')}/{SIGNATURE}", "does not verify "
                                   "SHA256SUMS with the feed's key", "nothing installed: the "
                                   "feed was altered or is half uploaded; retry, or re-sign it")
            key_source = f"{source.rstrip('/')}/{KEYRING}"
        listed = {}
        for line in sums.decode(errors="replace").splitlines():
            digest, _, file_name = line.partition("  ")
            listed[file_name] = digest
        if listed.get(INDEX) != hashlib.sha256(index_bytes).hexdigest():
            raise VerdictError(f"{source.rstrip('/')}/{INDEX}", "does not match the signed "
                               "SHA256SUMS", "nothing installed: the feed was altered or is "
                               "half uploaded; retry")
        try:
            document = json.loads(index_bytes)
            url, images = document["url"], document["images"]
            instances = int(document.get("instances_max", DEFAULT_INSTANCES))
            features = document.get("features") is True
            extensions = sorted({(i["name"], i["architecture"], i.get("kind") or "sysext")
                                 for i in images})
            suffixes = {i["name"]: suffix_of(i) for i in images}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise InputError(f"{source.rstrip('/')}/{INDEX}", "not an index publish wrote") \
                from None
        for name, arch, kind in extensions:
            if not (NAME.match(str(name)) and NAME.match(str(arch)) and kind in TARGET_DIRS):
                raise InputError(f"{source.rstrip('/')}/{INDEX}", f"entry {name!r} {arch!r} "
                                 f"{kind!r} is not one publish writes")
        if not extensions:
            raise InputError(f"{source.rstrip('/')}/{INDEX}", "lists no image")
        zstd = sorted(n for n, suffix in suffixes.items() if suffix == SUFFIXES["zstd"])
        if zstd and systemd < ZSTD_SINCE:
            raise InputError(f"{source.rstrip('/')}/{INDEX}", f"{', '.join(zstd)} is published "
                             f"as .raw.zst, which systemd-pull {systemd} installs without "
                             "decompressing it", f"systemd {ZSTD_SINCE}+ for zstd; publish "
                             "with --compress xz for older hosts")
        if len({n for n, _, _ in extensions}) != len(extensions):
            raise InputError(f"{source.rstrip('/')}/{INDEX}", "one extension in two "
                             "architectures", "publish one architecture per feed")
        fingerprints = sorted(_fingerprints(new_key)) if new_key else []
        written: list[str] = []
        if new_key is not None and _add_key(base, new_key, fingerprints):
            written.append("/" + HOST_KEYRING)
        legacy = systemd < TRANSFER_SUFFIX_SINCE
        definitions = _target_dir(base, "etc/sysupdate.d")
        removed, transfers = [], []
        for name, arch, kind in extensions:
            text = transfer(name, arch, url, instances, legacy=legacy, kind=kind,
                            suffix=suffixes[name], feature=features)
            own, other = (f"{name}.conf", f"{name}.transfer") if legacy else \
                (f"{name}.transfer", f"{name}.conf")
            if _write_if_changed(definitions, own, text.encode()):
                written.append(f"/etc/sysupdate.d/{own}")
            transfers.append(f"/etc/sysupdate.d/{own}")
            # 257 reads *.conf too: a legacy file left from before an upgrade would install
            # every version twice; only a file publish wrote is removed
            with_feature = features and systemd >= FEATURES_SINCE
            if with_feature and _write_if_changed(definitions, f"{name}.feature",
                                                  feature(name, kind, url).encode()):
                written.append(f"/etc/sysupdate.d/{name}.feature")
            for other_name in (other, *([] if with_feature else [f"{name}.feature"])):
                stale = definitions / other_name
                if stale.is_file() and not stale.is_symlink() and stale.read_bytes().startswith(
                        f"{MARK_PREFIX}{name}{MARK_SUFFIX}".encode()):
                    stale.unlink()
                    removed.append(f"/etc/sysupdate.d/{other_name}")
            directory = TARGET_DIRS[kind].lstrip("/")
            _target_dir(base, directory)
            if legacy:
                _target_dir(base, directory + ".d")
    return {"feed": source, "url": url, "systemd": systemd,
            "layout": "legacy .conf, CurrentSymlink" if legacy else ".transfer, NAME.raw.v/",
            "legacy": legacy,
            "extensions": [n for n, _, _ in extensions],
            "kinds": sorted({k for _, _, k in extensions}), "transfers": transfers,
            "written": written,
            "removed": removed, "key": key_source, "new_key_fingerprints": fingerprints}


def _write_if_changed(directory: Path, name: str, data: bytes) -> bool:
    path = directory / name
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise InputError(str(path), "is not a regular file", "remove it first")
    if path.is_file() and path.read_bytes() == data:
        return False
    _write_bytes(directory, name, data)
    return True


def _add_key(base: Path, key: Path, fingerprints: list[str]) -> bool:
    """Put ``key`` into the host keyring: written when there is none, appended (a binary
    OpenPGP keyring is a sequence of keys) when it lacks one of ``fingerprints``; whether the
    keyring changed."""
    directory = _target_dir(base, str(Path(HOST_KEYRING).parent))
    path = base / HOST_KEYRING
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise InputError(str(path), "is not a regular file", "remove it or make it one")
    if not path.exists():
        _write_bytes(directory, path.name, key.read_bytes())
        return True
    if set(fingerprints) <= _fingerprints(path):
        return False
    old = path.read_bytes()
    if old[8:12] == b"KBXf":
        raise InputError(str(path), "is a keybox (GnuPG 2.1 format), not a keyring a key can "
                         "be appended to", f"gpg --no-default-keyring --keyring {path} --import "
                         "the feed's import-pubring.gpg, then run install --feed again")
    _write_bytes(directory, path.name, old + key.read_bytes())
    return True
