"""Command line: ``sysext-pipeline COMMAND …`` (also ``python -m pipeline``).

Exit codes: 0 success, 1 build failure (a tool, the network), 2 bad input (recipe, archive,
hash, usage). Errors print one line, ``error: <where>: <what> (<hint>)``; ``--debug`` adds the
traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from . import __version__
from .errors import PipelineError

EPILOG = "exit codes: 0 ok, 1 build failure, 2 bad input (recipe, archive, hash, usage)"


def _human(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_build(args) -> int:
    from . import recipe as recipe_mod
    from .build import Log, build
    from .fetch import Cache, default_cache_dir, describe_progress

    recipe = recipe_mod.load(args.recipe)
    cache = Cache(default_cache_dir(args.cache_dir))
    result = build(recipe, Path(args.output_dir), cache, offline=args.offline,
                   unsigned=args.unsigned, force=args.force,
                   log=Log(None if args.quiet else _human,
                           tty=sys.stderr if sys.stderr.isatty() else None),
                   progress=describe_progress())
    for finding in result.findings:
        _human(f"{finding.severity}: {finding.line()}")
    for warning in result.warnings:
        _human(f"warning: {warning}")
    if args.json:
        print(json.dumps(build_summary(result), indent=2, sort_keys=True))
    elif result.up_to_date:
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
            "dropped": len(result.images[0].manifest["dropped"]) if result.images else 0,
            "timings": result.timings, "up_to_date": result.up_to_date}


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
    "inspect": "partitions, verity, signature and release of any image (exit 1 when verity, the "
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
    top = argparse.ArgumentParser(
        prog="sysext-pipeline", epilog=EPILOG,
        description="Build reproducible systemd-sysext/confext images from RPM and DEB packages.")
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    top.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("build", help="build the image a recipe describes", epilog=EPILOG)
    p.add_argument("recipe", help="recipe file (TOML), see docs/recipes.md")
    p.add_argument("-o", "--output-dir", default="out", help="where the image and manifest go "
                   "(default: ./out)")
    p.add_argument("--json", action="store_true", help="print a machine-readable result on stdout")
    p.add_argument("--cache-dir", "--store", dest="cache_dir", help="package cache or offline "
                   "store (default: $SYSEXT_PIPELINE_CACHE or $XDG_CACHE_HOME/sysext-pipeline)")
    p.add_argument("--offline", action="store_true", help="use only the cache/store, never the "
                   "network (a missing file is an error naming the package)")
    p.add_argument("--unsigned", action="store_true", help="ignore [sign]: a DDI gets an empty "
                   "signature partition and NAME.roothash for `sysext-pipeline sign` elsewhere")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--force", action="store_true", help="rebuild even when the output is up to "
                   "date (the manifest's input digest and image sha256 match)")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("recipe-reference", help="print the recipe reference (docs/recipes.md)")
    p.set_defaults(func=cmd_recipe_reference)

    if summaries:
        for name, summary in SUMMARIES.items():
            sub.add_parser(name, help=summary)
        return top

    import importlib

    wanted = {COMMANDS[command]} if command in COMMANDS else \
        set() if command in ("build", "recipe-reference") else set(COMMANDS.values())
    for name in sorted(wanted):
        importlib.import_module(f"pipeline.{name}").register(sub)
    return top


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that cleanup (finally blocks, killing a running
    mksquashfs) happens as for Ctrl-C."""


def _terminate(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:  # accepted anywhere, not only before the command
        argv = ["--debug", *(a for a in argv if a != "--debug")]
    command = next((a for a in argv if not a.startswith("-")), None)
    args = parser(command, summaries=command is None).parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.func(args)
    except PipelineError as exc:
        if args.debug:
            raise
        print(f"error: {exc.line()}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `… | head`: the reader has gone; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:  # the disk, permissions, a path that is not a directory, …
        if args.debug:
            raise
        where = exc.filename or "system"
        print(f"error: {where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print("error: terminated" if isinstance(exc, Terminated) else "error: interrupted",
              file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
