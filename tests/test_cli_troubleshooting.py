"""Issue 16 §7: the build side of docs/troubleshooting.md is generated from the error catalogue
(pipeline/errors.py CATALOGUE: message → cause → fix), every entry's words are what the code
raises, and the cheap ones are raised here for real, with the exit code the table gives."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO, run_cli, write_recipe

from pipeline.errors import CATALOGUE, catalogue_markdown

BY_CODE = {p.code: p for p in CATALOGUE}

HEAD = """[extension]
name = "t"
kind = "sysext"
[target]
id = "debian"
version_id = "12"
architecture = "x86-64"
"""
SOURCE = """[[source]]
deb = "http://127.0.0.1:9/t_1.0_amd64.deb"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
"""


def test_the_issue_s_build_side_problems_are_all_there():
    assert {"version-gone", "sha256-mismatch", "lock-stale", "release-expired", "offline-miss",
            "key-mode", "no-space", "tool-missing", "tool-too-old"} <= set(BY_CODE)
    assert len(BY_CODE) == len(CATALOGUE)
    for problem in CATALOGUE:
        assert problem.says.strip() and problem.cause and problem.fix, problem.code
        assert problem.exit in (1, 2), problem.code


def test_every_entry_says_what_the_code_raises():
    sources = "\n".join(p.read_text() for p in (REPO / "pipeline").rglob("*.py")
                        if p.name != "errors.py")
    missing = [p.code for p in CATALOGUE if p.says not in sources]
    assert missing == []


def test_troubleshooting_md_has_the_build_side_table():
    doc = (REPO / "docs" / "troubleshooting.md").read_text()
    assert doc.endswith(catalogue_markdown()), \
        "run: python -m pipeline troubleshooting > docs/troubleshooting.md"
    assert "## When a build stops" in doc and "| `lock is stale: run lock` |" in doc


def _setup(tmp_path: Path, code: str) -> tuple[list[str], dict]:
    """The command line (and environment) that makes ``code`` happen, cheaply."""
    out, env = tmp_path / "out", {}
    image = '[image]\nsource_date_epoch = 1700000000\n'
    body = HEAD + SOURCE + image
    if code == "output-dir":
        out.write_text("a file")
    elif code == "source-date-epoch":
        env["SOURCE_DATE_EPOCH"] = "yesterday"
    elif code == "tool-missing":
        env["PATH"] = str(tmp_path / "empty")
    elif code == "key-missing":
        body = HEAD + SOURCE + image + 'format = "ddi"\n[sign]\nkey = "no.key"\ncert = "no.crt"\n'
    elif code == "files-dropped":
        body = HEAD.replace('"sysext"', '"confext"') + '[files."usr/bin/x"]\ncontent = "x"\n'
    elif code == "empty-payload":
        body = HEAD + image
    elif code == "lock-missing":
        body = HEAD + '[[repository]]\nname = "r"\ntype = "deb"\nmirror = "http://127.0.0.1:9/"\n' \
            'suite = "stable"\nallow_unsigned = true\n[[source]]\npackages = ["jq"]\n' + image
    elif code == "offline-miss":
        return ["--offline"], env | {"_body": body}
    recipe = write_recipe(tmp_path / "r", body)
    return ["build", str(recipe), "-o", str(out), "--cache-dir", str(tmp_path / "cache")], env


@pytest.mark.parametrize("code", ["output-dir", "source-date-epoch", "tool-missing",
                                  "key-missing", "files-dropped", "empty-payload",
                                  "lock-missing", "offline-miss"])
def test_the_table_s_words_and_exit_code_are_what_the_cli_does(tmp_path, code):
    argv, env = _setup(tmp_path, code)
    if "_body" in env:  # --offline on the plain recipe
        recipe = write_recipe(tmp_path / "r", env.pop("_body"))
        argv = ["build", str(recipe), "-o", str(tmp_path / "out"), "--cache-dir",
                str(tmp_path / "cache"), *argv]
    proc = run_cli(*argv, env=env)
    problem = BY_CODE[code]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert problem.says in errors[0], (code, errors[0])
    assert proc.returncode == problem.exit, (code, proc.returncode, errors[0])
