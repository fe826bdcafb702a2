"""Issue 16 §4: nothing the recipe asks for is silently dropped. A ``[files]`` entry the image
kind cannot carry is an error (it was listed as dropped, exit 0), and an image whose payload
ends up empty is an error unless ``policy.empty = "allow"`` (it built with exit 0 and no word)."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli, write_recipe
from pkgfactory import build_deb, file

HEAD = '[extension]\nname = "{name}"\n{kind}[target]\nid = "debian"\nversion_id = "12"\n'


def _recipe(tmp_path, body: str, name: str = "x", kind: str = "") -> str:
    return write_recipe(tmp_path / "recipe", HEAD.format(name=name, kind=kind) + body)


def _build(tmp_path, recipe, *args):
    return run_cli("build", str(recipe), "-o", str(tmp_path / "out"), "--cache-dir",
                   str(tmp_path / "cache"), *args)


@pytest.mark.parametrize("kind, body, hint", [
    ('kind = "confext"\n', '[files."usr/bin/hello"]\ncontent = "x"\nmode = "0755"\n'
     '[files."etc/hello.conf"]\ncontent = "x=1\\n"\n', "move it under etc/"),
    ('kind = "sysext"\n', '[policy]\netc = "drop"\n[files."etc/x.conf"]\ncontent = "x"\n'
     '[files."usr/share/x/y"]\ncontent = "y"\n', 'policy.etc = "confext" or "factory"'),
    ("", '[files."home/me/x"]\ncontent = "x"\n[files."usr/share/x/y"]\ncontent = "y"\n',
     "move it to usr/ or opt/ for a sysext"),
])
def test_a_files_entry_the_image_cannot_carry_is_an_error(tmp_path, kind, body, hint):
    recipe = _recipe(tmp_path, body, kind=kind)
    proc = _build(tmp_path, recipe)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: files.'"), proc.stderr
    assert "the recipe names this file but the image cannot carry it" in lines[0]
    assert hint in lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    plan = run_cli("plan", str(recipe), "--cache-dir", str(tmp_path / "cache"))
    assert plan.returncode == 2 and "cannot carry it" in plan.stderr  # plan says the same


def test_an_empty_payload_is_an_error_unless_allowed(tmp_path):
    recipe = _recipe(tmp_path, "", name="empty")
    proc = _build(tmp_path, recipe, "--json=short")
    assert proc.returncode == 2, proc.stderr
    error = json.loads(proc.stdout)["error"]
    assert error["field"] == "policy.empty" and error["subject"] == str(recipe)
    assert "would hold only its extension-release file" in error["message"]
    assert 'policy.empty = "allow"' in error["hint"]
    assert not list((tmp_path / "out").glob("empty*"))

    allowed = _recipe(tmp_path, '[policy]\nempty = "allow"\n', name="empty")
    proc = _build(tmp_path, allowed)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "empty.raw").is_file()


def test_a_payload_that_is_all_dropped_says_how_many(tmp_path):
    """A confext of a package that has only /usr content: every path is dropped."""
    deb = build_deb(tmp_path / "pkg", "tool", "1.0",
                    [file("/usr/bin/tool", b"#!/bin/sh\n", 0o755),
                     file("/usr/share/doc/tool/README", b"r\n")])
    recipe = _recipe(tmp_path, f'[[source]]\ndeb = "{deb}"\n', name="cfg",
                     kind='kind = "confext"\n')
    proc = _build(tmp_path, recipe)
    assert proc.returncode == 2, proc.stderr
    assert "the confext cfg would hold only its extension-release file (" in proc.stderr
    assert "paths dropped" in proc.stderr
    assert not list((tmp_path / "out").glob("cfg*"))
