"""``lock`` and ``fetch``: resolve packages sources into a lock file; fill an offline store.

    sysext-pipeline lock RECIPE…                 resolve names → RECIPE.lock (next to it)
    sysext-pipeline lock --update jq RECIPE      move jq (and what it newly needs), keep the rest
    sysext-pipeline lock --check RECIPE…         would a re-lock move a package? (exit 3: yes)
    sysext-pipeline fetch RECIPE… --store DIR    every file the recipes need, into DIR
    sysext-pipeline build --offline --store DIR RECIPE
"""

from __future__ import annotations

import sys
import time

from ..errors import VERDICT, InputError
from . import clikit


def _human(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _cache(args):
    from ..sources.fetch import Cache, default_cache_dir, set_timeout

    set_timeout(args.timeout)
    return Cache(default_cache_dir(args.cache_dir))


def cmd_check(args) -> int:
    """``lock --check``: would a re-lock move a package? A verdict, exit 3 (VERDICT: the
    command worked and its answer is no, as ``diff``/``verify`` say "differs"), when it would
    (a nightly CI job), 0 when not; the lock file is never written."""
    from .. import recipe as recipe_mod
    from ..sources import lock

    cache = _cache(args)
    say = None if args.quiet else _human
    results, moving = [], False
    for name in args.recipe:
        recipe = recipe_mod.load(name)
        report = lock.check_lock(recipe, cache, log=say)
        moving = moving or report["would_move"] or report["stale"]
        results.append({"recipe": str(recipe.path), "lock": str(lock.lock_path(recipe)),
                        **report})
        if not args.quiet or report["would_move"] or report["stale"]:
            fixes = sum(1 for m in report["moves"] if m["security"])
            verdict = (f"would move {clikit.count(len(report['moves']), 'package')}"
                       + (f" ({clikit.count(fixes, 'security update')})" if fixes else "")
                       if report["would_move"] else "up to date")
            stale = "; stale (the recipe changed since it was written)" if report["stale"] \
                else ""
            _human(f"{lock.lock_path(recipe)}: {verdict}{stale}")
            for m in report["moves"]:
                tag = " [security]" if m["security"] else ""
                where = f" ({m['repository']})" if m["repository"] else ""
                _human(f"  {m['name']} {m['from'] or '(new)'} → {m['to'] or '(gone)'}{where}{tag}")
            for n in report["newer"]:
                if not any(m["name"] == n["name"] for m in report["moves"]):
                    _human(f"  {n['name']} {n['locked']}: {n['newest']} in {n['repository']} "
                           "(the closure keeps the locked version)")
            if report["would_move"] or report["stale"]:
                _human(f"  to move: sysext-pipeline lock {recipe.path}"
                       + (f" (or --update {' --update '.join(m['name'] for m in report['moves'])})"
                          if report["moves"] and not report["stale"] else ""))
    exit = VERDICT if moving else 0
    if args.json:
        movers = [r["lock"] for r in results if r["would_move"] or r["stale"]]
        return clikit.emit(args, {"recipes": results}, exit, {
            "message": "a re-lock would move packages", "subject": ", ".join(movers),
            "field": None, "hint": "sysext-pipeline lock RECIPE (or lock --update NAME)"})
    return exit


def cmd_lock(args) -> int:
    from .. import recipe as recipe_mod
    from ..sources import lock

    if args.check:
        if args.update:
            raise InputError("lock", "--check and --update exclude each other",
                             "--check only reports; run lock --update NAME to move NAME")
        return cmd_check(args)
    cache = _cache(args)
    say = None if args.quiet else _human
    results = []
    for name in args.recipe:
        recipe = recipe_mod.load(name)
        clikit.preflight("lock", features=clikit.source_features(repositories=recipe.repositories))
        start = time.monotonic()
        before, old = None, {}
        path = lock.lock_path(recipe)
        if path.exists():
            before = path.read_bytes()
            try:
                old = lock.locked_versions(lock.read_lock(recipe))
            except InputError:
                pass
        warnings: list[str] = []

        def warn(text: str, warnings=warnings) -> None:
            warnings.append(text)
            _human(f"warning: {text}")  # even with -q: a choice the user should make

        data, _metas = lock.lock_recipe(recipe, cache, update=tuple(args.update), log=say,
                                        warn=warn)
        for note in data.get("notes", []):
            _human(f"note: {note}")
        written = lock.write_lock(recipe, data)
        changed = before != written.read_bytes()
        seconds = round(time.monotonic() - start, 2)
        results.append({"recipe": str(recipe.path), "lock": str(written), "changed": changed,
                        "packages": len(data["package"]), "seconds": seconds,
                        "notes": data.get("notes", []), "warnings": warnings})
        new = lock.locked_versions(data)
        moves = [f"{k[0]} {old.get(k, '(new)')} → {new.get(k, '(gone)')}"
                 for k in sorted(old.keys() | new.keys()) if old and old.get(k) != new.get(k)]
        results[-1]["moved"] = moves
        if say:
            for move in moves:
                say(f"  {move}")
            size = sum(p["size"] for p in data["package"])
            say(f"locked {written}: {clikit.count(len(data['package']), 'package')}, "
                f"{size >> 10} KiB "
                f"({'changed' if changed else 'unchanged'}, {seconds:.1f}s)")
    if args.json:
        return clikit.emit(args, {"recipes": results})
    return 0


def cmd_fetch(args) -> int:
    from .. import recipe as recipe_mod
    from ..sources import kinds
    from ..sources.fetch import describe_progress, fetch_all
    from ..sources.lock import expand_sources

    cache = _cache(args)
    sources = {}
    for name in args.recipe:
        recipe = recipe_mod.load(name)
        for source in expand_sources(recipe):
            if source.sha256 is None or not kinds.of(source).stored:
                continue  # local files live with the recipe, not in the store
            sources.setdefault(source.sha256, source)
    clikit.preflight("fetch", features=clikit.source_features(sources.values()))
    fetched = fetch_all(list(sources.values()), cache,
                        progress=None if args.quiet else describe_progress())
    origins = [f.origin for f in fetched]
    summary = {"store": str(cache.root), "files": len(fetched),
               "bytes": sum(f.size for f in fetched),
               "downloaded": len(fetched) - origins.count("cache"),
               "present": origins.count("cache")}
    if args.json:
        return clikit.emit(args, summary)
    if not args.quiet:
        _human(f"store {cache.root}: {clikit.count(summary['files'], 'file')}, "
               f"{summary['bytes'] >> 10} KiB "
               f"({summary['downloaded']} downloaded, {summary['present']} already there)")
    return 0


def register(sub) -> None:
    from .cli import EPILOG

    p = sub.add_parser("lock", help="resolve packages sources into RECIPE.lock", epilog=EPILOG)
    p.add_argument("recipe", nargs="+", help="recipe file(s)")
    p.add_argument("--update", action="append", default=[], metavar="NAME",
                   help="move only NAME (repeatable); every other package keeps its version")
    p.add_argument("--check", action="store_true",
                   help="write nothing; report the locked packages the repositories have newer "
                   "versions of (security updates first) and exit 3 when a re-lock would move "
                   "one (a nightly CI job)")
    clikit.add_cache_dir(p)
    clikit.add_timeout(p)
    clikit.add_json(p)
    clikit.add_quiet(p)
    p.set_defaults(func=cmd_lock)

    p = sub.add_parser("fetch", help="download every file the recipes need into a store",
                       epilog=EPILOG)
    p.add_argument("recipe", nargs="+", help="recipe file(s); packages sources need a fresh lock")
    clikit.add_cache_dir(p, required=True, help="content-addressed store to fill (share it: "
                         "rsync, NFS, CI cache)")
    clikit.add_timeout(p)
    clikit.add_json(p)
    clikit.add_quiet(p)
    p.set_defaults(func=cmd_fetch)


__all__ = ["register", "InputError"]
