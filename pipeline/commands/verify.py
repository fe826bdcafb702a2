"""``verify`` and ``diff`` subcommands (logic in verify.py, diff.py, vary.py)."""

from __future__ import annotations

import sys

from ..errors import VERDICT
from . import clikit

EPILOG = None  # the exit codes: pipeline/commands/cli.py adds them to every command


def _human(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_verify(args) -> int:
    from ..reproduce import verify as verify_mod
    from ..stages.build import Log

    clikit.preflight("verify", [args.target])
    log = Log(None if args.quiet or args.json else _human)
    result = verify_mod.verify(args.target, recipe=args.recipe, cache_dir=args.cache_dir,
                               offline=args.offline, keep=args.keep, limit=args.limit,
                               work_dir=args.work_dir, vary=args.vary, log=log,
                               cert=args.cert, no_signature=args.no_signature)
    code = 0 if result.ok else VERDICT
    if args.json:
        body = result.to_json()
        return clikit.emit(args, body, code, {
            "message": body["status"], "subject": str(args.target),
            "field": None, "hint": None})
    for line in verify_mod.human_lines(result):
        print(line)
    return code


def cmd_diff(args) -> int:
    from ..reproduce import diff as diff_mod

    clikit.preflight("diff", [args.a, args.b])
    report = diff_mod.diff(args.a, args.b, limit=args.limit, full=args.full,
                           use_manifests=not args.images_only)
    code = 0 if report.ok else VERDICT
    if args.json:
        return clikit.emit(args, report.to_json(), code, {
            "message": "the two differ", "subject": f"{args.a} {args.b}", "field": None,
            "hint": None})
    print(f"A: {report.a}\nB: {report.b}")
    for line in report.lines(verbose=args.full):
        print(line)
    return code


def register(sub) -> None:
    from ..reproduce.vary import NAMES

    p = sub.add_parser(
        "verify", epilog=EPILOG,
        help="rebuild from what a manifest records and compare byte for byte",
        description="Rebuild NAME from its recipe (--recipe, or the file with the recorded "
                    "sha256 next to the manifest, in ./recipes or the current directory) and the "
                    "recorded package files (from the cache, by sha256) in a fresh temporary "
                    "directory, then compare with the image (or the manifest's hashes when the "
                    "image is absent). The rebuild is unsigned, so no private key is needed: "
                    "the unsigned bytes are compared and the original's signature is checked "
                    "with the certificate it carries, pinned by the fingerprint the manifest "
                    "records (or --cert). Prints 'reproduced' (exit 0), 'incomplete' (the "
                    "signature could not be checked; exit 3 unless --no-signature) or 'differs' "
                    "(exit 3) with diff's explanation; an image that is not what its own "
                    "manifest describes differs.")
    p.add_argument("target", help="NAME.manifest.json, or the image NAME.raw / directory NAME "
                   "(its manifest must be next to it)")
    p.add_argument("--recipe", help="the recipe (default: found by its recorded sha256)")
    clikit.add_cache_dir(p)
    clikit.add_offline(p)
    clikit.add_timeout(p)
    p.add_argument("--cert", metavar="FILE",
                   help="check the signature with this certificate (default: the certificate "
                   "the signature carries, pinned by the fingerprint the manifest records)")
    p.add_argument("--no-signature", action="store_true",
                   help="do not check the signature (said in the output); without it, a "
                   "signature that cannot be checked makes verify exit 3")
    p.add_argument("--vary", action="append", metavar="LIST",
                   help=f"also rebuild under varied environments: all, or any of "
                   f"{', '.join(NAMES)} (comma-separated, repeatable; as reprotest: +NAME "
                   "adds, -NAME removes, e.g. --vary=all,-user)")
    p.add_argument("--keep", action="store_true", help="keep the rebuild's directory")
    p.add_argument("--work-dir", help="where the temporary rebuild directory goes (default: "
                   "$TMPDIR)")
    clikit.add_limit(p)
    clikit.add_json(p)
    clikit.add_quiet(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "diff", epilog=EPILOG, help="explain why two images or manifests differ",
        description="Compare two builds top-down — manifests (inputs, tools, epoch, recipe), "
                    "container (GPT, partitions, verity, signature), file system superblock, "
                    "file tree — and stop at the first level that explains the difference. "
                    "Each side is an image (NAME.raw or a directory; NAME.manifest.json next to "
                    "it is used) or a manifest alone.")
    p.add_argument("a", help="image or manifest")
    p.add_argument("b", help="image or manifest")
    p.add_argument("--full", action="store_true", help="go on through every level")
    p.add_argument("--images-only", action="store_true",
                   help="ignore manifests next to the images")
    clikit.add_limit(p)
    clikit.add_json(p)
    p.set_defaults(func=cmd_diff)
