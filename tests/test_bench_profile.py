"""tests/bench.py's profile stays true to the code it measures (the benchmark itself is never a
test): every function its profiled build times still exists where the build looks it up, and
the plain side's script marks every phase it reports."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

from conftest import REPO
from prereq import require_tool

# by path: ``import bench`` could find the checkout's bench/ results directory instead
_spec = importlib.util.spec_from_file_location("bench_script", REPO / "tests/bench.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_the_profiled_build_finds_every_function_it_times(tmp_path):
    out = tmp_path / "profile.json"
    proc = subprocess.run([sys.executable, str(REPO / "tests/bench.py"), "--profile-run",
                           str(out), "--version"], capture_output=True, text=True,
                          env=bench.ours_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("sysext-pipeline ")
    found = json.loads(out.read_text())
    assert found["not_found"] == []  # a rename: bench.WRAPPED must follow it
    assert found["stages"] == {}  # --version builds nothing


def test_the_plain_script_marks_its_phases(tmp_path):
    require_tool("mksquashfs", "squashfs-tools")
    took, out = bench.timed_output(bench.plain_script([], tmp_path, "squashfs-3"))
    phases = bench.plain_marks(out, took)
    assert set(phases) == {"setup", "extract", "normalize", "pack", "outside"}
    assert all(seconds >= 0 for seconds in phases.values())
    assert sum(phases.values()) <= took + 0.01
    assert (tmp_path / "plain.raw").stat().st_size > 0


def test_the_build_phases_add_up_to_the_wall_time():
    phases = bench.build_phases(json.dumps({"timings": {"fetch": 0.5, "package": 1.0}}), 2.0)
    assert phases == {"outside": 0.5, "fetch": 0.5, "package": 1.0}
