"""The test kit's recipe writer and CLI runner (tests/recipes_kit.py) against the real parser
and the real CLI."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import tomllib
from recipes_kit import (
    REPO,
    build_cli,
    cli_argv,
    cli_env,
    hello_recipe,
    recipe_dict,
    run_cli,
    toml_text,
    tool_recipe,
    unfetchable_recipe,
)

from pipeline import recipe as recipe_mod


def test_toml_text_round_trips_awkward_values():
    spec = {"extension": {"name": "x"},
            "files": {'usr/lib/a "quoted" key': {"content": "tab\tnl\n\x7f\x01é", "mode": "0755"}},
            "source": [{"deb": Path("/p/a.deb")}, {"rpm": "/p/b.rpm", "flag": True}],
            "image": {"source_date_epoch": 1700000000, "ratio": 0.5, "list": ["a", "b"]}}
    parsed = tomllib.loads(toml_text(spec))
    assert parsed["files"]['usr/lib/a "quoted" key']["content"] == "tab\tnl\n\x7f\x01é"
    assert parsed["source"] == [{"deb": "/p/a.deb"}, {"rpm": "/p/b.rpm", "flag": True}]
    assert parsed["image"]["ratio"] == 0.5


def test_toml_text_refuses_what_toml_cannot_hold():
    with pytest.raises(TypeError):
        toml_text({"image": {"when": object()}})
    with pytest.raises(ValueError):
        toml_text({"image": {"ratio": float("nan")}})


def test_recipe_dict_loads_through_the_real_parser(make_recipe):
    path = make_recipe(recipe_dict("kit", kind="sysext", version="1", sources=["/nowhere/a.rpm"],
                              files={"usr/bin/kit": {"content": "#!/bin/sh\n", "mode": "0755"}},
                              image={"format": "directory"}))
    loaded = recipe_mod.load(path)
    assert loaded.name == "kit"
    assert tomllib.loads(path.read_text())["source"] == [{"rpm": "/nowhere/a.rpm"}]


def test_build_cli_in_process_and_subprocess_agree(tmp_path, make_recipe):
    path = make_recipe(recipe_dict("kit", kind="sysext", target={"id": "debian", "version_id": "12",
                                                             "architecture": "x86-64"},
                              files={"usr/bin/kit": {"content": "#!/bin/sh\n", "mode": "0755"}},
                              image={"format": "directory", "source_date_epoch": 1700000000}))
    sub = build_cli(path, tmp_path / "a")
    inproc = build_cli(path, tmp_path / "b", in_process=True)
    assert sub.manifest()["files"] == inproc.manifest()["files"]
    assert any(f["path"] == "usr/bin/kit" for f in sub.manifest()["files"])


def test_build_cli_reports_the_exit_code_and_error_line(tmp_path, make_recipe):
    path = make_recipe(recipe_dict("kit", image={"format": "no-such-format"}))
    for in_process in (False, True):
        result = build_cli(path, tmp_path / f"o{in_process}", json_out=False, expect=2,
                           in_process=in_process)
        [line] = result.error_lines()
        assert "image.format" in line, line
    assert run_cli("--version", in_process=True).code == 0


@pytest.mark.parametrize("spec", [
    hello_recipe("squashfs", sources=["/nowhere/a.deb", "/nowhere/b.rpm"]),
    hello_recipe("directory", sources=["/nowhere/a.deb"], epoch=None, owners=None),
    tool_recipe("t", kind="confext", fmt="erofs"),
    tool_recipe("t", fmt="ddi", extension={"version": "2"}),
    unfetchable_recipe(image={"format": "ddi"}),
], ids=["hello", "hello-unpinned", "tool-confext", "tool-ddi", "unfetchable"])
def test_the_shared_shapes_are_recipes_the_parser_takes(make_recipe, spec):
    loaded = recipe_mod.load(make_recipe(spec))
    assert loaded.name == spec["extension"]["name"]
    assert loaded.format == spec["image"].get("format", "squashfs")


def test_cli_env_puts_the_checkout_first_and_drops_source_date_epoch(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1")
    env = cli_env({"TZ": "Pacific/Chatham"})
    assert env["PYTHONPATH"] == str(REPO) and "SOURCE_DATE_EPOCH" not in env
    assert env["TZ"] == "Pacific/Chatham"
    proc = subprocess.run(cli_argv("--version"), env=env, capture_output=True, text=True,
                          cwd="/")
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr
