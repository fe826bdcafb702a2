"""Issue 16 §8 wording: a refresh that exits 0 but aborted the merge is not "refresh failed
(exit 0)", and a recipe without inputs is not built at "epoch 0 (newest input)"."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli, write_recipe

from pipeline.commands import install
from pipeline.errors import BuildError


def _systemd_sysext(tmp_path, script: str) -> str:
    """A systemd-sysext that answers as 252-255 do on an aborted merge (their real words)."""
    bindir = tmp_path / "systemd"
    bindir.mkdir()
    tool = bindir / "systemd-sysext"
    tool.write_text("#!/bin/sh\n" + script)
    tool.chmod(0o755)
    return str(bindir)


@pytest.mark.parametrize("script, says", [
    ("echo 'Failed to merge extensions: Input/output error' >&2\n",
     "refresh failed: the merge was aborted (systemd 252-255 still exit 0 then"),
    ("echo 'Failed to merge extensions: No such file' >&2\nexit 1\n", "refresh failed (exit 1)"),
])
def test_a_refresh_failure_says_what_happened(tmp_path, monkeypatch, script, says):
    monkeypatch.setenv("SYSEXT_PIPELINE_SYSTEMD_DIR", _systemd_sysext(tmp_path, script))
    with pytest.raises(BuildError) as err:
        install.refresh("sysext", tmp_path)
    assert says in err.value.line()
    assert "(exit 0)" not in err.value.line()
    assert "Failed to merge extensions" in err.value.line()


def test_no_inputs_is_not_called_the_newest_input(tmp_path):
    recipe = write_recipe(tmp_path / "r", """
[extension]
name = "bare"
kind = "sysext"
[target]
id = "debian"
version_id = "12"
architecture = "x86-64"
[files."usr/share/bare/note"]
content = "x"
""")
    proc = run_cli("build", str(recipe), "-o", str(tmp_path / "out"), "--cache-dir",
                   str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr
    assert "epoch 0 (no input has a time stamp: 1970-01-01)" in proc.stderr
    assert "newest input" not in proc.stderr
    manifest = json.loads((tmp_path / "out" / "bare.manifest.json").read_text())
    assert manifest["source_date_epoch"] == 0
    assert manifest["source_date_epoch_origin"] == "no input has a time stamp: 1970-01-01"
