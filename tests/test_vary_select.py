"""``verify --vary``: which variations run (reprotest's ``+all,-user`` syntax, every name checked,
issue 16 §4), and the ``user`` variation's expectation: a build as nobody is refused for what only
root can write (a file capability, a directory image's owners), and the variation says so rather
than failing."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli
from recipes_kit import hello_recipe, write_recipe_dict
from verify_helpers import build, project

from pipeline.errors import InputError
from pipeline.reproduce.vary import NAMES, non_root_refusal, select
from pipeline.stages import manifest as manifest_mod


def names(*spec: str) -> list[str]:
    return [v.name for v in select(list(spec))]


@pytest.mark.parametrize("spec, expected", [
    (["all"], list(NAMES)),
    (["all,-user"], [n for n in NAMES if n != "user"]),
    (["+all,-user"], [n for n in NAMES if n != "user"]),
    (["-user"], [n for n in NAMES if n != "user"]),          # a removal first: from all
    (["-user,-tz"], [n for n in NAMES if n not in ("user", "tz")]),
    (["tz", "umask"], ["tz", "umask"]),                       # repeated option, table order
    (["umask,tz"], ["tz", "umask"]),
    (["tz,+umask,-tz"], ["umask"]),                           # left to right
    (["all,-all,+user"], ["user"]),
    (["user,-user,user"], ["user"]),
])
def test_selection(spec, expected):
    assert names(*spec) == expected


@pytest.mark.parametrize("spec, words", [
    (["all,bogus"], "unknown variation bogus"),
    (["all", "-bogus"], "unknown variation -bogus"),
    (["--user"], "unknown variation --user"),                 # one sign only
    (["+"], "unknown variation +"),
    (["all,-all"], "selects no variation"),
    (["tz,-tz"], "selects no variation"),
    ([","], "selects no variation"),
])
def test_bad_selection_is_one_input_error(spec, words):
    with pytest.raises(InputError) as caught:
        select(spec)
    line = caught.value.line()
    assert line.startswith("--vary: ") and words in line and "\n" not in line
    assert caught.value.exit_code == 2


def test_bad_selection_is_refused_before_any_work(tmp_path):
    """Checked before the manifest is even read (which does not exist here): exit 2."""
    proc = run_cli("verify", str(tmp_path / "x.manifest.json"), "--vary=all,bogus")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: --vary: unknown variation bogus")
    proc = run_cli("verify", str(tmp_path / "x.manifest.json"), "--vary=all,-all", "--json")
    assert proc.returncode == 2
    assert "selects no variation" in json.loads(proc.stdout)["error"]["message"]


def test_exclusion_on_the_command_line(tmp_path, packages, cache_dir):
    """``--vary=tz,umask,-umask`` runs tz alone (the exclusion is not ignored)."""
    recipe = project(tmp_path / "proj", packages, "directory")
    image = build(recipe, tmp_path / "proj" / "out", cache_dir)
    proc = run_cli("verify", str(image.manifest_path), "--cache-dir", str(cache_dir), "--json",
                   "--vary=tz,umask,-umask", cwd=tmp_path / "proj")
    assert proc.returncode == 0, proc.stderr
    assert [r["name"] for r in json.loads(proc.stdout)["variations"]] == ["tz"]


@pytest.mark.parametrize("fmt, deb_only, words", [
    ("squashfs", False, "file capability (usr/bin/rping), which only a root build can write"),
    ("erofs", False, "file capability (usr/bin/rping)"),
    ("directory", True, "a directory image holds its owners on disk"),
    ("squashfs", True, None),
])
def test_why_a_build_as_nobody_is_refused(tmp_path, packages, cache_dir, fmt, deb_only, words):
    """Read from the manifest the build wrote: what the user variation would be refused."""
    recipe = project(tmp_path / "proj", packages, fmt)
    if deb_only:
        write_recipe_dict(recipe.parent, hello_recipe(fmt, sources=["pkgs/hello-tools.deb"]),
                          recipe.name)
    image = build(recipe, tmp_path / "proj" / "out", cache_dir)
    reason = non_root_refusal(manifest_mod.read(image.manifest_path))
    assert reason is None if words is None else words in reason


@pytest.mark.root
def test_user_variation_with_a_capability_is_skipped_by_design(packages, unprivileged):
    """The shared recipe's rpm carries a file capability: ``--vary user`` says the build as
    nobody is refused by design (skipped, verify exits 0), not "failed"."""
    work = unprivileged.make_workdir(mode=0o755)
    recipe = project(work / "proj", packages, "squashfs")
    image = build(recipe, work / "proj" / "out", work / "cache")
    proc = unprivileged.run_cli(None, "verify", str(image.manifest_path), "--cache-dir",
                                str(work / "cache"), "--vary", "user", "--json", "--work-dir",
                                str(work), cwd=work / "proj")
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads(proc.stdout)["variations"]
    assert row["status"] == "skipped"
    assert row["detail"].startswith("a build as nobody is refused by design: the image carries "
                                    "a file capability (usr/bin/rping)")


@pytest.mark.root
def test_non_root_directory_build_is_refused(packages, unprivileged):
    """A directory image is its files on disk: built as nobody they would belong to nobody
    while the manifest records root. Refused in one line naming the fix, exit 2, nothing
    left in the output directory."""
    work = unprivileged.make_workdir(mode=0o755)
    proj = work / "proj"
    recipe = project(proj, packages, "directory")
    write_recipe_dict(proj, hello_recipe("directory", sources=["pkgs/hello-tools.deb"]),
                      recipe.name)
    out = unprivileged.make_workdir(owner="nobody") / "out"
    proc = unprivileged.run_cli("nobody", "build", str(recipe), "-o", str(out), "--cache-dir",
                                str(out.parent / "cache"), cwd=proj)
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: image.format: a directory image built without root holds "
                           "uid 65534's owners") and "build it as root, or use squashfs" in line
    assert not out.exists() or [p.name for p in out.iterdir()] == []
