"""The one DDI reader: GPT → verity set → signature → ``veritysetup verify`` → PKCS#7 check.

:func:`open_image` reads a DDI (or a plain squashfs/erofs image with a detached
``NAME.verity``/``.roothash``/``.roothash.p7s`` next to it) once: its partition table, its verity
set (data, hash and signature partitions), its signature parsed, its root hash. The returned
:class:`Image` then checks, each at most once for the run:

- :meth:`Image.check_verity` — the whole tree with ``veritysetup verify`` (a DDI's partitions
  copied out first: no device-mapper needed), per root hash;
- :meth:`Image.check_signature` — the PKCS#7 over the root hash, per certificate;
- :meth:`Image.hashes` — sha256 per partition, of the image, and with the signature zeroed.

:func:`verify` does both checks for a set of certificates (what ``check`` and ``doctor`` ask for
every installed image). The writer (assemble.py), ``inspect``, ``diff``, ``verify``, the file
system door and the host side all read DDIs through here.

The run's cache is keyed by the path and (dev, inode, size, mtime_ns, ctime_ns) of the image and
of its detached files, and by the certificates' fingerprints. A file changed later gets another
ctime (which nothing can set back), so an entry never outlives the bytes it describes; a file
whose ctime is not older than the read by :data:`_RACY_NS` is not remembered at all (file times
tick coarsely, so a change in the same tick could keep the stamp — git's "racy clean" rule).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ...errors import InputError
from ...systemd import partitions
from ..fsinfo.ondisk import copy_range, read_range
from . import signature as sig
from . import verity
from .gpt import GptPartition, GptTable, has_gpt, read_gpt

_CHUNK = 1 << 20
#: Files changed less than this before they were read are not cached (coarse file times).
_RACY_NS = 100_000_000
_CACHE_SIZE = 64
#: The largest signature partition systemd reads (dissected_image_load_verity_sig_partition).
SIGNATURE_MAX = 4 * 1024 * 1024
_CACHE: OrderedDict[tuple, Image] = OrderedDict()


@dataclass(frozen=True)
class VeritySet:
    """The data, hash and (optional) signature partitions of one verity-protected file system."""

    family: str  # "root" or "usr"
    arch: str
    data: GptPartition
    hash: GptPartition
    signature: GptPartition | None

    def root_hash_from_uuids(self) -> str:
        """The root hash as the partition UUIDs spell it (DPS: data = first, verity = last half)."""
        return uuid.UUID(self.data.uuid).hex + uuid.UUID(self.hash.uuid).hex


def find_verity_set(table: GptTable) -> VeritySet | None:
    """The first root (else usr) data partition that has a verity partition of the same arch."""
    found: dict[tuple[str, str], GptPartition] = {}
    for part in table.partitions:
        known = partitions.lookup(part.type_uuid)
        if known and known[1] is not None:
            found.setdefault(known, part)
    for family in ("root", "usr"):
        for (designator, arch), data in found.items():
            if designator == family and (f"{family}-verity", arch) in found:
                return VeritySet(family, arch, data, found[(f"{family}-verity", arch)],
                                 found.get((f"{family}-verity-sig", arch)))
    return None


def hash_image(image: Path, table: GptTable, zeroed: GptPartition | None
               ) -> tuple[dict[int, str], str, str]:
    """One pass: (sha256 per partition index, image sha256, sha256 with ``zeroed`` as NULs)."""
    size = image.stat().st_size
    cuts = sorted({0, size, *(x for p in table.partitions for x in (p.offset, p.offset + p.size)
                              if x <= size)})
    per_part = {p.index: hashlib.sha256() for p in table.partitions}
    # the unsigned digest shares every byte before the zeroed partition with the whole one:
    # hashed once, then copied (two passes over the image instead of three)
    whole, unsigned = hashlib.sha256(), None
    with open(image, "rb") as fh:
        for start, end in zip(cuts, cuts[1:]):
            owners = [per_part[p.index] for p in table.partitions
                      if p.offset <= start and end <= p.offset + p.size]
            blank = zeroed is not None and zeroed.offset <= start and end <= zeroed.offset + zeroed.size
            fh.seek(start)
            left = end - start
            while left:
                chunk = fh.read(min(_CHUNK, left))
                if not chunk:
                    raise InputError(str(image), "truncated: a partition extends past the end")
                left -= len(chunk)
                if blank and unsigned is None:
                    unsigned = whole.copy()
                whole.update(chunk)
                if unsigned is not None:
                    unsigned.update(bytes(len(chunk)) if blank else chunk)
                for h in owners:
                    h.update(chunk)
    return ({i: h.hexdigest() for i, h in per_part.items()}, whole.hexdigest(),
            (unsigned or whole).hexdigest())


def extract(image: Path, part: GptPartition, dest: Path) -> Path:
    """Copy one partition out of ``image`` into ``dest`` (for veritysetup)."""
    return copy_range(image, part.offset, part.size, dest)


@dataclass(frozen=True)
class Signature:
    """The signature an image carries, as read (checked by :meth:`Image.check_signature`).

    ``where``: the partition's designator (``root-verity-sig``) or the file's name
    (``NAME.roothash.p7s``). ``blob`` is None for a reserved, all-zero partition (an unsigned
    build) or when ``error`` says why it cannot be read."""

    where: str
    blob: sig.SignatureBlob | None
    error: InputError | None = None
    raw: bytes | None = None  # a DDI's whole signature partition
    size: int = 0  # bytes of the partition or file

    @property
    def present(self) -> bool:
        """Something is there (a signature, or bytes that are not one)."""
        return self.blob is not None or self.error is not None

    def error_line(self, where: str) -> str:
        """The read error as one line, naming ``where`` instead of the image."""
        assert self.error is not None
        return InputError(where, self.error.what, self.error.hint).line()


@dataclass(frozen=True)
class Detached:
    """``NAME.verity``, ``NAME.roothash``, ``NAME.roothash.p7s`` next to a plain ``NAME.raw``
    (each None when absent)."""

    verity: Path | None
    roothash: Path | None
    p7s: Path | None


class Image:
    """One image as read by :func:`open_image`; its checks are remembered on it."""

    def __init__(self, path: Path):
        self.path = path
        self.table: GptTable | None = None
        self.verity_set: VeritySet | None = None
        self.detached: Detached | None = None
        self.signature: Signature | None = None  # None: no place for one
        self.uuid_root_hash: str | None = None
        self.root_hash: str | None = None  # the signed one, else the UUIDs' (plain: NAME.roothash)
        self.root_hash_source: str | None = None
        self._verity: dict[str, tuple[bool, str]] = {}
        self._signatures: dict[tuple[str, str], tuple[bool, str]] = {}
        self._hashes: tuple[dict[int, str], str, str] | None = None
        self._stamp: tuple = ()

    @property
    def format(self) -> str:
        return "ddi" if self.table is not None else "plain"

    # -- reading ---------------------------------------------------------------------------

    def _read_ddi(self) -> None:
        self.table = read_gpt(self.path)
        found = self.verity_set = find_verity_set(self.table)
        if found is None:
            return
        self.uuid_root_hash = found.root_hash_from_uuids()
        self.root_hash, self.root_hash_source = self.uuid_root_hash, "partition-uuids"
        if found.signature is not None:
            part = found.signature
            where = (partitions.lookup(part.type_uuid) or ("signature",))[0]
            if part.size > SIGNATURE_MAX:  # not read into memory: systemd refuses it too
                self.signature = Signature(where, None, InputError(
                    str(self.path), f"signature partition of {part.size} bytes: systemd reads "
                    f"at most {SIGNATURE_MAX} (dissect-image.c: EFBIG)"), None, part.size)
                return
            raw = read_range(self.path, part.offset, part.size)
            try:
                blob, error = sig.parse_partition(raw, str(self.path)), None
            except InputError as err:
                blob, error = None, err
            self.signature = Signature(where, blob, error, raw, part.size)
            if blob is not None:
                self.root_hash, self.root_hash_source = blob.root_hash, "signature"

    def _read_plain(self) -> None:
        name = self.path.name
        if not name.endswith(".raw"):
            return
        base = self.path.with_name(name[:-len(".raw")])
        found = {s: Path(f"{base}{s}") for s in (".verity", ".roothash", ".roothash.p7s")}
        found = {s: p if p.is_file() else None for s, p in found.items()}
        self.detached = Detached(found[".verity"], found[".roothash"], found[".roothash.p7s"])
        if self.detached.roothash is not None:
            text = self.detached.roothash.read_text(errors="replace").strip().lower()
            self.root_hash = text or None
            self.root_hash_source = self.detached.roothash.name
        p7s = self.detached.p7s
        if p7s is not None:
            try:
                blob = sig.SignatureBlob(self.root_hash or "", None, sig.read_p7s(p7s))
                self.signature = Signature(p7s.name, blob, None, None, p7s.stat().st_size)
            except InputError as err:
                self.signature = Signature(p7s.name, None, err, None, p7s.stat().st_size)

    def files(self) -> list[Path | None]:
        """The image and its detached files: what the cache key is made of."""
        d = self.detached
        return [self.path] if d is None else [self.path, d.verity, d.roothash, d.p7s]

    # -- checking ---------------------------------------------------------------------------

    def require_ddi(self) -> Image:
        """This image, or the InputError read_gpt gives for a file that is not a DDI."""
        if self.table is None:
            raise InputError(str(self.path), "no GPT partition table", "not a disk image (DDI)")
        return self

    def hashes(self) -> tuple[dict[int, str], str, str]:
        """(sha256 per partition index, image sha256, sha256 with the signature partition as
        NULs); a plain image: ({}, sha256, sha256)."""
        if self._hashes is None:
            if self.table is None:
                from ...digest import hash_file

                whole = hash_file(self.path)[0]
                self._hashes = ({}, whole, whole)
            else:
                zeroed = self.verity_set.signature if self.verity_set else None
                self._hashes = hash_image(self.path, self.table, zeroed)
        return self._hashes

    def superblock(self) -> verity.Superblock | None:
        """The dm-verity superblock at the start of the hash partition (or NAME.verity)."""
        if self.verity_set is not None:
            head = read_range(self.path, self.verity_set.hash.offset, verity.SUPERBLOCK_SIZE)
        elif self.detached is not None and self.detached.verity is not None:
            head = read_range(self.detached.verity, 0, verity.SUPERBLOCK_SIZE)
        else:
            return None
        return verity.parse_superblock(head)

    def check_verity(self, root_hash: str | None = None) -> tuple[bool, str]:
        """``veritysetup verify`` of the data against the hash tree and ``root_hash`` (default:
        :attr:`root_hash`): (ok, reason). Once per root hash for the run."""
        root_hash = self.root_hash if root_hash is None else root_hash
        key = (root_hash or "").lower()
        if key not in self._verity:
            if self.verity_set is not None:
                with tempfile.TemporaryDirectory(prefix="ddi-verify-") as tmp:
                    result = self._verify_copy(Path(tmp), root_hash or "")[0]
            else:
                result = verity.verify(self.path, self._detached_tree(), root_hash or "")
            self._remember_verity(key, result)
        return self._verity[key]

    def verified_copy(self, dest: Path, root_hash: str | None = None
                      ) -> tuple[tuple[bool, str], Path]:
        """Copy the data (a DDI's data partition, a plain image whole) into ``dest`` and verify
        that copy: ((ok, reason), the copy). What is then read is what was verified."""
        root_hash = self.root_hash if root_hash is None else root_hash
        if self.verity_set is not None:
            result, data = self._verify_copy(dest, root_hash or "")
        else:
            data = copy_range(self.path, 0, None, dest / "data")
            result = verity.verify(data, self._detached_tree(), root_hash or "")
        self._remember_verity((root_hash or "").lower(), result)
        return result, data

    def _verify_copy(self, dest: Path, root_hash: str) -> tuple[tuple[bool, str], Path]:
        found = self.verity_set
        data = extract(self.path, found.data, dest / "data")
        tree = extract(self.path, found.hash, dest / "hash")
        return verity.verify(data, tree, root_hash), data

    def _detached_tree(self) -> Path:
        if self.detached is None or self.detached.verity is None:
            raise InputError(str(self.path), "no verity: neither a verity partition nor a "
                             "NAME.verity next to it")
        return self.detached.verity

    def _remember_verity(self, key: str, result: tuple[bool, str]) -> None:
        self._verity[key] = result
        if _stamps(self.files()) != self._stamp:  # changed while it was read: forget it
            _CACHE.pop(self._key(), None)

    def _key(self) -> tuple:
        return (str(self.path), self._stamp)

    def signed_root_hash(self) -> str:
        """The root hash the signature is over: a DDI's signature names it, a detached
        ``.p7s`` is over ``NAME.roothash`` ("" when there is none)."""
        s = self.signature
        if s is not None and s.blob is not None and self.table is not None:
            return s.blob.root_hash
        return self.root_hash or ""

    def check_signature(self, certificate, root_hash: str | None = None) -> tuple[bool, str]:
        """Whether the signature is ``certificate``'s over ``root_hash`` (default:
        :meth:`signed_root_hash`): (ok, reason). Once per certificate and root hash."""
        from ...keys import fingerprint

        s = self.signature
        if s is None or s.blob is None:
            return False, (s.error.what if s is not None and s.error else "not signed")
        root_hash = self.signed_root_hash() if root_hash is None else root_hash
        key = (fingerprint(certificate), root_hash.lower())
        if key not in self._signatures:
            self._signatures[key] = sig.verify(s.blob.der, root_hash, certificate)
        return self._signatures[key]

    def trusted_by(self, certificates: Sequence) -> int | None:
        """The index of the first certificate whose signature this is (over the root hash it
        signs), None when none is — or when the image is not signed, or is a plain image
        without ``NAME.verity`` (then nothing reads its ``.p7s``)."""
        s = self.signature
        if s is None or s.blob is None:
            return None
        if self.table is None and (self.detached is None or self.detached.verity is None):
            return None
        for i, certificate in enumerate(certificates):
            if self.check_signature(certificate)[0]:
                return i
        return None


@dataclass(frozen=True)
class Verdict:
    """What :func:`verify` found: the verity tree's check (None: the image has no verity),
    whether it carries a signature, and which certificate (an index) verifies it."""

    verity: tuple[bool, str] | None
    signed: bool
    verified_by: int | None


def open_image(path: Path) -> Image:
    """Read ``path`` (a DDI, else a plain image and its detached verity files), remembered for
    the run (see the module docstring). A partition table that cannot be read is an InputError
    naming the image."""
    path = Path(path)
    read_at = time.time_ns()
    files = [path]
    is_ddi = has_gpt(path)
    if not is_ddi and path.name.endswith(".raw"):
        base = str(path)[:-len(".raw")]
        files += [Path(base + s) for s in (".verity", ".roothash", ".roothash.p7s")]
    stamp = _stamps(files)
    cached = _CACHE.get((str(path), stamp))
    if cached is not None:
        _CACHE.move_to_end(cached._key())
        return cached
    image = Image(path)
    image._stamp = stamp
    if is_ddi:
        image._read_ddi()
    else:
        image._read_plain()
    if _stamps(files) == stamp and all(s is None or s[4] < read_at - _RACY_NS for s in stamp):
        _CACHE[image._key()] = image
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return image


def open_ddi(path: Path) -> Image:
    """:func:`open_image` of a file that must be a DDI (else read_gpt's InputError)."""
    return open_image(path).require_ddi()


def verify(path: Path, certificates: Sequence) -> Verdict:
    """The verity tree checked once and the signature against ``certificates`` (loaded X.509
    certificates, in the order to try them), for the run."""
    image = open_image(path)
    has_verity = image.verity_set is not None or (
        image.detached is not None and image.detached.verity is not None
        and image.root_hash is not None)
    return Verdict(image.check_verity() if has_verity else None,
                   image.signature is not None and image.signature.present,
                   image.trusted_by(certificates))


def clear_cache() -> None:
    """Forget every image read so far (a new run in the same process)."""
    _CACHE.clear()


def _stamps(files: list[Path | None]) -> tuple:
    out = []
    for f in files:
        try:
            st = os.stat(f) if f is not None else None
        except FileNotFoundError:
            st = None
        except OSError as err:
            raise InputError(str(f), f"cannot read: {(err.strerror or str(err)).lower()}") \
                from None
        out.append(None if st is None else
                   (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)
