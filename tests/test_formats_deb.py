"""read_deb / deb_info against real packages built by dpkg-deb and unpacked by dpkg-deb -x."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hostile_corpus import ar, ar_split
from pkgfactory import SAMPLE, build_deb, diff_snapshots, snapshot_dir, snapshot_entries, unpack_deb
from prereq import require_tool

from pipeline.errors import InputError
from pipeline.formats import entry as E
from pipeline.formats.deb import deb_info, read_deb

COMPRESSIONS = ["xz", "zstd", "gzip", "none"]
MEMBER = {"xz": "data.tar.xz", "zstd": "data.tar.zst", "gzip": "data.tar.gz", "none": "data.tar"}


@pytest.fixture(scope="session")
def debs(tmp_path_factory) -> dict[str, Path]:
    require_tool("dpkg-deb", "dpkg")
    root = tmp_path_factory.mktemp("debs")
    return {
        c: build_deb(root / c, "sample", "1.2-3", SAMPLE, compression=c, depends="libc6")
        for c in COMPRESSIONS
    }


@pytest.fixture(scope="session")
def xz_deb(debs) -> Path:
    return debs["xz"]


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_matches_dpkg_deb_x(debs, compression, tmp_path):
    tool = snapshot_dir(unpack_deb(debs[compression], tmp_path / "x"))
    got = snapshot_entries(read_deb(debs[compression]))
    assert diff_snapshots(got, tool) == []
    assert len(tool.links) == 2  # the sample's two hard link pairs really are there


def test_entry_details(xz_deb):
    entries = {e.path: e for e in read_deb(xz_deb)}
    suid = entries["./usr/bin/sample-suid"]
    assert (suid.kind, suid.mode, suid.uname, suid.uid) == (E.FILE, 0o4755, "root", 0)
    assert suid.member == f"{xz_deb.name}:data.tar.xz:./usr/bin/sample-suid"
    link = entries["./usr/share/sample/data-link"]
    assert (link.kind, link.target, link.data) == (E.HARDLINK, "./usr/share/sample/data", None)
    assert entries["./usr/bin/sample-link"].target == "sample"
    assert entries["./usr/share/sample/abs-link"].target == "/usr/bin/sample"
    assert entries["./usr/share/sample"].mode == 0o750
    assert "./var/log/sample.log" not in entries  # ghosts are an rpm notion


def test_partly_read_data_does_not_desynchronize(xz_deb):
    # The staging writer may stop reading a file early (e.g. on an error it reports later):
    # the reader must skip the rest itself and still yield every following entry intact.
    full = snapshot_entries(read_deb(xz_deb))
    seen = []
    for e in read_deb(xz_deb):
        seen.append(e.path.removeprefix("./").removeprefix("."))
        if e.data is not None:
            e.data.read(1)
    assert sorted(seen) == sorted(full.nodes)


def test_deb_info_matches_dpkg_deb_field(debs):
    for deb in debs.values():
        info = deb_info(deb)
        fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version", "Architecture"],
                                capture_output=True, text=True, check=True).stdout
        assert f"Package: {info.name}\nVersion: {info.version}\n" \
               f"Architecture: {info.architecture}\n" == fields
        assert (info.name, info.version, info.architecture, info.format) == \
               ("sample", "1.2-3", "amd64", "deb")
        assert info.config_files == ("/etc/sample.conf",)


# --- hostile and broken packages -------------------------------------------------------------


def test_truncated_payload(xz_deb, tmp_path):
    broken = tmp_path / "cut.deb"
    data = xz_deb.read_bytes()
    broken.write_bytes(data[: len(data) - 300])
    with pytest.raises(InputError) as err:
        for e in read_deb(broken):
            if e.data:
                e.data.read()
    assert err.value.where.startswith("cut.deb:data.tar.xz")


def test_not_an_ar_archive(tmp_path):
    bad = tmp_path / "bad.deb"
    bad.write_bytes(b"!<arch>X" + b"\0" * 100)
    with pytest.raises(InputError, match=r"^bad\.deb: not an ar archive"):
        list(read_deb(bad))


def test_future_format_version(xz_deb, tmp_path):
    members = ar_split(xz_deb)
    assert members[0] == ("debian-binary", b"2.0\n")
    bad = tmp_path / "v3.deb"
    bad.write_bytes(ar([("debian-binary", b"3.0\n"), *members[1:]]))
    with pytest.raises(InputError, match=r"^v3\.deb:debian-binary: unsupported format version"):
        list(read_deb(bad))
    with pytest.raises(InputError):
        deb_info(bad)


def test_unsupported_data_compression(xz_deb, tmp_path):
    members = ar_split(xz_deb)
    bad = tmp_path / "lz4.deb"
    bad.write_bytes(ar([*members[:2], ("data.tar.lz4", members[2][1])]))
    with pytest.raises(InputError, match=r"^lz4\.deb:data\.tar\.lz4: unsupported compression"):
        list(read_deb(bad))


def test_missing_data_member(xz_deb, tmp_path):
    bad = tmp_path / "nodata.deb"
    bad.write_bytes(ar(ar_split(xz_deb)[:2]))
    with pytest.raises(InputError, match=r"^nodata\.deb: no data\.tar member"):
        list(read_deb(bad))


def test_data_member_with_wrong_magic(xz_deb, tmp_path):
    members = ar_split(xz_deb)
    bad = tmp_path / "magic.deb"
    bad.write_bytes(ar([*members[:2], ("data.tar.xz", b"XXXXXX" + members[2][1][6:])]))
    with pytest.raises(InputError, match=r"^magic\.deb:data\.tar\.xz: not a xz stream"):
        list(read_deb(bad))


def test_corrupt_compressed_data(xz_deb, tmp_path):
    members = ar_split(xz_deb)
    body = bytearray(members[2][1])
    body[len(body) // 2] ^= 0xFF
    bad = tmp_path / "flip.deb"
    bad.write_bytes(ar([*members[:2], ("data.tar.xz", bytes(body))]))
    with pytest.raises(InputError) as err:
        for e in read_deb(bad):
            if e.data:
                e.data.read()
    assert err.value.where.startswith("flip.deb:data.tar.xz")


def test_garbage_in_uncompressed_tar(debs, tmp_path):
    members = ar_split(debs["none"])
    bad = tmp_path / "garbage.deb"
    bad.write_bytes(ar([*members[:2], ("data.tar", b"\x01" * 2048)]))
    with pytest.raises(InputError, match=r"^garbage\.deb:data\.tar: "):
        list(read_deb(bad))
