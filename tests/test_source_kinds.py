"""The source-kind registry (pipeline/sources/kinds.py): every kind a recipe or a lock makes is
registered, the built-in entries keep the names the manifest and plan print, and a new kind is
one registry entry: a kind registered here (and only here) is parsed from a recipe, fetched into
the cache, stored by ``fetch --store``, passed through the lock and labelled — with no other
edit."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from conftest import write_recipe
from pkgfactory import PkgFile, build_deb

from pipeline import recipe as recipe_mod
from pipeline.errors import InputError
from pipeline.sources import kinds, lock
from pipeline.sources.fetch import Cache, LockedSource, NotInStore, fetch_one

HEAD = '[extension]\nname = "x"\n[target]\nid = "debian"\n'
SHA = "ab" * 32


def test_every_kind_a_recipe_or_lock_makes_is_registered(tmp_path):
    (tmp_path / "a.deb").write_bytes(b"")
    path = write_recipe(tmp_path, HEAD + f"""
[[source]]
deb = "a.deb"
[[source]]
rpm = "https://example.invalid/b-1-1.x86_64.rpm"
sha256 = "{SHA}"
[[source]]
apt = "jq"
version = "1.6-2.1"
sha256 = "{SHA}"
[[source]]
packages = ["strace"]
[[repository]]
type = "deb"
mirror = "host"
suite = "bookworm"
""")
    recipe = recipe_mod.load(path)
    assert [s.kind for s in recipe.sources] == ["file", "url", "apt", "packages"]
    locked = LockedSource("deb", "https://example.invalid/pool/jq.deb", SHA, names=("jq",))
    assert locked.kind == "locked"
    for source in (*recipe.sources, locked):
        assert kinds.of(source).name == source.kind
    assert set(kinds.KINDS) == {"file", "url", "apt", "packages", "locked"}


def _source(kind: str) -> recipe_mod.Source:
    return {
        "file": recipe_mod.Source("deb", "/r/pkgs/jq_1.6-2.1_amd64.deb", None,
                                  label="pkgs/jq_1.6-2.1_amd64.deb"),
        "url": recipe_mod.Source("rpm", "https://example.invalid/jq-1.6-9.fc39.x86_64.rpm", SHA),
        "apt": recipe_mod.Source("apt", "jq", SHA, version="1.6-2.1"),
        "packages": recipe_mod.Source("packages", "", None, names=("jq", "strace")),
        "locked": LockedSource("deb", "https://m.invalid/debian/pool/j/jq_1.6-2.1_amd64.deb", SHA,
                               label="bookworm:pool/j/jq_1.6-2.1_amd64.deb", names=("jq",),
                               version="1.6-2.1", architecture="amd64"),
    }[kind]


@pytest.mark.parametrize("kind, filename, label, describe, claim, stored", [
    ("file", "jq_1.6-2.1_amd64.deb", "pkgs/jq_1.6-2.1_amd64.deb",
     "deb /r/pkgs/jq_1.6-2.1_amd64.deb", ("jq", "1.6-2.1", "amd64", False), False),
    ("url", "jq-1.6-9.fc39.x86_64.rpm", "https://example.invalid/jq-1.6-9.fc39.x86_64.rpm",
     "rpm https://example.invalid/jq-1.6-9.fc39.x86_64.rpm", ("jq", "1.6-9.fc39", "x86_64", False),
     True),
    ("apt", "jq=1.6-2.1", "apt:jq=1.6-2.1", f"apt jq=1.6-2.1 (sha256 {SHA})",
     ("jq", "1.6-2.1", None, True), True),
    ("packages", "packages jq strace", "packages jq strace", "packages jq strace", None, False),
    ("locked", "jq_1.6-2.1_amd64.deb", "bookworm:pool/j/jq_1.6-2.1_amd64.deb",
     "deb https://m.invalid/debian/pool/j/jq_1.6-2.1_amd64.deb", ("jq", "1.6-2.1", "amd64", True),
     True),
])
def test_builtin_kind_names(kind, filename, label, describe, claim, stored):
    """The words the manifest (label), plan (describe) and messages (filename) use, per kind."""
    source = _source(kind)
    entry = kinds.of(source)
    assert (entry.filename(source), entry.label(source), entry.describe(source)) == \
        (filename, label, describe)
    got = entry.claim(source, entry.filename(source))
    assert (None if got is None else (got.name, got.version, got.architecture, got.with_epoch)) \
        == claim
    assert entry.stored is stored
    assert entry.resolved is (kind == "packages")
    assert (kinds.label(source), kinds.describe(source)) == (label, describe)
    assert kinds.claim(source, filename) == got


@pytest.mark.parametrize("kind, expected", [
    ("apt", "jq_1.6-2.1_amd64.deb"),  # the archive's name, not apt-get's jq=1.6-2.1
    ("url", "fetched-name.rpm"), ("locked", "fetched-name.rpm"), ("file", "fetched-name.rpm"),
])
def test_archive_name(kind, expected):
    from types import SimpleNamespace

    info = SimpleNamespace(name="jq", version="1:1.6-2.1", architecture="amd64")
    assert kinds.archive_name(_source(kind), "fetched-name.rpm", info) == expected


def test_recipe_files_are_the_local_packages(tmp_path):
    assert kinds.of(_source("file")).recipe_files(_source("file")) == \
        [Path("/r/pkgs/jq_1.6-2.1_amd64.deb")]
    for kind in ("url", "apt", "packages", "locked"):
        assert kinds.of(_source(kind)).recipe_files(_source(kind)) == []


def test_a_packages_source_is_never_fetched_itself(tmp_path):
    with pytest.raises(InputError, match="a packages source is not fetched itself"):
        fetch_one(_source("packages"), Cache(tmp_path / "cache"))


def test_unknown_kind_is_one_line(tmp_path):
    source = recipe_mod.Source("deb", "x.deb", None, kind="carrier-pigeon")
    with pytest.raises(InputError, match="unknown source kind 'carrier-pigeon'") as info:
        kinds.of(source)
    assert "known: file, url" in info.value.line()


# --- a new kind is one registry entry --------------------------------------------------------


def _copy(source, tmp: Path, net) -> tuple[Path, str]:
    """The test kind's "download": a copy from a directory (no transport of fetch's needed)."""
    name = Path(source.ref).name
    shutil.copyfile(source.ref, tmp / name)
    return tmp / name, name


SHELF = kinds.SourceKind(
    "shelf", "A package file copied from a shelf directory into the cache (test only).",
    download=_copy, filename=lambda s: Path(s.ref).name, label=lambda s: f"shelf:{s.ref}",
    describe=lambda s: f"shelf {s.ref}", claim=lambda s, filename: None, origin="shelf",
    recipe_key=recipe_mod.Key(
        "source", "shelf", str, "A package file on the shelf (test only).", '"jq.deb"',
        selects=lambda value: "shelf",
        to_source=lambda value, base: {"ref": str(Path(value).resolve()), "label": None}))


@pytest.fixture
def shelf_recipe(tmp_path):
    shelf = tmp_path / "shelf"
    deb = build_deb(shelf, "hello", "1.0", [PkgFile("usr/bin/hello", content=b"hi\n",
                                                    mode=0o755)])
    path = write_recipe(tmp_path / "r", HEAD + f'[[source]]\nshelf = "{deb}"\n'
                        f'sha256 = "{hashlib.sha256(deb.read_bytes()).hexdigest()}"\n')
    return path, deb


def test_a_new_kind_is_one_registry_entry(tmp_path, shelf_recipe, capsys):
    path, deb = shelf_recipe
    digest = hashlib.sha256(deb.read_bytes()).hexdigest()
    with kinds.registered(SHELF):
        recipe = recipe_mod.load(path)  # parsed: the kind brought its recipe key
        (source,) = recipe.sources
        assert (source.kind, source.ref, source.sha256) == ("shelf", str(deb), digest)
        # locked: the lock passes it through (only resolved kinds are expanded)
        assert lock.expand_sources(recipe) == [source] and not lock.packages_sources(recipe)
        # fetched into the cache through the kind's download, then found there
        cache = Cache(tmp_path / "cache")
        with pytest.raises(NotInStore, match="hello_1.0_amd64.deb: not in the cache/store"):
            fetch_one(source, cache, offline=True)
        got = fetch_one(source, cache)
        assert (got.origin, got.sha256, got.filename) == ("shelf", digest, deb.name)
        assert got.path == cache.path_for(digest) and got.path.read_bytes() == deb.read_bytes()
        assert fetch_one(source, cache, offline=True).origin == "cache"
        # labelled and described through the entry
        assert kinds.of(source).label(source) == f"shelf:{deb}"
        # stored by `fetch --store` (the command asks the registry, not the kind's name)
        from pipeline.commands import cli

        store = tmp_path / "store"
        assert cli.main(["fetch", str(path), "--store", str(store), "-q"]) == 0
        assert Cache(store).lookup(digest) is not None
    # gone with its registration: the recipe key is unknown again
    with pytest.raises(InputError, match=r"source #1\.shelf: unknown key"):
        recipe_mod.load(path)
    assert "shelf" not in kinds.KINDS


def test_a_kind_and_its_key_register_once():
    with kinds.registered(SHELF):
        with pytest.raises(ValueError, match="already registered"):
            kinds.register(SHELF)
    with pytest.raises(ValueError, match="source.deb is already declared"):
        kinds.register(kinds.SourceKind(
            "other", "", download=None, filename=str, label=str, describe=str,
            claim=lambda s, f: None, recipe_key=recipe_mod.keys("source")[0]))
    assert "other" not in kinds.KINDS
