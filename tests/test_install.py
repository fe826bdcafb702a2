"""install / uninstall / rollback against a temporary --root with real merges (private namespace)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_cli
from merge import in_namespace, make_root
from prereq import missing, require_tool
from recipes_kit import build_recipe, tool_recipe


def tool_image(tmp: Path, name: str, **kw) -> Path:
    """The image of ``recipes_kit.tool_recipe(name, **kw)``, built with the real CLI under
    ``tmp``."""
    rdir = tmp / f"recipe-{name}-{kw.get('payload', 'v1')}-{kw.get('version_id', '12')}"
    return build_recipe(rdir, tool_recipe(name, **kw)).image_path


def cli(*args: str, env: dict | None = None) -> str:
    """A shell snippet running the CLI (for use inside a namespace)."""
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
    return f"{prefix} PYTHONPATH={shlex.quote(str(REPO))} {shlex.quote(sys.executable)} " \
           f"-m pipeline " + " ".join(shlex.quote(a) for a in args)


@pytest.fixture
def root(tmp_path) -> Path:
    r = make_root(tmp_path / "root", "ID=debian\nVERSION_ID=12\n")
    unit = r / "usr/lib/systemd/system"
    unit.mkdir(parents=True)
    (unit / "systemd-sysext.service").write_text("[Install]\nWantedBy=sysinit.target\n")
    (unit / "systemd-confext.service").write_text("[Install]\nWantedBy=sysinit.target\n")
    return r


def test_install_merges_enables_and_keeps_previous(tmp_path, root):
    require_tool("systemd-sysext", "systemd")
    v1 = tool_image(tmp_path, "hello", payload="v1")
    v2 = tool_image(tmp_path, "hello", payload="v2")
    proc = in_namespace(
        cli("install", str(v1), "--root", str(root), "--refresh", "--enable", "--json")
        + f" && {root}/usr/bin/hello-tool && "
        + cli("install", str(v2), "--root", str(root), "--refresh", "--json")
        + f" && {root}/usr/bin/hello-tool && "
        + cli("rollback", "hello", "--root", str(root), "--refresh")
        + f" && {root}/usr/bin/hello-tool")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")
    assert [x for x in lines if x in ("v1", "v2")] == ["v1", "v2", "v1"]
    first = json.loads(proc.stdout[:proc.stdout.index("\n}\n") + 2])
    assert first["refreshed"] and first["enabled"]
    assert first["visible"][0] == "/usr/bin/hello-tool"
    assert "read-only overlay" in proc.stderr
    assert "merged: /usr/bin/hello-tool" in proc.stderr
    link = root / "etc/systemd/system/sysinit.target.wants/systemd-sysext.service"
    assert os.readlink(link) == "/usr/lib/systemd/system/systemd-sysext.service"
    assert (root / "var/lib/extensions/hello.raw").read_bytes() == v1.read_bytes()
    assert (root / "var/lib/sysext-pipeline/rollback/sysext/hello.raw").read_bytes() == \
        v2.read_bytes()
    # nothing left behind in the search directory but the image
    assert sorted(p.name for p in (root / "var/lib/extensions").iterdir()) == ["hello.raw"]


def test_uninstall_unmerges(tmp_path, root):
    require_tool("systemd-sysext", "systemd")
    image = tool_image(tmp_path, "gone")
    proc = in_namespace(
        cli("install", str(image), "--root", str(root), "--refresh")
        + f" && test -x {root}/usr/bin/gone-tool && "
        + cli("uninstall", "gone", "--root", str(root), "--refresh", "--json")
        + f" && test ! -e {root}/usr/bin/gone-tool && echo unmerged-ok")
    assert proc.returncode == 0, proc.stderr
    assert "unmerged-ok" in proc.stdout
    assert not (root / "var/lib/extensions/gone.raw").exists()
    assert (root / "var/lib/sysext-pipeline/rollback/sysext/gone.raw").exists()


def test_refuses_image_that_would_not_merge(tmp_path, root):
    image = tool_image(tmp_path, "old", version_id="11")
    proc = run_cli("install", str(image), "--root", str(root), "--systemd", "252")
    assert proc.returncode == 3  # the verdict check gives: will not merge
    assert "match.version-id" in proc.stderr and "VERSION_ID" in proc.stderr
    assert "VERSION_ID=12" in proc.stderr  # the fix names the host's value
    assert not (root / "var/lib/extensions/old.raw").exists()
    forced = run_cli("install", str(image), "--root", str(root), "--systemd", "252", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "--force" in forced.stderr and (root / "var/lib/extensions/old.raw").exists()
    assert "not refreshing the offline tree" in forced.stderr
    assert "is not enabled" in forced.stderr


def test_refuses_when_shadowed_by_earlier_directory(tmp_path, root):
    image = tool_image(tmp_path, "shadow")
    (root / "etc/extensions/shadow").mkdir(parents=True)
    proc = run_cli("install", str(image), "--root", str(root), "--systemd", "252")
    assert proc.returncode == 3
    assert "discovery.shadowed" in proc.stderr and "/etc/extensions/shadow" in proc.stderr


def test_runtime_install_goes_to_run(tmp_path, root):
    image = tool_image(tmp_path, "rt")
    proc = run_cli("install", str(image), "--root", str(root), "--runtime", "--no-refresh",
                   "--systemd", "252", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["installed"] == str(root / "run/extensions/rt.raw")


@pytest.mark.network
def test_confext_install_with_systemd_254(tmp_path, root):
    from systemd_versions import Unavailable, library_path, systemd_254

    try:
        sd = systemd_254()
    except Unavailable as exc:
        missing(f"systemd 254: {exc}")
    image = tool_image(tmp_path, "conf", kind="confext")
    env = {"SYSEXT_PIPELINE_SYSTEMD_DIR": str(sd / "bin"), "LD_LIBRARY_PATH": library_path(sd)}
    proc = in_namespace(cli("install", str(image), "--root", str(root), "--refresh", "--enable",
                            "--systemd", "254", "--json", env=env)
                        + f" && cat {root}/etc/conf-tool")
    assert proc.returncode == 0, proc.stderr
    assert "echo v1" in proc.stdout
    data = json.loads(proc.stdout[:proc.stdout.index("\n}\n") + 2])
    assert data["installed"] == str(root / "var/lib/confexts/conf.raw")
    assert data["visible"][0] == "/etc/conf-tool"
    assert (root / "etc/systemd/system/sysinit.target.wants/systemd-confext.service").is_symlink()


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def test_versioned_file_names_are_one_extension(tmp_path, root):
    """hello_1.raw then hello_2.raw: the second replaces the first (kept for rollback), and
    uninstall/rollback take the base name, as systemd's NAME_VERSION convention reads it."""
    v1, v2 = tool_image(tmp_path, "hello_1"), tool_image(tmp_path, "hello_2")
    ext, kept = root / "var/lib/extensions", root / "var/lib/sysext-pipeline/rollback/sysext"
    for image in (v1, v2):
        proc = run_cli("install", str(image), "--root", str(root), "--systemd", "252",
                       "--no-refresh")
        assert proc.returncode == 0, proc.stderr
    assert _listing(ext) == ["hello_2.raw"] and _listing(kept) == ["hello_1.raw"]
    proc = run_cli("rollback", "hello", "--root", str(root), "--systemd", "252", "--no-refresh")
    assert proc.returncode == 0, proc.stderr
    assert _listing(ext) == ["hello_1.raw"] and _listing(kept) == ["hello_2.raw"]
    proc = run_cli("uninstall", "hello", "--root", str(root), "--systemd", "252",
                   "--no-refresh")
    assert proc.returncode == 0, proc.stderr
    assert _listing(ext) == [] and _listing(kept) == ["hello_1.raw"]


def _failing_systemd(tmp: Path) -> dict:
    """A systemd-sysext whose refresh fails, the way 252–255 report it (exit 0, 'Failed')."""
    bindir = tmp / "failing-systemd"
    bindir.mkdir()
    tool = bindir / "systemd-sysext"
    tool.write_text("#!/bin/sh\necho 'Failed to merge extensions: Input/output error' >&2\n")
    tool.chmod(0o755)
    return {"SYSEXT_PIPELINE_SYSTEMD_DIR": str(bindir)}


def test_failed_refresh_puts_the_previous_version_back(tmp_path, root):
    v1 = tool_image(tmp_path, "undo", payload="v1")
    v2 = tool_image(tmp_path, "undo", payload="v2")
    env = _failing_systemd(tmp_path)
    placed = root / "var/lib/extensions/undo.raw"
    proc = run_cli("install", str(v1), "--root", str(root), "--systemd", "252", "--no-refresh")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("install", str(v2), "--root", str(root), "--systemd", "252", "--refresh",
                   env=env)
    assert proc.returncode == 1 and "refresh failed" in proc.stderr
    assert "restored the previous version (undo.raw)" in proc.stderr
    assert placed.read_bytes() == v1.read_bytes()
    # nothing there before: the new image goes again
    fresh = tool_image(tmp_path, "first")
    proc = run_cli("install", str(fresh), "--root", str(root), "--systemd", "252", "--refresh",
                   env=env)
    assert proc.returncode == 1 and "removed the new image first.raw again" in proc.stderr
    assert not (root / "var/lib/extensions/first.raw").exists()


def test_refuses_when_another_image_breaks_the_merge(tmp_path, root):
    good = tool_image(tmp_path, "fine")
    shutil.copy(tool_image(tmp_path, "other"), root / "var/lib/extensions/broken.raw")
    proc = run_cli("install", str(good), "--root", str(root), "--systemd", "252")
    assert proc.returncode == 3
    assert "/var/lib/extensions/broken.raw (release.missing-raw" in proc.stderr
    assert not (root / "var/lib/extensions/fine.raw").exists()
    forced = run_cli("install", str(good), "--root", str(root), "--systemd", "252", "--force",
                     "--no-refresh")
    assert forced.returncode == 0 and "breaks the whole merge" in forced.stderr


def test_leftovers_of_a_killed_install_are_swept_and_nothing_else(tmp_path, root):
    """What a SIGKILLed install leaves in the extension directory ('.#sysext-pipeline-*', a
    directory with the half-copied image) goes on the next install; a symlink with that name is
    removed as itself (its target outside survives), other names stay."""
    image = tool_image(tmp_path, "hello")
    ext = root / "var/lib/extensions"
    left = ext / ".#sysext-pipeline-k1ll3d"
    left.mkdir()
    (left / "hello.raw").write_bytes(b"half an image")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel").write_text("keep")
    (ext / ".#sysext-pipeline-link").symlink_to(outside, target_is_directory=True)
    (ext / ".#sysext-pipeline-file").write_bytes(b"x")
    (ext / ".#someone-else").mkdir()
    proc = run_cli("install", str(image), "--root", str(root))
    assert proc.returncode == 0, proc.stderr
    assert "removed 3 leftover(s) of an interrupted install" in proc.stderr
    assert sorted(p.name for p in ext.iterdir()) == [".#someone-else", "hello.raw"]
    assert (outside / "sentinel").read_text() == "keep"


def test_a_hanging_refresh_is_stopped_by_its_timeout(tmp_path, monkeypatch):
    """A systemd-sysext that never returns (and has a child of its own) is stopped, all of its
    process group, with a one-line error naming the timeout."""
    import time

    from pipeline.commands import install as install_cmd
    from pipeline.errors import BuildError

    fake = tmp_path / "systemd"
    fake.mkdir()
    pidfile = tmp_path / "pid"
    tool = fake / "systemd-sysext"
    tool.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nsleep 600 &\nwait\n")
    tool.chmod(0o755)
    monkeypatch.setenv("SYSEXT_PIPELINE_SYSTEMD_DIR", str(fake))
    start = time.monotonic()
    # 3 s: the shell must have written its pid by then, even on a loaded machine
    with pytest.raises(BuildError, match=r"refresh did not finish within 3 s: stopped"):
        install_cmd.refresh("sysext", tmp_path, timeout=3)
    assert time.monotonic() - start < 60  # 3 s and a kill, not the 600 s of its sleep
    group = int(pidfile.read_text())
    # SIGKILL is delivered asynchronously: gone within moments (a sleep of 600 s cannot end by
    # itself within this wait, so it may be generous)
    deadline = time.monotonic() + 60
    while _living_in_group(group) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _living_in_group(group) == []  # the shell and its sleep are gone (zombies at most)


def _living_in_group(group: int) -> list[str]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            found.append(stat.parent.name)
    return found
