"""Startup (issue 14 target 4): ``--version`` and the top-level ``--help`` import no command
module; the one-line summaries they show are the commands' own help lines."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {action.dest: action.help for action in sub._choices_actions}


def test_summaries_are_the_commands_own_help_lines():
    from pipeline.commands import cli

    full = _helps(cli.parser())
    quick = _helps(cli.parser(summaries=True))
    assert quick == full
    assert set(cli.SUMMARIES) == set(cli.COMMANDS)


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_version_and_help_import_no_command_module(flag):
    probe = ("import sys, json\nfrom pipeline.commands import cli\n"
             f"try:\n    cli.main([{flag!r}])\nexcept SystemExit as e:\n    code = e.code\n"
             "print(json.dumps([code, sorted(m for m in sys.modules if m.startswith('pipeline'))]))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=REPO, check=True)
    code, modules = json.loads(proc.stdout.strip().splitlines()[-1])
    assert code == 0
    assert set(modules) <= {"pipeline", "pipeline.commands", "pipeline.commands.cli",
                            "pipeline.errors", "pipeline.commands.clikit"}, modules
