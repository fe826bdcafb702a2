"""A tar stream as :class:`Entry` objects, read strictly front to back by our own parser.

The stream arrives through a decompressor inside an ``ar`` member and cannot seek. File data is
handed out as a bounded stream over the tar stream itself, so a 2 GiB member costs no memory.

Python's ``tarfile`` is not used: it reads a pax or GNU long-name header whole at whatever size
the header declares (a 39 KiB .deb declaring a 256 MiB path took 2.6 GiB), and it ends the
archive without a word at a header with a bad checksum, dropping every member after it. Here
every header is bounded before it is read (pax headers :data:`MAX_PAX`, names and link targets
:data:`~.entry.MAX_NAME` bytes), every checksum is verified, and an archive that does not end
with its end-of-archive blocks followed only by zeros is an error: nothing is lost silently.

Supported: v7, ustar (prefix field), GNU (``L``/``K`` long names, base-256 numbers) and pax
(``x`` and ``g`` headers). Refused by name: sparse files, multi-volume and other GNU types.

This module also owns :func:`kind_from_mode`, the single mapping from ``st_mode`` file-type bits
to Entry kinds; cpio and rpm (whose headers store raw ``st_mode``) use it too.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Iterator
from typing import BinaryIO

from ..errors import InputError
from . import entry as E
from .compression import CHUNK, LimitedReader, read_exact, read_upto, skip
from .entry import MAX_NAME, Entry, shown

_KIND_BY_IFMT = {
    stat.S_IFREG: E.FILE,
    stat.S_IFDIR: E.DIR,
    stat.S_IFLNK: E.SYMLINK,
    stat.S_IFCHR: E.CHARDEV,
    stat.S_IFBLK: E.BLOCKDEV,
    stat.S_IFIFO: E.FIFO,
    stat.S_IFSOCK: E.SOCKET,
}

# tar type flag -> Entry kind.
_KIND_BY_TYPE = {
    b"0": E.FILE, b"\0": E.FILE, b"7": E.FILE,  # 7: contiguous file, a plain file everywhere
    b"1": E.HARDLINK, b"2": E.SYMLINK, b"3": E.CHARDEV, b"4": E.BLOCKDEV, b"5": E.DIR,
    b"6": E.FIFO,
}
_TYPE_NAMES = {b"S": "GNU sparse file", b"M": "GNU multi-volume continuation",
               b"V": "GNU volume label", b"D": "GNU dump directory", b"N": "GNU old long name"}

XATTR_PAX_PREFIXES = ("SCHILY.xattr.", "LIBARCHIVE.xattr.")
BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
#: Largest pax extended header read (per header, and all global ones together). Real ones
#: carry a path, times and a few extended attributes: a few KiB.
MAX_PAX = 1 << 20
_DECIMAL = re.compile(rb"^[0-9]+$")
_PAX_TIME = re.compile(r"^-?[0-9]+(\.[0-9]*)?$")


def kind_from_mode(st_mode: int, where: str) -> str:
    """Entry kind for the file-type bits of ``st_mode``; unknown types are an InputError."""
    kind = _KIND_BY_IFMT.get(stat.S_IFMT(st_mode))
    if kind is None:
        raise InputError(where, f"unknown file type in mode {st_mode:#o}")
    return kind


def tar_entries(stream: BinaryIO, where: str) -> Iterator[Entry]:
    """Yield one Entry per member of the uncompressed tar ``stream``.

    ``where`` names the tar (``jq.deb:data.tar.xz``); each Entry's ``member`` extends it with the
    member name (escaped and shortened by :func:`~.entry.shown`). A regular file's ``data`` is
    valid until the next Entry is requested; whatever the consumer left unread is skipped. Hard
    links become kind HARDLINK whose ``target`` is the linked member's name exactly as stored.
    """
    return _TarReader(stream, where).entries()


class _TarReader:
    def __init__(self, stream: BinaryIO, where: str):
        self.stream = stream
        self.where = where
        self.offset = 0  # of the next header, for messages
        self.global_pax: dict[str, bytes] = {}

    def _read(self, n: int, what: str) -> bytes:
        data = read_exact(self.stream, n, self.where, what)
        self.offset += n
        return data

    def _skip(self, n: int, what: str) -> None:
        skip(self.stream, n, self.where, what)
        self.offset += n

    def entries(self) -> Iterator[Entry]:
        long_name: bytes | None = None
        long_link: bytes | None = None
        pax: dict[str, bytes] = {}
        while True:
            at = self.offset
            block = read_upto(self.stream, BLOCK)
            self.offset += len(block)
            if not block and at == 0:
                raise InputError(self.where, "not a tar archive: empty")
            if len(block) < BLOCK:
                raise InputError(self.where, f"truncated tar header at offset {at}",
                                 "the archive ends without its end-of-archive blocks")
            if block == ZERO_BLOCK:
                if long_name is not None or long_link is not None or pax:
                    raise InputError(self.where, f"end of archive at offset {at} right after an "
                                     "extended header")
                self._end(at)
                return
            _check_sum(block, self.where, at)
            typeflag = block[156:157]
            size = _number(block[124:136], self.where, at, "size")
            if size < 0:
                raise InputError(self.where, f"negative size in the tar header at offset {at}")
            if typeflag in (b"x", b"g"):
                if size > MAX_PAX:
                    raise InputError(self.where, f"pax header at offset {at} declares {size} "
                                     f"bytes (limit {MAX_PAX})", "a hostile or corrupt archive")
                records = _pax_records(self._read(size, "pax header"), self.where, at)
                self._skip(-size % BLOCK, "padding")
                target = pax if typeflag == b"x" else self.global_pax
                target.update(records)
                if sum(len(k) + len(v) for k, v in target.items()) > MAX_PAX:
                    raise InputError(self.where, f"pax headers at offset {at} add up to more "
                                     f"than {MAX_PAX} bytes", "a hostile or corrupt archive")
                continue
            if typeflag in (b"L", b"K"):
                if size > MAX_NAME + 1:
                    what = "name" if typeflag == b"L" else "link target"
                    raise InputError(self.where, f"GNU long {what} at offset {at} of {size} "
                                     f"bytes (limit {MAX_NAME})", "a hostile or corrupt archive")
                value = _nts(self._read(size, "GNU long name"))
                self._skip(-size % BLOCK, "padding")
                if typeflag == b"L":
                    long_name = value
                else:
                    long_link = value
                continue
            entry = self._entry(block, at, size, long_name, long_link,
                                {**self.global_pax, **pax})
            long_name = long_link = None
            pax = {}
            if entry.kind == E.FILE:
                data = LimitedReader(self.stream, entry.size, entry.member)
                entry.data = data
                yield entry
                data.skip_rest()
                self.offset += entry.size
                self._skip(-entry.size % BLOCK, "padding")
            else:
                yield entry

    def _entry(self, block: bytes, at: int, size: int, long_name: bytes | None,
               long_link: bytes | None, pax: dict[str, bytes]) -> Entry:
        typeflag = block[156:157]
        raw_name = long_name if long_name is not None else _nts(block[0:100])
        if long_name is None and block[257:263] == b"ustar\x00" and block[345] != 0:
            raw_name = _nts(block[345:500]) + b"/" + raw_name
        raw_name = pax.get("path", raw_name)
        raw_link = pax.get("linkpath", long_link if long_link is not None else _nts(block[157:257]))
        name = raw_name.decode("utf-8", "surrogateescape")
        member = f"{self.where}:{shown(name)}"
        if not raw_name:
            raise InputError(self.where, f"member with an empty name at offset {at}")
        if len(raw_name) > MAX_NAME:
            raise InputError(member, f"name of {len(raw_name)} bytes (limit {MAX_NAME})")
        if len(raw_link) > MAX_NAME:
            raise InputError(member, f"link target of {len(raw_link)} bytes (limit {MAX_NAME})")
        if any(key.startswith("GNU.sparse.") for key in pax):
            raise InputError(member, "sparse file", "packages do not carry sparse files")
        kind = _KIND_BY_TYPE.get(typeflag)
        if kind is None:
            what = _TYPE_NAMES.get(typeflag, f"type {typeflag.decode('latin-1')!r}")
            raise InputError(member, f"unsupported tar member type: {what}")
        if typeflag == b"\0" and name.endswith("/"):
            kind = E.DIR  # v7 archives mark directories by the slash alone
        if kind == E.DIR and name.rstrip("/"):
            name = name.rstrip("/")  # as tarfile and dpkg report directory names
        if "size" in pax:
            size = _pax_int(pax["size"], member, "size")
        if size and kind != E.FILE:
            raise InputError(member, f"a {kind} entry with {size} data bytes",
                             "the archive is corrupt or hostile")
        mtime = _number(block[136:148], self.where, at, "mtime")
        if "mtime" in pax:
            text = pax["mtime"].decode("ascii", "replace")
            if not _PAX_TIME.match(text):
                raise InputError(member, f"bad pax mtime {shown(text)}")
            mtime = int(text.split(".")[0])
        xattrs = {
            key.split(".xattr.", 1)[1]: value for key, value in pax.items()
            if key.startswith(XATTR_PAX_PREFIXES)
        }
        entry = Entry(
            path=name,
            kind=kind,
            mode=_number(block[100:108], self.where, at, "mode") & 0o7777,
            uid=_pax_int(pax["uid"], member, "uid") if "uid" in pax
            else _number(block[108:116], self.where, at, "uid"),
            gid=_pax_int(pax["gid"], member, "gid") if "gid" in pax
            else _number(block[116:124], self.where, at, "gid"),
            uname=_text(pax.get("uname", _nts(block[265:297]))),
            gname=_text(pax.get("gname", _nts(block[297:329]))),
            mtime=mtime,
            xattrs=xattrs,
            member=member,
        )
        if entry.uid < 0 or entry.gid < 0:
            raise InputError(member, "negative owner id")
        if kind in (E.HARDLINK, E.SYMLINK):
            entry.target = raw_link.decode("utf-8", "surrogateescape")
        elif kind in (E.CHARDEV, E.BLOCKDEV):
            entry.rdev = (_number(block[329:337], self.where, at, "devmajor"),
                          _number(block[337:345], self.where, at, "devminor"))
        elif kind == E.FILE:
            entry.size = size
        return entry

    def _end(self, at: int) -> None:
        """After the first zero block: the rest of the stream must be zeros (the second end
        block and the record padding). Members after a lone zero block would be lost."""
        while True:
            chunk = self.stream.read(CHUNK)
            if not chunk:
                return
            if chunk.count(0) != len(chunk):
                first = next(i for i, b in enumerate(chunk) if b)
                raise InputError(self.where, f"data after the end-of-archive block at offset {at} "
                                 f"(non-zero byte at {self.offset + first})",
                                 "members after it would be lost: the archive is corrupt")
            self.offset += len(chunk)


def _nts(field: bytes) -> bytes:
    """A NUL-terminated field."""
    end = field.find(b"\0")
    return field if end < 0 else field[:end]


def _text(value: bytes) -> str | None:
    return value.decode("utf-8", "surrogateescape") or None


def _check_sum(block: bytes, where: str, at: int) -> None:
    """POSIX sums the header bytes unsigned; some old writers summed them as signed chars."""
    stored = _number(block[148:156], where, at, "checksum")
    rest = block[:148] + block[156:]
    unsigned = sum(rest) + 8 * 32
    if stored == unsigned:
        return
    signed = unsigned - 256 * sum(1 for b in rest if b > 127)
    if stored != signed:
        raise InputError(where, f"tar header at offset {at} has a bad checksum",
                         "the archive is corrupt; the members from here on cannot be trusted")


def _number(field: bytes, where: str, at: int, what: str) -> int:
    """An octal (NUL/space terminated) or GNU base-256 header number."""
    if field[0] in (0x80, 0xFF):
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0xFF else value
    text = _nts(field).strip(b" ")
    if not text:
        return 0
    if not set(text) <= set(b"01234567"):
        raise InputError(where, f"bad {what} field {shown(text)} in the tar header at offset {at}")
    return int(text, 8)


def _pax_int(value: bytes, member: str, key: str) -> int:
    if not _DECIMAL.match(value) or len(value) > 20:
        raise InputError(member, f"bad pax {key} {shown(value)}")
    return int(value)


def _pax_records(data: bytes, where: str, at: int) -> dict[str, bytes]:
    """``"%d %s=%s\\n"`` records; an empty value unsets the key (POSIX)."""
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            if data.count(0, pos) != len(data) - pos:
                raise InputError(where, f"malformed pax header at offset {at}")
            break  # NUL padding some writers leave
        space = data.find(b" ", pos, pos + 21)
        if space < 0 or not _DECIMAL.match(data[pos:space]):
            raise InputError(where, f"malformed pax header at offset {at}")
        length = int(data[pos:space])
        end = pos + length
        if length <= space - pos + 1 or end > len(data) or data[end - 1:end] != b"\n":
            raise InputError(where, f"malformed pax record at offset {at} (length {length})")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq:
            raise InputError(where, f"malformed pax record at offset {at} (no '=')")
        name = key.decode("utf-8", "surrogateescape")
        if value:
            records[name] = value
        else:
            records.pop(name, None)
        pos = end
    return records
