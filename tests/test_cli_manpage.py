"""Issue 16 §7: a man page sysext-pipeline(1), generated from the tables --help is made of, kept
current, rendered by groff without a warning, and installed with the package."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import zipfile

from conftest import REPO
from prereq import require_tool

from pipeline.commands import cli, manpage
from pipeline.errors import EXIT_CLASSES

PAGE = REPO / "docs" / "sysext-pipeline.1"


def test_the_page_is_current():
    assert PAGE.read_text() == manpage.render(), \
        "regenerate: python3 -m pipeline.commands.manpage > docs/sysext-pipeline.1"


def test_every_command_and_option_is_in_it():
    text = PAGE.read_text()
    for name, parser, _ in manpage._commands(cli.parser()):
        if any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
            continue  # a group (keys, cache): its commands are listed
        assert f"\\fBsysext\\-pipeline {manpage.esc(name)}\\fR" in text, name
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help", "--debug"):
                    assert manpage.esc(flag) in text, (name, flag)
    for code, meaning in EXIT_CLASSES.items():
        assert f".TP\n\\fB{code}\\fR\n{manpage.esc(meaning)}" in text
    assert text.isascii()


def test_groff_renders_it_without_a_warning():
    require_tool("groff", "groff-base")
    proc = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(PAGE)],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    shown = subprocess.run(["groff", "-man", "-Tascii", str(PAGE)],
                           capture_output=True, text=True, check=True).stdout
    shown = re.sub(".\b", "", shown)  # bold and underline are overstruck
    assert "EXIT STATUS" in shown and "sysext-pipeline check" in shown


def test_the_wheel_installs_it(tmp_path):
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info next to the sources
    for name in ("pyproject.toml", "README.md", "docs/sysext-pipeline.1"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / name, src / name)
    shutil.copytree(REPO / "pipeline", src / "pipeline",
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(src)], check=True, capture_output=True,
                   cwd=tmp_path)
    wheel = next(tmp_path.glob("sysext_pipeline-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith(".data/data/share/man/man1/sysext-pipeline.1") for n in names), names
