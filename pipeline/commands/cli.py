"""Command line: ``sysext-pipeline COMMAND …`` (also ``python -m pipeline``).

Exit codes: the classes of :mod:`pipeline.errors` (0 ok, 1 may be transient: retry, 2 the input
is wrong: fix it, 3 verdict: no). Errors print one line, ``error: <where>: <what> (<hint>)``;
``--debug`` adds the traceback; with ``--json`` every outcome is one JSON object on stdout
(:mod:`pipeline.commands.clikit`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from .. import __version__
from ..errors import EXIT_CLASSES, EXIT_TEXT, INPUT, RETRY, PipelineError
from . import clikit

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
    "lock": "with --check: a re-lock would move a package, or the lock is stale",
}

#: The top-level --help lists the commands in these groups (any other command under "More").
GROUPS = {
    "Build": ("plan", "build", "matrix", "lock", "fetch", "cache"),
    "Trust": ("keys", "sign", "inspect"),
    "Reproduce": ("verify", "diff"),
    "Host": ("check", "install", "uninstall", "rollback", "doctor", "explain"),
    "Publish": ("publish", "sign-feed"),
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


#: Command → the module that registers it (``register(subparsers)`` adding parsers whose
#: ``func(args) -> int`` does the work), so each command's code lives beside its logic and a
#: build does not pay for importing the host-side or diff machinery. A test checks this table
#: against what the modules register.
COMMANDS: dict[str, str] = {
    "build": "build", "recipe-reference": "build",
    "keys": "trust", "sign": "trust", "inspect": "trust", "plan": "plan",
    "check": "check", "troubleshooting": "check", "install": "install",
    "uninstall": "install", "rollback": "install", "doctor": "doctor",
    "lock": "lock", "fetch": "lock", "verify": "verify", "diff": "verify",
    "explain": "explain", "publish": "publish", "sign-feed": "publish", "cache": "cache",
    "matrix": "matrix",
}


#: Each command's one-line help, for the top-level ``--help`` without importing any command
#: module (startup stays near a bare interpreter's); a test checks it against the modules.
SUMMARIES: dict[str, str] = {
    "build": "build the image a recipe describes (several recipes: a catalogue, -j at once)",
    "matrix": "recipes x architectures as the job list of a CI matrix (GitHub, GitLab)",
    "recipe-reference": "print the recipe reference (docs/recipes.md)",
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
    "cache": "list the package cache, or prune what no recipe needs (cache list, cache prune "
             "--keep-locked RECIPE…)",
    "plan": "what build will make and where it will merge, from the recipe and the package "
            "cache (no network; writes nothing but file lists into the cache)",
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
        epilog=grouped_commands(SUMMARIES) + "\n\n" + epilog()
        + "\n\nRun `sysext-pipeline COMMAND --help` for a command's options.",
        description="Build reproducible systemd-sysext/confext images from RPM and DEB packages.")
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    top.add_argument("--debug", action="store_true", help=clikit.HELP["debug"])
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND",
                             help=argparse.SUPPRESS)
    top.usage = "%(prog)s [-h] [--version] [--debug] COMMAND ..."  # after: commands' prog

    if summaries:
        for name, summary in SUMMARIES.items():
            sub.add_parser(name, help=summary)
        return _finish(sub, top)

    import importlib

    wanted = {COMMANDS[command]} if command in COMMANDS else set(COMMANDS.values())
    for name in sorted(wanted):
        importlib.import_module(f"pipeline.commands.{name}").register(sub)
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
        if "timeout" in vars(args):  # a command that may download: --timeout checked first
            clikit.apply_timeout(args)
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
