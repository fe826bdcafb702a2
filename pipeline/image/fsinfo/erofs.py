"""An erofs file system's metadata in pure Python: every inode's type, mode, owners, mtime, size,
link count, device number, symlink target and xattrs, read from the on-disk structs
(``struct erofs_inode_compact``/``_extended``, ``erofs_dirent``, ``erofs_xattr_entry`` of
erofs-utils' ``erofs_fs.h``), without the kernel and without extracting anything.

fsck.erofs 1.5 extracts no xattrs and loses set-id bits (it chowns after chmod), so an untrusted
erofs image's tree is described from here, and only file contents come from its extraction.
Directories and symlinks are never compressed (flat plain or flat inline layout); a regular
file's data is hashed here when it is stored flat too, else (compressed, chunked) it is left to
fsck.erofs. Every offset and length is checked against the image: a crafted
image is an InputError naming it, never a read outside it, a loop, or an unbounded allocation.
"""

from __future__ import annotations

import hashlib
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

from ...errors import InputError
from .ondisk import erofs_superblock
from .tree import ROOT

_COMPACT = struct.Struct("<HHHHIIIIHHI")  # erofs_inode_compact, 32 bytes
_EXTENDED = struct.Struct("<HHHHQIIIIQII16s")  # erofs_inode_extended, 64 bytes
_DIRENT = struct.Struct("<QHBB")  # erofs_dirent, 12 bytes
_XATTR_ENTRY = struct.Struct("<BBH")  # erofs_xattr_entry, 4 bytes (then name, value)
_XATTR_PREFIXES = {1: "user.", 2: "system.posix_acl_access", 3: "system.posix_acl_default",
                   4: "trusted.", 6: "security."}
_FLAT_PLAIN, _FLAT_INLINE = 0, 2
_MAX_DEPTH = 256
_MAX_SYMLINK = 4096
_DATA_FEATURES = ("0padding", "compr_cfgs/big_pcluster", "chunked_file", "device_table/compr_head2",
                  "ztailpacking", "fragments/dedupe")
_MAX_DIRECTORY = 64 << 20  # bytes of one directory: about a million entries


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def _crc32c(data: bytes, crc: int = 0xFFFFFFFF) -> int:
    """CRC-32C (Castagnoli) as the kernel's crc32c(~0, …): no final inversion."""
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


class Reader:
    """One erofs file system at ``offset`` of ``path`` (``label`` names it in errors)."""

    def __init__(self, path: Path, offset: int = 0, size: int | None = None,
                 label: str | None = None):
        self.path, self.offset, self.label = Path(path), offset, label or str(path)
        sb = erofs_superblock(self.path, offset)
        # the incompatible features change how regular files' data is stored, which is not
        # read here; only long xattr name prefixes change the metadata
        unknown = [f for f in sb["feature_incompat"] if f not in _DATA_FEATURES]
        if unknown:
            raise InputError(self.label, "erofs features this reader does not know: "
                             + ", ".join(unknown), "erofs-utils 1.5 makes none of them")
        self.block = sb["block_size"]
        if not 512 <= self.block <= 65536:
            raise InputError(self.label, f"erofs block size {self.block} out of range")
        self.meta = sb["meta_blkaddr"] * self.block
        self.xattr_base = sb["xattr_blkaddr"] * self.block
        self.root_nid = sb["root_nid"]
        self.build_time = sb["build_time"]
        self._digests: dict[int, str] = {}
        self._counted: set[int] = set()
        self._hashed = 0  # bytes of data read or hashed, against the image's size
        self.fh = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        end = self.fh.seek(0, 2)
        self.limit = min(end - offset, size) if size is not None else end - offset
        if "sb_csum" in sb["feature_compat"]:
            self._check_superblock(int(sb["checksum"], 16))

    def _check_superblock(self, expected: int) -> None:
        """The superblock's crc32c, as the kernel checks it (over the rest of the first block
        from byte 1024, the checksum field zeroed)."""
        length = self.block - 1024 if self.block > 1024 else self.block
        raw = bytearray(self._read(1024, length))
        raw[4:8] = bytes(4)
        if _crc32c(raw) != expected:
            self.close()
            raise InputError(self.label, "corrupt erofs file system: superblock checksum "
                             "mismatch")

    def close(self) -> None:
        self.fh.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _read(self, pos: int, length: int) -> bytes:
        if pos < 0 or length < 0 or pos + length > self.limit:
            raise InputError(self.label, f"corrupt erofs file system: {length} bytes at {pos} "
                             "lie outside the image")
        self.fh.seek(self.offset + pos)
        return self.fh.read(length)

    def inode(self, nid: int) -> dict:
        """The inode ``nid``: its fields, where its xattrs and inline data are."""
        pos = self.meta + nid * 32
        head = self._read(pos, 2)
        (i_format,) = struct.unpack("<H", head)
        extended = i_format & 1
        layout = (i_format >> 1) & 0x7
        if extended:
            (_f, xattr_icount, mode, _r, size, i_u, _ino, uid, gid, mtime, _ns, nlink,
             _pad) = _EXTENDED.unpack(self._read(pos, _EXTENDED.size))
            isize = _EXTENDED.size
        else:
            (_f, xattr_icount, mode, nlink, size, mtime32, i_u, _ino, uid, gid,
             _r2) = _COMPACT.unpack(self._read(pos, _COMPACT.size))
            isize = _COMPACT.size
            mtime = self.build_time + mtime32
        xattr_size = 12 + (xattr_icount - 1) * 4 if xattr_icount else 0
        return {"nid": nid, "mode": mode, "uid": uid, "gid": gid, "mtime": mtime,
                "nlink": nlink, "size": size, "i_u": i_u, "layout": layout,
                "xattrs_at": pos + isize, "xattr_size": xattr_size,
                "inline_at": pos + isize + xattr_size}

    def data(self, ino: dict, limit: int) -> bytes:
        """The whole data of an uncompressed inode (a directory or a symlink), at most
        ``limit`` bytes."""
        size = ino["size"]
        if size > limit:
            raise InputError(self.label, f"corrupt erofs file system: inode {ino['nid']} "
                             f"claims {size} bytes")
        if size == 0:
            return b""
        if ino["nid"] not in self._counted:  # see file_sha256: nothing is read twice over
            self._counted.add(ino["nid"])
            self._hashed += size
            if self._hashed > self.limit:
                raise InputError(self.label, "corrupt erofs file system: its inodes claim "
                                 "more data than the image holds")
        if ino["layout"] == _FLAT_PLAIN:
            return self._read(ino["i_u"] * self.block, size)
        if ino["layout"] == _FLAT_INLINE:
            full = size // self.block * self.block
            head = self._read(ino["i_u"] * self.block, full) if full else b""
            return head + self._read(ino["inline_at"], size - full)
        raise InputError(self.label, f"corrupt erofs file system: inode {ino['nid']} has "
                         f"data layout {ino['layout']} (directories and symlinks are flat)")

    def xattrs(self, ino: dict) -> dict[str, str]:
        """name → hex value, inline and shared."""
        if not ino["xattr_size"]:
            return {}
        raw = self._read(ino["xattrs_at"], ino["xattr_size"])
        shared_count = raw[4]
        out: dict[str, str] = {}
        pos = 12
        for _ in range(shared_count):
            if pos + 4 > len(raw):
                raise InputError(self.label, "corrupt erofs file system: xattr header")
            (xid,) = struct.unpack_from("<I", raw, pos)
            pos += 4
            entry = self._read(self.xattr_base + xid * 4, _XATTR_ENTRY.size)
            name_len, index, value_size = _XATTR_ENTRY.unpack(entry)
            body = self._read(self.xattr_base + xid * 4 + 4, name_len + value_size)
            self._add_xattr(out, index, body[:name_len], body[name_len:])
        while pos + _XATTR_ENTRY.size <= len(raw):
            name_len, index, value_size = _XATTR_ENTRY.unpack_from(raw, pos)
            if name_len == 0 and index == 0 and value_size == 0:
                break
            start = pos + _XATTR_ENTRY.size
            if start + name_len + value_size > len(raw):
                raise InputError(self.label, "corrupt erofs file system: an xattr runs past "
                                 "its inode's xattr area")
            self._add_xattr(out, index, raw[start:start + name_len],
                            raw[start + name_len:start + name_len + value_size])
            pos = (start + name_len + value_size + 3) & ~3
        return dict(sorted(out.items()))

    def _add_xattr(self, out: dict, index: int, name: bytes, value: bytes) -> None:
        prefix = _XATTR_PREFIXES.get(index)
        if prefix is None:
            raise InputError(self.label, f"corrupt erofs file system: xattr name index {index}")
        out[prefix + name.decode("utf-8", "surrogateescape")] = value.hex()

    def children(self, ino: dict) -> list[tuple[str, int]]:
        """(name, nid) of a directory's entries, without . and .., sorted by name."""
        data = self.data(ino, _MAX_DIRECTORY)
        out = []
        for start in range(0, len(data), self.block):
            blk = data[start:start + self.block]
            if len(blk) < _DIRENT.size:
                raise InputError(self.label, "corrupt erofs file system: directory block")
            first_nameoff = _DIRENT.unpack_from(blk, 0)[1]
            count = first_nameoff // _DIRENT.size
            if first_nameoff % _DIRENT.size or not 0 < count * _DIRENT.size <= len(blk):
                raise InputError(self.label, "corrupt erofs file system: directory block")
            ents = [_DIRENT.unpack_from(blk, i * _DIRENT.size) for i in range(count)]
            for i, (nid, nameoff, _ft, _r) in enumerate(ents):
                end = ents[i + 1][1] if i + 1 < count else len(blk)
                if not nameoff <= end <= len(blk):
                    raise InputError(self.label, "corrupt erofs file system: directory name")
                name = blk[nameoff:end]
                if i + 1 == count:
                    name = name.split(b"\0", 1)[0]
                if name in (b".", b".."):
                    continue
                if not name or b"/" in name or b"\0" in name:
                    raise InputError(self.label, "corrupt erofs file system: directory name "
                                     f"{name[:64]!r}")
                out.append((name.decode("utf-8", "surrogateescape"), nid))
        out.sort()
        for (a, _), (b, _) in zip(out, out[1:]):
            if a == b:
                raise InputError(self.label, f"corrupt erofs file system: {a[:64]!r} twice in one "
                                 "directory")
        return out

    def file_sha256(self, ino: dict) -> str | None:
        """sha256 of an uncompressed regular file's data, streamed (None: compressed or
        chunked, which only fsck.erofs reads)."""
        size, layout = ino["size"], ino["layout"]
        if layout not in (_FLAT_PLAIN, _FLAT_INLINE):
            return None
        if ino["nid"] in self._digests:  # hard links: one inode, hashed once
            return self._digests[ino["nid"]]
        # distinct inodes never share flat data: more than the image holds is a crafted
        # image making us hash the same bytes over and over
        self._hashed += size
        if self._hashed > self.limit:
            raise InputError(self.label, "corrupt erofs file system: its files claim more "
                             "data than the image holds")
        digest = hashlib.sha256()
        full = size if layout == _FLAT_PLAIN else size // self.block * self.block
        start = ino["i_u"] * self.block
        done = 0
        while done < full:
            chunk = min(1 << 20, full - done)
            digest.update(self._read(start + done, chunk))
            done += chunk
        if full < size:
            digest.update(self._read(ino["inline_at"], size - full))
        self._digests[ino["nid"]] = digest.hexdigest()
        return self._digests[ino["nid"]]

    def walk(self) -> Iterator[tuple[str, dict]]:
        """(path, entry without sha256) of every inode reachable from the root, in
        tree_key order (the root first, as ``.``)."""
        for path, entry, _ino in self.walk_inodes():
            yield path, entry

    def walk_inodes(self) -> Iterator[tuple[str, dict, dict]]:
        """(path, entry, inode) as :meth:`walk`."""
        root = self.inode(self.root_nid)
        yield ROOT, self._entry(ROOT, root), root
        stack = [iter(self._kids(root, "", 0))]
        seen_dirs = {self.root_nid}
        while stack:
            item = next(stack[-1], None)
            if item is None:
                stack.pop()
                continue
            path, ino = item
            entry = self._entry(path, ino)
            yield path, entry, ino
            if entry["type"] == "dir":
                if ino["nid"] in seen_dirs or len(stack) >= _MAX_DEPTH:
                    raise InputError(self.label, f"corrupt erofs file system: {path} loops "
                                     "or nests too deep")
                seen_dirs.add(ino["nid"])
                stack.append(iter(self._kids(ino, path, len(stack))))

    def _kids(self, ino: dict, rel: str, _depth: int) -> Iterator[tuple[str, dict]]:
        for name, nid in self.children(ino):
            yield (f"{rel}/{name}" if rel else name), self.inode(nid)

    def _entry(self, path: str, ino: dict) -> dict:
        mode = ino["mode"]
        kind = ("dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else
                "symlink" if stat.S_ISLNK(mode) else "chardev" if stat.S_ISCHR(mode) else
                "blockdev" if stat.S_ISBLK(mode) else "fifo" if stat.S_ISFIFO(mode) else
                "socket" if stat.S_ISSOCK(mode) else None)
        if kind is None:
            raise InputError(self.label, f"corrupt erofs file system: {path} has mode "
                             f"{mode:o}")
        item: dict = {"path": path, "type": kind, "mode": f"{stat.S_IMODE(mode):04o}",
                      "uid": ino["uid"], "gid": ino["gid"], "mtime": ino["mtime"]}
        if kind == "file":
            item["size"] = ino["size"]
            if ino["nlink"] > 1:
                item["nlink"] = ino["nlink"]
        elif kind == "symlink":
            item["target"] = self.data(ino, _MAX_SYMLINK).decode("utf-8", "surrogateescape")
        elif kind in ("chardev", "blockdev"):
            dev = ino["i_u"]
            item["rdev"] = f"{(dev & 0xfff00) >> 8},{(dev & 0xff) | ((dev >> 12) & 0xfff00)}"
        xattrs = self.xattrs(ino)
        if xattrs:
            item["xattrs"] = xattrs
        return item
