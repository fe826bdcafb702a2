"""``plan``: hosts without/with VERSION_ID, undecided images, help text, severities.

Where the plan claims what systemd does, the real systemd-sysext (252) confirms it.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli
from merge import in_namespace, make_root
from pkgfactory import build_deb, config, file
from recipes_kit import build_cli, recipe_dict, write_recipe_dict

TOOL = file("/usr/bin/nover", b"#!/bin/sh\necho nover\n", 0o755)


def plan_json(tmp_path: Path, spec: dict, cache_dir) -> dict:
    proc = run_cli("plan", str(write_recipe_dict(tmp_path, spec)), "--json", "--cache-dir",
                   str(cache_dir))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_no_version_id_is_ignored_on_versioned_hosts(tmp_path, cache_dir):
    deb = build_deb(tmp_path / "pkg", "nover", "1.0", [TOOL])
    spec = recipe_dict("nover", target={"id": "debian", "architecture": "x86-64"},
                       sources=[deb])
    plan = plan_json(tmp_path, spec, cache_dir)
    [image] = plan["images"]
    assert "no-version" in [w["code"] for w in image["warnings"]]
    verdicts = {row["host"]: row for row in plan["matching"]["nover"]}
    assert verdicts["debian x86-64 without VERSION_ID (a rolling release)"]["verdict"] == "merges"
    versioned = verdicts["debian with VERSION_ID=1 (a versioned release)"]
    assert versioned["verdict"] == "ignored" and "VERSION_ID" in versioned["why"]

    # What the plan says is what systemd does: a host with VERSION_ID ignores the image, a
    # rolling one (no VERSION_ID) merges it.
    proc = build_cli(tmp_path / "recipe.toml", tmp_path / "out", cache_dir=cache_dir,
                     json_out=False)
    assert "no-version" in proc.stderr
    for os_release, merged in (("ID=debian\nVERSION_ID=12\n", False), ("ID=debian\n", True)):
        root = make_root(tmp_path / f"root-{merged}", os_release)
        (root / "var/lib/extensions/nover.raw").write_bytes(
            (tmp_path / "out/nover.raw").read_bytes())
        proc = in_namespace(f"systemd-sysext merge --root={root}; "
                            f"test -e {root}/usr/bin/nover && echo MERGED || echo NOT")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split()[-1] == ("MERGED" if merged else "NOT"), proc.stderr


def test_missing_packages_leave_the_decision_open(tmp_path, cache_dir):
    deb = build_deb(tmp_path / "pkg", "half", "1.0", [TOOL])
    missing = {"apt": "jq", "version": "1.0", "sha256": "a" * 64}
    plan = plan_json(tmp_path, recipe_dict("half", sources=[deb, missing]), cache_dir)
    assert plan["decision"] is None and not plan["complete"]
    assert "undecided until 1 package(s)" in plan["undecided"]
    proc = run_cli("plan", str(tmp_path / "recipe.toml"), "--cache-dir", str(cache_dir))
    assert "decision: undecided until 1 package(s)" in proc.stdout
    assert "payload is empty" not in proc.stdout

    empty = plan_json(tmp_path / "empty", recipe_dict("e", sources=[missing]),
                      tmp_path / "nocache")
    assert empty["decision"] is None and "payload is empty" not in json.dumps(empty)

    pinned = plan_json(tmp_path / "pinned",
                       recipe_dict("half", kind="confext", sources=[deb, missing]), cache_dir)
    assert pinned["decision"] == "the recipe pins kind = confext" and pinned["undecided"] is None


def test_complete_plan_is_decided(tmp_path, cache_dir):
    deb = build_deb(tmp_path / "pkg", "whole", "1.0", [TOOL])
    plan = plan_json(tmp_path, recipe_dict("whole", sources=[deb]), cache_dir)
    assert plan["complete"] and plan["undecided"] is None
    assert plan["decision"] == "kind = auto and the payload has only /usr or /opt content"


def test_plan_help_describes_every_argument():
    proc = run_cli("plan", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "recipe the recipe file (TOML)" in text
    assert "--json [MODE] print one JSON object on stdout" in text  # the shared wording
    assert "--cache-dir DIR, --store DIR package cache or offline store" in text


def test_severe_findings_are_not_printed_as_errors(tmp_path, cache_dir):
    deb = build_deb(tmp_path / "pkg", "osrel", "1.0", [
        config("/etc/os-release", b"ID=debian\n"), config("/etc/osrel.conf", b"x\n")])
    recipe = write_recipe_dict(tmp_path, recipe_dict("osrel", kind="confext", sources=[deb]))
    proc = run_cli("plan", str(recipe), "--cache-dir", str(cache_dir))
    assert proc.returncode == 0, proc.stderr
    assert "severe: shadows-host:" in proc.stdout and "error" not in proc.stdout
    proc = build_cli(recipe, tmp_path / "out", cache_dir=cache_dir, json_out=False)
    assert "severe: shadows-host" in proc.stderr
    assert "error:" not in proc.stderr
