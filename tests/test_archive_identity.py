"""A lock entry is what its file is: name, version and architecture come from the package's own
control data and must match the lock (issue 11 §7). Swapping two entries' files in a lock (a
hand edit, a bad merge) is refused naming the entry and what the file really is."""

from __future__ import annotations

import re

from conftest import run_cli

pytest_plugins = ["repos"]  # the archive, key and server fixtures


def test_lock_entry_pointing_at_another_package_is_refused(tmp_path, deb_archive, deb_recipe):
    env = {"SYSEXT_PIPELINE_CACHE": str(tmp_path / "cache")}
    recipe = deb_recipe(tmp_path / "r", deb_archive, ["tool"])
    assert run_cli("lock", str(recipe), env=env).returncode == 0
    lock = recipe.with_suffix(".lock")
    text = lock.read_text()
    blocks = {m["name"]: m for m in re.finditer(
        r'\[\[package\]\]\nname = "(?P<name>[^"]+)"\n(?P<body>(?:(?!\[\[).*\n)*)', text)}
    assert {"tool", "libtool1"} <= set(blocks), text
    fields = {n: dict(re.findall(r'^(path|sha256|size) = (.*)$', blocks[n]["body"], re.M))
              for n in ("tool", "libtool1")}
    swapped = blocks["tool"]["body"]
    for key in ("path", "sha256", "size"):
        if key in fields["tool"]:
            swapped = swapped.replace(f"{key} = {fields['tool'][key]}",
                                      f"{key} = {fields['libtool1'][key]}")
    lock.write_text(text.replace(blocks["tool"]["body"], swapped))
    proc = run_cli("build", str(recipe), "-o", str(tmp_path / "out"), env=env)
    assert proc.returncode == 2, proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: source stable:pool/") and "libtool1" in error, error
    assert "the file is libtool1 1.0 (amd64), not name tool (" in error, error
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
