"""What every command shares, declared once: the common options (``--json``, ``--cache-dir``,
``--root``, ``--systemd``, ``-q``, ``--debug``) and the JSON contract.

JSON contract (schema :data:`SCHEMA`, one JSON Schema per command in docs/schemas/): with
``--json`` a command prints exactly ONE object on stdout, success or not::

    {"schema": 2, "ok": true, ..., "exit": 0}
    {"schema": 2, "ok": false, "error": {"message", "subject", "field", "hint"}, "exit": 2}

``exit`` is the process's exit status (the classes of :mod:`pipeline.errors`); a verdict
(exit 3) carries its report *and* ``error``. Keys are snake_case. ``--json=pretty`` (bare
``--json``) indents, ``--json=short`` is one line, ``--json=off`` is the human output, as
systemd's tools take it. Imports nothing heavy: the parser is built from this.
"""

from __future__ import annotations

import argparse
import re
import sys

SCHEMA = 2
JSON_MODES = ("pretty", "short", "off")

HELP = {
    "json": "print one JSON object on stdout, on success and on failure (MODE: pretty, short "
            "or off; bare --json is pretty); its schema is in docs/schemas/",
    "cache_dir": "package cache or offline store (default: $SYSEXT_PIPELINE_CACHE or "
                 "$XDG_CACHE_HOME/sysext-pipeline)",
    "root": "work on this OS tree instead of the running host",
    "systemd": "systemd version to model: 254.5 is that point release, 254 the newest 254.x "
               "(default: the one installed in the host or --root, where a version without a "
               "point, e.g. 254-1, is 254.0)",
    "os_release": "use this os-release file for the host (default: the host's or --root's "
                  "etc/os-release, else usr/lib/os-release)",
    "arch": "host architecture in systemd's spelling: x86-64, arm64, ... (default: the "
            "running machine's)",
    "initrd": "judge as systemd does in the initrd (scope 'initrd')",
    "offline": "use only the cache/store, never the network (a missing file is an error "
               "naming the package)",
    "limit": "paths shown per kind of difference (default: 10)",
    "gnupghome": "GnuPG home with the release OpenPGP key (`sysext-pipeline keys generate "
                 "--openpgp DIR` makes one)",
    "gpg_key": "which key of it (fingerprint; default: its only one)",
    "timeout": "how long a mirror may stay silent before a try fails and is retried (default: "
               "$SYSEXT_PIPELINE_TIMEOUT, else 60)",
    "quiet": "no progress lines on stderr",
    "debug": "show tracebacks on errors",
    "no_refresh": "do not run `systemd-sysext/-confext refresh` afterwards",
    "refresh": "with --root: refresh the tree now (in this mount namespace)",
}


def json_mode(value: str) -> str | None:
    if value not in JSON_MODES:
        raise argparse.ArgumentTypeError(f"invalid mode {value!r} (choose from "
                                         f"{', '.join(JSON_MODES)})")
    return None if value == "off" else value


def add_json(p) -> None:
    p.add_argument("--json", nargs="?", const="pretty", default=None, type=json_mode,
                   metavar="MODE", help=HELP["json"])


def add_quiet(p) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help=HELP["quiet"])


def add_cache_dir(p, *, required: bool = False, help: str | None = None) -> None:
    p.add_argument("--cache-dir", "--store", dest="cache_dir", metavar="DIR", required=required,
                   help=help or HELP["cache_dir"])


def add_root(p, help: str | None = None) -> None:
    p.add_argument("--root", metavar="DIR", help=help or HELP["root"])


def add_systemd(p) -> None:
    p.add_argument("--systemd", metavar="VERSION", help=HELP["systemd"])


def add_host(p) -> None:
    """The host to judge against: ``--root``, ``--os-release``, ``--arch``, ``--systemd``,
    ``--initrd`` (check, doctor, explain)."""
    add_root(p)
    p.add_argument("--os-release", metavar="FILE", help=HELP["os_release"])
    p.add_argument("--arch", metavar="ARCH", help=HELP["arch"])
    add_systemd(p)
    p.add_argument("--initrd", action="store_true", default=None, help=HELP["initrd"])


KINDS = ("sysext", "confext")


def add_kind(p, help: str) -> None:
    """``--kind sysext|confext``; what it means differs per command (``help``)."""
    p.add_argument("--kind", choices=KINDS, help=help)


def add_offline(p) -> None:
    p.add_argument("--offline", action="store_true", help=HELP["offline"])


def add_timeout(p) -> None:
    """``--timeout SECONDS``: the network wait of every command that may download (build,
    verify, lock, fetch, install --feed); :func:`apply_timeout` sets it before the command runs."""
    p.add_argument("--timeout", type=float, metavar="SECONDS", help=HELP["timeout"])


def apply_timeout(args) -> None:
    """Before any work (cli.main, for a command that declares ``--timeout``): a bad
    ``--timeout`` or $SYSEXT_PIPELINE_TIMEOUT is an error now, not after the first download
    (a catalogue passes ``--timeout`` on to each build it starts)."""
    from ..sources import fetch

    fetch.set_timeout(args.timeout)
    fetch.timeout()  # raises InputError naming --timeout or the variable


def add_limit(p) -> None:
    p.add_argument("--limit", type=int, default=10, metavar="N", help=HELP["limit"])


def add_gnupg(p) -> None:
    """``--gnupghome`` and ``--key``: the OpenPGP key a feed is signed with (publish,
    sign-feed)."""
    from pathlib import Path

    p.add_argument("--gnupghome", type=Path, metavar="DIR", help=HELP["gnupghome"])
    p.add_argument("--key", metavar="FINGERPRINT", help=HELP["gpg_key"])


def add_refresh(p) -> None:
    p.add_argument("--no-refresh", action="store_true", help=HELP["no_refresh"])
    p.add_argument("--refresh", action="store_true", help=HELP["refresh"])


def image_features(path) -> set[str]:
    """What kind of image ``path`` is, for the tools table (pipeline/tools.py): ``squashfs``,
    ``erofs``, ``ddi`` (a GPT disk image), or nothing (a directory, a file it cannot tell)."""
    from pathlib import Path

    from ..image.fsinfo.ondisk import sniff

    path = Path(path)
    if not path.is_file():
        return set()
    try:
        found = sniff(path)
        if found:
            return {found}
        with open(path, "rb") as fh:
            fh.seek(512)
            return {"ddi"} if fh.read(8) == b"EFI PART" else set()
    except OSError:
        return set()  # the command's own reading names the problem


def preflight(verb: str, images=(), features=()) -> None:
    """Before any work: the tools ``verb`` needs for these images (and ``features``) are
    installed and new enough, else one error line (pipeline/tools.py :func:`preflight`)."""
    from .. import tools

    wanted = set(features)
    for image in images:
        wanted |= image_features(image)
    tools.preflight(verb, wanted)


def source_features(sources=(), repositories=(), *, offline: bool = False) -> set[str]:
    """What of a recipe's inputs needs a tool (pipeline/tools.py): ``apt`` (an ``apt =``
    source, downloaded by apt-get; not when ``offline``), ``signed`` (a ``[[repository]]``
    with a keyring, whose Release/repomd.xml gpgv checks)."""
    features = set()
    if not offline and any(s.kind == "apt" for s in sources):
        features.add("apt")
    if any(r.keyring for r in repositories):
        features.add("signed")
    return features


def dumps(obj, mode: str | None) -> str:
    import json

    if mode == "short":
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False)


def emit(args, body: dict, exit: int = 0, error: dict | None = None) -> int:
    """Print ``body`` as the command's --json result (with schema, ok, exit and, when not ok,
    error) and return ``exit``."""
    out = {**body, "schema": SCHEMA, "ok": exit == 0, "exit": exit}
    if exit:
        out["error"] = error or {"message": "failed", "subject": None, "field": None,
                                 "hint": None}
    print(dumps(out, getattr(args, "json", None) or "pretty"), flush=True)
    return exit


def failure(error: dict, exit: int, mode: str | None) -> None:
    print(dumps({"schema": SCHEMA, "ok": False, "error": error, "exit": exit}, mode),
          flush=True)


def json_requested(argv: list[str]) -> str | None:
    """The --json mode the command line asks for, read before (or without) parsing it."""
    mode = None
    for arg in argv:
        if arg == "--":
            break
        if arg == "--json":
            mode = "pretty"
        elif arg.startswith("--json="):
            value = arg.partition("=")[2]
            mode = None if value == "off" else value if value in JSON_MODES else "pretty"
    return mode


def normalise_argv(argv: list[str]) -> list[str]:
    """Bare ``--json`` → ``--json=pretty`` (so that ``--json RECIPE`` does not take the recipe
    as its mode); ``--debug`` moved to the front (accepted anywhere)."""
    out: list[str] = []
    rest: list[str] = []
    for index, arg in enumerate(argv):
        if arg == "--":
            rest = argv[index:]
            break
        out.append("--json=pretty" if arg == "--json" else arg)
    if "--debug" in out:
        out = ["--debug", *(a for a in out if a != "--debug")]
    return out + rest


class Formatter(argparse.HelpFormatter):
    """Wraps each line of a description or epilog on its own: explicit line breaks stay."""

    def _fill_text(self, text, width, indent):
        import textwrap

        lines = []
        for line in text.splitlines():
            if not line.strip():
                lines.append("")
                continue
            lead = line[:len(line) - len(line.lstrip())]
            column = re.match(r"\s+\S+\s{2,}", line)  # "  name    text": wrap under text
            lines.append(textwrap.fill(line.strip(), width, initial_indent=indent + lead,
                                       subsequent_indent=indent + " " * (
                                           column.end() if column else len(lead) + 4)))
        return "\n".join(lines)


class Usage(Exception):
    """A command line argparse refuses (exit 2), raised instead of argparse's exit so that
    --json can print its object."""

    def __init__(self, parser, message: str):
        self.parser = parser
        self.message = message
        super().__init__(message)


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        raise Usage(self, message)


#: SGR colours of the prefixes a person should not miss (issue 16 §8)
COLOURS = {"error": "1;31", "severe": "1;35", "warning": "1;33"}


def label(word: str, stream=None) -> str:
    """``word:`` coloured when ``stream`` (stderr) is a terminal, NO_COLOR is unset or empty
    (no-color.org) and TERM is not dumb."""
    return paint(word, f"{word}:", stream or sys.stderr)


def paint(word: str, text: str, stream=None) -> str:
    """``text`` in the colour of ``word`` (error, severe, warning) under :func:`label`'s
    conditions, for ``stream`` (default stderr); any other word: ``text`` as it is."""
    import os

    stream = stream or sys.stderr
    if word not in COLOURS or os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return text
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        return text
    return f"\033[{COLOURS[word]}m{text}\033[0m" if tty else text


def count(n: int, word: str, plural: str | None = None) -> str:
    """``1 file``, ``2 files`` (issue 16 §8: no "1 files")."""
    return f"{n} {word if n == 1 else plural or word + 's'}"


def human(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
