"""``diff --full`` (issue 16 §8): content changes are listed before paths whose time alone moved,
and "every mtime moved from A to B" is one line, not one per file — two builds with another
SOURCE_DATE_EPOCH and one edited file show the edit first and the epoch once."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli
from verify_helpers import build, extra_file, project

from pipeline.reproduce.diff import compare_trees

A, B = 1700000000, 1700000100


@pytest.fixture(scope="module")
def pair(tmp_path_factory, packages, cache_dir):
    """(image A, image B): B has another epoch and other bytes in one file."""
    root = tmp_path_factory.mktemp("diff-full")
    built = []
    for name, epoch, content in (("a", A, "extra\n"), ("b", B, "other\n")):
        recipe = project(root / name, packages, "squashfs", epoch=epoch,
                         extra=extra_file(content=content))
        built.append(build(recipe, root / name / "out", cache_dir).image)
    return built


def _tree_lines(text: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  tree: "))
    return [line for line in lines[start + 1:] if line.startswith("    ")]


def test_content_first_and_the_epoch_once(pair):
    proc = run_cli("diff", str(pair[0]), str(pair[1]), "--full")
    assert proc.returncode == 3, proc.stderr
    tree = _tree_lines(proc.stdout)
    assert tree[0].startswith("    ~ usr/share/hello/extra.txt: sha256 ")
    assert "mtime" not in tree[0]  # said once, below
    moved = [line for line in tree if "mtime" in line]
    assert len(moved) == 1 and moved[0].startswith(f"    ~ every mtime moved from {A} to {B} (")
    assert tree.index(moved[0]) > 0
    assert not [line for line in tree if line.startswith("    … and")]  # nothing hidden


def test_json_says_the_move_and_lists_content_first(pair):
    proc = run_cli("diff", str(pair[0]), str(pair[1]), "--full", "--json")
    assert proc.returncode == 3, proc.stderr
    tree = json.loads(proc.stdout)["tree"]
    moved = tree["mtime_moved"]
    assert (moved["from"], moved["to"]) == (A, B)
    assert moved["paths"] == tree["attributes"]["mtime"] == tree["changed"] > 1
    first = tree["paths"]["changed"][0]
    assert first["path"] == "usr/share/hello/extra.txt" and "sha256" in first["attributes"]


def _entry(path: str, mtime: int, sha: str = "0" * 64) -> dict:
    return {"path": path, "type": "file", "mode": "0644", "uid": 0, "gid": 0, "mtime": mtime,
            "size": 1, "sha256": sha}


def test_scattered_mtimes_are_listed_after_the_content():
    """Times that moved in different ways are not folded: each path is listed, after the
    content changes, and what the limit hides is counted."""
    a = [_entry("a", 1), _entry("b", 1), _entry("c", 5), _entry("d", 1)]
    b = [_entry("a", 2), _entry("b", 3), _entry("c", 5, "1" * 64), _entry("d", 4)]
    found = compare_trees(a, b, limit=2)
    assert found.mtime_moved is None
    lines = found.lines()
    assert lines[1] == f"~ c: sha256 {'0' * 12}… → {'1' * 12}…"
    assert lines[2:] == ["~ a: mtime 1 → 2", "~ b: mtime 1 → 3", "… and 1 more (--limit)"]


def test_one_move_is_one_line_even_past_the_limit():
    a = [_entry(f"f{n:03}", 10) for n in range(50)]
    b = [_entry(f"f{n:03}", 20) for n in range(50)]
    b[30] = _entry("f030", 20, "2" * 64)
    found = compare_trees(a, b, limit=3)
    assert found.mtime_moved == (10, 20, 50)
    assert found.lines()[1:] == [f"~ f030: sha256 {'0' * 12}… → {'2' * 12}…",
                                 "~ every mtime moved from 10 to 20 (50 paths)"]
