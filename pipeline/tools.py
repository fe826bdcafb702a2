"""The one door to external programs (mksquashfs, mkfs.erofs, systemd-repart, veritysetup, apt-get).

Every tool runs with the same scrubbed environment so that the locale, time zone, umask or
the caller's SOURCE_DATE_EPOCH cannot leak into an image; failures become a BuildError that
quotes the tool's last lines; versions are captured once for the manifest.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence

from .errors import BuildError

#: Debian package that provides each tool, for the "install it" hint.
TOOL_PACKAGES = {
    "mksquashfs": "squashfs-tools",
    "unsquashfs": "squashfs-tools",
    "mkfs.erofs": "erofs-utils",
    "fsck.erofs": "erofs-utils",
    "dump.erofs": "erofs-utils",
    "systemd-repart": "systemd-repart",
    "veritysetup": "cryptsetup-bin",
    "apt-get": "apt",
    "dpkg-deb": "dpkg",
    "rpmbuild": "rpm",
    "openssl": "openssl",
    "sfdisk": "fdisk",
}

#: How to ask each tool for its version, and the pattern that finds the number in the answer.
_VERSION_PROBES = {
    "mksquashfs": (["-version"], r"version\s+(\S+)"),
    # mkfs.erofs 1.5 has no --version; it prints its version before failing on a missing source.
    "mkfs.erofs": (["/nonexistent/probe.img", "/nonexistent/probe"], r"mkfs\.erofs\s+(\d\S*)"),
    "systemd-repart": (["--version"], r"systemd\s+(\d+\S*)"),
    "veritysetup": (["--version"], r"veritysetup\s+(\S+)"),
}


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal, fixed environment: nothing from the caller but PATH (and LD_LIBRARY_PATH)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "LC_ALL": "C.UTF-8",
        "LANG": "C.UTF-8",
        "TZ": "UTC",
        "HOME": "/nonexistent",
    }
    if "LD_LIBRARY_PATH" in os.environ:
        env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
    if extra:
        env.update(extra)
    return env


def find(tool: str) -> str:
    """Absolute path of ``tool``, or a BuildError that names the package to install."""
    path = shutil.which(tool, path=clean_env()["PATH"] + ":/usr/sbin:/sbin")
    if path is None:
        package = TOOL_PACKAGES.get(tool, tool)
        raise BuildError(tool, "not found", f"install it: apt-get install {package}")
    return path


#: Seconds a tool may run before it is stopped, unless the call gives its own ``timeout``:
#: generous (a multi-GiB image packs in minutes), only there so that a hung tool (a stuck
#: mirror, a FUSE mount that never answers) cannot hold a build forever.
DEFAULT_TIMEOUT = 4 * 3600

#: How much of a tool's stderr (and, with ``capture=False``, stdout) is kept: the output itself
#: goes to an unlinked temporary file, so a tool printing gigabytes costs disk, not memory.
KEEP_TAIL = 1 << 20


def _guard() -> list[str]:
    """A prefix that makes the tool die with the thread that started it (PR_SET_PDEATHSIG,
    set by util-linux ``setpriv`` between fork and exec: no preexec_fn, which is unsafe while
    other threads run). A SIGKILLed build thus leaves no mksquashfs writing on; tools that fork
    their own helpers (systemd-repart) pass the same signal on."""
    path = shutil.which("setpriv", path="/usr/bin:/bin:/usr/sbin:/sbin")
    return [path, "--pdeathsig", "KILL", "--"] if path else []


def _tail(fh, limit: int = KEEP_TAIL) -> bytes:
    size = fh.seek(0, os.SEEK_END)
    fh.seek(max(0, size - limit))
    return fh.read()


def run(
    tool: str,
    args: Sequence[str | os.PathLike],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    input: bytes | None = None,
    what: str | None = None,
    tick: Callable[[float], None] | None = None,
    timeout: float | None = None,
    capture: bool = True,
) -> subprocess.CompletedProcess:
    """Run ``tool args`` with the clean environment and umask 022; raise BuildError on failure.

    ``what`` says what the run was for, so the error reads like ``mksquashfs: packing out/x.raw
    failed (exit 1): <last lines>``. ``tick(seconds)`` is called about twice a second while the
    tool runs (a progress line for people on a terminal). ``timeout`` (seconds, default
    :data:`DEFAULT_TIMEOUT`) stops a tool that runs longer, with an error naming it. Output goes
    to temporary files; ``stdout`` is read back whole only with ``capture`` (the default), else
    only its last :data:`KEEP_TAIL` bytes, like ``stderr``.
    """
    argv = [find(tool), *map(str, args)]
    limit = DEFAULT_TIMEOUT if timeout is None else timeout
    with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
        with subprocess.Popen(
            [*_guard(), *argv],
            env=clean_env(env),
            cwd=cwd,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=out_f,
            stderr=err_f,
            umask=0o022,
        ) as child:
            start = time.monotonic()
            try:
                while True:
                    elapsed = time.monotonic() - start
                    wait = limit - elapsed
                    if tick:
                        wait = min(wait, 0.5)
                    try:
                        child.communicate(input, timeout=max(wait, 0))
                        break
                    except subprocess.TimeoutExpired:
                        input = None  # already sent by the first communicate()
                        elapsed = time.monotonic() - start
                        if elapsed >= limit:
                            child.kill()
                            child.wait()
                            raise BuildError(tool, f"{what or 'run'} stopped after {limit:g} s "
                                             "(timeout)", "the tool hung or the timeout is too "
                                             "short for this input") from None
                        if tick:
                            tick(elapsed)
            except BaseException:  # interrupted (Ctrl-C, SIGTERM): the tool must not outlive us
                child.kill()
                raise
        stdout = (out_f.seek(0), out_f.read())[1] if capture else _tail(out_f)
        stderr = _tail(err_f)
    proc = subprocess.CompletedProcess(argv, child.returncode, stdout, stderr)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout[-KEEP_TAIL:]).decode(errors="replace").strip()
        raise BuildError(
            tool,
            f"{what or 'run'} failed (exit {proc.returncode})",
            " | ".join(tail.splitlines()[-5:]) or "no output",
        )
    return proc


@functools.cache
def version(tool: str) -> str | None:
    """The installed version of ``tool`` (None when it is not installed), for the manifest."""
    try:
        path = find(tool)
    except BuildError:
        return None
    args, pattern = _VERSION_PROBES.get(tool, (["--version"], r"(\d+(?:\.\d+)+\S*)"))
    try:
        proc = subprocess.run([path, *args], env=clean_env(), capture_output=True, check=False,
                              timeout=60)
    except subprocess.TimeoutExpired:
        raise BuildError(tool, "did not answer its version probe within 60 s") from None
    text = (proc.stdout + proc.stderr).decode(errors="replace")
    match = re.search(pattern, text)
    return match.group(1) if match else text.strip().splitlines()[0] if text.strip() else None


def have(tool: str) -> bool:
    """Whether ``tool`` is installed, for callers that offer an alternative or a better hint."""
    try:
        find(tool)
    except BuildError:
        return False
    return True
