"""Issue 12 "One table of external tools": ``TOOLS`` in pipeline/tools.py is behind
``tools.find``'s hint, the manifest's tool versions, ``build``'s preflight (one line before
anything is fetched, per image format), ``doctor``, the README's list and noxfile.py's
SYSTEM_PACKAGES."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest
from conftest import REPO, run_cli, write_recipe

from pipeline import tools
from pipeline.errors import BuildError

# a source only the network has (nothing listens on port 9): a preflight error comes first
RECIPE = """
[extension]
name = "pre"
kind = "sysext"
[target]
id = "debian"
version_id = "12"
architecture = "x86-64"
[[source]]
deb = "http://127.0.0.1:9/pre_1.0_amd64.deb"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
[image]
source_date_epoch = 1700000000
{image}
"""


def test_every_row_is_complete_and_named_once():
    names = [t.name for t in tools.TOOLS]
    assert len(names) == len(set(names))
    for tool in tools.TOOLS:
        assert tool.packages and tool.uses and tool.why, tool.name
        if tool.minimum:
            assert tool.probe is not None, tool.name  # a minimum needs a way to ask


@pytest.mark.parametrize("name", [t.name for t in tools.TOOLS if t.minimum])
def test_installed_tools_with_a_minimum_answer_their_probe(name):
    """The manifest records these versions; each probe finds a number in the real answer."""
    state = tools.status(name)
    assert state.path, name
    assert state.version and state.version[0].isdigit(), (name, state.version)
    assert not state.too_old, (name, state.version, state.tool.minimum)


def test_manifest_versions_keep_their_form():
    """The probes moved into the table: the versions a manifest records are unchanged."""
    for name, pattern in (("mksquashfs", r"4.5.1"), ("mkfs.erofs", "1.5"),
                          ("systemd-repart", "252"), ("veritysetup", "2.6.1")):
        assert tools.version(name).startswith(pattern.split(".")[0]), name
    assert "." not in tools.version("systemd-repart")  # "252", not "252.38-1~deb12u1"


@pytest.mark.parametrize("found, minimum, older", [
    ("4.5.1", "4.5", False), ("4.4", "4.5", True), ("1.5", "1.5", False),
    ("252", "252", False), ("251.9", "252", True), ("252.38-1~deb12u1", "252", False),
    ("2.6.1", "2.10", True), ("unknown", "1.0", False)])
def test_version_comparison(found, minimum, older):
    assert tools.older(found, minimum) is older


def test_a_too_old_tool_is_one_line_naming_package_and_minimum():
    """The real mksquashfs, judged against a minimum it does not meet."""
    strict = (tools.Tool("mksquashfs", ("squashfs-tools",), ("build:squashfs",), "packs",
                         "99.0", (("-version",), r"version\s+(\S+)")),)
    with pytest.raises(BuildError) as err:
        tools.preflight("build", {"squashfs"}, table=strict)
    line = err.value.line()
    assert "\n" not in line
    assert f"mksquashfs {tools.version('mksquashfs')} is older than 99.0" in line
    assert "apt-get install squashfs-tools (>= 99.0)" in line
    tools.preflight("build", {"erofs"}, table=strict)  # not needed for erofs: no error


@pytest.mark.parametrize("image, missing, package", [
    ('format = "erofs"\nmtime = "set"', "mkfs.erofs", "erofs-utils"),
    ('format = "squashfs"', "mksquashfs", "squashfs-tools"),
    ('format = "ddi"\nfilesystem = "erofs"\nmtime = "set"', "mkfs.erofs, systemd-repart",
     "erofs-utils systemd-repart"),
])
def test_build_names_a_missing_tool_before_fetching(tmp_path, image, missing, package):
    """PATH without /usr/bin: the file system tools are really not there for the build."""
    recipe = write_recipe(tmp_path, RECIPE.format(image=image))
    proc = run_cli("build", str(recipe), "-o", str(tmp_path / "out"), "--cache-dir",
                   str(tmp_path / "cache"), env={"PATH": str(tmp_path / "empty")})
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: build: not installed: {missing}, needed by build")
    assert f"apt-get install {package}" in lines[0]
    assert "127.0.0.1" not in proc.stderr  # nothing was fetched
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.deb"))


def test_a_directory_image_needs_no_file_system_tool(tmp_path):
    recipe = write_recipe(tmp_path, RECIPE.format(image='format = "directory"'))
    proc = run_cli("build", str(recipe), "-o", str(tmp_path / "out"), "--cache-dir",
                   str(tmp_path / "cache"), "--offline", env={"PATH": str(tmp_path / "empty")})
    assert proc.returncode != 0
    assert "not installed" not in proc.stderr  # it got past the preflight, to the cache
    assert "pre" in proc.stderr


def test_find_hint_comes_from_the_table():
    with pytest.raises(BuildError) as err:
        tools.find("no-such-tool-h6")
    assert "apt-get install no-such-tool-h6" in err.value.line()
    assert tools.install_hint("systemd-repart") == \
        "apt-get install systemd-repart (where the archive has no systemd-repart: systemd)"


def test_doctor_reports_the_tools_host_commands_lack(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text("ID=debian\nVERSION_ID=12\n")
    proc = run_cli("doctor", "--root", str(root), "--systemd", "252", "--json=short",
                   env={"PATH": str(tmp_path / "empty")})
    report = json.loads(proc.stdout)
    missing = {f["subject"] for f in report["findings"] if f["code"] == "tool.missing"}
    assert {"unsquashfs", "fsck.erofs", "openssl", "systemd-sysext"} <= missing
    assert "veritysetup" not in missing  # /usr/sbin is always searched
    assert "mksquashfs" not in missing  # build's, not the host side's
    assert proc.returncode == 0  # warnings, not errors
    assert proc.stderr.count("warning") == 1, proc.stderr  # the count line, once
    full = run_cli("doctor", "--root", str(root), "--systemd", "252", "--json=short")
    assert not [f for f in json.loads(full.stdout)["findings"] if f["code"].startswith("tool.")]


def test_readme_lists_the_table():
    text = (REPO / "README.md").read_text()
    start, end = text.index(tools.README_BEGIN), text.index(tools.README_END)
    assert text[start:end + len(tools.README_END)] == tools.readme_block(), \
        "README's tool list is stale: regenerate it from tools.readme_block()"


def test_noxfile_system_packages_come_from_the_table():
    """noxfile.py's SYSTEM_PACKAGES is computed from TOOLS (nox itself is not importable here:
    the function is run on its own)."""
    tree = ast.parse((REPO / "noxfile.py").read_text())
    func = next(n for n in tree.body if isinstance(n, ast.FunctionDef)
                and n.name == "_system_packages")
    assign = next(n for n in tree.body if isinstance(n, ast.AnnAssign)
                  and getattr(n.target, "id", None) == "SYSTEM_PACKAGES")
    assert ast.unparse(assign.value) == "_system_packages()"
    namespace = {"HERE": REPO, "sys": sys}
    exec(compile(ast.Module([func], []), "noxfile.py", "exec"), namespace)
    rows = {probe: (packages, sessions) for probe, packages, sessions
            in namespace["_system_packages"]()}
    assert set(rows) == {t.name for t in tools.TOOLS}
    assert rows["mkfs.erofs"] == (["erofs-utils"], {"build", "tests"})
    assert rows["faketime"] == (["faketime"], {"tests"})
    assert rows["mmdebstrap"] == (["mmdebstrap"], {"fresh"})
    assert rows["systemd-repart"][0] == ["systemd-repart", "systemd"]


def test_check_names_the_reader_a_squashfs_image_needs(tmp_path):
    """check reads a squashfs image with unsquashfs: without it, one line before any work; a
    directory image needs no tool."""
    tree = tmp_path / "tree" / "usr" / "lib" / "extension-release.d"
    tree.mkdir(parents=True)
    (tree / "extension-release.img").write_text("ID=_any\n")
    image = tmp_path / "img.raw"
    subprocess.run(["mksquashfs", str(tmp_path / "tree"), str(image), "-quiet", "-no-progress"],
                   check=True, capture_output=True)
    env = {"PATH": str(tmp_path / "empty")}
    host = ("--os-release", str(tmp_path / "os-release"), "--arch", "x86-64", "--systemd", "252")
    (tmp_path / "os-release").write_text("ID=debian\nVERSION_ID=12\n")
    proc = run_cli("check", str(image), *host, env=env)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == ("error: check: not installed: unsquashfs, needed by check "
                                   "(squashfs) (install: apt-get install squashfs-tools)")
    proc = run_cli("check", str(tmp_path / "tree"), *host, env=env)
    assert "not installed" not in proc.stderr
    assert proc.returncode in (0, 3), proc.stderr


def test_publish_names_gpg_before_any_work_unless_unsigned(tmp_path):
    env = {"PATH": str(tmp_path / "empty")}
    args = ("publish", str(tmp_path / "x.raw"), "--feed", str(tmp_path / "feed"), "--url",
            "https://example.invalid/feed")
    proc = run_cli(*args, env=env)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("error: publish: not installed: gpg, needed by publish "
                                   "(sign) (install: apt-get install gnupg)")
    assert not (tmp_path / "feed").exists()
    unsigned = run_cli(*args, "--unsigned", env=env)
    assert "not installed" not in unsigned.stderr and unsigned.returncode != 0
