"""read_rpm / rpm_info against real packages from rpmbuild, checked with rpm, rpm2cpio and cpio."""

from __future__ import annotations

import lzma
import os
import struct
import subprocess
from pathlib import Path

import pytest
from pkgfactory import (
    SAMPLE,
    build_rpm,
    diff_snapshots,
    file,
    snapshot_dir,
    snapshot_entries,
    unpack_rpm,
)
from prereq import require_tool

from pipeline.errors import InputError
from pipeline.formats import entry as E
from pipeline.formats.rpm import CAP_NAMES, read_rpm, rpm_info, vfs_cap_from_text

COMPRESSIONS = ["xz", "zstd", "gzip", "bzip2", "lzma", "none"]
GHOST = "/var/log/sample.log"


@pytest.fixture(scope="session")
def rpms(tmp_path_factory) -> dict[str, Path]:
    require_tool("rpmbuild", "rpm")
    root = tmp_path_factory.mktemp("rpms")
    return {c: build_rpm(root / c, "sample", "1.2", SAMPLE, compression=c) for c in COMPRESSIONS}


@pytest.fixture(scope="session")
def xz_rpm(rpms) -> Path:
    return rpms["xz"]


def rpm_query(path: Path, fmt: str, *args: str) -> str:
    return subprocess.run(["rpm", "-qp", *args, "--qf", fmt, str(path)], capture_output=True,
                          text=True, check=True).stdout


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_payload_compressor_is_what_was_asked(rpms, compression):
    expected = {"none": "(none)"}.get(compression, compression)
    assert rpm_query(rpms[compression], "%{PAYLOADCOMPRESSOR}") in (expected, "identity")


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_matches_rpm2cpio_cpio(rpms, compression, tmp_path):
    require_tool("rpm2cpio", "rpm2cpio")
    require_tool("cpio", "cpio")
    tool = snapshot_dir(unpack_rpm(rpms[compression], tmp_path / "x"))
    got = snapshot_entries(read_rpm(rpms[compression]))
    assert diff_snapshots(got, tool, implicit_dirs=True, symlink_mtimes=False) == []
    assert len(got.links) == 2


def test_metadata_matches_rpm_header_query(xz_rpm):
    fmt = "[%{FILENAMES}\t%{FILEMODES:octal}\t%{FILEUSERNAME}\t%{FILEGROUPNAME}\t" \
          "%{FILEMTIMES}\t%{FILELINKTOS}\t%{FILEFLAGS}\n]"
    expected = {}
    for line in rpm_query(xz_rpm, fmt).splitlines():
        path, mode, user, group, mtime, linkto, flags = line.split("\t")
        if int(flags) & 64:  # %ghost
            continue
        expected["." + path] = (int(mode, 8), user, group, int(mtime), linkto or None)
    kinds = {0o100000: {E.FILE, E.HARDLINK}, 0o040000: {E.DIR}, 0o120000: {E.SYMLINK}}
    got = {}
    for e in read_rpm(xz_rpm):
        mode = expected[e.path][0]
        assert e.kind in kinds[mode & 0o170000], e.path
        target = e.target if e.kind == E.SYMLINK else None
        got[e.path] = (mode & 0o170000 | e.mode, e.uname, e.gname, e.mtime, target)
    assert got == expected
    assert got["./usr/share/sample/nobody"][1:3] == ("nobody", "nogroup")
    assert got["./usr/bin/sample-suid"][0] == 0o104755


def test_ghost_is_listed_but_not_yielded(xz_rpm):
    assert GHOST in rpm_query(xz_rpm, "[%{FILENAMES}\n]").splitlines()
    assert "." + GHOST not in {e.path for e in read_rpm(xz_rpm)}


def test_hardlinks_point_to_an_earlier_file(xz_rpm):
    seen: dict[str, str] = {}
    for e in read_rpm(xz_rpm):
        if e.kind == E.HARDLINK:
            assert seen.get(e.target) == E.FILE, e
        seen[e.path] = e.kind
    assert sum(kind == E.HARDLINK for kind in seen.values()) == 2


def test_file_capability_equals_setcap(xz_rpm, tmp_path):
    setcap = require_tool("setcap", "libcap2-bin")
    caps = dict(line.split("\t") for line in
                subprocess.run(["rpm", "-qp", "--filecaps", str(xz_rpm)], capture_output=True,
                               text=True, check=True).stdout.splitlines())
    assert caps["/usr/bin/sample-ping"] == "cap_net_raw=ep"
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    subprocess.run([setcap, caps["/usr/bin/sample-ping"], str(probe)], check=True)
    entries = {e.path: e for e in read_rpm(xz_rpm)}
    assert entries["./usr/bin/sample-ping"].xattrs == {
        "security.capability": os.getxattr(probe, "security.capability")
    }
    with_caps = {p for p, e in entries.items() if e.xattrs}
    assert with_caps == {"." + p for p, text in caps.items() if text}


@pytest.mark.parametrize("text", [
    "cap_net_raw=ep", "cap_net_admin,cap_net_raw+ep", "cap_sys_admin=p",
    "cap_checkpoint_restore,cap_bpf,cap_chown=eip", "cap_setuid+i cap_kill=p",
    "all=p cap_sys_module-p",
])  # fmt: skip
def test_capability_text_equals_setcap(text, tmp_path):
    setcap = require_tool("setcap", "libcap2-bin")
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    subprocess.run([setcap, text, str(probe)], check=True)
    assert vfs_cap_from_text(text, "t") == os.getxattr(probe, "security.capability")


def test_capability_table_and_errors():
    assert len(CAP_NAMES) == 41 and CAP_NAMES[13] == "net_raw" and CAP_NAMES[40].startswith("check")
    assert vfs_cap_from_text("cap_net_raw=ep", "t") == struct.pack("<5I", 0x02000001, 1 << 13, 0,
                                                                   0, 0)
    assert vfs_cap_from_text("=", "t") is None
    with pytest.raises(InputError, match=r"^x\.rpm:f: unknown capability 'cap_fly'"):
        vfs_cap_from_text("cap_fly=ep", "x.rpm:f")
    with pytest.raises(InputError, match="bad capability text"):
        vfs_cap_from_text("cap_net_raw?ep", "x.rpm:f")


def test_rpm_info_matches_rpm_query(rpms):
    for path in rpms.values():
        info = rpm_info(path)
        assert (info.name, info.version, info.architecture, info.format) == \
               tuple(rpm_query(path, "%{NAME} %{EVR} %{ARCH}").split()) + ("rpm",)
        configs = subprocess.run(["rpm", "-qpc", str(path)], capture_output=True, text=True,
                                 check=True).stdout.split()
        assert info.config_files == tuple(configs) == ("/etc/sample.conf",)


def test_epoch_and_noarch(tmp_path):
    path = build_rpm(tmp_path, "tiny", "2.0", [file("/usr/share/tiny", b"t")], arch="noarch",
                     epoch=3, release="4")
    info = rpm_info(path)
    assert (info.version, info.architecture) == ("3:2.0-4", "noarch")


# --- hostile and broken packages -------------------------------------------------------------


def main_header_offset(data: bytes) -> int:
    """Where the main header starts: after the 96-byte lead and the 8-aligned signature."""
    count, size = struct.unpack(">II", data[96 + 8 : 96 + 16])
    end = 96 + 16 + 16 * count + size
    return end + (-end % 8)


def patch_tag_string(data: bytes, tag: int, new: bytes) -> bytes:
    """Overwrite the string value of ``tag`` in the main header (same length)."""
    start = main_header_offset(data)
    count = struct.unpack(">I", data[start + 8 : start + 12])[0]
    store = start + 16 + 16 * count
    for i in range(count):
        t, _typ, offset, _n = struct.unpack(">IIII", data[start + 16 + 16 * i : start + 32 + 16 * i])
        if t == tag:
            old_end = data.index(b"\0", store + offset)
            assert old_end - (store + offset) == len(new)
            return data[: store + offset] + new + data[old_end:]
    raise AssertionError(f"tag {tag} not found")


def read_all(path: Path) -> None:
    for e in read_rpm(path):
        if e.data:
            e.data.read()


def test_truncated_payload(xz_rpm, tmp_path):
    data = xz_rpm.read_bytes()
    cut = tmp_path / "cut.rpm"
    cut.write_bytes(data[: len(data) - 200])
    with pytest.raises(InputError) as err:
        read_all(cut)
    assert err.value.where.startswith("cut.rpm:payload")


def test_truncated_header(xz_rpm, tmp_path):
    data = xz_rpm.read_bytes()
    cut = tmp_path / "short.rpm"
    cut.write_bytes(data[: main_header_offset(data) + 100])
    with pytest.raises(InputError, match=r"^short\.rpm:header: truncated header"):
        read_all(cut)


def test_bad_lead_magic(xz_rpm, tmp_path):
    bad = tmp_path / "lead.rpm"
    bad.write_bytes(b"\0\0\0\0" + xz_rpm.read_bytes()[4:])
    with pytest.raises(InputError, match=r"^lead\.rpm:lead: not an RPM package"):
        read_all(bad)
    with pytest.raises(InputError, match=r"^lead\.rpm:lead"):
        rpm_info(bad)


def _flip_magic(data: bytearray, start: int) -> None:
    data[start] ^= 0xFF


def _huge_count(data: bytearray, start: int) -> None:
    data[start + 8 : start + 12] = struct.pack(">I", 0x7FFFFFFF)


def _far_offset(data: bytearray, start: int) -> None:
    first_entry = start + 16
    data[first_entry + 8 : first_entry + 12] = struct.pack(">I", 0x00FFFFFF)


@pytest.mark.parametrize("name, damage, match", [
    ("hdr", _flip_magic, r"^hdr\.rpm:header: bad header magic"),
    ("huge", _huge_count, r"^huge\.rpm:header: absurd header size"),
    ("offset", _far_offset, r"^offset\.rpm:header:tag \d+: offset"),
])
def test_damaged_main_header(xz_rpm, tmp_path, name, damage, match):
    """The main header's magic, its entry count, an entry's offset: each named by part."""
    data = bytearray(xz_rpm.read_bytes())
    damage(data, main_header_offset(data))
    bad = tmp_path / f"{name}.rpm"
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError, match=match):
        rpm_info(bad)


def test_unsupported_compressor(xz_rpm, tmp_path):
    bad = tmp_path / "zz.rpm"
    bad.write_bytes(patch_tag_string(xz_rpm.read_bytes(), 1125, b"zz"))
    assert rpm_query(bad, "%{PAYLOADCOMPRESSOR}", "--nosignature", "--nodigest") == "zz"
    # The header changed after it was signed: its SHA256HEADER says so before anything else.
    with pytest.raises(InputError, match=r"^zz\.rpm:header: does not match the signature "
                                         r"header's SHA256HEADER"):
        read_all(bad)
    unsigned = stripped_rpm(tmp_path / "zz2.rpm", [(0, b"hello large"), (1, b"big")],
                            compressor="zz")
    with pytest.raises(InputError, match=r"^zz2\.rpm:payload: unsupported compression 'zz'"):
        read_all(unsigned)


def test_corrupt_payload_magic(xz_rpm, tmp_path):
    data = xz_rpm.read_bytes()
    payload = data.index(b"\xfd7zXZ\x00", main_header_offset(data))
    bad = tmp_path / "pmagic.rpm"
    bad.write_bytes(data[:payload] + b"NOTXZ!" + data[payload + 6 :])
    with pytest.raises(InputError, match=r"^pmagic\.rpm:payload: not a xz stream"):
        read_all(bad)


def test_payload_file_missing_from_header(rpms, tmp_path):
    data = rpms["none"].read_bytes()
    assert data.count(b"./usr/bin/sample-suid\0") == 1
    bad = tmp_path / "extra.rpm"
    bad.write_bytes(data.replace(b"./usr/bin/sample-suid\0", b"./usr/bin/sample-evil\0"))
    with pytest.raises(InputError, match=r"^extra\.rpm:payload:\./usr/bin/sample-evil: payload "
                                         r"file not listed in the header"):
        read_all(bad)


# --- large-file packages: LONGFILESIZES + "stripped" cpio, built by hand -------------------------
# rpmbuild only writes these for files ≥ 4 GiB, too slow for a unit test; the layout follows
# rpm's lib/cpio.c (07070X + 8 hex digits of the file index, then data, 4-byte aligned).


def header_blob(tags: dict[int, tuple[int, object]]) -> bytes:
    """An RPM header structure: (type, value) per tag; types 3/4/5 int arrays, 6 str, 8 str[]."""
    index, store = [], bytearray()
    for tag, (typ, value) in sorted(tags.items()):
        store += b"\0" * (-len(store) % {3: 2, 4: 4, 5: 8}.get(typ, 1))
        offset = len(store)
        if typ == 6:
            data, count = value.encode() + b"\0", 1
        elif typ == 8:
            data, count = b"".join(v.encode() + b"\0" for v in value), len(value)
        else:
            data = struct.pack(f">{len(value)}{' HIQ'[typ - 2]}", *value)
            count = len(value)
        store += data
        index.append(struct.pack(">IIII", tag, typ, offset, count))
    return (b"\x8e\xad\xe8\x01\0\0\0\0" + struct.pack(">II", len(index), len(store))
            + b"".join(index) + bytes(store))


def stripped_rpm(path: Path, payload_files: list[tuple[int, bytes]], compressor: str = "xz"
                 ) -> Path:
    lead = (b"\xed\xab\xee\xdb\x03\x00\x00\x00" + b"\0" * 88)
    main = header_blob({
        1000: (6, "big"), 1001: (6, "1"), 1002: (6, "1"), 1022: (6, "x86_64"),
        1116: (4, (0, 0)), 1117: (8, ("big", "link")), 1118: (8, ("/usr/share/",)),
        1030: (3, (0o100644, 0o120777)), 5008: (5, (11, 3)), 1034: (4, (1234, 5678)),
        1036: (8, ("", "big")), 1039: (8, ("root", "adm")), 1040: (8, ("root", "adm")),
        1124: (6, "cpio"), 1125: (6, compressor),
    })  # fmt: skip
    cpio = bytearray()
    for index, data in payload_files:
        cpio += b"07070X" + b"%08x" % index + b"\0\0" + data
        cpio += b"\0" * (-len(cpio) % 4)
    cpio += b"070701" + b"0" * 8 * 4 + b"00000001" + b"0" * 8 * 6 + b"0000000b" + b"0" * 8
    cpio += b"TRAILER!!!\0" + b"\0" * (-(len(cpio) + 11) % 4)
    path.write_bytes(lead + header_blob({}) + main + lzma.compress(bytes(cpio)))
    return path


def test_stripped_payload_with_long_file_sizes(tmp_path):
    rpm = stripped_rpm(tmp_path / "big.rpm", [(0, b"hello large"), (1, b"big")])
    got = [(e.path, e.kind, e.size, e.mtime, e.uname, e.target,
            e.data.read() if e.data else None) for e in read_rpm(rpm)]
    assert got == [("./usr/share/big", E.FILE, 11, 1234, "root", None, b"hello large"),
                   ("./usr/share/link", E.SYMLINK, 0, 5678, "adm", "big", None)]
    assert rpm_info(rpm).version == "1-1"


def test_stripped_payload_bad_index(tmp_path):
    rpm = stripped_rpm(tmp_path / "idx.rpm", [(7, b"x")])
    with pytest.raises(InputError, match=r"^idx\.rpm:payload: payload refers to file #7"):
        read_all(rpm)
