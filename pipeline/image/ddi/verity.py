"""dm-verity hash trees: made by veritysetup with parameters pinned by the build's seed.

systemd-repart ≤254 formats verity with a random salt and superblock UUID, so its root hash (and
with it the partition UUIDs and the signature) changes on every run. We compute the tree ourselves
and hand repart the finished blocks. The salt and UUID are derived from the seed exactly as repart
255+ derives them from ``--seed`` (HMAC-SHA256 keyed by the 128-bit seed, tokens ``verity-salt``
and ``verity-uuid``), with 4 KiB data and hash blocks like repart 255+, so a newer repart given the
same seed would make the same hash partition. A standard superblock is kept: systemd reads the
tree's parameters from it (embedded partitions and detached ``.verity`` files alike).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from ... import tools
from ...errors import BuildError, InputError

BLOCK_SIZE = 4096
ALGORITHM = "sha256"
SUPERBLOCK_SIZE = 512
_SB = struct.Struct("<8sII16s32sIIQH6s256s")  # struct verity_sb of cryptsetup, without padding
_SB_SIGNATURE = b"verity\0\0"


@dataclass(frozen=True)
class VerityParams:
    """What, with the data, determines the hash tree and root hash."""

    salt: bytes
    uuid: str
    algorithm: str = ALGORITHM
    data_block_size: int = BLOCK_SIZE
    hash_block_size: int = BLOCK_SIZE

    def to_manifest(self) -> dict:
        return {
            "hashAlgorithm": self.algorithm,
            "dataBlockSize": self.data_block_size,
            "hashBlockSize": self.hash_block_size,
            "salt": self.salt.hex(),
            "superblockUuid": self.uuid,
        }


@dataclass(frozen=True)
class Superblock:
    """The on-disk dm-verity superblock (cryptsetup's ``struct verity_sb``)."""

    version: int
    hash_type: int
    uuid: str
    algorithm: str
    data_block_size: int
    hash_block_size: int
    data_blocks: int
    salt: bytes

    def params(self) -> VerityParams:
        return VerityParams(self.salt, self.uuid, self.algorithm, self.data_block_size,
                            self.hash_block_size)


def make_v4_uuid(raw: bytes) -> str:
    """systemd's id128_make_v4_uuid(): the first 16 bytes with the version/variant bits set."""
    b = bytearray(raw[:16])
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(b)))


def repart_seed(seed: bytes) -> str:
    """The 128-bit ``--seed`` for systemd-repart (disk UUID) taken from the build's seed."""
    if len(seed) < 16:
        raise InputError("seed", f"too short ({len(seed)} bytes)", "pass the sha256 of the inputs")
    return make_v4_uuid(seed)


def params_from_seed(seed: bytes) -> VerityParams:
    """Salt and superblock UUID derived like repart 255+ does from ``--seed=repart_seed(seed)``."""
    key = uuid.UUID(repart_seed(seed)).bytes
    return VerityParams(
        salt=hmac.new(key, b"verity-salt", hashlib.sha256).digest(),
        uuid=make_v4_uuid(hmac.new(key, b"verity-uuid", hashlib.sha256).digest()),
    )


def format_hash(data: Path, hash_file: Path, params: VerityParams) -> str:
    """Write the superblock + hash tree of ``data`` to ``hash_file``; return the root hash (hex)."""
    size = data.stat().st_size
    if size == 0 or size % params.data_block_size:
        raise BuildError(str(data), f"size {size} is not a positive multiple of "
                         f"{params.data_block_size}", "pad the file system image")
    proc = tools.run("veritysetup", [
        "format", data, hash_file,
        f"--hash={params.algorithm}",
        f"--data-block-size={params.data_block_size}",
        f"--hash-block-size={params.hash_block_size}",
        f"--salt={params.salt.hex()}",
        f"--uuid={params.uuid}",
    ], what=f"computing the verity tree of {data.name}")
    match = re.search(r"^Root hash:\s*([0-9a-f]+)\s*$", proc.stdout.decode(), re.MULTILINE)
    if not match:
        raise BuildError("veritysetup", "no root hash in its output", "unexpected veritysetup version?")
    return match.group(1)


def parse_superblock(raw: bytes) -> Superblock | None:
    """The superblock at the start of a hash device, or None if there is none."""
    if len(raw) < _SB.size or raw[:8] != _SB_SIGNATURE:
        return None
    (_sig, version, hash_type, sb_uuid, algorithm, data_bs, hash_bs, data_blocks, salt_size,
     _pad, salt) = _SB.unpack_from(raw)
    return Superblock(
        version=version,
        hash_type=hash_type,
        uuid=str(uuid.UUID(bytes=sb_uuid)),
        algorithm=algorithm.split(b"\0", 1)[0].decode("ascii", errors="replace"),
        data_block_size=data_bs,
        hash_block_size=hash_bs,
        data_blocks=data_blocks,
        salt=salt[:min(salt_size, len(salt))],
    )


def verify(data: Path, hash_file: Path, root_hash: str) -> tuple[bool, str]:
    """Check the whole tree with ``veritysetup verify``: (ok, reason when not ok)."""
    tools.find("veritysetup")  # a missing tool is an error, not a verification failure
    try:
        tools.run("veritysetup", ["verify", data, hash_file, root_hash],
                  what=f"verifying {data.name}")
    except BuildError as err:
        return False, err.hint or err.what
    return True, ""
