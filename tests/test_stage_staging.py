"""Unit tests of the staging stage (pipeline/stages/staging.py): the one writer of the staging
root and its recording twin, on real directories, with hand-made archive entries."""

from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path

import pytest

from pipeline.errors import InputError
from pipeline.formats import entry as E
from pipeline.stages.staging import (
    MAX_ID,
    NAME_MAX,
    RecordingTree,
    StagingTree,
    canonical_path,
)


def f(path: str, content: bytes = b"data\n", mode: int = 0o644, **kw) -> E.Entry:
    return E.Entry(path=path, kind=E.FILE, mode=mode, size=kw.pop("size", len(content)),
                   data=io.BytesIO(content), member=kw.pop("member", path), **kw)


def d(path: str, mode: int = 0o755) -> E.Entry:
    return E.Entry(path=path, kind=E.DIR, mode=mode, member=path)


def ln(path: str, target: str, kind: str = E.SYMLINK) -> E.Entry:
    return E.Entry(path=path, kind=kind, mode=0o777, target=target, member=path)


def staged(tmp_path: Path, *entries: E.Entry, uid: int = 0, gid: int = 0) -> StagingTree:
    tree = StagingTree(tmp_path / "root", owner_ids=False)
    for entry in entries:
        tree.add(entry, canonical_path(entry.path, entry.member), uid, gid, "pkg")
    return tree


def refused(tmp_path: Path, *entries: E.Entry, uid: int = 0) -> InputError:
    with pytest.raises(InputError) as info, staged(tmp_path, *entries, uid=uid):
        pass
    return info.value


# --- canonical_path ---------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("./usr/bin/x", "usr/bin/x"),
    ("usr//share/./doc", "usr/share/doc"),
    ("lib/x86_64-linux-gnu/libz.so.1", "usr/lib/x86_64-linux-gnu/libz.so.1"),
    ("bin", "usr/bin"),
    ("sbin/init", "usr/sbin/init"),
    ("libexec/x", "libexec/x"),  # not a merged-/usr directory
    ("./", ""),
])
def test_canonical_path(raw, expected):
    assert canonical_path(raw, "m") == expected


@pytest.mark.parametrize("raw, words", [
    ("/etc/passwd", "absolute path"),
    ("usr/../../etc/passwd", "'..'"),
    ("usr/bin/a\nb", "control characters"),
    ("usr/bin/\udcff", "not UTF-8"),
    ("usr/" + "n" * (NAME_MAX + 1), f"limit {NAME_MAX}"),
    ("usr/" + "a/" * 2100, "limit 4096"),
])
def test_canonical_path_refuses_naming_the_member(raw, words):
    with pytest.raises(InputError) as info:
        canonical_path(raw, "pkg.deb: data.tar member 7")
    assert info.value.where == "pkg.deb: data.tar member 7"
    assert words in info.value.what


# --- StagingTree: what reaches the disk -------------------------------------------------------

def test_files_dirs_links_reach_disk_as_recorded(tmp_path):
    content = b"#!/bin/sh\necho hi\n"
    with staged(tmp_path, d("./usr/"), f("./usr/bin/hi", content, 0o4755),
                ln("./usr/bin/hi-link", "hi"), ln("./usr/bin/hi-hard", "./usr/bin/hi", E.HARDLINK),
                f("./etc/hi.conf", b"x=1\n", 0o600)) as tree:
        root = tree.root
        records = tree.records
    hi = root / "usr/bin/hi"
    assert hi.read_bytes() == content
    assert stat.S_IMODE(hi.stat().st_mode) == 0o4755
    assert records["usr/bin/hi"].sha256 == hashlib.sha256(content).hexdigest()
    assert records["usr/bin/hi"].size == len(content)
    assert os.readlink(root / "usr/bin/hi-link") == "hi"
    assert records["usr/bin/hi-link"].mode == 0o777 and records["usr/bin/hi-link"].size == 2
    assert (root / "usr/bin/hi-hard").stat().st_ino == hi.stat().st_ino
    assert records["usr/bin/hi-hard"] is records["usr/bin/hi"]  # one inode, one record
    assert stat.S_IMODE((root / "etc/hi.conf").stat().st_mode) == 0o600
    # parents nobody listed are implied, 0755
    assert records["etc"].kind == E.DIR and records["etc"].origin == "(implied)"
    assert stat.S_IMODE(root.stat().st_mode) == 0o755


def test_a_read_only_directory_is_filled_first_and_closed_last(tmp_path):
    with staged(tmp_path, d("usr/share/ro", 0o555), f("usr/share/ro/inside")) as tree:
        ro = tree.root / "usr/share/ro"
        assert (ro / "inside").read_bytes() == b"data\n"
        assert stat.S_IMODE(ro.stat().st_mode) == 0o755  # still writable while staging
        tree.finish_modes()
        assert stat.S_IMODE(ro.stat().st_mode) == 0o555
        os.chmod(ro, 0o755)  # let tmp_path be cleaned by a non-root run too


def test_a_later_file_replaces_an_earlier_one_and_says_so(tmp_path):
    with staged(tmp_path, f("usr/bin/x", b"first\n"), f("usr/bin/x", b"second\n")) as tree:
        assert (tree.root / "usr/bin/x").read_bytes() == b"second\n"
        assert tree.replaced == ["usr/bin/x"]
        assert tree.records["usr/bin/x"].sha256 == hashlib.sha256(b"second\n").hexdigest()


def test_add_bytes_and_set_mtime(tmp_path):
    with staged(tmp_path) as tree:
        tree.add_bytes("usr/lib/extension-release.d/extension-release.x", b"ID=_any\n", 0o644,
                       "(recipe)")
        tree.set_mtime("usr/lib/extension-release.d/extension-release.x", 1234567)
        path = tree.root / "usr/lib/extension-release.d/extension-release.x"
        assert path.read_bytes() == b"ID=_any\n" and path.stat().st_mtime == 1234567
        with tree.open_data("usr/lib/extension-release.d/extension-release.x") as data:
            assert data.read() == b"ID=_any\n"


def test_the_staging_root_must_be_new(tmp_path):
    (tmp_path / "root").mkdir()
    with pytest.raises(FileExistsError):
        StagingTree(tmp_path / "root", owner_ids=False)


# --- StagingTree: what is refused, and that nothing leaks out ---------------------------------

def test_writing_through_a_symlink_is_refused_and_nothing_lands_outside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    error = refused(tmp_path, ln("usr/lib/evil", str(outside)), f("usr/lib/evil/planted"))
    assert error.where == "usr/lib/evil/planted" and "symlink" in error.what
    assert list(outside.iterdir()) == []


def test_a_symlink_planted_on_disk_is_refused_by_the_file_system_too(tmp_path):
    """The records say nothing about a link someone else made in the tree: O_NOFOLLOW does."""
    outside = tmp_path / "outside"
    outside.mkdir()
    with staged(tmp_path, d("usr")) as tree:
        os.symlink(outside, tree.root / "usr/sneaky")
        with pytest.raises(InputError) as info:
            tree.add(f("usr/sneaky/planted"), "usr/sneaky/planted", 0, 0, "pkg")
    assert "would write through a link" in info.value.what
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("entries, words", [
    ((E.Entry(path="dev/sda", kind=E.BLOCKDEV, mode=0o600, member="dev/sda"),), "device node"),
    ((E.Entry(path="dev/tty", kind=E.CHARDEV, mode=0o600, member="dev/tty"),), "device node"),
    ((E.Entry(path="run/fifo", kind=E.FIFO, mode=0o600, member="run/fifo"),), "unsupported"),
    ((ln("usr/bin/h", "usr/bin/nothing", E.HARDLINK),), "not a file extracted before"),
    ((d("usr/bin/h"), ln("usr/bin/g", "usr/bin/h", E.HARDLINK)), "not a file extracted before"),
    ((ln("usr/bin/empty", ""),), "symlink without a target"),
    ((ln("usr/bin/ctl", "a\x1bb"),), "control characters"),
    ((ln("usr/bin/long", "x" * 4096),), "symlink target of 4096"),
    ((d("usr/bin/x"), f("usr/bin/x")), "is a directory in an earlier entry"),
    ((f("usr/bin/x"), d("usr/bin/x")), "is a file in an earlier entry"),
    ((f("usr/bin/x"), f("usr/bin/x/y")), "would write through the file"),
    ((f("usr/bin/t", b"short", size=10),), "truncated: 5 of 10 bytes missing"),
    ((f("usr/bin/t", xattrs={"trusted.overlay.opaque": b"y"}),), "trusted.overlay.opaque"),
    ((f("usr/bin/t", xattrs={"security.selinux": b"x"}),), "security.selinux"),
    ((f("usr/bin/t", xattrs={"security.capability": b"\x01\x02"}),), "malformed"),
    ((f("usr/bin/t"), ln("usr/bin/l", "t")), None),  # a control: this one is fine
])
def test_refusals_name_the_member(tmp_path, entries, words):
    if words is None:
        with staged(tmp_path, *entries) as tree:
            assert set(tree.records) >= {e.path for e in entries}
        return
    error = refused(tmp_path, *entries)
    assert error.where == entries[-1].member
    assert words in error.what or words in (error.hint or ""), error.line()


def test_owner_ids_out_of_range_are_refused(tmp_path):
    error = refused(tmp_path, f("usr/bin/x"), uid=MAX_ID + 1)
    assert f"uid {MAX_ID + 1} is out of range" in error.what


def test_other_extended_attributes_are_dropped_and_listed(tmp_path):
    with staged(tmp_path, f("usr/bin/t", xattrs={"user.comment": b"hi"})) as tree:
        assert tree.records["usr/bin/t"].xattrs == {}
        assert tree.dropped_xattrs == ["usr/bin/t: user.comment"]
        assert "user.comment" not in os.listxattr(tree.root / "usr/bin/t")


# --- RecordingTree: plan's twin refuses the same and writes nothing ---------------------------

GOOD = (d("usr/share/ro", 0o555), f("usr/bin/a", b"aaa"), ln("usr/bin/b", "a"),
        ln("usr/bin/c", "usr/bin/a", E.HARDLINK), f("usr/bin/a", b"again"))


def _fresh(entries):
    """Entries with unread data (each tree reads its own copy)."""
    out = []
    for e in entries:
        data = io.BytesIO(e.data.getvalue()) if e.data is not None else None
        out.append(E.Entry(path=e.path, kind=e.kind, mode=e.mode, size=e.size, target=e.target,
                           xattrs=dict(e.xattrs), data=data, member=e.member))
    return out


def test_recording_tree_records_what_the_staging_tree_writes(tmp_path):
    recording = RecordingTree()
    for entry in _fresh(GOOD):
        recording.add(entry, canonical_path(entry.path, entry.member), 0, 0, "pkg")
    with staged(tmp_path, *_fresh(GOOD)) as real:
        assert recording.records.keys() == real.records.keys()
        for path, record in real.records.items():
            assert recording.records[path] == record, path
        assert recording.replaced == real.replaced == ["usr/bin/a"]
    assert recording.root is None


@pytest.mark.parametrize("bad", [
    (ln("usr/lib/evil", "/"), f("usr/lib/evil/x")),
    (E.Entry(path="dev/sda", kind=E.BLOCKDEV, mode=0o600, member="dev/sda"),),
    (f("usr/bin/t", xattrs={"trusted.overlay.opaque": b"y"}),),
])
def test_recording_tree_refuses_what_the_staging_tree_refuses(tmp_path, bad):
    recording = RecordingTree()
    with pytest.raises(InputError) as planned:
        for entry in _fresh(bad):
            recording.add(entry, canonical_path(entry.path, entry.member), 0, 0, "pkg")
    built = refused(tmp_path, *_fresh(bad))
    assert planned.value.line() == built.line()
