"""The README's recipe example is a recipe: it parses with the real parser, and every file it
names exists where a recipe in recipes/ would find it (issue 16 §7: it named a file that did not)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from pipeline import recipe as recipe_mod

REPO = Path(__file__).resolve().parent.parent


def _example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("\n## Recipes\n"):]
    return re.search(r"```toml\n(.*?)```", section, re.S)[1]


def test_the_readme_recipe_loads(tmp_path):
    shutil.copytree(REPO / "recipes" / "files", tmp_path / "files")
    path = tmp_path / "example.toml"
    path.write_text(_example())
    recipe = recipe_mod.load(path)  # a [files] `from` that is not a file is an InputError
    assert recipe.name == "debug-tools"
    assert {f.path for f in recipe.files} == {"usr/lib/sysusers.d/tcpdump.conf",
                                              "etc/systemd/journald.conf.d/debug.conf"}
