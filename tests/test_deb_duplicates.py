"""A .deb with two control.tar members or two data.tar members is malformed (left over in the
closing note of issues 14-16): which one is the package is ambiguous. dpkg-deb refuses two
control members ("contains two control members"); ours refuses both kinds with one line naming
the package and the second member, exit 2. dpkg-deb builds the package; its members are put
together again with one of them twice (tests/hostile_corpus.py's ar writer and reader)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import run_cli
from hostile_corpus import ar, ar_split
from pkgfactory import build_deb, file
from prereq import require_tool
from recipes_kit import EPOCH, recipe_dict, write_recipe_dict

from pipeline.errors import INPUT, InputError
from pipeline.formats.deb import read_deb


def _members(directory: Path) -> dict[str, bytes]:
    """debian-binary, control.tar.gz and data.tar.gz of a package dpkg-deb built."""
    require_tool("dpkg-deb", "dpkg")
    deb = build_deb(directory, "tool", "1.0", [file("/usr/bin/tool", b"#!/bin/sh\necho tool\n")],
                    compression="gzip")
    parts = dict(ar_split(deb))
    assert sorted(parts) == ["control.tar.gz", "data.tar.gz", "debian-binary"]
    return parts


def _deb(parts: dict[str, bytes], out: Path, members: list[str]) -> Path:
    out.write_bytes(ar([(name, parts[name]) for name in members]))
    assert [name for name, _ in ar_split(out)] == members
    return out


CASES = {
    "two-control": (["debian-binary", "control.tar.gz", "control.tar.gz", "data.tar.gz"],
                    "control.tar.gz: a second control.tar member"),
    "two-data": (["debian-binary", "control.tar.gz", "data.tar.gz", "data.tar.gz"],
                 "data.tar.gz: a second data.tar member"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_second_control_or_data_member_is_refused(tmp_path, case):
    members, says = CASES[case]
    deb = _deb(_members(tmp_path), tmp_path / f"{case}.deb", members)
    if case == "two-control":  # the real dpkg-deb refuses it too
        proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path / "x")],
                              capture_output=True, text=True)
        assert proc.returncode != 0 and "contains two control members" in proc.stderr
    with pytest.raises(InputError) as caught:
        list(read_deb(deb))
    assert caught.value.line().startswith(f"{deb.name}:{says} ("), caught.value.line()
    recipe = write_recipe_dict(tmp_path / "recipe", recipe_dict(
        "tool", kind="sysext", sources=[deb],
        image={"format": "directory", "source_date_epoch": EPOCH}))
    proc = run_cli("build", str(recipe), "-o", str(tmp_path / "out"), "--cache-dir",
                   str(tmp_path / "cache"))
    assert proc.code == INPUT, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{deb.name}:{says}" in errors[0], proc.stderr
    assert not (tmp_path / "out" / "tool").exists()


def test_the_package_as_built_is_read(tmp_path):
    parts = _members(tmp_path)
    deb = _deb(parts, tmp_path / "once.deb", ["debian-binary", "control.tar.gz", "data.tar.gz"])
    assert "./usr/bin/tool" in {entry.path for entry in read_deb(deb)}
