"""``matrix``: recipes × architectures as the job list a CI matrix takes as it is (issue 14
target 7): GitHub Actions' strategy.matrix include-list and GitLab's parallel:matrix."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from conftest import run_cli, write_recipe

SCHEMA = Path(__file__).resolve().parent.parent / "docs" / "schemas" / "matrix.schema.json"
SHA = "ab" * 32


def _recipe(directory: Path, name: str, arch: str | None = None, sha: str = SHA) -> Path:
    arch_line = f'architecture = "{arch}"\n' if arch else ""
    return write_recipe(directory, f'[extension]\nname = "{name}"\n[target]\nid = "debian"\n'
                        f'version_id = "12"\n{arch_line}[[source]]\napt = "jq"\n'
                        f'version = "1.6"\nsha256 = "{sha}"\n', name=f"{name}.toml")


@pytest.fixture
def recipes(tmp_path) -> list[Path]:
    return [_recipe(tmp_path, "tools"), _recipe(tmp_path, "armonly", "arm64", "cd" * 32),
            _recipe(tmp_path, "same", None)]


def _json(*args: str, code: int = 0) -> dict:
    proc = run_cli("matrix", *args)
    assert proc.returncode == code, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    jsonschema.validate(data, json.loads(SCHEMA.read_text()),
                        cls=jsonschema.Draft202012Validator)
    return data


def test_recipes_times_architectures(recipes):
    data = _json(*map(str, recipes), "--arch", "x86-64,arm64", "-o", "dist", "--json")
    jobs = {(Path(j["recipe"]).stem, j["architecture"]): j for j in data["include"]}
    # the runner decides an apt recipe's architecture: one job per asked architecture; a
    # recipe that names its architecture gets that one only
    assert sorted(jobs) == [("armonly", "arm64"), ("same", "arm64"), ("same", "x86-64"),
                            ("tools", "arm64"), ("tools", "x86-64")]
    job = jobs["tools", "arm64"]
    assert job["debian_architecture"] == "arm64" and job["output_dir"] == "dist/arm64/tools"
    assert job["command"] == f"sysext-pipeline build {recipes[0]} -o dist/arm64/tools"
    # every value a string: what GitHub's include and GitLab's parallel:matrix both take
    assert all(isinstance(v, str) for j in data["include"] for v in j.values())
    # one cache key per package set: recipes of the same packages share it
    assert jobs["tools", "x86-64"]["cache_key"] == jobs["same", "arm64"]["cache_key"] != \
        jobs["armonly", "arm64"]["cache_key"]
    assert data["skipped"] == []

    only = _json(*map(str, recipes), "--arch", "x86-64", "--json")
    assert [s["recipe"] for s in only["skipped"]] == [str(recipes[1])]
    assert {j["architecture"] for j in only["include"]} == {"x86-64"}


def test_what_the_ci_systems_read(recipes, tmp_path):
    proc = run_cli("matrix", *map(str, recipes), "--arch", "x86-64", "--ci", "github")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1  # one line for $GITHUB_OUTPUT
    github = json.loads(proc.stdout)
    assert list(github) == ["include"] and len(github["include"]) == 2  # strategy.matrix as is

    proc = run_cli("matrix", *map(str, recipes), "--arch", "x86-64", "--ci", "gitlab")
    assert proc.returncode == 0, proc.stderr
    pipeline = json.loads(proc.stdout)  # JSON is YAML: a child pipeline as it is
    job = pipeline["sysext-build"]
    assert job["parallel"]["matrix"] == github["include"]
    assert job["script"] == ['sysext-pipeline build "$recipe" -o "$output_dir"']
    # the job's command, with the matrix variables set, is the job list's command
    entry = job["parallel"]["matrix"][0]
    script = job["script"][0].replace('"$recipe"', entry["recipe"]).replace(
        '"$output_dir"', entry["output_dir"])
    assert script == entry["command"]


def test_bad_input(recipes, tmp_path):
    data = _json(str(recipes[0]), "--arch", "sparc-9", "--json", code=2)
    assert data["error"]["subject"] == "--arch" and "x86-64" in data["error"]["hint"]
    data = _json(str(recipes[1]), "--arch", "x86-64", "--json", code=2)
    assert "no job" in data["error"]["message"]
    twin = _recipe(tmp_path / "other", "tools")  # another tools.toml: the same output directory
    data = _json(str(recipes[0]), str(twin), "--json", code=2)
    assert "the same file name" in data["error"]["message"]
    missing = tmp_path / "nope.toml"
    assert run_cli("matrix", str(missing)).returncode == 2


def test_human_output(recipes):
    proc = run_cli("matrix", *map(str, recipes), "--arch", "x86-64")
    assert proc.returncode == 0, proc.stderr
    assert f"sysext-pipeline build {recipes[0]} -o out/x86-64/tools" in proc.stdout
    assert "skipped" in proc.stderr and "2 jobs" in proc.stderr
