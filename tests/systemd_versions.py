"""Other systemd versions for tests: systemd 254 from bookworm-backports, unpacked, never installed.

Debian 12 ships systemd 252; behaviour that changed in 254 (repart, sysext, confext) is tested
against the real 254 binaries. apt fetches the two .debs with a private configuration whose only
source is bookworm-backports on the *host's own* mirror (read from the host's apt sources at run
time, so no mirror name is written down here), and they are unpacked with ``dpkg-deb -x`` into a
cache directory that later runs reuse. Run a binary with :func:`command`, which points
``LD_LIBRARY_PATH`` at the unpacked ``libsystemd-shared``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from pipeline.errors import InputError
from pipeline.resolve import metadata

SUITE = "bookworm-backports"
PACKAGES = ("systemd", "libsystemd-shared")
DEFAULT_CACHE = Path.home() / ".cache" / "sysext-pipeline-tests" / "systemd-254"
_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


class Unavailable(RuntimeError):
    """systemd 254 could not be fetched (no network, no mirror); tests turn this into a skip/fail."""


def host_mirror() -> tuple[str, str]:
    """(URI, keyring) of the host's bookworm archive: the pipeline's own ``mirror = "host"``."""
    try:
        uri, signed_by = metadata.host_mirror("bookworm")
    except InputError as exc:
        raise Unavailable(exc.line()) from None
    return uri, signed_by or _KEYRING


def systemd_254(cache_dir: Path | None = None) -> Path:
    """The root of an unpacked systemd 254 (binaries in ``bin/``), fetched once and cached."""
    cache = Path(cache_dir or DEFAULT_CACHE)
    root = cache / "root"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test workers fetch once
        if (root / "bin" / "systemd-repart").exists():
            return root
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            unpacked = _fetch_and_unpack(Path(tmp))
            if root.exists():
                shutil.rmtree(root)
            os.rename(unpacked, root)
    return root


def _fetch_and_unpack(tmp: Path) -> Path:
    uri, keyring = host_mirror()
    (tmp / "lists" / "partial").mkdir(parents=True)
    (tmp / "cache" / "archives" / "partial").mkdir(parents=True)
    (tmp / "debs").mkdir()
    sources = tmp / "sources.list"
    sources.write_text(f"deb [signed-by={keyring}] {uri} {SUITE} main\n")
    options = [
        f"-oDir::Etc::SourceList={sources}", "-oDir::Etc::SourceParts=/nonexistent",
        f"-oDir::State::Lists={tmp / 'lists'}", f"-oDir::Cache={tmp / 'cache'}",
        "-oDebug::NoLocking=1", "-oAPT::Sandbox::User=root", "-qq",
    ]
    _apt(["apt-get", *options, "update"], tmp)
    _apt(["apt-get", *options, "download", *(f"{p}/{SUITE}" for p in PACKAGES)], tmp / "debs")
    root = tmp / "root"
    for deb in sorted((tmp / "debs").glob("*.deb")):
        if not deb.name.split("_")[1].startswith("254."):
            raise Unavailable(f"{SUITE} no longer carries systemd 254 ({deb.name})")
        _apt(["dpkg-deb", "-x", str(deb), str(root)], tmp)
    return root


def _apt(argv: list[str], cwd: Path) -> None:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise Unavailable(f"{' '.join(argv[:1] + argv[-1:])} failed: {' | '.join(tail)}")


def library_path(root: Path) -> str:
    return str(root / "usr" / "lib" / "x86_64-linux-gnu" / "systemd")


def binary(root: Path, name: str) -> Path:
    """Path of an unpacked binary (254 ships them in /bin, later versions in /usr/bin)."""
    for candidate in (root / "bin" / name, root / "usr" / "bin" / name):
        if candidate.exists():
            return candidate
    raise Unavailable(f"{name} not in the unpacked systemd at {root}")


def command(root: Path, name: str) -> tuple[str, dict[str, str]]:
    """(path, extra environment) to run ``name`` from the unpacked systemd."""
    return str(binary(root, name)), {"LD_LIBRARY_PATH": library_path(root)}
