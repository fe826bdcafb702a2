"""cpio and tar readers on archives written by GNU cpio and GNU tar, plus hand-made edge cases."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
from pkgfactory import SAMPLE, diff_snapshots, snapshot_dir, snapshot_entries, stage
from prereq import require_root, require_tool

from pipeline.errors import InputError
from pipeline.formats import entry as E
from pipeline.formats.cpio import iter_records, read_cpio
from pipeline.formats.tar import tar_entries


def gnu_cpio(root: Path, fmt: str) -> bytes:
    """Archive ``root`` with GNU cpio (``find . | cpio -o -H fmt``)."""
    names = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
    return subprocess.run(["cpio", "-o", "--quiet", "-H", fmt], cwd=root, input=names,
                          capture_output=True, check=True).stdout


@pytest.fixture(scope="module")
def sample_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    stage(root, SAMPLE)
    return root


@pytest.mark.parametrize("fmt", ["newc", "crc"])
def test_cpio_matches_gnu_cpio_extract(sample_tree, fmt, tmp_path):
    require_tool("cpio", "cpio")
    archive = gnu_cpio(sample_tree, fmt)
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet"], cwd=out, input=archive, check=True)
    got = snapshot_entries(read_cpio(io.BytesIO(archive), "t.cpio"))
    tool = snapshot_dir(out)
    assert diff_snapshots(got, tool, implicit_dirs=True, symlink_mtimes=False) == []
    assert len(got.links) == 2


def test_cpio_hardlink_data_arrives_with_the_last_name(sample_tree):
    # GNU cpio writes size 0 for all names of a link set but the last: the reader must emit
    # the data-carrying name as FILE and the others as HARDLINKs *after* it.
    archive = gnu_cpio(sample_tree, "newc")
    link_set = {"usr/share/sample/data", "usr/share/sample/data-link"}
    records = [(r.name, r.size) for r in iter_records(io.BytesIO(archive), "t")
               if r.name in link_set]
    assert [size > 0 for _, size in records] == [False, True]  # data rides on the last name
    first, last = records[0][0], records[-1][0]
    order = [(e.path, e.kind, e.target) for e in read_cpio(io.BytesIO(archive), "t")]
    assert order.index((last, E.FILE, None)) < order.index((first, E.HARDLINK, last))


def test_cpio_special_files(tmp_path):
    require_root()
    require_tool("cpio", "cpio")
    os.mknod(tmp_path / "null", 0o20640, os.makedev(1, 3))
    os.mknod(tmp_path / "loop", 0o60600, os.makedev(7, 0))
    os.mkfifo(tmp_path / "fifo", 0o600)
    entries = {e.path: e for e in read_cpio(io.BytesIO(gnu_cpio(tmp_path, "newc")), "t")}
    assert (entries["null"].kind, entries["null"].rdev, entries["null"].mode) == \
           (E.CHARDEV, (1, 3), 0o640)
    assert (entries["loop"].kind, entries["loop"].rdev) == (E.BLOCKDEV, (7, 0))
    assert entries["fifo"].kind == E.FIFO


def newc(name: str, mode: int, data: bytes = b"", *, ino: int = 1, nlink: int = 1,
         namesize: int | None = None, magic: bytes = b"070701") -> bytes:
    """One hand-made newc record (header, padded name, padded data)."""
    name_b = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0,
              len(name_b) if namesize is None else namesize, 0]
    head = magic + b"".join(b"%08x" % f for f in fields) + name_b
    head += b"\0" * (-len(head) % 4)
    return head + data + b"\0" * (-len(data) % 4)


TRAILER = newc("TRAILER!!!", 0)


def test_cpio_link_set_without_data_in_archive():
    # nlink counts a name outside the archive: the lone data-less name is still an (empty) FILE.
    archive = newc("a", 0o100644, nlink=2, ino=7) + TRAILER
    entries = read_cpio(io.BytesIO(archive), "t")
    entry = next(entries)
    assert (entry.kind, entry.size, entry.data.read()) == (E.FILE, 0, b"")
    assert list(entries) == []


def test_cpio_stripped_records():
    body = b"stripped data"
    archive = b"07070X" + b"%08x" % 1 + b"\0\0" + body + b"\0" * (-len(body) % 4) + TRAILER
    records = [(r.index, r.size, r.data.read()) for r in
               iter_records(io.BytesIO(archive), "t", stripped_size=lambda i: len(body))]
    assert records == [(1, len(body), body)]
    with pytest.raises(InputError, match="stripped cpio record outside an RPM payload"):
        list(read_cpio(io.BytesIO(archive), "t"))


@pytest.mark.parametrize("archive, message", [
    (b"070707" + b"0" * 100, "bad cpio magic"),
    (newc("a", 0o100644, b"x", namesize=0x7FFFFFFF), "cpio name of 2147483647 bytes"),
    (b"070701" + b"0000zzzz" + b"0" * 96, "bad hex field"),
    (b"070701" + b"-0000001" + b"0" * 96, "bad hex field"),
    (newc("a", 0o100644, b"data")[:-4], "truncated"),
    (newc("a", 0o100644, b"data"), "truncated cpio header"),  # no trailer
    (newc("a", 0o170644) + TRAILER, "unknown file type"),
])  # fmt: skip
def test_cpio_hostile(archive, message):
    with pytest.raises(InputError, match=message) as err:
        for e in read_cpio(io.BytesIO(archive), "evil.cpio"):
            if e.data:
                e.data.read()
    assert err.value.where.startswith("evil.cpio")


# --- tar ----------------------------------------------------------------------------------------


def test_tar_pax_xattrs_from_gnu_tar(tmp_path):
    tar = require_tool("tar", "tar")
    setcap = require_tool("setcap", "libcap2-bin")
    (tmp_path / "ping").write_bytes(b"ping")
    subprocess.run([setcap, "cap_net_raw=ep", str(tmp_path / "ping")], check=True)
    os.setxattr(tmp_path / "ping", "user.note", b"\xffbinary\x00ok")
    archive = subprocess.run([tar, "--xattrs", "--xattrs-include=*", "-cf", "-", "-C",
                              str(tmp_path), "ping"], capture_output=True, check=True).stdout
    entry = next(tar_entries(io.BytesIO(archive), "t.tar"))  # data is valid until advanced
    assert entry.xattrs == {
        "security.capability": os.getxattr(tmp_path / "ping", "security.capability"),
        "user.note": b"\xffbinary\x00ok",
    }
    assert entry.data.read() == b"ping"


def test_tar_kinds_and_devices():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, typ, extra in [("dev/null", tarfile.CHRTYPE, (1, 3)),
                                 ("dev/sda", tarfile.BLKTYPE, (8, 0)),
                                 ("run/fifo", tarfile.FIFOTYPE, None)]:
            info = tarfile.TarInfo(name)
            info.type = typ
            if extra:
                info.devmajor, info.devminor = extra
            tf.addfile(info)
    got = [(e.path, e.kind, e.rdev) for e in tar_entries(io.BytesIO(buf.getvalue()), "t")]
    assert got == [("dev/null", E.CHARDEV, (1, 3)), ("dev/sda", E.BLOCKDEV, (8, 0)),
                   ("run/fifo", E.FIFO, None)]


def test_tar_truncated_member_data():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("big")
        info.size = 100_000
        tf.addfile(info, io.BytesIO(b"a" * info.size))
    with pytest.raises(InputError) as err:
        for e in tar_entries(io.BytesIO(buf.getvalue()[:50_000]), "p.deb:data.tar"):
            e.data.read()
    assert err.value.where.startswith("p.deb:data.tar")
