"""pipeline.tools: timeouts, umask without preexec_fn, output to files, children die with us."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from childrss import run_measured

from pipeline import tools
from pipeline.errors import BuildError

REPO = Path(__file__).resolve().parent.parent


def processes_with(marker: str, program: str | None = None) -> list[int]:
    """Processes with ``marker`` in one of their arguments (and, given ``program``, running
    it: the setpriv wrapper that execs the tool has the tool's arguments too)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(marker.encode() in arg for arg in cmdline) and \
                (program is None or cmdline[0].endswith(b"/" + program.encode())):
            found.append(int(entry.name))
    return found


def _gone_within(marker: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not processes_with(marker):
            return True
        time.sleep(0.05)
    return not processes_with(marker)


def test_hanging_tool_is_stopped_by_its_timeout():
    start = time.monotonic()
    with pytest.raises(BuildError) as caught:
        tools.run("sleep", ["1000.125"], what="waiting", timeout=1)
    took = time.monotonic() - start
    assert 1 <= took < 30  # stopped at 1 s, not after 1000 (margin for a loaded machine)
    line = caught.value.line()
    assert line.startswith("sleep: waiting stopped after 1 s (timeout)"), line
    assert "\n" not in line
    assert _gone_within("1000.125", 30)  # killed and reaped before run() raised: at once


def test_timeout_applies_with_a_progress_tick_too():
    ticks = []  # every 0.5 s: empty only if the machine stalled for the whole 2.5 s
    with pytest.raises(BuildError, match=r"stopped after 2\.5 s"):
        tools.run("sleep", ["1000.25"], timeout=2.5, tick=ticks.append)
    assert ticks and max(ticks) < 2.5
    assert _gone_within("1000.25", 30)


def test_default_timeout_is_generous_and_a_fast_tool_is_unaffected():
    assert tools.DEFAULT_TIMEOUT >= 3600
    assert tools.run("true", []).returncode == 0


def test_umask_is_022_whatever_ours_is():
    old = os.umask(0o077)
    try:
        out = tools.run("sh", ["-c", "umask"]).stdout.decode().strip()
    finally:
        os.umask(old)
    assert out == "0022"


def test_failure_names_the_last_lines_of_a_large_stderr():
    script = "head -c 30000000 /dev/zero | tr '\\0' x >&2; echo >&2; echo the end >&2; exit 3"
    with pytest.raises(BuildError) as caught:
        tools.run("sh", ["-c", script], what="making noise")
    line = caught.value.line()
    assert "making noise failed (exit 3)" in line and line.endswith("the end)")
    assert len(line) < 2 * tools.KEEP_TAIL


def test_large_output_goes_to_a_file_not_memory():
    """200 MB of stdout with capture=False, and 200 MB of stderr: the process stays small."""
    script = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from pipeline import tools
proc = tools.run("sh", ["-c", "head -c 200000000 /dev/zero; head -c 200000000 /dev/zero >&2"],
                 capture=False)
assert len(proc.stdout) == tools.KEEP_TAIL and len(proc.stderr) == tools.KEEP_TAIL
"""
    # measured from a small wrapper process: a child forked from pytest starts with pytest's
    # own high-water mark
    code, peak_kib, _ = run_measured([sys.executable, "-c", script], cwd=REPO,
                                     env=dict(os.environ), stderr=None, timeout=120)
    assert code == 0
    assert peak_kib < 100 * 1024, f"peak RSS {peak_kib} KiB"


def test_captured_stdout_is_whole():
    out = tools.run("sh", ["-c", "head -c 3000000 /dev/zero"]).stdout
    assert out == b"\0" * 3000000


def test_tool_dies_when_the_build_is_killed():
    """SIGKILL of the process that started a tool: the tool is gone (a sleep of 1000 s: any
    wait below that shows it was killed; 30 s leaves room for a loaded machine).

    The tool counts as started once it runs ``sleep`` itself: before that it is the setpriv
    wrapper, whose PR_SET_PDEATHSIG is not set yet right after the fork, so a kill caught in
    that moment leaves the tool running (a real but tiny window of pipeline/tools.py; the
    test's poll landed in it now and then)."""
    marker = "1000.375"
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); from pipeline import tools; "
            f"tools.run('sleep', [{marker!r}])")
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while not processes_with(marker, "sleep"):
            assert time.monotonic() < deadline, "the tool never started"
            assert parent.poll() is None
            time.sleep(0.05)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        assert _gone_within(marker, 30), "the tool outlived the killed build"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for pid in processes_with(marker):
            os.kill(pid, signal.SIGKILL)


def test_environment_is_scrubbed():
    os.environ["SYSEXT_PIPELINE_TEST_LEAK"] = "secret"
    try:
        out = tools.run("env", []).stdout.decode()
    finally:
        del os.environ["SYSEXT_PIPELINE_TEST_LEAK"]
    assert "SYSEXT_PIPELINE_TEST_LEAK" not in out and "TZ=UTC" in out


# --- the rest of the door: input, cwd, versions, which tools a verb needs ---------------------

def test_input_reaches_the_tool_and_cwd_is_where_it_runs(tmp_path):
    proc = tools.run("sh", ["-c", "cat > got; pwd"], input=b"from stdin\n", cwd=tmp_path)
    assert (tmp_path / "got").read_bytes() == b"from stdin\n"
    assert proc.stdout.decode().strip() == str(tmp_path)
    assert proc.args[0] == tools.find("sh")  # the absolute path, not the bare name


def test_clean_env_takes_extras_and_nothing_else(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1")
    env = tools.clean_env({"XZ_OPT": "-T1"})
    assert env["XZ_OPT"] == "-T1" and env["TZ"] == "UTC" and env["LC_ALL"] == "C.UTF-8"
    assert "SOURCE_DATE_EPOCH" not in env
    assert set(env) <= {"PATH", "LC_ALL", "LANG", "TZ", "HOME", "LD_LIBRARY_PATH", "XZ_OPT"}


def test_version_and_have_of_real_and_missing_tools():
    assert tools.have("sh") and not tools.have("no-such-tool-h7")
    assert tools.version("no-such-tool-h7") is None
    assert tools.version("sfdisk") is None  # a row that is never asked (probe None)
    found = tools.version("mksquashfs")
    assert found and found[0].isdigit() and not tools.older(found, "4.5")
    status = tools.status("mksquashfs")
    assert status.ok and status.path == tools.find("mksquashfs") and status.version == found


def test_needed_follows_verb_features_and_leaves_optional_tools_out():
    names = {t.name for t in tools.needed("build", tools.build_features("ddi", "erofs", "none"))}
    assert {"mkfs.erofs", "systemd-repart", "veritysetup"} <= names
    optional = {t.name for t in tools.TOOLS if t.optional and "build" in t.uses}
    assert optional and not optional & names  # used when there, never required
    assert "mksquashfs" not in names
    assert tools.needed("build", tools.build_features("directory", "squashfs", "none")) == []
    assert tools.build_features("squashfs", "squashfs", "detached") == {"squashfs", "verity"}


def test_preflight_names_every_missing_and_old_tool_in_one_line():
    table = (tools.Tool("no-such-tool-h7", ("pkg-one",), ("demo",), "x"),
             tools.Tool("mksquashfs", ("squashfs-tools",), ("demo:fs",), "packs", "99.0",
                        (("-version",), r"version\s+(\S+)")),
             tools.Tool("sh", ("dash",), ("demo",), "is there"))
    with pytest.raises(BuildError) as err:
        tools.preflight("demo", {"fs"}, table=table)
    line = err.value.line()
    assert line.startswith("demo: not installed: no-such-tool-h7; mksquashfs ")
    assert "is older than 99.0, needed by demo (fs)" in line
    assert line.endswith("(install: apt-get install pkg-one squashfs-tools (>= 99.0))")
    tools.preflight("demo", (), table=table[2:])  # all there: no error
