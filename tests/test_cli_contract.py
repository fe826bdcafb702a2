"""Issue 16 §3/§5/§6/§8: exit classes printed by every --help, verbs grouped, options described,
preflight before any fetch, a missing dependency in one line."""

from __future__ import annotations

import argparse
import os
import sys

import pytest
from conftest import REPO, run_cli
from recipes_kit import (
    DEBIAN_12,
    EPOCH,
    UNFETCHABLE_DEB,
    build_cli,
    on_a_terminal,
    recipe_dict,
    subcommands,
    unfetchable_recipe,
)

from pipeline.commands import cli
from pipeline.errors import EXIT_CLASSES

pytest_plugins = ["repos"]  # the archive server (a 404)

def test_every_help_ends_with_the_exit_classes():
    commands = dict(subcommands(cli.parser()))
    assert {("build",), ("keys", "generate"), ("rollback",), ("explain",)} <= set(commands)
    for name, sub in commands.items():
        text = " ".join(sub.format_help().split())
        assert "exit codes:" in text, name
        for code, meaning in EXIT_CLASSES.items():
            assert f"{code} {meaning}" in text, (name, code)
        verdict = cli.VERDICTS.get(name[0])
        assert f"here 3 means: {verdict}" in text if verdict else \
            "(not given by this command)" in text, name


#: commands with their own --json (none: publish and sign-feed took the envelope too)
OWN_JSON: set[str] = set()


def test_every_option_has_help_and_shared_ones_agree():
    seen: dict[str, str] = {}
    for name, sub in subcommands(cli.parser()):
        if name[0] in OWN_JSON:
            continue
        for action in sub._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            assert action.help, (name, action.option_strings)
            for flag in ("--json", "--cache-dir", "--root", "--systemd", "--quiet", "--debug"):
                if flag in action.option_strings and flag != "--cache-dir":
                    # one spelling and one text everywhere (fetch's store is described as such)
                    assert seen.setdefault(flag, action.help) == action.help, (name, flag)
        if name[-1] not in ("keys", "cache", "recipe-reference", "troubleshooting"):
            assert "--json" in sub._option_string_actions, name  # --json on every verb


def test_top_level_help_groups_the_verbs():
    proc = run_cli("--help")
    assert proc.returncode == 0
    text = proc.stdout
    order = [text.index(f"\n{group}:\n") for group in cli.GROUPS]
    assert order == sorted(order)
    build, trust = text.index("\nBuild:\n"), text.index("\nTrust:\n")
    assert build < text.index("  lock ") < trust < text.index("  sign ")
    assert "exit codes:" in text and "3  verdict" in text


def test_output_dir_that_is_a_file_is_refused_before_fetching(tmp_path, make_recipe):
    recipe = make_recipe(unfetchable_recipe())
    target = tmp_path / "out"
    target.write_text("not a directory")
    proc = build_cli(recipe, target, cache_dir=tmp_path / "c", json_out=False, expect=2)
    assert proc.stderr == f"error: {target}: is not a directory (-o/--output-dir names the " \
                          "directory the image goes to)\n"
    assert target.read_text() == "not a directory" and not (tmp_path / "c").exists()
    below = build_cli(recipe, target / "sub", cache_dir=tmp_path / "c", json_out=False,
                      expect=2)
    assert f"error: {target}: is not a directory" in below.stderr


def test_invalid_source_date_epoch_is_refused_before_fetching(tmp_path, make_recipe):
    recipe = make_recipe(unfetchable_recipe())
    proc = build_cli(recipe, tmp_path / "out", cache_dir=tmp_path / "c", json_out=False,
                     expect=2, env={"SOURCE_DATE_EPOCH": "yesterday"})
    assert proc.stderr.startswith("error: SOURCE_DATE_EPOCH: 'yesterday' is not a number")
    assert "fetch" not in proc.stderr and not (tmp_path / "c").exists()


def test_missing_dependency_is_one_line(tmp_path, make_recipe):
    """Without site-packages (python -S: the real condition outside the venv) a command that
    needs pyzstd says so in one line, with how to install it."""
    recipe = make_recipe(unfetchable_recipe())
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-S", "-m", "pipeline", "build", str(recipe), "-o",
                           str(tmp_path / "out")], capture_output=True, text=True, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: the Python module 'pyzstd' is not installed (")
    assert "pipx install ." in proc.stderr
    top = subprocess.run([sys.executable, "-S", "-m", "pipeline", "--help"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert top.returncode == 0 and "Build:" in top.stdout


def test_missing_signing_key_says_how_to_get_one(tmp_path, make_recipe):
    recipe = make_recipe(unfetchable_recipe(
        image={"format": "ddi"}, sign={"key": "keys/release.key", "cert": "keys/release.crt"}))
    error = build_cli(recipe, tmp_path / "out", "--json=short", cache_dir=tmp_path / "c",
                      json_out=False, expect=2).json["error"]
    assert (error["subject"], error["field"]) == (str(recipe), "sign.key")
    assert "sysext-pipeline keys generate --key" in error["hint"]
    assert "`build --unsigned` and `sysext-pipeline sign`" in error["hint"]
    assert not (tmp_path / "c").exists()  # nothing fetched


def test_a_file_the_archive_does_not_have_is_fixed_not_retried(tmp_path, make_recipe, deb_archive):
    """HTTP 404 for a recorded URL: exit 2 (fix the recipe or lock), not 1 (retry)."""
    url = f"{deb_archive.server.url}/pool/stable/nothing_1.0_amd64.deb"
    recipe = make_recipe(unfetchable_recipe(source={**UNFETCHABLE_DEB, "deb": url}))
    data = build_cli(recipe, tmp_path / "out", cache_dir=tmp_path / "c", expect=2).json
    assert data["exit"] == 2 and "HTTP 404" in data["error"]["message"]
    assert deb_archive.server.paths() == ["/pool/stable/nothing_1.0_amd64.deb"]  # tried once


def test_error_is_coloured_on_a_terminal_unless_no_color(tmp_path):
    missing = str(tmp_path / "nope.raw")
    coloured = on_a_terminal("inspect", missing, env={"NO_COLOR": None}, stream="stderr",
                             expect=2)
    assert coloured.startswith(b"\x1b[1;31merror:\x1b[0m " + missing.encode()), coloured
    plain = on_a_terminal("inspect", missing, env={"NO_COLOR": "1"}, stream="stderr",
                          expect=2)
    assert plain.startswith(b"error: " + missing.encode()) and b"\x1b" not in plain
    piped = run_cli("inspect", missing)  # not a terminal: never coloured
    assert piped.stderr.startswith("error: ") and "\x1b" not in piped.stderr


def test_one_file_is_one_file(tmp_path, make_recipe):
    recipe = make_recipe(recipe_dict(
        "one", kind="sysext", target={**DEBIAN_12, "architecture": "x86-64"},
        files={"usr/bin/one": {"content": "#!/bin/sh\n", "mode": "0755"}},
        image={"source_date_epoch": EPOCH}))
    proc = run_cli("plan", str(recipe))
    assert proc.returncode == 0, proc.stderr
    assert "     1 file " in proc.stdout and "1 files" not in proc.stdout


def test_output_dir_on_a_read_only_mount_is_named_before_fetching(tmp_path, make_recipe):
    """-o below a read-only mount: the error names the directory given, not a hidden work
    directory inside it, and comes before any fetch."""
    import shlex
    import subprocess

    from prereq import require_root, require_tool

    require_root()
    require_tool("unshare", "util-linux")
    recipe = make_recipe(unfetchable_recipe())
    ro = tmp_path / "ro"
    ro.mkdir()
    argv = [sys.executable, "-m", "pipeline", "build", str(recipe), "-o", str(ro / "out"),
            "--cache-dir", str(tmp_path / "c")]
    inner = f"mount -t tmpfs -o ro tmpfs {shlex.quote(str(ro))} && " \
            f"PYTHONPATH={shlex.quote(str(REPO))} {shlex.join(argv)}"
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", inner],
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"error: {ro}: is on a read-only file system (give -o a directory " \
                          "you can write to)\n"
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("package,version,said", [
    ("nonesuch-w1-pkg", "1.0", "Unable to locate package nonesuch-w1-pkg"),
    ("coreutils", "0.0.0-not-in-any-archive", "Version '0.0.0-not-in-any-archive'"),
])
def test_a_package_or_version_apt_does_not_know_is_exit_2(tmp_path, make_recipe, package, version,
                                                          said):
    """apt-get's own answer from the host's package lists (no download happens): fix the
    recipe, do not retry."""
    from prereq import require_tool

    require_tool("apt-get", "apt")
    recipe = make_recipe(unfetchable_recipe(
        source={"apt": package, "version": version, "sha256": UNFETCHABLE_DEB["sha256"]}))
    error = build_cli(recipe, tmp_path / "out", cache_dir=tmp_path / "c", expect=2).json["error"]
    assert error["subject"] == f"{package}={version}" and said in error["hint"], error
