"""Real systemd binaries of other versions for tests: 254, 257 and 262 next to the host's 252.

Debian 12 ships systemd 252. The Debian archive this machine reaches has 254
(bookworm-backports), 257 (trixie) and 262 (sid). Their .debs are fetched by apt with a private
configuration whose only source is that suite on the *host's own* mirror (read from the host's
apt sources at run time, so no mirror name is written down here), unpacked with ``dpkg-deb -x``
into a cache directory keyed by the major version (``systemd-N`` under
:data:`testcache.TEST_CACHE`, never the invoking user's home) that later runs reuse, and never
installed. 257 and 262 need a newer C library than bookworm's: their suite's own libc and the
libraries systemd links are unpacked next to them and the binaries run through that dynamic
loader; 254 runs with the host's.

Use :func:`systemd_binary`: ``systemd_binary(262, "systemd-sysext") + ["merge", ...]`` is a
complete argv (the loader, its library path and ``--argv0``, so ``systemd-confext`` knows what
it is). The host's 252 is returned as is (``systemd-dissect``, which the host lacks, comes from
bookworm's ``systemd-container`` with its own ``libsystemd-shared``). Fetching needs the network once: mark such tests
``network`` and turn :class:`Unavailable` into ``prereq.missing``.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from testcache import TEST_CACHE

from pipeline.errors import InputError
from pipeline.sources import metadata

_CACHE_BASE = TEST_CACHE
DEFAULT_CACHE = _CACHE_BASE / "systemd-254"  # kept for older callers
_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
#: The libraries systemd ≥257 and its dlopen()ed helpers need from their own suite (anything
#: missing falls back to the host's copy, which a newer libc still loads).
_LIBS = ("libc6", "libacl1", "libapparmor1", "libargon2-1", "libaudit1", "libblkid1",
         "libcap-ng0", "libcap2", "libcrypt1", "libcryptsetup12", "libdevmapper1.02.1",
         "libfdisk1", "libgcc-s1", "libjson-c5", "libkmod2", "liblz4-1", "liblzma5", "libmount1",
         "libpam0g", "libpcre2-8-0", "libseccomp2", "libselinux1", "libssl3t64", "libuuid1",
         "libzstd1", "zlib1g", "libudev1", "libsystemd0")
#: major → (suite, packages). 252 is the host's own systemd (only systemd-container is fetched).
SOURCES: dict[int, tuple[str, tuple[str, ...]]] = {
    252: ("bookworm", ("systemd-container", "libsystemd-shared")),
    254: ("bookworm-backports", ("systemd", "libsystemd-shared", "systemd-container")),
    257: ("trixie", ("systemd", "libsystemd-shared", "systemd-repart", "systemd-container",
                     *_LIBS)),
    262: ("sid", ("systemd", "libsystemd-shared", "systemd-repart", "systemd-container",
                  *_LIBS)),
}
VERSIONS = (252, 254, 257, 262)
_STAMP = ".fetched"


class Unavailable(RuntimeError):
    """The binaries could not be fetched (no network, no mirror, the suite moved on)."""


def host_mirror() -> tuple[str, str]:
    """(URI, keyring) of the host's bookworm archive: the pipeline's own ``mirror = "host"``."""
    try:
        uri, signed_by = metadata.host_mirror("bookworm")
    except InputError as exc:
        raise Unavailable(exc.line()) from None
    return uri, signed_by or _KEYRING


def _major(version: int | str) -> int:
    major = int(str(version).split(".")[0])
    if major not in SOURCES:
        raise Unavailable(f"no source for systemd {major} (have {', '.join(map(str, VERSIONS))})")
    return major


def systemd_root(version: int | str, cache_base: Path | None = None) -> Path:
    """The root of the unpacked systemd ``version`` (major), fetched once and cached."""
    major = _major(version)
    suite, packages = SOURCES[major]
    cache = Path(cache_base or _CACHE_BASE) / f"systemd-{major}"
    root = cache / "root"
    cache.mkdir(parents=True, exist_ok=True)
    want = f"{suite}: {' '.join(packages)}\n"
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test workers and helpers fetch once
        stamp = root / _STAMP
        if stamp.exists() and stamp.read_text().startswith(want):
            return root
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            unpacked = _fetch_and_unpack(Path(tmp), major, suite, packages)
            (unpacked / _STAMP).write_text(want + "\n".join(
                sorted(p.name for p in (Path(tmp) / "debs").glob("*.deb"))) + "\n")
            if root.exists():
                old = cache / "old"
                if old.exists():
                    shutil.rmtree(old)
                os.rename(root, old)
                shutil.rmtree(old)
            os.rename(unpacked, root)
    return root


def systemd_254(cache_dir: Path | None = None) -> Path:
    """The root of an unpacked systemd 254 (binaries in ``bin/``), fetched once and cached."""
    return systemd_root(254, Path(cache_dir).parent if cache_dir else None)


def _fetch_and_unpack(tmp: Path, major: int, suite: str, packages: tuple[str, ...]) -> Path:
    uri, keyring = host_mirror()
    (tmp / "lists" / "partial").mkdir(parents=True)
    (tmp / "cache" / "archives" / "partial").mkdir(parents=True)
    (tmp / "debs").mkdir()
    sources = tmp / "sources.list"
    sources.write_text(f"deb [signed-by={keyring}] {uri} {suite} main\n")
    options = [
        f"-oDir::Etc::SourceList={sources}", "-oDir::Etc::SourceParts=/nonexistent",
        f"-oDir::State::Lists={tmp / 'lists'}", f"-oDir::Cache={tmp / 'cache'}",
        "-oDebug::NoLocking=1", "-oAPT::Sandbox::User=root", "-oAPT::Architectures=amd64",
        "-oAcquire::Languages=none", "-qq",
    ]
    _apt(["apt-get", *options, "update"], tmp)
    wanted = [f"{p}/{suite}" for p in packages]
    _apt(["apt-get", *options, "download", *wanted], tmp / "debs")
    root = tmp / "root"
    for deb in sorted((tmp / "debs").glob("*.deb")):
        package, version = deb.name.split("_")[:2]
        if package.startswith(("systemd", "libsystemd-shared")) \
                and not version.startswith(f"{major}."):
            raise Unavailable(f"{suite} no longer carries systemd {major} ({deb.name})")
        _apt(["dpkg-deb", "-x", str(deb), str(root)], tmp)
    return root


def _apt(argv: list[str], cwd: Path) -> None:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise Unavailable(f"{' '.join(argv[:1] + argv[-1:])} failed: {' | '.join(tail)}")


def library_path(root: Path) -> str:
    """LD_LIBRARY_PATH for the 254 tree (its libsystemd-shared; everything else the host's)."""
    return str(root / "usr" / "lib" / "x86_64-linux-gnu" / "systemd")


def binary(root: Path, name: str) -> Path:
    """Path of an unpacked binary (254 ships them in /bin, later versions in /usr/bin)."""
    for sub in ("bin", "usr/bin", "usr/lib/systemd", "lib/systemd"):
        candidate = root / sub / name
        if candidate.exists() or candidate.is_symlink():
            return candidate
    raise Unavailable(f"{name} not in the unpacked systemd at {root}")


def command(root: Path, name: str) -> tuple[str, dict[str, str]]:
    """(path, extra environment) to run ``name`` from the unpacked 254 (host libc)."""
    return str(binary(root, name)), {"LD_LIBRARY_PATH": library_path(root)}


def _own_loader(root: Path) -> Path | None:
    for sub in ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu", "usr/lib64", "lib64"):
        loader = root / sub / "ld-linux-x86-64.so.2"
        if loader.exists() or loader.is_symlink():
            return loader
    return None


def systemd_binary(version: int | str, name: str) -> list[str]:
    """The argv prefix that runs systemd ``version``'s ``name`` (e.g. ``systemd-sysext``).

    252 is the host's binary (``systemd-dissect``: bookworm's systemd-container, unpacked); the others run through a dynamic loader with ``--library-path`` (not
    ``LD_LIBRARY_PATH``, so the tools they start use the host's libraries) and ``--argv0``.
    Raises :class:`Unavailable` when the binaries cannot be fetched."""
    major = _major(version)
    if major == 252:
        host = shutil.which(name) or (shutil.which(name, path="/usr/lib/systemd") or None)
        if host:
            return [host]
    root = systemd_root(major)
    path = binary(root, name)
    loader = _own_loader(root)
    systemd_libs = [root / "usr/lib/x86_64-linux-gnu/systemd", root / "lib/x86_64-linux-gnu/systemd"]
    if major == 252 or loader is None:  # built against bookworm's libc: the host's loader
        libs = [*systemd_libs, Path("/usr/lib/x86_64-linux-gnu/systemd")]
        loader = Path("/lib64/ld-linux-x86-64.so.2")
    else:
        libs = [root / "usr/lib/x86_64-linux-gnu", *systemd_libs, root / "lib/x86_64-linux-gnu",
                Path("/lib/x86_64-linux-gnu"), Path("/usr/lib/x86_64-linux-gnu")]
    return [str(loader), "--library-path", ":".join(str(p) for p in libs), "--argv0", name,
            str(_resolve_inside(root, path))]


def _resolve_inside(root: Path, path: Path) -> Path:
    """Follow symlinks of an unpacked binary inside ``root`` (absolute targets too)."""
    for _ in range(10):
        if not path.is_symlink():
            return path
        target = os.readlink(path)
        path = root / target.lstrip("/") if target.startswith("/") else path.parent / target
    return path


def systemd_version(version: int | str) -> str:
    """The full version ('257.9') of the binaries :func:`systemd_binary` runs for ``version``."""
    argv = systemd_binary(version, "systemd-sysext")
    out = subprocess.run([*argv, "--version"], capture_output=True, text=True, check=False)
    first = (out.stdout or out.stderr).splitlines()[:1]
    if out.returncode != 0 or not first:
        raise Unavailable(f"systemd {version}: {' '.join(argv)} --version failed: "
                          f"{out.stderr.strip()[-300:]}")
    match = re.search(r"\((\d+(?:\.\d+)?)", first[0]) or re.search(r"(\d+)", first[0])
    return match.group(1) if match else first[0]
