"""Up to date (issue 14 target 3): a rebuild with the recorded inputs and intact outputs is
skipped without touching the image; any change, a damaged output or --force rebuilds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import run_cli
from prereq import require_tool
from recipes_kit import build_cli, write_recipe_dict
from test_build import hello_spec


def _build(recipe: Path, out: Path, cache_dir, *extra: str, env=None) -> dict:
    return build_cli(recipe, out, *extra, cache_dir=cache_dir, env=env).json


@pytest.fixture
def built(tmp_path, packages, cache_dir):
    require_tool("mksquashfs", "squashfs-tools")
    recipe = write_recipe_dict(tmp_path / "recipe", hello_spec(packages, "squashfs"))
    out = tmp_path / "out"
    first = _build(recipe, out, cache_dir)
    assert first["up_to_date"] is False
    image = Path(first["images"][0]["image"])
    manifest = json.loads(Path(first["images"][0]["manifest"]).read_text())
    return recipe, out, image, manifest


def test_same_inputs_are_up_to_date_and_the_image_is_untouched(built, cache_dir):
    recipe, out, image, manifest = built
    assert len(manifest["input_digest"]) == 64
    before = image.stat()
    proc = run_cli("build", str(recipe), "-o", str(out), "--cache-dir", str(cache_dir))
    assert proc.returncode == 0, proc.stderr
    assert "up to date" in proc.stderr
    after = image.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    again = _build(recipe, out, cache_dir)
    assert again["up_to_date"] is True
    assert again["images"][0]["sha256"] == manifest["image"]["sha256"]


def test_force_rebuilds_the_same_bytes(built, cache_dir):
    recipe, out, image, manifest = built
    inode = image.stat().st_ino
    result = _build(recipe, out, cache_dir, "--force")
    assert result["up_to_date"] is False
    assert image.stat().st_ino != inode
    assert result["images"][0]["sha256"] == manifest["image"]["sha256"]


def test_a_changed_image_is_rebuilt(built, cache_dir):
    recipe, out, image, manifest = built
    with open(image, "r+b") as fh:  # one byte of the image changed in place
        fh.seek(200)
        byte = fh.read(1)
        fh.seek(200)
        fh.write(bytes([byte[0] ^ 1]))
    result = _build(recipe, out, cache_dir)
    assert result["up_to_date"] is False
    assert result["images"][0]["sha256"] == manifest["image"]["sha256"]


def test_a_changed_recipe_or_epoch_rebuilds(tmp_path, built, cache_dir, packages):
    recipe, out, image, manifest = built
    recipe.write_text(recipe.read_text() + "\n# a comment changes the recipe's bytes\n")
    assert _build(recipe, out, cache_dir)["up_to_date"] is False
    assert _build(recipe, out, cache_dir)["up_to_date"] is True
    # SOURCE_DATE_EPOCH from the environment counts only when the recipe does not pin one
    env = dict(os.environ, SOURCE_DATE_EPOCH="1600000000")
    assert _build(recipe, out, cache_dir, env=env)["up_to_date"] is True
    unpinned = write_recipe_dict(tmp_path / "unpinned",
                                 hello_spec(packages, "squashfs", epoch=None))
    out2 = tmp_path / "out2"
    assert _build(unpinned, out2, cache_dir, env=env)["up_to_date"] is False
    assert _build(unpinned, out2, cache_dir, env=env)["up_to_date"] is True
    env["SOURCE_DATE_EPOCH"] = "1600000001"
    assert _build(unpinned, out2, cache_dir, env=env)["up_to_date"] is False


def test_a_manifest_without_the_digest_or_a_missing_companion_rebuilds(built, cache_dir):
    recipe, out, image, manifest = built
    path = out / "hello.manifest.json"
    data = json.loads(path.read_text())
    del data["input_digest"]
    path.write_text(json.dumps(data))
    assert _build(recipe, out, cache_dir)["up_to_date"] is False
    assert _build(recipe, out, cache_dir)["up_to_date"] is True
    sbom = json.loads(path.read_text()).get("sbom")
    if sbom:  # the SBOM is a recorded companion: gone means rebuild
        (out / sbom["file"]).unlink()
        assert _build(recipe, out, cache_dir)["up_to_date"] is False
        assert (out / sbom["file"]).is_file()


def test_a_directory_image_is_always_rebuilt(tmp_path, packages, cache_dir):
    recipe = write_recipe_dict(tmp_path / "recipe", hello_spec(packages, "directory"))
    out = tmp_path / "out"
    _build(recipe, out, cache_dir)
    assert _build(recipe, out, cache_dir)["up_to_date"] is False
