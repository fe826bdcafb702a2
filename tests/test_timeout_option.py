"""``--timeout SECONDS`` on every command that may download (issue 16 §2): build (one recipe and
a catalogue), verify, lock and fetch take the same option (clikit.add_timeout), a bad value or
$SYSEXT_PIPELINE_TIMEOUT is refused before any work, and the tools a recipe's sources need are
checked first (lock, fetch, build, inspect: clikit.preflight).

The silent mirror is a real socket on 127.0.0.1 that accepts connections and never answers.
"""

from __future__ import annotations

import http.server
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import run_cli
from pkgfactory import build_deb, file
from recipes_kit import EPOCH, build_cli, recipe_dict, write_recipe_dict

from pipeline.commands import cli, clikit
from pipeline.errors import INPUT, RETRY

SHA = "ab" * 32
RETRIES = ("2/4 in 0.5 s", "3/4 in 1 s", "4/4 in 2 s")


class Mirror:
    """http://127.0.0.1:PORT serving files from a directory until :meth:`silence`, then
    accepting every connection and never sending a byte."""

    def __init__(self, root: Path):
        self.root = root
        self.silent = threading.Event()
        self.stop = threading.Event()
        self.held: list[socket.socket] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        root = self.root

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def log_message(self, *a):
                pass

        while not self.stop.is_set():
            try:
                conn, addr = self.listener.accept()
            except OSError:
                continue
            if self.silent.is_set():
                self.held.append(conn)  # kept open, never answered
                continue
            conn.settimeout(5)
            try:
                Handler(conn, addr, None)
            except OSError:
                pass
            finally:
                conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for conn in self.held:
            conn.close()
        self.listener.close()


@pytest.fixture
def mirror(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    m = Mirror(served)
    yield m
    m.close()


def _retry_lines(stderr: str, seconds: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("fetch ")] or [stderr]


def _expected(name: str, seconds: str) -> list[str]:
    return [f"fetch {name}: try {n} (timed out after {seconds} s)" for n in RETRIES]


def test_every_downloading_verb_takes_the_one_timeout_option():
    commands = {}
    top = cli.parser()
    for action in top._actions:
        if hasattr(action, "choices") and isinstance(action.choices, dict):
            commands = action.choices
    takers = {name for name, sub in commands.items() if "--timeout" in sub._option_string_actions}
    assert takers == {"build", "verify", "lock", "fetch", "install"}  # install: --feed URL
    for name in takers:
        action = commands[name]._option_string_actions["--timeout"]
        assert action.help == clikit.HELP["timeout"], name
        assert "$SYSEXT_PIPELINE_TIMEOUT" in action.help


def test_build_timeout_bounds_a_silent_mirror(tmp_path, mirror):
    mirror.silent.set()
    recipe = write_recipe_dict(tmp_path, recipe_dict(
        "x", sources=[{"deb": f"{mirror.url}/pool/tool_1.0_amd64.deb", "sha256": SHA}],
        image={"source_date_epoch": EPOCH}))
    start = time.monotonic()
    proc = build_cli(recipe, tmp_path / "out", "--timeout", "0.4", cache_dir=tmp_path / "cache",
                     json_out=False, expect=RETRY, env={"SYSEXT_PIPELINE_TIMEOUT": "600"})
    assert time.monotonic() - start < 120  # seconds, not 4 tries of 600 s
    assert _retry_lines(proc.stderr, "0.4") == _expected("tool_1.0_amd64.deb", "0.4")
    assert "download failed after 4 tries: timed out after 0.4 s" in proc.stderr


def test_a_catalogue_passes_the_timeout_to_its_builds(tmp_path, mirror):
    """Two recipes: the catalogue fetches for both (with --keep-going, each build then fetches
    its own, and each waits --timeout, not $SYSEXT_PIPELINE_TIMEOUT's 600 s)."""
    mirror.silent.set()
    recipes = []
    for name in ("a", "b"):
        recipes.append(write_recipe_dict(tmp_path / name, recipe_dict(
            name, sources=[{"deb": f"{mirror.url}/pool/{name}_1.0_amd64.deb", "sha256": SHA}],
            image={"source_date_epoch": EPOCH})))
    start = time.monotonic()
    proc = run_cli("build", *map(str, recipes), "-o", str(tmp_path / "out"), "--cache-dir",
                   str(tmp_path / "cache"), "--timeout", "0.3", "--keep-going", "-j", "2",
                   env={"SYSEXT_PIPELINE_TIMEOUT": "600"})
    assert time.monotonic() - start < 120  # seconds, not tries of 600 s
    assert proc.code == RETRY, proc.stderr
    assert proc.stderr.count("timed out after 0.3 s") >= 3 * 2 * 2, proc.stderr
    assert "timed out after 600" not in proc.stderr


@pytest.mark.parametrize("verb", ["build", "verify", "lock", "fetch"])
def test_a_bad_timeout_is_refused_before_any_work(tmp_path, verb):
    """$SYSEXT_PIPELINE_TIMEOUT=soon: exit 2 naming the variable before anything is read or
    written (build: no output directory; the recipe and the image need not even exist)."""
    missing = str(tmp_path / "nothing-here.toml")
    args = {"build": [missing, "-o", str(tmp_path / "out")], "verify": [missing],
            "lock": [missing], "fetch": [missing, "--store", str(tmp_path / "store")]}[verb]
    proc = run_cli(verb, *args, env={"SYSEXT_PIPELINE_TIMEOUT": "soon"})
    assert proc.code == INPUT, proc.stderr
    assert proc.stderr.startswith("error: $SYSEXT_PIPELINE_TIMEOUT: 'soon' is not a number of "
                                  "seconds"), proc.stderr
    assert proc.stderr.count("\n") == 1
    proc = run_cli(verb, *args, "--timeout", "-1")
    assert proc.code == INPUT
    assert proc.stderr.startswith("error: --timeout: -1.0 is not a number of seconds")
    assert not (tmp_path / "out").exists() and not (tmp_path / "store").exists()


def _deb(directory: Path) -> Path:
    return build_deb(directory, "tool", "1.0",
                     [file("/usr/bin/tool", b"#!/bin/sh\necho tool\n", 0o755)],
                     compression="gzip")


def test_verify_timeout_bounds_the_rebuilds_download(tmp_path, mirror):
    """Built while the mirror answers; verified with an empty cache once it has gone silent:
    the rebuild's download waits --timeout."""
    import hashlib

    deb = _deb(tmp_path)
    shutil.copy(deb, mirror.root / deb.name)
    sha = hashlib.sha256(deb.read_bytes()).hexdigest()
    recipe = write_recipe_dict(tmp_path / "r", recipe_dict(
        "tool", kind="sysext", target={"id": "debian", "version_id": "12",
                                       "architecture": "x86-64"},
        sources=[{"deb": f"{mirror.url}/{deb.name}", "sha256": sha}],
        image={"format": "directory", "source_date_epoch": EPOCH}))
    build_cli(recipe, tmp_path / "out", cache_dir=tmp_path / "cache1", json_out=False)
    mirror.silent.set()
    start = time.monotonic()
    proc = run_cli("verify", str(tmp_path / "out/tool.manifest.json"), "--recipe", str(recipe),
                   "--cache-dir", str(tmp_path / "cache2"), "--timeout", "0.4",
                   env={"SYSEXT_PIPELINE_TIMEOUT": "600"})
    assert time.monotonic() - start < 120  # seconds, not 4 tries of 600 s
    assert proc.code == RETRY, proc.stderr
    assert _retry_lines(proc.stderr, "0.4") == _expected(deb.name, "0.4")


# --- tool preflight where it was missing (issue 16 §5) -----------------------------------------

def test_fetch_and_build_name_apt_get_before_any_work(tmp_path):
    """An ``apt =`` source is downloaded by apt-get: without it on PATH, one line first (build
    --offline needs no apt-get)."""
    recipe = write_recipe_dict(tmp_path, recipe_dict(
        "x", sources=[{"apt": "jq", "version": "1.6-2.1", "sha256": SHA}],
        image={"format": "directory", "source_date_epoch": EPOCH}))
    env = {"PATH": str(tmp_path / "empty")}
    proc = run_cli("fetch", str(recipe), "--store", str(tmp_path / "store"), env=env)
    assert proc.code == RETRY, proc.stderr
    assert proc.stderr.strip() == ("error: fetch: not installed: apt-get, needed by fetch (apt) "
                                   "(install: apt-get install apt)")
    assert not (tmp_path / "store").exists()
    proc = run_cli("build", str(recipe), "-o", str(tmp_path / "out"), "--cache-dir",
                   str(tmp_path / "cache"), env=env)
    assert proc.code == RETRY
    assert proc.stderr.strip() == ("error: build: not installed: apt-get, needed by build (apt) "
                                   "(install: apt-get install apt)")
    proc = run_cli("build", str(recipe), "-o", str(tmp_path / "out"), "--cache-dir",
                   str(tmp_path / "cache"), "--offline", env=env)
    assert proc.code != 0 and "not installed" not in proc.stderr, proc.stderr  # the cache


def test_lock_names_gpgv_for_a_signed_repository(tmp_path):
    (tmp_path / "key.asc").write_text("not a key\n")
    recipe = write_recipe_dict(tmp_path, recipe_dict(
        "x", sources=[{"packages": ["jq"]}],
        repository=[{"name": "main", "type": "deb", "mirror": "http://127.0.0.1:9/debian",
                     "suite": "bookworm", "components": ["main"], "keyring": "key.asc"}]))
    proc = run_cli("lock", str(recipe), "--cache-dir", str(tmp_path / "cache"),
                   env={"PATH": str(tmp_path / "empty")})
    assert proc.code == RETRY, proc.stderr
    assert proc.stderr.strip() == ("error: lock: not installed: gpgv, needed by lock (signed) "
                                   "(install: apt-get install gpgv)")
    assert not (tmp_path / "recipe.lock").exists()


def test_inspect_names_the_reader_a_squashfs_image_needs(tmp_path):
    tree = tmp_path / "tree" / "usr" / "lib" / "extension-release.d"
    tree.mkdir(parents=True)
    (tree / "extension-release.img").write_text("ID=_any\n")
    image = tmp_path / "img.raw"
    subprocess.run(["mksquashfs", str(tmp_path / "tree"), str(image), "-quiet", "-no-progress"],
                   check=True, capture_output=True)
    proc = run_cli("inspect", str(image), env={"PATH": str(tmp_path / "empty")})
    assert proc.code == RETRY, proc.stderr
    assert proc.stderr.strip() == ("error: inspect: not installed: unsquashfs, needed by "
                                   "inspect (squashfs) (install: apt-get install squashfs-tools)")
