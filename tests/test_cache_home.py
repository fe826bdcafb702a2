"""A missing or unusable $HOME never makes the tool create directories outside the work it was
asked to do (issue 11 §7): the run gets a temporary package cache, says so, and removes it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_cli
from pkgfactory import build_deb, file
from recipes_kit import EPOCH, recipe_dict, write_recipe_dict
from repos import Server


@pytest.fixture()
def served(tmp_path):
    pool = tmp_path / "pool"
    deb = build_deb(pool, "homeless", "1.0", [file("/usr/share/homeless/a", b"a\n")],
                    compression="none")
    server = Server(pool)
    yield f"{server.url}/{deb.name}", hashlib.sha256(deb.read_bytes()).hexdigest()
    server.close()


def _env(tmp_path: Path, home: str) -> dict:
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir(exist_ok=True)
    return {"HOME": home, "XDG_CACHE_HOME": "", "SYSEXT_PIPELINE_CACHE": "",
            "TMPDIR": str(tmpdir)}


@pytest.mark.parametrize("home", ("missing", "a-file", "relative"))
def test_build_without_a_usable_home(tmp_path, served, home):
    url, sha = served
    recipe = write_recipe_dict(tmp_path / "r", recipe_dict(
        "homeless", kind="sysext", version="1", target={"id": "_any"},
        sources=[{"deb": url, "sha256": sha}],
        image={"format": "directory", "source_date_epoch": EPOCH}), "homeless.toml")
    target = {"missing": tmp_path / "nonexistent" / "home", "a-file": tmp_path / "file",
              "relative": Path("relative-home")}[home]
    if home == "a-file":
        target.write_text("not a directory")
    env = _env(tmp_path, str(target))
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = run_cli("build", str(recipe), "-o", str(tmp_path / "out"), env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "no usable package cache: $HOME:" in proc.stderr
    assert "using a temporary cache for this run" in proc.stderr
    assert (tmp_path / "out" / "homeless" / "usr/share/homeless/a").read_bytes() == b"a\n"
    # Nothing was created for the cache: not the missing home, not a relative one in the
    # working directory; the temporary cache is gone after the run.
    after = sorted(p.name for p in tmp_path.iterdir())
    assert after == sorted(before + ["out"]), after
    assert not (tmp_path / "nonexistent").exists()
    assert list((tmp_path / "tmpdir").iterdir()) == []


def test_usable_home_is_used(tmp_path):
    """An existing HOME: ~/.cache/sysext-pipeline, nothing said (only its own .cache made)."""
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO), **_env(tmp_path, str(home)))
    code = "from pipeline.sources.fetch import default_cache_dir as d; print(d())"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True)
    assert proc.stdout.strip() == str(home / ".cache" / "sysext-pipeline")
    assert proc.stderr == ""
    # XDG_CACHE_HOME whose parent does not exist: not created either.
    env["XDG_CACHE_HOME"] = str(tmp_path / "gone" / "cache")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True)
    assert "no usable package cache: $XDG_CACHE_HOME:" in proc.stderr
    assert not (tmp_path / "gone").exists()
