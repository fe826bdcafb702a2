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


#: Decompression threads alive before the current test (other tests' are not ours to judge),
#: the Thread objects themselves: an ident is reused as soon as its thread has ended, so one of
#: ours could carry the ident of an earlier one that ended meanwhile and go unseen.
_EARLIER: list[threading.Thread] = []


@pytest.fixture(autouse=True)
def _baseline():
    _EARLIER.clear()
    _EARLIER.extend(t for t in threading.enumerate() if t.name == "decompress")


def _decompress_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate()
            if t.name == "decompress" and not any(t is e for e in _EARLIER)]


def _settle(timeout: float = 60.0) -> list[threading.Thread]:
    """The decompression threads of this test still alive once they had ``timeout`` seconds to
    end (a generous wait for a loaded machine: it returns as soon as they are gone)."""
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


def _deb(tmp_path, name: str, content: bytes):
    from pkgfactory import build_deb, file

    return build_deb(tmp_path, name, "1.0", [file(f"/usr/share/{name}/data", content)],
                     compression="xz")


def _corrupt(deb, out):
    """The deb with a byte in the middle of its (xz) data.tar changed."""
    data = bytearray(deb.read_bytes())
    at = data.rindex(b"data.tar.xz")
    data[at + 60 + (len(data) - at - 60) // 2] ^= 0xFF
    out.write_bytes(bytes(data))
    return out


def _build(tmp_path, cache_dir, debs):
    from recipes_kit import DEBIAN_12, EPOCH, build_recipe, recipe_dict

    spec = recipe_dict("two", kind="sysext", version="1",
                       target={**DEBIAN_12, "architecture": "x86-64"}, sources=debs,
                       image={"format": "directory", "source_date_epoch": EPOCH})
    return build_recipe(tmp_path, spec, cache_dir=cache_dir, expect=None)


def test_two_packages_in_flight_write_what_one_at_a_time_writes(tmp_path, cache_dir):
    """The next package decompresses while the current one is written: same tree, in the
    recipe's order (the later package wins on a shared path), and an error is the one the first
    broken package in order gives."""
    rng = random.Random(3)
    a = _deb(tmp_path, "alpha", rng.randbytes(CHUNK // 2) + bytes(3 * CHUNK))
    b = _deb(tmp_path, "beta", rng.randbytes(CHUNK // 2))
    proc = _build(tmp_path / "ok", cache_dir, [a, b])
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "ok" / "out" / "two" / "usr" / "share"
    assert sorted(p.name for p in out.iterdir()) == ["alpha", "beta"]
    assert (out / "alpha" / "data").stat().st_size == CHUNK // 2 + 3 * CHUNK

    broken_b = _corrupt(b, tmp_path / "beta-broken.deb")
    proc = _build(tmp_path / "second", cache_dir, [a, broken_b])
    assert proc.returncode == 2
    assert "beta" in proc.stderr and "alpha" not in proc.stderr, proc.stderr

    broken_a = _corrupt(a, tmp_path / "alpha-broken.deb")
    proc = _build(tmp_path / "both", cache_dir, [broken_a, broken_b])
    assert proc.returncode == 2
    assert "alpha" in proc.stderr and "beta" not in proc.stderr, proc.stderr
    assert not (tmp_path / "both" / "out" / "two").exists()
    assert not _settle()
