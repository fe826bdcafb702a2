"""Session fixtures: real packages built once, a shared package cache, and the CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pkgfactory import build_deb, build_rpm, config, file, ghost, hardlink, symlink
from prereq import require_tool
from unprivileged import UnprivilegedEnv

REPO = Path(__file__).resolve().parent.parent

HELLO = b"#!/bin/sh\necho hello from the extension\n"

#: A deb with every kind of entry the pipeline must carry or drop.
DEB_FILES = [
    file("/usr/bin/hello", HELLO, 0o755),
    symlink("/usr/bin/hello-link", "hello"),
    hardlink("/usr/bin/hello-hard", "/usr/bin/hello"),
    file("/usr/bin/suid-tool", b"#!/bin/sh\nid\n", 0o4755),
    file("/lib/x86_64-linux-gnu/libhello.so.1", b"\x7fELF not really", 0o644),
    config("/etc/hello.conf", b"greeting=hi\n"),
    file("/usr/share/doc/hello/README", b"docs\n"),
    file("/opt/hello/data.txt", b"opt data\n"),
]

#: An rpm with a file capability, an owner by name and a %ghost file.
RPM_FILES = [
    file("/usr/bin/rping", b"#!/bin/sh\necho pong\n", 0o755, caps="cap_net_raw=ep"),
    file("/usr/share/rtools/owned", b"owned\n", 0o640, owner=("daemon", "daemon")),
    symlink("/usr/bin/rping-alias", "rping"),
    ghost("/var/log/rtools.log"),
]


@pytest.fixture(scope="session")
def packages(tmp_path_factory) -> dict[str, Path]:
    require_tool("dpkg-deb", "dpkg")
    require_tool("rpmbuild", "rpm")
    out = tmp_path_factory.mktemp("packages")
    return {
        "deb": build_deb(out, "hello-tools", "1.0-1", DEB_FILES, compression="xz"),
        "deb-zstd": build_deb(out, "hello-zstd", "1.0-1", [file("/usr/bin/z", b"z\n", 0o755)],
                              compression="zstd"),
        "rpm": build_rpm(out, "rtools", "2.0", RPM_FILES, compression="zstd"),
    }


@pytest.fixture(scope="session")
def unprivileged() -> UnprivilegedEnv:
    """A world-readable interpreter and copy of the project, to run the CLI as another user
    (``unprivileged.run_cli("nobody", "build", ...)``); see tests/unprivileged.py."""
    import unprivileged as module

    return module.shared_env()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def write_recipe(directory: Path, body: str, name: str = "recipe.toml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(body)
    return path


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None,
            umask: int | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m pipeline ARGS`` as a user would (a separate process, real exit code)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(REPO)
    full_env.pop("SOURCE_DATE_EPOCH", None)
    full_env.update(env or {})
    preexec = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd or REPO,
                          env=full_env, capture_output=True, text=True, preexec_fn=preexec)
