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
import collections
import concurrent.futures
import contextlib
import contextvars
import io
import lzma
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

import pyzstd

from ..errors import InputError
from .entry import shown

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

PEEK = 512 + 8

#: Defaults of the per-build budgets (a recipe raises them in [limits]): every package together
#: may unpack to this many bytes ...
DEFAULT_UNPACKED = 8 << 30
#: ... and no compressed member may expand more than this many times ...
DEFAULT_RATIO = 1000
#: ... once it has produced this much (small, very compressible members are normal) ...
RATIO_FLOOR = 32 << 20
#: ... and all packages together may hold this many entries (each costs memory while the
#: build runs; the largest real packages have about a hundred thousand).
DEFAULT_ENTRIES = 1_000_000


@dataclass
class Limits:
    """The budget one build spends while decompressing; shared by all its packages."""

    unpacked: int = DEFAULT_UNPACKED
    ratio: int = DEFAULT_RATIO
    ratio_floor: int = RATIO_FLOOR
    entries: int = DEFAULT_ENTRIES
    used: int = 0
    counted: int = 0  # entries so far

    def count_entry(self, where: str) -> None:
        self.counted += 1
        if self.counted > self.entries:
            raise InputError(where, f"the packages hold more than {self.entries} entries "
                             "(the build's budget)",
                             "if genuine, raise limits.entries in the recipe")

    def spend(self, n: int, where: str) -> None:
        self.used += n
        if self.used > self.unpacked:
            raise InputError(where, f"the packages unpack to more than {self.unpacked} bytes "
                             "(the build's budget)",
                             "a decompression bomb? if genuine, raise limits.unpacked in the "
                             "recipe")

    def judge_ratio(self, produced: int, consumed: int, where: str) -> None:
        if produced > self.ratio_floor and produced > self.ratio * max(consumed, 1):
            raise InputError(where, f"expands more than {self.ratio} times ({produced} bytes "
                             f"from {consumed} compressed)",
                             "a decompression bomb? if genuine, raise limits.compression_ratio "
                             "in the recipe")  # enough for every magic above, and for tar's "ustar" at offset 257


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


class Stream(io.RawIOBase):
    """The byte-stream plumbing every reader here shares: ``read(size)`` is the one method a
    subclass writes (``_read``, at most ``size`` bytes, ``b""`` only at the end); ``read()`` of
    everything is chunked, ``readinto`` goes through it (RawIOBase's own would copy twice)."""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        data = self._read(len(b))
        b[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        return self._read(size)

    def readall(self) -> bytes:
        return b"".join(iter(lambda: self._read(CHUNK), b""))

    def _read(self, size: int) -> bytes:
        raise NotImplementedError


def open_decompressed(stream: BinaryIO, name_or_magic: str, where: str = "",
                      limits: Limits | None = None, *, ahead: bool | None = None) -> BinaryIO:
    """Return a readable stream of the decompressed bytes of ``stream``.

    ``name_or_magic`` is the member name or compressor name that *claims* a codec; magic bytes
    win when they disagree (RPMs without a PAYLOADCOMPRESSOR default to "gzip" yet may be plain).
    ``where`` names the member in errors. Nothing is read beyond what the consumer asks for.
    Every byte produced is charged to ``limits`` (a fresh default budget when None), and a
    compressed stream may not expand beyond its ratio.
    """
    limits = limits if limits is not None else Limits()
    where = where or name_or_magic
    claimed = codec_name(name_or_magic)
    if claimed is None:
        raise InputError(where, f"unsupported compression {shown(name_or_magic)!r}",
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
        return _Guarded(io.BufferedReader(src, CHUNK), where, limits, None)
    decoded = _OPENERS[codec](src)
    if ahead is None:
        ahead = not (isinstance(stream, LimitedReader) and stream.left < THREAD_FROM)
    if not ahead:
        guarded = _Guarded(decoded, where, limits, src)  # a control.tar: a thread costs more
    else:
        guarded = _Guarded(_ReadAhead(decoded), where, limits, src)
    guarded.codec = codec
    return guarded


def open_plain(stream: BinaryIO, where: str, limits: Limits) -> BinaryIO:
    """``stream`` holds bytes decoded before (a catalogue's shared payload): read as they are,
    never sniffed for a codec, charged to ``limits`` and named ``where`` in errors as
    :func:`open_decompressed`'s stream of the same member is."""
    return _Guarded(io.BufferedReader(stream, CHUNK), where, limits, None)


#: Compressed members smaller than this are decompressed without a read-ahead thread, unless
#: the caller says (``ahead``): a payload is worth one even when small, as it decompresses
#: while the packages before it are written.
THREAD_FROM = 16 << 10


#: Compressed bytes handed to a decoder at once: one call (one release of the GIL) makes a
#: whole read-ahead piece, instead of one call per 8 KiB as the stdlib's file objects do.
RAW_BLOCK = 64 << 10


class _Decoded(Stream):
    """A decoder object (``lzma.LZMADecompressor``, ``bz2.BZ2Decompressor``) as a stream: the
    loop of the stdlib's ``_compression.DecompressReader`` (concatenated streams, trailing
    garbage after a complete stream ignored as LZMAFile/BZ2File do, a stream cut short is an
    EOFError), fed :data:`RAW_BLOCK` compressed bytes at a time."""

    def __init__(self, raw: BinaryIO, factory: Callable, trailing_error):
        self._raw = raw
        self._factory = factory
        self._trailing_error = trailing_error
        self._decoder = factory()
        self._eof = False

    def _read(self, size: int) -> bytes:
        data = b""
        while not self._eof:
            if self._decoder.eof:
                block = self._decoder.unused_data or self._raw.read(RAW_BLOCK)
                if not block:
                    break
                try:
                    self._decoder = self._factory()
                    data = self._decoder.decompress(block, size)
                except self._trailing_error:
                    break  # garbage after a complete stream, as the stdlib ignores it
            else:
                if self._decoder.needs_input:
                    block = self._raw.read(RAW_BLOCK)
                    if not block:
                        raise EOFError("Compressed file ended before the end-of-stream marker "
                                       "was reached")
                else:
                    block = b""
                data = self._decoder.decompress(block, size)
            if data:
                return data
        self._eof = True
        return b""


class _Gunzip:
    """One gzip member for :class:`_Decoded`, through zlib (which checks the header, CRC32 and
    length): the decoder interface of ``lzma.LZMADecompressor``. NUL padding before a member is
    skipped, and padding up to the end is a clean end, as ``gzip.GzipFile`` reads them."""

    def __init__(self):
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._started = False
        self._padding_only = False

    @property
    def eof(self) -> bool:
        return self._z.eof or self._padding_only

    @property
    def unused_data(self) -> bytes:
        return self._z.unused_data

    @property
    def needs_input(self) -> bool:
        return not self._z.unconsumed_tail

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if not self._started:
            data = data.lstrip(b"\0")
            if not data:
                self._padding_only = True  # until more comes: _Decoded starts a new member
                return b""
            self._started, self._padding_only = True, False
        return self._z.decompress(self._z.unconsumed_tail + data, max_length)


_OPENERS: dict[str, Callable[[BinaryIO], BinaryIO]] = {
    "gzip": lambda f: _Decoded(f, _Gunzip, ()),  # garbage after a member is an error there
    "bzip2": lambda f: _Decoded(f, bz2.BZ2Decompressor, OSError),
    "xz": lambda f: _Decoded(f, lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ), lzma.LZMAError),
    "lzma": lambda f: _Decoded(f, lambda: lzma.LZMADecompressor(lzma.FORMAT_ALONE),
                               lzma.LZMAError),
    "zstd": lambda f: pyzstd.ZstdFile(io.BufferedReader(f, CHUNK), "rb"),
}

# What the stdlib and pyzstd raise for damaged input; each becomes an InputError. (OSError is
# how gzip and bz2 report bad data; a genuine disk error would be misreported as corrupt data.)
_DECODE_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError, pyzstd.ZstdError, ValueError)


class _Prefixed(Stream):
    """Replays bytes already peeked at, then continues with the underlying stream."""

    def __init__(self, head: bytes, rest: BinaryIO):
        self._head = head
        self._rest = rest
        self.consumed = len(head)

    def _read(self, size: int) -> bytes:
        if self._head:
            data, self._head = self._head[:size], self._head[size:]
            return data
        data = self._rest.read(size)
        self.consumed += len(data)
        return data


#: Decompressed pieces a read-ahead thread may hold before the reader takes them, and their
#: size: at most about 1 MiB decompressed ahead per stream (outside a :func:`read_ahead`).
READ_AHEAD = 4
AHEAD_PIECE = CHUNK // 4


class AheadBudget:
    """One budget of decompressed bytes held ahead of their readers, shared by every stream
    opened under :func:`read_ahead`, and the order their decompression threads run in.

    Why shared: a payload's packages differ in size by a thousand times (libicu72: 35 MiB of
    one xz stream, 0.47 s on a core; most others a few hundred KiB). A fixed read-ahead per
    stream either stops the large one long before the writer reaches it (the writer then
    waits for it) or multiplies a large bound by every package in flight. One budget lets a
    large package run far ahead while the small ones are written, and bounds the whole.

    Memory: the bytes held (decoded, not yet read) never exceed ``total`` plus one
    :data:`AHEAD_PIECE` per stream (a stream whose reader has taken everything may always
    decode one piece: the stream being read can never be starved by those ahead of it, so
    there is no deadlock); one stream holds at most ``cap``.

    Order (``workers`` set): at most ``workers`` pieces decode at once, one less while no
    reader waits (that core is the writer's); a stream whose reader waits goes first, then one
    being read (what the writer needs next), then the lowest ``rank`` (the stream's rank is
    :attr:`rank` when it is opened: the extract stage ranks packages by when their
    decompression must start). A thread that finished a piece competes for the next turn in
    the same step (a less urgent one cannot slip in while it hands its piece over). Without
    ``workers`` every stream decodes as soon as it has room, as a plain bounded queue does."""

    def __init__(self, total: int, *, cap: int | None = None, workers: int | None = None):
        self.total = total
        self.cap = min(cap, total) if cap is not None else total
        self.workers = workers
        self.rank = 0.0
        self.held = 0  # decoded or reserved, not yet taken by a reader
        self.peak = 0
        self.running = 0  # pieces being decoded
        self.readers_waiting = 0
        self.lock = threading.Lock()
        self._queued: list[_Pipe] = []  # streams whose thread waits for its turn

    @contextlib.contextmanager
    def opening(self, rank: float):
        """Streams opened inside get ``rank`` (lower decodes first)."""
        previous, self.rank = self.rank, rank
        try:
            yield
        finally:
            self.rank = previous

    def _room(self, pipe: _Pipe) -> bool:
        return pipe.held == 0 or (self.held + AHEAD_PIECE <= self.total
                                  and pipe.held + AHEAD_PIECE <= self.cap)

    def _dispatch(self) -> None:
        """Give turns to the most urgent waiting threads that have room, as many as may run
        (called with ``lock`` held after every change; only the chosen threads wake)."""
        while self._queued:
            if self.workers is not None and self.running >= \
                    max(1, self.workers - (0 if self.readers_waiting else 1)):
                return
            ready = [p for p in self._queued if self._room(p)]
            if not ready:
                return
            pipe = min(ready, key=_Pipe.urgency)
            self._queued.remove(pipe)
            self.running += 1
            self._add(pipe, AHEAD_PIECE)  # reserved
            pipe.granted = True
            pipe.turn.notify()

    def _next(self, pipe: _Pipe, done: tuple | None = None) -> bool:
        """Hand over the piece ``done`` (item, size; None at first), then wait for the turn to
        decode the next one (reserved); False at the end or once stopped. One step, so that
        the thread still wanting to run is among those the turn is chosen from."""
        with self.lock:
            if done is not None:
                self._deliver(pipe, *done)
                if not isinstance(done[0], bytes):  # the end, or the exception
                    self._dispatch()
                    return False
            if pipe.stop:
                self._dispatch()
                return False
            pipe.granted = False
            self._queued.append(pipe)
            self._dispatch()
            while not pipe.granted and not pipe.stop:
                pipe.turn.wait()
            return pipe.granted  # not granted: stopped (_stop took it off the queue)

    def _deliver(self, pipe: _Pipe, item, size: int) -> None:
        """A decoded piece (or None, or the exception) replaces its reservation (lock held)."""
        self.running -= 1
        self._add(pipe, size - AHEAD_PIECE)
        if pipe.stop:
            self._add(pipe, -size)  # the reader is gone
        else:
            pipe.items.append(item)
            if pipe.waited_on:
                pipe.ready.notify()

    def _take(self, pipe: _Pipe):
        """The reader's next item, waited for (its thread then goes first)."""
        with self.lock:
            pipe.reading = True
            if not pipe.items:
                pipe.waited_on = True
                self.readers_waiting += 1
                try:
                    self._dispatch()
                    while not pipe.items:
                        pipe.ready.wait()
                finally:  # also when interrupted (^C)
                    pipe.waited_on = False
                    self.readers_waiting -= 1
            item = pipe.items.popleft()
            if isinstance(item, bytes):
                self._add(pipe, -len(item))
                self._dispatch()
            return item

    def _stop(self, pipe: _Pipe) -> None:
        with self.lock:
            pipe.stop = True
            if pipe in self._queued:
                self._queued.remove(pipe)
            self._add(pipe, -sum(len(i) for i in pipe.items if isinstance(i, bytes)))
            pipe.items.clear()
            pipe.turn.notify()
            self._dispatch()

    def _add(self, pipe: _Pipe, n: int) -> None:
        pipe.held += n
        self.held += n
        self.peak = max(self.peak, self.held)


class _Pipe:
    """What a read-ahead thread shares with its reader (not the reader itself: a reader
    dropped without ``close`` is collected, and its ``close`` stops the thread)."""

    def __init__(self, budget: AheadBudget):
        self.rank = budget.rank
        self.items: collections.deque = collections.deque()
        self.held = 0
        self.stop = False
        self.granted = False
        self.waited_on = False
        self.reading = False  # its reader has begun: what the writer needs now
        self.turn = threading.Condition(budget.lock)  # the thread waits for its turn
        self.ready = threading.Condition(budget.lock)  # the reader waits for an item

    def urgency(self) -> tuple[bool, bool, float]:
        return not self.waited_on, not self.reading, self.rank


_budget: contextvars.ContextVar[AheadBudget | None] = contextvars.ContextVar("read_ahead",
                                                                             default=None)


@contextlib.contextmanager
def read_ahead(budget: AheadBudget):
    """Streams opened inside decompress ahead of their readers within ``budget`` (the extract
    stage's, shared by the packages in flight) instead of :data:`READ_AHEAD` pieces each."""
    token = _budget.set(budget)
    try:
        yield
    finally:
        _budget.reset(token)


class _ReadAhead(Stream):
    """Decompresses ``inner`` in a thread of its own, ahead of the reader within a budget
    (:class:`AheadBudget`; :data:`READ_AHEAD` pieces of its own outside :func:`read_ahead`):
    lzma, zlib, bz2 and pyzstd release the GIL, so a package's decompression runs on one core
    while its entries are parsed and written on the other. The reader sees the same bytes in
    the same order; an exception of the decoder (or of the compressed stream under it) is
    raised in the reader, where it would have been raised without the thread.

    The thread alone reads the compressed stream until the decoder's end, which is also the end
    of the compressed member (every decoder here reads to the end of its input), so the stream
    is never read from two threads. A reader that stops early (closed, or collected) stops the
    thread."""

    def __init__(self, inner: BinaryIO):
        budget = _budget.get()
        self._budget = budget if budget is not None else AheadBudget(READ_AHEAD * AHEAD_PIECE)
        self._pipe = _Pipe(self._budget)
        self._buf = b""
        self._pos = 0
        self._done = False
        self._thread = threading.Thread(target=_pump, args=(inner, self._pipe, self._budget),
                                        name="decompress", daemon=True)
        self._thread.start()

    def _read(self, size: int) -> bytes:
        if self._pos >= len(self._buf):
            if self._done:
                return b""
            item = self._budget._take(self._pipe)
            if not isinstance(item, bytes):
                self._done = True
                self._thread.join()
                if item is None:
                    return b""
                raise item
            self._buf, self._pos = item, 0
        if self._pos == 0 and size >= len(self._buf):
            data = self._buf  # a whole chunk: no copy
        else:
            data = self._buf[self._pos:self._pos + size]
        self._pos += len(data)
        return data

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._budget._stop(self._pipe)
            self._thread.join()  # at most the piece it is decoding
        super().close()


def _pump(inner: BinaryIO, pipe: _Pipe, budget: AheadBudget) -> None:
    """The read-ahead thread: decompressed pieces, then None (the end) or the exception."""
    done = None
    while budget._next(pipe, done):
        try:
            data = inner.read(AHEAD_PIECE)
        except BaseException as exc:  # handed to the reader, which raises it as it would have
            done = exc, 0
        else:
            done = data or None, len(data)


class _Guarded(Stream):
    """Turns decoder exceptions raised while reading into InputError naming the member, and
    charges what comes out to the build's budget (``source`` counts the compressed bytes)."""

    #: the codec decoding the stream ("none" when the bytes are read as they are)
    codec = "none"

    def __init__(self, inner: BinaryIO, where: str, limits: Limits, source: _Prefixed | None):
        self._inner = inner
        self._where = where
        self._limits = limits
        self._source = source
        self._produced = 0

    def close(self) -> None:
        """Closes the decoder too: a read-ahead thread stops now, not when collected."""
        if not self.closed:
            self._inner.close()
        super().close()

    def _read(self, size: int) -> bytes:
        size = min(size, CHUNK)  # never more than a chunk at once: the budget is checked between
        try:
            data = self._inner.read(size)
        except InputError:
            raise
        except _DECODE_ERRORS as exc:
            raise InputError(self._where, f"corrupt or truncated compressed data: {exc}") from None
        self._produced += len(data)
        self._limits.spend(len(data), self._where)
        if self._source is not None:
            self._limits.judge_ratio(self._produced, self._source.consumed, self._where)
        return data


class LimitedReader(Stream):
    """Exactly ``size`` bytes of ``stream``; a short underlying stream is an InputError.

    Archive readers hand this out as ``Entry.data`` and call :meth:`skip_rest` before moving on,
    so a consumer that reads only part of a member (or nothing) never desynchronizes the parser.
    """

    def __init__(self, stream: BinaryIO, size: int, where: str):
        self._stream = stream
        self._left = size
        self._where = where

    def _read(self, size: int) -> bytes:
        size = min(size, self._left)
        if size == 0:
            return b""
        data = self._stream.read(min(size, CHUNK))
        if not data:
            raise InputError(self._where, f"truncated: {self._left} more bytes expected")
        self._left -= len(data)
        return data

    @property
    def left(self) -> int:
        """Bytes not read yet."""
        return self._left

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


class HashingReader(Stream):
    """Every byte read from ``stream`` goes through ``hashers`` (hashlib objects) and is
    counted: what is parsed is what is hashed, in one pass."""

    def __init__(self, stream: BinaryIO, *hashers):
        self._stream = stream
        self.hashers = list(hashers)
        self.size = 0

    def _read(self, size: int) -> bytes:
        data = self._stream.read(min(size, CHUNK))
        for h in self.hashers:
            h.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        """Read (and hash) the rest of the stream."""
        while self.read(CHUNK):
            pass


def check_read_sha256(name: str, got: str, expected: str, what: str = "the bytes read") -> None:
    """The one verdict on a package file whose bytes, hashed while they were parsed, are not
    the ones the fetch stage verified: it changed underneath (a cache shared with others)."""
    if got != expected:
        raise InputError(name, f"{what} have sha256 {got}, not the verified {expected}",
                         "the file changed while it was read (a shared cache?); build again")


#: Members at least this large are hashed in the digest thread (see DigestCheck) ...
DIGEST_THREAD_FROM = 1 << 20
#: ... at most this many pieces behind their reader.
DIGEST_BEHIND = 8
_digest_pool: concurrent.futures.ThreadPoolExecutor | None = None
_digest_lock = threading.Lock()


def _digest_thread() -> concurrent.futures.ThreadPoolExecutor:
    """The one thread that runs the deferred hash updates, in the order they were submitted."""
    global _digest_pool
    with _digest_lock:
        if _digest_pool is None:
            _digest_pool = concurrent.futures.ThreadPoolExecutor(1, "digest")
        return _digest_pool


class DigestCheck(Stream):
    """A member's data that is hashed as it streams and compared with ``expected`` (hex) once
    all ``size`` bytes went through; ``finish`` reads what the consumer left and checks.
    ``what`` says where the expected digest comes from (``md5sums``, ``FILEDIGESTS``)."""

    def __init__(self, inner: BinaryIO, size: int, hasher, expected: str | None, member: str,
                 what: str):
        self._inner = inner
        self._left = size
        self._hasher = hasher
        self.expected = expected
        self._member = member
        self._what = what
        self.hexdigest: str | None = None
        # a large member is hashed in the digest thread while its reader writes it (md5 runs
        # at ~700 MB/s: a second of a 1 GB payload off the writer's thread); updates stay in
        # order (one thread) and at most DIGEST_BEHIND pieces behind the reader
        self._pending: collections.deque | None = collections.deque() \
            if size >= DIGEST_THREAD_FROM else None

    def _read(self, size: int) -> bytes:
        data = self._inner.read(min(size, self._left, CHUNK)) if self._left else b""
        if self._pending is None:
            self._hasher.update(data)
        elif data:
            if len(self._pending) >= DIGEST_BEHIND:
                self._pending.popleft().result()
            self._pending.append(_digest_thread().submit(self._hasher.update, data))
        self._left -= len(data)
        if not self._left and self.hexdigest is None:
            self._verify()
        return data

    def finish(self) -> str:
        while self._left:
            if not self.read(CHUNK):
                raise InputError(self._member, f"truncated: {self._left} more bytes expected")
        if self.hexdigest is None:
            self._verify()
        return self.hexdigest or ""

    def _verify(self) -> None:
        while self._pending:
            self._pending.popleft().result()
        self.hexdigest = self._hasher.hexdigest()
        if self.expected is not None and self.hexdigest != self.expected.lower():
            raise InputError(self._member, f"content does not match the package's {self._what} "
                             f"({self._hasher.name} {self.hexdigest}, expected {self.expected})",
                             "the package is corrupt or was tampered with")
