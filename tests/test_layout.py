"""kind = auto, the /etc and /var policies, tmpfiles.d lines, and plan == build.

The images are merged by the real systemd-sysext 252 (host) and systemd-confext 254 (from
bookworm-backports, unpacked), and the tmpfiles.d lines are applied by the real
systemd-tmpfiles to a temporary root.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import systemd_versions
from conftest import run_cli
from merge import in_namespace, make_root
from pkgfactory import build_deb, config, directory, file, symlink
from prereq import missing, require_tool
from recipes_kit import EPOCH, build_cli, build_recipe, recipe_dict, write_recipe_dict

from pipeline.stages import layout

MIXED = [
    file("/usr/bin/mixed-tool", b"#!/bin/sh\necho mixed\n", 0o755),
    config("/etc/mixed/mixed.conf", b"answer=42\n"),
    directory("/etc/mixed/conf.d"),
    directory("/var/lib/mixed", 0o750),
    file("/var/lib/mixed/seed.db", b"seed data\n"),
    file("/usr/lib/systemd/system/mixed.service", b"[Service]\nExecStart=/usr/bin/mixed-tool\n"),
]


@pytest.fixture(scope="session")
def mixed_deb(tmp_path_factory) -> Path:
    require_tool("dpkg-deb", "dpkg")
    return build_deb(tmp_path_factory.mktemp("mixed"), "mixed", "1.0", MIXED)


@pytest.fixture(scope="session")
def systemd254() -> Path:
    try:
        return systemd_versions.systemd_254()
    except systemd_versions.Unavailable as exc:
        missing(f"systemd 254 from bookworm-backports: {exc}")


def mixed(deb: Path, kind: str | None = None, **policy: str) -> dict:
    """The mixed package as an image of ``kind`` (None: auto) under ``[policy]``."""
    return recipe_dict("mixed", kind=kind, version="1.0", sources=[deb], policy=policy or None,
                       image={"source_date_epoch": EPOCH})


def built_images(tmp_path: Path, spec: dict, cache_dir) -> dict:
    """The build's --json answer, each image with its manifest (``manifest_data``) and the
    set of its ``paths``."""
    recipe = write_recipe_dict(tmp_path / "recipe", spec)
    result = build_cli(recipe, tmp_path / "out", cache_dir=cache_dir).json
    for image in result["images"]:
        image["manifest_data"] = json.loads(Path(image["manifest"]).read_text())
        image["paths"] = {f["path"] for f in image["manifest_data"]["files"]}
    return result


@pytest.mark.network  # systemd 254 comes from bookworm-backports
def test_auto_splits_and_both_merge(tmp_path, mixed_deb, cache_dir, systemd254):
    result = built_images(tmp_path, mixed(mixed_deb), cache_dir)
    images = {i["kind"]: i for i in result["images"]}
    assert set(images) == {"sysext", "confext"}
    sysext, confext = images["sysext"], images["confext"]
    assert (sysext["name"], confext["name"]) == ("mixed", "mixed-config")
    assert "usr/bin/mixed-tool" in sysext["paths"] and "etc/mixed/mixed.conf" in confext["paths"]
    assert not any(p.startswith("etc") for p in sysext["paths"])
    assert not any(p.startswith("usr") for p in confext["paths"])
    assert confext["extension_release"]["CONFEXT_ID"] == "mixed-config"
    assert "both" in result["decision"]
    assert sysext["manifest_data"]["companions"] == ["mixed-config"]
    lines = _tmpfiles_lines(sysext, "usr/lib/tmpfiles.d/mixed.conf", tmp_path)
    assert "d /var/lib/mixed 0750 0 0 -" in lines
    assert "C /var/lib/mixed/seed.db - - - - /usr/share/factory/var/lib/mixed/seed.db" in lines
    assert "usr/share/factory/var/lib/mixed/seed.db" in sysext["paths"]

    root = make_root(tmp_path / "root", "ID=debian\nVERSION_ID=12\n")
    (root / "var/lib/extensions/mixed.raw").write_bytes(Path(sysext["image"]).read_bytes())
    (root / "var/lib/confexts/mixed-config.raw").write_bytes(Path(confext["image"]).read_bytes())
    confext_bin, env = systemd_versions.command(systemd254, "systemd-confext")
    tmpfiles_bin = require_tool("systemd-tmpfiles", "systemd")
    proc = in_namespace(
        f"systemd-sysext merge --root={root} && "
        f"LD_LIBRARY_PATH={env['LD_LIBRARY_PATH']} {confext_bin} merge --root={root} && "
        f"sh {root}/usr/bin/mixed-tool && cat {root}/etc/mixed/mixed.conf && "
        f"{tmpfiles_bin} --root={root} --create && cat {root}/var/lib/mixed/seed.db && "
        f"stat -c %a {root}/var/lib/mixed")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["mixed", "answer=42", "seed", "data", "750"]


def _tmpfiles_lines(image: dict, path: str, tmp_path: Path) -> list[str]:
    """Read a file out of a built image with the real unsquashfs."""
    import subprocess

    require_tool("unsquashfs", "squashfs-tools")
    out = subprocess.run(["unsquashfs", "-cat", image["image"], path], capture_output=True,
                         text=True, check=True).stdout
    return out.splitlines()


def test_factory_policy_copies_etc_at_boot(tmp_path, mixed_deb, cache_dir):
    result = built_images(tmp_path, mixed(mixed_deb, "sysext", etc="factory"),
                   cache_dir)
    [image] = result["images"]
    assert "usr/share/factory/etc/mixed/mixed.conf" in image["paths"]
    lines = _tmpfiles_lines(image, "usr/lib/tmpfiles.d/mixed.conf", tmp_path)
    assert "d /etc/mixed 0755 0 0 -" in lines and "d /etc/mixed/conf.d 0755 0 0 -" in lines
    assert lines.index("d /etc/mixed 0755 0 0 -") < lines.index(
        "C /etc/mixed/mixed.conf - - - - /usr/share/factory/etc/mixed/mixed.conf")
    root = make_root(tmp_path / "root", "ID=debian\nVERSION_ID=12\n")
    (root / "var/lib/extensions/mixed.raw").write_bytes(Path(image["image"]).read_bytes())
    (root / "etc/keep.conf").write_text("host\n")
    tmpfiles_bin = require_tool("systemd-tmpfiles", "systemd")
    proc = in_namespace(f"systemd-sysext merge --root={root} && {tmpfiles_bin} --root={root} "
                        f"--create && cat {root}/etc/mixed/mixed.conf && "
                        f"test -d {root}/etc/mixed/conf.d && cat {root}/etc/keep.conf")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["answer=42", "host"]


def test_pinned_sysext_drops_etc_and_says_so(tmp_path, mixed_deb, cache_dir):
    result = built_images(tmp_path, mixed(mixed_deb, "sysext"), cache_dir)
    [image] = result["images"]
    dropped = image["manifest_data"]["dropped"]
    assert 'policy.etc = "drop"' in dropped["etc/mixed/mixed.conf"]
    assert image["kind"] == "sysext"


def test_pinned_confext_drops_usr(tmp_path, mixed_deb, cache_dir):
    result = built_images(tmp_path, mixed(mixed_deb, "confext"), cache_dir)
    [image] = result["images"]
    assert image["kind"] == "confext" and image["name"] == "mixed"
    assert "pins kind = confext" in image["manifest_data"]["dropped"]["usr/bin/mixed-tool"]
    assert "etc/extension-release.d/extension-release.mixed" in image["paths"]


@pytest.mark.parametrize("policy, message", [
    ({"etc": "error"}, "/etc content in a sysext (policy.etc = error)"),
    ({"var": "error"}, "/var content (policy.var = error)"),
])
def test_error_policies(tmp_path, mixed_deb, cache_dir, policy, message):
    proc = build_recipe(tmp_path, mixed(mixed_deb, "sysext", **policy), cache_dir=cache_dir,
                        json_out=False, expect=2)
    assert message in proc.stderr and "mixed_1.0_amd64.deb" in proc.stderr


def test_var_drop_policy(tmp_path, mixed_deb, cache_dir):
    result = built_images(tmp_path, mixed(mixed_deb, "sysext", var="drop"), cache_dir)
    [image] = result["images"]
    assert "usr/lib/tmpfiles.d/mixed.conf" not in image["paths"]
    assert "var/lib/mixed/seed.db" in image["manifest_data"]["dropped"]


def test_plan_matches_build(tmp_path, mixed_deb, cache_dir):
    path = write_recipe_dict(tmp_path / "recipe", mixed(mixed_deb))
    proc = run_cli("plan", str(path), "--json", "--cache-dir", str(cache_dir))
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["complete"] and not (tmp_path / "out").exists()
    result = built_images(tmp_path, mixed(mixed_deb), cache_dir)
    assert [(i["kind"], i["name"]) for i in plan["images"]] == \
        [(i["kind"], i["name"]) for i in result["images"]]
    assert plan["decision"] == result["decision"]
    for planned, built in zip(plan["images"], result["images"]):
        release = Path(built["image"])
        import subprocess

        content = subprocess.run(["unsquashfs", "-cat", str(release),
                                  built["extension_release_path"]], capture_output=True,
                                 check=True).stdout.decode()
        assert planned["extension_release"]["content"] == content
        assert [w["code"] for w in planned["warnings"]] == [w["code"] for w in built["warnings"]]
        files = sum(row["files"] for row in planned["layout"])
        assert files == sum(1 for f in built["manifest_data"]["files"] if f["type"] == "file")
    assert plan["dropped"] == result["images"][0]["manifest_data"]["dropped"]
    verdicts = {row["host"]: row["verdict"] for row in plan["matching"]["mixed"]}
    assert verdicts["debian 12 x86-64"] == "merges"
    assert verdicts["debian 13 (next release)"] == "ignored"


def test_plan_without_cache_says_what_it_would_fetch(tmp_path):
    path = write_recipe_dict(tmp_path, recipe_dict(
        target={"id": "debian"}, sources=[{"apt": "jq", "version": "1.0", "sha256": "a" * 64}]))
    proc = run_cli("plan", str(path), "--json", "--cache-dir", str(tmp_path / "empty"))
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert not plan["complete"] and plan["would_fetch"] == [f"apt jq=1.0 (sha256 {'a' * 64})"]


ODD_NAMES = [
    file("/usr/bin/odd-tool", b"#!/bin/sh\necho odd\n", 0o755),
    config("/etc/my app/foo bar.conf", b"spaced\n"),
    file("/etc/my app/50%done.conf", b"percent\n"),
    directory("/etc/my app/conf.d"),
    symlink("/etc/my app/current link", "foo bar.conf"),
    symlink("/etc/my app/pct%link", "50%done.conf"),
    directory("/var/lib/my app", 0o750),
    file("/var/lib/my app/seed %d.db", b"seed\n"),
    directory("/var/lib/my"),
    directory("/var/lib/my/sub", 0o700),
]


def test_tmpfiles_lines_quote_spaces_and_percent(tmp_path, cache_dir):
    """Paths with spaces and ``%`` reach the host intact through the real systemd-tmpfiles:
    quoted path fields, ``%%`` for specifiers, the argument escaped, parents before children."""
    tmpfiles_bin = require_tool("systemd-tmpfiles", "systemd")
    deb = build_deb(tmp_path / "pkg", "odd", "1.0", ODD_NAMES)
    spec = recipe_dict("odd", kind="sysext", sources=[deb], policy={"etc": "factory"},
                       image={"format": "directory", "source_date_epoch": EPOCH})
    result = built_images(tmp_path, spec, cache_dir)
    [image] = result["images"]
    tree = Path(image["image"])
    lines = (tree / "usr/lib/tmpfiles.d/odd.conf").read_text().splitlines()
    assert 'd "/etc/my app" 0755 0 0 -' in lines
    assert ('C "/etc/my app/foo bar.conf" - - - - '
            "/usr/share/factory/etc/my app/foo bar.conf") in lines
    assert 'C "/etc/my app/50%%done.conf" - - - - /usr/share/factory/etc/my app/50%%done.conf' \
        in lines
    paths = [line.split('"')[1] if '"' in line.split()[1] else line.split()[1]
             for line in lines if not line.startswith("#")]
    assert paths.index("/etc/my app") < paths.index("/etc/my app/foo bar.conf")
    assert paths.index("/var/lib/my") < paths.index("/var/lib/my/sub")

    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    shutil.copytree(tree / "usr", root / "usr", symlinks=True)
    proc = subprocess.run([tmpfiles_bin, f"--root={root}", "--create"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    etc = root / "etc/my app"
    assert (etc / "foo bar.conf").read_text() == "spaced\n"
    assert (etc / "50%done.conf").read_text() == "percent\n"
    assert (etc / "conf.d").is_dir()
    assert os.readlink(etc / "current link") == "foo bar.conf"
    assert os.readlink(etc / "pct%link") == "50%done.conf"
    assert (root / "var/lib/my app/seed %d.db").read_text() == "seed\n"
    assert stat.S_IMODE((root / "var/lib/my app").stat().st_mode) == 0o750
    assert stat.S_IMODE((root / "var/lib/my/sub").stat().st_mode) == 0o700


def test_tmpfiles_line_formatting():
    """Each field escaped the way systemd-tmpfiles 252+ parses it (checked against the real
    tool above); the argument keeps leading/trailing spaces and a lone "-"."""
    T = layout.TmpfilesLine
    assert T("d", "/var/lib/x", "0750", "0", "0").text() == "d /var/lib/x 0750 0 0 -"
    assert T("d", '/etc/a "b"\\c', "0755", "0", "0").text() == \
        'd "/etc/a \\"b\\"\\\\c" 0755 0 0 -'
    assert T("L", "/etc/l", argument=" x\\y%z ").text() == \
        "L /etc/l - - - - \\x20x\\\\y%%z\\x20"
    assert T("L", "/etc/l", argument="-").text() == "L /etc/l - - - - \\x2d"
    assert T("L", "/etc/t", argument="a\tb").text() == "L /etc/t - - - - a\\x09b"
    content = layout.tmpfiles_content([T("C", "/etc/my app/x", argument="/f/x"),
                                       T("d", "/etc/my-app", "0755", "0", "0"),
                                       T("d", "/etc/my app", "0755", "0", "0"),
                                       T("d", "/etc/my", "0755", "0", "0")]).decode()
    order = [line.split(" ", 2)[1] for line in content.splitlines()[1:]]
    assert order == ["/etc/my", '"/etc/my', '"/etc/my', "/etc/my-app"]
    assert content.index('"/etc/my app" 0755') < content.index('"/etc/my app/x"')


def test_created_and_provided_paths():
    T = layout.TmpfilesLine
    lay = layout.Layout()
    lay.tmpfiles[layout.SYSEXT] += [T("C", "/etc/a b/c.conf", argument="/usr/share/factory/x"),
                                    T("d", "/var/lib/x", "0755", "0", "0")]
    assert lay.created_paths() == {"/etc/a b/c.conf", "/etc/a b", "/etc", "/var/lib/x",
                                   "/var/lib", "/var"}
    provided = layout.provided_paths(lay, [["etc", "etc/python3/sitecustomize.py"]])
    assert "/etc/python3/sitecustomize.py" in provided and "/etc/a b/c.conf" in provided


def test_srv_file_in_confext_names_srv(tmp_path, cache_dir):
    deb = build_deb(tmp_path / "pkg", "srvpkg", "1.0", [
        config("/etc/srvpkg.conf", b"x\n"), file("/srv/www/index.html", b"hi\n")])
    spec = recipe_dict("srvpkg", kind="confext", sources=[deb])
    result = built_images(tmp_path, spec, cache_dir)
    reason = result["images"][0]["manifest_data"]["dropped"]["srv/www/index.html"]
    assert "a file under /srv needs a sysext" in reason and "/var" not in reason


def test_companion_of_an_earlier_build_is_retired(tmp_path, mixed_deb, cache_dir):
    """Going from sysext + confext to a sysext only removes the stale NAME-config."""
    both = built_images(tmp_path, mixed(mixed_deb), cache_dir)
    assert {i["name"] for i in both["images"]} == {"mixed", "mixed-config"}
    out = tmp_path / "out"
    assert (out / "mixed-config.raw").exists()
    built_images(tmp_path, mixed(mixed_deb, "sysext"), cache_dir)
    assert sorted(p.name for p in out.iterdir()) == [
        "mixed.cdx.json", "mixed.manifest.json", "mixed.provenance.json", "mixed.raw",
        "mixed.spdx.json"]
