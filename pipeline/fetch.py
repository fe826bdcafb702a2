"""Fetch stage: every source becomes a verified file in a content-addressed cache.

The cache is keyed by sha256 only (``<cache>/sha256/ab/abcd…``), so a file is fetched once, is
safe to share between machines and recipes, and a pinned hash makes the network unnecessary on a
rebuild. Downloads land under a temporary name, are hashed while written, and are renamed into
place only when the hash matches; a mismatch deletes the download.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from . import tools
from .errors import BuildError, InputError
from .recipe import Source

CHUNK = 1 << 20


def default_cache_dir() -> Path:
    if os.environ.get("SYSEXT_PIPELINE_CACHE"):
        return Path(os.environ["SYSEXT_PIPELINE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sysext-pipeline"


@dataclass(frozen=True)
class Fetched:
    source: Source
    path: Path  # verified file (in the cache, or the recipe's local file)
    sha256: str
    size: int
    origin: str  # "cache" | "download" | "apt" | "local"
    filename: str  # the package's own file name, for the manifest and messages


class Cache:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path_for(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / sha256

    def lookup(self, sha256: str | None) -> Path | None:
        if sha256 is None:
            return None
        path = self.path_for(sha256)
        return path if path.is_file() else None

    def tmpdir(self) -> Path:
        tmp = self.root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=tmp))

    def store(self, file: Path, expected: str | None, what: str) -> tuple[Path, str, int]:
        """Hash ``file``, check it, move it into the cache; a mismatch deletes it."""
        digest, size = hash_file(file)
        if expected is not None and digest != expected:
            file.unlink()
            raise InputError(what, f"sha256 mismatch: expected {expected}, got {digest}",
                             "the file changed upstream or the pin is wrong; nothing was kept")
        final = self.path_for(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(file, 0o644)
        os.replace(file, final)
        return final, digest, size


def hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def fetch_all(sources, cache: Cache, *, offline: bool = False, progress=None) -> list[Fetched]:
    return [fetch_one(source, cache, offline=offline, progress=progress) for source in sources]


def fetch_one(source: Source, cache: Cache, *, offline: bool = False, progress=None) -> Fetched:
    filename = _filename(source)
    cached = cache.lookup(source.sha256)
    if cached is not None:
        digest, size = source.sha256, cached.stat().st_size
        return Fetched(source, cached, digest, size, "cache", filename)
    if source.type != "apt" and not source.is_url:
        return _local(source, filename)
    if offline:
        raise BuildError(filename, "not in the cache and --offline was given",
                         "fill the cache first (build once online)")
    tmp = cache.tmpdir()
    try:
        if source.type == "apt":
            downloaded, filename = _apt_download(source, tmp)
            origin = "apt"
        else:
            downloaded = tmp / "download"
            _http_download(source.ref, downloaded, progress)
            origin = "download"
        path, digest, size = cache.store(downloaded, source.sha256, filename)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Fetched(source, path, digest, size, origin, filename)


def _filename(source: Source) -> str:
    if source.type == "apt":
        return f"{source.ref}={source.version}"
    return source.ref.rstrip("/").rsplit("/", 1)[-1]


def _local(source: Source, filename: str) -> Fetched:
    path = Path(source.ref)
    if not path.is_file():
        raise InputError(source.ref, "package file not found")
    digest, size = hash_file(path)
    if source.sha256 is not None and digest != source.sha256:
        raise InputError(source.ref, f"sha256 mismatch: expected {source.sha256}, got {digest}")
    return Fetched(source, path, digest, size, "local", filename)


def _http_download(url: str, dest: Path, progress=None, attempts: int = 3) -> None:
    """Download ``url`` to ``dest`` with a few retries on transient errors."""
    for attempt in range(1, attempts + 1):
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "sysext-pipeline"})
            with urllib.request.urlopen(request, timeout=60) as response, open(dest, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0)
                done = 0
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(url, done, total)
            return
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == attempts:
                raise BuildError(url, f"download failed: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            if attempt == attempts:
                reason = getattr(exc, "reason", exc)
                raise BuildError(url, f"download failed: {reason}") from None
        time.sleep(0.5 * 2**attempt)


def _apt_download(source: Source, tmp: Path) -> tuple[Path, str]:
    """``apt-get download NAME=VERSION`` through the build host's own apt configuration."""
    spec = f"{source.ref}={source.version}"
    try:
        tools.run("apt-get", ["download", "-q", spec], cwd=tmp, what=f"downloading {spec}")
    except BuildError as exc:
        raise BuildError(spec, "apt-get download failed", f"{exc.hint}; is the version still "
                         "in the archive, and has 'apt-get update' run?") from None
    debs = sorted(tmp.glob("*.deb"))
    if len(debs) != 1:
        raise BuildError(spec, f"apt-get download produced {len(debs)} files, expected one")
    name = debs[0].name.replace("%3a", ":")
    return debs[0], name


def describe_progress(stream=sys.stderr):
    """A download progress callback that draws only on a TTY (CI logs stay plain)."""
    if not stream.isatty():
        return None

    def show(url, done, total):
        name = url.rsplit("/", 1)[-1][:40]
        pct = f"{100 * done // total:3d}%" if total else f"{done >> 10} KiB"
        stream.write(f"\r  {name} {pct}")
        if total and done >= total:
            stream.write("\n")

    return show
