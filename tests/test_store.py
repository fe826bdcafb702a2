"""The offline store (fetch --store, build --offline) and the network's failure modes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import run_cli

from pipeline.errors import InputError
from pipeline.recipe import Source
from pipeline.sources import fetch
from pipeline.sources.fetch import Cache, DownloadError, fetch_all, fetch_one, http_download

pytest_plugins = ["repos"]  # the archive, key and server fixtures


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(fetch, "RETRY_DELAY", 0.01)


def _source(archive, name: str) -> Source:
    path = next((archive.root / "pool" / "stable").glob(f"{name}_*.deb"))
    url = f"{archive.server.url}/pool/stable/{path.name}"
    return Source("deb", url, hashlib.sha256(path.read_bytes()).hexdigest())


def _files(store: Path) -> list[Path]:
    return [p for p in (store / "sha256").rglob("*") if p.is_file()] if store.exists() else []


def test_fetch_store_then_offline_build(tmp_path, deb_archive, deb_recipe):
    recipe = deb_recipe(tmp_path / "r", deb_archive, ["app"])
    env = {"SYSEXT_PIPELINE_CACHE": str(tmp_path / "lock-cache")}
    assert run_cli("lock", str(recipe), env=env).returncode == 0
    store = tmp_path / "store"
    proc = run_cli("fetch", str(recipe), "--store", str(store), "--json")
    assert proc.returncode == 0, proc.stderr
    assert '"files": 8' in proc.stdout and len(_files(store)) == 8
    assert not list((store / "tmp").iterdir())  # nothing half-done left behind

    deb_archive.server.close()  # the network is gone
    out = tmp_path / "out"
    proc = run_cli("build", "--offline", "--store", str(store), str(recipe), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "resolved" / "usr/share/test/app").is_file()

    def stored(name):
        return next(p for p in _files(store) if p.name == hashlib.sha256(next(
            (deb_archive.root / "pool/stable").glob(f"{name}_*")).read_bytes()).hexdigest())

    stored("libbar3").unlink()
    proc = run_cli("build", "--offline", "--store", str(store), str(recipe), "-o", str(out))
    assert proc.returncode == 1
    assert "stable:pool/stable/libbar3_3.0_amd64.deb: not in the cache/store" in proc.stderr
    # every missing file is named at once, and a corrupt one as corrupt
    stored("prelib").unlink()
    stored("py-t").write_bytes(b"bit rot")
    proc = run_cli("build", "--offline", "--store", str(store), str(recipe), "-o", str(out))
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "3 files are not usable from the cache/store" in proc.stderr
    for name in ("libbar3_3.0_amd64.deb (missing)", "prelib_1.0_amd64.deb (missing)",
                 "py-t_1.0_amd64.deb (corrupt in the store (sha256 mismatch: got "
                 + hashlib.sha256(b"bit rot").hexdigest()):
        assert name in proc.stderr


def test_offline_build_of_a_recipe_with_env_mirror(tmp_path, deb_archive, deb_recipe, monkeypatch):
    """Offline, a mirror that cannot be resolved ($VAR unset) does not matter: the store serves."""
    recipe = deb_recipe(tmp_path / "r", deb_archive, ["tool"])
    text = recipe.read_text().replace(deb_archive.server.url, "$TEST_MIRROR")
    recipe.write_text(text)
    env = {"TEST_MIRROR": deb_archive.server.url}
    assert run_cli("lock", str(recipe), env={**env, "SYSEXT_PIPELINE_CACHE": str(tmp_path / "c")}
                   ).returncode == 0
    assert run_cli("fetch", str(recipe), "--store", str(tmp_path / "s"), env=env).returncode == 0
    proc = run_cli("build", "--offline", "--store", str(tmp_path / "s"), str(recipe), "-o",
                   str(tmp_path / "out"), env={"TEST_MIRROR": ""})
    assert proc.returncode == 0, proc.stderr


def test_404_fails_at_once_naming_path_and_status(tmp_path, deb_archive, deb_recipe):
    url = f"{deb_archive.server.url}/pool/stable/nothing.deb"
    with pytest.raises(DownloadError) as exc:
        http_download(url, tmp_path / "f")
    assert exc.value.status == 404
    assert exc.value.where == "/pool/stable/nothing.deb" and "HTTP 404" in exc.value.what
    assert deb_archive.server.paths() == ["/pool/stable/nothing.deb"]


def test_500_then_success(tmp_path, deb_archive, deb_recipe):
    source = _source(deb_archive, "app")
    path = "/" + source.ref.split("/", 3)[3]
    deb_archive.server.faults[path] = ["500", "500"]
    got = fetch_one(source, Cache(tmp_path / "store"))
    assert got.sha256 == source.sha256 and got.origin == "download"
    assert deb_archive.server.paths().count(path) == 3


def test_500_forever_names_path_status_and_tries(tmp_path, deb_archive, deb_recipe):
    source = _source(deb_archive, "app")
    path = "/" + source.ref.split("/", 3)[3]
    deb_archive.server.faults[path] = ["500"] * 10
    with pytest.raises(DownloadError) as exc:
        fetch_one(source, Cache(tmp_path / "store"))
    assert exc.value.line().startswith(f"{path}: download failed after 4 tries: HTTP 500")
    assert _files(tmp_path / "store") == []
    assert not list((tmp_path / "store" / "tmp").iterdir())


def test_reset_mid_file_resumes_with_range(tmp_path, deb_archive, deb_recipe):
    source = _source(deb_archive, "big")
    path = "/" + source.ref.split("/", 3)[3]
    deb_archive.server.faults[path] = ["reset"]
    got = fetch_one(source, Cache(tmp_path / "store"))
    assert got.sha256 == source.sha256
    requests = [r for r in deb_archive.server.requests if r[0] == path]
    assert len(requests) == 2 and requests[0][1] is None
    assert requests[1][1].startswith("bytes=") and requests[1][1] != "bytes=0-"


def test_wrong_hash_keeps_nothing(tmp_path, deb_archive, deb_recipe):
    source = _source(deb_archive, "app")
    deb_archive.server.faults["/" + source.ref.split("/", 3)[3]] = ["wrong"]
    with pytest.raises(InputError, match="sha256 mismatch"):
        fetch_one(source, Cache(tmp_path / "store"))
    assert _files(tmp_path / "store") == []
    assert not list((tmp_path / "store" / "tmp").iterdir())


def test_corrupt_store_file_is_replaced(tmp_path, deb_archive, deb_recipe):
    source = _source(deb_archive, "app")
    cache = Cache(tmp_path / "store")
    first = fetch_one(source, cache)
    first.path.write_bytes(b"bit rot")
    again = fetch_one(source, cache)
    assert again.origin == "download" and again.path.read_bytes() != b"bit rot"
    again.path.write_bytes(b"bit rot")
    with pytest.raises(fetch.NotInStore, match=r"corrupt in the store \(sha256 mismatch: got "
                       + hashlib.sha256(b"bit rot").hexdigest()):
        fetch_one(source, cache, offline=True)
    with pytest.raises(fetch.NotInStore, match="not in the cache/store"):
        fetch_one(source, cache, offline=True)  # removed: now simply missing


def test_parallel_downloads_are_bounded(tmp_path, deb_archive, deb_recipe):
    deb_archive.server.delay = 0.3  # long enough that two requests always overlap
    names = ["app", "tool", "libtool1", "less-alt", "more-alt", "gawk-t", "mawk-t", "py-t", "big"]
    sources = [_source(deb_archive, n) for n in names]
    got = fetch_all(sources, Cache(tmp_path / "store"))
    assert [f.sha256 for f in got] == [s.sha256 for s in sources]  # results in order
    assert 1 < deb_archive.server.max_active <= fetch.PARALLEL


def test_timeouts_are_retried_then_named(tmp_path, deb_archive, monkeypatch):
    monkeypatch.setattr(fetch, "TIMEOUT", 0.2)
    source = _source(deb_archive, "app")
    # far beyond the timeout: a client thread the loaded machine ran late would otherwise find
    # the answer there when its poll finally returned, and a try would succeed
    deb_archive.server.delay = 5.0
    with pytest.raises(DownloadError) as exc:
        fetch_one(source, Cache(tmp_path / "store"))
    assert "after 4 tries" in exc.value.what and "timed out" in exc.value.what
    assert exc.value.where.startswith("/pool/stable/app_")
    assert _files(tmp_path / "store") == []
