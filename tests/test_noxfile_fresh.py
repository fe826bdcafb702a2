"""The fresh session checks that the built tool answers: the commands it runs after the build
come from the README's "Try it" block (read through the noxfile's own ``_try_it_commands()``,
run here on its own: nox is not in the test venv)."""

from __future__ import annotations

import ast

from conftest import REPO


def _try_it_commands() -> list[str]:
    tree = ast.parse((REPO / "noxfile.py").read_text())
    func = next((n for n in tree.body if isinstance(n, ast.FunctionDef)
                 and n.name == "_try_it_commands"), None)
    assert func is not None, "noxfile.py has no _try_it_commands()"
    namespace = {"HERE": REPO}
    exec(compile(ast.Module([func], []), "noxfile.py", "exec"), namespace)
    return namespace["_try_it_commands"]()


def test_fresh_asks_the_built_tool_for_its_version_and_a_check():
    commands = _try_it_commands()
    assert commands[0] == ". .nox/build/bin/activate && sysext-pipeline --version"
    assert ". .nox/build/bin/activate && sysext-pipeline check out/debug-tools.raw" in commands
    assert not any("install" in c.split("&&", 1)[1] for c in commands), commands


def test_the_try_it_block_still_has_the_commands_fresh_reads():
    text = (REPO / "README.md").read_text()
    block = text.split("Try it on this machine", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    assert ". .nox/build/bin/activate" in block
    assert "sysext-pipeline check out/debug-tools.raw" in block
