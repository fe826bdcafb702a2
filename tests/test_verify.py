"""``verify``: rebuild from the manifest's record and compare; real builds, real differences."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli
from prereq import require_root, require_tool
from verify_helpers import (
    build,
    extra_file,
    project,
    repack_squashfs,
    signer_files,
    verify_json,
)

EXTRA = extra_file()


@pytest.mark.parametrize("fmt", ("squashfs", "erofs", "directory", "ddi"))
def test_reproduced(tmp_path, packages, cache_dir, fmt):
    if fmt == "ddi":
        require_tool("systemd-repart", "systemd-repart")
        signer_files(tmp_path / "proj", "release", "verify test")
    recipe = project(tmp_path / "proj", packages, fmt,
                     sign="release" if fmt == "ddi" else None)
    image = build(recipe, tmp_path / "proj" / "out", cache_dir)
    # The recipe is found by its recorded hash next to the output directory.
    rc, result = verify_json(image.manifest_path, "--cache-dir", cache_dir, cwd=tmp_path)
    assert rc == 0 and result["status"] == "reproduced", result
    assert result["manifest_identical"] and result["diff"] is None
    assert Path(result["recipe"]) == recipe
    # Given as the image instead of the manifest: the same.
    proc = run_cli("verify", str(image.image), "--cache-dir", str(cache_dir), cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("reproduced: hello")


def test_differs_when_the_image_was_replaced(tmp_path, packages, cache_dir):
    recipe = project(tmp_path / "proj", packages, "squashfs")
    image = build(recipe, tmp_path / "proj" / "out", cache_dir)
    other = build(project(tmp_path / "other", packages, "squashfs", extra=EXTRA),
                  tmp_path / "other" / "out", cache_dir)
    shutil.copy(other.image, image.image)  # the manifest stays: the image is not what it says
    rc, result = verify_json(image.manifest_path, "--cache-dir", cache_dir)
    assert rc == 3 and result["status"] == "differs"
    assert "not the image its manifest describes" in result["notes"][0]
    assert result["diff"]["explained_at"] == "tree"
    assert "usr/share/hello/extra.txt" in result["diff"]["tree"]["paths"]["removed"]
    text = run_cli("verify", str(image.manifest_path), "--cache-dir", str(cache_dir)).stdout
    assert text.startswith("differs: hello")
    assert "(- only in the original, + only in the rebuild)" in text
    assert "    - usr/share/hello/extra.txt" in text


def test_tool_version_is_said_first(tmp_path, packages, cache_dir):
    """A manifest from a machine with another mksquashfs: said first, and that the trees agree."""
    require_root()
    recipe = project(tmp_path / "proj", packages, "squashfs")
    image = build(recipe, tmp_path / "proj" / "out", cache_dir)
    repack_squashfs(image.image, tmp_path / "other.raw", "-b", "64K", "-xattrs")
    shutil.copy(tmp_path / "other.raw", image.image)
    manifest = json.loads(image.manifest_path.read_text())
    manifest["tools"]["mksquashfs"] = "4.6.1"
    image.manifest_path.write_text(json.dumps(manifest))
    rc, result = verify_json(image.manifest_path, "--cache-dir", cache_dir)
    assert rc == 3 and result["status"] == "differs"
    assert result["notes"][0].startswith("mksquashfs 4.5.1 here, 4.6.1 in the manifest: "
                                         "different bytes are expected")
    assert "the file trees are identical" in result["diff"]["summary"]


def test_recipe_lookup(tmp_path, packages, cache_dir):
    recipe = project(tmp_path / "proj", packages, "directory")
    image = build(recipe, tmp_path / "out", cache_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Not findable from here: the error says which hash it looked for and how to give it.
    proc = run_cli("verify", str(image.manifest_path), "--cache-dir", str(cache_dir),
                   cwd=elsewhere)
    assert proc.returncode == 2
    assert "no recipe with the recorded sha256" in proc.stderr and "--recipe" in proc.stderr
    # ./recipes is searched.
    shutil.copytree(tmp_path / "proj", elsewhere / "recipes")
    rc, _ = verify_json(image.manifest_path, "--cache-dir", cache_dir, cwd=elsewhere)
    assert rc == 0
    # Another recipe given explicitly: said, rebuilt, and the difference explained.
    changed = project(tmp_path / "changed", packages, "directory", extra=EXTRA)
    rc, result = verify_json(image.manifest_path, "--recipe", changed, "--cache-dir", cache_dir)
    assert rc == 3 and any("is not the recorded recipe" in n for n in result["notes"])
    assert result["diff"]["explained_at"] == "tree"


def test_offline_rebuild_uses_the_cache_by_recorded_hash(tmp_path, packages, cache_dir):
    """Local package files gone: the cache (filled from the store by sha256) still serves."""
    from pipeline.sources.fetch import Cache

    recipe = project(tmp_path / "proj", packages, "squashfs")
    image = build(recipe, tmp_path / "proj" / "out", cache_dir)
    cache = Cache(tmp_path / "cache")
    for item in image.manifest["inputs"]:
        dest = cache.path_for(item["sha256"])
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "proj" / "pkgs" / Path(item["source"]).name, dest)
    shutil.rmtree(tmp_path / "proj" / "pkgs")
    rc, result = verify_json(image.manifest_path, "--offline", "--cache-dir", cache.root)
    assert rc == 0 and result["status"] == "reproduced"
    # And with neither the file nor the cache: a clear error, not a rebuild from other bytes.
    proc = run_cli("verify", str(image.manifest_path), "--offline", "--cache-dir",
                   str(tmp_path / "empty"))
    assert proc.returncode in (1, 2) and "hello-tools.deb" in proc.stderr


def test_environment_epoch_is_given_back(tmp_path, packages, cache_dir):
    recipe = project(tmp_path / "proj", packages, "squashfs", epoch=None)
    proc = run_cli("build", str(recipe), "-o", str(tmp_path / "out"), "--cache-dir",
                   str(cache_dir), "--json", env={"SOURCE_DATE_EPOCH": "1600000000"})
    assert proc.returncode == 0, proc.stderr
    manifest = Path(json.loads(proc.stdout)["images"][0]["manifest"])
    rc, result = verify_json(manifest, "--cache-dir", cache_dir, cwd=tmp_path / "proj")
    assert rc == 0, result
