"""Free space is checked before staging and before packing, naming the directory and the bytes
(issue 11 §3). The output directory is a small tmpfs in a private mount namespace."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from pkgfactory import build_deb, file
from prereq import require_root, require_tool
from recipes_kit import EPOCH, cli_env, recipe_dict, write_recipe_dict


def _recipe(tmp_path: Path, deb: Path) -> Path:
    return write_recipe_dict(tmp_path / "recipe", recipe_dict(
        "t", kind="sysext", sources=[deb],
        image={"format": "squashfs", "compression": "none", "source_date_epoch": EPOCH}))


def _build_on_tmpfs(tmp_path: Path, recipe: Path, cache_dir: Path, size: str,
                    tmpdir: bool = False):
    """``build`` into DIR/out where DIR is a fresh tmpfs of ``size``, seen only by the build
    (with ``tmpdir``: the output goes to tmp_path/out and DIR is the build's TMPDIR);
    afterwards, what is left in the output directory (listed from inside the namespace)."""
    require_root()
    require_tool("unshare", "util-linux")
    mnt = tmp_path / "small"
    mnt.mkdir()
    out = tmp_path / "out" if tmpdir else mnt / "out"
    script = ('mount -t tmpfs -o size="$1" tmpfs "$2" && shift 2 && "$@"; rc=$?; '
              'echo "left:$(ls -A "$OUT")" >&2; exit $rc')
    env = cli_env({"OUT": str(out)})
    if tmpdir:
        env["TMPDIR"] = str(mnt)
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", size, str(mnt),
         sys.executable, "-m", "pipeline", "build", str(recipe), "-o", str(out),
         "--cache-dir", str(cache_dir)], capture_output=True, text=True, env=env, cwd=REPO,
        timeout=300)


@pytest.mark.root
def test_staging_that_cannot_fit_is_refused_before_unpacking(tmp_path, cache_dir):
    require_tool("mksquashfs", "squashfs-tools")
    deb = build_deb(tmp_path / "pkg", "big", "1.0",
                    [file("/usr/share/big/blob", os.urandom(3 << 20))], compression="none")
    proc = _build_on_tmpfs(tmp_path, _recipe(tmp_path, deb), cache_dir, "4m")
    assert proc.returncode == 1, proc.stderr
    [error] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert re.search(rf"error: {re.escape(str(tmp_path / 'small' / 'out'))}: not enough free "
                     r"space for staging 1 packages .*: about \d+ bytes needed", error), error
    assert "left:\n" in proc.stderr + "\n"  # nothing was written


@pytest.mark.root
def test_packing_that_cannot_fit_is_refused_before_the_packer_runs(tmp_path, cache_dir):
    require_tool("mksquashfs", "squashfs-tools")
    # 5 MiB of zeros: a tiny package that stages into 5 MiB; packing uncompressed needs 5 more
    deb = build_deb(tmp_path / "pkg", "zeros", "1.0",
                    [file("/usr/share/zeros/blob", bytes(5 << 20))], compression="xz")
    proc = _build_on_tmpfs(tmp_path, _recipe(tmp_path, deb), cache_dir, "8m")
    assert proc.returncode == 1, proc.stderr
    [error] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert re.search(r"not enough free space for packing 5\.0 MiB of files into squashfs "
                     r"images \(none\): about (\d+) bytes needed", error), error
    assert str(tmp_path / "small" / "out") in error
    assert "left:\n" in proc.stderr + "\n"  # the work tree is gone, nothing published


@pytest.mark.root
def test_ddi_scratch_that_cannot_fit_is_refused(tmp_path, cache_dir):
    """The DDI's scratch (a padded copy of the file system and its verity tree) goes to TMPDIR:
    checked there, named."""
    require_tool("mksquashfs", "squashfs-tools")
    require_tool("systemd-repart", "systemd-repart")
    deb = build_deb(tmp_path / "pkg", "big", "1.0",
                    [file("/usr/share/big/blob", os.urandom(3 << 20))], compression="none")
    recipe = _recipe(tmp_path, deb)
    text = recipe.read_text().replace('format = "squashfs"', 'format = "ddi"\n'
                                      'filesystem = "squashfs"')
    recipe.write_text(text.replace('version_id = "12"', 'version_id = "12"\n'
                                   'architecture = "x86-64"'))
    proc = _build_on_tmpfs(tmp_path, recipe, cache_dir, "2m", tmpdir=True)
    assert proc.returncode == 1, proc.stderr
    [error] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: {tmp_path / 'small'}: not enough free space for the DDI's "
                            "scratch copy: about "), error
    assert "left:\n" in proc.stderr + "\n"
