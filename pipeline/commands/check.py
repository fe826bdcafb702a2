"""``check``: will this image merge on that host, and if not, why (and since which systemd)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import PipelineError
from ..host import facts as hostmod
from ..host import images, signature
from ..systemd import rules
from ..systemd.release import RELEASE_DIRS

#: Exit code when an image does not merge (0: all merge; 1/2 stay errors).
NOT_MERGING = 3
#: Where the outcome can change: every bound of every rule and behaviour span, point releases
#: (254.6, 254.11, 255.9, 257.8, …) included; each holds until the next one.
VERSION_POINTS = rules.version_bounds()


@dataclass
class Result:
    path: Path
    image: images.Image
    kind: str
    place: rules.Place
    verdict: rules.Verdict
    other_versions: list[dict]  # {"from", "to", "verdict", "rule", "systemd_exit"}
    force: bool = False
    picks_v: bool = True  # the judged version picks from NAME.v/ directories (256+)

    def as_dict(self, host: hostmod.Host) -> dict:
        data = {"image": str(self.path), "format": self.image.format, "kind": self.kind,
                "detected_kind": self.image.kind, "systemd": rules.format_version(host.version),
                "force": self.force, "installed_in": self.place.directory,
                **self.verdict.as_dict()}
        if self.image.picked_from and rules.reads_v_directories(host.version):
            data["picked_from"] = str(self.image.picked_from)
            data["picked"] = str(self.image.path)
        data["other_versions"] = self.other_versions
        return data


def place_of(path: Path, host: hostmod.Host) -> tuple[str | None, rules.Place]:
    """(kind of the search directory, Place) when ``path`` sits in a search directory."""
    parent = Path(os.path.realpath(path.parent))
    for kind in ("sysext", "confext"):
        for entry in hostmod.installed(host, kind):
            if Path(os.path.realpath(entry.path.parent)) == parent and entry.path.name == path.name:
                shadow = host.host_path(entry.shadowed_by) if entry.shadowed_by else None
                return kind, rules.Place(entry.directory, shadow)
    return None, rules.Place()


def with_host_facts(image: images.Image, host: hostmod.Host,
                    name_override: str | None = None) -> rules.ImageFacts:
    """The image's facts plus what depends on the host: a ``.v/`` pick's name, and whether an
    installed certificate verifies its signature (signature.py)."""
    facts = image.facts
    if name_override is not None:
        facts = replace(facts, name_override=name_override)
    if image.picked_from is not None:
        facts = replace(facts, v_directory=image.picked_from.name)
    state = signature.state(image.path, host.base)
    if state.status != signature.UNSIGNED:
        certs = ", ".join(host.host_path(c) for c in state.certificates)
        facts = replace(facts, signature=state.status, signature_info=(
            state.where, f"verified by {host.host_path(state.verified_by)}" if state.verified_by
            else f"none of {certs} verifies it" if certs else
            f"no certificate in {', '.join(rules.VERITY_DIRS)}"))
    return facts


def evaluate_entry(host: hostmod.Host, entry: hostmod.Installed, *, with_entries: bool = False,
                   force: bool = False) -> tuple[images.Image | None, rules.Verdict]:
    """An installed entry's own verdict (as doctor and the merge-breaker scan see it); image
    None when the entry is not an image systemd discovers (its verdict says why)."""
    if entry.name is None and not entry.path.is_dir():
        return None, rules.evaluate(rules.ImageFacts(entry.path.name, False, {}), host.facts(),
                                    entry.kind, rules.Place(entry.directory), force)
    image = images.read(entry.path, with_entries=with_entries, architecture=host.architecture)
    facts = with_host_facts(image, host, entry.name if image.picked_from is not None else None)
    shadow = host.host_path(entry.shadowed_by) if entry.shadowed_by else None
    return image, rules.evaluate(facts, host.facts(), entry.kind,
                                 rules.Place(entry.directory, shadow), force)


def merge_breakers(host: hostmod.Host, kind: str, cache: dict | None = None,
                   force: bool = False) -> list[tuple[Path, rules.Verdict]]:
    """The images in ``kind``'s search directories that break the whole merge (systemd reads
    every discovered image before merging any: one bad raw image stops them all)."""
    key = (kind, str(host.base), host.version, host.initrd, force)
    if cache is not None and key in cache:
        return cache[key]
    found = []
    for entry in hostmod.installed(host, kind, include_unsearched=False):
        if entry.name is None or entry.shadowed_by is not None:
            continue
        try:
            _, verdict = evaluate_entry(host, entry, force=force)
        except PipelineError:  # unreadable: doctor reports it; no guess here
            continue
        if verdict.verdict == rules.BREAKS:
            found.append((entry.path, verdict))
    if cache is not None:
        cache[key] = found
    return found


def apply_breakers(verdict: rules.Verdict, path: Path, host: hostmod.Host,
                   breakers: list[tuple[Path, rules.Verdict]]) -> rules.Verdict:
    """``verdict`` for the image at ``path`` once the other images are counted: when another one
    breaks the merge, so does this one (a discovery verdict only gets a note)."""
    if verdict.verdict == rules.BREAKS:
        return verdict
    own = os.path.realpath(path)
    others = [(p, v) for p, v in breakers if os.path.realpath(p) != own]
    if not others:
        return verdict
    names = ", ".join(f"{host.host_path(p)} ({v.rule.id})" for p, v in others)
    if verdict.rule.id.startswith("discovery."):
        verdict.notes.append(f"the whole merge breaks anyway because of {names}")
        return verdict
    culprit, other = others[0]
    result = rules.broken_by_other(verdict, host.host_path(culprit), other)
    if len(others) > 1:
        result.notes.append(f"also breaking it: {names}")
    return result


def empty_v_directory(path: Path, host: hostmod.Host) -> images.Image | None:
    """A ``NAME.v/`` directory with no entry systemd 256+ would pick, as an image to judge."""
    if not (path.is_dir() and path.name.endswith(".v")) or \
            images.pick_from_v(path, host.architecture) is not None:
        return None
    name = rules.v_directory_image_name(path.name)
    facts = rules.ImageFacts(path.name, True, {}, name_override=name, v_directory=path.name,
                             v_empty=True)
    return images.Image(path, "directory", facts, guessed_kind=None)


def check_one(path: Path, host: hostmod.Host, kind: str | None = None,
              cache: dict | None = None, force: bool = False) -> Result:
    image = empty_v_directory(Path(path), host) or images.read(path,
                                                               architecture=host.architecture)
    dir_kind, place = place_of(Path(path), host)
    use_kind = kind or dir_kind or image.guessed_kind or "sysext"
    # systemd names a .v/ pick after the directory
    facts = with_host_facts(image, host, rules.v_directory_image_name(image.picked_from.name)
                            if image.picked_from is not None else None)
    verdict = rules.evaluate(facts, host.facts(), use_kind, place, force)
    if place.directory is not None and rules.ships_tool(use_kind, host.version):
        verdict = apply_breakers(verdict, Path(path), host,
                                 merge_breakers(host, use_kind, cache, force))
    if image.picked_from is not None and rules.reads_v_directories(host.version):
        verdict.notes.append(f"picked {image.path.name} from {image.picked_from.name}/ (the "
                             "newest NAME_VERSION entry, as systemd 256+ does)")
    if dir_kind and image.kind and image.kind != dir_kind:
        verdict.notes.append(f"the image is a {image.kind} (release file under "
                             f"{RELEASE_DIRS[image.kind]}/) but sits in a {dir_kind} "
                             "directory")
    if place.directory is None:
        dirs = rules.search_dirs(use_kind, host.version, host.initrd)
        later = rules.search_dirs(use_kind, rules.parse_version("254"), host.initrd)
        where = f"systemd looks in {', '.join(dirs)}" if dirs else (  # issue 16 §4
            f"systemd {rules.format_version(host.version)} has no systemd-{use_kind} and looks "
            f"nowhere; 254+ looks in {', '.join(later)}")
        verdict.notes.append(f"not installed: {where} (install puts it in "
                             f"{rules.install_dir(use_kind)})")
    outcomes = []
    for version in VERSION_POINTS:
        other = rules.evaluate(facts, replace(host.facts(), version=version), use_kind, place,
                               force)
        outcomes.append((version, (other.verdict, other.rule.id, other.systemd_exit)))
    return Result(Path(path), image, use_kind, place, verdict, version_ranges(outcomes), force,
                  rules.reads_v_directories(host.version))


def version_ranges(outcomes: list[tuple[rules.Version, tuple]]) -> list[dict]:
    """Neighbouring versions with the same outcome as one range with exact bounds:
    [{"from": "254.0", "to": "254.5", "verdict": …, "rule": …, "systemd_exit": …}, …];
    ``to`` is "N.x" when the range ends with the whole N series."""
    ranges: list[dict] = []
    for i, (version, outcome) in enumerate(outcomes):
        if ranges and ranges[-1]["_outcome"] == outcome:
            continue
        ranges.append({"from": f"{version[0]}.{version[1]}", "_outcome": outcome,
                       "_start": i})
    for n, entry in enumerate(ranges):
        end = ranges[n + 1]["_start"] if n + 1 < len(ranges) else None
        if end is None:
            entry["to"] = f"{rules.NEWEST}.x"
        else:
            major, point = outcomes[end][0]
            entry["to"] = f"{major}.{point - 1}" if point else f"{major - 1}.x"
    return [{"from": e["from"], "to": e["to"], "verdict": e["_outcome"][0],
             "rule": e["_outcome"][1], "systemd_exit": e["_outcome"][2]} for e in ranges]


def range_text(entry: dict) -> str:
    """'254.0–254.5', '252.0–253.x' shown as '252–253', a single series as '254'."""
    lo, hi = entry["from"], entry["to"]
    if lo.endswith(".0") and hi.endswith(".x"):
        lo, hi = lo[:-2], hi[:-2]
    return lo if lo == hi else f"{lo}–{hi}"


def ending(verdict: str, systemd_exit: int | None, kind: str) -> str:
    """How systemd-KIND merge ends for a verdict that breaks the merge."""
    if verdict != rules.BREAKS or systemd_exit is None:
        return verdict
    how = "exits 0: the merge fails, but 252–255 swallow the failure" if systemd_exit == 0 \
        else "exits 1"
    return f"{verdict} (systemd-{kind} {how})"


def human(result: Result) -> str:
    v = result.verdict
    head = (f"{result.path} ({result.kind}, {result.image.format}): "
            f"{ending(v.verdict, v.systemd_exit, result.kind)}"
            f"{' with --force' if result.force else ''}")
    lines = [head]
    detail = f"  rule:    {v.rule.id} — {v.summary} (systemd {v.rule.versions_text()})"
    lines.append(detail)
    if result.image.picked_from is not None and result.picks_v:
        lines.append(f"  picked:  {result.image.path}")
    if v.field:
        lines.append(f"  field:   {v.field}: {v.values_text()}")
    if v.message:
        lines.append(f"  systemd: {v.message}")
    if v.verdict != rules.MERGES or v.fix != "none needed":
        lines.append(f"  fix:     {v.fix}")
    for note in v.notes:
        lines.append(f"  note:    {note}")
    changes = result.other_versions
    if len(changes) > 1:
        lines.append("  systemd versions:")
        for entry in changes:
            exit_text = "" if entry["systemd_exit"] is None else \
                f", exit {entry['systemd_exit']}"
            lines.append(f"    {range_text(entry)}: {entry['verdict']} ({entry['rule']}"
                         f"{exit_text})")
    return "\n".join(lines)


def add_host_arguments(p) -> None:
    """The shared host options (declared once in :func:`clikit.add_host`)."""
    from . import clikit

    clikit.add_host(p)


def host_from_args(args) -> hostmod.Host:
    return hostmod.detect(Path(args.root) if args.root else None,
                          os_release_file=Path(args.os_release) if args.os_release else None,
                          arch=args.arch, systemd=args.systemd, initrd=args.initrd)


def cmd_check(args) -> int:
    from . import clikit

    clikit.preflight("check", args.images)
    host = host_from_args(args)
    cache: dict = {}
    results = [check_one(Path(p), host, args.kind, cache, args.force) for p in args.images]
    ok = all(r.verdict.verdict == rules.MERGES for r in results)
    if args.json:
        from . import clikit

        bad = [str(p) for p, r in zip(args.images, results)
               if r.verdict.verdict != rules.MERGES]
        return clikit.emit(args, {"host": host.as_dict(),
                                  "images": [r.as_dict(host) for r in results]},
                           0 if ok else NOT_MERGING,
                           {"message": "some images do not merge", "subject": ", ".join(bad),
                            "field": None, "hint": None})
    else:
        hdr = (f"host: {host.os_release.fields.get('ID', '(no ID)')} "
               f"{host.os_release.fields.get('VERSION_ID', '')} {host.architecture}, systemd "
               f"{rules.format_version(host.version)} ({host.version_source})"
               f"{', initrd' if host.initrd else ''}")
        print(hdr)
        for r in results:
            print(human(r))
    if not ok:
        print("some images do not merge", file=sys.stderr)
    return 0 if ok else NOT_MERGING


def cmd_troubleshooting(args) -> int:
    """docs/troubleshooting.md: the host side (the rule table) and the build side (the error
    catalogue, pipeline/errors.py)."""
    from ..errors import catalogue_markdown

    sys.stdout.write(rules.troubleshooting_markdown() + "\n" + catalogue_markdown())
    return 0


def register(sub) -> None:
    from . import clikit

    p = sub.add_parser("check", help="will an image merge on a host? (and why not)")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="raw image, directory or NAME.v/ directory")
    add_host_arguments(p)
    clikit.add_kind(p, "judge as this kind (default: from where the image is or its release "
                       "file)")
    p.add_argument("--force", action="store_true",
                   help="judge as systemd-sysext/-confext --force does (the extension-release "
                        "validation skipped)")
    clikit.add_json(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("troubleshooting",
                       help="print the troubleshooting guide (docs/troubleshooting.md)")
    p.set_defaults(func=cmd_troubleshooting)
