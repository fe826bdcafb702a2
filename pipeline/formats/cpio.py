"""Streaming reader of SVR4 cpio: newc (``070701``), crc (``070702``) and RPM's stripped form.

Hard links are the one thing that does not stream naturally. In newc every name of a link set
is its own record sharing ``(dev, ino)``; GNU cpio and rpm store the data only with the *last*
record and give the others size 0. An :class:`Entry` of kind HARDLINK must point at a file
that was emitted *earlier*, so :func:`resolve_hardlinks` holds back the data-less names of a
set (metadata only, never data) until the record carrying the data has been emitted as a FILE,
then emits them as HARDLINKs to it. A set whose data never arrives (genuinely empty files) is
flushed as one empty FILE plus HARDLINKs once all ``nlink`` names were seen or at the trailer.
Memory grows with the number of pending link names, never with file sizes.

RPM ≥ 4.12 writes packages containing files ≥ 4 GiB with "stripped" records (``07070X`` + an
8-digit file index): everything but the index lives in the RPM header, so the caller supplies
the size through ``stripped_size``.
"""

from __future__ import annotations

import io
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import BinaryIO

from ..errors import InputError
from .compression import LimitedReader, read_exact, skip
from .entry import BLOCKDEV, CHARDEV, FILE, HARDLINK, MAX_NAME, SYMLINK, Entry, shown
from .tar import kind_from_mode

NEWC = b"070701"
CRC = b"070702"
STRIPPED = b"07070X"
TRAILER = "TRAILER!!!"
NEWC_FIELDS = 13  # ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
MAX_SYMLINK = MAX_NAME


@dataclass
class CpioRecord:
    """One cpio header as stored. ``index`` is set (and most fields zero) for stripped records."""

    name: str
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    size: int
    dev: tuple[int, int]
    ino: int
    rdev: tuple[int, int]
    data: LimitedReader
    index: int | None = None


def iter_records(
    stream: BinaryIO, where: str, stripped_size: Callable[[int], int] | None = None
) -> Iterator[CpioRecord]:
    """Yield raw records up to the trailer; each record's data is skipped if left unread."""
    offset = 0  # bytes consumed so far, for the 4-byte alignment rules
    while True:
        magic = read_exact(stream, 6, where, "cpio header")
        offset += 6
        if magic == STRIPPED:
            if stripped_size is None:
                raise InputError(where, "stripped cpio record outside an RPM payload")
            index = _hex(read_exact(stream, 8, where, "cpio header"), where)
            offset += 8
            offset += _pad(stream, offset, where)
            rec = CpioRecord("", 0, 0, 0, 1, 0, stripped_size(index), (0, 0), 0, (0, 0),
                             LimitedReader(stream, 0, where), index)
        elif magic in (NEWC, CRC):
            raw = read_exact(stream, NEWC_FIELDS * 8, where, "cpio header")
            offset += len(raw)
            f = [_hex(raw[i : i + 8], where) for i in range(0, len(raw), 8)]
            namesize = f[11]
            if not 0 < namesize <= MAX_NAME + 1:  # the size counts the terminating NUL
                raise InputError(where, f"cpio name of {namesize} bytes (limit {MAX_NAME})")
            name_bytes = read_exact(stream, namesize, where, "cpio name")
            offset += namesize
            offset += _pad(stream, offset, where)
            name = name_bytes.rstrip(b"\0").decode("utf-8", "surrogateescape")
            if name == TRAILER:
                return
            rec = CpioRecord(name, f[1], f[2], f[3], f[4], f[5], f[6], (f[7], f[8]), f[0],
                             (f[9], f[10]), LimitedReader(stream, 0, where))
        else:
            raise InputError(where, f"bad cpio magic {magic!r}", "only newc/crc cpio is supported")
        member = f"{where}:{shown(rec.name)}" if rec.name else f"{where}:#{rec.index}"
        rec.data = LimitedReader(stream, rec.size, member)
        yield rec
        rec.data.skip_rest()
        offset += rec.size
        offset += _pad(stream, offset, member)


def read_cpio(stream: BinaryIO, where: str) -> Iterator[Entry]:
    """Yield Entries for a newc/crc cpio stream, with hard links resolved (see module doc)."""

    def entries() -> Iterator[tuple[Entry, tuple[int, int, int] | None, int]]:
        for rec in iter_records(stream, where):
            member = f"{where}:{shown(rec.name)}"
            entry = Entry(path=rec.name, kind=kind_from_mode(rec.mode, member),
                          mode=stat.S_IMODE(rec.mode), uid=rec.uid, gid=rec.gid,
                          mtime=rec.mtime, member=member)
            fill_from_record(entry, rec)
            key = (*rec.dev, rec.ino) if rec.nlink > 1 and entry.kind == FILE else None
            yield entry, key, rec.nlink

    return resolve_hardlinks(entries())


def fill_from_record(entry: Entry, rec: CpioRecord) -> None:
    """Attach data, symlink target or device numbers from a record to an Entry of known kind."""
    if entry.kind == FILE:
        entry.size = rec.size
        entry.data = rec.data
    elif entry.kind == SYMLINK:
        if rec.size > MAX_SYMLINK:
            raise InputError(entry.member, f"absurd symlink target size {rec.size}")
        target = rec.data.read(rec.size)
        entry.target = target.decode("utf-8", "surrogateescape")
    elif entry.kind in (CHARDEV, BLOCKDEV):
        entry.rdev = rec.rdev


def resolve_hardlinks(items: Iterable[tuple]) -> Iterator[Entry]:
    """Turn (entry, link key, nlink[, size]) tuples into Entries where later names are
    HARDLINKs.

    ``link key`` is None for anything that is not a multiply-linked regular file; ``size``, when
    given, is how many bytes the set's data must have (an RPM header says so): a set whose data
    never arrived is then an error, not an empty file. See the module docstring for why
    data-less names are held back and when they are flushed.
    """
    emitted: dict[object, str] = {}
    pending: dict[object, list[Entry]] = {}
    expected: dict[object, int] = {}
    for entry, key, nlink, *size in items:
        if key is None:
            yield entry
        elif key in emitted:
            yield _link(entry, emitted[key])  # a second copy of data, if any, is skipped
        elif entry.size == 0:
            names = pending.setdefault(key, [])
            names.append(entry)
            if size and size[0]:
                expected[key] = size[0]
            if len(names) >= nlink:
                yield from _flush(pending.pop(key), emitted, key, expected.get(key, 0))
        else:
            emitted[key] = entry.path
            yield entry
            for waiting in pending.pop(key, ()):
                yield _link(waiting, entry.path)
    for key, names in pending.items():
        yield from _flush(names, emitted, key, expected.get(key, 0))


def _flush(names: list[Entry], emitted: dict[object, str], key: object,
           expected: int) -> Iterator[Entry]:
    """A link set without data: the first name is an empty file, the rest link to it."""
    first = names[0]
    if expected:
        raise InputError(first.member, f"hard link set whose {expected} bytes of data never "
                         "came in the payload", "the package is corrupt")
    first.data = io.BytesIO(b"")
    emitted[key] = first.path
    yield first
    for other in names[1:]:
        yield _link(other, first.path)


def _link(entry: Entry, target: str) -> Entry:
    return replace(entry, kind=HARDLINK, target=target, size=0, data=None)


_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


def _hex(field: bytes, where: str) -> int:
    """Strict hex: int() alone would also accept signs, spaces and underscores."""
    if not field or not _HEX_DIGITS.issuperset(field):
        raise InputError(where, f"bad hex field {field!r} in cpio header")
    return int(field, 16)


def _pad(stream: BinaryIO, offset: int, where: str) -> int:
    n = -offset % 4
    if n:
        skip(stream, n, where, "cpio padding")
    return n
