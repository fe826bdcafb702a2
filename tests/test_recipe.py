"""Recipe validation: every mistake is one line naming the file, the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO, run_cli, write_recipe

from pipeline import recipe as recipe_mod
from pipeline.errors import InputError

BASE = '[extension]\nname = "x"\n[target]\nid = "debian"\n'


def error_of(tmp_path: Path, text: str) -> str:
    path = write_recipe(tmp_path, text)
    with pytest.raises(InputError) as info:
        recipe_mod.load(path)
    line = info.value.line()
    assert str(path) in line and "\n" not in line
    return line


@pytest.mark.parametrize("text, expected", [
    (BASE + "colour = 1\n", "target.colour: unknown key (allowed: id, version_id"),
    (BASE + "[images]\n", "images: unknown section"),
    ('[extension]\nname = "x"\n', "target.id: missing"),
    (BASE.replace('"x"', "5"), "extension.name: must be a string, not integer"),
    (BASE.replace('"x"', '"x.raw"'), "must not end in .raw"),
    (BASE.replace('"x"', '"../x"'), "must start with a letter or digit"),
    (BASE + 'architecture = "x86_64"\n', "use 'x86-64'"),
    (BASE + 'architecture = "aarch64"\n', "use 'arm64'"),
    (BASE.replace('"x"\n', '"x"\nkind = "sysext"\n') + 'confext_level = "1"\n',
     "target.confext_level: this recipe never makes a confext"),
    (BASE.replace('"x"\n', '"x"\nkind = "confext"\n') + '[policy]\netc = "drop"\n',
     "policy.etc: applies to sysext and auto recipes only"),
    (BASE + '[policy]\nvar = "keep"\n', "policy.var: 'keep' must be one of"),
    (BASE + 'scope = ["system", "everywhere"]\n', "target.scope"),
    (BASE + 'version_id = "12 beta"\n', "target.version_id"),
    (BASE + '[image]\nformat = "ext4"\n', "image.format: 'ext4' must be one of"),
    (BASE + '[image]\nformat = "erofs"\ncompression = "zstd"\n',
     "'zstd' is not available for erofs (allowed: lz4hc, lz4, none)"),
    (BASE + '[image]\nsource_date_epoch = -5\n', "image.source_date_epoch"),
    (BASE + '[image]\nsource_date_epoch = true\n', "must be an integer, not boolean"),
    (BASE + '[[source]]\ndeb = "https://example.invalid/x.deb"\n', "source[0].sha256: required"),
    (BASE + '[[source]]\napt = "jq"\n', "source[0]: apt source 'jq' needs version and sha256"),
    (BASE + '[[source]]\ndeb = "a.deb"\nrpm = "b.rpm"\n', "needs exactly one of deb, rpm, apt"),
    (BASE + '[[source]]\ndeb = "a.deb"\nsha256 = "ABC"\n', "must be 64 lowercase hex digits"),
    (BASE + '[[source]]\ndeb = "a.deb"\nfrom = "x"\n', "source[0].from: unknown key"),
    (BASE + '[files]\n"usr/x" = { content = "a", mode = "rw" }\n', "is not an octal mode"),
    (BASE + '[files]\n"usr/../x" = { content = "a" }\n', "without . or .. parts"),
    (BASE + '[files]\n"usr/x" = { from = "nothere" }\n', "is not a file"),
    (BASE + '[owners]\nusers = { daemon = "one" }\n', "owners.users.daemon"),
    ("[extension\n", "not valid TOML"),
])
def test_bad_recipe(tmp_path, text, expected):
    assert expected in error_of(tmp_path, text)


def test_defaults(tmp_path):
    recipe = recipe_mod.load(write_recipe(tmp_path, BASE))
    assert (recipe.kind, recipe.format, recipe.compression, recipe.mtime) == \
        ("auto", "squashfs", "zstd", "set")
    assert (recipe.etc_policy, recipe.var_policy) == ("confext", "tmpfiles")
    assert recipe.target["architecture"] == "auto" and recipe.target["scope"] is None


def test_cli_bad_recipe_exit_code_and_one_line(tmp_path):
    path = write_recipe(tmp_path, BASE + 'architecture = "x86_64"\n')
    proc = run_cli("build", str(path), "-o", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"error: {path}: ")
    assert not (tmp_path / "out").exists()


def test_reference_doc_is_current():
    """docs/recipes.md is generated from the schema; regenerate with `recipe-reference`."""
    assert (REPO / "docs/recipes.md").read_text() == recipe_mod.reference_markdown() + "\n"


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "recipes").glob("*.toml")))
def test_shipped_recipes_are_valid(name):
    recipe = recipe_mod.load(REPO / "recipes" / name)
    assert recipe.name


def test_include_merges_tables_and_hashes_both_files(tmp_path):
    base = write_recipe(tmp_path, BASE + 'version_id = "12"\n[image]\nformat = "erofs"\n'
                        'compression = "lz4"\n', "base.toml")
    variant = write_recipe(tmp_path, 'include = "base.toml"\n[image]\ncompression = "none"\n',
                           "variant.toml")
    recipe = recipe_mod.load(variant)
    assert (recipe.name, recipe.target["version_id"], recipe.format, recipe.compression) == \
        ("x", "12", "erofs", "none")
    first = recipe.sha256
    base.write_text(base.read_text().replace('"12"', '"13"'))
    assert recipe_mod.load(variant).sha256 != first  # a lock must see the base change


@pytest.mark.parametrize("text, expected", [
    ('include = "self.toml"\n', "includes itself"),
    ('include = "../elsewhere.toml"\n', "must name a .toml recipe in the same directory"),
    ('include = "missing.toml"\n', "cannot read recipe"),
])
def test_bad_include(tmp_path, text, expected):
    path = write_recipe(tmp_path, text, "self.toml")
    with pytest.raises(InputError) as info:
        recipe_mod.load(path)
    assert expected in info.value.line()
