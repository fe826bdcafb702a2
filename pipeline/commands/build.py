"""``build`` (one recipe into images + manifests) and ``recipe-reference`` (the recipe docs).

The stage runner is :mod:`pipeline.stages.build`; this module only checks what can be checked
before anything is fetched (:func:`preflight`), runs it and prints.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from . import clikit
from .cli import SUMMARIES


def register(sub) -> None:
    p = sub.add_parser("build", help=SUMMARIES["build"])
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

    p = sub.add_parser("recipe-reference", help=SUMMARIES["recipe-reference"])
    p.set_defaults(func=cmd_recipe_reference)


def _human(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_build(args) -> int:
    from .. import recipe as recipe_mod
    from ..errors import InputError
    from ..sources.fetch import Cache, default_cache_dir, describe_progress
    from ..stages.build import Log, build

    recipe = recipe_mod.load(args.recipe)
    preflight(Path(args.output_dir))
    from .. import tools  # a missing or too-old tool: one line before anything is fetched

    tools.preflight("build", tools.build_features(recipe.format, recipe.filesystem,
                                                  recipe.verity))
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
