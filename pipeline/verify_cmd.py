"""``verify`` and ``diff`` subcommands (logic in verify.py, diff.py, vary.py)."""

from __future__ import annotations

import json
import sys

EPILOG = ("exit codes: 0 reproduced/identical (and every image is what its manifest, verity "
          "tree and signature say), 1 differs, does not verify or was not fully checked (or a "
          "build failed), 2 bad input")


def _human(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_verify(args) -> int:
    from . import verify as verify_mod
    from .build import Log

    log = Log(None if args.quiet or args.json else _human)
    result = verify_mod.verify(args.target, recipe=args.recipe, cache_dir=args.cache_dir,
                               offline=args.offline, keep=args.keep, limit=args.limit,
                               work_dir=args.work_dir, vary=args.vary, log=log,
                               cert=args.cert, no_signature=args.no_signature)
    if args.json:
        print(verify_mod.dumps(result))
    else:
        for line in verify_mod.human_lines(result):
            print(line)
    return 0 if result.ok else 1


def cmd_diff(args) -> int:
    from . import diff as diff_mod

    report = diff_mod.diff(args.a, args.b, limit=args.limit, full=args.full,
                           use_manifests=not args.images_only)
    if args.json:
        print(json.dumps(report.to_json(), indent=2, sort_keys=True))
    else:
        print(f"A: {report.a}\nB: {report.b}")
        for line in report.lines(verbose=args.full):
            print(line)
    return 0 if report.ok else 1


def register(sub) -> None:
    from .vary import NAMES

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
                    "signature could not be checked; exit 1 unless --no-signature) or 'differs' "
                    "(exit 1) with diff's explanation; an image that is not what its own "
                    "manifest describes differs.")
    p.add_argument("target", help="NAME.manifest.json, or the image NAME.raw / directory NAME "
                   "(its manifest must be next to it)")
    p.add_argument("--recipe", help="the recipe (default: found by its recorded sha256)")
    p.add_argument("--cache-dir", help="package cache (default: $SYSEXT_PIPELINE_CACHE or "
                   "$XDG_CACHE_HOME/sysext-pipeline)")
    p.add_argument("--offline", action="store_true", help="use only the cache, never the network")
    p.add_argument("--cert", metavar="FILE",
                   help="check the signature with this certificate (default: the certificate "
                   "the signature carries, pinned by the fingerprint the manifest records)")
    p.add_argument("--no-signature", action="store_true",
                   help="do not check the signature (said in the output); without it, a "
                   "signature that cannot be checked makes verify exit 1")
    p.add_argument("--vary", action="append", metavar="LIST",
                   help=f"also rebuild under varied environments: all, or any of "
                   f"{', '.join(NAMES)} (comma-separated, repeatable)")
    p.add_argument("--keep", action="store_true", help="keep the rebuild's directory")
    p.add_argument("--work-dir", help="where the temporary rebuild directory goes (default: "
                   "$TMPDIR)")
    p.add_argument("--limit", type=int, default=10, help="paths shown per kind of difference")
    p.add_argument("--json", action="store_true", help="machine-readable result on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
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
    p.add_argument("--limit", type=int, default=10, help="paths shown per kind of difference")
    p.add_argument("--json", action="store_true", help="machine-readable result on stdout")
    p.set_defaults(func=cmd_diff)
