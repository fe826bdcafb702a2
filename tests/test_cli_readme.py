"""The README's CLI contract sections say what the code does (issue 16 §3, §8): the commands
that may exit 3 are the ones whose --help says what 3 means and the ones the README's exit table
names; the verbs without --json and with --timeout are the ones the README says; the top-level
groups are the README's."""

from __future__ import annotations

import argparse
import ast
import re

from conftest import REPO

from pipeline.commands import cli

README = (REPO / "README.md").read_text()


def _commands():
    def walk(parser, prefix=()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield (*prefix, name), sub
                    yield from walk(sub, (*prefix, name))
    return dict(walk(cli.parser()))


def _verdict_modules() -> set[str]:
    """Command modules whose code can return or raise exit 3 (VERDICT, NOT_MERGING,
    VerdictError)."""
    found = set()
    for path in (REPO / "pipeline/commands").glob("*.py"):
        if path.stem in ("cli", "clikit", "manpage", "__init__"):
            continue
        names = {n.id for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Name)}
        if names & {"VERDICT", "NOT_MERGING", "VerdictError"}:
            found.add(path.stem)
    return found


def test_every_command_that_gives_a_verdict_says_so_in_help_and_readme():
    modules = _verdict_modules()
    assert {"check", "doctor", "lock", "trust", "verify"} <= modules
    for module in modules:  # each such module registers at least one verdict command
        assert {c for c, m in cli.COMMANDS.items() if m == module} & set(cli.VERDICTS), module
    row = next(line for line in README.splitlines() if line.startswith("| `3` |"))
    for command in cli.VERDICTS:
        assert f"`{command}" in row or f"/`{command}`" in row, command
    assert "here 3 means: with --check" in " ".join(
        _commands()[("lock",)].format_help().split())


def test_the_readme_names_the_verbs_without_json_and_with_timeout():
    commands = _commands()
    without = sorted(" ".join(n) for n, sub in commands.items()
                     if "--json" not in sub._option_string_actions
                     and not any(isinstance(a, argparse._SubParsersAction) for a in sub._actions))
    assert without == ["recipe-reference", "troubleshooting"]
    usage = " ".join(line.lstrip("# ") for line in README.splitlines()
                     if line.startswith("# "))
    assert "(recipe-reference and troubleshooting, which print docs: --debug only)" in usage
    timeout = sorted(" ".join(n) for n, sub in commands.items()
                     if "--timeout" in sub._option_string_actions)
    assert timeout == ["build", "fetch", "install", "lock", "verify"]
    assert "build, verify, lock, fetch and install (--feed URL) take --timeout SECONDS" in usage
    assert re.search(r"`--timeout SECONDS` \(on every command that may download:\s+`build`, "
                     r"`verify`, `lock`, `fetch`, `install --feed URL`", README)


def test_the_readme_groups_are_the_help_groups():
    usage = " ".join(line.lstrip("# ") for line in README.splitlines()
                     if line.startswith("# "))
    for group, names in cli.GROUPS.items():
        if group == "Docs":
            assert "Docs)" in usage
            continue
        assert f"{group}: {' '.join(names)}" in usage, group
    grouped = {n for names in cli.GROUPS.values() for n in names}
    assert grouped == set(cli.SUMMARIES)  # no verb left in "More"
