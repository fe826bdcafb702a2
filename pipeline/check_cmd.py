"""``check``: will this image merge on that host, and if not, why (and since which systemd)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from .systemd import host as hostmod
from .systemd import images, rules
from .systemd.release import RELEASE_DIRS

#: Exit code when an image does not merge (0: all merge; 1/2 stay errors).
NOT_MERGING = 3
#: Versions shown in "on other systemd versions" (the points where rules change).
VERSION_POINTS = tuple(map(rules.parse_version, (
    "252", "253", "254.5", "254.14", "254", "255.8", "255", "256.0", "256", "257.7", "257", "258",
    "259", "260", "261", "262")))


@dataclass
class Result:
    path: Path
    image: images.Image
    kind: str
    place: rules.Place
    verdict: rules.Verdict
    other_versions: dict[str, str]

    def as_dict(self, host: hostmod.Host) -> dict:
        data = {"image": str(self.path), "format": self.image.format, "kind": self.kind,
                "detected_kind": self.image.kind, "systemd": rules.format_version(host.version),
                "installed_in": self.place.directory, **self.verdict.as_dict()}
        if self.image.picked_from:
            data["picked_from"] = str(self.image.picked_from)
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


def check_one(path: Path, host: hostmod.Host, kind: str | None = None) -> Result:
    image = images.read(path, architecture=host.architecture)
    dir_kind, place = place_of(Path(path), host)
    use_kind = kind or dir_kind or image.guessed_kind or "sysext"
    facts = image.facts
    if image.picked_from is not None:  # systemd names a .v/ pick after the directory
        facts = replace(facts, name_override=rules.v_directory_image_name(image.picked_from.name))
    verdict = rules.evaluate(facts, host.facts(), use_kind, place)
    if dir_kind and image.kind and image.kind != dir_kind:
        verdict.notes.append(f"the image is a {image.kind} (release file under "
                             f"{RELEASE_DIRS[image.kind]}/) but sits in a {dir_kind} "
                             "directory")
    if place.directory is None:
        verdict.notes.append(f"not installed: systemd looks in "
                             f"{', '.join(rules.search_dirs(use_kind, host.version, host.initrd))}"
                             f" (install puts it in {rules.install_dir(use_kind)})")
    others = {}
    for version in VERSION_POINTS:
        other = rules.evaluate(facts, replace(host.facts(), version=version), use_kind, place)
        label = f"{version[0]}.x" if version[1] == rules.LATEST_POINT else \
            rules.format_version(version)
        others[label] = f"{other.verdict} ({other.rule.id})"
    return Result(Path(path), image, use_kind, place, verdict, _compress(others))


def _compress(others: dict[str, str]) -> dict[str, str]:
    """Collapse neighbouring versions with the same outcome: {'252.x–253.x': …}."""
    out: dict[str, str] = {}
    items = list(others.items())
    start = 0
    for i in range(1, len(items) + 1):
        if i == len(items) or items[i][1] != items[start][1]:
            first, last = items[start][0], items[i - 1][0]
            out[first if first == last else f"{first}–{last}"] = items[start][1]
            start = i
    return out


def human(result: Result) -> str:
    v = result.verdict
    head = f"{result.path} ({result.kind}, {result.image.format}): {v.verdict}"
    lines = [head]
    detail = f"  rule:    {v.rule.id} — {v.rule.summary} (systemd {v.rule.versions_text()})"
    lines.append(detail)
    if v.field:
        lines.append(f"  field:   {v.field}: image {_q(v.image_value)}, host {_q(v.host_value)}")
    if v.message:
        lines.append(f"  systemd: {v.message}")
    if v.verdict != rules.MERGES or v.fix != "none needed":
        lines.append(f"  fix:     {v.fix}")
    for note in v.notes:
        lines.append(f"  note:    {note}")
    changes = result.other_versions
    if len({o.split(' ')[0] for o in changes.values()}) > 1 or len(changes) > 1:
        lines.append("  other systemd versions: " + "; ".join(f"{k}: {o}" for k, o in
                                                            changes.items()))
    return "\n".join(lines)


def _q(value: str | None) -> str:
    return "(absent)" if value is None else repr(value)


def add_host_arguments(p) -> None:
    p.add_argument("--root", help="check against this OS tree instead of the running host")
    p.add_argument("--os-release", help="use this os-release file for the host")
    p.add_argument("--arch", help="host architecture (systemd spelling: x86-64, arm64, ...)")
    p.add_argument("--systemd", help="systemd version to model (e.g. 252, 254.5; default: the "
                   "one installed in the host or root)")
    p.add_argument("--initrd", action="store_true", default=None,
                   help="judge as systemd does in the initrd (scope 'initrd')")


def host_from_args(args) -> hostmod.Host:
    return hostmod.detect(Path(args.root) if args.root else None,
                          os_release_file=Path(args.os_release) if args.os_release else None,
                          arch=args.arch, systemd=args.systemd, initrd=args.initrd)


def cmd_check(args) -> int:
    host = host_from_args(args)
    results = [check_one(Path(p), host, args.kind) for p in args.images]
    if args.json:
        print(json.dumps({"schema": 1, "host": host.as_dict(),
                          "images": [r.as_dict(host) for r in results]}, indent=2))
    else:
        hdr = (f"host: {host.os_release.fields.get('ID', '(no ID)')} "
               f"{host.os_release.fields.get('VERSION_ID', '')} {host.architecture}, systemd "
               f"{rules.format_version(host.version)} ({host.version_source})"
               f"{', initrd' if host.initrd else ''}")
        print(hdr)
        for r in results:
            print(human(r))
    ok = all(r.verdict.verdict == rules.MERGES for r in results)
    if not ok and not args.json:
        print("some images do not merge", file=sys.stderr)
    return 0 if ok else NOT_MERGING


def cmd_troubleshooting(args) -> int:
    sys.stdout.write(rules.troubleshooting_markdown())
    return 0


def register(sub) -> None:
    p = sub.add_parser("check", help="will an image merge on a host? (and why not)",
                       epilog="exit codes: 0 every image merges, 3 some do not, "
                              "1/2 errors")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="raw image, directory or NAME.v/ directory")
    add_host_arguments(p)
    p.add_argument("--kind", choices=("sysext", "confext"),
                   help="judge as this kind (default: from where the image is or its release "
                        "file)")
    p.add_argument("--json", action="store_true", help="machine-readable result on stdout")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("troubleshooting",
                       help="print the troubleshooting guide (docs/troubleshooting.md)")
    p.set_defaults(func=cmd_troubleshooting)
