"""A tool is started only while the build that starts it is alive (pipeline/tools.py
die_with_parent): PR_SET_PDEATHSIG is armed by setpriv after the fork, so a build killed in
between would leave the tool running; the check after arming closes that window."""

from __future__ import annotations

import os
import subprocess

from prereq import require_tool

from pipeline import tools


def test_a_tool_starts_under_its_living_parent(tmp_path):
    require_tool("setpriv", "util-linux")
    marker = tmp_path / "ran"
    proc = subprocess.run([*tools.die_with_parent(os.getpid()), "touch", str(marker)])
    assert proc.returncode == 0 and marker.exists()


def test_a_tool_whose_parent_is_gone_is_never_started(tmp_path):
    """What a tool sees when its build died before the death signal was armed: it was
    re-parented, so its parent is no longer the pid the build had."""
    require_tool("setpriv", "util-linux")
    marker = tmp_path / "ran"
    gone = os.getppid()  # any pid but the one that starts it stands for the dead build
    proc = subprocess.run([*tools.die_with_parent(gone), "touch", str(marker)])
    assert proc.returncode == 137 and not marker.exists()


def test_a_failing_tool_keeps_its_exit_status_and_arguments(tmp_path):
    require_tool("setpriv", "util-linux")
    script = 'echo "$1 $2"; exit 3'
    proc = subprocess.run([*tools.die_with_parent(os.getpid()), "sh", "-c", script, "sh", "a b",
                           "$c"], capture_output=True, text=True)
    assert proc.returncode == 3 and proc.stdout == "a b $c\n"
