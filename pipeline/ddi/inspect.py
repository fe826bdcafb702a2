"""``inspect``: what an image is and whether its verity data and signature hold, as JSON-able data.

Works on images this project did not make (systemd-repart, mkosi): partitions are named by the
systemd type table, the root hash comes from the signature JSON or else from the partition UUIDs
(as systemd 258+ guesses it), the tree is checked with ``veritysetup verify`` on extracted
partitions (no device-mapper needed), and the signature is checked the way systemd checks it in
userspace. Failures to verify are reported as data, not raised: showing them is the point.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from .. import tools
from ..errors import InputError, PipelineError
from ..keys import key_algorithm, load_certificate
from ..systemd import partitions
from ..systemd.release import parse_env_file
from . import signature as sig
from . import verity
from .assemble import (
    extract,
    find_verity_set,
    hash_image,
    read_range,
    sha256_file,
    sniff_fs_type,
)
from .gpt import has_gpt, read_gpt

_RELEASE_RE = re.compile(r"^/?(usr/lib|etc)/extension-release\.d/extension-release\.[^/]+$")


def inspect_image(path: Path, *, cert: Path | None = None) -> dict:
    """Describe ``path`` (DDI, or plain squashfs/erofs with optional detached verity)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "not a file")
    certificate = load_certificate(cert) if cert else None
    report: dict = {"path": str(path), "size": path.stat().st_size}
    with tempfile.TemporaryDirectory(prefix="inspect-") as tmp:
        if has_gpt(path):
            report.update(_inspect_ddi(path, certificate, Path(tmp)))
        else:
            report.update(_inspect_plain(path, certificate))
    report["manifest"] = _manifest_next_to(path)
    return report


def _inspect_ddi(path: Path, certificate, tmp: Path) -> dict:
    table = read_gpt(path)
    found = find_verity_set(table)
    digests, image_sha, unsigned_sha = hash_image(
        path, table, found.signature if found else None)
    report: dict = {
        "format": "ddi",
        "sha256": image_sha,
        "diskUuid": table.disk_uuid,
        "sectorSize": table.sector_size,
        "partitions": [_partition(p, digests[p.index]) for p in table.partitions],
    }
    if found is None:
        report["verity"] = None
        return report
    report["unsignedSha256"] = unsigned_sha
    blob = error = None
    if found.signature is not None:
        raw = read_range(path, found.signature.offset, found.signature.size)
        try:
            blob = sig.parse_partition(raw, f"partition {found.signature.index}")
        except InputError as err:
            error = err.line()
    uuid_hash = found.root_hash_from_uuids()
    root_hash = blob.root_hash if blob else uuid_hash
    data = extract(path, found.data, tmp / "data")
    hash_file = extract(path, found.hash, tmp / "hash")
    report["verity"] = _verity(data, hash_file, root_hash, "signature" if blob else "partition-uuids")
    report["verity"].update(family=found.family, arch=found.arch,
                            uuidsMatchRootHash=uuid_hash == root_hash)
    report["signature"] = (
        {"present": True, "verified": False, "reason": error} if error else
        _signature(blob, root_hash, certificate, reserved=found.signature is not None))
    report["filesystem"] = _filesystem(data, tmp)
    return report


def _inspect_plain(path: Path, certificate) -> dict:
    fs_type = sniff_fs_type(path)
    report: dict = {"format": fs_type or "unknown", "sha256": sha256_file(path)}
    if fs_type is None:
        return report
    base = str(path)[:-len(".raw")] if path.name.endswith(".raw") else None
    hash_file = Path(f"{base}.verity") if base else None
    if hash_file and hash_file.exists():
        roothash_file = Path(f"{base}.roothash")
        root_hash = roothash_file.read_text().strip() if roothash_file.exists() else None
        if root_hash:
            report["verity"] = _verity(path, hash_file, root_hash, roothash_file.name)
        else:
            report["verity"] = {"rootHash": None, "verified": False,
                                "reason": f"{hash_file.name} without {roothash_file.name}"}
        p7s = Path(f"{base}.roothash.p7s")
        try:
            blob = sig.SignatureBlob(root_hash or "", None, sig.read_p7s(p7s)) if p7s.exists() else None
            report["signature"] = _signature(blob, root_hash or "", certificate, reserved=False)
        except InputError as err:
            report["signature"] = {"present": True, "verified": False, "reason": err.line()}
    else:
        report["verity"] = None
    with tempfile.TemporaryDirectory(prefix="inspect-") as tmp:
        report["filesystem"] = _filesystem(path, Path(tmp))
    return report


def _partition(p, digest: str) -> dict:
    designator, arch = partitions.lookup(p.type_uuid) or (None, None)
    return {
        "index": p.index,
        "designator": designator,
        "arch": arch,
        "type": partitions.type_name(p.type_uuid),
        "typeUuid": p.type_uuid,
        "uuid": p.uuid,
        "label": p.name,
        "offset": p.offset,
        "size": p.size,
        "flags": partitions.flag_names(p.attributes),
        "sha256": digest,
    }


def _verity(data: Path, hash_file: Path, root_hash: str, source: str) -> dict:
    superblock = verity.parse_superblock(read_range(hash_file, 0, verity.SUPERBLOCK_SIZE))
    ok, reason = verity.verify(data, hash_file, root_hash)
    return {
        "rootHash": root_hash,
        "rootHashSource": source,
        "superblock": None if superblock is None else {
            **superblock.params().to_manifest(),
            "version": superblock.version,
            "hashType": superblock.hash_type,
            "dataBlocks": superblock.data_blocks,
        },
        "verified": ok,
        "reason": reason or None,
    }


def _signature(blob, root_hash: str, certificate, *, reserved: bool) -> dict:
    if blob is None:
        return {"present": False, "reserved": reserved, "verified": None}
    embedded = blob.embedded_certificates()
    report: dict = {
        "present": True,
        "rootHash": blob.root_hash,
        "rootHashMatches": blob.root_hash == root_hash,
        "certificateFingerprint": blob.fingerprint,
        "embeddedCertificates": [{"subject": c.subject.rfc4514_string(),
                                  "fingerprint": sig.fingerprint(c),
                                  "algorithm": key_algorithm(c.public_key())} for c in embedded],
    }
    against = certificate or (embedded[0] if embedded else None)
    if against is None:
        report.update(verified=None, reason="no certificate given and none embedded")
        return report
    ok, reason = sig.verify(blob.der, root_hash, against)
    report.update(
        verified=ok and report["rootHashMatches"],
        verifiedWith="given certificate" if certificate else "embedded certificate (not trusted)",
        reason=reason or (None if report["rootHashMatches"] else "signs a different root hash"),
    )
    if certificate is not None and blob.fingerprint:
        report["fingerprintMatches"] = blob.fingerprint == sig.fingerprint(certificate)
    return report


def _filesystem(image: Path, tmp: Path) -> dict:
    """File system type, file count/bytes and the extension-release file, read without mounting."""
    fs_type = sniff_fs_type(image)
    try:
        if fs_type == "squashfs":
            entries, read = _squashfs_entries(image), lambda p: _squashfs_cat(image, p)
        elif fs_type == "erofs":
            root = _erofs_extract(image, tmp / "erofs")
            entries = _tree_entries(root)
            read = lambda p: (root / p.lstrip("/")).read_bytes()  # noqa: E731
        else:
            return {"type": fs_type}
    except PipelineError as err:
        return {"type": fs_type, "error": err.line()}
    files = [(p, size) for p, kind, size in entries if kind == "-"]
    release = None
    names = sorted(p for p, _ in files if _RELEASE_RE.match(p))
    if names:
        text = read(names[0]).decode(errors="replace")
        release = {"path": names[0].lstrip("/"), "fields": parse_env_file(text),
                   "candidates": [n.lstrip("/") for n in names]}
    return {"type": fs_type, "entries": len(entries), "files": len(files),
            "bytes": sum(size for _, size in files), "release": release}


def _squashfs_entries(image: Path) -> list[tuple[str, str, int]]:
    out = tools.run("unsquashfs", ["-lln", "-d", "", image], what=f"listing {image.name}").stdout
    entries = []
    for line in out.decode(errors="replace").splitlines():
        fields = line.split(None, 5)
        if len(fields) < 6 or not fields[5].startswith("/"):
            continue  # the root directory (empty path) and anything unparseable
        path = fields[5].split(" -> ", 1)[0] if fields[0][0] == "l" else fields[5]
        size = int(fields[2]) if fields[2].isdigit() else 0
        entries.append((path, fields[0][0], size))
    return entries


def _squashfs_cat(image: Path, path: str) -> bytes:
    return tools.run("unsquashfs", ["-cat", image, path.lstrip("/")],
                     what=f"reading {path} from {image.name}").stdout


def _erofs_extract(image: Path, dest: Path) -> Path:
    tools.run("fsck.erofs", [f"--extract={dest}", "--no-preserve", image],
              what=f"extracting {image.name}")
    return dest


def _tree_entries(root: Path) -> list[tuple[str, str, int]]:
    entries = []
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            full = Path(directory, name)
            st = full.lstat()
            kind = "l" if full.is_symlink() else "d" if full.is_dir() else "-" if full.is_file() else "?"
            entries.append(("/" + str(full.relative_to(root)), kind, st.st_size if kind == "-" else 0))
    return entries


def _manifest_next_to(image: Path) -> dict | None:
    stem = image.name[:-len(".raw")] if image.name.endswith(".raw") else image.stem
    candidate = image.with_name(f"{stem}.manifest.json")
    if not candidate.exists():
        return None
    try:
        return {"path": str(candidate), "data": json.loads(candidate.read_text())}
    except (OSError, ValueError) as err:
        return {"path": str(candidate), "error": str(err)}

