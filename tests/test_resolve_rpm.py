"""rpm-md resolution against repositories made by createrepo_c from rpmbuild packages."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import run_cli

from pipeline import recipe as recipe_mod
from pipeline.errors import InputError
from pipeline.sources import rpmmd
from pipeline.sources.fetch import Cache
from pipeline.sources.lock import dumps, lock_recipe

VERSIONS = [
    ("1.0", "1.0", 0), ("1.0", "1.1", -1), ("1.0~rc1", "1.0", -1), ("1.0^git1", "1.0", 1),
    ("1.0^git1", "1.0.1", -1), ("1.0^git1", "1.0~rc1", 1), ("1.10", "1.9", 1), ("1a", "1", 1),
    ("1.0a", "1.0.1", -1), ("001", "1", 0), ("1.0", "1_0", 0), ("fc40", "fc9", 1),
    ("2.0", "2.0.0", -1), ("a", "1", -1), ("1.0~~", "1.0~", -1),
]

pytest_plugins = ["repos"]  # the archive, key and server fixtures


@pytest.mark.parametrize("a,b,want", VERSIONS)
def test_rpmvercmp_matches_rpm(a, b, want):
    assert rpmmd.rpmvercmp(a, b) == want
    if shutil.which("rpm"):
        out = subprocess.run(["rpm", "--eval", f'%{{lua: print(rpm.vercmp("{a}", "{b}"))}}'],
                             capture_output=True, text=True).stdout.strip()
        assert int(out) == want, f"rpm says {out} for {a} vs {b}"


def test_evr_relations():
    assert rpmmd.compare_evr("1:1.0-1", "2.0-1") > 0
    assert rpmmd.relation_holds("1.2-5.fc40", ">=", "1.2")  # no release asked: any release
    assert not rpmmd.relation_holds("1.2-5.fc40", "=", "1.2-6.fc40")
    assert rpmmd.rich_requirement("(a or b)")[0] == [(rpmmd.Atom("a"), rpmmd.Atom("b"))]
    groups, conds = rpmmd.rich_requirement("(a >= 2 and (b or c))")
    assert groups == [(rpmmd.Atom("a", ">=", "2"),), (rpmmd.Atom("b"), rpmmd.Atom("c"))]
    groups, conds = rpmmd.rich_requirement("(a if b)")
    assert groups == [] and conds[0].cond == rpmmd.Atom("b")
    assert "unsupported" in rpmmd.rich_requirement("(a unless b)")[0][0][0].name


def _lock(tmp_path, server, packages, **kw):
    from repos import make_rpm_recipe as rpm_recipe  # a registered plugin by now

    recipe = recipe_mod.load(rpm_recipe(tmp_path / "recipe", server, packages, **kw))
    return lock_recipe(recipe, Cache(tmp_path / "cache"))[0]


def _names(data):
    return {p["name"]: p["version"] for p in data["package"]}


@pytest.mark.parametrize("repo", ["gz", "zst", "xz"])
def test_closure(tmp_path, rpm_server, rpm_recipe, repo):
    assert _names(_lock(tmp_path, rpm_server, ["rapp"], repo=repo)) == {
        "rapp": "1.0-1",
        "rlib": "1:1.0-1",  # the epoch wins over 2.0, and 1:1.0 >= 2.0 holds
        "rshell": "1.0-1",  # Requires: /usr/bin/rsh-t (a file provide)
        "rless": "1.0-1",  # (rless or rmore): the first
        "rvirtprov": "1.0-1",  # Requires: rvirt, Provides: rvirt = 5
    }  # (rextra if rtrigger): rtrigger absent; Recommends: rdoc is weak, off


def test_conditional_weak_and_tilde(tmp_path, rpm_server, rpm_recipe):
    names = _names(_lock(tmp_path, rpm_server, ["rapp", "rtrigger", "rtl"],
                         extra={"recommends": True}))
    assert "rextra" in names and "rdoc" in names and names["rtl"] == "1.0-1"


def test_unsatisfiable_chain(tmp_path, rpm_server, rpm_recipe):
    with pytest.raises(InputError) as exc:
        _lock(tmp_path, rpm_server, ["rbroken"])
    assert exc.value.where == "rbroken → rlib (>= 2:1.0)"  # 1:1.0 is too old, 2.0 too


def test_deterministic(tmp_path, rpm_server, rpm_recipe):
    assert dumps(_lock(tmp_path / "a", rpm_server, ["rapp"])) == \
        dumps(_lock(tmp_path / "b", rpm_server, ["rapp"]))


def test_signed_repomd(tmp_path, rpm_server, rpm_recipe, gpg_keys):
    data = _lock(tmp_path, rpm_server, ["rless"], gpgkey=str(gpg_keys["good"].armored))
    assert data["repository"][0]["metadata"] == "repomd.xml"
    with pytest.raises(InputError, match="signature verification failed"):
        _lock(tmp_path / "e", rpm_server, ["rless"], repo="evil",
              gpgkey=str(gpg_keys["good"].armored))
    with pytest.raises(InputError, match="not signed"):
        _lock(tmp_path / "u", rpm_server, ["rless"], repo="zst",
              gpgkey=str(gpg_keys["good"].armored))


def test_lock_and_build(tmp_path, rpm_server, rpm_recipe):
    recipe = rpm_recipe(tmp_path / "r", rpm_server, ["rapp"])
    env = {"SYSEXT_PIPELINE_CACHE": str(tmp_path / "cache")}
    assert run_cli("lock", str(recipe), env=env).returncode == 0
    proc = run_cli("build", str(recipe), "-o", str(tmp_path / "out"), env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out/resolved/usr/bin/rsh-t").is_file()
    assert (tmp_path / "out/resolved/usr/share/test/rlib").read_text() == "rlib 1.0\n"
