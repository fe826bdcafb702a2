"""Snapshot archives (issue 15 §4): a [[repository]] marked ``snapshot = true`` may serve a
Release whose Valid-Until has passed (apt's Check-Valid-Until=no); every other repository still
refuses it, and the suite and the signature are still checked for a snapshot."""

from __future__ import annotations

import json
import shutil

import pytest

from pipeline import recipe as recipe_mod
from pipeline.errors import InputError
from pipeline.sources.fetch import Cache
from pipeline.sources.lock import inputs_sha256, lock_recipe

pytest_plugins = ["repos"]  # the archive, key and server fixtures

EXPIRED = "Sat, 01 Jan 2000 00:00:00 UTC"


def _lock(directory, archive, suite, **repo_extra):
    from repos import make_deb_recipe

    recipe = recipe_mod.load(make_deb_recipe(directory, archive, ["tool"], suite=suite,
                                             repo_extra=repo_extra or None))
    data, _ = lock_recipe(recipe, Cache(directory / "cache"))
    return {p["name"]: p["version"] for p in data["package"]}, recipe


def test_expired_release_only_for_a_snapshot_repository(tmp_path, deb_archive):
    pool = list(deb_archive.root.glob("pool/stable/*"))
    deb_archive.publish("frozen", pool, valid_until=EXPIRED)
    with pytest.raises(InputError, match="expired: Valid-Until Sat, 01 Jan 2000") as exc:
        _lock(tmp_path / "plain", deb_archive, "frozen")
    assert "snapshot = true" in exc.value.line()  # the way out is named
    assert "\n" not in exc.value.line()
    versions, _ = _lock(tmp_path / "snap", deb_archive, "frozen", snapshot=True)
    assert versions == {"tool": "1.0", "libtool1": "1.0"}


def test_snapshot_still_checks_suite_and_signature(tmp_path, deb_archive, gpg_keys):
    pool = list(deb_archive.root.glob("pool/stable/*"))
    deb_archive.publish("frozen", pool, valid_until=EXPIRED)
    shutil.copytree(deb_archive.root / "dists/frozen", deb_archive.root / "dists/other")
    with pytest.raises(InputError, match="is for frozen, not the requested suite other"):
        _lock(tmp_path / "a", deb_archive, "other", snapshot=True)
    deb_archive.publish("evil", pool, valid_until=EXPIRED, key=gpg_keys["evil"])
    with pytest.raises(InputError, match="signature verification failed"):
        _lock(tmp_path / "b", deb_archive, "evil", snapshot=True)


def test_snapshot_key_is_deb_only_and_keeps_old_locks_fresh(tmp_path, deb_archive):
    from repos import make_deb_recipe

    plain = recipe_mod.load(make_deb_recipe(tmp_path / "p", deb_archive, ["tool"]))
    off = recipe_mod.load(make_deb_recipe(tmp_path / "o", deb_archive, ["tool"],
                                          repo_extra={"snapshot": False}))
    on = recipe_mod.load(make_deb_recipe(tmp_path / "s", deb_archive, ["tool"],
                                         repo_extra={"snapshot": True}))
    # a lock written before the key existed stays fresh; turning it on re-locks
    assert inputs_sha256(plain) == inputs_sha256(off) != inputs_sha256(on)
    path = tmp_path / "r.toml"
    path.write_text('[extension]\nname = "x"\n[target]\nid = "fedora"\n'
                    '[[repository]]\ntype = "rpm-md"\nbaseurl = "http://127.0.0.1/x"\n'
                    'snapshot = true\n[[source]]\npackages = ["a"]\n')
    with pytest.raises(InputError, match=r'repository #1 \(baseurl = "http://127.0.0.1/x"\)'
                                         r"\.snapshot: does not apply to rpm-md"):
        recipe_mod.load(path)


def test_a_locked_version_gone_from_the_archive_names_the_ways_out(tmp_path, deb_archive, debs):
    """The mirror dropped a locked file (a point release): one line naming the package, its
    version, `lock --update NAME RECIPE` and a snapshot archive; exit 2 (fix the input), and
    once the way out is taken (here: `lock --update tool`) it builds."""
    from recipes_kit import build_cli, run_cli
    from repos import make_deb_recipe

    recipe = make_deb_recipe(tmp_path / "r", deb_archive, ["tool"])
    env = {"SYSEXT_PIPELINE_CACHE": str(tmp_path / "lock-cache")}
    proc = run_cli("lock", str(recipe), env=env)
    assert proc.code == 0, proc.stderr
    # the next point release: tool 1.1 replaces 1.0 in the suite, and 1.0's file is gone
    newer = [p for p in debs["next"] if p.name.startswith("tool_")]
    deb_archive.publish("stable", [p for p in debs["main"] if not p.name.startswith("tool_")]
                        + newer)
    result = build_cli(recipe, tmp_path / "out", cache_dir=tmp_path / "cache", json_out=False,
                       expect=2)
    [line] = result.error_lines()
    assert line.startswith("error: tool 1.0 (stable:pool/stable/tool_1.0_amd64.deb): this "
                           "locked version is no longer in the archive (download failed: "
                           "HTTP 404"), line
    assert f"`sysext-pipeline lock --update tool {recipe}`" in line
    assert "snapshot archive URL" in line and "snapshot = true" in line
    proc = run_cli("lock", "--update", "tool", str(recipe), env=env)
    assert proc.code == 0, proc.stderr
    built = build_cli(recipe, tmp_path / "out", cache_dir=tmp_path / "cache")
    assert "tool_1.1_amd64.deb" in json.dumps(built.manifest())
