"""Free space is checked before staging and before packing, naming the directory and the bytes
(issue 11 §3). The output directory is a small tmpfs in a private mount namespace."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, write_recipe
from pkgfactory import build_deb, file
from prereq import require_root, require_tool


def _recipe(tmp_path: Path, deb: Path) -> Path:
    return write_recipe(tmp_path / "recipe", f"""
[extension]
name = "t"
kind = "sysext"
[target]
id = "debian"
version_id = "12"
[[source]]
deb = "{deb}"
[image]
format = "squashfs"
compression = "none"
source_date_epoch = 1700000000
""")


def _build_on_tmpfs(tmp_path: Path, recipe: Path, cache_dir: Path, size: str):
    """``build`` into DIR/out where DIR is a fresh tmpfs of ``size``, seen only by the build;
    afterwards, what is left in DIR/out (listed from inside the namespace)."""
    require_root()
    require_tool("unshare", "util-linux")
    mnt = tmp_path / "small"
    mnt.mkdir()
    script = ('mount -t tmpfs -o size="$1" tmpfs "$2" && shift 2 && "$@"; rc=$?; '
              'echo "left:$(ls -A "$OUT")" >&2; exit $rc')
    env = {**os.environ, "PYTHONPATH": str(REPO), "OUT": str(mnt / "out")}
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", size, str(mnt),
         sys.executable, "-m", "pipeline", "build", str(recipe), "-o", str(mnt / "out"),
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
