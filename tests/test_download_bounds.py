"""Downloads are bounded by the size the lock records and by Content-Length (issue 11 §3): a
mirror that announces more is refused before the body, one that sends more is cut off — never
hashed after it filled the disk. A real loopback server (tests/repos.py) that sends without end."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from pipeline.sources import fetch
from pipeline.sources.fetch import Cache, LockedSource, TooLarge, fetch_one, http_download

pytest_plugins = ["repos"]  # the archive, key and server fixtures

SLACK = 32 << 20  # what socket buffers may hold beyond what the client read


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(fetch, "RETRY_DELAY", 0.01)


def _locked(archive, name: str) -> tuple[LockedSource, str]:
    """A source as a lock makes it (sha256 and size), and its path on the server."""
    deb = next((archive.root / "pool" / "stable").glob(f"{name}_*.deb"))
    data = deb.read_bytes()
    path = f"/pool/stable/{deb.name}"
    return LockedSource("deb", archive.server.url + path, hashlib.sha256(data).hexdigest(),
                  size=len(data)), path


def _nothing_left(cache: Cache) -> None:
    """No file but the entries' (empty) lock files."""
    assert not [p for p in cache.root.rglob("*") if p.is_file()
                and p.relative_to(cache.root).parts[0] != "locks"]


def test_endless_body_cut_at_the_locked_size(tmp_path, deb_archive):
    source, path = _locked(deb_archive, "app")
    deb_archive.server.faults[path] = ["endless"]
    cache = Cache(tmp_path / "cache")
    with pytest.raises(TooLarge) as exc:
        fetch_one(source, cache)
    assert exc.value.line().startswith(f"{path}: the server sent more than the {source.size} "
                                       "bytes the lock records: cut off")
    assert deb_archive.server.paths().count(path) == 1  # a hostile mirror is not retried
    assert deb_archive.server.sent < source.size + SLACK
    _nothing_left(cache)


def test_huge_content_length_refused_before_the_body(tmp_path, deb_archive):
    source, path = _locked(deb_archive, "app")
    deb_archive.server.faults[path] = ["huge-length"]
    cache = Cache(tmp_path / "cache")
    with pytest.raises(TooLarge) as exc:
        fetch_one(source, cache)
    assert f"the server announces {1 << 40} bytes, more than the {source.size} bytes the " \
        "lock records" in exc.value.line()
    assert deb_archive.server.sent < SLACK
    _nothing_left(cache)
    # Without a recorded size, the announced 1 TiB is still more than a download may be.
    deb_archive.server.faults[path] = ["huge-length"]
    with pytest.raises(TooLarge, match="allowed for a download of unrecorded size"):
        http_download(source.ref, tmp_path / "f")
    assert not (tmp_path / "f").exists() or (tmp_path / "f").stat().st_size == 0


def test_more_than_content_length_is_not_read(tmp_path, deb_archive):
    """The server announces the true size and then keeps sending: what follows the announced
    length is never read, so the file is the real one (a recipe URL: no size recorded)."""
    source, path = _locked(deb_archive, "app")
    deb_archive.server.faults[path] = ["overlong"]
    got = fetch_one(dataclasses.replace(source, size=None), Cache(tmp_path / "cache"))
    assert got.sha256 == source.sha256 and got.size == source.size
    assert deb_archive.server.sent < source.size + SLACK


def test_endless_body_of_unrecorded_size_is_cut_off(tmp_path, deb_archive, monkeypatch):
    monkeypatch.setattr(fetch, "MAX_UNKNOWN_SIZE", 1 << 20)
    source, path = _locked(deb_archive, "app")
    deb_archive.server.faults[path] = ["endless"]
    cache = Cache(tmp_path / "cache")
    with pytest.raises(TooLarge, match=f"more than the {1 << 20} bytes allowed"):
        fetch_one(dataclasses.replace(source, size=None), cache)
    assert deb_archive.server.sent < (1 << 20) + SLACK
    _nothing_left(cache)


def test_build_from_a_lock_cuts_off_an_endless_mirror(tmp_path, deb_archive, deb_recipe):
    """End to end: the size the lock records reaches the download."""
    from conftest import run_cli

    recipe = deb_recipe(tmp_path / "r", deb_archive, ["app"])
    env = {"SYSEXT_PIPELINE_CACHE": str(tmp_path / "cache")}
    assert run_cli("lock", str(recipe), env=env).returncode == 0
    source, path = _locked(deb_archive, "app")
    deb_archive.server.faults[path] = ["endless"]
    proc = run_cli("build", str(recipe), "-o", str(tmp_path / "out"), env=env)
    assert proc.returncode == 2, proc.stderr  # not the recorded file: like a hash mismatch
    assert f"the server sent more than the {source.size} bytes the lock records" in proc.stderr
    assert deb_archive.server.sent < source.size + SLACK
    cache = Cache(tmp_path / "cache")  # holds the lock's metadata, but not the cut-off file
    assert not cache.path_for(source.sha256).exists()
    assert not list((cache.root / "tmp").rglob("*"))
