"""``matrix``: the recipes × architectures of a catalogue as the job list a CI matrix takes as it
is (issue 14 target 7), so that a catalogue outgrowing one machine spreads over the CI system's
runners, all sharing one package cache keyed by sha256.

Each job is a flat object of strings (what GitHub Actions' ``strategy.matrix.include`` and
GitLab's ``parallel:matrix`` both accept): the recipe, the image name, the architecture of the
runner it needs, its own output directory (``out/ARCH/RECIPE``: jobs never share one), the
build command, and a cache key (a digest of the
sha256 of every pinned package), for ``actions/cache`` or GitLab's ``cache:key``.

A recipe's architecture: ``target.architecture`` when it names one; else its first
``[[repository]]``'s native architecture; else (``apt`` sources use the runner's own apt, local
and URL files say nothing) every ``--arch`` asked for, by default the running machine's.
Nothing is fetched: a recipe whose lock is missing or stale is an error, as for ``build
--offline``.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
from pathlib import Path

from . import clikit
from .cli import SUMMARIES

#: systemd architecture → Debian's name (what runner labels and apt use)
DEBIAN = {"x86-64": "amd64", "x86": "i386", "arm64": "arm64", "arm": "armhf",
          "ppc64-le": "ppc64el", "s390x": "s390x", "riscv64": "riscv64",
          "loongarch64": "loong64", "mips64-le": "mips64el"}
#: The key (and job) order of a job object; every value is a string.
JOB_KEYS = ("recipe", "name", "architecture", "debian_architecture", "output_dir", "command",
            "cache_key")


def register(sub) -> None:
    p = sub.add_parser("matrix", help=SUMMARIES["matrix"])
    p.add_argument("recipe", nargs="+", metavar="RECIPE", help="recipe files (TOML)")
    p.add_argument("--arch", metavar="ARCH[,ARCH...]", help="architectures in systemd's spelling "
                   "(x86-64, arm64, ...): the jobs of recipes whose architecture the runner "
                   "decides, and a filter for the others (default: the running machine's)")
    p.add_argument("-o", "--output-dir", default="out", metavar="DIR", help="each job builds "
                   "into DIR/ARCH/RECIPE (the recipe file's name without .toml; default: out)")
    p.add_argument("--ci", choices=("github", "gitlab"), help="print only what the CI system "
                   "reads: github → {\"include\": [...]} for strategy.matrix (fromJSON); gitlab → "
                   "a child pipeline whose job has the list as parallel:matrix")
    clikit.add_json(p)
    p.set_defaults(func=cmd_matrix)


def _architectures(recipe, asked: list[str] | None, host: str) -> list[str]:
    from ..systemd.release import systemd_architecture

    pinned = recipe.target.get("architecture")
    if pinned and pinned not in ("auto", "_any"):
        return [pinned]
    if recipe.repositories:
        native = systemd_architecture(recipe.repositories[0].architectures[0])
        if native:
            return [native]
    return list(asked or [host])


def _cache_key(recipe) -> str:
    """A digest of the pinned packages (sorted sha256s): equal for recipes of the same
    packages, so CI runners can share one cache entry."""
    from ..sources.lock import expand_sources

    shas = sorted({s.sha256 for s in expand_sources(recipe, offline=True) if s.sha256})
    return "sha256-" + hashlib.sha256("\n".join(shas).encode()).hexdigest()[:32]


def make_matrix(paths: list[str], asked: list[str] | None, output_dir: str,
                host: str) -> dict:
    from .. import recipe as recipe_mod
    from ..errors import InputError

    jobs, skipped = [], []
    made: dict[tuple[str, str], str] = {}
    for path in dict.fromkeys(paths):
        recipe = recipe_mod.load(path)
        key = _cache_key(recipe)
        stem = Path(path).stem
        for arch in _architectures(recipe, asked, host):
            if asked and arch not in asked:
                skipped.append({"recipe": path, "architecture": arch,
                                "why": f"the recipe builds for {arch} only, not "
                                       f"{', '.join(asked)}"})
                continue
            if (arch, stem) in made:
                raise InputError(path, f"its output directory for {arch} would be that of "
                                 f"{made[arch, stem]} (the same file name)",
                                 "give the recipe files distinct names")
            made[arch, stem] = path
            out = f"{output_dir.rstrip('/') or '.'}/{arch}/{stem}"
            jobs.append({"recipe": path, "name": recipe.name, "architecture": arch,
                         "debian_architecture": DEBIAN.get(arch, arch),
                         "output_dir": out,
                         "command": f"sysext-pipeline build {shlex.quote(path)} -o "
                                    f"{shlex.quote(out)}",
                         "cache_key": key})
    return {"include": jobs, "skipped": skipped}


def gitlab_pipeline(matrix: dict, output_dir: str) -> dict:
    """A child pipeline (JSON is YAML) whose one job runs every entry as parallel:matrix (its
    image or before_script must provide sysext-pipeline: add them to the generated job)."""
    return {"sysext-build": {
        "script": ['sysext-pipeline build "$recipe" -o "$output_dir"'],
        "parallel": {"matrix": matrix["include"]},
        "cache": {"key": "$cache_key", "paths": [".cache/sysext-pipeline"]},
        "variables": {"SYSEXT_PIPELINE_CACHE": "$CI_PROJECT_DIR/.cache/sysext-pipeline"},
        "artifacts": {"paths": [f"{output_dir.rstrip('/') or '.'}/"]},
    }}


def cmd_matrix(args) -> int:
    from ..errors import InputError
    from ..host.facts import architecture
    from ..systemd.release import ARCHITECTURES

    asked = None
    if args.arch:
        asked = list(dict.fromkeys(a.strip() for a in args.arch.split(",") if a.strip()))
        for arch in asked:
            if arch not in ARCHITECTURES:
                raise InputError("--arch", f"{arch!r} is not an architecture systemd knows",
                                 f"one of: {', '.join(sorted(ARCHITECTURES))}")
    matrix = make_matrix(args.recipe, asked, args.output_dir, architecture())
    if not matrix["include"]:
        raise InputError("--arch", "no job: no recipe builds for " + ", ".join(asked or []),
                         "ask for the architectures the recipes name")
    if args.ci == "github":
        print(json.dumps({"include": matrix["include"]}, separators=(",", ":")))
        return 0
    if args.ci == "gitlab":
        print(json.dumps(gitlab_pipeline(matrix, args.output_dir), indent=2))
        return 0
    if args.json:
        return clikit.emit(args, matrix)
    width = max(len(j["recipe"]) for j in matrix["include"])
    print(f"{'recipe':<{width}}  {'arch':<8} command")
    for job in matrix["include"]:
        print(f"{job['recipe']:<{width}}  {job['architecture']:<8} {job['command']}")
    for skip in matrix["skipped"]:
        print(f"skipped {skip['recipe']} ({skip['architecture']}): {skip['why']}",
              file=sys.stderr)
    print(f"{len(matrix['include'])} jobs; --ci github or --ci gitlab prints what the CI "
          "system reads", file=sys.stderr)
    return 0

