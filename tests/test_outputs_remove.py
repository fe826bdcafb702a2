"""pipeline.outdir removal: by descriptor, never through a symlink, any depth, read-only
directories included (issue 11 §1)."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.outdir import remove_at, remove_path


def deep_tree(tmp_path: Path, depth: int = 1100) -> tuple[Path, Path]:
    """``tmp_path/tree``, ``depth`` levels deep (deeper than Python's recursion limit), every
    third directory read-only, every 50th level holding a symlink and a symlink in a sibling
    directory to ``tmp_path/outside`` (which holds ``keep``), and a read-only file."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.mkdir("tree", dir_fd=fd)
        cur = os.open("tree", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        for level in range(depth):
            if level % 50 == 0:
                os.symlink(str(outside), "link", dir_fd=cur)
                with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o444, dir_fd=cur), "w") as fh:
                    fh.write("x")
                os.mkdir("sibling", dir_fd=cur)
                sibling = os.open("sibling", os.O_RDONLY | os.O_DIRECTORY, dir_fd=cur)
                os.symlink(str(outside), "x", dir_fd=sibling)
                os.close(sibling)
            os.mkdir("d", dir_fd=cur)
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=cur)
            if level % 3 == 0:
                os.fchmod(cur, 0o555)
            os.close(cur)
            cur = nxt
        os.close(cur)
    finally:
        os.close(fd)
    return tmp_path / "tree", outside


def test_deep_read_only_tree_with_links_out_is_removed_and_nothing_else(tmp_path):
    tree, outside = deep_tree(tmp_path)
    assert remove_path(tree) is True
    assert not os.path.lexists(tree)
    assert (outside / "keep").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside"]


def test_a_symlink_is_removed_itself(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    os.symlink(outside, tmp_path / "link")
    assert remove_path(tmp_path / "link") is True
    assert (outside / "keep").exists() and not os.path.lexists(tmp_path / "link")
    assert remove_path(tmp_path / "missing") is False


def test_names_that_are_not_one_entry_are_refused(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in ("", ".", "..", "a/b", "../x", "/etc"):
            try:
                remove_at(fd, name)
            except ValueError:
                continue
            raise AssertionError(f"{name!r} accepted")
    finally:
        os.close(fd)
    assert Path(tmp_path).exists()
