"""Unit tests of the normalize stage (pipeline/stages/normalize.py): which SOURCE_DATE_EPOCH a
build uses, and every time stamp of a real staging tree pinned to it (``set``) or clamped."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from pipeline.errors import InputError
from pipeline.formats import entry as E
from pipeline.stages.normalize import apply_times, choose_epoch
from pipeline.stages.staging import RecordingTree, StagingTree

EPOCH = 1700000000
OLD, NEW = EPOCH - 86400, EPOCH + 86400


@pytest.mark.parametrize("recipe, environ, newest, expected", [
    (1600000000, {"SOURCE_DATE_EPOCH": "1500000000"}, 1400000000, (1600000000, "recipe")),
    (0, {"SOURCE_DATE_EPOCH": "1500000000"}, None, (0, "recipe")),  # 0 is a value, not unset
    (None, {"SOURCE_DATE_EPOCH": "1500000000"}, 1400000000, (1500000000, "environment")),
    (None, {"SOURCE_DATE_EPOCH": ""}, 1400000000, (1400000000, "newest input")),
    (None, {}, 1400000000, (1400000000, "newest input")),
    (None, {}, None, (0, "no input has a time stamp: 1970-01-01")),  # never the clock
])
def test_choose_epoch_order(recipe, environ, newest, expected):
    assert choose_epoch(recipe, environ, newest) == expected


@pytest.mark.parametrize("value", ["yesterday", "-1", "1.5", " 17", str(2**32)])
def test_choose_epoch_refuses_what_is_not_a_unix_time(value):
    with pytest.raises(InputError) as info:
        choose_epoch(None, {"SOURCE_DATE_EPOCH": value}, 1)
    assert info.value.where == "SOURCE_DATE_EPOCH" and repr(value) in info.value.what


def _tree(tmp_path: Path) -> StagingTree:
    tree = StagingTree(tmp_path / "root", owner_ids=False)
    entries = [
        E.Entry(path="usr/share/ro", kind=E.DIR, mode=0o555, mtime=OLD),
        E.Entry(path="usr/share/ro/old", kind=E.FILE, mode=0o644, size=1,
                data=io.BytesIO(b"o"), mtime=OLD),
        E.Entry(path="usr/bin/new", kind=E.FILE, mode=0o755, size=1, data=io.BytesIO(b"n"),
                mtime=NEW),
        E.Entry(path="usr/bin/undated", kind=E.FILE, mode=0o644, size=0, data=io.BytesIO()),
        E.Entry(path="usr/bin/link", kind=E.SYMLINK, mode=0o777, target="new", mtime=OLD),
    ]
    for entry in entries:
        tree.add(entry, entry.path, 0, 0, "pkg")
    return tree


def _on_disk(root: Path) -> dict[str, int]:
    found = {".": int(root.lstat().st_mtime)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            found[str(full.relative_to(root))] = int(full.lstat().st_mtime)
    return found


def _writable(root: Path) -> None:
    for dirpath, dirnames, _ in os.walk(root):
        for name in dirnames:
            os.chmod(Path(dirpath) / name, 0o755)


def test_set_pins_every_time_on_disk_and_in_the_records(tmp_path):
    with _tree(tmp_path) as tree:
        apply_times(tree, EPOCH, "set")
        times = _on_disk(tree.root)
        assert set(times) == {".", *tree.records}
        assert set(times.values()) == {EPOCH}, times
        assert {r.mtime for r in tree.records.values()} == {EPOCH}
        ro = tree.root / "usr/share/ro"
        assert stat.S_IMODE(ro.stat().st_mode) == 0o555  # modes finished before the times
        assert stat.S_IMODE(tree.root.stat().st_mode) == 0o755
        _writable(tree.root)


def test_clamp_keeps_older_times_of_non_directories(tmp_path):
    with _tree(tmp_path) as tree:
        apply_times(tree, EPOCH, "clamp")
        times = _on_disk(tree.root)
        assert times["usr/share/ro/old"] == OLD and times["usr/bin/link"] == OLD
        assert times["usr/bin/new"] == EPOCH  # newer than the epoch: clamped
        assert times["usr/bin/undated"] == EPOCH  # no time in the archive: the epoch
        assert times["usr/share/ro"] == times["usr"] == times["."] == EPOCH  # directories: set
        assert {p: r.mtime for p, r in tree.records.items()} == \
            {p: t for p, t in times.items() if p != "."}
        _writable(tree.root)


def test_a_recording_tree_gets_the_times_and_nothing_is_written(tmp_path):
    tree = RecordingTree()
    tree.add(E.Entry(path="usr/bin/x", kind=E.FILE, mode=0o644, size=1, data=io.BytesIO(b"x"),
                     mtime=OLD), "usr/bin/x", 0, 0, "pkg")
    apply_times(tree, EPOCH, "clamp")
    assert tree.records["usr/bin/x"].mtime == OLD and tree.records["usr"].mtime == EPOCH
    apply_times(tree, EPOCH, "set")
    assert tree.records["usr/bin/x"].mtime == EPOCH
    assert list(tmp_path.iterdir()) == []
