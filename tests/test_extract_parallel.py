"""Decompression runs in a thread ahead of the parser (issue 14 target 1): the reader sees the
same bytes, errors surface in the reader as before, and no thread outlives its stream."""

from __future__ import annotations

import gc
import io
import lzma
import random
import threading
import time

import pytest

from pipeline.errors import InputError
from pipeline.formats.compression import CHUNK, Limits, open_decompressed

PLAIN = random.Random(7).randbytes(CHUNK) + bytes(2 * CHUNK)
XZ = lzma.compress(PLAIN, preset=0)


def _decompress_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "decompress"]


def _settle(timeout: float = 5.0) -> list[threading.Thread]:
    end = time.monotonic() + timeout
    while _decompress_threads() and time.monotonic() < end:
        gc.collect()
        time.sleep(0.02)
    return _decompress_threads()


def test_the_reader_gets_every_byte_in_order_from_a_thread():
    assert not _settle()
    reader = open_decompressed(io.BytesIO(XZ), "data.tar.xz", "x")
    seen_thread = bool(_decompress_threads())
    got = bytearray()
    for size in (1, 511, 512, CHUNK, 7, CHUNK // 3):  # odd sizes cross the read-ahead pieces
        got += reader.read(size)
    got += reader.read()
    assert bytes(got) == PLAIN
    assert reader.read(10) == b""
    assert seen_thread
    assert not _settle()  # at its end the thread is gone


def test_a_reader_that_stops_early_stops_its_thread():
    reader = open_decompressed(io.BytesIO(XZ), "xz", "x")
    assert reader.read(100) == PLAIN[:100]
    del reader
    assert not _settle()


def test_a_corrupt_stream_is_an_input_error_naming_the_member():
    data = bytearray(XZ)
    data[len(data) // 2] ^= 0xFF
    reader = open_decompressed(io.BytesIO(bytes(data)), "xz", "p.deb:data.tar.xz")
    with pytest.raises(InputError, match=r"^p\.deb:data\.tar\.xz: corrupt or truncated"):
        while reader.read(CHUNK):
            pass
    del reader
    assert not _settle()


def test_the_budget_still_stops_a_bomb():
    bomb = lzma.compress(bytes(16 * CHUNK), preset=0)
    reader = open_decompressed(io.BytesIO(bomb), "xz", "b.deb:data.tar.xz",
                               Limits(unpacked=4 * CHUNK))
    with pytest.raises(InputError, match="more than"):
        while reader.read(CHUNK):
            pass
    del reader
    assert not _settle()
