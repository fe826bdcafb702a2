"""``cache list`` and ``cache prune [--keep-locked RECIPE…]``: what the package cache holds, and
removing what no recipe needs any more (issue 16 §8).

The cache (pipeline/sources/fetch.py ``Cache``) is content-addressed: ``sha256/ab/abcd…``. Only
names of that exact shape are listed or removed, each under the entry's own lock, through a
directory descriptor and never through a symbolic link; anything else under the cache directory
is left alone. ``--keep-locked`` keeps every file the recipes need (the same set ``fetch``
stores: their sources' and their lock files' sha256s, the lock's repository metadata too).
A pruning also removes ``plan``'s file lists of packages no longer cached, and lists of an older
format (``lists/ab/<sha256>.vN.json``).
"""

from __future__ import annotations

import os
import re
import stat
import sys
import time
from pathlib import Path

from . import clikit

HEX64 = re.compile(r"[0-9a-f]{64}")
HEX2 = re.compile(r"[0-9a-f]{2}")

#: The first bytes of each kind of file the cache holds
MAGIC = ((b"!<arch>\n", "deb"), (b"\xed\xab\xee\xdb", "rpm"))


def _kind(dir_fd: int, name: str) -> str:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     dir_fd=dir_fd)
    except OSError:
        return "unreadable"
    try:
        head = os.read(fd, 8)
    finally:
        os.close(fd)
    return next((kind for magic, kind in MAGIC if head.startswith(magic)), "other")


def entries(root: Path) -> list[dict]:
    """Every ``sha256/ab/<64 hex>`` regular file of the cache at ``root``: sha256, size, kind
    (deb, rpm, other) and mtime (last stored or re-hashed), sorted by sha256."""
    found: list[dict] = []
    try:
        top = os.open(root / "sha256", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return found
    except NotADirectoryError:
        from ..errors import InputError

        raise InputError(str(root / "sha256"), "is not a directory (not a sysext-pipeline "
                         "cache?)", "give --cache-dir the cache directory") from None
    try:
        for prefix in sorted(os.listdir(top)):
            if not HEX2.fullmatch(prefix):
                continue
            try:
                sub = os.open(prefix, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=top)
            except OSError:
                continue  # a symlink or a file where a directory belongs: not ours
            try:
                for name in sorted(os.listdir(sub)):
                    if not (HEX64.fullmatch(name) and name.startswith(prefix)):
                        continue
                    st = os.stat(name, dir_fd=sub, follow_symlinks=False)
                    if not stat.S_ISREG(st.st_mode):
                        continue
                    found.append({"sha256": name, "size": st.st_size,
                                  "kind": _kind(sub, name), "mtime": int(st.st_mtime)})
            finally:
                os.close(sub)
    finally:
        os.close(top)
    return found


def needed_by(recipes: list[str]) -> set[str]:
    """The sha256 of every cached file these recipes need (what ``fetch`` would store): their
    sources, the files of their locks (a lock must be fresh) and the locks' repository
    metadata."""
    from .. import recipe as recipe_mod
    from ..sources import kinds
    from ..sources.lock import expand_sources, lock_path, read_lock

    keep: set[str] = set()
    for name in recipes:
        recipe = recipe_mod.load(name)
        for source in expand_sources(recipe, offline=True):
            if source.sha256 and kinds.of(source).stored:
                keep.add(source.sha256)
        if lock_path(recipe).exists():
            for repo in read_lock(recipe).get("repository", []):
                if isinstance(repo.get("metadata_sha256"), str):
                    keep.add(repo["metadata_sha256"])
    return keep


def prune(root: Path, keep: set[str], *, dry_run: bool = False) -> list[dict]:
    """Remove every cache entry whose sha256 is not in ``keep``, each under its lock (a build
    that is reading it finishes first); returns the removed entries."""
    from ..sources.fetch import Cache

    cache = Cache(root)
    removed = []
    for entry in entries(root):
        sha256 = entry["sha256"]
        if sha256 in keep:
            continue
        if not dry_run:
            with cache.entry(sha256):
                directory = os.open(root / "sha256" / sha256[:2],
                                    os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                try:
                    os.unlink(sha256, dir_fd=directory)
                except FileNotFoundError:
                    continue  # someone else removed it meanwhile
                finally:
                    os.close(directory)
        removed.append(entry)
    if not dry_run:
        cache.sweep()  # downloads killed half-way
        prune_lists(root)
    return removed


#: plan's file list of a cached package: ``lists/ab/<sha256>.v<format version>.json``
LIST_NAME = re.compile(r"([0-9a-f]{64})\.v([0-9]+)\.json")


def prune_lists(root: Path) -> int:
    """Remove plan's file lists (pipeline/commands/plan.py) that nothing reads any more: those
    of packages no longer in the cache, and those of another list format version. A list is
    derived from its package, so it goes with it. Only names of that exact shape, through
    directory descriptors, never through a symbolic link; returns how many went."""
    from .plan import LISTING_VERSION

    cached = {entry["sha256"] for entry in entries(root)}
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        top = os.open(root / "lists", flags)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    gone = 0
    try:
        for prefix in sorted(os.listdir(top)):
            if not HEX2.fullmatch(prefix):
                continue
            try:
                sub = os.open(prefix, flags, dir_fd=top)
            except OSError:
                continue  # a symlink or a file where a directory belongs: not ours
            try:
                for name in os.listdir(sub):
                    match = LIST_NAME.fullmatch(name)
                    if match is None or not match[1].startswith(prefix):
                        continue
                    if match[1] in cached and int(match[2]) == LISTING_VERSION:
                        continue
                    if stat.S_ISREG(os.stat(name, dir_fd=sub, follow_symlinks=False).st_mode):
                        try:
                            os.unlink(name, dir_fd=sub)
                            gone += 1
                        except FileNotFoundError:
                            pass  # removed by someone else meanwhile
            finally:
                os.close(sub)
    finally:
        os.close(top)
    return gone


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def cmd_list(args) -> int:
    from ..sources.fetch import default_cache_dir

    root = default_cache_dir(args.cache_dir)
    found = entries(root)
    total = sum(e["size"] for e in found)
    if args.json:
        return clikit.emit(args, {"cache": str(root), "entries": found, "files": len(found),
                                  "bytes": total})
    for e in found:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(e["mtime"]))
        print(f"{e['sha256']}  {e['kind']:<5} {e['size']:>12}  {when}")
    print(f"{root}: {clikit.count(len(found), 'file')}, {_size(total)}", file=sys.stderr)
    return 0


def cmd_prune(args) -> int:
    from ..sources.fetch import default_cache_dir

    root = default_cache_dir(args.cache_dir)
    keep = needed_by(args.keep_locked or [])  # every recipe is read before anything goes
    before = len(entries(root))
    removed = prune(root, keep, dry_run=args.dry_run)
    freed = sum(e["size"] for e in removed)
    if args.json:
        return clikit.emit(args, {"cache": str(root), "removed": removed, "freed": freed,
                                  "kept": before - len(removed), "dry_run": args.dry_run})
    if not args.quiet:
        done = "would remove" if args.dry_run else "removed"
        for e in removed:
            print(f"{done} {e['sha256']} ({e['kind']}, {_size(e['size'])})", file=sys.stderr)
        print(f"{root}: {done} {clikit.count(len(removed), 'file')} ({_size(freed)}), kept "
              f"{before - len(removed)}", file=sys.stderr)
    return 0


def register(sub) -> None:
    from .cli import SUMMARIES

    p = sub.add_parser("cache", help=SUMMARIES["cache"])
    csub = p.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    ls = csub.add_parser("list", help="every file in the package cache: sha256, kind (deb, rpm, "
                         "other), size, when it was stored")
    clikit.add_cache_dir(ls)
    clikit.add_json(ls)
    ls.set_defaults(func=cmd_list)

    pr = csub.add_parser("prune", help="remove the cached files no given recipe needs (without "
                         "--keep-locked: every file)")
    pr.add_argument("--keep-locked", nargs="+", metavar="RECIPE",
                    help="keep what these recipes need: their sources and the packages and "
                    "repository metadata of their lock files (a lock must be fresh)")
    pr.add_argument("--dry-run", "-n", action="store_true",
                    help="only say what would be removed")
    clikit.add_cache_dir(pr)
    clikit.add_json(pr)
    clikit.add_quiet(pr)
    pr.set_defaults(func=cmd_prune)
