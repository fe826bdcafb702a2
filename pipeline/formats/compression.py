"""Streaming decompression and the small byte-stream helpers every archive reader shares.

Readers never hold a whole member in memory: they hand out file-like objects that decompress (or
just bound) on demand. Whatever goes wrong underneath — a truncated stream, a corrupt block, a
short read — surfaces as one :class:`InputError` naming the archive member, because that is the
only thing a user can act on (a ``zlib.error`` traceback is not).

The compressor is chosen from the *magic bytes* first; the name (``data.tar.xz`` or an RPM's
``PAYLOADCOMPRESSOR``) is only a claim, and an unknown name is rejected.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zlib
from collections.abc import Callable
from typing import BinaryIO

import pyzstd

from ..errors import InputError

CHUNK = 1 << 20  # 1 MiB: big enough for throughput, small enough to keep memory flat

# Magic bytes of the compressed formats, longest first so that prefixes cannot shadow each other.
MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
    (b"\x1f\x8b", "gzip"),
)
# Uncompressed payloads we recognise, so that "none" can be confirmed rather than assumed.
PLAIN_MAGICS = (b"0707",)  # cpio (newc/crc/odc); tar's magic sits at offset 257, checked below

# Every spelling we accept for a compressor: file suffixes, RPM PAYLOADCOMPRESSOR values, dpkg -Z.
ALIASES = {
    "gz": "gzip", "gzip": "gzip",
    "bz2": "bzip2", "bzip2": "bzip2",
    "xz": "xz",
    "lzma": "lzma",
    "zst": "zstd", "zstd": "zstd",
    "": "none", "none": "none", "identity": "none", "uncompressed": "none",
    "tar": "none", "cpio": "none",
}  # fmt: skip

PEEK = 512 + 8  # enough for every magic above, and for tar's "ustar" at offset 257


def codec_name(name_or_magic: str) -> str | None:
    """Map ``data.tar.xz``, ``xz``, ``zstd``, ``none``... to a canonical codec, or None if unknown."""
    name = name_or_magic.lower().rsplit("/", 1)[-1]
    if name in ALIASES:
        return ALIASES[name]
    suffix = name.rsplit(".", 1)[-1] if "." in name else name
    return ALIASES.get(suffix)


def sniff(head: bytes) -> str | None:
    """Name the codec from the first bytes of a stream; None when nothing matches."""
    for magic, codec in MAGICS:
        if head.startswith(magic):
            return codec
    if head.startswith(PLAIN_MAGICS) or head[257:262] == b"ustar":
        return "none"
    return None


def _looks_like_lzma_alone(head: bytes) -> bool:
    """Legacy .lzma has no magic; its properties byte is < 225 and the dictionary a sane size."""
    if len(head) < 13 or head[0] >= 9 * 5 * 5:
        return False
    dict_size = int.from_bytes(head[1:5], "little")
    return 1 << 12 <= dict_size <= 1 << 30


def open_decompressed(stream: BinaryIO, name_or_magic: str, where: str = "") -> BinaryIO:
    """Return a readable stream of the decompressed bytes of ``stream``.

    ``name_or_magic`` is the member name or compressor name that *claims* a codec; magic bytes
    win when they disagree (RPMs without a PAYLOADCOMPRESSOR default to "gzip" yet may be plain).
    ``where`` names the member in errors. Nothing is read beyond what the consumer asks for.
    """
    where = where or name_or_magic
    claimed = codec_name(name_or_magic)
    if claimed is None:
        raise InputError(where, f"unsupported compression {name_or_magic!r}",
                         "supported: gzip, bzip2, xz, lzma, zstd, none")
    head = read_upto(stream, PEEK)
    src = _Prefixed(head, stream)
    codec = sniff(head)
    if codec is None:
        if claimed == "lzma" and _looks_like_lzma_alone(head):
            codec = "lzma"
        elif claimed == "none":
            codec = "none"  # a plain stream of unknown content: let the container parser judge
        elif not head:
            raise InputError(where, f"empty {claimed} stream")
        else:
            raise InputError(where, f"not a {claimed} stream (bad magic {head[:6].hex()})")
    if codec == "none":
        return _Guarded(io.BufferedReader(src, CHUNK), where)
    return _Guarded(_OPENERS[codec](io.BufferedReader(src, CHUNK)), where)


_OPENERS: dict[str, Callable[[BinaryIO], BinaryIO]] = {
    "gzip": lambda f: gzip.GzipFile(fileobj=f, mode="rb"),
    "bzip2": lambda f: bz2.BZ2File(f, "rb"),
    "xz": lambda f: lzma.LZMAFile(f, "rb", format=lzma.FORMAT_XZ),
    "lzma": lambda f: lzma.LZMAFile(f, "rb", format=lzma.FORMAT_ALONE),
    "zstd": lambda f: pyzstd.ZstdFile(f, "rb"),
}

# What the stdlib and pyzstd raise for damaged input; each becomes an InputError. (OSError is
# how gzip and bz2 report bad data; a genuine disk error would be misreported as corrupt data.)
_DECODE_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError, pyzstd.ZstdError, ValueError)


class _Prefixed(io.RawIOBase):
    """Replays bytes already peeked at, then continues with the underlying stream."""

    def __init__(self, head: bytes, rest: BinaryIO):
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(b))
        b[: len(data)] = data
        return len(data)


class _Guarded(io.RawIOBase):
    """Turns decoder exceptions raised while reading into InputError naming the member."""

    def __init__(self, inner: BinaryIO, where: str):
        self._inner = inner
        self._where = where

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        try:
            data = self._inner.read(len(b))
        except InputError:
            raise
        except _DECODE_ERRORS as exc:
            raise InputError(self._where, f"corrupt or truncated compressed data: {exc}") from None
        b[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:  # fast path: skip RawIOBase's copy through readinto
        try:
            return self._inner.read(size)
        except InputError:
            raise
        except _DECODE_ERRORS as exc:
            raise InputError(self._where, f"corrupt or truncated compressed data: {exc}") from None


class LimitedReader(io.RawIOBase):
    """Exactly ``size`` bytes of ``stream``; a short underlying stream is an InputError.

    Archive readers hand this out as ``Entry.data`` and call :meth:`skip_rest` before moving on,
    so a consumer that reads only part of a member (or nothing) never desynchronizes the parser.
    """

    def __init__(self, stream: BinaryIO, size: int, where: str):
        self._stream = stream
        self._left = size
        self._where = where

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        size = min(size, self._left)
        if size == 0:
            return b""
        data = self._stream.read(min(size, CHUNK))
        if not data:
            raise InputError(self._where, f"truncated: {self._left} more bytes expected")
        self._left -= len(data)
        return data

    def readall(self) -> bytes:
        return b"".join(iter(lambda: self.read(CHUNK), b""))

    def skip_rest(self) -> None:
        """Consume what the reader's user left unread (chunked, never all at once)."""
        while self._left:
            self.read(CHUNK)


def read_upto(stream: BinaryIO, n: int) -> bytes:
    """Read up to ``n`` bytes, fewer only at end of stream (a pipe may return short reads)."""
    parts: list[bytes] = []
    while n > 0:
        data = stream.read(n)
        if not data:
            break
        parts.append(data)
        n -= len(data)
    return b"".join(parts)


def read_exact(stream: BinaryIO, n: int, where: str, what: str = "data") -> bytes:
    """Read exactly ``n`` bytes or raise InputError saying what was being read."""
    data = read_upto(stream, n)
    if len(data) != n:
        raise InputError(where, f"truncated {what}: got {len(data)} of {n} bytes")
    return data


def skip(stream: BinaryIO, n: int, where: str, what: str = "data") -> None:
    """Discard ``n`` bytes in chunks (streams here are not seekable)."""
    while n > 0:
        step = min(n, CHUNK)
        read_exact(stream, step, where, what)
        n -= step
