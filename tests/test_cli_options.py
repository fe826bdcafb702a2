"""Issue 12 "Shared CLI options declared once" and issue 16 §8: every argument of every command
says what it is, and an option several commands share has one spelling, one text and one parser
(pipeline/commands/clikit.py)."""

from __future__ import annotations

import argparse

import pytest
from conftest import run_cli
from recipes_kit import subcommands

from pipeline.commands import cli, clikit

COMMANDS = dict(subcommands(cli.parser()))


def test_every_argument_has_help_positionals_included():
    """... and says what it is, not only its default ("default keys/release.key" did)."""
    missing = [(" ".join(name), action.dest) for name, sub in COMMANDS.items()
               for action in sub._actions
               if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
               and (not action.help or action.help.lower().startswith("default"))]
    assert missing == []


#: option → the clikit.HELP entry every command that takes it shows
SHARED = {"--json": "json", "--root": "root", "--systemd": "systemd", "--quiet": "quiet",
          "--debug": "debug", "--os-release": "os_release", "--arch": "arch",
          "--initrd": "initrd", "--offline": "offline", "--limit": "limit",
          "--no-refresh": "no_refresh", "--refresh": "refresh", "--gnupghome": "gnupghome",
          "--timeout": "timeout"}

#: commands whose --arch is not the host's (plan/matrix/build take target architectures)
OTHER_ARCH = {"plan", "matrix", "build"}


@pytest.mark.parametrize("flag", sorted(SHARED))
def test_shared_option_has_one_text_everywhere(flag):
    users = []
    for name, sub in COMMANDS.items():
        action = sub._option_string_actions.get(flag)
        if action is None or (flag == "--arch" and name[0] in OTHER_ARCH):
            continue
        users.append(name)
        assert action.help == clikit.HELP[SHARED[flag]], (name, flag)
    assert users, flag


def test_host_options_are_the_same_on_check_doctor_explain():
    host = ("--root", "--os-release", "--arch", "--systemd", "--initrd")
    for name in ("check", "doctor", "explain"):
        assert set(host) <= set(COMMANDS[(name,)]._option_string_actions), name
    assert "--offline" in COMMANDS[("verify",)]._option_string_actions
    assert "--limit" in COMMANDS[("diff",)]._option_string_actions


def test_kind_takes_the_same_choices_everywhere():
    for name, sub in COMMANDS.items():
        action = sub._option_string_actions.get("--kind")
        if action is not None:
            assert tuple(action.choices) == clikit.KINDS, name
            assert action.help and not action.help.startswith("default"), name


def test_every_json_option_refuses_an_unknown_mode():
    """explain declared its own --json, which took --json=bogus as a mode and printed JSON."""
    for name, sub in COMMANDS.items():
        action = sub._option_string_actions.get("--json")
        if action is not None:
            assert action.type is clikit.json_mode, name
    proc = run_cli("explain", "--json=bogus", "some line")
    assert proc.returncode == 2
    assert "invalid mode 'bogus'" in proc.stderr


def test_install_enable_says_what_it_enables_with_a_feed():
    """install --feed --enable also enables systemd-sysupdate.timer (commands/publish.py's
    feed set-up): the option's text says so (issue 16)."""
    from conftest import REPO

    action = COMMANDS[("install",)]._option_string_actions["--enable"]
    assert "systemd-sysext.service/systemd-confext.service" in action.help
    assert "with --feed: also systemd-sysupdate.timer" in action.help
    assert 'units = ["systemd-sysupdate.timer"' in \
        (REPO / "pipeline/commands/publish.py").read_text()
