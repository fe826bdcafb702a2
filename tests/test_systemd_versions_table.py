"""issue 12 item 5: a systemd version fact lives in one place, and the model does no I/O.

The spans of pipeline/systemd/rules.py (``RULES`` and the behaviour table ``CHANGES``) are the only
place that says which versions do what: code asks ``rules.since``/``Rule.applies`` (no literal
major compared anywhere in systemd/ or host/), and the texts of the tables name versions through
«…» tokens spelled from those spans (so moving a span moves the words). pipeline/systemd/ is the
pure model: it reads no file and runs nothing (host/ does).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from pipeline.systemd import explain, rules
from pipeline.systemd.rules import span

PIPELINE = Path(__file__).resolve().parent.parent / "pipeline"
MODEL = sorted((PIPELINE / "systemd").glob("*.py"))
HOST = sorted((PIPELINE / "host").glob("*.py"))
MAJORS = range(rules.OLDEST, rules.NEWEST + 1)
#: '256+', '252–255', '252/253', '254 on', '≤258', '< 256': a version range written out
RANGE = re.compile(r"(?<![\d.\w-])(25[2-9]|26[0-2])(\.\d+)?(\+|–|/2[56]\d| on\b)|[≤<]\s?2[56]\d")


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _is_major(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value in MAJORS
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_is_major(e) for e in node.elts[:1]) or all(
            isinstance(e, ast.Constant) and e.value in MAJORS for e in node.elts) and \
            bool(node.elts)
    return False


@pytest.mark.parametrize("path", MODEL + HOST, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_literal_version_is_compared_in_code(path):
    """``version >= (256, 0)``, ``major in (252, 253)``, ``span("254")`` inside a function: a
    version fact outside the table."""
    found = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Compare) and any(_is_major(x) for x in
                                                 [node.left, *node.comparators]):
            found.append(f"{path.name}:{node.lineno}: compares a literal systemd version")
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for call in ast.walk(node):
                if isinstance(call, ast.Call) and getattr(call.func, "id", getattr(
                        call.func, "attr", None)) in ("span", "Span", "parse_version") and \
                        any(isinstance(a, ast.Constant) for a in call.args):
                    found.append(f"{path.name}:{call.lineno}: a literal version in "
                                 f"{node.name}()")
    assert not found, "\n".join(found)


def _table_texts() -> list[tuple[str, str]]:
    """(where, text) of every sentence the tables hold, evidence (what was captured) aside."""
    out = []
    for r in rules.RULES.values():
        out += [(f"RULES[{r.id}].{f}", getattr(r, f)) for f in ("summary", "log", "symptom",
                                                                  "fix")]
    out += [(f"CHANGES[{c.id}]", c.summary) for c in rules.CHANGES.values()]
    out += [(f"NOT_SHOWN_HERE[{k}]", v.split("What does run")[0])
            for k, v in rules.NOT_SHOWN_HERE.items()]
    out += [(f"explain.SILENT[{k}]", why) for k, (_, why) in explain.SILENT.items()]
    out += [(f"explain.OUTCOMES[{o.pattern[:20]}]", o.meaning) for o in explain.OUTCOMES]
    out.append(("rules.EXIT_TEXT", rules.EXIT_TEXT))
    return out


def test_texts_name_versions_through_the_spans():
    """In the source, a table text writes «ID» / «not ID» / «after ID», never '256+'."""
    found = []
    for path in MODEL:
        for node in ast.walk(_tree(path)):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) in
                    ("Rule", "Change", "Outcome")):
                continue
            texts = [a.value for a in node.args[:-1] if isinstance(a, ast.Constant) and
                     isinstance(a.value, str)]  # the last argument is evidence (Outcome)
            if getattr(node.func, "id", None) != "Outcome":
                texts = [a.value for a in node.args if isinstance(a, ast.Constant) and
                         isinstance(a.value, str)]
            found += [f"{path.name}:{node.lineno}: {m.group(0)!r} in {text[:60]!r}"
                      for text in texts[1:] for m in RANGE.finditer(text)]
    assert not found, "\n".join(found)


def test_every_token_is_spelled():
    left = [where for where, text in _table_texts() if "«" in text or "»" in text]
    assert not left, left
    assert "«" not in rules.troubleshooting_markdown()


def test_the_words_follow_the_spans():
    assert rules.EXIT_TEXT == "252–255 still exit 0, 256+ exit 1"
    assert rules.EXIT_TEXT in rules.RULES["host.no-id"].symptom
    assert "259+ falls back" in rules.RULES["signature.untrusted"].summary
    assert rules.RULES["host.no-confext"].fix.startswith("upgrade systemd to 254+ ")
    assert "254.6+" in rules.RULES["match.confext-level-bug"].fix
    # a span that moved: the sentence moves with it
    moved = rules.vtext("«not x» exit 0, «x» exit 1", lambda _: (span("257"),))
    assert moved == "252–256 exit 0, 257+ exit 1"
    holes = (span("254.11", "254.14"), span("255.5", "255.8"), span("256.0", "256.0"))
    assert rules.vtext("«x»", lambda _: holes) == "254.11–254.14, 255.5–255.8, 256.0"
    assert rules.spans_text(rules.complement(holes)) == \
        "252.0–254.10, 254.15–255.4, 255.9–255.x, 256.1+"
    assert rules.vtext("«after x»", lambda _: (span("254.0", "254.5"),)) == "254.6+"


def test_every_version_is_in_exactly_one_of_a_span_and_its_complement():
    for r in [*rules.RULES.values(), *rules.CHANGES.values()]:
        outside = rules.complement(r.versions)
        for v in rules.version_bounds():
            assert (r.applies(v)) != any(v in s for s in outside), (r.id, v)


def test_explain_reads_the_source_change_from_the_table():
    split = rules.CHANGES["source.extension-util"].versions
    assert explain.T_NO_DATA.versions == split
    assert explain.T_NO_DATA_OLD.versions == rules.complement(split)


#: What the model may import: the standard library's pure parts and its own package.
PURE = {"__future__", "re", "uuid", "dataclasses", "collections", "collections.abc", "typing",
        "enum", "functools", "itertools", "string"}
IO_CALLS = {"open", "read_text", "read_bytes", "write_text", "write_bytes", "exists", "is_file",
            "is_dir", "stat", "lstat", "glob", "rglob", "iterdir", "listdir", "scandir", "run",
            "Popen", "getenv", "getxattr"}


@pytest.mark.parametrize("path", MODEL, ids=lambda p: p.name)
def test_the_model_does_no_io(path):
    found = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            found += [f"{path.name}:{node.lineno}: import {a.name}" for a in node.names
                      if a.name not in PURE]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module not in PURE:
                found.append(f"{path.name}:{node.lineno}: from {node.module} import …")
            elif node.level > 1 and node.module != "errors":
                found.append(f"{path.name}:{node.lineno}: from {'.' * node.level}{node.module}")
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "id", getattr(node.func, "attr", None))
            if name in IO_CALLS:
                found.append(f"{path.name}:{node.lineno}: calls {name}()")
    assert not found, "\n".join(found)
