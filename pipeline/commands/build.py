"""``build`` (recipes into images + manifests) and ``recipe-reference`` (the recipe docs).

The stage runner is :mod:`pipeline.stages.build`; this module only checks what can be checked
before anything is fetched (:func:`preflight`), runs it and prints. Several recipes build as a
catalogue (:func:`cmd_catalogue`): every package fetched once into the shared cache, then up to
``-j`` builds at once, each its own ``build`` process publishing as soon as it is done.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from . import clikit
from .cli import SUMMARIES


def register(sub) -> None:
    p = sub.add_parser("build", help=SUMMARIES["build"])
    p.add_argument("recipe", nargs="+", metavar="RECIPE", help="recipe file (TOML), see "
                   "docs/recipes.md; several build as a catalogue (-j at a time, a summary at "
                   "the end)")
    p.add_argument("-o", "--output-dir", default="out", help="where the image and manifest go "
                   "(default: ./out; checked before anything is fetched)")
    clikit.add_json(p)
    clikit.add_cache_dir(p)
    p.add_argument("--offline", action="store_true", help="use only the cache/store, never the "
                   "network (a missing file is an error naming the package)")
    p.add_argument("--unsigned", action="store_true", help="ignore [sign]: a DDI gets an empty "
                   "signature partition and NAME.roothash for `sysext-pipeline sign` elsewhere")
    clikit.add_timeout(p)
    clikit.add_quiet(p)
    p.add_argument("--force", action="store_true", help="rebuild even when the output is up to "
                   "date (the manifest's input digest and image sha256 match)")
    p.add_argument("-j", "--jobs", type=_jobs, metavar="N", help="with several recipes: builds "
                   "in flight at once (default: the number of cores this process may use)")
    p.add_argument("--keep-going", action="store_true", help="with several recipes: after a "
                   "failure, go on with the others (default: start no new build; the running "
                   "ones finish)")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("recipe-reference", help=SUMMARIES["recipe-reference"])
    p.set_defaults(func=cmd_recipe_reference)


def _human(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _jobs(text: str) -> int:
    import argparse

    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 256:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of builds from 1 to 256")
    return int(text)


def cmd_build(args) -> int:
    recipes = list(dict.fromkeys(args.recipe))  # a recipe named twice builds once
    if len(recipes) > 1:
        return cmd_catalogue(args, recipes)
    args.recipe = recipes[0]
    return _build_one(args)


def _check_recipe(recipe, unsigned: bool, offline: bool = False) -> None:
    """What one recipe's build needs before anything is fetched: root for a directory image,
    its tools and signing key."""
    from .. import tools  # a missing or too-old tool: one line before anything is fetched
    from ..errors import InputError
    from ..stages.package import refuse_unowned_directory

    refuse_unowned_directory(recipe.format, os.geteuid() == 0)  # as stages/build.py decides
    tools.preflight("build", tools.build_features(recipe.format, recipe.filesystem,
                                                  recipe.verity)
                    | clikit.source_features(recipe.sources, offline=offline))
    if recipe.signing and not unsigned:
        for what in ("key", "cert"):
            path = Path(recipe.signing[what])
            if not path.exists() and not path.is_symlink():
                raise InputError(f"{recipe.path}: sign.{what}", f"{path}: no such file",
                                 "make a key with `sysext-pipeline keys generate --key "
                                 f"{recipe.signing['key']} --cert {recipe.signing['cert']}`, or "
                                 "`build --unsigned` and `sysext-pipeline sign` the image later")


def _build_one(args) -> int:
    from .. import recipe as recipe_mod
    from ..sources.fetch import Cache, default_cache_dir, describe_progress
    from ..stages.build import Log, build

    recipe = recipe_mod.load(args.recipe)
    preflight(Path(args.output_dir))
    _check_recipe(recipe, args.unsigned, args.offline)
    cache = Cache(default_cache_dir(args.cache_dir))
    result = build(recipe, Path(args.output_dir), cache, offline=args.offline,
                   unsigned=args.unsigned, force=args.force,
                   log=Log(None if args.quiet else _human,
                           tty=sys.stderr if sys.stderr.isatty() else None),
                   progress=describe_progress())
    for finding in result.findings:
        _human(f"{clikit.label(finding.severity)} {finding.line()}")
    for warning in result.warnings:
        _human(f"{clikit.label('warning')} {warning}")
    if args.json:
        return clikit.emit(args, build_summary(result))
    if result.up_to_date:
        if not args.quiet:
            for image in result.images:
                _human(f"up to date: {image.image} ({image.kind})")
    elif not args.quiet:
        for image in result.images:
            _human(f"built {image.image} ({image.kind})")
    return 0


def build_summary(result) -> dict:
    """The --json result of a build: one entry per image, plus what applies to all."""
    images = []
    for image in result.images:
        m = image.model
        images.append({
            "kind": image.kind, "name": image.name, "image": str(image.image),
            "manifest": str(image.manifest_path), "format": m.image.format,
            "sha256": m.image.sha256, "size": m.image.size,
            "tree_sha256": m.image.tree_sha256,
            "extension_release": m.extension_release.fields,
            "extension_release_path": m.extension_release.path,
            "warnings": [w.to_json() for w in m.warnings],
            "root_hash": m.root_hash,
            "extra_files": [str(p) for p in image.extras],
        })
    return {"decision": result.decision, "images": images, "warnings": result.warnings,
            "dropped": dict(result.images[0].model.dropped) if result.images else {},
            "timings": result.timings, "up_to_date": result.up_to_date}


# --- a catalogue: several recipes at once (issue 14 target 7) -----------------------------------

#: Exit codes from worst to best, for the catalogue's own exit: interrupted, then "fix the
#: input" (a retry will not help), a verdict, "may be transient".
_WORST_FIRST = (143, 130, 2, 3, 1)

#: Members of a catalogue row (docs/schemas/build.schema.json).
STATUSES = ("built", "up_to_date", "failed", "not_started")


def _worst(codes) -> int:
    codes = [c for c in codes if c]
    if not codes:
        return 0
    known = [c for c in _WORST_FIRST if c in codes]
    return known[0] if known else max(codes)


class _Child:
    """One recipe's ``build`` process: its stderr relayed line by line with the recipe's name
    in front, its --json result read from a file when it ends."""

    def __init__(self, row: dict, argv: list[str], env: dict, relay):
        import subprocess
        import tempfile

        self.row, self.relay = row, relay
        self.start = time.monotonic()
        self.stdout = tempfile.TemporaryFile()  # noqa: SIM115 - closed in finish()
        self.buffer = b""
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.stdout,
                                     stderr=subprocess.PIPE, env=env,
                                     preexec_fn=_die_with_parent)
        os.set_blocking(self.proc.stderr.fileno(), False)

    def read(self) -> bool:
        """Relay what the child wrote; False at the end of its output."""
        try:
            data = os.read(self.proc.stderr.fileno(), 65536)
        except BlockingIOError:
            return True
        if not data:
            if self.buffer:
                self.relay(self.row, self.buffer.decode(errors="replace"))
                self.buffer = b""
            return False
        *lines, self.buffer = (self.buffer + data).split(b"\n")
        if len(self.buffer) > 65536:  # a line without an end: shown in pieces
            lines.append(self.buffer)
            self.buffer = b""
        for line in lines:
            self.relay(self.row, line.decode(errors="replace"))
        return True

    def finish(self) -> None:
        """The child has ended: its row from its exit code and --json object."""
        import json

        code = self.proc.wait()
        self.proc.stderr.close()
        self.stdout.seek(0)
        data = self.stdout.read(64 << 20)
        self.stdout.close()
        row = self.row
        row["seconds"] = round(time.monotonic() - self.start, 3)
        row["exit"] = code if code >= 0 else 128 - code
        try:
            result = json.loads(data)
        except ValueError:
            result = None
        if not isinstance(result, dict):
            result = {}
        if code == 0 and isinstance(result.get("images"), list):
            row["status"] = "up_to_date" if result.get("up_to_date") else "built"
            row["images"] = result["images"]
            warnings = result.get("warnings")
            row["warnings"] = [w for w in warnings if isinstance(w, str)] \
                if isinstance(warnings, list) else []
            return
        row["status"] = "failed"
        error = result.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            row["error"] = {k: error.get(k) if isinstance(error.get(k), str) else None
                            for k in ("message", "subject", "field", "hint")}
        else:
            row["error"] = {"message": f"the build ended with exit {row['exit']} and no result",
                            "subject": row["recipe"], "field": None, "hint": None}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """The child build gets SIGTERM when this process dies (PR_SET_PDEATHSIG), so a killed
    catalogue leaves no builds behind (each one cleans up on SIGTERM)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _row(path: str) -> dict:
    return {"recipe": path, "name": None, "status": "not_started", "exit": None, "seconds": 0.0,
            "images": [], "warnings": [], "error": None}


def cmd_catalogue(args, paths: list[str]) -> int:
    """Build several recipes: check them all, fetch the packages they need once (in parallel,
    into the shared sha256-keyed cache), then run up to ``-j`` builds at once."""
    import contextlib
    import selectors

    from .. import recipe as recipe_mod
    from ..errors import InputError, PipelineError
    from ..formats.compression import Limits
    from ..outdir import locked_workdir, sweep
    from ..sources.fetch import Cache, default_cache_dir, describe_progress, fetch_all
    from ..sources.lock import expand_sources
    from ..stages.build import own_names
    from ..stages.extract import DECODED_ENV

    output_dir = Path(args.output_dir)
    preflight(output_dir)
    jobs = args.jobs or len(os.sched_getaffinity(0)) or 1  # the cores this process may use
    log = None if args.quiet else _human
    rows = [_row(p) for p in paths]
    owners: dict[str, str] = {}
    sources: dict[str, object] = {}  # one per sha256: each package fetched once
    users: dict[str, list] = {}  # sha256 → the recipes (that may run) using it
    runnable = []
    failed: PipelineError | None = None
    for row in rows:
        try:
            recipe = recipe_mod.load(row["recipe"])
            row["name"] = recipe.name
            for name in sorted(own_names(recipe.name)):
                if name in owners:
                    raise InputError(f"{recipe.path}: extension.name",
                                     f"its image {name!r} is also made by {owners[name]}",
                                     "recipes built into one -o directory need distinct names")
                owners[name] = row["recipe"]
            _check_recipe(recipe, args.unsigned, args.offline)
            mine = {}
            for source in expand_sources(recipe, offline=args.offline):
                if source.sha256:
                    sources.setdefault(source.sha256, source)
                    mine[source.sha256] = recipe
            for sha256, user in mine.items():
                users.setdefault(sha256, []).append(user)
        except PipelineError as exc:
            _failed(row, exc)
            failed = failed or exc
            if log:
                log(f"{clikit.label('error')} {exc.line()}")
            continue
        runnable.append(row)
    if failed is not None and not args.keep_going:
        runnable = []
    cache = Cache(default_cache_dir(args.cache_dir))
    fetched = []
    if runnable:
        started = time.monotonic()
        try:
            fetched = fetch_all(list(sources.values()), cache, offline=args.offline,
                                progress=describe_progress())
        except PipelineError as exc:  # each build then fetches (and fails) on its own
            if not args.keep_going:
                raise
            fetched = []
            if log:
                log(f"{clikit.label('warning')} fetch: {exc.line()}; each build fetches its own")
        if log and fetched:
            origins = [f.origin for f in fetched]
            size = sum(f.size for f in fetched)
            log(f"{'fetch':<10}{len(fetched)} packages for {len(runnable)} recipes, "
                f"{size / 1048576:.1f} MiB ({len(origins) - origins.count('cache')} downloaded, "
                f"{origins.count('cache')} cached) ({time.monotonic() - started:.1f}s)")

    import pipeline

    env = dict(os.environ)
    top = str(Path(pipeline.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([top, *filter(None, [env.get("PYTHONPATH")])])
    width = max([len(r["name"] or "") for r in rows] + [1])

    def relay(row: dict, line: str) -> None:  # -q children print only findings and errors
        if line.strip():
            _human(f"[{row['name']:<{width}}] {line}")

    def argv(row: dict) -> list[str]:
        out = [sys.executable, "-m", "pipeline", *(["--debug"] if getattr(args, "debug", False)
                                                    else []),
               "build", row["recipe"], "-o", str(output_dir), "--cache-dir", str(cache.root),
               "--json=short"]
        out += [flag for flag, on in (("--offline", args.offline), ("--unsigned", args.unsigned),
                                      ("--force", args.force), ("-q", args.quiet)) if on]
        if args.timeout is not None:
            out += ["--timeout", repr(args.timeout)]
        return out

    pending = list(runnable)
    running: list[_Child] = []
    stopping = failed is not None and not args.keep_going
    # a failed recipe's sources may have been fetched: they are no runnable recipe's
    shared = [f for f in fetched if f.source.format == "deb"
              and len(users.get(f.sha256, ())) > 1] if len(runnable) > 1 else []
    env.pop(DECODED_ENV, None)
    with contextlib.ExitStack() as stack:
        if shared:
            output_dir.mkdir(parents=True, exist_ok=True)  # as each build would make it
            sweep(output_dir, DECODED_PREFIX)  # a killed catalogue's
            store = stack.enter_context(locked_workdir(output_dir, DECODED_PREFIX))
            started = time.monotonic()
            # within the most permissive unpacked budget and the strictest expansion ratio of
            # the recipes using it: a package that passes here passes in each of them
            budgets = {f.sha256: Limits(unpacked=max(r.unpacked_limit for r in users[f.sha256]),
                                        ratio=min(r.ratio_limit for r in users[f.sha256]))
                       for f in shared}
            done = decode_shared(shared, budgets, store.path,
                                 min(jobs, len(os.sched_getaffinity(0))))
            if done:
                env[DECODED_ENV] = os.path.abspath(store.path)
            if log:
                log(f"{'decode':<10}{len(done)} of {len(shared)} shared packages once, "
                    f"{sum(done.values()) / 1048576:.1f} MiB "
                    f"({time.monotonic() - started:.1f}s)")
        selector = selectors.DefaultSelector()
        try:
            while running or (pending and not stopping):
                while pending and not stopping and len(running) < jobs:
                    row = pending.pop(0)
                    child = _Child(row, argv(row), env, relay)
                    child.row["status"] = "running"
                    running.append(child)
                    selector.register(child.proc.stderr, selectors.EVENT_READ, child)
                for key, _ in selector.select(timeout=1.0):
                    child = key.data
                    if not child.read():
                        selector.unregister(key.fileobj)
                        child.finish()
                        running.remove(child)
                        _report(child.row, log, width)
                        if child.row["status"] == "failed" and not args.keep_going:
                            stopping = True
        finally:
            for child in running:
                child.stop()
            for child in running:
                child.proc.wait()
            selector.close()
    return _summary(args, rows, jobs, log)


#: The catalogue's directory of shared payloads decoded once, in the output directory.
DECODED_PREFIX = ".catalogue.decoded-"
#: Free space the decoded payloads leave on the output directory's file system (the builds
#: need theirs); below it the rest of the packages are decoded by each build, as alone.
DECODED_RESERVE = 2 << 30
#: How often (bytes written) the free space is looked at again.
_SPACE_EVERY = 16 << 20


class _NoRoom(Exception):
    pass


def decode_shared(shared: list, budgets: dict, store: Path, threads: int) -> dict[str, int]:
    """Decode the data.tar of every .deb in ``shared`` (Fetched, used by several recipes) once
    into ``store`` as the file named by its sha256, ``threads`` at a time (largest first:
    lzma, zlib, bz2 and pyzstd release the GIL); sha256 → decoded size of those done.

    Each is decoded within ``budgets[sha256]`` (Limits). One that fails here (corrupt, a bomb,
    an uncompressed payload) is not stored: each build decodes it itself as it would alone,
    and fails with its own message. The file exists under its name
    only once complete (``.part``, then renamed); when the free space would drop below
    :data:`DECODED_RESERVE`, the rest is left to the builds."""
    import concurrent.futures
    import errno
    import threading

    from ..errors import InputError
    from ..formats.package import decode_payload

    done: dict[str, int] = {}
    full = threading.Event()
    dir_fd = os.open(store, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)

    def one(item) -> None:
        if full.is_set():
            return
        part = f"{item.sha256}.part"
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dir_fd)
        try:
            with open(fd, "wb") as out:
                size = decode_payload(item.path, item.sha256, _Roomy(out, dir_fd, full),
                                      limits=budgets[item.sha256], name=item.filename)
        except (InputError, _NoRoom):
            size = None
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            full.set()
            size = None
        if size is None:
            os.unlink(part, dir_fd=dir_fd)
            return
        os.rename(part, item.sha256, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        done[item.sha256] = size

    try:
        with concurrent.futures.ThreadPoolExecutor(max(1, threads), "decode") as pool:
            futures = [pool.submit(one, item)
                       for item in sorted(shared, key=lambda f: (-f.size, f.sha256))]
            try:
                for future in futures:
                    future.result()
            finally:  # ^C or a bug: what has not started does not
                for future in futures:
                    future.cancel()
    finally:
        os.close(dir_fd)
    return done


class _Roomy:
    """A file written while the file system keeps :data:`DECODED_RESERVE` bytes free."""

    def __init__(self, out, dir_fd: int, full):
        self._out, self._fd, self._full = out, dir_fd, full
        self._until = 0  # bytes that may be written before the next look

    def write(self, data) -> None:
        if self._full.is_set():
            raise _NoRoom
        if len(data) > self._until:
            fs = os.fstatvfs(self._fd)
            free = fs.f_bavail * fs.f_frsize - DECODED_RESERVE
            if free < len(data) + _SPACE_EVERY:
                self._full.set()
                raise _NoRoom
            self._until = _SPACE_EVERY
        self._until -= len(data)
        self._out.write(data)


def _failed(row: dict, exc) -> None:
    row["status"], row["exit"], row["error"] = "failed", exc.exit_code, exc.as_json()


def _report(row: dict, log, width: int) -> None:
    tag = f"[{row['name']:<{width}}]"
    if row["status"] == "failed":
        _human(f"{tag} {clikit.label('error')} {row['recipe']}: failed (exit {row['exit']}): "
               f"{row['error']['message']}")
    elif log:
        verb = "up to date:" if row["status"] == "up_to_date" else "built"
        for image in row["images"]:
            log(f"{tag} {verb} {image.get('image')} ({image.get('kind')})")


def _summary(args, rows: list[dict], jobs: int, log) -> int:
    code = _worst(r["exit"] for r in rows)
    counts = {status: sum(1 for r in rows if r["status"] == status) for status in STATUSES}
    if log:
        width = max(len(r["recipe"]) for r in rows)
        lines = [f"{'recipe':<{width}}  {'result':<12} {'exit':>4} {'seconds':>8}  images"]
        for r in rows:
            images = ", ".join(Path(str(i.get("image"))).name for i in r["images"]) or \
                (r["error"]["message"][:60] if r["error"] else "-")
            lines.append(f"{r['recipe']:<{width}}  {r['status'].replace('_', ' '):<12} "
                         f"{'-' if r['exit'] is None else r['exit']:>4} {r['seconds']:>8.1f}  "
                         f"{images}")
        done = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in counts.items() if n)
        lines.append(f"{len(rows)} recipes, -j {jobs}: {done}")
        for line in lines:
            _human(line)
    if args.json:
        failed = [r for r in rows if r["status"] == "failed"]
        error = None
        if code:
            error = {"message": f"{len(failed)} of {len(rows)} recipes failed: " + ", ".join(
                f"{r['recipe']} (exit {r['exit']})" for r in failed), "subject": None,
                "field": None, "hint": "each row's error says why"}
        return clikit.emit(args, {"recipes": rows, "jobs": jobs, "counts": counts}, code,
                           error)
    return code


def preflight(output_dir: Path) -> None:
    """Before anything is fetched: the output directory is (or can be) a writable directory and
    SOURCE_DATE_EPOCH, when set, is a valid epoch."""
    from ..errors import InputError

    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is not None and not (epoch.isascii() and epoch.isdigit()):
        raise InputError("SOURCE_DATE_EPOCH", f"{epoch[:40]!r} is not a number of seconds since "
                         "1970", "unset it or set it to e.g. $(git log -1 --format=%ct)")
    existing = output_dir
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    if existing.is_symlink() and not existing.exists():
        raise InputError(str(existing), "is a dangling symbolic link",
                         "give -o a directory")
    if not existing.is_dir():
        raise InputError(str(existing), "is not a directory",
                         "-o/--output-dir names the directory the image goes to")
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        raise InputError(str(existing), "is on a read-only file system",
                         "give -o a directory you can write to")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(str(existing), "is not writable by this user",
                         "give -o a directory you can write to")


def cmd_recipe_reference(args) -> int:
    from ..recipe import reference_markdown

    sys.stdout.write(reference_markdown() + "\n")
    return 0
