"""``inspect``: what an image is and whether its verity data and signature hold, as JSON-able data.

Works on images this project did not make (systemd-repart, mkosi): partitions are named by the
systemd type table, the root hash comes from the signature JSON or else from the partition UUIDs
(as systemd 258+ guesses it), the tree is checked with ``veritysetup verify`` on extracted
partitions (no device-mapper needed), and the signature is checked the way systemd checks it in
userspace. Failures to verify are reported as data, not raised: showing them is the point;
:func:`problems` sums them up for the exit code and the human output. Asking to verify against a
certificate (``--cert``) an image that carries no signature is a problem: it was not checked.

The image may come from anyone, so its file system is read through pipeline/image/fsinfo/ with
``trusted=False`` — unpacked by unsquashfs/fsck.erofs in userspace, never loop-mounted into the
kernel — unless the verity tree verified *and* the signature verified against a certificate the
user gave (``--cert``). Verity alone proves nothing about who made the file system (anyone can
compute a tree over a crafted image); an embedded certificate is the image's own claim. Even then
the mount is read-only, nodev, nosuid and noexec, of the verified private copy.
"""

from __future__ import annotations

import json
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ...errors import InputError, PipelineError
from ...keys import fingerprint, key_algorithm, load_certificate
from ...systemd import partitions
from ...systemd.release import parse_env_file
from .. import fsinfo
from . import reader
from .gpt import has_gpt

_RELEASE_RE = re.compile(r"^/?(usr/lib|etc)/extension-release\.d/extension-release\.[^/]+$")


def inspect_image(path: Path, *, cert: Path | None = None) -> dict:
    """Describe ``path`` (DDI, or plain squashfs/erofs with optional detached verity)."""
    path = Path(path)
    if not path.exists():
        raise InputError(str(path), "no such file")
    if not path.is_file():
        raise InputError(str(path), "not a regular file", "inspect takes an image file")
    certificate = load_certificate(cert) if cert else None
    report: dict = {"path": str(path), "size": path.stat().st_size,
                    "certificate": str(cert) if cert else None}
    with tempfile.TemporaryDirectory(prefix="inspect-") as tmp:
        if has_gpt(path):
            report.update(_inspect_ddi(path, certificate, Path(tmp)))
        else:
            report.update(_inspect_plain(path, certificate, Path(tmp)))
    report["manifest"] = _manifest_next_to(path)
    report["problems"] = problems(report)
    return report


def problems(report: dict) -> list[str]:
    """What is wrong with the image, one sentence each; empty when nothing failed.

    An image whose verity verifies but whose data/verity partition UUIDs are not the halves of
    its (signed) root hash is a failure too: systemd 258+ derives the root hash from those UUIDs
    and will not activate it."""
    found = []
    verity_report = report.get("verity") or {}
    if verity_report.get("verified") is False:
        found.append(f"verity does not verify: {verity_report.get('reason')}")
    if verity_report.get("uuidsMatchRootHash") is False:
        found.append(f"partition UUIDs spell root hash {verity_report.get('rootHashFromUuids')}, "
                     f"not the signed {verity_report.get('rootHash')}: systemd 258+ derives the "
                     "root hash from the UUIDs and refuses this image")
    signature = report.get("signature") or {}
    if signature.get("verified") is False:
        found.append(f"signature does not verify: {signature.get('reason')}")
    if report.get("certificate") and not signature.get("present"):
        found.append(f"no signature to check against {report['certificate']}: the image is "
                     "not signed")
    fs = report.get("filesystem") or {}
    if fs.get("error"):
        found.append(f"file system cannot be read: {fs['error']}")
    return found


def _inspect_ddi(path: Path, certificate, tmp: Path) -> dict:
    image = reader.open_ddi(path)
    table, found = image.table, image.verity_set
    digests, image_sha, unsigned_sha = image.hashes()
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
    carried = image.signature
    blob = carried.blob if carried else None
    error = carried.error_line(f"partition {found.signature.index}") \
        if carried is not None and carried.error is not None else None
    uuid_hash = image.uuid_root_hash
    root_hash = image.root_hash
    (ok, reason), data = image.verified_copy(tmp, root_hash)
    report["verity"] = _verity(image, ok, reason, root_hash, image.root_hash_source)
    report["verity"].update(family=found.family, arch=found.arch, rootHashFromUuids=uuid_hash,
                            uuidsMatchRootHash=uuid_hash == root_hash)
    report["signature"] = (
        {"present": True, "verified": False, "reason": error} if error else
        _signature(image, blob, root_hash, certificate, reserved=found.signature is not None))
    # the copy that was verified is the one read: nothing can change it in between
    report["filesystem"] = _filesystem(data, trusted=_trusted(report))
    return report


def _inspect_plain(path: Path, certificate, tmp: Path) -> dict:
    fs_type = fsinfo.sniff(path)
    if fs_type is None:
        raise InputError(str(path), "not a squashfs, erofs or GPT disk image",
                         "inspect reads DDIs and plain squashfs/erofs images")
    image = reader.open_image(path)
    report: dict = {"format": fs_type, "sha256": image.hashes()[1]}
    detached = image.detached
    if detached is not None and detached.verity is not None:
        root_hash = image.root_hash
        if root_hash:
            # the private copy is what is verified and then read: nothing can change it between
            (ok, reason), path = image.verified_copy(tmp, root_hash)
            report["verity"] = _verity(image, ok, reason, root_hash, image.root_hash_source)
        else:
            roothash_name = path.name[:-len(".raw")] + ".roothash"
            report["verity"] = {"rootHash": None, "verified": False,
                                "reason": f"{detached.verity.name} without {roothash_name}"}
        carried = image.signature
        if carried is not None and carried.error is not None:
            report["signature"] = {"present": True, "verified": False,
                                   "reason": carried.error.line()}
        else:
            report["signature"] = _signature(image, carried.blob if carried else None,
                                             root_hash or "", certificate, reserved=False)
    else:
        report["verity"] = None
    report["filesystem"] = _filesystem(path, trusted=_trusted(report))
    return report


def _trusted(report: dict) -> bool:
    """Whether the file system may be mounted: its verity tree verified and the signature over
    that root hash verified against the certificate the user gave (see the module docstring)."""
    verity_report, signature = report.get("verity") or {}, report.get("signature") or {}
    return (verity_report.get("verified") is True and signature.get("verified") is True
            and signature.get("verifiedWith") == "given certificate")


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


def _verity(image: reader.Image, ok: bool, reason: str, root_hash: str, source: str) -> dict:
    superblock = image.superblock()
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


def _signature(image: reader.Image, blob, root_hash: str, certificate, *,
               reserved: bool) -> dict:
    if blob is None:
        return {"present": False, "reserved": reserved, "verified": None}
    embedded = blob.embedded_certificates()
    report: dict = {
        "present": True,
        "rootHash": blob.root_hash,
        "rootHashMatches": blob.root_hash == root_hash,
        "certificateFingerprint": blob.fingerprint,
        "embeddedCertificates": [{"subject": c.subject.rfc4514_string(),
                                  "fingerprint": fingerprint(c),
                                  "algorithm": key_algorithm(c.public_key())} for c in embedded],
    }
    against = certificate or (embedded[0] if embedded else None)
    if against is None:
        report.update(verified=None, reason="no certificate given and none embedded")
        return report
    ok, reason = image.check_signature(against, root_hash)
    report.update(
        verified=ok and report["rootHashMatches"],
        verifiedWith="given certificate" if certificate else "embedded certificate (not trusted)",
        reason=reason or (None if report["rootHashMatches"] else "signs a different root hash"),
    )
    if certificate is not None and blob.fingerprint:
        report["fingerprintMatches"] = blob.fingerprint == fingerprint(certificate)
    return report


def _filesystem(image: Path, *, trusted: bool) -> dict:
    """File system type, entry/file counts, bytes and the extension-release file, and how it was
    read (``readWith``: unsquashfs, fsck.erofs, or mount for a trusted image)."""
    fs_type = fsinfo.sniff(image)
    if fs_type is None:
        return {"type": None, "error": "neither squashfs nor erofs (no superblock magic at the "
                "start of the data)"}
    counts = {"entries": 0, "files": 0, "bytes": 0}
    names = []
    try:
        with _tree(image, fs_type, trusted) as (entries, read, method):
            for entry in entries:
                if entry["path"] == fsinfo.ROOT:
                    continue
                counts["entries"] += 1
                if entry["type"] == "file":
                    counts["files"] += 1
                    counts["bytes"] += entry["size"]
                    if _RELEASE_RE.match(entry["path"]):
                        names.append(entry["path"])
            names.sort()
            release = None
            if names:
                text = read(names[0]).decode(errors="replace")
                release = {"path": names[0], "fields": parse_env_file(text), "candidates": names}
    except PipelineError as err:  # named without the temporary copy's path
        error = f"{err.what} ({err.hint})" if err.hint else err.what
        return {"type": fs_type, "trusted": trusted, "error": error}
    return {"type": fs_type, **counts, "release": release, "trusted": trusted, "readWith": method}


@contextmanager
def _tree(image: Path, fs_type: str, trusted: bool):
    """(entries, read(path) → bytes, method): squashfs through unsquashfs's listing and -cat
    (nothing extracted); erofs opened once — mounted only when ``trusted``, else extracted by
    fsck.erofs — so the listing and the release file come from one read."""
    if fs_type == "squashfs":
        yield (fsinfo.list_image(image, trusted=trusted),
               lambda name: fsinfo.read_file(image, name, trusted=trusted), "unsquashfs")
        return
    with fsinfo.opened(image, trusted=trusted) as view:
        yield (fsinfo.walk_dir(view.root, hashes=False),
               lambda name: fsinfo.read_file(view.root, name), view.method)


def _manifest_next_to(image: Path) -> dict | None:
    stem = image.name[:-len(".raw")] if image.name.endswith(".raw") else image.stem
    candidate = image.with_name(f"{stem}.manifest.json")
    if not candidate.exists():
        return None
    try:
        return {"path": str(candidate), "data": json.loads(candidate.read_text())}
    except (OSError, ValueError) as err:
        return {"path": str(candidate), "error": str(err)}

