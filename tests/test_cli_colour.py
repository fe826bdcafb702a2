"""Issue 16 §8: colour for the words a person must not miss (error, severe) on a terminal only,
honouring NO_COLOR: doctor's findings too, not only the error: line."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

from conftest import REPO, run_cli


def _stdout_on_a_terminal(*args: str, env: dict) -> bytes:
    master, slave = pty.openpty()
    full = {**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm", **env}
    full = {k: v for k, v in full.items() if v is not None}
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], stdout=slave,
                          stderr=subprocess.DEVNULL, env=full, cwd=REPO)
    os.close(slave)
    out = b""
    try:
        while chunk := os.read(master, 4096):
            out += chunk
    except OSError:  # EIO: the other side is closed
        pass
    os.close(master)
    assert proc.returncode == 3  # the tree has an error finding
    return out


def test_doctor_colours_its_errors_on_a_terminal_only(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text("VERSION_ID=12\n")  # no ID: an error finding
    args = ("doctor", "--root", str(root), "--systemd", "252")
    coloured = _stdout_on_a_terminal(*args, env={"NO_COLOR": None})
    assert b"\x1b[1;31merror  \x1b[0m host.no-id:" in coloured, coloured
    plain = _stdout_on_a_terminal(*args, env={"NO_COLOR": "1"})
    assert b"error   host.no-id:" in plain and b"\x1b" not in plain
    piped = run_cli(*args)
    assert "error   host.no-id:" in piped.stdout and "\x1b" not in piped.stdout
