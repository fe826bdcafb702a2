"""``explain``: systemd-sysext/confext log lines → rule, field, versions, effect and fix.

``explain TEXT…``, ``explain --file LOG`` (``-``: stdin). With ``--root DIR`` (and images) the
diagnosis is checked against the files, as ``check`` judges them, and a disagreement is said.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from ..errors import InputError, PipelineError
from ..systemd import explain, rules

#: Bounds for --file / stdin: systemd's debug output of a refresh is a few thousand lines.
MAX_BYTES = 64 * 1024 * 1024
MAX_LINES = 200_000
_CHUNK = 64 * 1024


def read_lines(source: str) -> list[str]:
    """The lines of ``source`` (a file, or '-' for stdin), bounded."""
    stream = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace") \
        if source == "-" and hasattr(sys.stdin, "buffer") else sys.stdin if source == "-" else None
    where = "stdin" if source == "-" else source
    try:
        if stream is None:
            if not os.path.isfile(source):
                raise InputError(source, "no such file (--file takes a log file or '-')")
            stream = open(source, encoding="utf-8", errors="replace")
        lines: list[str] = []
        size = 0
        with stream if source != "-" else _nullcontext(stream):
            while True:
                chunk = stream.readline(_CHUNK)  # never a whole newline-free gigabyte
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_BYTES or len(lines) > MAX_LINES:
                    raise InputError(where, f"more than {MAX_LINES} lines or "
                                     f"{MAX_BYTES // 2**20} MiB", "pass the systemd-sysext part")
                if lines and not lines[-1].endswith("\n"):  # the rest of a long line
                    if len(lines[-1]) <= explain.MAX_LINE:
                        lines[-1] += chunk
                    elif chunk.endswith("\n"):  # the long line ends here; its middle is dropped
                        lines[-1] += "\n"
                    continue
                lines.append(chunk)
    except UnicodeDecodeError as exc:  # stdin in a strict locale
        raise InputError(where, f"not text: {exc.reason}") from None
    return lines


class _nullcontext:
    def __init__(self, value):
        self.value = value

    def __enter__(self):
        return self.value

    def __exit__(self, *exc):
        return False


# ---- checking a diagnosis against the files ----------------------------------------------------

def confirm(result: dict, host, kind: str | None, images: list[Path]) -> list[dict]:
    """Compare what the lines say with what ``check`` finds in the files (sets ``files_rule``
    and ``agrees`` on the lines); returns one entry per image looked at."""
    from ..host import facts as hostmod
    from . import check as check_cmd

    kinds = [kind] if kind else ["sysext", "confext"]
    given: dict[str, Path] = {}
    for path in images:
        for k in kinds:
            name = rules.discovered_name(path.name, path.is_dir(), k, host.version)
            if path.is_dir() and path.name.endswith(".v") and \
                    rules.reads_v_directories(host.version):
                name = rules.v_directory_image_name(path.name)
            if name:
                given.setdefault(name, path)
    cache: dict = {}
    verdicts: dict[str, tuple[Path | None, rules.Verdict | None, str]] = {}

    def judge(name: str, line_kind: str | None):
        if name in verdicts:
            return verdicts[name]
        path, use_kind = given.get(name), line_kind or kind
        if path is None:
            for k in ([line_kind] if line_kind else kinds):
                if not rules.ships_tool(k, host.version):
                    continue
                entries = [e for e in hostmod.installed(host, k, include_unsearched=False)
                           if e.name == name and e.shadowed_by is None]
                if entries:
                    path, use_kind = entries[0].path, k
                    break
        if path is None:
            verdicts[name] = (None, None, "no image of that name in the search directories")
            return verdicts[name]
        try:
            verdict = check_cmd.check_one(path, host, use_kind, cache).verdict
        except PipelineError as exc:
            verdicts[name] = (path, None, f"cannot read it: {exc.line()}")
            return verdicts[name]
        verdicts[name] = (path, verdict, "")
        return verdicts[name]

    for line in result["lines"]:
        if line.status != "rule":
            continue
        if line.rules == ["host.no-id"] or "host.no-id" in line.rules:
            has_id = bool(host.os_release.fields.get("ID"))
            line.files_rule = None if has_id else "host.no-id"
            line.agrees = not has_id
            line.note = ("the host's os-release has no ID" if not has_id else
                         f"the host's os-release now has ID={host.os_release.fields['ID']}: "
                         "the log is older than the file")
            continue
        if not line.image:
            continue
        path, verdict, problem = judge(line.image, line.kind)
        if verdict is None:
            line.note = problem
            continue
        line.files_rule = verdict.rule.id
        noted = set(re.findall(r"by rule (\S+)", " ".join(verdict.notes)))
        line.agrees = verdict.rule.id in line.rules or bool(noted & set(line.rules)) or (
            verdict.rule.id == "merge.broken-by-other" and any(
                rules.RULES[r].verdict == rules.BREAKS for r in line.rules))
        where = host.host_path(path) if host.root else str(path)
        line.note = (f"{where}: check says {verdict.verdict} ({verdict.rule.id})" +
                     ("" if line.agrees else " — the message and the files disagree (a log "
                      "from before the image or the host changed, or another systemd version)"))

    out = []
    summary = result["images"]
    host_rules = {r for line in result["lines"] if line.status == "rule" and not line.image
                  for r in line.rules if r.startswith("host.")}
    for name, path in given.items():
        _, verdict, problem = judge(name, kind)
        entry = {"image": str(path), "name": name,
                 "files_rule": verdict.rule.id if verdict else None, "problem": problem}
        s = summary.get(name)
        if verdict is None:
            entry["agrees"] = None
        elif s is None or (not s.rules and not s.merged):
            silent = verdict.rule.id.startswith("discovery.") or explain.silent(
                verdict.rule.id, host.version) or verdict.rule.id in host_rules
            entry["agrees"] = silent
            entry["note"] = ("the lines never name it: systemd did not look at it, as check "
                             f"says ({verdict.rule.id})" if silent else
                             f"the lines never name it, but check says {verdict.verdict} "
                             f"({verdict.rule.id}): a log of another run, or not at debug level")
        elif s.merged:
            entry["agrees"] = verdict.verdict == rules.MERGES
        else:
            entry["agrees"] = verdict.rule.id in s.rules
        out.append(entry)
    return out


# ---- output --------------------------------------------------------------------------------

def human(result: dict, confirmed: list[dict] | None, verbose: bool) -> str:
    out = []
    unknown = 0
    for line in result["lines"]:
        if line.status == "blank":
            continue
        if line.status == "unknown":
            unknown += 1
            if verbose:
                out.append(f"{line.number}: unknown: {line.text}")
            continue
        out.append(f"{line.number}: {line.text}")
        if line.status == "outcome":
            out.append(f"   means: {line.meaning}")
            continue
        if line.status == "other-version":
            out.append(f"   {line.meaning} (source: {line.source})")
            continue
        about = f"image {line.image!r}" + (" (the image being mounted just before)"
                                           if line.image_from == "context" else "") \
            if line.image else "no image named"
        if all(rules.RULES[r].verdict == rules.MERGES for r in line.rules) and not verbose:
            out.append(f"   {about}: merges ({', '.join(line.rules)}; systemd "
                       f"{line.versions})" + (f"\n   files:  {line.note}" if line.note else ""))
            continue
        out.append(f"   {about}; printed by systemd {line.versions} ({line.source})")
        if len(line.rules) > 1:
            settled = result["images"].get(line.image or "")
            settled = settled.rules[0] if settled and len(settled.rules) == 1 and \
                settled.rules[0] in line.rules else None
            out.append(f"   one of {len(line.rules)} rules print this text" + (
                f" (with the image's other lines: {settled})" if settled else
                "" if line.files_rule else " (explain --root DIR tells which)") + ":")
        for rule_id in line.rules:
            info = explain.rule_info(rule_id, line)
            out.append(f"   rule:   {rule_id} — {info['summary']} (systemd {info['rule_versions']})")
            out.append(f"   field:  {info['field']}")
            out.append(f"   effect: {info['effect']}")
            out.append(f"   fix:    {info['fix']}")
        if line.note:
            out.append(f"   files:  {line.note}")
    if unknown:
        out.append(f"{unknown} line(s) unknown: not a message explain knows (never guessed)"
                   + ("" if verbose else "; --verbose lists them"))
    images = result["images"]
    if images:
        out.append("images:")
        for name, s in images.items():
            state = "merged" if s.merged else ("one of " + ", ".join(s.rules) if len(s.rules) > 1
                                               else s.rules[0] if s.rules else "not decided here")
            out.append(f"   {name}: {state}" + (" (its lines disagree)" if s.conflict else ""))
    out.append(f"merge: {result['merge']}")
    for entry in confirmed or []:
        verdict = "agrees" if entry.get("agrees") else "unknown" if entry.get("agrees") is None \
            else "DISAGREES"
        out.append(f"files: {entry['image']} ({entry['name']}): check says "
                   f"{entry['files_rule'] or entry['problem']}; the log {verdict}"
                   + (f" — {entry['note']}" if entry.get("note") else ""))
    return "\n".join(out)


def as_json(result: dict, confirmed: list[dict] | None, host=None) -> dict:
    lines = [line.as_dict() for line in result["lines"] if line.status != "blank"]
    return {"schema": 1, "lines": lines,
            "unknown": [line["line"] for line in lines if line["status"] == "unknown"],
            "images": [s.as_dict() for s in result["images"].values()],
            "merge": result["merge"], "files": confirmed,
            "host": host.as_dict() if host is not None else None}


# ---- doctor's hook -----------------------------------------------------------------------------

def journal_lines(limit: int = 200) -> list[str] | None:
    """The last systemd-sysext/confext journal lines of this boot (None: no journalctl)."""
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        return None
    argv = [journalctl, "--no-pager", "-q", "-b", "-o", "short", "-n", str(limit),
            "-t", "systemd-sysext", "-t", "systemd-confext"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False,
                              errors="replace")
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.splitlines()[-limit:]


def doctor_report(host) -> dict | None:
    """What doctor shows of the journal: explained lines (rules and outcomes only)."""
    lines = journal_lines()
    if lines is None:
        return None
    result = explain.explain_text(lines, host.version if host is not None else None)
    known = [line.as_dict() for line in result["lines"] if line.status in ("rule", "outcome")]
    return {"journal_lines": len(lines), "explained": known, "merge": result["merge"]}


def doctor_human(report: dict | None) -> list[str]:
    if report is None:
        return ["journal: not readable here (no journalctl, or no journal; explain a saved log with "
                "`sysext-pipeline explain --file LOG`)"]
    out = [f"journal: {report['journal_lines']} systemd-sysext/confext line(s) this boot; "
           f"merge: {report['merge']}"]
    for line in report["explained"]:
        rules_text = ", ".join(r["rule"] for r in line["rules"]) or line["meaning"]
        out.append(f"  {line['text']}\n    → {rules_text}")
    return out


# ---- the command -------------------------------------------------------------------------------

def _image_arg(arg: str, root: str | None) -> Path | None:
    if "\n" in arg or not arg or " " in arg.strip():
        return None
    candidates = [Path(root) / arg.lstrip("/")] if root and arg.startswith("/") else []
    for path in [*candidates, Path(arg)]:
        if os.path.lexists(path):
            return path
    return None


def cmd_explain(args) -> int:
    from .check import host_from_args

    lines: list[str] = []
    images: list[Path] = [_image_arg(p, args.root) or Path(p) for p in args.image or []]
    for arg in args.text:
        # explain --root DIR IMAGE… TEXT…: an argument naming an existing path is an image
        # (inside DIR first: /var/lib/extensions/foo.raw means the tree's)
        path = _image_arg(arg, args.root) if (args.root or images) else None
        if path is not None:
            images.append(path)
        else:
            lines.extend(arg.splitlines() or [""])
    if args.file:
        lines.extend(read_lines(args.file))
    if not lines:
        raise InputError("explain", "no lines to explain",
                         "give TEXT, --file LOG or --file - (stdin)")
    host = None
    version = None
    if args.root or images or args.systemd:
        host = host_from_args(args)
        version = host.version
    result = explain.explain_text(lines, version, args.kind)
    confirmed = confirm(result, host, args.kind, images) if host is not None and (
        args.root or images) else None
    if args.json:
        from . import clikit  # the shared envelope: schema, ok, exit

        return clikit.emit(args, as_json(result, confirmed, host))
    else:
        if host is not None:
            print(f"systemd {rules.format_version(version)} ({host.version_source})"
                  + (f", root {host.root}" if host.root else ""))
        print(human(result, confirmed, args.verbose))
    return 0


def register(sub) -> None:
    from .check import add_host_arguments

    p = sub.add_parser(
        "explain", help="explain systemd-sysext/confext messages: rule, field, fix",
        description="Explain lines as systemd-sysext/systemd-confext print them (plain, "
                    "status, list, journal, SYSTEMD_LOG_LEVEL=debug): the rule, the field, the "
                    "systemd versions that print them, what they mean for the merge and the fix. "
                    "E.g. SYSTEMD_LOG_LEVEL=debug systemd-sysext refresh 2>&1 | sysext-pipeline "
                    "explain -")
    p.add_argument("text", nargs="*", metavar="TEXT",
                   help="log lines ('-': read stdin); with --root, an existing path is an image "
                        "to check against")
    p.add_argument("--file", "-f", help="read the lines from this file ('-': stdin)")
    p.add_argument("--image", action="append", help="an image to check the diagnosis against "
                   "(with --root: judged inside that tree)")
    add_host_arguments(p)
    from . import clikit

    clikit.add_kind(p, "the lines come from this tool (default: from journal prefixes)")
    p.add_argument("--verbose", "-v", action="store_true", help="list the unknown lines too")
    clikit.add_json(p)
    p.set_defaults(func=_dispatch)


def _dispatch(args) -> int:
    if args.json not in (None, "pretty", "short", "off"):  # `--json TEXT`: the text is a line
        args.text, args.json = [args.json, *args.text], "pretty"
    args.json = None if args.json == "off" else args.json
    if args.text == ["-"] and not args.file:
        args.text, args.file = [], "-"
    elif "-" in args.text:
        raise InputError("explain", "'-' (stdin) must be the only TEXT")
    return cmd_explain(args)
