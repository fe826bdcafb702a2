"""Fetch stage: every source becomes a verified file in a content-addressed cache.

The cache is keyed by sha256 only (``<cache>/sha256/ab/abcd…``), so a file is fetched once, is
safe to share between machines and recipes, and a pinned hash makes the network unnecessary on a
rebuild. Downloads land under a temporary name, are hashed while written, and are renamed into
place only when the hash matches; a mismatch deletes the download.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import tools
from ..digest import hash_file, hash_open
from ..errors import INPUT, BuildError, InputError, PipelineError
from ..recipe import Source
from . import kinds

CHUNK = 1 << 20
PARALLEL = 4  # concurrent downloads (bounded: mirrors throttle, CI runners share links)
ATTEMPTS = 4  # tries per URL before the error
RETRY_DELAY = 0.5  # seconds before the 2nd try; doubles each time
TIMEOUT = 60  # seconds without a byte before a try counts as failed (default of timeout())
TIMEOUT_ENV = "SYSEXT_PIPELINE_TIMEOUT"
_TIMEOUT_OPTION: list[float] = []  # --timeout of this run (set_timeout)


def set_timeout(seconds: float | None) -> None:
    """The network timeout of this run (``--timeout``); None: back to the environment/default."""
    _TIMEOUT_OPTION.clear()
    if seconds is not None:
        _TIMEOUT_OPTION.append(_seconds(seconds, "--timeout"))


def timeout() -> float:
    """Seconds a connection may stay silent before a try counts as failed: ``--timeout``, else
    $SYSEXT_PIPELINE_TIMEOUT, else TIMEOUT."""
    if _TIMEOUT_OPTION:
        return _TIMEOUT_OPTION[0]
    value = os.environ.get(TIMEOUT_ENV)
    return _seconds(value, f"${TIMEOUT_ENV}") if value else TIMEOUT


def _seconds(value, where: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not 0 < seconds <= 86400 or seconds != seconds:
        raise InputError(where, f"{value!r} is not a number of seconds between 0 and 86400",
                         "e.g. 30 (how long a mirror may stay silent before a try fails)")
    return seconds


def _say(line: str) -> None:
    """A line on stderr for a wait the user should see (retries): also in CI logs."""
    print(line, file=sys.stderr, flush=True)


def default_cache_dir(given: str | os.PathLike | None = None) -> Path:
    """The package cache: ``given`` (--cache-dir/--store), else $SYSEXT_PIPELINE_CACHE, else
    $XDG_CACHE_HOME/sysext-pipeline, else ~/.cache/sysext-pipeline.

    The last two are only used when they can be made without creating anything above them: a
    missing or unusable $HOME (``HOME=/nonexistent`` for system users and in containers) never
    makes the tool create ``/nonexistent/.cache`` as root. Then the run gets a temporary cache
    (said on stderr, removed at exit)."""
    if given:
        return Path(given)
    if os.environ.get("SYSEXT_PIPELINE_CACHE"):
        return Path(os.environ["SYSEXT_PIPELINE_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):  # the XDG spec: a relative value is ignored
        base, name = Path(xdg), "$XDG_CACHE_HOME"
        why = _unusable(base / "sysext-pipeline", base, base.parent)
    else:
        home = os.environ["HOME"] if "HOME" in os.environ else os.path.expanduser("~")
        base, name = Path(home or ".") / ".cache", "$HOME"
        why = f"{home!r} is not an absolute path" if not os.path.isabs(home) else \
            _unusable(base / "sysext-pipeline", base, Path(home))
    if why is None:
        return base / "sysext-pipeline"
    return _temporary_cache(f"{name}: {why}")


#: The per-process temporary cache (one for every caller: verify and its variations share it).
_TEMPORARY: list[Path] = []


def _unusable(cache: Path, base: Path, parent: Path) -> str | None:
    """Why ``cache`` cannot be used without creating more than ``base`` inside an existing,
    writable ``parent`` (None: it can)."""
    for path in (cache, base, parent):
        if path.is_dir():
            if path == parent or os.access(path, os.W_OK | os.X_OK):
                break
            return f"{path} is not writable"
        if path.exists() or path.is_symlink():
            return f"{path} is not a directory"
    else:
        return f"{parent} does not exist"
    if path == parent and not os.access(parent, os.W_OK | os.X_OK):
        return f"{parent} is not writable"
    return None


def _temporary_cache(why: str) -> Path:
    if not _TEMPORARY:
        import atexit

        path = Path(tempfile.mkdtemp(prefix="sysext-pipeline-cache-"))
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        _TEMPORARY.append(path)
        print(f"warning: no usable package cache: {why}; using a temporary cache for this run "
              f"({path}, removed at exit; set SYSEXT_PIPELINE_CACHE or give --cache-dir to keep "
              "downloads)", file=sys.stderr, flush=True)
    return _TEMPORARY[0]


@dataclass(frozen=True)
class LockedSource(Source):
    """A package file a lock names (sources/lock.py): ``size`` is the size the lock records,
    which bounds its download (a mirror that sends more is cut off)."""

    kind: str = "locked"
    size: int | None = None
    #: the recipe whose lock names it (for the ways out of a version gone from the archive)
    recipe: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Fetched:
    source: Source
    path: Path  # verified file (in the cache, or the recipe's local file)
    sha256: str
    size: int
    origin: str  # "cache", or the kind's origin: "download" | "apt" | "local"
    filename: str  # the package's own file name, for the manifest and messages


@dataclass(frozen=True)
class StoreLookup:
    status: str  # ok | missing | corrupt
    path: Path | None = None
    size: int = 0
    got: str | None = None  # corrupt: the sha256 the file really had


class NotInStore(BuildError):
    """--offline and files are not usable from the store: ``problems`` is [(name, why)], why
    'missing' or 'corrupt …' (a corrupt file is removed: the next fetch replaces it)."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        if len(problems) == 1:
            name, why = problems[0]
            where = name
            what = ("not in the cache/store" if why == "missing" else why) + \
                " and --offline was given"
        else:
            where = "--offline"
            what = (f"{len(problems)} files are not usable from the cache/store: "
                    + "; ".join(f"{n} ({'missing' if w == 'missing' else w})"
                                for n, w in problems))
        super().__init__(where, what, "fill it first: sysext-pipeline fetch RECIPE --store DIR")


class Cache:
    """The content-addressed cache: ``sha256/ab/abcd…`` plus ``locks/`` and ``tmp/``.

    Safe to share between concurrent builds and machines (osbuild's fscache is the model):
    every entry is read, created, replaced or removed only under an exclusive ``flock`` of its
    lock file (``locks/ab/abcd….lock``), so one process downloads while the others wait and then
    find it; the kernel drops the lock of a killed process. A file is hashed through the
    descriptor it was opened with and is used (returned, renamed into place) only while that
    descriptor still names the path. Downloads go to ``tmp/NAME/``, held by a lock file inside
    it for as long as the download runs; a ``tmp/`` entry whose lock can be taken belongs to a
    killed fetch and is swept. Lock files stay (empty, a few per package)."""

    #: a ``tmp/.new-*`` directory is someone's tmpdir being made; older than this it is dead
    NEW_GRACE = 60.0

    def __init__(self, root: Path):
        self.root = Path(root)
        self._swept = False

    def path_for(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / sha256

    @contextlib.contextmanager
    def entry(self, sha256: str):
        """Hold the entry's exclusive lock (blocking). A store nobody can write (read-only
        media) is read unlocked: nobody can change it either."""
        lock = self.root / "locks" / sha256[:2] / f"{sha256}.lock"
        fd = None
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as err:
            if err.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise BuildError(str(lock), f"cannot lock the cache entry: {err.strerror}") \
                    from None
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            if fd is not None:
                os.close(fd)

    def lookup(self, sha256: str | None) -> tuple[Path, int] | None:
        """(path, size) of the cached file with this hash, re-hashed first: the cache may be
        shared (NFS, rsync, CI cache), so a file is trusted only then; a corrupt one is removed."""
        found = self.find(sha256)
        return (found.path, found.size) if found.status == "ok" else None

    def find(self, sha256: str | None) -> StoreLookup:
        """Like :meth:`lookup`, but says whether a missing file was absent or corrupt (removed,
        with the hash it really had): offline, the two need different fixes."""
        if sha256 is None:
            return StoreLookup("missing")
        if not self.path_for(sha256).is_file():
            return StoreLookup("missing")
        with self.entry(sha256):
            return self._find_locked(sha256)

    def _find_locked(self, sha256: str) -> StoreLookup:
        path = self.path_for(sha256)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return StoreLookup("missing")
        except OSError as err:
            if err.errno == errno.ELOOP:  # a symlink in a shared store: never followed
                path.unlink(missing_ok=True)
                return StoreLookup("corrupt", got="a symlink")
            raise
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return StoreLookup("missing")
            digest, size = hash_open(fh)
            if digest != sha256:
                if _same_file(fh, path):
                    path.unlink(missing_ok=True)
                return StoreLookup("corrupt", got=digest)
            if not _same_file(fh, path):  # replaced meanwhile (not by us: we hold the lock)
                return StoreLookup("corrupt", got="replaced while it was hashed")
        return StoreLookup("ok", path, size)

    @contextlib.contextmanager
    def tmpdir(self):
        """A fresh directory under ``tmp/``, locked while in use and removed afterwards;
        leftovers of killed fetches are swept first (only those whose lock can be taken)."""
        tmp = self.root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        if not self._swept:
            self._swept = True
            self.sweep()
        new = Path(tempfile.mkdtemp(prefix=".new-", dir=tmp))
        fd = os.open(new / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            work = tmp / new.name[len(".new-"):]
            os.rename(new, work)  # only now visible to a sweep, and already locked
            try:
                yield work
            finally:
                shutil.rmtree(work, ignore_errors=True)
        finally:
            os.close(fd)
            shutil.rmtree(new, ignore_errors=True)  # only if the rename never happened

    def sweep(self) -> list[str]:
        """Remove what killed fetches left in ``tmp/`` (names returned): a directory whose lock
        nobody holds. A live fetch holds its lock, so it is never touched."""
        tmp = self.root / "tmp"
        removed = []
        try:
            names = sorted(os.listdir(tmp))
        except FileNotFoundError:
            return removed
        for name in names:
            path = tmp / name
            if name.startswith(".new-"):  # being made; dead only when old
                try:
                    if time.time() - path.lstat().st_mtime < self.NEW_GRACE:
                        continue
                except FileNotFoundError:
                    continue
            if not path.is_dir() or path.is_symlink():
                path.unlink(missing_ok=True)
                removed.append(name)
                continue
            try:
                fd = os.open(path / ".lock", os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
            except FileNotFoundError:
                fd = None  # a directory of an older version, or half-made: nobody's
            except OSError:
                continue
            try:
                if fd is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # alive
                shutil.rmtree(path, ignore_errors=True)
                removed.append(name)
            finally:
                if fd is not None:
                    os.close(fd)
        return removed

    def store(self, file: Path, expected: str | None, what: str, *,
              locked: bool = False) -> tuple[Path, str, int]:
        """Hash ``file``, check it, move it into the cache; a mismatch deletes it. The bytes
        hashed are the bytes renamed: hashed through one descriptor, renamed under the entry's
        lock (``locked``: the caller holds the lock of ``expected``), and checked to be the
        same inode, untouched, after the rename."""
        with open(file, "rb") as fh:
            digest, size = hash_open(fh)
            if expected is not None and digest != expected:
                file.unlink()
                raise InputError(what, f"sha256 mismatch: expected {expected}, got {digest}",
                                 "the file changed upstream or the pin is wrong; nothing was kept")
            before = os.fstat(fh.fileno())
            final = self.path_for(digest)
            with contextlib.nullcontext() if locked else self.entry(digest):
                final.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(file, 0o644)
                os.replace(file, final)
                after = os.fstat(fh.fileno())
                if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns) \
                        or not _same_file(fh, final):
                    final.unlink(missing_ok=True)
                    raise BuildError(what, "the downloaded file changed while it was checked",
                                     "is something else writing into the cache's tmp/?")
        return final, digest, size


def _same_file(fh, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fh``."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fh.fileno())
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def fetch_all(sources, cache: Cache, *, offline: bool = False, progress=None) -> list[Fetched]:
    """Fetch every source, at most PARALLEL at a time; results in order. Kinds that fetch
    several at once (``download_many``: apt) get their missing files in one go first. Files
    the store lacks offline are named all together (one error); otherwise the first error in
    order."""
    sources = list(sources)
    from concurrent.futures import ThreadPoolExecutor

    batched = {} if offline else _fetch_batches(sources, cache, progress)
    rest = [i for i in range(len(sources)) if i not in batched]
    with ThreadPoolExecutor(max_workers=max(1, min(PARALLEL, len(rest)))) as pool:
        futures = {i: pool.submit(fetch_one, sources[i], cache, offline=offline,
                                  progress=progress) for i in rest}
        errors = [f.exception() for f in futures.values()]
    absent = [e for e in errors if isinstance(e, NotInStore)]
    if absent:
        raise NotInStore([p for e in absent for p in e.problems])
    for error in errors:
        if error is not None:
            raise error
    return [batched[i] if i in batched else futures[i].result() for i in range(len(sources))]


def _fetch_batches(sources: list[Source], cache: Cache, progress) -> dict[int, Fetched]:
    """Index → Fetched for the sources fetched in batches: per kind with ``download_many``,
    every pinned source not in the cache, under all their entry locks (taken in sha256 order,
    so two batches never wait for each other). A batch that fails is left to fetch_one."""
    groups: dict[str, list[int]] = {}
    for index, source in enumerate(sources):
        kind = kinds.of(source)
        if kind.download_many is not None and source.sha256 is not None:
            groups.setdefault(kind.name, []).append(index)
    done: dict[int, Fetched] = {}
    for name, indices in groups.items():
        kind = kinds.KINDS[name]
        shas = sorted({sources[i].sha256 for i in indices})
        if len(shas) < 2:
            continue
        with contextlib.ExitStack() as held:
            for sha in shas:
                held.enter_context(cache.entry(sha))
            first: dict[str, int] = {}  # sha256 → the first source that names it
            for i in indices:
                first.setdefault(sources[i].sha256, i)
            for sha, i in first.items():
                found = cache._find_locked(sha)
                if found.status == "ok":
                    done[i] = Fetched(sources[i], found.path, sha, found.size, "cache",
                                      kind.filename(sources[i]))
            missing = [first[sha] for sha in shas if first[sha] not in done]
            if len(missing) < 2:
                continue  # nothing to gain: fetch_one does it
            with cache.tmpdir() as tmp:
                try:
                    files = kind.download_many([sources[i] for i in missing], tmp,
                                               _Net(progress))
                except BuildError:
                    continue  # one by one: that error names the source
                for i, (downloaded, filename) in zip(missing, files):
                    path, digest, size = cache.store(downloaded, sources[i].sha256, filename,
                                                     locked=True)
                    done[i] = Fetched(sources[i], path, digest, size, kind.origin, filename)
                    if progress:  # a terminal: one line per package
                        progress(filename, size, size)
            for i in indices:  # the same file named twice
                if i not in done and first[sources[i].sha256] in done:
                    got = done[first[sources[i].sha256]]
                    done[i] = Fetched(sources[i], got.path, got.sha256, got.size, got.origin,
                                      got.filename)
    return done


def fetch_one(source: Source, cache: Cache, *, offline: bool = False, progress=None) -> Fetched:
    kind = kinds.of(source)
    filename = kind.filename(source)
    if kind.download is None:
        if kind.resolved:
            raise InputError(f"source {filename}", f"a {kind.name} source is not fetched itself",
                             "expand it through the lock first (sources.lock.expand_sources)")
        found = cache.find(source.sha256)
        if found.status == "ok":
            return Fetched(source, found.path, source.sha256, found.size, "cache", filename)
        return _local(source, filename, kind.origin)
    if source.sha256 is None:
        return _download(source, kind, cache, filename, progress, offline, None)
    # One process downloads an entry while the others wait for it, then find it.
    with cache.entry(source.sha256):
        found = cache._find_locked(source.sha256)
        if found.status == "ok":
            return Fetched(source, found.path, source.sha256, found.size, "cache", filename)
        return _download(source, kind, cache, filename, progress, offline, found)


class _Net:
    """The transports a kind's download may use (kinds.Net)."""

    def __init__(self, progress):
        self.progress = progress

    def http(self, url: str, dest: Path, max_size: int | None = None) -> Path:
        http_download(url, dest, self.progress, max_size=max_size)
        return dest

    def apt(self, source: Source, tmp: Path) -> tuple[Path, str]:
        return _apt_download(source, tmp)

    def apt_many(self, sources: list[Source], tmp: Path) -> list[tuple[Path, str]]:
        return _apt_download_many(sources, tmp)


def _download(source: Source, kind: kinds.SourceKind, cache: Cache, filename: str, progress,
              offline: bool, found: StoreLookup | None) -> Fetched:
    if offline:
        found = found or StoreLookup("missing")
        raise NotInStore([(source.label or filename, "missing" if found.status == "missing" else
                           f"corrupt in the store (sha256 mismatch: got {found.got}; removed)")])
    with cache.tmpdir() as tmp:
        downloaded, filename = kind.download(source, tmp, _Net(progress))
        path, digest, size = cache.store(downloaded, source.sha256, filename,
                                         locked=source.sha256 is not None)
    return Fetched(source, path, digest, size, kind.origin, filename)


def _local(source: Source, filename: str, origin: str) -> Fetched:
    path = Path(source.ref)
    if not path.is_file():
        raise InputError(source.ref, "package file not found")
    digest, size = hash_file(path)
    if source.sha256 is not None and digest != source.sha256:
        raise InputError(source.ref, f"sha256 mismatch: expected {source.sha256}, got {digest}")
    return Fetched(source, path, digest, size, origin, filename)


class DownloadError(BuildError):
    """A download that failed for good; ``status`` is the HTTP status (None: no answer)."""

    def __init__(self, where: str, what: str, status: int | None, hint: str | None = None):
        self.status = status
        if status is not None and 400 <= status < 500 and status not in (408, 429):
            self.exit_code = INPUT  # not there (404), refused: the recorded URL is wrong
        super().__init__(where, what, hint)


#: A download whose size nothing records (a recipe URL, repository metadata) and whose server
#: announces none is cut off here; one that announces more is refused before a byte is read.
MAX_UNKNOWN_SIZE = 4 << 30


class TooLarge(InputError):
    """The server sends (or announces) more than the download may be — the bytes are not the
    recorded file, as with a hash mismatch: never retried."""


def http_download(url: str, dest: Path, progress=None, attempts: int | None = None, *,
                  max_size: int | None = None, recorded_by: str = "the lock records",
                  name: str | None = None, say=_say) -> None:
    """Download ``url`` to ``dest``: retries with backoff on 5xx, timeouts and resets.

    Each retry is one line through ``say`` (``fetch jq: try 2/4 in 1 s (timed out after
    60 s)``; ``name`` defaults to the URL's last path component), so a silent mirror is never a
    silent wait; the timeout is :func:`timeout` (``--timeout``, $SYSEXT_PIPELINE_TIMEOUT). A
    host name that does not resolve fails at once: retrying a DNS answer within the run does
    not change it.

    An interrupted transfer resumes with a Range request when the server honours it (206 with
    the right offset) and restarts from zero otherwise. 4xx fails at once. The error names the
    URL's path and the last status. ``dest`` may hold a partial file afterwards: callers
    download into a temporary directory and hash before anything reaches the cache.

    Bounded: never more than ``max_size`` bytes (the size the lock records; else
    MAX_UNKNOWN_SIZE) and never more than the Content-Length the server announced; a server
    that announces more than the bound is refused before the body is read, one that sends more
    is cut off (TooLarge, not retried), and an announced size that does not fit the free space
    of ``dest``'s directory is an error naming it. Nothing is hashed after it filled the disk.
    """
    # only a download needs them (http.client, ssl, email.*: ~15 ms of imports a build whose
    # packages are all cached does not pay)
    import http.client
    import socket
    import urllib.error
    import urllib.parse
    import urllib.request

    attempts = attempts or ATTEMPTS
    wait = timeout()
    split = urllib.parse.urlsplit(url)
    where = split.path or url
    name = name or where.rstrip("/").rsplit("/", 1)[-1] or url
    limit = MAX_UNKNOWN_SIZE if max_size is None else max(0, max_size)
    bound = (f"the {limit} bytes {recorded_by}" if max_size is not None else
             f"the {limit} bytes allowed for a download of unrecorded size")
    host = f"from {split.netloc or url}"
    last, status = "no answer", None
    for attempt in range(1, attempts + 1):
        have = dest.stat().st_size if dest.exists() else 0
        if have > limit:
            dest.unlink()
            have = 0
        headers = {"User-Agent": "sysext-pipeline"}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            request = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(request, timeout=wait) as response:
                code = getattr(response, "status", 200)
                resumed = have and code == 206 and response.headers.get(
                    "Content-Range", "").startswith(f"bytes {have}-")
                announced = _content_length(response, where)
                done = have if resumed else 0
                total = announced + done if announced is not None else 0
                if total > limit:
                    raise TooLarge(where, f"the server announces {total} bytes, more than "
                                   f"{bound}", host)
                if announced is not None:
                    _check_space(dest.parent, announced)
                with open(dest, "ab" if resumed else "wb") as out:
                    # what arrived is kept on a reset; at most one byte past the bound is read
                    while chunk := response.read1(min(CHUNK, limit - done + 1)):
                        done += len(chunk)
                        if done > limit:
                            out.close()
                            dest.unlink(missing_ok=True)
                            raise TooLarge(where, f"the server sent more than {bound}: cut "
                                           "off", host)
                        out.write(chunk)
                        if progress:
                            progress(url, done, total)
                if total and done < total:
                    raise ConnectionResetError(f"connection closed after {done} of {total} bytes")
            return
        except urllib.error.HTTPError as exc:
            status, last = exc.code, f"HTTP {exc.code} {exc.reason}"
            if exc.code == 416 and have:  # our partial file is useless: start again
                dest.unlink(missing_ok=True)
            elif exc.code < 500 and exc.code not in (408, 429):
                raise DownloadError(where, f"download failed: {last}", status, host) from None
        except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, socket.gaierror):
                raise DownloadError(where, f"cannot resolve {split.hostname or url}: "
                                    f"{reason.strerror or reason}", None,
                                    "check the host name and the DNS setup (not retried)") \
                    from None
            status, last = None, _reason(reason, wait)
        if attempt < attempts:
            delay = RETRY_DELAY * 2 ** (attempt - 1)
            say(f"fetch {name}: try {attempt + 1}/{attempts} in {delay:g} s ({last})")
            time.sleep(delay)
    raise DownloadError(where, f"download failed after {attempts} tries: {last}", status, host)


def _reason(reason, wait: float) -> str:
    """Why a try failed, in words: a timeout says how long it waited."""
    if isinstance(reason, TimeoutError) or str(reason) == "timed out":
        return f"timed out after {wait:g} s"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower() if reason.strerror[:1].isupper() and \
            reason.strerror[1:2].islower() else reason.strerror
    return str(reason) or type(reason).__name__


def _content_length(response, where: str) -> int | None:
    value = response.headers.get("Content-Length")
    if value is None:
        return None
    if not value.strip().isdigit():
        raise DownloadError(where, f"the server sent an invalid Content-Length {value[:40]!r}",
                            None)
    return int(value)


def _check_space(directory: Path, needed: int) -> None:
    free = shutil.disk_usage(directory).free
    if needed > free:
        raise BuildError(str(directory), f"not enough free space for a download of {needed} "
                         f"bytes ({free} free)", "free space, or use --cache-dir elsewhere")


#: apt-get's words for a package or version the archive does not have (not a network error)
APT_NOT_THERE = ("Unable to locate package", "Can't find a source to download version",
                 "Version '", "has no installation candidate")


def _apt_env() -> dict[str, str] | None:
    """apt's own configuration is the host's: an ``APT_CONFIG`` the caller set (a private apt
    configuration, as apt itself honours it) is passed on to apt-get; nothing else is."""
    config = os.environ.get("APT_CONFIG")
    return {"APT_CONFIG": config} if config else None


def _apt_options() -> list[str]:
    """apt's own waits bounded like ours: a connection silent for :func:`timeout` seconds
    fails (apt's default is 30 s, and --timeout would otherwise not reach apt-get)."""
    seconds = str(max(1, round(timeout())))
    return [f"-oAcquire::{scheme}::Timeout={seconds}" for scheme in ("http", "https")]


def _apt_download(source: Source, tmp: Path) -> tuple[Path, str]:
    """``apt-get download NAME=VERSION`` through the build host's own apt configuration."""
    spec = f"{source.ref}={source.version}"
    try:
        tools.run("apt-get", ["download", "-q", *_apt_options(), spec], cwd=tmp,
                  what=f"downloading {spec}", env=_apt_env())
    except BuildError as exc:
        raise _apt_failed(spec, exc) from None
    debs = sorted(tmp.glob("*.deb"))
    if len(debs) != 1:
        raise BuildError(spec, f"apt-get download produced {len(debs)} files, expected one")
    name = debs[0].name.replace("%3a", ":")
    return debs[0], name


def _apt_failed(spec: str, exc: BuildError) -> PipelineError:
    gone = any(text in (exc.hint or "") for text in APT_NOT_THERE)  # fix the input: exit 2
    if not gone:
        return BuildError(spec, "apt-get download failed", f"{exc.hint}; is the version still "
                          "in the archive, and has 'apt-get update' run?")
    name = spec.partition("=")[0].partition(":")[0]
    return InputError(spec, "apt-get download failed: apt's archive has no such version",
                      f"{exc.hint}; ways out: pin the version `apt-cache policy {name}` shows "
                      "(after `apt-get update`), or name the package in a packages source "
                      "and pin it with `sysext-pipeline lock` (a gone version then names "
                      "`lock --update` and snapshot archives)")


def _apt_download_many(sources: list[Source], tmp: Path) -> list[tuple[Path, str]]:
    """One ``apt-get download A=1 B=2 …`` for all ``sources`` (apt fetches them in parallel);
    the files matched back to the sources by the name, version and architecture in their
    archive file names. A package or version apt names as not there is an InputError naming
    it; any other failure or doubt is a BuildError (the caller then fetches one by one)."""
    specs = [f"{s.ref}={s.version}" for s in sources]
    try:
        tools.run("apt-get", ["download", "-q", *_apt_options(), *specs], cwd=tmp,
                  what=f"downloading {len(specs)} packages", env=_apt_env())
    except BuildError as exc:
        words = exc.hint or ""
        if any(text in words for text in APT_NOT_THERE):
            for source, spec in zip(sources, specs):
                name = source.ref.partition(":")[0]
                if re.search(rf"(?:'|package ){re.escape(name)}(?=[':\s;,]|$)", words):
                    raise _apt_failed(spec, exc) from None
        raise
    debs = []
    for deb in sorted(tmp.glob("*.deb")):
        parts = deb.name.replace("%3a", ":")[: -len(".deb")].split("_")
        if len(parts) == 3:
            debs.append((parts, deb))
    result = []
    for source, spec in zip(sources, specs):
        name, _, arch = source.ref.partition(":")
        hits = [deb for (n, v, a), deb in debs
                if n == name and v == source.version and (not arch or a in (arch, "all"))]
        if len(hits) != 1:
            raise BuildError(spec, f"apt-get download gave {len(hits)} files for it, expected one")
        result.append((hits[0], hits[0].name.replace("%3a", ":")))
    return result


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
