"""Runtime pitfalls of a payload: things that build fine and then surprise on the host.

Each check has a code, a severity, the paths that trigger it and the fix. ``build`` prints them
and records them in the manifest; ``plan`` shows the same list before anything is built.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from .formats import entry as E
from .staging import Record

UNIT_SUFFIXES = (".service", ".socket", ".timer", ".path", ".mount", ".automount", ".target",
                 ".slice", ".scope", ".swap", ".device")
UNIT_DIRS = {"sysext": ("usr/lib/systemd/system/", "usr/lib/systemd/user/"),
             "confext": ("etc/systemd/system/", "etc/systemd/user/")}
#: Host files an extension must not replace: the overlay would make the host run this copy.
HOST_CRITICAL = re.compile(
    r"^usr/(lib/systemd/systemd|lib/systemd/libsystemd-shared[^/]*\.so|"
    r"lib(64|32|x32)?/(ld-linux[^/]*|ld64[^/]*)\.so[.0-9]*|"
    r"lib/[^/]+-linux-gnu[^/]*/(libc|libm|libpthread|libdl|libsystemd|libudev)\.so[.0-9]*|"
    r"lib/[^/]+-linux-gnu[^/]*/ld-linux[^/]*|bin/(sh|bash|dash|mount|umount|systemctl)|"
    r"sbin/init|lib/os-release)$")


def unit_paths(kind: str, paths) -> list[str]:
    """systemd unit files an image of ``kind`` carries (they need a manager reload)."""
    return sorted(p for p in paths if p.startswith(UNIT_DIRS[kind]) and p.endswith(UNIT_SUFFIXES))


@dataclass(frozen=True)
class Finding:
    code: str
    severity: str  # "warning" | "error" (error: the image will misbehave on most hosts)
    message: str
    fix: str
    paths: tuple[str, ...] = ()

    def line(self) -> str:
        shown = ", ".join(self.paths[:3]) + (f" (+{len(self.paths) - 3} more)"
                                             if len(self.paths) > 3 else "")
        where = f" [{shown}]" if shown else ""
        return f"{self.code}: {self.message}{where} — fix: {self.fix}"

    def to_json(self) -> dict:
        return {**asdict(self), "paths": list(self.paths)}


def find(kind: str, records: Mapping[str, Record], fields: Mapping[str, str],
         target: Mapping) -> list[Finding]:
    """All pitfalls of one image (``kind``: sysext or confext) with its release ``fields``."""
    found: list[Finding] = []

    def add(code, severity, message, fix, paths):
        paths = tuple(sorted(paths))
        if paths or paths is None:
            found.append(Finding(code, severity, message, fix, paths))

    files = {p: r for p, r in records.items() if r.kind == E.FILE}
    units = unit_paths(kind, records)
    if units and fields.get("EXTENSION_RELOAD_MANAGER") != "1":
        add("units-need-reload", "warning",
            "systemd units in the image are not seen until the service manager reloads",
            "set target.reload_manager = true (EXTENSION_RELOAD_MANAGER=1, systemd 255+), or run "
            "`systemctl daemon-reload` after every merge", units)
    if kind == "confext":
        add("confext-noexec", "error",
            "confext mounts are noexec,nosuid: these executables and setuid/setgid files will "
            "not run from /etc", "ship them in a sysext (/usr) and keep only configuration here",
            [p for p, r in files.items() if r.mode & 0o7111])
    else:
        add("setuid", "warning", "setuid/setgid files: sysext mounts keep suid, but check that "
            "the host's policy (nosuid /usr, SELinux labels) lets them work", "drop the bit if "
            "it is not needed", [p for p, r in files.items() if r.mode & 0o6000])
    add("kernel-modules", "warning",
        "kernel modules are bound to one kernel version and need depmod; they break on the "
        "next kernel update", "build one image per kernel (target.sysext_level or VERSION_ID "
        "pinned to the OS release that ships that kernel) and run depmod after merging",
        [p for p in files if p.startswith("usr/lib/modules/") and ".ko" in p.rsplit("/", 1)[-1]])
    add("udev-rules", "warning",
        "udev rules or hwdb entries take effect only after udev reloads (hwdb needs "
        "systemd-hwdb update, which cannot write into a read-only /usr)",
        "run `udevadm control --reload && udevadm trigger` after merging; for hwdb, ship the "
        "compiled hwdb.bin or use rules instead",
        [p for p in files if re.match(r"^(usr/lib|etc)/udev/(rules\.d|hwdb\.d)/", p)])
    add("shadows-host", "error", "these files replace the host's own: the host would run the "
        "extension's copy (and break on the next OS update)",
        "exclude them with filter.exclude; they belong to the base OS",
        [p for p in records if HOST_CRITICAL.match(p)])
    add("config-in-usr", "warning", "the package marks these files as configuration, but "
        "under /usr they are read-only once merged", "override them from /etc (a confext or "
        "drop-in directory) instead of editing them", [p for p, r in files.items() if r.config])
    if kind == "sysext":
        add("dangling-link", "warning", "symlinks point into /etc or /var, which a sysext does "
            "not carry: they dangle unless the host has the target",
            "ship the target with policy.etc = \"factory\" or a confext, or drop the link",
            [p for p, r in records.items() if r.kind == E.SYMLINK and
             (r.target or "").startswith(("/etc/", "/var/"))])
    level = fields.get(f"{kind.upper()}_LEVEL")
    # A dotted VERSION_ID (RHEL 9.4, Flatcar 3815.2.0, openSUSE Leap 15.5) changes with
    # routine updates; Debian's "12" or Fedora's "40" stay for the life of the release.
    if fields.get("ID") != "_any" and "." in fields.get("VERSION_ID", "") and not level:
        found.append(Finding(
            "version-id-only", "warning",
            f"the image matches only hosts with VERSION_ID={fields['VERSION_ID']} exactly "
            "(string compare): on OSes whose VERSION_ID changes with updates, every update "
            "stops the merge",
            f"set target.{kind}_level (compared instead when the host has one), or ID=_any "
            "with ARCHITECTURE for payloads that do not depend on the OS version"))
    if fields.get("ID") == "_any" and not fields.get("ARCHITECTURE") and any(
            _looks_binary(p, r) for p, r in files.items()):
        found.append(Finding(
            "any-without-arch", "warning", "ID=_any without ARCHITECTURE: binaries would merge "
            "on hosts of any architecture and any OS version", "set target.architecture"))
    return found


def _looks_binary(path: str, record: Record) -> bool:
    return bool(record.mode & 0o111) or ".so" in path.rsplit("/", 1)[-1]
