"""Peak memory of a command, measured honestly from a test.

``ru_maxrss`` of a child forked straight from pytest starts at pytest's own resident size (the
kernel carries the parent's high-water mark across fork and exec), so after a few hundred tests
every child would seem to need 100+ MiB. A tiny interpreter forks the command instead: its
high-water mark is the command's own.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_WRAPPER = (
    "import os, signal, subprocess, sys, threading\n"
    "timeout = float(sys.argv[1])\n"
    "p = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,\n"
    "                     start_new_session=True)\n"
    "t = threading.Timer(timeout, lambda: os.killpg(p.pid, signal.SIGKILL))\n"
    "t.start()\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "t.cancel()\n"
    "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss, usage.ru_utime + usage.ru_stime)\n"
)


def run_measured(argv: list[str], *, cwd: Path, env: dict, stderr, timeout: float
                 ) -> tuple[int, int, float]:
    """Run ``argv`` (stdin and stdout closed, stderr to ``stderr``); return its exit status,
    peak RSS in KiB and CPU seconds. Killed with its process group after ``timeout`` s."""
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, str(timeout), *argv], cwd=cwd,
                          env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=stderr, check=True, text=True)
    code, rss_kib, cpu = proc.stdout.split()
    return int(code), int(rss_kib), float(cpu)
