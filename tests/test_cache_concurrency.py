"""The package cache shared by concurrent fetches (issue 11 §4): entries are locked with flock
(not by pid), one process downloads while the others wait and then find the file, what is
hashed is what is renamed into place, and what a killed fetch left in tmp/ is swept by the next
one — but never a live fetch's. Real processes, a real loopback server, real SIGKILL."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, run_cli
from recipes_kit import cli_argv, cli_env

from pipeline.sources.fetch import Cache

pytest_plugins = ["repos"]  # the archive, key and server fixtures


def _start(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(cli_argv(*args), env=cli_env(env), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stored(store: Path) -> list[Path]:
    return sorted(p for p in (store / "sha256").rglob("*") if p.is_file())


def _locked(tmp_path, deb_archive, deb_recipe, names) -> Path:
    recipe = deb_recipe(tmp_path / "r", deb_archive, names)
    proc = run_cli("lock", str(recipe), env={"SYSEXT_PIPELINE_CACHE": str(tmp_path / "meta")})
    assert proc.returncode == 0, proc.stderr
    return recipe


def _wait_for(predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_four_fetches_into_one_cold_cache(tmp_path, deb_archive, deb_recipe):
    recipe = _locked(tmp_path, deb_archive, deb_recipe, ["app"])
    deb_archive.server.delay = 0.2  # every answer is slow: the four overlap
    store = tmp_path / "store"
    procs = [_start("fetch", str(recipe), "--store", str(store), "--json") for _ in range(4)]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    assert [rc for rc, _, _ in results] == [0] * 4, [err for _, _, err in results]
    summaries = [json.loads(out) for _, out, _ in results]
    assert {s["files"] for s in summaries} == {8}
    # Each file crossed the network once: the others waited on its lock and found it.
    assert sum(s["downloaded"] for s in summaries) == 8, summaries
    pool = sorted(p for p in deb_archive.server.paths() if p.startswith("/pool/"))
    assert pool == sorted(set(pool)) and len(pool) == 8
    files = _stored(store)
    assert len(files) == 8
    for f in files:  # complete and correct: named by the hash of what it holds
        assert hashlib.sha256(f.read_bytes()).hexdigest() == f.name
    assert list((store / "tmp").iterdir()) == []


def _partial(store: Path) -> Path | None:
    found = [p for p in (store / "tmp").glob("*/download") if p.stat().st_size > 0] \
        if (store / "tmp").is_dir() else []
    return found[0] if found else None


def test_kill_9_mid_download_then_the_next_fetch_succeeds(tmp_path, deb_archive, deb_recipe):
    recipe = _locked(tmp_path, deb_archive, deb_recipe, ["big"])
    big = next((deb_archive.root / "pool" / "stable").glob("big_*.deb"))
    deb_archive.server.faults[f"/pool/stable/{big.name}"] = ["stall"]
    deb_archive.server.stall = 30.0
    store = tmp_path / "store"
    proc = _start("fetch", str(recipe), "--store", str(store))
    partial = _wait_for(lambda: _partial(store), "a partial download")
    _wait_for(lambda: deb_archive.server.stalled, "the stall")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert partial.exists()  # what a killed fetch leaves behind, with its lock released
    assert _stored(store) == []
    again = run_cli("fetch", str(recipe), "--store", str(store))
    assert again.returncode == 0, again.stderr
    [stored] = _stored(store)
    assert stored.read_bytes() == big.read_bytes()
    assert list((store / "tmp").iterdir()) == []


def test_a_live_download_is_never_swept(tmp_path, deb_archive, deb_recipe):
    """A second fetch sweeps tmp/ while the first is mid-download: the first's directory is
    locked, so it stays, and the first completes.

    The first download stays stalled until the second fetch is done (the server's release):
    a fixed pause of a few seconds let the first finish before a slow second fetch swept."""
    recipe = _locked(tmp_path, deb_archive, deb_recipe, ["big"])
    other = deb_recipe(tmp_path / "o", deb_archive, ["prelib"])
    assert run_cli("lock", str(other), env={"SYSEXT_PIPELINE_CACHE": str(tmp_path / "meta")}
                   ).returncode == 0
    big = next((deb_archive.root / "pool" / "stable").glob("big_*.deb"))
    deb_archive.server.faults[f"/pool/stable/{big.name}"] = ["stall"]
    deb_archive.server.stall = 240.0  # released below; the client's timeout is 300 s
    store = tmp_path / "store"
    first = _start("fetch", str(recipe), "--store", str(store),
                   env={"SYSEXT_PIPELINE_TIMEOUT": "300"})
    try:
        partial = _wait_for(lambda: _partial(store), "a partial download")
        _wait_for(lambda: deb_archive.server.stalled, "the stall")
        second = run_cli("fetch", str(other), "--store", str(store))
        assert second.returncode == 0, second.stderr
        assert partial.exists()
        assert first.poll() is None  # still mid-download when the second fetch swept
    finally:
        deb_archive.server.release.set()
    assert first.wait(timeout=120) == 0, first.communicate()[1]
    assert hashlib.sha256(Cache(store).path_for(hashlib.sha256(big.read_bytes()).hexdigest())
                          .read_bytes()).hexdigest() == hashlib.sha256(big.read_bytes()).hexdigest()
    assert list((store / "tmp").iterdir()) == []


def test_sweep_takes_only_unlocked_leftovers(tmp_path):
    """A leftover of an older version (no lock file) and a dead one go; a held one stays."""
    import fcntl

    cache = Cache(tmp_path / "c")
    tmp = cache.root / "tmp"
    (tmp / "dead").mkdir(parents=True)
    (tmp / "dead" / ".lock").touch()
    (tmp / "dead" / "download").write_bytes(b"partial")
    (tmp / "old").mkdir()
    (tmp / "alive").mkdir()
    lock = tmp / "alive" / ".lock"
    lock.touch()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; "
                               f"f = open({str(lock)!r}); fcntl.flock(f, fcntl.LOCK_EX); "
                               "print('held', flush=True); time.sleep(30)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert sorted(cache.sweep()) == ["dead", "old"]
        assert sorted(p.name for p in tmp.iterdir()) == ["alive"]
    finally:
        holder.kill()
        holder.wait()
    with open(lock) as fh:  # the holder is gone: its lock is free, so the next sweep takes it
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert cache.sweep() == ["alive"]


@pytest.mark.parametrize("damage", ("bytes", "symlink"))
def test_corrupt_entry_is_replaced_under_its_lock(tmp_path, deb_archive, damage):
    """A damaged entry in a shared store (bit rot, or a symlink planted into it) is never used:
    removed under its lock and fetched again."""
    from pipeline.sources.fetch import LockedSource, fetch_one

    deb = next((deb_archive.root / "pool" / "stable").glob("prelib_*.deb"))
    sha = hashlib.sha256(deb.read_bytes()).hexdigest()
    cache = Cache(tmp_path / "c")
    entry = cache.path_for(sha)
    entry.parent.mkdir(parents=True)
    if damage == "bytes":
        entry.write_bytes(b"bit rot")
    else:
        entry.symlink_to(deb)
    got = fetch_one(LockedSource("deb", f"{deb_archive.server.url}/pool/stable/{deb.name}",
                                 sha, size=deb.stat().st_size), cache)
    assert got.origin == "download" and got.path == entry
    assert not entry.is_symlink() and entry.read_bytes() == deb.read_bytes()
