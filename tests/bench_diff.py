"""Benchmark (not a test): peak memory and time of ``diff`` on two large images.

    python tests/bench_diff.py [--mb 500] [--format squashfs|erofs] [--files 2000]

Makes a tree of incompressible files (``--mb`` in total), packs it twice (the second time with
one file changed and one added), runs ``sysext-pipeline diff --images-only`` in a child process
and prints its wall time and peak RSS (its own and its children's: the tree walkers). Memory
should stay flat as ``--mb`` grows; disk use is the two images (plus extraction when not root).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def make_tree(root: Path, total_mb: int, files: int) -> None:
    size = max(1, total_mb * (1 << 20) // files)
    for i in range(files):
        d = root / f"usr/share/bench/{i % 50:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}").write_bytes(os.urandom(size))


def pack(src: Path, out: Path, fmt: str) -> None:
    if fmt == "squashfs":
        cmd = ["mksquashfs", src, out, "-noappend", "-no-progress", "-quiet", "-all-time",
               "1700000000", "-mkfs-time", "1700000000", "-comp", "zstd", "-Xcompression-level",
               "1"]
    else:
        cmd = ["mkfs.erofs", "--quiet", "-T1700000000", "-U",
               "11111111-2222-4333-8444-555555555555", out, src]
    subprocess.run([str(c) for c in cmd], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=500)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--format", choices=("squashfs", "erofs"), default="squashfs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-diff-") as tmp:
        tmp = Path(tmp)
        src = tmp / "src"
        make_tree(src, args.mb, args.files)
        pack(src, tmp / "a.raw", args.format)
        victim = next((src / "usr/share/bench/07").iterdir())
        victim.write_bytes(os.urandom(victim.stat().st_size))
        (src / "usr/share/bench/added").write_bytes(b"new\n")
        pack(src, tmp / "b.raw", args.format)
        shutil.rmtree(src)
        # A fresh parent, so that only diff and its tree walkers count (not mksquashfs above).
        probe = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
                 "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024, "
                 "file=sys.stderr); sys.exit(p.returncode)")
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "pipeline",
                               "diff", "--images-only", str(tmp / "a.raw"), str(tmp / "b.raw")],
                              env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                              text=True)
        took = time.monotonic() - started
        peak = int(proc.stderr.strip().splitlines()[-1])
        print(proc.stdout.splitlines()[2] if proc.stdout.count("\n") > 2 else proc.stdout)
        size = (tmp / "a.raw").stat().st_size >> 20
        print(f"{args.format}, {size} MiB per image, {args.files} files: diff took {took:.1f}s, "
              f"peak RSS of the largest child {peak} MiB (exit {proc.returncode})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
