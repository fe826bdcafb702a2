"""`explain` (issue 17): the catalogue, line parsing, the command, --root against real files.

The texts used here are systemd's own, as the real binaries print them (tests/test_explain_matrix.py
captures them again from 252/254/257/262 and checks every catalogued text really appears).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.systemd import explain, rules

CAPTURED = [rules.parse_version(v) for v in explain.CAPTURED]


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "explain", *args], input=stdin,
                          capture_output=True, text=True, cwd=Path(__file__).parent.parent,
                          timeout=60)


def test_every_rule_has_a_text_for_each_captured_version_it_applies_to():
    """A rule that can decide an image on a captured version has that version's text, or is
    listed as silent there (with the reason): the catalogue is derived from the rule table."""
    gaps = []
    for r in rules.RULES.values():
        assert r.id in explain.MESSAGES or r.id in explain.SILENT, r.id
        for version in CAPTURED:
            if r.applies(version) and not explain.texts_for(r.id, version) \
                    and not explain.silent(r.id, version):
                gaps.append(f"{r.id} @ {rules.format_version(version)}")
    assert not gaps
    for texts in explain.MESSAGES.values():
        for text in texts:
            assert text.source.startswith(("captured: ", "source: ")), text.template


def test_a_shared_text_names_every_rule_that_prints_it():
    lines = explain.explain_lines(
        ["Extension 'foo' is for OS '12.1', but deployed on top of '12'."], (254, 26), "sysext")
    assert lines[0].status == "rule"
    assert set(lines[0].rules) == {"match.id", "match.version-id"}
    assert lines[0].image == "foo"
    assert lines[0].values == {"name": "foo", "image": "12.1", "host": "12"}


def test_journal_prefix_kind_and_values():
    line = explain.explain_lines([
        "Dec 04 18:00:01 web1 systemd-confext[812]: Extension 'tools' is for API level '3', "
        "but running on API level '2'"])[0]
    assert (line.status, line.kind, line.image, line.rules) == \
        ("rule", "confext", "tools", ["match.level"])
    info = explain.rule_info("match.level", line)
    assert info["field"] == "CONFEXT_LEVEL"
    assert "CONFEXT_LEVEL=2" in info["fix"]
    assert info["effect"].startswith("this image is ignored")


def test_the_tool_of_a_whole_log_narrows_the_rules():
    """One confext journal line makes the unprefixed lines confext's too: a sysext-only rule
    (a directory with usr/lib/os-release) is no longer offered."""
    lines = ["Dec 04 18:00:01 web1 systemd-confext[812]: Using extensions 'a'.",
             "Failed to read metadata for image b: No medium found"]
    explained = explain.explain_lines(lines, (257, 13))
    assert explained[1].kind == "confext"
    assert explained[1].rules == ["release.missing-raw"]
    both = explain.explain_lines(lines[1:], (257, 13))[0]
    assert set(both.rules) == {"release.missing-raw", "content.os-release-dir"}


def test_exit_status_of_a_broken_merge_by_version():
    line = "'ID' field not found or empty in 'os-release' data of OS tree '/': Invalid argument"
    old = explain.explain_lines([line], (254, 26))[0]
    new = explain.explain_lines([line], (257, 13))[0]
    assert old.rules == new.rules == ["host.no-id"]
    assert old.meaning.endswith("exits 0") and new.meaning.endswith("exits 1")
    fatal = explain.explain_lines(["Failed to read metadata for image b: Name not unique on "
                                   "network"], (252, 38))[0]
    assert fatal.rules == ["release.not-unique"] and "exits 1" in fatal.meaning


def test_unknown_lines_are_unknown_not_guessed():
    lines = explain.explain_lines(["Extension 'x' is probably broken somehow.",
                                   "Mounting /proc/self/fd/3 (squashfs) on /mnt",
                                   "hello"])
    assert [line.status for line in lines] == ["unknown"] * 3
    assert all(not line.rules for line in lines)


def test_hostile_lines_stay_fast():
    import time

    # CPU time of this thread, not the wall clock: a backtracking pattern burns CPU here,
    # while a loaded machine only stretches the wall clock (about 0.01 s of CPU when fine)
    start = time.thread_time()
    lines = ["Extension '" + "'," * 2000 + "' is for OS '" + "x'" * 20,
             "Extension '" + "' is for OS '" * 3000, "x" * 10_000_000]
    explained = explain.explain_lines(lines)
    assert [line.status for line in explained] == ["unknown"] * 3
    assert time.thread_time() - start < 1


def test_long_and_huge_input_files(tmp_path):
    """A newline-free file is read in pieces (unknown, exit 0); past 64 MiB it is refused."""
    long = tmp_path / "long.log"
    long.write_text("x" * 3_000_000 + "\nUsing extensions 'a'.\n")
    proc = run("--file", str(long), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [line["status"] for line in data["lines"]] == ["unknown", "outcome"]
    huge = tmp_path / "huge.log"
    with open(huge, "wb") as f:
        f.truncate(65 * 1024 * 1024)  # sparse: no disk used
    proc = run("--file", str(huge))
    assert proc.returncode == 2 and "MiB" in proc.stderr and str(huge) in proc.stderr


def test_text_of_another_version_is_said_so():
    old = "Extension 'foo' carries no extension-release data, ignoring extension."
    assert explain.explain_lines([old], (252, 38))[0].status == "rule"
    line = explain.explain_lines([old], (257, 13))[0]
    assert line.status == "other-version"
    assert "252–253" in line.meaning


def test_breaking_line_takes_the_others_down():
    result = explain.explain_text([
        "Version info of extension 'good' matches host.",
        "Failed to read metadata for image bad: No medium found"], (252, 38), "sysext")
    assert result["merge"] == "nothing merged: bad broke the merge"
    assert "merge.broken-by-other" in result["images"]["good"].rules
    assert set(result["images"]["bad"].rules) == {"release.missing-raw"}


def test_262_names_merged_images_by_file_name():
    result = explain.explain_text(["Version info of extension 'csuf' matches host.",
                                   "Using extensions 'control', 'csuf.sysext.raw'."], (262, 1))
    assert result["images"]["csuf"].merged
    assert result["merge"] == "merged: csuf, control"


def test_cli_stdin_json_and_exit_codes():
    text = ("Dec 04 18:00:01 web1 systemd-sysext[12]: Extension 'a' is for architecture "
            "'arm64', but deployed on top of 'x86-64'.\nsomething else\n")
    proc = run("-", "--json", stdin=text)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["lines"][0]["rules"][0]["rule"] == "match.architecture"
    assert data["lines"][0]["rules"][0]["fix"] == (  # the log does not say what the image holds
        "rebuild it for x86-64 when it carries binaries (ELF files); ARCHITECTURE=_any only for "
        "an architecture-independent payload")
    assert data["unknown"] == [2]
    binary = subprocess.run([sys.executable, "-m", "pipeline", "explain", "-"],
                            input=b"\xff\xfe Using extensions 'a'.\nUsing extensions 'b'.\n",
                            capture_output=True, cwd=Path(__file__).parent.parent, timeout=60)
    assert binary.returncode == 0 and b"merge: merged: b" in binary.stdout, binary.stderr
    bad = run("--file", "/nonexistent/log")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "/nonexistent/log" in bad.stderr
    empty = run()
    assert empty.returncode == 2 and "no lines" in empty.stderr


def _root(tmp_path: Path, release: str) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "usr/lib").mkdir(parents=True)
    (root / "etc/os-release").write_text("ID=debian\nVERSION_ID=12\n")
    rel = root / "var/lib/extensions/foo/usr/lib/extension-release.d"
    rel.mkdir(parents=True)
    (rel / "extension-release.foo").write_text(release)
    return root


@pytest.mark.parametrize("release,agrees", [("ID=debian\nVERSION_ID=11\n", True),
                                            ("ID=debian\nVERSION_ID=12\n", False)])
def test_root_confirms_or_disagrees(tmp_path, release, agrees):
    """The files decide between the rules sharing a text, or contradict a stale log."""
    root = _root(tmp_path, release)
    line = "Extension 'foo' is for OS '11', but deployed on top of '12'."
    proc = run("--root", str(root), "--systemd", "252", "--json", line)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    explained = data["lines"][0]
    assert explained["agrees"] is agrees
    assert explained["files_rule"] == ("match.version-id" if agrees else "match.version-id-ok")
    image = "/var/lib/extensions/foo"  # as the tree sees it
    human = run("--root", str(root), "--systemd", "252", image, line)
    assert human.returncode == 0, human.stderr
    assert ("the log agrees" if agrees else "the log DISAGREES") in human.stdout


def test_image_never_named_is_said(tmp_path):
    root = _root(tmp_path, "ID=debian\nVERSION_ID=12\n")
    proc = run("--root", str(root), "--systemd", "254", "--json", "--image",
               "/var/lib/extensions/foo", "Using extensions 'other'.")
    data = json.loads(proc.stdout)
    assert data["files"][0]["files_rule"] == "match.version-id-ok"
    assert data["files"][0]["agrees"] is False
    assert "never name it" in data["files"][0]["note"]


def test_doctor_reports_the_journal_on_a_live_host():
    """doctor's hook: the journal part is there (this machine's journal may be empty)."""
    from pipeline.commands import explain as explain_cmd

    lines = explain_cmd.journal_lines()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "doctor", "--json"],
                          capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parent.parent, env={**os.environ})
    data = json.loads(proc.stdout)
    assert "journal" in data
    if lines is None:
        assert data["journal"] is None
    else:
        assert data["journal"]["journal_lines"] == len(lines)


@pytest.mark.root
def test_force_line_from_the_real_binary(tmp_path):
    """`merge --force` on the host's systemd: its line is explained as match.forced."""
    from merge import in_namespace
    from prereq import require_tool

    binary = require_tool("systemd-sysext", "systemd")
    root = _root(tmp_path, "ID=fedora\n")
    (root / "var/lib/extensions/foo/usr/share").mkdir(parents=True)
    (root / "var/lib/extensions/foo/usr/share/x").write_text("x\n")
    proc = in_namespace(f"SYSTEMD_LOG_LEVEL=debug {binary} merge --force --root={root}")
    result = explain.explain_text(proc.stderr.splitlines(), None, "sysext")
    forced = [line for line in result["lines"] if "Force mode" in line.text]
    assert forced, proc.stderr
    if "match.forced" in rules.RULES:
        assert all(line.rules == ["match.forced"] for line in forced)
        assert forced[0].image == "foo"
    else:  # the rule table has no rule for it: the line is unknown, not guessed
        assert all(line.status == "unknown" for line in forced)
    assert result["images"]["foo"].merged


@pytest.mark.root
@pytest.mark.parametrize("major", [252, pytest.param(254, marks=pytest.mark.network),
                                   pytest.param(257, marks=pytest.mark.network),
                                   pytest.param(262, marks=pytest.mark.network)])
def test_outcome_lines_of_the_real_binaries(tmp_path, major):
    """merge with only an ignored image, merge with none, status and list (default log level):
    every line the real binary prints is explained, none unknown."""
    import shlex

    from merge import in_namespace
    from prereq import missing
    from systemd_versions import Unavailable, systemd_binary

    try:
        argv = shlex.join(systemd_binary(major, "systemd-sysext"))
    except Unavailable as exc:
        missing(f"systemd {major}: {exc}")
    ignored = _root(tmp_path / "ignored", "ID=fedora\n")
    empty = tmp_path / "empty"
    (empty / "etc").mkdir(parents=True)
    (empty / "usr/lib").mkdir(parents=True)
    (empty / "etc/os-release").write_text("ID=debian\n")
    good = _root(tmp_path / "good", "ID=_any\n")
    (good / "var/lib/extensions/foo/usr/share").mkdir(parents=True)
    (good / "var/lib/extensions/foo/usr/share/x").write_text("x\n")
    proc = in_namespace(f"{argv} merge --root={ignored} && {argv} merge --root={empty} && "
                        f"{argv} status --root={empty} && {argv} list --root={ignored} && "
                        f"{argv} merge --root={good} && ({argv} status --root={good}; "
                        f"{argv} merge --root={good}; true) && {argv} refresh --root={good} && "
                        f"{argv} refresh --root={good} && {argv} unmerge --root={good}")
    assert proc.returncode == 0, proc.stderr
    lines = (proc.stderr + proc.stdout).splitlines()
    result = explain.explain_text(lines)
    unknown = [line.text for line in result["lines"] if line.status == "unknown"]
    assert not unknown
    assert result["merge"] == "merged: foo"
    meanings = " ".join(line.meaning for line in result["lines"])
    assert "no image was discovered" in meanings and "nothing is merged into this" in meanings
    assert "every image was skipped" in meanings
    assert "the previous merge of this hierarchy was removed" in meanings
    assert "systemd discovered this image" in meanings
