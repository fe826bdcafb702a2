"""What an image's bytes say, in pure Python: file system magic, superblocks, byte ranges.

Superblocks are parsed from the on-disk structs (``struct squashfs_super_block`` of
squashfs-tools' ``squashfs_fs.h``, ``struct erofs_super_block`` of erofs-utils' ``erofs_fs.h``),
so no tool is needed to say *which setting* differs between two images (mkfs time, UUID,
compressor, block size) or which region a differing byte falls in. Everything reads a range of a
file, so a file system inside a DDI partition is read in place, at its offset.
"""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

from ...errors import InputError

CHUNK = 1 << 20

# --- squashfs ---------------------------------------------------------------------------------

SQUASHFS_MAGIC = b"hsqs"
_SQ = struct.Struct("<IIIIIHHHHHHQqqqqqqq")  # struct squashfs_super_block, 96 bytes
SQUASHFS_COMPRESSORS = {1: "gzip", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd"}
SQUASHFS_FLAGS = {
    0x0001: "inodes-uncompressed", 0x0002: "data-uncompressed", 0x0008: "fragments-uncompressed",
    0x0010: "no-fragments", 0x0020: "always-fragments", 0x0040: "duplicates-removed",
    0x0080: "exportable", 0x0100: "xattrs-uncompressed", 0x0200: "no-xattrs",
    0x0400: "compressor-options", 0x0800: "ids-uncompressed",
}
#: Fields chosen by whoever ran mksquashfs; the others follow from the content.
SQUASHFS_SETTINGS = ("version", "mkfs_time", "compression", "compressor_options", "block_size",
                     "flags")

# --- erofs ------------------------------------------------------------------------------------

EROFS_MAGIC = b"\xe2\xe1\xf5\xe0"
EROFS_SB_OFFSET = 1024
_EROFS = struct.Struct("<IIIBBHQQIIII16s16sIHH")  # struct erofs_super_block up to extra_devices
EROFS_COMPAT = {0x1: "sb_csum", 0x2: "mtime", 0x4: "xattr_filter"}
EROFS_INCOMPAT = {0x1: "0padding", 0x2: "compr_cfgs/big_pcluster", 0x4: "chunked_file",
                  0x8: "device_table/compr_head2", 0x10: "ztailpacking",
                  0x20: "fragments/dedupe", 0x40: "xattr_prefixes"}
EROFS_SETTINGS = ("uuid", "build_time", "build_time_nsec", "block_size", "volume_name",
                  "feature_compat", "feature_incompat", "compr_algs")


def _flag_names(value: int, table: dict[int, str]) -> list[str]:
    names = [name for bit, name in table.items() if value & bit]
    rest = value & ~sum(table)
    return names + ([f"0x{rest:x}"] if rest else [])


def sniff(path: Path, offset: int = 0) -> str | None:
    """``squashfs``, ``erofs`` or None, by magic at ``offset`` into ``path``."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        if fh.read(4) == SQUASHFS_MAGIC:
            return "squashfs"
        fh.seek(offset + EROFS_SB_OFFSET)
        if fh.read(4) == EROFS_MAGIC:
            return "erofs"
    return None


def superblock(path: Path, offset: int = 0) -> dict:
    """The superblock of the squashfs or erofs image at ``offset`` as a flat dict ("type" first)."""
    fs_type = sniff(path, offset)
    if fs_type == "squashfs":
        return squashfs_superblock(path, offset)
    if fs_type == "erofs":
        return erofs_superblock(path, offset)
    raise InputError(str(path), f"no squashfs or erofs superblock at offset {offset}")


def settings(sb: dict) -> tuple[str, ...]:
    return SQUASHFS_SETTINGS if sb["type"] == "squashfs" else EROFS_SETTINGS


def squashfs_superblock(path: Path, offset: int = 0) -> dict:
    with open(path, "rb") as fh:
        fh.seek(offset)
        raw = fh.read(_SQ.size + 2 + 16)
    if len(raw) < _SQ.size or raw[:4] != SQUASHFS_MAGIC:
        raise InputError(str(path), "not a squashfs image (no hsqs magic)")
    (_magic, inodes, mkfs_time, block_size, fragments, compression, block_log, flags, ids,
     major, minor, root_inode, bytes_used, id_table, xattr_table, inode_table, directory_table,
     fragment_table, lookup_table) = _SQ.unpack_from(raw)
    compressor = SQUASHFS_COMPRESSORS.get(compression, f"unknown ({compression})")
    options = None
    if flags & 0x0400 and len(raw) >= _SQ.size + 2:
        options = _squashfs_compressor_options(compressor, raw[_SQ.size:])
    return {
        "type": "squashfs", "version": f"{major}.{minor}", "mkfs_time": mkfs_time,
        "compression": compressor, "compressor_options": options, "block_size": block_size,
        "block_log": block_log, "flags": _flag_names(flags, SQUASHFS_FLAGS), "inodes": inodes,
        "fragments": fragments, "ids": ids, "root_inode": root_inode, "bytes_used": bytes_used,
        "inode_table_start": inode_table, "directory_table_start": directory_table,
        "fragment_table_start": fragment_table, "lookup_table_start": lookup_table,
        "id_table_start": id_table, "xattr_id_table_start": xattr_table,
    }


def _squashfs_compressor_options(compressor: str, raw: bytes) -> dict | None:
    """The compressor options metadata block (stored uncompressed right after the superblock)."""
    (header,) = struct.unpack_from("<H", raw)
    if not header & 0x8000:
        return {"raw": "compressed"}
    body = raw[2:2 + (header & 0x7FFF)]
    try:
        if compressor == "zstd":
            return {"level": struct.unpack_from("<i", body)[0]}
        if compressor == "gzip":
            level, window, strategy = struct.unpack_from("<iHH", body)
            return {"level": level, "window_size": window, "strategy": strategy}
        if compressor in ("xz", "lzma"):
            dict_size, filters = struct.unpack_from("<iI", body)
            return {"dictionary_size": dict_size, "filters": filters}
        if compressor == "lz4":
            version, lz4_flags = struct.unpack_from("<iI", body)
            return {"version": version, "flags": lz4_flags}
        if compressor == "lzo":
            algorithm, level = struct.unpack_from("<iI", body)
            return {"algorithm": algorithm, "level": level}
    except struct.error:
        pass
    return {"raw": body.hex()}


def erofs_superblock(path: Path, offset: int = 0) -> dict:
    with open(path, "rb") as fh:
        fh.seek(offset + EROFS_SB_OFFSET)
        raw = fh.read(_EROFS.size)
    if len(raw) < _EROFS.size or raw[:4] != EROFS_MAGIC:
        raise InputError(str(path), "not an erofs image (no magic at offset 1024)")
    (_magic, checksum, compat, blkszbits, extslots, root_nid, inos, build_time, build_nsec,
     blocks, meta_blkaddr, xattr_blkaddr, fs_uuid, volume, incompat, compr_algs,
     extra_devices) = _EROFS.unpack_from(raw)
    return {
        "type": "erofs", "uuid": str(uuid.UUID(bytes=fs_uuid)), "build_time": build_time,
        "build_time_nsec": build_nsec, "block_size": 1 << blkszbits,
        "volume_name": volume.split(b"\0", 1)[0].decode(errors="replace"),
        "feature_compat": _flag_names(compat, EROFS_COMPAT),
        "feature_incompat": _flag_names(incompat, EROFS_INCOMPAT), "compr_algs": compr_algs,
        "checksum": f"{checksum:08x}", "sb_extslots": extslots, "root_nid": root_nid,
        "inodes": inos, "blocks": blocks, "meta_blkaddr": meta_blkaddr,
        "xattr_blkaddr": xattr_blkaddr, "extra_devices": extra_devices,
    }


def region(sb: dict, offset: int) -> str:
    """Which part of the file system the byte at ``offset`` (relative to its start) belongs to."""
    if sb["type"] == "squashfs":
        if offset < _SQ.size:
            return "squashfs superblock"
        if offset >= sb["bytes_used"]:
            return "padding after the file system"
        starts = sorted((v, k) for k, v in sb.items() if k.endswith("_start") and 0 < v < 2**63)
        name = "data blocks and fragments"
        for start, key in starts:
            if offset >= start:
                name = key.removesuffix("_start").replace("_", " ")
        return f"squashfs {name}"
    block = offset // sb["block_size"]
    if EROFS_SB_OFFSET <= offset < EROFS_SB_OFFSET + 128 + 16 * sb["sb_extslots"]:
        return "erofs superblock"
    if block >= sb["blocks"]:
        return "padding after the file system"
    return f"erofs block {block}"


def superblock_span(sb: dict) -> tuple[int, int]:
    """Byte range of the superblock itself (its checksum differs whenever anything does)."""
    if sb["type"] == "squashfs":
        return 0, _SQ.size
    return EROFS_SB_OFFSET, EROFS_SB_OFFSET + 128 + 16 * sb["sb_extslots"]


def first_difference(a: Path, b: Path, a_offset: int = 0, b_offset: int = 0,
                     length: int | None = None) -> int | None:
    """Offset of the first differing byte of two ranges (None: identical); a size difference
    counts at the end of the shorter one."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        fa.seek(a_offset)
        fb.seek(b_offset)
        done = 0
        while length is None or done < length:
            want = CHUNK if length is None else min(CHUNK, length - done)
            ca, cb = fa.read(want), fb.read(want)
            if ca != cb:
                for i, (x, y) in enumerate(zip(ca, cb)):
                    if x != y:
                        return done + i
                return done + min(len(ca), len(cb))
            if not ca:
                return None
            done += len(ca)
    return None


def read_range(path: Path, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` (fewer at the end of the file): a header, a small partition."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(size)


def copy_range(path: Path, offset: int, size: int | None, dest: Path) -> Path:
    """Copy ``size`` bytes at ``offset`` (to the end: None) into the file ``dest``, in chunks —
    for the tools that read only whole files (veritysetup, fsck.erofs). A range that runs past
    the end of ``path`` is an InputError: the partition table promised more than is there."""
    with open(path, "rb") as src, open(dest, "wb") as out:
        src.seek(offset)
        left = size
        while left is None or left > 0:
            chunk = src.read(CHUNK if left is None else min(CHUNK, left))
            if not chunk:
                if left is not None:
                    raise InputError(str(path), f"truncated: {size} bytes at offset {offset} "
                                     "extend past the end")
                break
            out.write(chunk)
            if left is not None:
                left -= len(chunk)
    return dest
