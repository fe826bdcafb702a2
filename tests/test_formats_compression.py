"""open_decompressed: every codec, magic over name, streaming, and damage → InputError."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import random

import pytest
import pyzstd

from pipeline.errors import InputError
from pipeline.formats.compression import CHUNK, LimitedReader, open_decompressed

PLAIN = b"".join(b"line %d of some text that compresses\n" % i for i in range(20000))

COMPRESS = {
    "gzip": gzip.compress,
    "bzip2": bz2.compress,
    "xz": lambda d: lzma.compress(d, format=lzma.FORMAT_XZ),
    "lzma": lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE),
    # like the zstd CLI: with a content checksum, without which corruption can go unnoticed
    "zstd": lambda d: pyzstd.compress(d, {pyzstd.CParameter.checksumFlag: 1}),
}
NAMES = {"gzip": "data.tar.gz", "bzip2": "data.tar.bz2", "xz": "data.tar.xz",
         "lzma": "data.tar.lzma", "zstd": "data.tar.zst"}


class CountingReader(io.RawIOBase):
    """A non-seekable source that records how much was pulled from it."""

    def __init__(self, data: bytes):
        self._src = io.BytesIO(data)
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        data = self._src.read(len(b))
        b[: len(data)] = data
        self.consumed += len(data)
        return len(data)


@pytest.mark.parametrize("codec", sorted(COMPRESS))
@pytest.mark.parametrize("spelling", ["name", "codec"])
def test_roundtrip(codec, spelling):
    name = NAMES[codec] if spelling == "name" else codec
    out = open_decompressed(CountingReader(COMPRESS[codec](PLAIN)), name, "x.deb:m").read()
    assert out == PLAIN


def test_uncompressed_passes_through():
    assert open_decompressed(io.BytesIO(PLAIN), "data.tar", "x").read() == PLAIN
    assert open_decompressed(io.BytesIO(b""), "none", "x").read() == b""


@pytest.mark.parametrize("actual", ["xz", "zstd", "bzip2"])
def test_magic_wins_over_claimed_name(actual):
    # RPMs without PAYLOADCOMPRESSOR claim gzip; a mislabelled member must still decode.
    assert open_decompressed(io.BytesIO(COMPRESS[actual](PLAIN)), "gzip", "x").read() == PLAIN


def test_plain_cpio_under_gzip_claim_is_read_as_plain():
    data = b"070701" + b"0" * 200
    assert open_decompressed(io.BytesIO(data), "gzip", "x").read() == data


@pytest.mark.parametrize("codec", ["gzip", "bzip2", "xz", "zstd"])
def test_concatenated_streams(codec):
    # pigz/pbzip2/pixz/zstd -T write several streams; all of them are payload.
    data = COMPRESS[codec](PLAIN[:1000]) + COMPRESS[codec](PLAIN[1000:])
    assert open_decompressed(io.BytesIO(data), codec, "x").read() == PLAIN


@pytest.mark.parametrize("codec", sorted(COMPRESS))
def test_truncated_stream_names_member(codec):
    data = COMPRESS[codec](os.urandom(1 << 16) + PLAIN)
    with pytest.raises(InputError) as err:
        open_decompressed(io.BytesIO(data[: len(data) // 2]), NAMES[codec], "pkg.deb:member").read()
    assert err.value.where == "pkg.deb:member"
    assert "truncated" in str(err.value) or "corrupt" in str(err.value)


@pytest.mark.parametrize("codec", sorted(COMPRESS))
def test_corrupt_stream_names_member(codec):
    data = bytearray(COMPRESS[codec](PLAIN))
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0x55 for b in data[middle : middle + 16])
    with pytest.raises(InputError) as err:
        open_decompressed(io.BytesIO(bytes(data)), codec, "pkg.rpm:payload").read()
    assert str(err.value).startswith("pkg.rpm:payload: ")


def test_bad_magic_is_named():
    with pytest.raises(InputError, match=r"^p\.deb:data\.tar\.xz: not a xz stream"):
        open_decompressed(io.BytesIO(b"this is not compressed data" * 40), "data.tar.xz",
                          "p.deb:data.tar.xz")


@pytest.mark.parametrize("name", ["data.tar.lz4", "lzip", "brotli"])
def test_unsupported_compression(name):
    with pytest.raises(InputError, match="unsupported compression"):
        open_decompressed(io.BytesIO(COMPRESS["xz"](PLAIN)), name, "p.deb")


@pytest.mark.parametrize("codec", ["gzip", "xz", "zstd"])
def test_streams_instead_of_slurping(codec):
    # Incompressible input, so compressed size ≈ plain size: reading the first MiB must not
    # pull the whole compressed stream from the source.
    plain = random.Random(1).randbytes(12 * CHUNK)
    fast = {"gzip": lambda d: gzip.compress(d, 1), "xz": lambda d: lzma.compress(d, preset=0),
            "zstd": pyzstd.compress}
    src = CountingReader(fast[codec](plain))
    reader = open_decompressed(src, codec, "x")
    first = reader.read(CHUNK)
    assert 0 < len(first) <= CHUNK
    assert first == plain[: len(first)]
    assert src.consumed < 4 * CHUNK, src.consumed
    assert first + reader.read() == plain


def test_limited_reader_bounds_and_reports_truncation():
    src = io.BytesIO(b"abcdefgh")
    part = LimitedReader(src, 3, "a.deb:m")
    assert part.read() == b"abc"
    assert part.read() == b""
    assert src.read(1) == b"d"  # never reads past its end
    short = LimitedReader(io.BytesIO(b"ab"), 5, "a.deb:short")
    with pytest.raises(InputError, match=r"^a\.deb:short: truncated"):
        short.read()
