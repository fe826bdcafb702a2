"""``build RECIPE…``: a catalogue at once (issue 14 target 7) — each package fetched once, at most
``-j`` builds in flight, each image published when done, a summary (and ``--json``) at the
end, ``--keep-going``, and the worst exit class when anything failed. One recipe builds exactly
as before."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jsonschema
import pytest
from conftest import run_cli, write_recipe
from pkgfactory import build_deb, file
from repos import Server

from pipeline.commands.build import _worst

SCHEMA = Path(__file__).resolve().parent.parent / "docs" / "schemas" / "build.schema.json"


def _valid(stdout: str) -> dict:
    data = json.loads(stdout)
    jsonschema.validate(data, json.loads(SCHEMA.read_text()),
                        cls=jsonschema.Draft202012Validator)
    return data


SHARED = [file(f"/usr/lib/shared/lib{i}.so", bytes([i]) * 2000, 0o644) for i in range(5)]


def _recipe(directory: Path, name: str, debs: list[Path], server: Server | None = None) -> Path:
    if server is None:
        sources = "".join(f'[[source]]\ndeb = "{d}"\n' for d in debs)
    else:
        sources = "".join(f'[[source]]\ndeb = "{server.url}/{d.name}"\nsha256 = "{_sha(d)}"\n'
                          for d in debs)
    return write_recipe(directory, f'[extension]\nname = "{name}"\nkind = "sysext"\n'
                        f'[target]\nid = "debian"\nversion_id = "12"\n'
                        f'[image]\nsource_date_epoch = 1700000000\n{sources}',
                        name=f"{name}.toml")


@pytest.fixture
def server(tmp_path):
    served = Server(tmp_path / "pkgs")
    yield served
    served.close()


@pytest.fixture
def catalogue(tmp_path, server) -> list[Path]:
    """Three recipes sharing one package, each with one of its own, all fetched over http."""
    pkgs = tmp_path / "pkgs"
    shared = build_deb(pkgs, "shared", "1.0", SHARED)
    return [_recipe(tmp_path / "recipes", name, [shared, build_deb(
        pkgs, f"tool-{name}", "1.0", [file(f"/usr/bin/{name}", f"#!/bin/sh\necho {name}\n"
                                           .encode(), 0o755)])], server)
            for name in ("alpha", "beta", "gamma")]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_catalogue_builds_what_separate_builds_build(tmp_path, catalogue, server):
    cache, out = tmp_path / "cache", tmp_path / "out"
    proc = run_cli("build", *map(str, catalogue), "-o", str(out), "--cache-dir", str(cache),
                   "-j", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    result = _valid(proc.stdout)
    assert result["ok"] and result["exit"] == 0 and result["jobs"] == 2
    assert [r["status"] for r in result["recipes"]] == ["built"] * 3
    assert result["counts"] == {"built": 3, "up_to_date": 0, "failed": 0, "not_started": 0}
    # each package fetched once: 4 distinct packages for 3 recipes (6 sources)
    assert "fetch     4 packages for 3 recipes" in proc.stderr
    assert sorted(server.paths()) == sorted(set(server.paths())) and len(server.paths()) == 4
    # every line of a build is tagged with its recipe; the summary table ends the output
    assert "[alpha] built" in proc.stderr and "[beta ] package" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1] == "3 recipes, -j 2: 3 built"

    for recipe, row in zip(catalogue, result["recipes"]):
        [image] = row["images"]
        alone = tmp_path / f"alone-{recipe.stem}"
        single = run_cli("build", str(recipe), "-o", str(alone), "--cache-dir", str(cache),
                         "--json")
        assert single.returncode == 0, single.stderr
        assert "recipes" not in _valid(single.stdout)  # one recipe: today's object
        assert image["sha256"] == _sha(Path(image["image"])) == _sha(alone / f"{recipe.stem}.raw")

    again = run_cli("build", *map(str, catalogue), "-o", str(out), "--cache-dir", str(cache),
                    "--json=short")
    assert again.returncode == 0, again.stderr
    assert [r["status"] for r in _valid(again.stdout)["recipes"]] == ["up_to_date"] * 3


def test_a_failure_stops_new_builds_unless_keep_going(tmp_path, catalogue):
    cache, out = tmp_path / "cache", tmp_path / "out"
    broken = _recipe(tmp_path / "recipes", "broken", [tmp_path / "pkgs" / "missing.deb"])
    recipes = [str(broken), *map(str, catalogue)]

    proc = run_cli("build", *recipes, "-o", str(out), "--cache-dir", str(cache), "-j", "1",
                   "--json")
    assert proc.returncode == 2, proc.stderr
    result = _valid(proc.stdout)
    assert not result["ok"] and result["exit"] == 2
    assert [r["status"] for r in result["recipes"]] == ["failed"] + ["not_started"] * 3
    assert result["recipes"][0]["error"]["message"]
    assert "1 of 4 recipes failed" in result["error"]["message"]
    assert not list(out.glob("*.raw"))

    proc = run_cli("build", *recipes, "-o", str(out), "--cache-dir", str(cache), "-j", "1",
                   "--keep-going", "--json")
    assert proc.returncode == 2, proc.stderr
    result = _valid(proc.stdout)
    assert [r["status"] for r in result["recipes"]] == ["failed"] + ["built"] * 3
    assert sorted(p.name for p in out.glob("*.raw")) == ["alpha.raw", "beta.raw", "gamma.raw"]


def test_one_build_at_a_time_with_j1(tmp_path, catalogue):
    proc = run_cli("build", *map(str, catalogue), "-o", str(tmp_path / "out"), "--cache-dir",
                   str(tmp_path / "cache"), "-j", "1")
    assert proc.returncode == 0, proc.stderr
    tags = [line.split("]")[0] + "]" for line in proc.stderr.splitlines()
            if line.startswith("[")]
    # with -j 1 each build's lines come as one block, in the recipes' order
    blocks = [t for i, t in enumerate(tags) if i == 0 or tags[i - 1] != t]
    assert blocks == ["[alpha]", "[beta ]", "[gamma]"], tags


def test_two_recipes_making_one_image_name_are_refused(tmp_path, catalogue):
    twin = _recipe(tmp_path / "twin", "alpha", [tmp_path / "pkgs" / "missing.deb"])
    proc = run_cli("build", str(catalogue[0]), str(twin), "-o", str(tmp_path / "out"),
                   "--cache-dir", str(tmp_path / "cache"))
    assert proc.returncode == 2
    assert "its image 'alpha' is also made by" in proc.stderr
    assert not (tmp_path / "out" / "alpha.raw").exists()


def test_bad_jobs_is_a_usage_error(tmp_path, catalogue):
    for bad in ("0", "x", "-3"):
        proc = run_cli("build", *map(str, catalogue), "-j", bad)
        assert proc.returncode == 2 and "-j" in proc.stderr, bad


def test_the_worst_exit_class_wins():
    assert _worst([0, 0]) == 0
    assert _worst([0, 1]) == 1
    assert _worst([1, 2, 0]) == 2  # fix the input: a retry will not help
    assert _worst([3, 1]) == 3
    assert _worst([2, 130]) == 130 and _worst([130, 143]) == 143
    assert _worst([None, 0]) == 0


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def test_sigterm_stops_every_build(tmp_path, catalogue):
    """A catalogue terminated while its builds run takes them down with it: exit 143, no build
    process left, nothing new started; the next run completes it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out-sigterm"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "build", *map(str, catalogue),
                             "-o", str(out), "--cache-dir", str(tmp_path / "cache"), "-j", "1"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True)
    first = proc.stderr.readline()  # the first line a build wrote: one is running now
    assert first.startswith("fetch") or first.startswith("["), first
    while first and not first.startswith("["):  # "" at the end: the catalogue stopped
        first = proc.stderr.readline()
    assert first.startswith("["), f"no build started: {first!r}"
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 143, first + rest
    deadline = time.monotonic() + 60  # killed builds go within moments; room for a loaded machine
    while _processes_mentioning(str(out)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _processes_mentioning(str(out))
    # what was not built when the signal came was never started
    assert len(list(out.glob("*.raw"))) < 3
    # the next catalogue finishes the job and leaves no work tree behind (a build stopped at
    # an unlucky moment may leave its tree: the next build of the recipe removes it)
    again = run_cli("build", *map(str, catalogue), "-o", str(out), "--cache-dir",
                    str(tmp_path / "cache"))
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in out.glob("*.raw")) == ["alpha.raw", "beta.raw", "gamma.raw"]
    assert not [p.name for p in out.iterdir() if ".build-" in p.name]
