"""``install --feed URL`` waits as every other download does (issue 16 §2, left over in the
closing note of issues 14-16): ``--timeout`` / $SYSEXT_PIPELINE_TIMEOUT, the same retries and
retry lines (pipeline/sources/fetch.py's http_download, handed to release/feed.py), and one
error line naming the feed file's whole URL.

The silent server is a real socket on 127.0.0.1 that accepts connections and never answers
(tests/test_timeout_option.py's Mirror); nothing is written into the --root tree.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import run_cli
from test_timeout_option import Mirror

from pipeline.errors import INPUT, RETRY


@pytest.fixture
def mirror(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    m = Mirror(served)
    yield m
    m.close()


def _install_feed(url: str, root: Path, *extra: str, env=None):
    root.mkdir(exist_ok=True)
    return run_cli("install", "--feed", url, "--root", str(root), "--systemd", "257", *extra,
                   env=env)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_install_feed_timeout_bounds_a_silent_server(tmp_path, mirror):
    mirror.silent.set()
    start = time.monotonic()
    proc = _install_feed(mirror.url + "/feed/", tmp_path / "root", "--timeout", "1",
                         env={"SYSEXT_PIPELINE_TIMEOUT": "600"})
    took = time.monotonic() - start
    assert proc.code == RETRY, proc.stderr
    # 4 tries of 1 s and 3.5 s of backoff (~9 s with the CLI's start), not 60 s (or 600 s)
    # each: 60 s tells them apart with room for a loaded machine
    assert took < 60, took
    retries = [line for line in proc.stderr.splitlines() if line.startswith("fetch ")]
    assert retries == [f"fetch SHA256SUMS: try {n} (timed out after 1 s)"
                       for n in ("2/4 in 0.5 s", "3/4 in 1 s", "4/4 in 2 s")], proc.stderr
    assert _error_lines(proc.stderr) == [
        f"error: {mirror.url}/feed/SHA256SUMS: download failed after 4 tries: timed out after "
        "1 s (check the URL and the network, then retry)"], proc.stderr
    assert list((tmp_path / "root").iterdir()) == []


def test_install_feed_reads_the_environments_timeout(tmp_path, mirror):
    mirror.silent.set()
    start = time.monotonic()
    proc = _install_feed(mirror.url, tmp_path / "root", env={"SYSEXT_PIPELINE_TIMEOUT": "0.3"})
    assert proc.code == RETRY, proc.stderr
    assert time.monotonic() - start < 60  # not 4 tries of the default 60 s
    assert "download failed after 4 tries: timed out after 0.3 s" in proc.stderr


def test_a_missing_feed_file_is_bad_input_at_once(tmp_path, mirror):
    """A 404 is not retried: the URL is not a feed (exit 2, the whole URL named)."""
    proc = _install_feed(mirror.url + "/nothing", tmp_path / "root", "--timeout", "5")
    assert proc.code == INPUT, proc.stderr
    assert _error_lines(proc.stderr) == [
        f"error: {mirror.url}/nothing/SHA256SUMS: HTTP 404 (is this the URL of a feed made "
        "by publish?)"]
    assert "try 2/4" not in proc.stderr


def test_timeout_is_refused_when_installing_an_image(tmp_path):
    proc = run_cli("install", str(tmp_path / "x.raw"), "--root", str(tmp_path), "--timeout", "5")
    assert proc.code == INPUT, proc.stderr
    assert _error_lines(proc.stderr) == ["error: --timeout: applies only to install --feed URL "
                                         "(an image file is installed without downloading "
                                         "anything)"]
