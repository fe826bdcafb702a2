"""The house: ``pipeline/`` is a set of wings whose imports run one way (see docs/architecture.md).

Every import in every module — at the top or inside a function, since a lazy import is still a
dependency — is read from the source, resolved to the module it names, and checked against
:data:`MAY_IMPORT`. A cycle between modules, or a wing reaching into one it may not (an upward
import), fails with the file and the line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"

#: Wing → the wings it may import besides itself; read bottom-up. A top-level module is a wing of
#: its own. ``pipeline`` (the package face: ``__version__``) may be imported from anywhere.
MAY_IMPORT: dict[str, set[str]] = {
    "errors": set(),
    "digest": set(),
    "jsonout": set(),
    "tools": {"errors"},
    "keys": {"errors"},
    "outdir": {"digest"},
    "formats": {"errors"},
    "systemd": {"errors"},
    "recipe": {"errors", "formats", "systemd"},
    "sources": {"errors", "digest", "tools", "outdir", "formats", "systemd", "recipe"},
    "image": {"errors", "digest", "tools", "keys", "formats", "systemd"},
    "release": {"errors", "digest", "tools", "keys", "outdir", "formats", "jsonout"},
    "host": {"errors", "digest", "tools", "keys", "formats", "systemd", "sources", "image"},
    "stages": {"errors", "digest", "tools", "keys", "outdir", "formats", "systemd", "recipe",
               "sources", "image", "release", "jsonout"},
    "reproduce": {"errors", "digest", "tools", "keys", "outdir", "formats", "systemd", "recipe",
                  "sources", "image", "release", "stages"},
    "commands": {"errors", "digest", "tools", "keys", "outdir", "formats", "systemd", "recipe",
                 "sources", "image", "release", "stages", "host", "reproduce"},
    "__main__": {"commands"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["pipeline", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def wing(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "pipeline"


def imports(module: str) -> list[tuple[str, int]]:
    """(imported pipeline module, line) for every import statement in ``module``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name in MODULES]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base != "pipeline" and not base.startswith("pipeline."):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in MODULES else base, node.lineno))
    return [(target, line) for target, line in found if target != module]


GRAPH = {module: imports(module) for module in MODULES}


def test_every_wing_is_known_and_says_what_it_owns():
    wings = {wing(m) for m in MODULES} - {"pipeline"}
    assert wings <= set(MAY_IMPORT), f"wings missing from MAY_IMPORT: {wings - set(MAY_IMPORT)}"
    for name in wings:
        init = PACKAGE / name / "__init__.py"
        if init.exists():
            doc = ast.get_docstring(ast.parse(init.read_text())) or ""
            assert doc.startswith(f"Wing ``{name}``"), f"{init}: its docstring names the wing"


def test_no_module_imports_above_its_wing():
    wrong = []
    for module, targets in GRAPH.items():
        for target, line in targets:
            mine, theirs = wing(module), wing(target)
            if theirs in (mine, "pipeline") or theirs in MAY_IMPORT.get(mine, set()):
                continue
            wrong.append(f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}: {mine} → {theirs}"
                         f" ({target})")
    assert not wrong, "imports against the house's direction:\n" + "\n".join(wrong)


def test_no_import_cycle():
    """Tarjan's strongly connected components over module → module imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target, _ in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not cycles, "import cycles: " + "; ".join(" ⇄ ".join(c) for c in cycles)


@pytest.mark.parametrize("module, target", [
    ("pipeline.reproduce.vary", "pipeline.reproduce.rebuild"),  # inside a function
    ("pipeline.host.facts", "pipeline.systemd.rules"),  # from . import rules, one level up
    ("pipeline.image.ddi.assemble", "pipeline.image.ddi.reader"),  # from .reader import …
    ("pipeline.commands.check", "pipeline.host.facts"),  # from ..host import facts as …
])
def test_the_walk_sees_every_kind_of_import(module, target):
    """The checks above can fail only if the walk finds the imports: each form is seen."""
    assert target in {t for t, _ in GRAPH[module]}


@pytest.mark.parametrize("low, high", [("image", "stages"), ("systemd", "host"),
                                       ("stages", "reproduce"), ("formats", "recipe")])
def test_the_table_refuses_an_upward_import(low, high):
    assert high not in MAY_IMPORT[low]
