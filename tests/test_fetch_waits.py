"""Network waits are visible and bounded (issue 16 §2): a line per retry, ``--timeout`` and
$SYSEXT_PIPELINE_TIMEOUT, no retries on a host name that does not resolve, and apt packages
fetched with one apt-get (in parallel) instead of one process each.

The silent mirror is a real socket on 127.0.0.1 that accepts connections and never answers.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time

import pytest
import tomllib
from aptkit import host_suites_apt
from conftest import REPO, run_cli, write_recipe
from prereq import missing

from pipeline.errors import INPUT, RETRY, InputError
from pipeline.recipe import Source
from pipeline.sources import fetch
from pipeline.sources.fetch import Cache, DownloadError, fetch_all, http_download

SHA = "ab" * 32


@pytest.fixture
def silent_server():
    """http://127.0.0.1:PORT that accepts every connection and never sends a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            held.append(conn)  # kept open, never answered

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def test_a_line_per_retry_and_the_environment_timeout(tmp_path, silent_server, monkeypatch):
    monkeypatch.setattr(fetch, "RETRY_DELAY", 0.05)
    monkeypatch.setenv("SYSEXT_PIPELINE_TIMEOUT", "0.3")
    lines: list[str] = []
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        http_download(f"{silent_server}/pool/jq_1.6_amd64.deb", tmp_path / "f", say=lines.append)
    elapsed = time.monotonic() - start
    assert lines == ["fetch jq_1.6_amd64.deb: try 2/4 in 0.05 s (timed out after 0.3 s)",
                     "fetch jq_1.6_amd64.deb: try 3/4 in 0.1 s (timed out after 0.3 s)",
                     "fetch jq_1.6_amd64.deb: try 4/4 in 0.2 s (timed out after 0.3 s)"]
    assert "download failed after 4 tries: timed out after 0.3 s" in info.value.line()
    assert info.value.exit_code == RETRY
    # bounded: the timeouts plus the delays, not 4 tries of the default 60 s (the margin is
    # for a loaded machine)
    assert 4 * 0.3 <= elapsed < 4 * 0.3 + 0.35 + 30


def test_cli_timeout_option_and_retry_lines(tmp_path, silent_server):
    """``fetch --timeout``: the retries are said on stderr (not only on a terminal)."""
    url = f"{silent_server}/pool/tool_1.0_amd64.deb"
    recipe = write_recipe(tmp_path, '[extension]\nname = "x"\n[target]\nid = "debian"\n'
                          f'[[source]]\ndeb = "{url}"\nsha256 = "{SHA}"\n')
    start = time.monotonic()
    proc = run_cli("fetch", str(recipe), "--store", str(tmp_path / "store"), "--timeout", "0.4",
                   env={"SYSEXT_PIPELINE_TIMEOUT": "600"})  # the option wins
    assert time.monotonic() - start < 120  # seconds, not 4 tries of 600 s
    assert proc.returncode == RETRY, proc.stderr
    retries = [line for line in proc.stderr.splitlines() if line.startswith("fetch ")]
    assert retries == [f"fetch tool_1.0_amd64.deb: try {n}/4 in {d} s (timed out after 0.4 s)"
                       for n, d in ((2, "0.5"), (3, "1"), (4, "2"))]
    assert "download failed after 4 tries: timed out after 0.4 s" in proc.stderr


@pytest.mark.parametrize("args, env, where", [
    (["--timeout", "0"], {}, "--timeout: 0.0 is not a number of seconds"),
    (["--timeout", "nan"], {}, "--timeout: nan is not a number of seconds"),
    ([], {"SYSEXT_PIPELINE_TIMEOUT": "soon"},
     "$SYSEXT_PIPELINE_TIMEOUT: 'soon' is not a number of seconds"),
])
def test_bad_timeout_is_an_input_error(tmp_path, args, env, where):
    recipe = write_recipe(tmp_path, '[extension]\nname = "x"\n[target]\nid = "debian"\n'
                          '[[source]]\ndeb = "https://127.0.0.1:9/x.deb"\n'
                          f'sha256 = "{SHA}"\n')
    proc = run_cli("fetch", str(recipe), "--store", str(tmp_path / "store"), *args, env=env)
    assert proc.returncode == INPUT
    assert proc.stderr.startswith(f"error: {where}") and proc.stderr.count("\n") == 1


def test_a_name_that_does_not_resolve_is_not_retried(tmp_path):
    lines: list[str] = []
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        http_download("http://no-such-mirror.invalid/pool/jq.deb", tmp_path / "f",
                      say=lines.append)
    assert lines == []  # one try
    assert time.monotonic() - start < 30  # one answer of the resolver, no retries
    assert "cannot resolve no-such-mirror.invalid" in info.value.line()
    assert "(check the host name and the DNS setup (not retried))" in info.value.line()


# --- apt: one apt-get for all packages ----------------------------------------------------------

def _pins() -> dict[str, tuple[str, str]]:
    data = tomllib.loads((REPO / "recipes/debug-tools.lock").read_text())  # the example's pins
    return {p["name"]: (p["version"], p["sha256"]) for p in data["package"]}


def _lock_suites_apt(tmp_path, monkeypatch) -> None:
    """apt-get sees the example lock's suites on the host's mirror through a private
    configuration (APT_CONFIG), whatever suites the host itself lists."""
    data = tomllib.loads((REPO / "recipes/debug-tools.lock").read_text())
    suites = sorted({r["suite"] for r in data["repository"]})
    try:
        env = host_suites_apt(tmp_path / "apt", suites)
    except InputError as err:
        missing(str(err))
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.mark.network
def test_apt_packages_come_in_one_batch(tmp_path, monkeypatch):
    pins = _pins()
    _lock_suites_apt(tmp_path, monkeypatch)
    sources = [Source("apt", name, pins[name][1], version=pins[name][0])
               for name in ("libonig5", "libjq1", "jq")]
    cache = Cache(tmp_path / "cache")
    got = fetch_all(sources, cache)
    assert [f.origin for f in got] == ["apt"] * 3
    assert [f.filename for f in got] == [f"{s.ref}_{s.version}_amd64.deb" for s in sources]
    for f, s in zip(got, sources):
        assert hashlib.sha256(f.path.read_bytes()).hexdigest() == s.sha256
    assert [f.origin for f in fetch_all(sources, cache)] == ["cache"] * 3


@pytest.mark.network
def test_apt_batch_names_the_version_that_is_gone(tmp_path, monkeypatch):
    """One version not in the archive: the error names it (exit 2), and since the batch is one
    apt-get, nothing else was fetched one by one meanwhile."""
    pins = _pins()
    _lock_suites_apt(tmp_path, monkeypatch)
    sources = [Source("apt", "libonig5", pins["libonig5"][1], version=pins["libonig5"][0]),
               Source("apt", "libjq1", pins["libjq1"][1], version="0.0-gone"),
               Source("apt", "jq", pins["jq"][1], version=pins["jq"][0])]
    cache = Cache(tmp_path / "cache")
    with pytest.raises(InputError) as info:
        fetch_all(sources, cache)
    assert info.value.line().startswith("libjq1=0.0-gone: apt-get download failed")
    assert "'0.0-gone' for 'libjq1' was not found" in info.value.line()
    assert not list((tmp_path / "cache").glob("sha256/*/*"))
