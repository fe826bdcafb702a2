"""pytest plugin (``-p manifest_plugin`` in pyproject's addopts): every ``*.manifest.json`` the
test session wrote under its base temporary directory is validated against the published
schema, ``docs/manifest.schema.json``, at the end of the session; a manifest that does not
validate fails the session, naming the file and the first error.

Only manifests in the form the pipeline writes them are checked (``json.dumps(…, indent=2,
sort_keys=True)`` plus a newline, byte for byte): a test that writes a hostile or hand-edited
manifest on purpose (``json.dumps(manifest)``, ``"{}"``) writes it in another form and is not
judged by this plugin.

Cheap: identical manifests are validated once, and each distinct file entry once (the schema
checks the items of ``files`` one by one, so that is the same verdict).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "docs" / "manifest.schema.json"
SUFFIX = ".manifest.json"
#: Larger files are not the pipeline's (pipeline.outdir.MAX_MANIFEST).
MAX_BYTES = 64 << 20

_basetemp: list[Path] = []


class Checker:
    """Validates manifests against the schema, remembering what it has seen."""

    def __init__(self, schema_path: Path = SCHEMA_PATH):
        import jsonschema

        schema = json.loads(schema_path.read_text())
        self.whole = jsonschema.Draft202012Validator(schema)
        self.entry = jsonschema.Draft202012Validator(
            {**schema, **schema["$defs"]["FileEntry"], "$defs": schema["$defs"]})
        self.seen: set[bytes] = set()
        self.entries: set[str] = set()

    def problem(self, path: Path) -> str | None:
        """Why ``path`` is not a valid manifest, or None (also for one the pipeline did not
        write: see the module docstring)."""
        try:
            if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_BYTES:
                return None
            data = path.read_bytes()
        except OSError:
            return None
        digest = hashlib.sha256(data).digest()
        if digest in self.seen:
            return None
        self.seen.add(digest)
        try:
            manifest = json.loads(data)
        except (ValueError, RecursionError):
            return None
        if (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode() != data:
            return None  # not in the form the pipeline writes: a test's own hostile file
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
            return self._first_error(self.whole, manifest, "")
        files = manifest["files"]
        error = self._first_error(self.whole, {**manifest, "files": []}, "")
        if error:
            return error
        for n, entry in enumerate(files):
            key = json.dumps(entry, sort_keys=True)
            if key in self.entries:
                continue
            error = self._first_error(self.entry, entry, f"files[{n}]")
            if error:
                return error
            self.entries.add(key)
        return None

    @staticmethod
    def _first_error(validator, instance, prefix: str) -> str | None:
        if validator.is_valid(instance):
            return None
        error = min(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
        where = prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}"
                                 for p in error.absolute_path)
        return f"{where.lstrip('.') or '(top level)'}: {error.message[:300]}"


def check_tree(root: Path, checker: Checker | None = None) -> list[str]:
    """``file: field: error`` for every manifest under ``root`` that fails the schema."""
    checker = checker or Checker()
    problems = []
    stack = [str(root)]  # a stack, not os.walk's recursion: a test may leave a tree deeper
    while stack:          # than Python's recursion limit (the hostile-archive cases do)
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name, reverse=True)
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            elif entry.name.endswith(SUFFIX) and entry.is_file(follow_symlinks=False):
                found = checker.problem(Path(entry.path))
                if found:
                    problems.append(f"{entry.path}: {found}")
    return sorted(problems)


@pytest.fixture(autouse=True, scope="session")
def _manifest_plugin_basetemp(tmp_path_factory):
    """Where this session's temporary directories are (scanned at the end)."""
    _basetemp.append(tmp_path_factory.getbasetemp())


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    if not _basetemp or not SCHEMA_PATH.is_file():
        return
    problems = []
    checker = Checker()
    for root in dict.fromkeys(_basetemp):
        problems += check_tree(root, checker)
    session.config.stash[_PROBLEMS] = (problems, len(checker.seen))
    if problems:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_PROBLEMS = pytest.StashKey[tuple]()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    problems, count = config.stash.get(_PROBLEMS, ([], 0))
    if problems:
        terminalreporter.section("manifest schema (tests/manifest_plugin.py)", red=True)
        terminalreporter.line(f"{len(problems)} of {count} manifests written by the tests do "
                              f"not validate against {SCHEMA_PATH.name}:")
        for line in problems:
            terminalreporter.line(f"  {line}", red=True)
