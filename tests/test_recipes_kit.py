"""The test kit's recipe writer and CLI runner (tests/recipes_kit.py) against the real parser
and the real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib
from recipes_kit import build_cli, recipe_dict, run_cli, toml_text

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
