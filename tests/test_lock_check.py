"""``lock --check`` (issue 15 §4, a nightly CI job) and a re-lock that moves nothing, against
local signed archives: a main suite and a security suite that later gets newer versions."""

from __future__ import annotations

import hashlib
import json

from recipes_kit import recipe_dict, run_cli, write_recipe_dict
from test_cli_json import validate

pytest_plugins = ["repos"]  # the archive, key and server fixtures


def _recipe(directory, archive):
    def repo(suite):
        return {"type": "deb", "mirror": archive.server.url, "suite": suite,
                "keyring": str(archive.key.keyring)}

    spec = recipe_dict("checked", repository=[repo("stable"), repo("stable-security")],
                       sources=[{"packages": ["tool", "app-doc"]}], image={"format": "directory"})
    return write_recipe_dict(directory, spec, "r.toml")


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_lock_check_reports_security_updates_and_relock_keeps_bytes(tmp_path, deb_archive, debs):
    main = [p for p in debs["main"] if p.name.startswith(("tool_", "libtool1_", "app-doc_"))]
    deb_archive.publish("stable", main)
    deb_archive.publish("stable-security", [])
    recipe = _recipe(tmp_path / "r", deb_archive)
    lock = recipe.with_suffix(".lock")
    env = {"SYSEXT_PIPELINE_CACHE": str(tmp_path / "cache")}
    assert run_cli("lock", str(recipe), env=env).code == 0
    written = lock.read_bytes()

    proc = run_cli("lock", "--check", str(recipe), env=env)
    assert proc.code == 0, proc.stderr
    assert f"{lock}: up to date" in proc.stderr

    # the archive signs a new InRelease (another Release, same packages): a re-lock moves
    # nothing and leaves the file byte for byte as it was
    inrelease = deb_archive.root / "dists/stable/InRelease"
    before = _sha(inrelease)
    deb_archive.publish("stable", main, valid_until="Fri, 01 Jan 2100 00:00:00 UTC")
    assert _sha(inrelease) != before
    proc = run_cli("lock", str(recipe), env=env)
    assert proc.code == 0 and "(unchanged" in proc.stderr, proc.stderr
    assert lock.read_bytes() == written

    # a security update: tool and libtool1 1.1 in stable-security
    deb_archive.publish("stable-security",
                        [p for p in debs["next"] if p.name.startswith(("tool_", "libtool1_"))])
    proc = run_cli("lock", "--check", str(recipe), "--json", env=env)
    data = validate("lock", proc, 3)  # a verdict: the lock would move
    [row] = data["recipes"]
    assert row["would_move"] and not row["stale"]
    assert [(m["name"], m["from"], m["to"], m["repository"], m["security"])
            for m in row["moves"]] == [("libtool1", "1.0", "1.1", "stable-security", True),
                                       ("tool", "1.0", "1.1", "stable-security", True)]
    assert lock.read_bytes() == written  # --check writes nothing
    proc = run_cli("lock", "--check", str(recipe), env=env)
    assert proc.code == 3
    assert "would move 2 packages (2 security updates)" in proc.stderr
    assert "  tool 1.0 → 1.1 (stable-security) [security]" in proc.stderr
    assert "to move: sysext-pipeline lock" in proc.stderr

    proc = run_cli("lock", str(recipe), "--json", env=env)
    assert proc.code == 0, proc.stderr
    assert json.loads(proc.stdout)["recipes"][0]["changed"] is True
    assert "tool 1.0 → 1.1" in proc.stderr
    assert run_cli("lock", "--check", str(recipe), env=env).code == 0


def test_lock_check_stale_and_refuses_update(tmp_path, deb_archive):
    deb_archive.publish("stable-security", [])
    recipe = _recipe(tmp_path / "r", deb_archive)
    env = {"SYSEXT_PIPELINE_CACHE": str(tmp_path / "cache")}
    assert run_cli("lock", str(recipe), env=env).code == 0
    proc = run_cli("lock", "--check", "--update", "tool", str(recipe), env=env)
    assert proc.code == 2 and "--check and --update exclude each other" in proc.stderr
    recipe.write_text(recipe.read_text().replace('"app-doc"', '"app-doc", "prelib"'))
    proc = run_cli("lock", "--check", str(recipe), env=env)
    assert proc.code == 3
    assert "stale (the recipe changed since it was written)" in proc.stderr
    assert "prelib (new) → 1.0" in proc.stderr


def test_a_damaged_lock_names_the_package_entry(tmp_path, deb_archive):
    """Lock entries are named as recipe entries are: 1-based, with their name."""
    from repos import make_deb_recipe

    recipe = make_deb_recipe(tmp_path / "r", deb_archive, ["tool"])
    env = {"SYSEXT_PIPELINE_CACHE": str(tmp_path / "cache")}
    assert run_cli("lock", str(recipe), env=env).code == 0
    lock = recipe.with_suffix(".lock")
    text = lock.read_text()
    lock.write_text(text.replace('version = "1.0"', "version = 1", 2))
    proc = run_cli("lock", "--check", str(recipe), env=env)
    assert proc.code == 2
    assert f'error: {lock}: package #1 (name = "libtool1").version: missing or of the wrong ' \
        "type" in proc.stderr
