"""Write a DDI (GPT: root + root-verity + root-verity-sig), byte-for-byte reproducibly; sign it later.

Layout is systemd's ``--make-ddi=sysext`` convention. systemd-repart writes the GPT (it owns those
details), but is given nothing to decide: every partition is ``CopyBlocks=`` of a file we made, with
fixed size, label, flags and UUID, and ``--seed`` fixes the disk UUID. The verity tree comes from
veritysetup with seed-derived salt and superblock UUID (see verity.py), because repart ≤254 would
randomize both. The data/verity partition UUIDs are the two halves of the root hash, copied as raw
bytes (no version bits), as repart 255+ does and systemd 258+ relies on. The signature partition
UUID is the one repart itself would derive from the seed. repart 252 and 254 then write the same
bytes; ``assemble_ddi`` re-reads the table and fails if repart placed anything differently.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from ... import tools
from ...digest import hash_file
from ...errors import BuildError, InputError
from ...keys import Signer, fingerprint, key_algorithm, load_certificate
from ...systemd import partitions
from ..fsinfo.ondisk import read_range, sniff
from . import signature as sig
from . import verity
from .reader import open_ddi

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Repart:
    """Which systemd-repart to run (the host's by default; tests also run 254, 257 and 262).

    ``args`` come before repart's own arguments (``path`` may be a dynamic loader and ``args``
    its options and the binary)."""

    path: str = "systemd-repart"
    env: Mapping[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class PartitionInfo:
    designator: str | None
    type_uuid: str
    uuid: str
    label: str
    offset: int
    size: int
    flags: tuple[str, ...]
    sha256: str


@dataclass(frozen=True)
class DdiInfo:
    disk_uuid: str
    partitions: tuple[PartitionInfo, ...]
    verity: verity.VerityParams
    root_hash: str
    certificate_fingerprint: str | None
    signature_algorithm: str | None
    unsigned_sha256: str  # the image with the signature partition zeroed: stable across signings
    sha256: str
    size: int
    warnings: tuple[str, ...] = ()


def assemble_ddi(fs_image: Path, output: Path, *, arch: str, fs_type: str, seed: bytes,
                 signer: Signer | None, workdir: Path, repart: Repart = Repart()) -> DdiInfo:
    """Wrap ``fs_image`` into a DDI at ``output`` (atomically); unsigned if ``signer`` is None."""
    fs_image, output = Path(fs_image), Path(output)
    types = {d: partitions.type_uuid(d, arch) for d in ("root", "root-verity", "root-verity-sig")}
    check_fs_type(fs_image, fs_type)
    params = verity.params_from_seed(seed)
    disk_seed = verity.repart_seed(seed)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    with tempfile.TemporaryDirectory(prefix="ddi-", dir=workdir) as work_name:
        work = Path(work_name)
        data = _block_aligned(fs_image, work / "data.img")
        verity_tree = work / "verity.img"
        root_hash = verity.format_hash(data, verity_tree, params)
        _pad_to_block(verity_tree)
        sig_file = work / "signature.img"
        warnings: list[str] = []
        if signer is None:
            sig_file.write_bytes(bytes(sig.PARTITION_SIZE))
        else:
            der, warnings = sig.sign_root_hash(root_hash, signer)
            sig_file.write_bytes(sig.partition_content(root_hash, signer.fingerprint, der))
        rh = bytes.fromhex(root_hash)
        layout = [
            ("root", types["root"], str(uuid.UUID(bytes=rh[:16])), data, True),
            ("root-verity", types["root-verity"], str(uuid.UUID(bytes=rh[-16:])), verity_tree, True),
            ("root-verity-sig", types["root-verity-sig"],
             _seeded_uuid(disk_seed, types["root-verity-sig"]), sig_file, False),
        ]
        definitions = _write_definitions(work / "repart.d", layout)
        tmp.unlink(missing_ok=True)
        try:
            tools.run(repart.path, [
                *repart.args, "--dry-run=no", "--empty=create", f"--size={disk_size(layout)}",
                "--discard=no", "--no-pager",
                f"--seed={disk_seed}", f"--definitions={definitions}", tmp,
            ], env=repart.env, what=f"writing the partition table of {output.name}")
            info = describe(tmp, warnings=tuple(warnings))
            _check_layout(tmp, info, layout, _seeded_uuid(disk_seed, "disk-uuid"))
            os.replace(tmp, output)
        finally:
            tmp.unlink(missing_ok=True)
    return info


def sign_ddi(image: Path, *, signer: Signer | None = None, p7s: Path | None = None,
             cert: Path | None = None, replace: bool = False) -> DdiInfo:
    """Fill the signature partition of ``image`` in place (atomically); no other byte changes.

    The root hash is taken from the partition UUIDs and checked against the verity tree first, so
    a tampered image is never signed. A ``p7s`` made elsewhere must be in systemd-repart's shape
    (detached, no signed attributes) and verify against ``cert`` and that root hash before it is
    written. A signature by a different certificate already in the partition is replaced only
    with ``replace``: silently swapping who vouches for an image is not a side effect to hide.
    """
    image = Path(image)
    if (signer is None) == (p7s is None) or (p7s is not None and cert is None):
        raise InputError("sign", "give either a key + certificate or a .p7s + its certificate")
    read = open_ddi(image)
    found = read.verity_set
    if found is None or found.signature is None:
        raise InputError(str(image), "no verity signature partition", "build it as a DDI")
    root_hash = found.root_hash_from_uuids()
    ok, reason = read.check_verity(root_hash)
    if not ok:
        raise InputError(str(image), f"verity data does not match root hash {root_hash}: "
                         f"{reason}", "refusing to sign a damaged or foreign image")
    der, certificate, warnings = _new_signature(root_hash, signer, p7s, cert)
    signed_by = fingerprint(certificate)
    existing = read.signature
    previous = (set() if existing.error is not None  # not a signature systemd could read:
                else None if existing.blob is None  # replacing it needs consent too
                else _signers(existing.blob.der, existing.blob.fingerprint))
    _check_replace(image, previous, signed_by, replace)
    content = sig.partition_content(root_hash, signed_by, der, found.signature.size)
    tmp = image.with_name(f".{image.name}.tmp-{os.getpid()}")
    try:
        shutil.copyfile(image, tmp)
        shutil.copymode(image, tmp)
        with open(tmp, "r+b") as fh:
            fh.seek(found.signature.offset)
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, image)
    finally:
        tmp.unlink(missing_ok=True)
    return describe(image, warnings=tuple(warnings))


def sign_detached(image: Path, *, signer: Signer | None = None, p7s: Path | None = None,
                  cert: Path | None = None, replace: bool = False) -> DetachedVerity:
    """Write ``NAME.roothash.p7s`` for a plain ``NAME.raw`` with ``NAME.verity`` and
    ``NAME.roothash`` next to it (``build --unsigned`` with ``verity = "detached"``).

    Like :func:`sign_ddi`: the tree is checked against the image and the root hash first (a
    damaged or swapped image is never signed), a ``p7s`` must be in systemd-repart's shape and
    verify, and another signer's ``.p7s`` is replaced only with ``replace``. Returns what a signed
    build records, so the manifest can be brought to the same bytes.
    """
    image = Path(image)
    if (signer is None) == (p7s is None) or (p7s is not None and cert is None):
        raise InputError("sign", "give either a key + certificate or a .p7s + its certificate")
    if not image.name.endswith(".raw"):
        raise InputError(str(image), "neither a DDI nor an image named NAME.raw",
                         "systemd finds NAME.verity/NAME.roothash only next to NAME.raw")
    base = image.with_name(image.name[:-len(".raw")])
    verity_path, roothash_path = Path(f"{base}.verity"), Path(f"{base}.roothash")
    signature_path = Path(f"{base}.roothash.p7s")
    for companion in (roothash_path, verity_path):
        if not companion.is_file():
            raise InputError(str(image), f"neither a DDI nor an image with {companion.name} "
                             "next to it", 'build with format = "ddi" or verity = "detached"')
    try:
        root_hash = roothash_path.read_text().strip().lower()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(str(roothash_path), f"cannot read root hash: {err}") from None
    if not re.fullmatch(r"(?:[0-9a-f]{2}){16,}", root_hash):
        raise InputError(str(roothash_path), "not a hex root hash")
    superblock = verity.parse_superblock(read_range(verity_path, 0, verity.SUPERBLOCK_SIZE))
    if superblock is None:
        raise InputError(str(verity_path), "no dm-verity superblock",
                         "systemd needs the superblock to read the tree's parameters")
    ok, reason = verity.verify(image, verity_path, root_hash)
    if not ok:
        raise InputError(str(image), f"verity data does not match root hash {root_hash} "
                         f"({verity_path.name}): {reason}",
                         "refusing to sign a damaged or foreign image")
    der, certificate, warnings = _new_signature(root_hash, signer, p7s, cert)
    signed_by = fingerprint(certificate)
    if signature_path.exists():
        try:
            old = sig.read_p7s(signature_path)
            previous = _signers(old)
            if not previous and sig.verify(old, root_hash, certificate)[0]:
                previous = {signed_by}  # made without certificates (-nocerts), but by this one
        except InputError:
            previous = set()
        _check_replace(signature_path, previous, signed_by, replace)
    _install(der, signature_path)
    return DetachedVerity(
        verity_path=verity_path,
        roothash_path=roothash_path,
        signature_path=signature_path,
        root_hash=root_hash,
        verity=superblock.params(),
        verity_sha256=hash_file(verity_path)[0],
        certificate_fingerprint=signed_by,
        signature_algorithm=key_algorithm(certificate.public_key()),
        warnings=tuple(warnings),
    )


def _new_signature(root_hash: str, signer: Signer | None, p7s: Path | None,
                   cert: Path | None) -> tuple[bytes, x509.Certificate, list[str]]:
    """(DER signature, the signer's certificate, warnings): made with ``signer``, or a
    ``p7s`` made elsewhere, checked for systemd's shape and against ``cert`` and the root hash."""
    if signer is not None:
        der, warnings = sig.sign_root_hash(root_hash, signer)
        return der, signer.certificate, warnings
    certificate = load_certificate(cert)
    der = sig.read_p7s(p7s)
    sig.check_format(der, str(p7s))
    ok, reason = sig.verify(der, root_hash, certificate)
    if not ok:
        raise InputError(str(p7s), f"not a signature by {cert} over root hash {root_hash}: "
                         f"{reason}", "sign the image's .roothash with that certificate's key")
    return der, certificate, []


def _signers(der: bytes, claimed: str | None = None) -> set[str]:
    """Fingerprints of the certificates an existing signature names (claimed + embedded)."""
    blob = sig.SignatureBlob("", claimed, der)
    return {claimed, *(fingerprint(c) for c in blob.embedded_certificates())} - {None}


def _check_replace(where: Path, previous: set[str] | None, signed_by: str, replace: bool) -> None:
    """Refuse to replace a signature by someone else (or an unreadable one) unless ``replace``.
    Re-signing with the same certificate is fine: for RSA it gives the same bytes again."""
    if previous is None or signed_by in previous or replace:
        return
    what = (f"already signed by certificate {', '.join(sorted(previous))}" if previous else
            "already holds a signature whose signer cannot be read")
    raise InputError(str(where), f"{what}, not by {signed_by}",
                     "pass --force to replace that signature")


@dataclass(frozen=True)
class DetachedVerity:
    """``NAME.verity``/``NAME.roothash``/``NAME.roothash.p7s``, found by systemd next to ``NAME.raw``."""

    verity_path: Path
    roothash_path: Path
    signature_path: Path | None
    root_hash: str
    verity: verity.VerityParams
    verity_sha256: str
    certificate_fingerprint: str | None
    signature_algorithm: str | None
    warnings: tuple[str, ...] = ()


def detached_verity(fs_image: Path, *, seed: bytes, signer: Signer | None, workdir: Path,
                    image_name: str | None = None) -> DetachedVerity:
    """Write detached verity files next to a plain squashfs/erofs image (named for ``image_name``,
    default the image's own name, which must end in ``.raw``: systemd derives the names from it)."""
    fs_image = Path(fs_image)
    name = image_name or fs_image.name
    if not name.endswith(".raw"):
        raise InputError(name, "detached verity needs an image named NAME.raw",
                         "systemd looks for NAME.verity/NAME.roothash only next to NAME.raw")
    if sniff(fs_image) is None:
        raise InputError(str(fs_image), "not a squashfs or erofs image")
    base = fs_image.parent / name[:-len(".raw")]
    params = verity.params_from_seed(seed)
    with tempfile.TemporaryDirectory(prefix="verity-", dir=workdir) as work:
        verity_tree = Path(work, "verity")
        root_hash = verity.format_hash(fs_image, verity_tree, params)
        verity_path = _install(verity_tree, Path(f"{base}.verity"))
    roothash_path = Path(f"{base}.roothash")
    _install((root_hash + "\n").encode(), roothash_path)
    signature_path = Path(f"{base}.roothash.p7s")
    warnings: list[str] = []
    if signer is None:
        signature_path.unlink(missing_ok=True)  # a stale one would not match the new root hash
    else:
        der, warnings = sig.sign_root_hash(root_hash, signer)
        _install(der, signature_path)
    return DetachedVerity(
        verity_path=verity_path,
        roothash_path=roothash_path,
        signature_path=signature_path if signer else None,
        root_hash=root_hash,
        verity=params,
        verity_sha256=hash_file(verity_path)[0],
        certificate_fingerprint=signer.fingerprint if signer else None,
        signature_algorithm=signer.algorithm if signer else None,
        warnings=tuple(warnings),
    )


def describe(image: Path, *, warnings: tuple[str, ...] = ()) -> DdiInfo:
    """Read back a verity DDI: partitions with hashes, verity parameters, signature identity."""
    read = open_ddi(image)
    table, found = read.table, read.verity_set
    if found is None:
        raise InputError(str(image), "no verity-protected root or usr partition")
    digests, image_sha, unsigned_sha = read.hashes()
    superblock = read.superblock()
    if superblock is None:
        raise InputError(str(image), "verity partition has no superblock")
    fingerprint = algorithm = None
    if read.signature is not None:
        if read.signature.error is not None:
            raise read.signature.error
        blob = read.signature.blob
        if blob is not None:
            fingerprint = blob.fingerprint
            certs = blob.embedded_certificates()
            algorithm = key_algorithm(certs[0].public_key()) if certs else None
    return DdiInfo(
        disk_uuid=table.disk_uuid,
        partitions=tuple(
            PartitionInfo((partitions.lookup(p.type_uuid) or (None,))[0], p.type_uuid, p.uuid,
                          p.name, p.offset, p.size, tuple(partitions.flag_names(p.attributes)),
                          digests[p.index])
            for p in table.partitions),
        verity=superblock.params(),
        root_hash=found.root_hash_from_uuids(),
        certificate_fingerprint=fingerprint,
        signature_algorithm=algorithm,
        unsigned_sha256=unsigned_sha,
        sha256=image_sha,
        size=image.stat().st_size,
        warnings=warnings,
    )


def check_fs_type(fs_image: Path, fs_type: str) -> None:
    """Refuse an image whose magic is not the file system the caller says it is."""
    if fs_type not in ("squashfs", "erofs"):
        raise InputError(fs_type, "unsupported file system for a DDI", "one of: squashfs, erofs")
    found = sniff(fs_image)
    if found != fs_type:
        raise InputError(str(fs_image), f"not a {fs_type} image (it looks like {found or 'neither'})")


def _install(content: bytes | Path, dest: Path) -> Path:
    """Put ``content`` (bytes or a file to copy) at ``dest`` via a temporary name + rename."""
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        if isinstance(content, Path):
            shutil.copyfile(content, tmp)
        else:
            tmp.write_bytes(content)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _seeded_uuid(seed_uuid: str, token: str) -> str:
    """repart's derivations from ``--seed``: ``disk-uuid``, or a partition's type UUID (bytes)."""
    key = uuid.UUID(seed_uuid).bytes
    try:
        message = uuid.UUID(token).bytes
    except ValueError:
        message = token.encode()
    return verity.make_v4_uuid(hmac.new(key, message, hashlib.sha256).digest())


def _block_aligned(fs_image: Path, padded: Path) -> Path:
    """``fs_image`` itself when its size is a multiple of 4 KiB, else a zero-padded copy."""
    size = fs_image.stat().st_size
    if size == 0:
        raise InputError(str(fs_image), "empty file system image")
    if size % verity.BLOCK_SIZE == 0:
        return fs_image.resolve()
    shutil.copyfile(fs_image, padded)
    _pad_to_block(padded)
    return padded


def _pad_to_block(path: Path) -> None:
    size = path.stat().st_size
    os.truncate(path, -(-size // verity.BLOCK_SIZE) * verity.BLOCK_SIZE)


#: What systemd-repart 252–257 reserve for the GPT with ``--size=auto`` (repart.c
#: GPT_METADATA_SIZE, 1044 KiB); 258+ compute a smaller reserve, so the size is pinned instead.
GPT_RESERVE = 1044 * 1024
_GRAIN = 4096


def disk_size(layout) -> int:
    """The disk size repart 252–257 choose with ``--size=auto`` for ``layout``, given to every
    version explicitly: the GPT reserve plus each partition rounded up to the 4 KiB grain."""
    return GPT_RESERVE + sum(-(-src.stat().st_size // _GRAIN) * _GRAIN
                             for _d, _t, _u, src, _ro in layout)


def _write_definitions(directory: Path, layout) -> Path:
    """One repart.d file per partition: everything fixed, nothing left for repart to choose."""
    directory.mkdir()
    for n, (designator, type_id, part_uuid, source, read_only) in enumerate(layout, 1):
        size = source.stat().st_size
        lines = [
            "[Partition]",
            f"Type={type_id}",
            f"Label={partitions.type_name(type_id)}",
            f"UUID={part_uuid}",
            f"CopyBlocks={str(source.resolve()).replace('%', '%%')}",
            f"SizeMinBytes={size}",
            f"SizeMaxBytes={size}",
        ]
        # the flags, each set: repart 262 makes the signature partition read-only by default;
        # NoAuto= applies to data and verity partitions, GrowFileSystem= to data only
        lines.append(f"ReadOnly={'yes' if read_only else 'no'}")
        if not designator.endswith("-sig"):
            lines.append("NoAuto=no")
        if "-verity" not in designator:
            lines.append("GrowFileSystem=no")
        (directory / f"{n}0-{designator}.conf").write_text("\n".join(lines) + "\n")
    return directory


def _check_layout(image: Path, info: DdiInfo, layout, disk_uuid: str) -> None:
    """Fail loudly if repart chose anything itself (a new version's default would break identity)."""
    got = [(p.type_uuid, p.uuid, p.size, p.flags) for p in info.partitions]
    want = [(t, u, src.stat().st_size, ("read-only",) if ro else ())
            for _d, t, u, src, ro in layout]
    if got != want or info.disk_uuid != disk_uuid or info.size != disk_size(layout):
        raise BuildError("systemd-repart", f"wrote an unexpected partition table in {image.name}",
                         f"expected {want} on disk {disk_uuid} of {disk_size(layout)} bytes, "
                         f"got {got} on {info.disk_uuid} of {info.size} bytes")
