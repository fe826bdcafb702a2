"""Command line: ``sysext-pipeline COMMAND …`` (also ``python -m pipeline``).

Exit codes: the classes of :mod:`pipeline.errors` (0 ok, 1 may be transient: retry, 2 the input
is wrong: fix it, 3 verdict: no). Errors print one line, ``error: <where>: <what> (<hint>)``;
``--debug`` adds the traceback; with ``--json`` every outcome is one JSON object on stdout
(:mod:`pipeline.clikit`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from . import __version__, clikit
from .errors import EXIT_CLASSES, EXIT_TEXT, INPUT, RETRY, PipelineError

EPILOG = EXIT_TEXT

#: What exit 3 (a verdict) means for the commands that give one; every other command never
#: exits 3.
VERDICTS = {
    "check": "some image will not merge",
    "install": "the image would not merge, or another image breaks the merge (--force)",
    "doctor": "errors found",
    "inspect": "verity, the partition UUIDs, the signature or the file system fail",
    "verify": "differs, or could not be fully checked (the signature)",
    "diff": "the two differ",
}

#: The top-level --help lists the commands in these groups (any other command under "More").
GROUPS = {
    "Build": ("plan", "build", "lock", "fetch"),
    "Trust": ("keys", "sign", "inspect"),
    "Reproduce": ("verify", "diff"),
    "Host": ("check", "install", "uninstall", "rollback", "doctor", "explain"),
    "Docs": ("recipe-reference", "troubleshooting"),
}


def epilog(command: str | None = None) -> str:
    """The exit-code epilog every --help prints (one text, generated from the classes)."""
    lines = ["exit codes:"] + [f"  {code}  {text}" for code, text in EXIT_CLASSES.items()]
    if command in VERDICTS:
        lines.append(f"  here 3 means: {VERDICTS[command]}")
    elif command is not None:
        lines[-1] += " (not given by this command)"
    return "\n".join(lines)


def grouped_commands(summaries: dict[str, str]) -> str:
    grouped = {name for names in GROUPS.values() for name in names}
    groups = dict(GROUPS)
    more = tuple(n for n in summaries if n not in grouped)
    if more:
        groups["More"] = more
    lines = []
    for group, names in groups.items():
        lines.append(f"{group}:")
        lines += [f"  {name:<17} {summaries[name]}" for name in names if name in summaries]
    return "\n".join(lines)


def _human(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_build(args) -> int:
    from . import recipe as recipe_mod
    from .build import Log, build
    from .errors import InputError
    from .fetch import Cache, default_cache_dir, describe_progress

    recipe = recipe_mod.load(args.recipe)
    preflight(Path(args.output_dir))
    if recipe.signing and not args.unsigned:
        for what in ("key", "cert"):
            path = Path(recipe.signing[what])
            if not path.exists() and not path.is_symlink():
                raise InputError(f"{recipe.path}: sign.{what}", f"{path}: no such file",
                                 "make a key with `sysext-pipeline keys generate --key "
                                 f"{recipe.signing['key']} --cert {recipe.signing['cert']}`, or "
                                 "`build --unsigned` and `sysext-pipeline sign` the image later")
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
        m = image.manifest
        images.append({
            "kind": image.kind, "name": image.name, "image": str(image.image),
            "manifest": str(image.manifest_path), "format": m["image"]["format"],
            "sha256": m["image"]["sha256"], "size": m["image"]["size"],
            "tree_sha256": m["image"]["tree_sha256"],
            "extension_release": m["extension_release"]["fields"],
            "extension_release_path": m["extension_release"]["path"],
            "warnings": m["warnings"],
            "root_hash": (m.get("ddi") or m.get("verity") or {}).get("rootHash"),
            "extra_files": [str(p) for p in image.extras],
        })
    return {"decision": result.decision, "images": images, "warnings": result.warnings,
            "dropped": dict(result.images[0].manifest["dropped"]) if result.images else {},
            "timings": result.timings, "up_to_date": result.up_to_date}


def preflight(output_dir: Path) -> None:
    """Before anything is fetched: the output directory is (or can be) a writable directory and
    SOURCE_DATE_EPOCH, when set, is a valid epoch."""
    from .errors import InputError

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
    from .recipe import reference_markdown

    sys.stdout.write(reference_markdown() + "\n")
    return 0


#: Command → the module that registers it (``register(subparsers)`` adding parsers whose
#: ``func(args) -> int`` does the work), so each command's code lives beside its logic and a
#: build does not pay for importing the host-side or diff machinery. A test checks this table
#: against what the modules register.
COMMANDS: dict[str, str] = {
    "keys": "ddi_cmd", "sign": "ddi_cmd", "inspect": "ddi_cmd", "plan": "plan",
    "check": "check_cmd", "troubleshooting": "check_cmd", "install": "install_cmd",
    "uninstall": "install_cmd", "rollback": "install_cmd", "doctor": "doctor_cmd",
    "lock": "lock_cmd", "fetch": "lock_cmd", "verify": "verify_cmd", "diff": "verify_cmd",
    "explain": "explain_cmd", "publish": "publish_cmd", "sign-feed": "publish_cmd",
}


#: Each command's one-line help, for the top-level ``--help`` without importing any command
#: module (startup stays near a bare interpreter's); a test checks it against the modules.
SUMMARIES: dict[str, str] = {
    "check": "will an image merge on a host? (and why not)",
    "troubleshooting": "print the troubleshooting guide (docs/troubleshooting.md)",
    "keys": "signing keys",
    "sign": "fill the signature partition of a DDI built --unsigned (no other byte changes), or "
            "write NAME.roothash.p7s; the verity data is checked first and NAME.manifest.json "
            "updated",
    "inspect": "partitions, verity, signature and release of any image (exit 3 when verity, the "
               "partition UUIDs, the signature or the file system fail; an image is mounted "
               "only if verified and signed by --cert)",
    "doctor": "diagnose extensions on a host (or --root tree)",
    "explain": "explain systemd-sysext/confext messages: rule, field, fix",
    "install": "check, place, refresh and enable an extension image",
    "uninstall": "remove an installed extension (kept for rollback)",
    "rollback": "put back the version an install replaced",
    "lock": "resolve packages sources into RECIPE.lock",
    "fetch": "download every file the recipes need into a store",
    "plan": "what build will make and where it will merge, from the recipe and the package "
            "cache (no network, nothing written)",
    "verify": "rebuild from what a manifest records and compare byte for byte",
    "diff": "explain why two images or manifests differ",
    "publish": "add built images to a systemd-sysupdate feed directory (versioned names, "
               "SHA256SUMS + OpenPGP signature, transfer files, index.json)",
    "sign-feed": "sign a feed's SHA256SUMS (publish --unsigned): with a key, or a detached "
                 "signature made elsewhere, checked first",
}


def parser(command: str | None = None, *, summaries: bool = False) -> argparse.ArgumentParser:
    """The full parser; with ``command``, only that command's module is imported (others
    stay unregistered, which only --help would notice). ``summaries``: no command module at
    all, every command only named with its :data:`SUMMARIES` line (top-level --help,
    --version)."""
    top = clikit.ArgumentParser(
        prog="sysext-pipeline", formatter_class=clikit.Formatter,
        epilog=grouped_commands({"build": BUILD_HELP, "recipe-reference": REFERENCE_HELP,
                                 **SUMMARIES}) + "\n\n" + epilog()
        + "\n\nRun `sysext-pipeline COMMAND --help` for a command's options.",
        description="Build reproducible systemd-sysext/confext images from RPM and DEB packages.")
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    top.add_argument("--debug", action="store_true", help=clikit.HELP["debug"])
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND",
                             help=argparse.SUPPRESS)
    top.usage = "%(prog)s [-h] [--version] [--debug] COMMAND ..."  # after: commands' prog

    p = sub.add_parser("build", help=BUILD_HELP)
    p.add_argument("recipe", help="recipe file (TOML), see docs/recipes.md")
    p.add_argument("-o", "--output-dir", default="out", help="where the image and manifest go "
                   "(default: ./out; checked before anything is fetched)")
    clikit.add_json(p)
    clikit.add_cache_dir(p)
    p.add_argument("--offline", action="store_true", help="use only the cache/store, never the "
                   "network (a missing file is an error naming the package)")
    p.add_argument("--unsigned", action="store_true", help="ignore [sign]: a DDI gets an empty "
                   "signature partition and NAME.roothash for `sysext-pipeline sign` elsewhere")
    clikit.add_quiet(p)
    p.add_argument("--force", action="store_true", help="rebuild even when the output is up to "
                   "date (the manifest's input digest and image sha256 match)")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("recipe-reference", help=REFERENCE_HELP)
    p.set_defaults(func=cmd_recipe_reference)

    if summaries:
        for name, summary in SUMMARIES.items():
            sub.add_parser(name, help=summary)
        return _finish(sub, top)

    import importlib

    wanted = {COMMANDS[command]} if command in COMMANDS else \
        set() if command in ("build", "recipe-reference") else set(COMMANDS.values())
    for name in sorted(wanted):
        importlib.import_module(f"pipeline.{name}").register(sub)
    return _finish(sub, top)


def _finish(sub, top) -> argparse.ArgumentParser:
    """What every command shares, added once here: --debug (also accepted before the command),
    the exit-code epilog and the help formatter."""
    for name, p in sub.choices.items():
        _share(p, name)
    return top


def _share(p, name: str) -> None:
    p.formatter_class = clikit.Formatter
    p.epilog = epilog(name)
    if "--debug" not in p._option_string_actions:
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help=clikit.HELP["debug"])
    for action in p._actions:  # nested commands (keys generate)
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _share(child, name)


BUILD_HELP = "build the image a recipe describes"
REFERENCE_HELP = "print the recipe reference (docs/recipes.md)"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that cleanup (finally blocks, killing a running
    mksquashfs) happens as for Ctrl-C."""


def _terminate(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    argv = clikit.normalise_argv(list(sys.argv[1:] if argv is None else argv))
    mode = clikit.json_requested(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        args = parser(command, summaries=command is None).parse_args(argv)
    except clikit.Usage as exc:
        exc.parser.print_usage(sys.stderr)
        print(f"{exc.parser.prog}: error: {exc.message}", file=sys.stderr)
        if mode:
            clikit.failure({"message": exc.message, "subject": exc.parser.prog, "field": None,
                            "hint": f"see `{exc.parser.prog} --help`"}, INPUT, mode)
        return INPUT
    except ModuleNotFoundError as exc:
        return _missing_module(exc, mode)
    signal.signal(signal.SIGTERM, _terminate)
    mode = getattr(args, "json", None)
    try:
        return args.func(args)
    except PipelineError as exc:
        if args.debug:
            raise
        print(f"{clikit.label('error')} {exc.line()}", file=sys.stderr)
        if mode:
            clikit.failure(exc.as_json(), exc.exit_code, mode)
        return exc.exit_code
    except BrokenPipeError:  # `… | head`: the reader has gone; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except ModuleNotFoundError as exc:
        if args.debug:
            raise
        return _missing_module(exc, mode)
    except OSError as exc:  # the disk, permissions, a path that is not a directory, …
        if args.debug:
            raise
        where = exc.filename or "system"
        print(f"{clikit.label('error')} {where}: {exc.strerror or exc}", file=sys.stderr)
        if mode:
            clikit.failure({"message": exc.strerror or str(exc), "subject": str(where),
                            "field": None, "hint": None}, RETRY, mode)
        return RETRY
    except KeyboardInterrupt as exc:
        text = "terminated" if isinstance(exc, Terminated) else "interrupted"
        code = 143 if isinstance(exc, Terminated) else 130
        print(f"{clikit.label('error')} {text}", file=sys.stderr)
        if mode:
            clikit.failure({"message": text, "subject": None, "field": None, "hint": None},
                           code, mode)
        return code


def _missing_module(exc: ModuleNotFoundError, mode: str | None) -> int:
    """A third-party module that is not installed (outside the venv): one line naming it."""
    name = (exc.name or "").partition(".")[0]
    if not name or name == "pipeline":
        raise exc
    hint = ("install the project's dependencies: `pip install .` (or `pipx install .`), or run "
            "from the venv `python3 noxfile.py -s build` makes (. .nox/build/bin/activate)")
    print(f"{clikit.label('error')} the Python module {name!r} is not installed ({hint})",
          file=sys.stderr)
    if mode:
        clikit.failure({"message": f"the Python module {name!r} is not installed",
                        "subject": name, "field": None, "hint": hint}, INPUT, mode)
    return INPUT
