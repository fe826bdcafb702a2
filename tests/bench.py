"""Benchmark: the example recipe vs. the same payload through the plain tools, in one run.

Both sides start from a warm package cache and produce a squashfs with the same compressor and
level. The baseline is what a careful person would type: ``dpkg-deb -x`` per package,
``find | xargs touch`` for the time stamps, ``mksquashfs`` with the same options. Printed: the
best of N wall times for each, their ratio, and the peak RSS of the largest process of each.

    nox -s bench [-- --rounds 5 --recipe recipes/debug-tools.toml]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline import recipe as recipe_mod  # noqa: E402
from pipeline.fetch import Cache, default_cache_dir, fetch_all  # noqa: E402


def measured(cmd: list[str], env: dict | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of the largest process of ``cmd``'s tree.

    Runs through a fresh Python so RUSAGE_CHILDREN holds only this command's processes."""
    probe = ("import resource,subprocess,sys,time,json;t=time.monotonic();"
             "r=subprocess.run(sys.argv[1:]);d=time.monotonic()-t;"
             "print(json.dumps([r.returncode,d,"
             "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))")
    out = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True,
                         env=env)
    code, seconds, rss = json.loads(out.stdout.strip().splitlines()[-1])
    if code != 0:
        sys.exit(f"benchmark command failed: {' '.join(cmd)}\n{out.stderr}")
    return seconds, rss


def baseline_script(debs: list[Path], recipe, epoch: int, work: Path) -> list[str]:
    level = ["-Xcompression-level", str(recipe.compression_level)] \
        if recipe.compression_level is not None else []
    lines = ["set -e", f"rm -rf {work}/root {work}/plain.raw", f"mkdir {work}/root"]
    lines += [f"dpkg-deb -x {deb} {work}/root" for deb in debs]
    lines += [f"find {work}/root -exec touch -h -d @{epoch} {{}} +",
              f"mksquashfs {work}/root {work}/plain.raw -noappend -no-progress -quiet "
              f"-all-root -mkfs-time {epoch} -comp {recipe.compression} {' '.join(level)}"]
    return ["sh", "-c", "\n".join(lines)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(REPO / "recipes/debug-tools.toml"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    recipe = recipe_mod.load(args.recipe)
    cache = Cache(default_cache_dir())
    fetched = fetch_all(recipe.sources, cache)  # warm the cache outside the measurement
    work = Path(tempfile.mkdtemp(prefix="sysext-bench-"))
    try:
        ours_cmd = [sys.executable, "-m", "pipeline", "build", args.recipe, "-q", "-o",
                    str(work / "out"), "--cache-dir", str(cache.root)]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        epoch = recipe.source_date_epoch or 1700000000
        plain_cmd = baseline_script([f.path for f in fetched], recipe, epoch, work)
        ours, plain = [], []
        for _ in range(args.rounds):  # interleaved, so drift hits both sides alike
            plain.append(measured(plain_cmd))
            ours.append(measured(ours_cmd, env))
        best_ours, best_plain = min(t for t, _ in ours), min(t for t, _ in plain)
        rss_ours, rss_plain = max(r for _, r in ours), max(r for _, r in plain)
        size_ours = (work / "out" / f"{recipe.name}.raw").stat().st_size
        size_plain = (work / "plain.raw").stat().st_size
        payload = sum(f.size for f in fetched)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"recipe: {args.recipe} ({len(fetched)} packages, {payload / 2**20:.1f} MiB), "
          f"{recipe.format}/{recipe.compression} level {recipe.compression_level}, "
          f"best of {args.rounds}, warm cache, {os.cpu_count()} CPUs")
    print(f"{'':<28}{'wall s':>8}{'peak RSS MiB':>14}{'image MiB':>11}")
    print(f"{'plain tools (baseline)':<28}{best_plain:>8.2f}{rss_plain / 1024:>14.1f}"
          f"{size_plain / 2**20:>11.2f}")
    print(f"{'sysext-pipeline build':<28}{best_ours:>8.2f}{rss_ours / 1024:>14.1f}"
          f"{size_ours / 2**20:>11.2f}")
    print(f"ratio pipeline/baseline: time {best_ours / best_plain:.2f}x, "
          f"peak RSS {rss_ours / rss_plain:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
