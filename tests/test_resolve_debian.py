"""Debian resolution against an apt-ftparchive archive signed with a throw-away key."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from pipeline import recipe as recipe_mod
from pipeline.errors import InputError
from pipeline.sources import debian, metadata
from pipeline.sources.fetch import Cache
from pipeline.sources.lock import dumps, lock_recipe

VERSIONS = [
    ("1.0", "1.0", 0), ("1.0", "1.1", -1), ("1.0~rc1", "1.0", -1), ("1.0", "1.0+b1", -1),
    ("1:0.5", "2.0", 1), ("1.0-1", "1.0-1.1", -1), ("1.0-1", "1.0", 1), ("1.10", "1.9", 1),
    ("2.36-9+deb12u7", "2.36-9+deb12u10", -1), ("1.0a", "1.0", 1), ("1.0~~", "1.0~", -1),
    ("0:1.0", "1.0", 0), ("1.0.", "1.0", 1), ("3.0-1ubuntu1", "3.0-1", 1), ("1.002", "1.2", 0),
]

pytest_plugins = ["repos"]  # the archive, key and server fixtures


@pytest.mark.parametrize("a,b,want", VERSIONS)
def test_version_order_matches_dpkg(a, b, want):
    got = debian.compare_versions(a, b)
    assert (got > 0) - (got < 0) == want
    if shutil.which("dpkg"):
        for op, holds in (("lt", want < 0), ("eq", want == 0), ("gt", want > 0)):
            rc = subprocess.run(["dpkg", "--compare-versions", a, op, b]).returncode
            assert (rc == 0) == holds, f"dpkg disagrees: {a} {op} {b}"


def test_relations_parse():
    groups = debian.parse_relations("libc6 (>= 2.34), a | b:any (<< 3) [amd64], c:native <!nocheck>")
    assert [[str(a) for a in g] for g in groups] == [["libc6 (>= 2.34)"], ["a", "b:any (< 3)"],
                                                     ["c:native"]]
    assert debian.parse_provides("x (= 1), y") == (("x", "1"), ("y", None))
    with pytest.raises(InputError, match="cannot parse"):
        debian.parse_relations("foo (>= )")


def _lock(tmp_path, archive, packages, **kw):
    from repos import make_deb_recipe as deb_recipe  # a registered plugin by now

    recipe = recipe_mod.load(deb_recipe(tmp_path / "recipe", archive, packages, **kw))
    data, _ = lock_recipe(recipe, Cache(tmp_path / "cache"))
    return data, recipe


def _names(data):
    return {p["name"]: p["version"] for p in data["package"]}


def test_closure_versions_alternatives_virtuals(tmp_path, deb_archive, deb_recipe):
    data, _ = _lock(tmp_path, deb_archive, ["app"])
    assert _names(data) == {
        "app": "1.0",
        "libfoo": "2.1",  # versioned: the 1.0 in the pool is too old
        "less-alt": "1.0",  # missing-pkg | less-alt | more-alt: first satisfiable, not more-alt
        "mawk-t": "1.0",  # awk-virt: both provide it; Priority required beats optional
        "data-all": "1.0",  # Architecture: all satisfies an amd64 package
        "libbar3": "3.0",  # libbar-abi (>= 2) through a versioned Provides (libbar1 has = 1)
        "py-t": "1.0",  # py-t:any with Multi-Arch: allowed
        "prelib": "1.0",  # Pre-Depends count
    }  # app-doc: Recommends are off by default
    app = next(p for p in data["package"] if p["name"] == "app")
    assert app["requested"] is True and app["path"] == "pool/stable/app_1.0_amd64.deb"
    assert next(p for p in data["package"] if p["name"] == "libfoo")["required_by"] == "app"


def test_recommends_base_and_epochs(tmp_path, deb_archive, deb_recipe):
    (tmp_path / "recipe").mkdir()
    (tmp_path / "recipe" / "base.txt").write_text("# what the host has\nprelib\nlibfoo 2.1\n")
    data, _ = _lock(tmp_path, deb_archive, ["app", "ep-t", "tl-t"], base="base.txt",
                    extra={"recommends": True})
    names = _names(data)
    assert "app-doc" in names  # recommends = true
    assert "prelib" not in names and "libfoo" not in names  # the base has them
    assert names["ep-t"] == "1:0.5" and names["tl-t"] == "1.0"


def test_base_version_too_old_is_an_error(tmp_path, deb_archive, deb_recipe):
    (tmp_path / "recipe").mkdir()
    (tmp_path / "recipe" / "base.txt").write_text("libfoo 1.0\n")
    with pytest.raises(InputError, match="the base has libfoo") as exc:
        _lock(tmp_path, deb_archive, ["app"], base="base.txt")
    assert "app → libfoo (>= 2.0)" in exc.value.where


def test_base_from_dpkg_status(tmp_path, deb_archive, deb_recipe):
    status = tmp_path / "recipe" / "os" / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text("Package: gawk-t\nStatus: install ok installed\nVersion: 1.0\n"
                      "Architecture: amd64\nProvides: awk-virt\n\n"
                      "Package: less-alt\nStatus: deinstall ok config-files\nVersion: 1.0\n"
                      "Architecture: amd64\n")
    names = _names(_lock(tmp_path, deb_archive, ["app"], base="os")[0])
    assert "mawk-t" not in names and "gawk-t" not in names  # awk-virt: the installed provider
    assert "less-alt" in names  # only config files left: not installed


def test_cycle_terminates(tmp_path, deb_archive, deb_recipe):
    assert _names(_lock(tmp_path, deb_archive, ["cyc-a"])[0]) == {"cyc-a": "1.0", "cyc-b": "1.0"}


def test_unsatisfiable_names_the_chain(tmp_path, deb_archive, deb_recipe):
    with pytest.raises(InputError) as exc:
        _lock(tmp_path, deb_archive, ["wrapper"])
    assert exc.value.where == "wrapper → broken → libfoo (>= 9)"
    assert "unsatisfiable" in exc.value.what
    with pytest.raises(InputError, match="requested: no-such-package"):
        _lock(tmp_path, deb_archive, ["no-such-package"])


def test_conflicts_name_both_chains(tmp_path, deb_archive, deb_recipe):
    with pytest.raises(InputError, match="conflicts with less-alt") as exc:
        _lock(tmp_path, deb_archive, ["app", "conflictor"])
    assert "app → less-alt" in exc.value.line()
    with pytest.raises(InputError, match="libfoo 2.1 .amd64. is already selected"):
        _lock(tmp_path, deb_archive, ["app", "old-user"])


def test_deterministic_bytes(tmp_path, deb_archive, deb_recipe):
    one, _ = _lock(tmp_path / "a", deb_archive, ["app", "tool", "cyc-b"])
    two, _ = _lock(tmp_path / "b", deb_archive, ["app", "tool", "cyc-b"])
    assert dumps(one) == dumps(two)
    names = [p["name"] for p in one["package"]]
    assert names == sorted(names)


def test_metadata_cached_by_hash(tmp_path, deb_archive, deb_recipe):
    _lock(tmp_path, deb_archive, ["tool"])
    deb_archive.server.requests.clear()
    _lock(tmp_path, deb_archive, ["tool"])
    assert deb_archive.server.paths() == ["/dists/stable/InRelease"]


def test_release_gpg_only(tmp_path, deb_archive, deb_recipe):
    deb_archive.publish("detached", [p for p in deb_archive.root.glob("pool/stable/*")],
                        sign="detached")
    data, _ = _lock(tmp_path, deb_archive, ["tool"], suite="detached")
    assert data["repository"][0]["metadata"] == "Release"


def test_unsigned_release_refused_when_a_key_is_given(tmp_path, deb_archive, deb_recipe):
    deb_archive.publish("unsigned", list(deb_archive.root.glob("pool/stable/*")), sign="none")
    with pytest.raises(InputError, match="not signed"):
        _lock(tmp_path, deb_archive, ["tool"], suite="unsigned")


def test_wrong_key_refused(tmp_path, deb_archive, deb_recipe, gpg_keys):
    deb_archive.publish("evil", list(deb_archive.root.glob("pool/stable/*")),
                        key=gpg_keys["evil"])
    with pytest.raises(InputError, match="signature verification failed"):
        _lock(tmp_path, deb_archive, ["tool"], suite="evil")


def test_armored_keyring_accepted(tmp_path, deb_archive, deb_recipe):
    data, _ = _lock(tmp_path, deb_archive, ["tool"], keyring=str(deb_archive.key.armored))
    assert _names(data) == {"tool": "1.0", "libtool1": "1.0"}


def test_tampered_index_refused(tmp_path, deb_archive, deb_recipe):
    deb_archive.publish("tampered", list(deb_archive.root.glob("pool/stable/*")), tamper=True)
    with pytest.raises(InputError, match="sha256 mismatch|more than the .* root file records"):
        _lock(tmp_path, deb_archive, ["tool"], suite="tampered")
    assert not list((tmp_path / "cache" / "sha256").rglob("*")) or all(
        p.is_dir() for p in (tmp_path / "cache" / "sha256").rglob("*"))


def test_no_keyring_needs_allow_unsigned(tmp_path, deb_archive, deb_recipe):
    recipe_path = deb_recipe(tmp_path / "recipe", deb_archive, ["tool"])
    text = recipe_path.read_text().replace(f'keyring = "{deb_archive.key.keyring}"', "")
    recipe_path.write_text(text)
    with pytest.raises(InputError, match="no keyring"):
        lock_recipe(recipe_mod.load(recipe_path), Cache(tmp_path / "cache"))
    recipe_path.write_text(text.replace('suite = "stable"', 'suite = "stable"\nallow_unsigned = true'))
    data, _ = lock_recipe(recipe_mod.load(recipe_path), Cache(tmp_path / "cache"))
    assert data["repository"][0]["metadata"] == "Release"


def test_host_mirror_from_apt_sources(tmp_path, monkeypatch):
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list").write_text("# old style\ndeb [arch=amd64 signed-by=/k/old.gpg] "
                                      "http://one.invalid/debian oldstable main\n")
    (etc / "sources.list.d" / "debian.sources").write_text(
        "Types: deb deb-src\nURIs: http://two.invalid/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /k/debian.gpg\n\n"
        "Types: deb\nURIs: http://sec.invalid/debian-security\nSuites: bookworm-security\n"
        "Components: main\n")
    assert metadata.host_mirror("bookworm", etc) == ("http://two.invalid/debian", "/k/debian.gpg")
    assert metadata.host_mirror("bookworm-security", etc) == ("http://sec.invalid/debian-security",
                                                              None)
    assert metadata.host_mirror("oldstable", etc) == ("http://one.invalid/debian", "/k/old.gpg")
    with pytest.raises(InputError, match="no deb source for suite trixie"):
        metadata.host_mirror("trixie", etc)
    monkeypatch.setenv("MY_MIRROR", "http://env.invalid/x")
    assert metadata.expand("$MY_MIRROR/os", "w") == "http://env.invalid/x/os"
    monkeypatch.delenv("MY_MIRROR")
    with pytest.raises(InputError, match=r"\$MY_MIRROR is not set"):
        metadata.expand("${MY_MIRROR}/os", "w")


@pytest.mark.parametrize("body,match", [
    ('[[repository]]\ntype = "deb"\nsuite = "x"\n', "mirror: missing"),
    ('[[repository]]\ntype = "deb"\nmirror = "ftp://x"\nsuite = "x"\n', "not host, an http"),
    ('[[repository]]\ntype = "deb"\nmirror = "host"\n', "suite: missing"),
    ('[[repository]]\ntype = "yum"\n', "must be one of"),
    ('[[repository]]\ntype = "rpm-md"\nbaseurl = "$M"\nsuite = "x"\n', "does not apply to rpm-md"),
    ('[[repository]]\ntype = "deb"\nmirror = "host"\nsuite = "x"\ncomponents = "main"\n',
     "components: must be a list"),
    ('[[repository]]\ntype = "deb"\nmirror = "host"\nsuite = "x"\n[[repository]]\ntype = "deb"\n'
     'mirror = "host"\nsuite = "x"\n', "used twice"),
])
def test_repository_validation(tmp_path, body, match):
    path = tmp_path / "r.toml"
    path.write_text('[extension]\nname = "x"\n[target]\nid = "debian"\n[[source]]\n'
                    'packages = ["a"]\n' + body)
    with pytest.raises(InputError, match=match) as exc:
        recipe_mod.load(path)
    assert str(path) in exc.value.where


def test_packages_source_validation(tmp_path):
    path = tmp_path / "r.toml"
    head = '[extension]\nname = "x"\n[target]\nid = "debian"\n'
    path.write_text(head + '[[source]]\npackages = ["a"]\n')
    with pytest.raises(InputError, match="need at least one"):
        recipe_mod.load(path)
    path.write_text(head + '[[source]]\npackages = ["a b"]\n')
    with pytest.raises(InputError, match="non-empty list of package names"):
        recipe_mod.load(path)
    path.write_text(head + '[[source]]\napt = "jq"\nversion = "1"\nsha256 = "' + "0" * 64 +
                    '"\nrecommends = true\n')
    with pytest.raises(InputError, match="only applies to packages"):
        recipe_mod.load(path)


def test_expired_release_refused(tmp_path, deb_archive, deb_recipe):
    """Valid-Until in the past: a replayed (or stale) Release, refused as apt refuses it."""
    pool = list(deb_archive.root.glob("pool/stable/*"))
    deb_archive.publish("old", pool, valid_until="Sat, 01 Jan 2000 00:00:00 UTC")
    with pytest.raises(InputError, match=r"expired: Valid-Until Sat, 01 Jan 2000") as exc:
        _lock(tmp_path, deb_archive, ["tool"], suite="old")
    assert "\n" not in exc.value.line()
    deb_archive.publish("fresh", pool, valid_until="Fri, 01 Jan 2100 00:00:00 UTC")
    assert _names(_lock(tmp_path / "f", deb_archive, ["tool"], suite="fresh")[0])["tool"] == "1.0"


def test_release_of_another_suite_refused(tmp_path, deb_archive, deb_recipe):
    """A correctly signed Release of "stable" served as "testing" (a mix-up or a downgrade)."""
    import shutil

    shutil.copytree(deb_archive.root / "dists/stable", deb_archive.root / "dists/testing")
    with pytest.raises(InputError, match="InRelease: is for stable, not the requested "
                                         "suite testing"):
        _lock(tmp_path, deb_archive, ["tool"], suite="testing")


def test_requested_names_the_base_has_are_noted(tmp_path, deb_archive, deb_recipe):
    """Not silently dropped: the lock says why a requested name added nothing."""
    (tmp_path / "recipe").mkdir()
    (tmp_path / "recipe" / "base.txt").write_text("tool\nlibtool1\n")
    data, recipe = _lock(tmp_path, deb_archive, ["tool"], base="base.txt")
    assert data["package"] == []
    from conftest import run_cli

    proc = run_cli("lock", str(recipe.path), "-q",
                   env={"SYSEXT_PIPELINE_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    assert "note: tool is already in the base (target.base): not added" in proc.stderr
    assert data["notes"] == ["tool is already in the base (target.base): not added"]
    text = dumps(data)
    assert 'notes = ["tool is already in the base (target.base): not added"]' in text
    import tomllib

    assert tomllib.loads(text)["notes"] == data["notes"]


def test_equal_providers_of_a_virtual_package_warn(tmp_path, deb_archive, deb_recipe):
    from repos import make_deb_recipe

    recipe = recipe_mod.load(make_deb_recipe(tmp_path / "recipe", deb_archive, ["tie-user"]))
    warnings: list[str] = []
    data, _ = lock_recipe(recipe, Cache(tmp_path / "cache"), warn=warnings.append)
    assert "tie-a" in _names(data) and "tie-b" not in _names(data)
    from conftest import run_cli

    proc = run_cli("lock", str(recipe.path), "--json",
                   env={"SYSEXT_PIPELINE_CACHE": str(tmp_path / "cache")})
    assert "warning: tie-virt (for tie-user) is a virtual package" in proc.stderr
    assert '"warnings": [' in proc.stdout
    assert warnings == ["tie-virt (for tie-user) is a virtual package that tie-a and tie-b "
                        "provide with the same priority: took tie-a (the first by name); name "
                        "the one you want in packages to choose"]
    # naming one settles it, without a warning
    recipe = recipe_mod.load(make_deb_recipe(tmp_path / "r2", deb_archive, ["tie-b",
                                                                           "tie-user"]))
    warnings.clear()
    data, _ = lock_recipe(recipe, Cache(tmp_path / "cache"), warn=warnings.append)
    assert "tie-b" in _names(data) and "tie-a" not in _names(data) and warnings == []
    # awk-virt: mawk-t (required) beats gawk-t (optional): a decided choice, no warning
    recipe = recipe_mod.load(make_deb_recipe(tmp_path / "r3", deb_archive, ["app"]))
    data, _ = lock_recipe(recipe, Cache(tmp_path / "cache"), warn=warnings.append)
    assert warnings == []


def test_unsatisfiable_hint_offers_only_what_packages_can_say(tmp_path, deb_archive, deb_recipe):
    with pytest.raises(InputError) as exc:
        _lock(tmp_path, deb_archive, ["wrapper"])
    assert "name a version" not in exc.value.line()
    assert "naming the wanted alternative in packages" in exc.value.hint
