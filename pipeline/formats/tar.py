"""A tar stream as :class:`Entry` objects, read strictly front to back (``tarfile`` mode ``r|``).

Streaming mode matters: a .deb's data.tar arrives through a decompressor inside an ``ar``
member, which cannot seek. File data is handed out as a bounded stream over the tar stream
itself, so a 2 GiB member costs no memory.

This module also owns :func:`kind_from_mode`, the single mapping from ``st_mode`` file-type bits
to Entry kinds; cpio and rpm (whose headers store raw ``st_mode``) use it too, and tar type flags
are first translated to the same bits.
"""

from __future__ import annotations

import io
import stat
import tarfile
from collections.abc import Iterator
from typing import BinaryIO

from ..errors import InputError
from . import entry as E
from .compression import CHUNK
from .entry import Entry

_KIND_BY_IFMT = {
    stat.S_IFREG: E.FILE,
    stat.S_IFDIR: E.DIR,
    stat.S_IFLNK: E.SYMLINK,
    stat.S_IFCHR: E.CHARDEV,
    stat.S_IFBLK: E.BLOCKDEV,
    stat.S_IFIFO: E.FIFO,
    stat.S_IFSOCK: E.SOCKET,
}

# tar type flag -> st_mode type bits. Hard links have no st_mode type of their own: see below.
_IFMT_BY_TARTYPE = {
    tarfile.REGTYPE: stat.S_IFREG,
    tarfile.AREGTYPE: stat.S_IFREG,
    tarfile.CONTTYPE: stat.S_IFREG,
    tarfile.DIRTYPE: stat.S_IFDIR,
    tarfile.SYMTYPE: stat.S_IFLNK,
    tarfile.CHRTYPE: stat.S_IFCHR,
    tarfile.BLKTYPE: stat.S_IFBLK,
    tarfile.FIFOTYPE: stat.S_IFIFO,
}

XATTR_PAX_PREFIXES = ("SCHILY.xattr.", "LIBARCHIVE.xattr.")


def kind_from_mode(st_mode: int, where: str) -> str:
    """Entry kind for the file-type bits of ``st_mode``; unknown types are an InputError."""
    kind = _KIND_BY_IFMT.get(stat.S_IFMT(st_mode))
    if kind is None:
        raise InputError(where, f"unknown file type in mode {st_mode:#o}")
    return kind


def tar_entries(stream: BinaryIO, where: str) -> Iterator[Entry]:
    """Yield one Entry per member of the uncompressed tar ``stream``.

    ``where`` names the tar (``jq.deb:data.tar.xz``); each Entry's ``member`` extends it with the
    member name. A regular file's ``data`` is valid until the next Entry is requested; tarfile
    skips whatever the consumer left unread. Hard links become kind HARDLINK whose ``target`` is
    the linked member's name exactly as stored.
    """
    try:
        tf = tarfile.open(fileobj=stream, mode="r|", bufsize=CHUNK)
    except tarfile.TarError as exc:
        raise InputError(where, f"not a tar archive: {exc}") from None
    with tf:
        members = iter(tf)
        while True:
            try:
                info = next(members)
            except StopIteration:
                return
            except (tarfile.TarError, EOFError) as exc:
                raise InputError(where, f"corrupt tar stream: {exc}") from None
            yield _entry(tf, info, f"{where}:{info.name}")


def _entry(tf: tarfile.TarFile, info: tarfile.TarInfo, member: str) -> Entry:
    xattrs = {
        key.split(".xattr.", 1)[1]: value.encode("utf-8", "surrogateescape")
        for key, value in info.pax_headers.items()
        if key.startswith(XATTR_PAX_PREFIXES)
    }
    entry = Entry(
        path=info.name,
        kind=E.HARDLINK,
        mode=info.mode & 0o7777,
        uid=info.uid,
        gid=info.gid,
        uname=info.uname or None,
        gname=info.gname or None,
        mtime=int(info.mtime),
        xattrs=xattrs,
        member=member,
    )
    if info.type == tarfile.LNKTYPE:
        entry.target = info.linkname
        return entry
    ifmt = _IFMT_BY_TARTYPE.get(info.type)
    if ifmt is None:
        raise InputError(member, f"unsupported tar member type {info.type!r}")
    entry.kind = kind_from_mode(ifmt, member)
    if entry.kind == E.SYMLINK:
        entry.target = info.linkname
    elif entry.kind in (E.CHARDEV, E.BLOCKDEV):
        entry.rdev = (info.devmajor, info.devminor)
    elif entry.kind == E.FILE:
        entry.size = info.size
        entry.data = _TarData(tf.extractfile(info), member)
    return entry


class _TarData(io.RawIOBase):
    """The member stream from tarfile, with its truncation errors turned into InputError."""

    def __init__(self, inner: BinaryIO | None, member: str):
        self._inner = inner
        self._member = member

    def readinto(self, b) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        if self._inner is None:
            return b""
        try:
            return self._inner.read(size)
        except (tarfile.TarError, EOFError) as exc:
            raise InputError(self._member, f"truncated member data: {exc}") from None

    def readable(self) -> bool:
        return True

