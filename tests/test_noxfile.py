"""noxfile.py stays true to the tests and the README (read as text: nox is not in the test venv).

- every tool a test asks for with ``require_tool`` is in the noxfile's one table of system
  packages (or comes with every Debian: essential packages), so a machine set up by the noxfile
  alone can pass;
- the README's Quick start block holds exactly the two commands ``nox -s fresh`` runs.
"""

from __future__ import annotations

import ast
import re
import sys

from conftest import REPO

#: Tools of Debian's essential/required set (in every minbase tree): not in the table.
ESSENTIAL = {"tar", "apt-get", "sh", "ls", "find", "gzip", "mount", "umount", "localedef"}


def _system_packages() -> list[tuple[str, list[str], set[str]]]:
    """The noxfile's SYSTEM_PACKAGES: computed by its ``_system_packages()`` from the one table
    of tools (pipeline/tools.py TOOLS), run here on its own."""
    tree = ast.parse((REPO / "noxfile.py").read_text())
    func = next((n for n in tree.body if isinstance(n, ast.FunctionDef)
                 and n.name == "_system_packages"), None)
    assert func is not None, "noxfile.py has no _system_packages()"
    namespace = {"HERE": REPO, "sys": sys}
    exec(compile(ast.Module([func], []), "noxfile.py", "exec"), namespace)
    return namespace["_system_packages"]()


def _required_tools() -> dict[str, str]:
    """tool → where a test requires it (every require_tool("tool", ...) under tests/)."""
    found = {}
    for path in sorted((REPO / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "require_tool"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                found.setdefault(node.args[0].value, f"{path.name}:{node.lineno}")
    return found


def test_every_required_tool_is_in_the_table():
    table = {probe for probe, _, uses in _system_packages() if "tests" in uses}
    required = _required_tools()
    assert len(required) > 20  # the scan finds the suite's tools
    missing = {tool: where for tool, where in required.items()
               if tool not in table and tool not in ESSENTIAL}
    assert not missing, f"add to TOOLS in pipeline/tools.py: {missing}"


def test_table_rows_are_well_formed():
    rows = _system_packages()
    probes = [probe for probe, _, _ in rows]
    assert len(probes) == len(set(probes)), "a probe is listed twice"
    for probe, packages, uses in rows:
        assert packages and all(re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", p) for p in packages), probe
        assert uses <= {"build", "tests", "fresh"} and uses, probe


def test_quick_start_block_has_the_two_commands():
    text = (REPO / "README.md").read_text()
    block = text.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split(" #", 1)[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["python3 noxfile.py -s build", "python3 noxfile.py -s tests"]
