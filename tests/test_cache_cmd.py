"""Issue 16 §8: ``cache list`` and ``cache prune [--keep-locked RECIPE…]`` on a real cache filled
by ``lock`` and ``fetch`` from an archive served on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jsonschema
import pytest
import tomllib
from conftest import REPO, run_cli

pytest_plugins = ["repos"]

SCHEMAS = REPO / "docs" / "schemas"


def _valid(command: str, proc, exit: int = 0) -> dict:
    assert proc.returncode == exit, (proc.stdout, proc.stderr)
    data = json.loads(proc.stdout)
    schema = json.loads((SCHEMAS / f"{command}.schema.json").read_text())
    jsonschema.validate(data, schema, cls=jsonschema.Draft202012Validator)
    return data


def _stray(cache: Path, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    path = cache / "sha256" / sha[:2] / sha
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return sha


@pytest.fixture
def filled(tmp_path, deb_archive, deb_recipe):
    """A cache holding what a locked recipe needs, a stray file no recipe needs, and things
    that are not cache entries (a note, a symlink to a file outside)."""
    cache = tmp_path / "cache"
    env = {"SYSEXT_PIPELINE_CACHE": str(cache)}
    recipe = deb_recipe(tmp_path / "r", deb_archive, ["tool"])
    assert run_cli("lock", str(recipe), "-q", env=env).returncode == 0
    assert run_cli("fetch", str(recipe), "--store", str(cache), "-q").returncode == 0
    stray = _stray(cache, b"no recipe needs this\n")
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep me")
    link_sha = hashlib.sha256(b"keep me").hexdigest()
    (cache / "sha256" / link_sha[:2]).mkdir(exist_ok=True)
    (cache / "sha256" / link_sha[:2] / link_sha).symlink_to(outside)
    (cache / "sha256" / "NOTES").write_text("not an entry")
    return {"cache": cache, "recipe": recipe, "stray": stray, "outside": outside,
            "link": link_sha}


def test_list_names_every_entry_and_nothing_else(filled):
    cache = filled["cache"]
    listed = _valid("cache-list", run_cli("cache", "list", "--cache-dir", str(cache), "--json"))
    kinds = {e["sha256"]: e["kind"] for e in listed["entries"]}
    assert kinds[filled["stray"]] == "other"
    assert "deb" in kinds.values()
    assert filled["link"] not in kinds  # a symlink is no entry
    assert listed["files"] == len(kinds) and listed["bytes"] == sum(
        e["size"] for e in listed["entries"])
    human = run_cli("cache", "list", "--cache-dir", str(cache))
    assert human.returncode == 0
    assert filled["stray"] in human.stdout
    assert f"{len(kinds)} files" in human.stderr


def _listed(cache: Path) -> dict[str, dict]:
    data = json.loads(run_cli("cache", "list", "--cache-dir", str(cache), "--json").stdout)
    return {e["sha256"]: e for e in data["entries"]}


def test_prune_keeps_what_the_locked_recipes_need(filled):
    """Kept: the lock's packages (what a build needs). Gone: the stray file and the
    repository indexes lock cached (the next lock fetches them again)."""
    cache, recipe = filled["cache"], filled["recipe"]
    locked = {p["sha256"] for p in tomllib.loads(
        recipe.with_suffix(".lock").read_text())["package"]}
    before = _listed(cache)
    assert locked <= set(before)
    dry = _valid("cache-prune", run_cli("cache", "prune", "--keep-locked", str(recipe),
                                        "--dry-run", "--cache-dir", str(cache), "--json"))
    would = {e["sha256"] for e in dry["removed"]}
    assert filled["stray"] in would and not would & locked and dry["dry_run"]
    assert set(_listed(cache)) == set(before)  # a dry run removes nothing

    done = _valid("cache-prune", run_cli("cache", "prune", "--keep-locked", str(recipe),
                                         "--cache-dir", str(cache), "--json"))
    assert {e["sha256"] for e in done["removed"]} == would
    assert set(_listed(cache)) == set(before) - would == locked
    assert done["kept"] == len(locked) and done["freed"] == sum(before[s]["size"] for s in would)
    # what is kept is enough: fetching the recipe again downloads nothing
    again = run_cli("fetch", str(recipe), "--store", str(cache), "--json=short")
    assert json.loads(again.stdout)["downloaded"] == 0

    everything = run_cli("cache", "prune", "--cache-dir", str(cache))
    assert everything.returncode == 0
    assert f"removed {len(locked)} files" in everything.stderr
    assert _listed(cache) == {}
    assert filled["outside"].read_bytes() == b"keep me"  # never through the symlink
    assert (cache / "sha256" / "NOTES").exists()


def test_prune_refuses_a_recipe_it_cannot_account_for(filled, tmp_path):
    cache = filled["cache"]
    recipe = filled["recipe"]
    recipe.write_text(recipe.read_text().replace('"tool"', '"tool", "lib"'))  # lock now stale
    proc = run_cli("cache", "prune", "--keep-locked", str(recipe), "--cache-dir", str(cache),
                   "--json")
    data = _valid("cache-prune", proc, 2)
    assert "stale" in data["error"]["message"]
    assert (cache / "sha256" / filled["stray"][:2] / filled["stray"]).exists()  # nothing gone


def test_prune_removes_the_file_lists_nothing_reads(filled):
    """plan's file lists (lists/ab/<sha256>.vN.json) go with their package, and lists of an older
    format go; the current list of a kept package, a foreign file and a symlink stay."""
    from pipeline.commands.plan import LISTING_VERSION

    cache, recipe = filled["cache"], filled["recipe"]
    locked = sorted(p["sha256"] for p in tomllib.loads(
        recipe.with_suffix(".lock").read_text())["package"])
    kept_sha, stray = locked[0], filled["stray"]

    def put(sha: str, version: int) -> Path:
        path = cache / "lists" / sha[:2] / f"{sha}.v{version}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
        return path

    current = put(kept_sha, LISTING_VERSION)
    older = put(kept_sha, LISTING_VERSION - 1)
    of_stray = put(stray, LISTING_VERSION)
    foreign = cache / "lists" / kept_sha[:2] / "README"
    foreign.write_text("not a list")
    outside = filled["outside"]
    link = cache / "lists" / kept_sha[:2] / f"{kept_sha[:2]}{'0' * 62}.v{LISTING_VERSION}.json"
    link.symlink_to(outside)
    assert run_cli("cache", "prune", "--keep-locked", str(recipe), "--dry-run",
                   "--cache-dir", str(cache), "-q").returncode == 0
    assert older.exists() and of_stray.exists()  # a dry run removes nothing
    assert run_cli("cache", "prune", "--keep-locked", str(recipe), "--cache-dir", str(cache),
                   "-q").returncode == 0
    assert current.exists() and foreign.exists() and link.is_symlink()
    assert not older.exists() and not of_stray.exists()
    assert outside.read_bytes() == b"keep me"
