"""Read squashfs and erofs images for ``diff``: superblocks in pure Python, file trees streamed.

Superblocks are parsed from the on-disk structs (``struct squashfs_super_block`` of
squashfs-tools' ``squashfs_fs.h``, ``struct erofs_super_block`` of erofs-utils' ``erofs_fs.h``),
so no tool is needed to say *which setting* differs (mkfs time, UUID, compressor, block size).

File trees are read by the kernel or by the real tools, never by a reader of our own: a child
process (``python -m pipeline.fsinfo walk``) loop-mounts the image read-only inside a private
mount namespace (``unshare -m``: the mount cannot leak, even if the child is killed) — or, without
root or kernel support, extracts it with ``unsquashfs -d`` / ``fsck.erofs --extract`` — and prints
one JSON line per path in a fixed order (depth first, names sorted). The parent merges two such
streams, so memory stays flat whatever the image size; file contents are hashed in 1 MiB chunks.
Entries have the manifest's shape (path, type, mode, uid, gid, mtime, size, sha256, target,
xattrs), so an image's tree compares directly with a manifest's ``files``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import BuildError, InputError

CHUNK = 1 << 20
ROOT = "."  # the image's root directory in a walked tree (manifests do not list it)

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


# --- file trees -------------------------------------------------------------------------------

def _sort_key(path: str) -> tuple[str, ...]:
    return tuple(path.split("/"))


def tree_key(path: str) -> tuple[str, ...]:
    """The order every tree stream is in: depth first, names sorted (the root first)."""
    return () if path == ROOT else _sort_key(path)


def walk_dir(root: Path, *, include_root: bool = True) -> Iterator[dict]:
    """Entries of the directory tree at ``root``, in :func:`tree_key` order, hashed streaming.
    Memory: the names of the directories on the current path, nothing more."""
    root = Path(root)
    if include_root:
        yield _entry(root, ROOT)
    stack = [iter(_children(root, ""))]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        path, full = item
        entry = _entry(full, path)
        yield entry
        if entry["type"] == "dir":
            stack.append(iter(_children(full, path)))


def _children(directory: Path, rel: str) -> list[tuple[str, Path]]:
    return [(f"{rel}/{name}" if rel else name, directory / name)
            for name in sorted(os.listdir(directory))]


def _entry(full: Path, path: str) -> dict:
    st = full.lstat()
    mode = st.st_mode
    kind = ("dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else
            "symlink" if stat.S_ISLNK(mode) else "chardev" if stat.S_ISCHR(mode) else
            "blockdev" if stat.S_ISBLK(mode) else "fifo" if stat.S_ISFIFO(mode) else "socket")
    item: dict = {"path": path, "type": kind, "mode": f"{stat.S_IMODE(mode):04o}",
                  "uid": st.st_uid, "gid": st.st_gid, "mtime": int(st.st_mtime)}
    if kind == "file":
        digest = hashlib.sha256()
        with open(full, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
        item["size"] = st.st_size
        item["sha256"] = digest.hexdigest()
        if st.st_nlink > 1:
            item["nlink"] = st.st_nlink  # image trees only: manifests do not record it
    elif kind == "symlink":
        item["target"] = os.readlink(full)
    elif kind in ("chardev", "blockdev"):
        item["rdev"] = f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
    try:
        names = sorted(os.listxattr(full, follow_symlinks=False))
    except OSError:
        names = []
    if names:
        item["xattrs"] = {n: os.getxattr(full, n, follow_symlinks=False).hex() for n in names}
    return item


def walk_image(image: Path, *, offset: int = 0, size: int | None = None) -> Iterator[dict]:
    """Stream the file tree of the squashfs/erofs image (at ``offset``, ``size`` bytes long, for a
    DDI partition) from a child process. Raises InputError when the image cannot be read."""
    image = Path(image).resolve()
    fs_type = sniff(image, offset)
    if fs_type is None:
        raise InputError(str(image), f"no squashfs or erofs file system at offset {offset}")
    argv = [sys.executable, "-m", "pipeline.fsinfo", "walk", "--fs", fs_type,
            "--offset", str(offset)]
    if size is not None:
        argv += ["--size", str(size)]
    argv.append(str(image))
    if os.geteuid() == 0 and shutil.which("unshare"):
        argv = ["unshare", "-m", "--propagation", "private", *argv]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, env=env,
                                stdin=subprocess.DEVNULL)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                yield json.loads(line)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stdout.close()
        if proc.returncode != 0:
            errors.seek(0)
            tail = errors.read().decode(errors="replace").strip().splitlines()[-3:]
            raise InputError(str(image), f"cannot read the {fs_type} file tree",
                             " | ".join(tail) or f"exit {proc.returncode}")


def _kernel_supports(fs_type: str) -> bool:
    try:
        return any(line.split()[-1] == fs_type for line in
                   Path("/proc/filesystems").read_text().splitlines() if line.strip())
    except OSError:
        return False


@contextmanager
def _opened(image: Path, fs_type: str, offset: int, size: int | None):
    """A directory holding the image's tree: a read-only loop mount (root, in the child's private
    mount namespace) or else an extraction into a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="sysext-fsinfo-") as tmp:
        tmp_path = Path(tmp)
        if os.geteuid() == 0 and _kernel_supports(fs_type):
            mnt = tmp_path / "mnt"
            mnt.mkdir()
            options = "loop,ro" + (f",offset={offset}" if offset else "") + \
                (f",sizelimit={size}" if size is not None else "")
            proc = subprocess.run(["mount", "-t", fs_type, "-o", options, str(image), str(mnt)],
                                  capture_output=True)
            if proc.returncode == 0:
                try:
                    yield mnt, True
                finally:
                    subprocess.run(["umount", str(mnt)], capture_output=True)
                return
        if offset or size is not None:  # the tools read whole files: copy the partition out
            part = tmp_path / "fs.img"
            with open(image, "rb") as src, open(part, "wb") as out:
                src.seek(offset)
                left = size if size is not None else None
                while left is None or left > 0:
                    chunk = src.read(CHUNK if left is None else min(CHUNK, left))
                    if not chunk:
                        break
                    out.write(chunk)
                    if left is not None:
                        left -= len(chunk)
            image = part
        dest = tmp_path / "tree"
        from . import tools

        if fs_type == "squashfs":
            tools.run("unsquashfs", ["-q", "-n", "-d", dest, image], what=f"extracting {image}")
        else:
            tools.run("fsck.erofs", [f"--extract={dest}", image], what=f"extracting {image}")
        yield dest, os.geteuid() == 0


def _child_walk(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pipeline.fsinfo walk")
    parser.add_argument("--fs", required=True, choices=("squashfs", "erofs"))
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--size", type=int)
    parser.add_argument("image")
    args = parser.parse_args(argv)
    out = sys.stdout
    try:
        with _opened(Path(args.image), args.fs, args.offset, args.size) as (root, owners):
            for entry in walk_dir(root):
                if not owners:
                    entry["owners_unknown"] = True
                out.write(json.dumps(entry, sort_keys=True) + "\n")
    except (BuildError, InputError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the parent stopped reading
        return 0
    out.flush()
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "walk":
        sys.exit(_child_walk(sys.argv[2:]))
    sys.exit("usage: python -m pipeline.fsinfo walk --fs squashfs|erofs [--offset N] IMAGE")
