"""Reading a DDI: GPT → the verity set (data, hash, signature partitions) → per-partition
hashes → ``veritysetup verify``. The writer (assemble.py), the inspector, ``diff``, ``verify`` and
the file-system door all read DDIs through here, so there is one way to find a verity set.
"""

from __future__ import annotations

import hashlib
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from ...errors import InputError
from ...systemd import partitions
from ..fsinfo.ondisk import copy_range
from . import verity
from .gpt import GptPartition, GptTable

_CHUNK = 1 << 20


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
    whole, unsigned = hashlib.sha256(), hashlib.sha256()
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
                whole.update(chunk)
                unsigned.update(bytes(len(chunk)) if blank else chunk)
                for h in owners:
                    h.update(chunk)
    return ({i: h.hexdigest() for i, h in per_part.items()}, whole.hexdigest(),
            unsigned.hexdigest())


def extract(image: Path, part: GptPartition, dest: Path) -> Path:
    """Copy one partition out of ``image`` into ``dest`` (for veritysetup)."""
    return copy_range(image, part.offset, part.size, dest)


def verify_partitions(image: Path, found: VeritySet, root_hash: str) -> tuple[bool, str]:
    """``veritysetup verify`` of the data partition against the hash partition and root hash."""
    with tempfile.TemporaryDirectory(prefix="ddi-verify-") as tmp:
        data = extract(image, found.data, Path(tmp, "data"))
        verity_tree = extract(image, found.hash, Path(tmp, "hash"))
        return verity.verify(data, verity_tree, root_hash)
