"""``plan``'s file-list cache (issue 14 target 4): a package's list is written into the cache by
the first plan, keyed by the package's sha256, and replayed by the next ones; a list is hostile
input, and anything wrong with it means the package is decompressed as before."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from conftest import run_cli, write_recipe
from pkgfactory import build_deb, config, file, hardlink, symlink

from pipeline.commands.plan import LISTING_VERSION, MAX_LISTING

FILES = [
    file("/usr/bin/tool", b"#!/bin/sh\necho tool\n", 0o755),
    symlink("/usr/bin/tool-link", "tool"),
    file("/usr/bin/setuid", b"#!/bin/sh\nid\n", 0o4755),
    config("/etc/tool.conf", b"x=1\n"),
    file("/usr/share/doc/tool/README", b"docs\n" * 100),
    # a link to a file the recipe excludes: extract copies it from a second read of the archive
    hardlink("/usr/lib/tool/README-copy", "/usr/share/doc/tool/README"),
    file("/opt/tool/data", b"opt\n"),
]


@pytest.fixture
def setup(tmp_path):
    deb = build_deb(tmp_path / "pkg", "tool", "1.0-1", FILES, compression="xz")
    recipe = write_recipe(tmp_path / "recipe", f"""
[extension]
name = "tool"
kind = "sysext"
[target]
id = "debian"
version_id = "12"
[filter]
exclude = ["usr/share/doc/**"]
[policy]
special_files = "warn"
[[source]]
deb = "{deb}"
""")
    cache = tmp_path / "cache"
    sha = hashlib.sha256(deb.read_bytes()).hexdigest()
    return recipe, cache, cache / "lists" / sha[:2] / f"{sha}.v{LISTING_VERSION}.json"


def plan(recipe: Path, cache: Path) -> str:
    proc = run_cli("plan", str(recipe), "--json", "--cache-dir", str(cache))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_second_plan_replays_the_list_and_says_the_same(setup):
    recipe, cache, listing = setup
    first = plan(recipe, cache)
    assert listing.is_file()
    data = json.loads(listing.read_bytes())
    assert data["info"]["name"] == "tool"
    paths = [row[0] for row in data["entries"]]
    assert "./usr/bin/tool" in paths and "./usr/lib/tool/README-copy" in paths
    assert oct(listing.stat().st_mode & 0o777) == "0o644"
    assert plan(recipe, cache) == first
    parsed = json.loads(first)
    assert "usr/lib/tool/README-copy" not in parsed["dropped"]
    layout = {row["dir"]: row for row in parsed["images"][0]["layout"]}
    assert layout["usr/lib/tool"]["bytes"] == len(b"docs\n" * 100)  # the copied link

    # The list is what the second plan read: a (valid) list with another size shows it.
    for row in data["entries"]:
        if row[0] == "./usr/bin/tool":
            row[8] += 1000
    listing.write_text(json.dumps(data))
    replayed = {row["dir"]: row for row in json.loads(plan(recipe, cache))["images"][0]["layout"]}
    assert replayed["usr/bin"]["bytes"] == layout["usr/bin"]["bytes"] + 1000
    assert listing.read_text() == json.dumps(data)  # a valid list is not rewritten


def _corruptions(data: dict, listing: Path):
    yield "truncated", lambda: listing.write_bytes(json.dumps(data).encode()[:-20])
    yield "not json", lambda: listing.write_bytes(b"\xff\xfe garbage")
    for key, value in (("version", 99), ("sha256", "0" * 64), ("size", 1), ("spent", -1),
                       ("format", "other"), ("entries", {"a": 1}), ("info", [])):
        yield f"{key}={value!r}", lambda k=key, v=value: listing.write_text(
            json.dumps({**data, k: v}))
    for index, value in ((1, "bogus-kind"), (2, 0o170000), (2, "755"), (8, -5), (0, None),
                         (10, {"user.x": "zz"}), (12, [1])):
        def bad_row(i=index, v=value):
            rows = [list(r) for r in data["entries"]]
            rows[-1][i] = v
            listing.write_text(json.dumps({**data, "entries": rows}))
        yield f"entry field {index}={value!r}", bad_row
    yield "short row", lambda: listing.write_text(
        json.dumps({**data, "entries": [r[:5] for r in data["entries"]]}))

    def symlink_to_other():
        other = listing.with_name("elsewhere.json")
        other.write_text(json.dumps(data))
        listing.unlink()
        listing.symlink_to(other.name)
    yield "a symlink", symlink_to_other

    def directory():
        listing.unlink()
        listing.mkdir()
    yield "a directory", directory


def test_a_wrong_list_means_decompressing_as_before(setup):
    recipe, cache, listing = setup
    first = plan(recipe, cache)
    good = json.loads(listing.read_bytes())
    for what, corrupt in _corruptions(good, listing):
        if listing.is_symlink() or listing.is_file():
            listing.unlink()
        elif listing.is_dir():
            listing.rmdir()
        listing.write_text(json.dumps(good))
        corrupt()
        assert plan(recipe, cache) == first, what
        if not listing.is_dir():
            assert not listing.is_symlink(), what  # replaced by a good list, not followed
            assert json.loads(listing.read_bytes()) == good, what


def test_an_oversized_list_is_not_read(setup):
    recipe, cache, listing = setup
    first = plan(recipe, cache)
    good = json.loads(listing.read_bytes())
    with listing.open("r+b") as fh:  # sparse: the size alone decides, nothing is read
        fh.truncate(MAX_LISTING + 1)
    assert plan(recipe, cache) == first
    assert json.loads(listing.read_bytes()) == good


def test_the_budget_holds_on_a_replayed_list(setup, tmp_path):
    recipe, cache, listing = setup
    plan(recipe, cache)
    assert listing.is_file()
    text = recipe.read_text() + '\n[limits]\nunpacked = 100\n'
    small = recipe.with_name("small.toml")
    small.write_text(text)
    outcomes = []
    for _ in range(2):  # with the list, then without it
        proc = run_cli("plan", str(small), "--cache-dir", str(cache))
        outcomes.append((proc.returncode, "unpack to more than 100 bytes" in proc.stderr))
        listing.unlink(missing_ok=True)
    assert outcomes == [(2, True), (2, True)], outcomes


def test_an_unwritable_cache_costs_speed_only(setup):
    recipe, cache, listing = setup
    first = plan(recipe, cache)
    listing.unlink()
    os.chmod(listing.parent, 0o555)
    try:
        if os.geteuid() == 0:  # root writes anyway: take the directory's place with a file
            os.chmod(listing.parent, 0o755)
            listing.parent.rmdir()
            listing.parent.write_bytes(b"not a directory")
        assert plan(recipe, cache) == first
        assert not listing.exists()
    finally:
        if listing.parent.is_dir():
            os.chmod(listing.parent, 0o755)
