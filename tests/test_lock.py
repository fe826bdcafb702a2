"""The lock file: written by `lock`, byte-stable, used by `build`, refused when stale, updated
one package at a time."""

from __future__ import annotations

import json
import sys

from conftest import run_cli

from pipeline import recipe as recipe_mod
from pipeline.sources.lock import read_lock

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

pytest_plugins = ["repos"]  # the archive, key and server fixtures


def _env(tmp_path):
    return {"SYSEXT_PIPELINE_CACHE": str(tmp_path / "cache")}


def test_lock_build_and_stale(tmp_path, deb_archive, deb_recipe):
    recipe = deb_recipe(tmp_path / "r", deb_archive, ["tool", "app"])
    proc = run_cli("lock", str(recipe), env=_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    lock = recipe.with_suffix(".lock")
    text = lock.read_text()
    assert text.startswith("# sysext-pipeline lock file")
    assert deb_archive.server.url.split("//")[1] not in text  # no mirror in the lock
    data = tomllib.loads(text)
    assert [p["name"] for p in data["package"]] == [
        "app", "data-all", "less-alt", "libbar3", "libfoo", "libtool1", "mawk-t", "prelib",
        "py-t", "tool"]
    assert data["repository"][0]["metadata"] == "InRelease"
    assert len(data["repository"][0]["metadata_sha256"]) == 64

    again = run_cli("lock", str(recipe), "--json", env=_env(tmp_path))
    assert again.returncode == 0 and json.loads(again.stdout)["recipes"][0]["changed"] is False
    assert lock.read_text() == text  # byte for byte

    out = tmp_path / "out"
    built = run_cli("build", str(recipe), "-o", str(out), "--json", env=_env(tmp_path))
    assert built.returncode == 0, built.stderr
    image = out / "resolved"
    assert (image / "usr/share/test/tool").read_text() == "tool 1.0\n"
    assert (image / "usr/share/test/libfoo").read_text() == "libfoo 2.1\n"
    manifest = json.loads((out / "resolved.manifest.json").read_text())
    sources = sorted(i["source"] for i in manifest["inputs"])
    assert "stable:pool/stable/tool_1.0_amd64.deb" in sources  # repository:path, no mirror
    assert {i["sha256"] for i in manifest["inputs"]} == {p["sha256"] for p in data["package"]}

    # Edits that do not touch resolution keep the lock fresh; packages edits stale it.
    recipe.write_text(recipe.read_text().replace("[image]", "[filter]\nexclude = []\n[image]"))
    assert run_cli("build", str(recipe), "-o", str(out), env=_env(tmp_path)).returncode == 0
    recipe.write_text(recipe.read_text().replace('"tool", "app"', '"tool", "app", "cyc-a"'))
    stale = run_cli("build", str(recipe), "-o", str(out), env=_env(tmp_path))
    assert stale.returncode == 2
    assert "lock is stale: run lock" in stale.stderr
    assert stale.stderr.count("\n") == 1 and "Traceback" not in stale.stderr


def test_base_file_edit_stales_the_lock(tmp_path, deb_archive, deb_recipe):
    recipe = deb_recipe(tmp_path / "r", deb_archive, ["app"], base="base.txt")
    (tmp_path / "r" / "base.txt").write_text("prelib\n")
    assert run_cli("lock", str(recipe), env=_env(tmp_path)).returncode == 0
    (tmp_path / "r" / "base.txt").write_text("prelib\nless-alt\n")
    proc = run_cli("build", str(recipe), "-o", str(tmp_path / "out"), env=_env(tmp_path))
    assert proc.returncode == 2 and "lock is stale: run lock" in proc.stderr


def test_missing_lock(tmp_path, deb_archive, deb_recipe):
    recipe = deb_recipe(tmp_path / "r", deb_archive, ["tool"])
    proc = run_cli("build", str(recipe), "-o", str(tmp_path / "out"), env=_env(tmp_path))
    assert proc.returncode == 2
    assert "no lock file" in proc.stderr and "sysext-pipeline lock" in proc.stderr


def test_update_moves_one_package(tmp_path, deb_archive, deb_recipe, debs):
    recipe = deb_recipe(tmp_path / "r", deb_archive, ["tool", "app"], suite="moving")
    deb_archive.publish("moving", debs["main"])
    assert run_cli("lock", str(recipe), env=_env(tmp_path)).returncode == 0
    first = read_lock(recipe_mod.load(recipe))

    deb_archive.publish("moving", debs["main"] + debs["next"])  # old versions stay too
    proc = run_cli("lock", "--update", "tool", str(recipe), env=_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "tool 1.0 → 1.1" in proc.stderr
    moved = read_lock(recipe_mod.load(recipe))
    versions = {p["name"]: p["version"] for p in moved["package"]}
    assert versions["tool"] == "1.1"
    assert versions["libtool1"] == "1.0"  # still in the archive and still fits: kept
    assert versions["app"] == "1.0"  # not asked to move
    assert moved["repository"] != first["repository"]

    proc = run_cli("lock", str(recipe), env=_env(tmp_path))  # everything moves
    versions = {p["name"]: p["version"] for p in read_lock(recipe_mod.load(recipe))["package"]}
    assert versions["tool"] == "1.1" and versions["app"] == "1.1" and versions["libtool1"] == "1.1"

    proc = run_cli("lock", "--update", "nonesuch", str(recipe), env=_env(tmp_path))
    assert proc.returncode == 2 and "nonesuch not in the lock" in proc.stderr


def test_shipped_example_lock_is_fresh():
    """recipes/debug-tools.lock matches its recipe and base list (no network)."""
    from conftest import REPO

    from pipeline.sources.lock import check_fresh

    recipe = recipe_mod.load(REPO / "recipes/debug-tools.toml")
    data = read_lock(recipe)
    check_fresh(recipe, data)
    assert {p["name"] for p in data["package"]} >= {"strace", "jq", "tcpdump", "libjq1"}
    assert "http" not in recipe.path.with_suffix(".lock").read_text()  # no mirror in the repo
