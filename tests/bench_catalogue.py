"""Benchmark of a catalogue build (issue 14 target 7): six recipes that share most packages,
built by one ``sysext-pipeline build R1 … R6 -j N`` vs the sum of six separate builds, warm
cache, ``--rounds`` interleaved rounds (separate, catalogue, separate, …), min and median.

Target: the catalogue takes ≤ 0.75× the sum of the separate builds on 2 cores. Each image of the
catalogue must be byte for byte its separate build's (the benchmark stops otherwise).

The six recipes come from one base recipe's pinned sources (default: recipes/debug-tools.toml,
9 packages): recipe *i* leaves out source *i*, so any two share all but two packages. With
``--payload51`` the base is the 51-package bench payload (../shared/bench/payload51.txt, locked
through tests/bench.py's recipe; recipe i leaves out two of the names; needs the build host's
archive once).

    python3 tests/bench_catalogue.py [--rounds 3] [--jobs 2] [--payload51] [--json FILE]

``catalogue(...)`` returns the results as a dict and ``target_line(results)`` the "met" line,
for tests/bench.py to call.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parent.parent
TARGET = 0.75
RECIPES = 6


def _env() -> dict:
    """As tests/bench.py runs our side: byte code cached (in bench/pycache), not recompiled."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONPYCACHEPREFIX=str(REPO / "bench/pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


#: CPU seconds (user + system) of every process the benchmark ran, per side
CPU: dict[str, float] = {}


def settle() -> None:
    """Before each timed run, untimed: write back what the previous run left dirty (about 100 MB
    of files and an image per build), so that no run pays for the one before it."""
    os.sync()


def _run(cmd: list[str], side: str = "warm") -> float:
    settle()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    took = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU[side] = CPU.get(side, 0.0) + (after.ru_utime - before.ru_utime) + \
        (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        sys.exit(f"benchmark command failed: {' '.join(cmd)[:300]}\n{proc.stderr[-2000:]}")
    return took


def _toml_value(value) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}"
                                for k, v in value.items()) + " }"
    raise TypeError(value)


def _toml(data: dict) -> str:
    lines = []
    for section, body in data.items():
        if isinstance(body, list):
            for item in body:
                lines.append(f"[[{section}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
                lines.append("")
        else:
            lines.append(f"[{section}]")
            lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in body.items()]
            lines.append("")
    return "\n".join(lines)


def make_recipes(base: Path, work: Path, count: int = RECIPES) -> list[Path]:
    """``count`` recipes from ``base``'s pinned sources, recipe i without source i."""
    data = tomllib.loads(base.read_text())
    sources = data.get("source", [])
    if base.with_suffix(".lock").is_file():  # a recipe naming packages: its lock's pins, as apt
        lock = tomllib.loads(base.with_suffix(".lock").read_text())
        sources = [{"apt": p["name"], "version": p["version"], "sha256": p["sha256"]}
                   for p in lock["package"]]
        data = {k: v for k, v in data.items() if k != "repository"}
        data["target"] = {k: v for k, v in data["target"].items() if k != "base"}
    if len(sources) < count:
        sys.exit(f"{base}: needs at least {count} [[source]] entries, has {len(sources)}")
    out = []
    for i in range(count):
        recipe = {k: v for k, v in data.items() if k not in ("source", "sign")}
        recipe["extension"] = {**data["extension"], "name": f"cat{i}"}
        recipe["source"] = [s for n, s in enumerate(sources) if n != i]
        for section in ("files",):  # paths relative to the base recipe
            for entry in recipe.get(section, {}).values():
                if isinstance(entry, dict) and "from" in entry:
                    entry["from"] = str((base.parent / entry["from"]).resolve())
        path = work / f"cat{i}.toml"
        path.write_text(_toml(recipe))
        out.append(path)
    return out


def payload51_recipes(work: Path, count: int = RECIPES) -> list[Path]:
    """``count`` recipes of the 51-package bench payload (tests/bench.py's recipe, H4's module),
    recipe i without two of the named packages (their dependencies may stay), each locked once
    through the build host's archive (the locks are kept in bench/catalogue/ for later runs)."""
    sys.path.insert(0, str(REPO / "tests"))
    import bench  # noqa: E402

    names = [n.strip() for n in bench.PAYLOAD.read_text().splitlines() if n.strip()]
    keep = REPO / "bench" / "catalogue"
    out = []
    for i in range(count):
        directory = keep / f"cat{i}"
        (directory / "base").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / "recipes/base/debian-12-minimal.txt",
                        directory / "base/debian-12-minimal.txt")
        wanted = [n for n in names if n not in names[2 * i:2 * i + 2]]
        path = bench.payload_recipe(directory, wanted, "squashfs-3")
        text = path.read_text().replace('name = "bench"', f'name = "cat{i}"', 1)
        if not path.with_name(f"cat{i}.toml").exists() or \
                path.with_name(f"cat{i}.toml").read_text() != text:
            path.with_name(f"cat{i}.toml").write_text(text)
        path.unlink()
        path = path.with_name(f"cat{i}.toml")
        bench.lock_recipe(path, None)
        out.append(path)
    return out


def catalogue(rounds: int = 3, jobs: int = 2, base: Path | None = None,
              cache_dir: str | None = None, payload51: bool = False) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench-catalogue-"))
    try:
        base = base or REPO / "recipes" / "debug-tools.toml"
        recipes = payload51_recipes(work) if payload51 else make_recipes(base, work)
        common = ["--cache-dir", cache_dir] if cache_dir else []
        py = [sys.executable, "-m", "pipeline"]
        # warm: every package in the cache, every build once (bytecode, page cache)
        _run([*py, "build", *map(str, recipes), "-o", str(work / "warm"), "-q", "--unsigned",
              *common])
        separate, together = [], []
        for _ in range(rounds):
            total = 0.0
            for recipe in recipes:
                total += _run([*py, "build", str(recipe), "-o", str(work / "sep"), "-q",
                               "--force", "--unsigned", *common], "separate")
            separate.append(total)
            together.append(_run([*py, "build", *map(str, recipes), "-o", str(work / "cat"),
                                  "-q", "--force", "--unsigned", "-j", str(jobs), *common],
                                 "catalogue"))
        ratio = statistics.median(together) / statistics.median(separate)
        # the catalogue's images are byte for byte its separate builds' (shared payloads are
        # decoded once by the catalogue: pipeline/commands/build.py decode_shared)
        differ = [r.stem for r in recipes if _digest(work / "cat" / f"{r.stem}.raw") !=
                  _digest(work / "sep" / f"{r.stem}.raw")]
        if differ:
            sys.exit(f"the catalogue's images differ from the separate builds': {differ}")
        return {"recipes": len(recipes), "jobs": jobs, "cores": os.cpu_count(),
                "base": "payload51" if payload51 else base.name, "rounds": rounds,
                "separate_s": {"min": round(min(separate), 3),
                               "median": round(statistics.median(separate), 3)},
                "catalogue_s": {"min": round(min(together), 3),
                                "median": round(statistics.median(together), 3)},
                "ratio_median": round(ratio, 3),
                # CPU time, whatever else runs: the catalogue's wall time on an idle machine
                # is about its CPU over the cores it keeps busy
                "cpu_s_per_round": {side: round(CPU.get(side, 0.0) / rounds, 3)
                                    for side in ("separate", "catalogue")},
                "load_average": os.getloadavg()[0],
                "ratio_min": round(min(together) / min(separate), 3),
                "identical_images": True,
                "target": TARGET, "met": ratio <= TARGET}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _digest(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def target_line(results: dict) -> str:
    state = "met" if results["met"] else f"not met (by {results['ratio_median'] - TARGET:.2f})"
    return (f"catalogue: {results['recipes']} recipes -j {results['jobs']} in "
            f"{results['catalogue_s']['median']:.2f} s vs {results['separate_s']['median']:.2f} s "
            f"separately = {results['ratio_median']:.2f}× (target ≤ {TARGET}×): {state}; CPU "
            f"{results['cpu_s_per_round']['catalogue']:.2f} s vs "
            f"{results['cpu_s_per_round']['separate']:.2f} s, load {results['load_average']:.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--base", type=Path, help="recipe whose pinned sources make the six")
    parser.add_argument("--payload51", action="store_true", help="the 51-package bench payload")
    parser.add_argument("--cache-dir")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    results = catalogue(args.rounds, args.jobs, args.base, args.cache_dir, args.payload51)
    print(json.dumps(results, indent=2))
    print(target_line(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
