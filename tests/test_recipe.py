"""Recipe validation: every mistake is one line naming the file, the key and what is allowed."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import REPO, run_cli, write_recipe
from prereq import require_tool

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
    (BASE + '[[source]]\ndeb = "https://example.invalid/x.deb"\n', "source #1 (deb = \"https://example.invalid/x.deb\").sha256: required"),
    (BASE + '[[source]]\napt = "jq"\n', "source #1 (apt = \"jq\"): apt source 'jq' needs version and sha256"),
    (BASE + '[[source]]\ndeb = "a.deb"\nrpm = "b.rpm"\n', "needs exactly one of deb, rpm, apt"),
    (BASE + '[[source]]\ndeb = "a.deb"\nsha256 = "ABC"\n', "must be 64 lowercase hex digits"),
    (BASE + '[[source]]\ndeb = "a.deb"\nfrom = "x"\n', "source #1 (deb = \"a.deb\").from: unknown key"),
    (BASE + '[files]\n"usr/x" = { content = "a", mode = "rw" }\n', "is not an octal mode"),
    (BASE + '[files]\n"usr/../x" = { content = "a" }\n', "without . or .. parts"),
    (BASE + '[files]\n"usr/x" = { from = "nothere" }\n', "is not a file"),
    (BASE + '[owners]\nusers = { daemon = "one" }\n', "owners.users.daemon"),
    ("[extension\n", "not valid TOML"),
    (BASE + '[image]\ncompression = "gzip"\ncompression_level = 15\n',
     "image.compression_level: 15 is out of range for squashfs gzip (allowed: 1-9)"),
    (BASE + '[image]\ncompression_level = 23\n', "image.compression_level"),
    (BASE + '[image]\ncompression = "xz"\ncompression_level = 6\n',
     "image.compression_level: squashfs xz takes no level"),
    (BASE + '[image]\ncompression = "lz4"\ncompression_level = 1\n',
     "image.compression_level: squashfs lz4 takes no level"),
    (BASE + '[image]\nformat = "erofs"\ncompression = "lz4"\ncompression_level = 1\n',
     "image.compression_level: erofs lz4 takes no level"),
    (BASE + '[image]\nformat = "erofs"\ncompression_level = 13\n',
     "13 is out of range for erofs lz4hc (allowed: 0-12)"),
    (BASE + '[image]\nformat = "ddi"\nfilesystem = "squashfs"\ncompression = "gzip"\n'
     'compression_level = 10\n', "out of range for squashfs gzip"),
    (BASE.replace('"debian"', '"Debian"'), "target.id: 'Debian' is not a valid os-release ID="),
    (BASE.replace('"debian"', '"Debian"'), "use 'debian'"),
    (BASE + 'version_id = "12A"\n', "target.version_id: '12A' is not a valid os-release"),
    (BASE + 'sysext_level = "Level 1"\n', "target.sysext_level"),
    (BASE + 'sysext_level = "1.0A"\n', "use '1.0a'"),
    (BASE + '[files]\n"etc/x" = { from = "../../../../../../../etc/shadow" }\n',
     "files.'etc/x'.from: '../../../../../../../etc/shadow' is outside the recipe's directory"),
    (BASE + '[files]\n"etc/x" = { from = "/etc/hostname" }\n', "is outside the recipe's"),
])
def test_bad_recipe(tmp_path, text, expected):
    assert expected in error_of(tmp_path, text)


@pytest.mark.parametrize("image", [
    'compression = "zstd"\ncompression_level = 22', 'compression = "zstd"\ncompression_level = 1',
    'compression = "gzip"\ncompression_level = 9', 'compression = "lzo"\ncompression_level = 9',
    'format = "erofs"\ncompression_level = 0', 'format = "erofs"\ncompression_level = 12',
])
def test_good_compression_levels(tmp_path, image):
    assert recipe_mod.load(write_recipe(tmp_path, BASE + f"[image]\n{image}\n"))


@pytest.mark.parametrize("fs, compression", sorted(recipe_mod.COMPRESSION_LEVELS))
def test_level_ranges_are_what_the_tools_accept(tmp_path, fs, compression):
    """The table is the real mksquashfs/mkfs.erofs behaviour: both ends work, one past fails."""
    low, high = recipe_mod.COMPRESSION_LEVELS[(fs, compression)]
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"some data " * 100)

    def run(level: int) -> int:
        out = tmp_path / f"img-{level}"
        if fs == "squashfs":
            require_tool("mksquashfs", "squashfs-tools")
            cmd = ["mksquashfs", str(src), str(out), "-noappend", "-no-progress", "-quiet",
                   "-comp", compression, "-Xcompression-level", str(level)]
        else:
            require_tool("mkfs.erofs", "erofs-utils")
            cmd = ["mkfs.erofs", "--quiet", f"-z{compression},{level}", "-T0",
                   "-U00000000-0000-0000-0000-000000000001", str(out), str(src)]
        return subprocess.run(cmd, capture_output=True).returncode

    assert run(low) == 0 and run(high) == 0
    assert run(high + 1) != 0
    if fs == "squashfs":
        assert run(low - 1) != 0


def test_files_from_symlink_out_of_the_recipe_directory(tmp_path):
    (tmp_path / "files").mkdir()
    (tmp_path / "files/inside").write_text("ok\n")
    (tmp_path / "files/shadow").symlink_to("/etc/shadow")
    line = error_of(tmp_path, BASE + '[files]\n"etc/x" = { from = "files/shadow" }\n')
    assert "files.'etc/x'.from: 'files/shadow' is outside the recipe's directory" in line
    recipe = recipe_mod.load(write_recipe(
        tmp_path, BASE + '[files]\n"etc/x" = { from = "files/inside" }\n'))
    assert recipe.files[0].source == (tmp_path / "files/inside").resolve()


def test_any_and_lowercase_ids_are_fine(tmp_path):
    for target in ('id = "_any"\narchitecture = "x86-64"\n',
                   'id = "opensuse-leap"\nversion_id = "15.5"\nsysext_level = "1_2-b"\n'):
        text = '[extension]\nname = "x"\n[target]\n' + target
        assert recipe_mod.load(write_recipe(tmp_path, text)).target["id"]


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


def test_command_table_matches_what_modules_register():
    """cli.COMMANDS must name, for every command, the module that registers it."""
    import argparse
    import importlib

    from pipeline.commands import cli

    for module in set(cli.COMMANDS.values()):
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(f"pipeline.commands.{module}").register(sub)
        registered = set(sub.choices) - {"generate"}  # a sub-action of `keys`
        assert registered == {c for c, m in cli.COMMANDS.items() if m == module}, module
