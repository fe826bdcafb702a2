"""Benchmark (not a test): peak memory and time of ``diff`` on two large images.

    python tests/bench_diff.py [--mb 500] [--format squashfs|erofs] [--files 2000]

Makes a tree of incompressible files (``--mb`` in total), packs it twice (the second time with
one file changed and one added), runs ``sysext-pipeline diff --images-only`` in a child process and prints its wall
time and peak RSS (its own and its children's: the tree walkers) — once at a tenth of ``--mb``
(the baseline) and once at ``--mb``, with the ratios: memory must stay flat as images grow.
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


def measure(tmp: Path, mb: int, files: int, fmt: str) -> tuple[float, int, int, str]:
    """(seconds, peak RSS MiB, image MiB, diff's summary line) for two images of ``mb``."""
    src = tmp / "src"
    make_tree(src, mb, files)
    pack(src, tmp / "a.raw", fmt)
    victim = next((src / "usr/share/bench/07").iterdir())
    victim.write_bytes(os.urandom(victim.stat().st_size))
    (src / "usr/share/bench/added").write_bytes(b"new\n")
    pack(src, tmp / "b.raw", fmt)
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
    size = (tmp / "a.raw").stat().st_size >> 20
    for image in ("a.raw", "b.raw"):
        (tmp / image).unlink()
    said = [line for line in proc.stdout.splitlines() if line.startswith(("differs", "identical"))]
    return took, peak, size, (said or proc.stdout.splitlines() or [""])[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=500)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--format", choices=("squashfs", "erofs"), default="squashfs")
    args = parser.parse_args()
    results = []
    for mb in (max(1, args.mb // 10), args.mb):  # the small one is the baseline
        with tempfile.TemporaryDirectory(prefix="bench-diff-") as tmp:
            results.append(measure(Path(tmp), mb, args.files, args.format))
    print(f"diff --images-only, {args.format}, {args.files} files, one changed and one added")
    print(f"{'image MiB':>10}{'wall s':>9}{'peak RSS MiB':>14}")
    for took, peak, size, _ in results:
        print(f"{size:>10}{took:>9.1f}{peak:>14}")
    (t0, m0, s0, _), (t1, m1, s1, line) = results
    print(f"ratio large/small: size {s1 / max(s0, 1):.1f}x, time {t1 / t0:.1f}x, "
          f"peak RSS {m1 / m0:.2f}x (flat memory: ~1x)")
    print(f"diff said: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
