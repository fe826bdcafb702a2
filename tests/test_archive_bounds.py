"""Package archives are hostile: headers, names and decompression are bounded (issue 11 §3).

Each build runs the CLI as a child process and measures the child's peak RSS with os.wait4:
a pax header declaring 2 GiB or an xz bomb of 1 GiB of zeros is refused with a one-line error
while the build stays under 100 MiB.
"""

from __future__ import annotations

import io
import lzma
import os
import tarfile
from pathlib import Path

import pytest
from childrss import run_measured
from conftest import REPO
from recipes_kit import cli_argv, cli_env, recipe_dict, write_recipe_dict
from test_hostile import _ar, _tar, info

from pipeline.errors import InputError
from pipeline.formats.entry import shown
from pipeline.formats.tar import tar_entries

PEAK_RSS_LIMIT = 100 << 20


def tar_header(name: bytes, typeflag: bytes, size: int, *, mode: int = 0o644,
               linkname: bytes = b"") -> bytes:
    """One ustar header block with a correct checksum (sizes tarfile would never write)."""
    block = bytearray(512)
    block[0:len(name[:100])] = name[:100]
    block[100:108] = b"%07o\0" % mode
    block[108:116] = b"0000000\0"
    block[116:124] = b"0000000\0"
    block[124:136] = b"%011o\0" % size if size < 8**11 else b"\x80" + size.to_bytes(11, "big")
    block[136:148] = b"%011o\0" % 1700000000
    block[156:157] = typeflag
    block[157:157 + len(linkname[:100])] = linkname[:100]
    block[257:265] = b"ustar\x0000"
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def control_xz(package: str = "evil") -> bytes:
    return lzma.compress(_tar([(info("./control"), f"Package: {package}\nVersion: 1\n"
                               "Architecture: amd64\nMaintainer: x <x@example.invalid>\n"
                               "Description: x\n".encode())]))


def deb_with_data(path: Path, data_xz: bytes) -> Path:
    path.write_bytes(_ar([("debian-binary", b"2.0\n"), ("control.tar.xz", control_xz()),
                          ("data.tar.xz", data_xz)]))
    return path


#: Runs a command and prints its exit status and peak RSS (KiB). A child forked from the test
#: process would report the test process's own peak: Linux folds the pre-exec address space's
#: high-water mark into ru_maxrss (exec_mmap), and pytest may hold 140 MiB by then. Forked from
#: this small interpreter instead, the build's number is its own (plus a few MiB at most).
def build_measured(tmp_path: Path, deb: Path, cache_dir: Path, limits: dict | None = None
                   ) -> tuple[int, str, int]:
    """(exit status, stderr, peak RSS in bytes) of ``build`` run as a child process."""
    recipe = write_recipe_dict(tmp_path / "r", recipe_dict("evil", target={"id": "debian"},
                                                           sources=[{"deb": deb}], limits=limits))
    err = tmp_path / "stderr"
    with open(err, "wb") as stderr:
        code, rss_kib, _ = run_measured(
            cli_argv("build", recipe, "-o", tmp_path / "out", "--cache-dir", cache_dir),
            cwd=REPO, env=cli_env(), stderr=stderr, timeout=600)
    return code, err.read_text(), rss_kib * 1024


def assert_refused(code: int, stderr: str, rss: int, expected: str, out: Path) -> None:
    assert code == 2, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[:2000]
    assert expected in errors[0], errors[0]
    assert len(stderr) < 4000, len(stderr)
    assert rss < PEAK_RSS_LIMIT, f"peak RSS {rss >> 20} MiB"
    assert not out.exists() or list(out.iterdir()) == []


def test_pax_header_declaring_2gib_is_refused_in_bounded_memory(tmp_path, cache_dir):
    data = tar_header(b"././@PaxHeader", b"x", 2 << 30) + b"99999 path=" + b"a" * 4000
    deb = deb_with_data(tmp_path / "pax.deb", lzma.compress(data))
    code, stderr, rss = build_measured(tmp_path, deb, cache_dir)
    assert_refused(code, stderr, rss, "pax header at offset 0 declares 2147483648 bytes",
                   tmp_path / "out")
    assert "pax.deb:data.tar.xz" in stderr


@pytest.mark.parametrize("header", [True, False], ids=["in-a-member", "bare"])
def test_xz_bomb_is_refused_in_bounded_memory(tmp_path, cache_dir, header):
    """1 GiB of zeros, in one tar member or bare (the tar ends at the first zero block, and
    what follows the end must be read too): concatenated xz streams of 8 MiB each."""
    zeros = lzma.compress(bytes(8 << 20), preset=1)
    bomb = (lzma.compress(tar_header(b"./usr/share/zeros", b"0", 1 << 30)) if header else b"") \
        + zeros * 128
    deb = deb_with_data(tmp_path / "bomb.deb", bomb)
    assert len(bomb) < 1 << 20
    code, stderr, rss = build_measured(tmp_path, deb, cache_dir)
    assert_refused(code, stderr, rss, "expands more than 1000 times", tmp_path / "out")
    assert "bomb.deb:data.tar.xz" in stderr and "limits.compression_ratio" in stderr


def test_unpacked_budget_from_the_recipe(tmp_path, cache_dir):
    payload = os.urandom(3 << 20)  # incompressible: the ratio is ~1, the budget decides
    deb = deb_with_data(tmp_path / "big.deb", lzma.compress(_tar([(info("./usr/share/r"),
                                                                   payload)]), preset=0))
    code, stderr, rss = build_measured(tmp_path, deb, cache_dir, {"unpacked": "1M"})
    assert_refused(code, stderr, rss, "unpack to more than 1048576 bytes", tmp_path / "out")
    code, stderr, _ = build_measured(tmp_path, deb, cache_dir, {"unpacked": "8M"})
    assert code == 0, stderr


@pytest.mark.parametrize("typeflag, what", [(b"L", "GNU long name"), (b"K", "GNU long link")])
def test_gnu_long_names_are_capped_before_reading(typeflag, what):
    data = tar_header(b"././@LongLink", typeflag, 256 << 20)
    with pytest.raises(InputError, match=f"{what}.* of 268435456 bytes \\(limit 4096\\)"):
        list(tar_entries(io.BytesIO(data), "t.tar"))


def test_names_longer_than_path_max_are_refused():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        tf.addfile(tarfile.TarInfo("./usr/" + "d/" * 2100 + "f"), io.BytesIO(b""))
    with pytest.raises(InputError, match="name of 4207 bytes \\(limit 4096\\)") as err:
        list(tar_entries(io.BytesIO(buf.getvalue()), "t.tar"))
    assert len(err.value.line()) < 400


def test_bad_checksum_in_the_middle_is_an_error():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name in ("a", "b", "c"):
            tf.addfile(tarfile.TarInfo(name), io.BytesIO(b""))
    data = bytearray(buf.getvalue())
    data[512 + 10] ^= 0x01  # in the name of member "b"
    entries = tar_entries(io.BytesIO(bytes(data)), "p.deb:data.tar")
    assert next(entries).path == "a"
    with pytest.raises(InputError, match="tar header at offset 512 has a bad checksum"):
        next(entries)


def test_members_after_a_lone_zero_block_are_not_lost_silently():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        tf.addfile(tarfile.TarInfo("a"), io.BytesIO(b""))
    hidden = tar_header(b"hidden", b"0", 0)
    data = buf.getvalue()[:512] + bytes(512) + hidden + bytes(1024)
    with pytest.raises(InputError, match="data after the end-of-archive block at offset 512"):
        list(tar_entries(io.BytesIO(data), "t.tar"))


def test_non_file_with_data_and_unsupported_types_are_named():
    data = tar_header(b"./usr/dir", b"5", 10) + bytes(512) + bytes(1024)
    with pytest.raises(InputError, match=r"t.tar:./usr/dir: a dir entry with 10 data bytes"):
        list(tar_entries(io.BytesIO(data), "t.tar"))
    data = tar_header(b"./usr/sparse", b"S", 0) + bytes(1024)
    with pytest.raises(InputError, match="unsupported tar member type: GNU sparse file"):
        list(tar_entries(io.BytesIO(data), "t.tar"))


def test_shown_escapes_and_truncates():
    assert shown("a\nb\x00c\udce9\u202ed\\") == "a\\nb\\x00c\\xe9\\u202ed\\\\"
    long = shown("x" * 10_000)
    assert len(long) < 200 and long.endswith("…(10000 chars)")


def test_hostile_name_is_escaped_and_cut_in_the_error(tmp_path, cache_dir):
    """An absolute name of 4000 bytes with newlines: one short error line."""
    name = "/" + "\n\x1b[31m" * 500
    deb = deb_with_data(tmp_path / "n.deb", lzma.compress(_tar([(info(name), b"x")])))
    code, stderr, rss = build_measured(tmp_path, deb, cache_dir)
    assert_refused(code, stderr, rss, "absolute path", tmp_path / "out")
    assert "\x1b" not in stderr and "\\n\\x1b[31m" in stderr


def test_rpm_header_value_counts_are_capped(tmp_path):
    """A header may not list more values than any real package (it would cost memory)."""
    from test_formats_rpm import header_blob

    from pipeline.formats.rpm import MAX_COUNT, rpm_info

    n = MAX_COUNT + 1
    main = header_blob({1000: (6, "big"), 1001: (6, "1"), 1002: (6, "1"), 1022: (6, "x86_64"),
                        1116: (4, (0,) * n), 1117: (8, ("f",) * n), 1118: (8, ("/usr/",))})
    rpm = tmp_path / "many.rpm"
    rpm.write_bytes(b"\xed\xab\xee\xdb\x03\x00\x00\x00" + b"\0" * 88 + header_blob({}) + main)
    with pytest.raises(InputError, match=f"many.rpm:header:tag 111[67]: absurd value count {n}"):
        rpm_info(rpm)


@pytest.mark.parametrize("typeflag", [b"x", b"g"])
def test_many_pax_headers_add_up_to_the_same_cap(typeflag):
    """Many small pax headers (distinct keys) before one member cost no more than one big one."""
    def pax_header(i: int) -> bytes:
        record = b"user.k%07d=" % i + b"v" * 60000 + b"\n"
        record = b"%d " % (len(record) + 6) + record
        body = record + bytes(-len(record) % 512)
        return tar_header(b"././@PaxHeader", typeflag, len(record)) + body

    data = b"".join(pax_header(i) for i in range(40)) + tar_header(b"f", b"0", 0) + bytes(1024)
    with pytest.raises(InputError, match="pax headers at offset .* add up to more than 1048576"):
        list(tar_entries(io.BytesIO(data), "t.tar"))


def test_entry_budget_from_the_recipe(tmp_path, cache_dir):
    """Empty entries cost no bytes but memory: their number is budgeted too."""
    entries = [(info(f"./usr/share/e/{i}"), b"") for i in range(30)]
    deb = deb_with_data(tmp_path / "many.deb", lzma.compress(_tar(entries)))
    code, stderr, rss = build_measured(tmp_path, deb, cache_dir, {"entries": 20})
    assert_refused(code, stderr, rss, "more than 20 entries", tmp_path / "out")
    assert "many.deb:data.tar.xz:./usr/share/e/" in stderr and "limits.entries" in stderr
    code, stderr, _ = build_measured(tmp_path, deb, cache_dir, {"entries": 40})
    assert code == 0, stderr
