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


def _umask022():
    os.umask(0o022)


def run(
    tool: str,
    args: Sequence[str | os.PathLike],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    input: bytes | None = None,
    what: str | None = None,
    tick: Callable[[float], None] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``tool args`` with the clean environment and umask 022; raise BuildError on failure.

    ``what`` says what the run was for, so the error reads like ``mksquashfs: packing out/x.raw
    failed (exit 1): <last lines>``. ``tick(seconds)`` is called about twice a second while the
    tool runs (a progress line for people on a terminal).
    """
    argv = [find(tool), *map(str, args)]
    with subprocess.Popen(
        argv,
        env=clean_env(env),
        cwd=cwd,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_umask022,
    ) as child:
        start = time.monotonic()
        try:
            while True:
                try:
                    out, err = child.communicate(input, timeout=0.5 if tick else None)
                    break
                except subprocess.TimeoutExpired:
                    input = None  # already sent by the first communicate()
                    tick(time.monotonic() - start)
        except BaseException:  # interrupted (Ctrl-C, SIGTERM): the tool must not outlive us
            child.kill()
            raise
    proc = subprocess.CompletedProcess(argv, child.returncode, out, err)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()[-5:]
        raise BuildError(
            tool,
            f"{what or 'run'} failed (exit {proc.returncode})",
            " | ".join(tail) or "no output",
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
    proc = subprocess.run([path, *args], env=clean_env(), capture_output=True, check=False)
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
