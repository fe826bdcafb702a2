"""Retiring an image the recipe no longer makes removes only names this recipe can make,
inside the output directory, never through a symlink (issue 11 §1)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pkgfactory import build_deb, file
from recipes_kit import EPOCH, CliResult, build_cli, recipe_dict, write_recipe_dict


def _recipe(tmp_path: Path, cache_dir: Path) -> tuple[Path, Path]:
    deb = build_deb(tmp_path / "pkg", "tiny", "1.0", [file("/usr/bin/tiny", b"tiny\n", 0o755)])
    recipe = write_recipe_dict(tmp_path / "recipe", recipe_dict(
        "t", kind="sysext", sources=[deb], image={"format": "directory",
                                                  "source_date_epoch": EPOCH}))
    return recipe, cache_dir


def _build(recipe: Path, out: Path, cache_dir: Path) -> CliResult:
    return build_cli(recipe, out, cache_dir=cache_dir, json_out=False, expect=None)


def _published(out: Path) -> list[str]:
    """The output directory's entries, without the files every image has next to it."""
    from pipeline.stages.build import COMPANION_SUFFIXES

    return sorted(p.name for p in out.iterdir()
                  if p.name not in {f"t{suffix}" for suffix in COMPANION_SUFFIXES})


def _plant(out: Path, companions) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "t.manifest.json").write_text(json.dumps({"companions": companions}))


@pytest.mark.parametrize("companion", ["..", ".", "", "../x", "x/..", "/ABS", "other",
                                       "t-config/../..", 7, None])
def test_hostile_companion_names_remove_nothing(tmp_path, cache_dir, companion):
    recipe, cache = _recipe(tmp_path, cache_dir)
    parent = tmp_path / "parent"
    out = parent / "out"
    sentinel = parent / "sentinel"
    (parent / "x").mkdir(parents=True)
    (parent / "x" / "inside").write_text("keep")
    sentinel.write_text("keep")
    other = out / "other.raw"
    out.mkdir()
    other.write_text("another recipe's image")
    if companion == "/ABS":
        companion = str(parent)
    _plant(out, [companion])
    proc = _build(recipe, out, cache)
    assert proc.returncode == 0, proc.stderr
    assert sentinel.read_text() == "keep"
    assert (parent / "x" / "inside").read_text() == "keep"
    assert other.read_text() == "another recipe's image"
    assert (out / "t" / "usr/bin/tiny").read_bytes() == b"tiny\n"
    if companion != "t":  # naming the image being built retires nothing and says nothing
        assert "nothing removed" in proc.stderr
        assert "is not an image recipe 't' makes" in proc.stderr


def test_symlinked_companion_entries_are_unlinked_not_followed(tmp_path, cache_dir):
    recipe, cache = _recipe(tmp_path, cache_dir)
    parent = tmp_path / "parent"
    out = parent / "out"
    outside_dir = parent / "outside-dir"
    outside_dir.mkdir(parents=True)
    (outside_dir / "precious").write_text("keep")
    outside_file = parent / "outside-file"
    outside_file.write_text("keep")
    out.mkdir()
    os.symlink(outside_dir, out / "t-config")  # a directory image name → a directory outside
    os.symlink(outside_file, out / "t-config.raw")
    os.symlink(outside_file, out / "t-config.verity")
    (out / "t-config.manifest.json").write_text("{}")
    _plant(out, ["t-config"])
    proc = _build(recipe, out, cache)
    assert proc.returncode == 0, proc.stderr
    assert (outside_dir / "precious").read_text() == "keep"
    assert outside_file.read_text() == "keep"
    for name in ("t-config", "t-config.raw", "t-config.verity", "t-config.manifest.json"):
        assert not os.path.lexists(out / name), name
    assert "nothing removed" not in proc.stderr


def test_real_companion_is_retired(tmp_path, cache_dir):
    """The legitimate case still works: an old NAME-config directory image with a read-only
    subdirectory is removed with its manifest."""
    recipe, cache = _recipe(tmp_path, cache_dir)
    out = tmp_path / "out"
    old = out / "t-config" / "etc" / "ro"
    old.mkdir(parents=True)
    (old / "f").write_text("old")
    old.chmod(0o555)
    (out / "t-config.manifest.json").write_text("{}")
    _plant(out, ["t-config"])
    proc = _build(recipe, out, cache)
    assert proc.returncode == 0, proc.stderr
    assert not os.path.lexists(out / "t-config")
    assert not os.path.lexists(out / "t-config.manifest.json")
    assert _published(out) == ["t", "t.manifest.json"]


@pytest.mark.parametrize("kind", ["fifo", "zero-link", "directory"])
def test_unreadable_old_manifest_neither_hangs_nor_is_followed(tmp_path, cache_dir, kind):
    """An old NAME.manifest.json that is a FIFO, a symlink to /dev/zero or a directory: read
    neither blocking nor through the link; the build replaces it."""
    recipe, cache = _recipe(tmp_path, cache_dir)
    out = tmp_path / "out"
    out.mkdir()
    old = out / "t.manifest.json"
    if kind == "fifo":
        os.mkfifo(old)
    elif kind == "zero-link":
        os.symlink("/dev/zero", old)
    else:
        (old / "inside").mkdir(parents=True)
    build_cli(recipe, out, cache_dir=cache, json_out=False)
    assert json.loads(old.read_text())["name"] == "t"
    assert _published(out) == ["t", "t.manifest.json"]
