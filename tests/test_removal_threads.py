"""pipeline.outdir removal by two threads (issue 14: a --force rebuild of a directory image
removes the old tree): the same guarantees as the one-thread walk — never through a symlink,
any depth, read-only directories, the first error raised — and all of it done, every helper
thread stopped and every descriptor closed, when the call returns."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest
from prereq import missing, require_root, require_tool
from recipes_kit import EPOCH, recipe_dict
from test_outputs_remove import deep_tree

from pipeline import outdir
from pipeline.outdir import remove_path


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _left(fds: set[str]) -> tuple[set[str], list[threading.Thread]]:
    """Descriptors opened since ``fds`` was taken and still open, and live removal threads:
    both must be none when a removal returns. (Other threads of the test process may end or
    close files meanwhile, so counts and equal sets would not tell.)"""
    threads = [t for t in threading.enumerate() if t.name == "remove" and t.is_alive()]
    return _fds() - fds, threads


def _wide_tree(root: Path, outside: Path) -> int:
    """Three levels of 6 directories, files and symlinks to ``outside`` (one of them named
    like the directories a walker descends into) everywhere, every third directory
    read-only; the number of entries."""
    count = 0
    level = [root]
    root.mkdir()
    for depth in range(3):
        nxt = []
        for i, parent in enumerate(level):
            for j in range(6):
                sub = parent / f"d{j}"
                sub.mkdir()
                nxt.append(sub)
                (sub / "f").write_text("x")
                os.symlink(outside, sub / "link")
                os.symlink(outside / "keep", sub / "file-link")
                count += 4
            os.symlink(outside, parent / "d6")  # looks like one more subdirectory
            count += 1
            if (depth + i) % 3 == 0:
                parent.chmod(0o555)
        level = nxt
    return count


def test_a_wide_tree_with_links_out_goes_and_nothing_outside_it(tmp_path):
    outside = tmp_path / "outside"
    (outside / "d0").mkdir(parents=True)
    (outside / "keep").write_text("keep")
    assert _wide_tree(tmp_path / "tree", outside) > 1000
    fds = _fds()
    assert remove_path(tmp_path / "tree", threads=2) is True
    assert not os.path.lexists(tmp_path / "tree")
    assert (outside / "keep").read_text() == "keep" and (outside / "d0").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside"]
    assert _left(fds) == (set(), [])


def test_deeper_than_the_descriptor_budget_read_only_and_linked(tmp_path):
    """1,100 levels: past _MAX_OPEN held descriptors the rest goes the one-descriptor way."""
    tree, outside = deep_tree(tmp_path, 1100)
    fds = _fds()
    assert remove_path(tree, threads=2) is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside"]
    assert (outside / "keep").read_text() == "keep"
    assert _left(fds) == (set(), [])


def test_the_first_error_is_raised_after_every_thread_stopped(tmp_path):
    """An entry that cannot be unlinked (immutable): the error is raised, no helper thread or
    descriptor outlives the call, and what could be removed around it may be gone."""
    require_root()
    chattr = require_tool("chattr", "e2fsprogs")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    _wide_tree(tmp_path / "tree", outside)
    for path in (tmp_path / "tree").rglob("*"):  # read-only directories: root ignores it,
        if path.is_dir() and not path.is_symlink():  # chattr does not
            path.chmod(0o755)
    stuck = tmp_path / "tree/d3/d2/d4/f"
    if subprocess.run([chattr, "+i", str(stuck)], capture_output=True).returncode != 0:
        missing("chattr +i is not supported on this file system")
    fds = _fds()
    try:
        with pytest.raises(PermissionError) as info:
            remove_path(tmp_path / "tree", threads=2)
        assert info.value.filename == "f"
        assert _left(fds) == (set(), [])
        assert stuck.exists() and (outside / "keep").read_text() == "keep"
    finally:
        subprocess.run([chattr, "-i", str(stuck)], check=True)
    assert remove_path(tmp_path / "tree", threads=2) is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside"]


def test_a_forced_directory_rebuild_leaves_only_the_new_image(tmp_path, make_recipe):
    """The old tree of a directory image is removed (by outdir.REMOVE_THREADS threads) before
    build() returns: the output directory holds the image and its files, nothing else."""
    require_root()
    from pipeline import recipe as recipe_mod
    from pipeline.sources.fetch import Cache
    from pipeline.stages.build import build

    assert outdir.REMOVE_THREADS >= 2
    files = {f"usr/share/rm/{d}/{f}": {"content": f"{d}{f}\n"} for d in "abcdef"
             for f in "0123456789"}
    spec = recipe_dict("rm", kind="sysext", files=files,
                       target={"id": "debian", "version_id": "12", "architecture": "x86-64"},
                       image={"format": "directory", "source_date_epoch": EPOCH})
    recipe = recipe_mod.load(make_recipe(spec, tmp_path / "r"))
    out, cache = tmp_path / "out", Cache(tmp_path / "cache")
    first = build(recipe, out, cache, offline=True, environ={})
    old = os.stat(out / "rm").st_ino
    second = build(recipe, out, cache, offline=True, environ={}, force=True)
    assert not [t for t in threading.enumerate() if t.name == "remove" and t.is_alive()]
    assert os.stat(out / "rm").st_ino != old  # replaced, not left in place
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["rm", "rm.manifest.json", "rm.spdx.json", "rm.cdx.json", "rm.provenance.json"])
    assert (out / "rm/usr/share/rm/f/9").read_text() == "f9\n"
    assert first.images[0].manifest["image"]["tree_sha256"] == \
        second.images[0].manifest["image"]["tree_sha256"]

