"""Runtime pitfalls of a payload: things that build fine and then surprise on the host.

Each check has a code, a severity, the paths that trigger it and the fix. ``build`` prints them
and records them in the manifest; ``plan`` shows the same list before anything is built.
Severities are "warning" and "severe" (the image will misbehave on most hosts) — never
"error", which the CLI reserves for failures that stop the build and exit non-zero.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from ..errors import InputError
from ..formats import entry as E
from .staging import Record

UNIT_SUFFIXES = (".service", ".socket", ".timer", ".path", ".mount", ".automount", ".target",
                 ".slice", ".scope", ".swap", ".device")
UNIT_DIRS = {"sysext": ("usr/lib/systemd/system/", "usr/lib/systemd/user/"),
             "confext": ("etc/systemd/system/", "etc/systemd/user/")}
#: Dependency directories (NAME.wants/ ...) whose links the manager reads at (re)load.
DEPENDENCY_DIRS = (".wants", ".requires", ".upholds")
#: Generators run at boot and at every daemon-reload. Only a sysext can carry working ones: a
#: confext is mounted noexec (that is its own finding).
GENERATOR_DIRS = {"sysext": ("usr/lib/systemd/system-generators/",
                             "usr/lib/systemd/user-generators/",
                             "usr/lib/systemd/system-environment-generators/",
                             "usr/lib/systemd/user-environment-generators/"),
                  "confext": ()}
SEVERE, WARNING = "severe", "warning"
#: Host files an extension must not replace: the overlay would make the host run this copy.
HOST_CRITICAL = re.compile(
    r"^usr/(lib/systemd/systemd|lib/systemd/libsystemd-shared[^/]*\.so|"
    r"lib(64|32|x32)?/(ld-linux[^/]*|ld64[^/]*)\.so[.0-9]*|"
    r"lib/[^/]+-linux-gnu[^/]*/(libc|libm|libpthread|libdl|libsystemd|libudev)\.so[.0-9]*|"
    r"lib/[^/]+-linux-gnu[^/]*/ld-linux[^/]*|bin/(sh|bash|dash|mount|umount|systemctl)|"
    r"sbin/init|lib/os-release)$")
#: Host files a confext must not replace: identity, accounts, the loader, mounts. A confext's
#: etc/os-release is the worst: systemd then matches every other extension against it.
HOST_CRITICAL_ETC = frozenset({
    "etc/os-release", "etc/passwd", "etc/shadow", "etc/group", "etc/gshadow",
    "etc/ld.so.preload", "etc/ld.so.conf", "etc/systemd/system.conf", "etc/fstab",
    "etc/machine-id"})
#: Where systemd reads extension-release files; the pipeline writes the image's own.
RELEASE_DIRS = ("usr/lib/extension-release.d", "etc/extension-release.d")
#: Where a symlink can point into the host's state and configuration, which a sysext lacks.
HOST_ONLY_TOPS = ("etc", "var", "srv")


def unit_paths(kind: str, paths) -> list[str]:
    """What an image of ``kind`` carries that the service manager reads only when it (re)loads:
    unit files, their drop-ins (``NAME.service.d/*.conf``, type drop-ins ``service.d/*.conf``),
    dependency links (``NAME.target.wants/...``) and generators."""
    dropin_dirs = tuple(f"{s}.d" for s in UNIT_SUFFIXES)
    found = []
    for path in paths:
        if path.startswith(GENERATOR_DIRS[kind]) and path.count("/") == 4:
            found.append(path)
            continue
        base = next((d for d in UNIT_DIRS[kind] if path.startswith(d)), None)
        if base is None:
            continue
        parts = path[len(base):].split("/")
        if len(parts) == 1 and parts[0].endswith(UNIT_SUFFIXES):
            found.append(path)
        elif len(parts) == 2 and parts[1] and (
                parts[0].endswith(dropin_dirs) and parts[1].endswith(".conf")
                or parts[0].endswith(DEPENDENCY_DIRS)):
            found.append(path)
    return sorted(found)


@dataclass(frozen=True)
class Finding:
    code: str
    severity: str  # WARNING | SEVERE (the image will misbehave on most hosts)
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
         target: Mapping, provided: frozenset[str] = frozenset(),
         packages_with_scripts: tuple[tuple[str, tuple[str, ...]], ...] = ()) -> list[Finding]:
    """All pitfalls of one image (``kind``: sysext or confext) with its release ``fields``.

    ``provided``: absolute paths the host gets from elsewhere in this recipe — the companion
    image's files and what the recipe's tmpfiles.d lines create
    (:func:`pipeline.stages.layout.provided_paths`); a symlink pointing there does not dangle.
    ``packages_with_scripts``: (package, script names) for every input package with maintainer
    scripts (``("postinst",)``, ``("%post",)``), none of which ever runs for an extension.
    """
    found: list[Finding] = []

    def add(code, severity, message, fix, paths):
        paths = tuple(sorted(paths))
        if paths:
            found.append(Finding(code, severity, message, fix, paths))

    files = {p: r for p, r in records.items() if r.kind == E.FILE}
    units = unit_paths(kind, records)
    if units and fields.get("EXTENSION_RELOAD_MANAGER") != "1":
        add("units-need-reload", WARNING,
            "systemd units, drop-ins or generators in the image are not seen until the service "
            "manager reloads",
            "set target.reload_manager = true (EXTENSION_RELOAD_MANAGER=1, systemd 255+), or run "
            "`systemctl daemon-reload` after every merge", units)
    if kind == "confext":
        add("confext-noexec", SEVERE,
            "confext mounts are noexec,nosuid: these executables and setuid/setgid files will "
            "not run from /etc", "ship them in a sysext (/usr) and keep only configuration here",
            [p for p, r in files.items() if r.mode & 0o7111])
    policy = getattr(records, "special_policy", "warn")
    host_special = getattr(records, "host_special", {})
    if kind != "confext" and policy != "allow":
        add("setuid", SEVERE, "setuid/setgid files: they run with their owner's or group's "
            "rights on every host that merges the image (sysext mounts keep suid)",
            "drop the bit if it is not needed; after review, policy.special_files = \"allow\" "
            "silences this and \"error\" refuses it",
            [p for p, r in files.items() if r.mode & 0o6000])
    if policy != "allow":
        add("world-writable", SEVERE, "world-writable paths without the sticky bit: any user "
            "on the host can replace or fill them", "fix the mode (or add the sticky bit to a "
            "shared directory); policy.special_files = \"error\" refuses such packages",
            [p for p, r in records.items() if world_writable(r.kind, r.mode)]
            + [p for p, what in host_special.items() if what == "world-writable"])
    add("foreign-release-file", SEVERE,
        "release files the pipeline did not write: systemd reads extension-release.NAME as the "
        "identity of any image named NAME (and this one's own file decides whether it merges)",
        "exclude them with filter.exclude; the pipeline writes the image's release file",
        [p for p, r in records.items() if p.startswith(tuple(d + "/" for d in RELEASE_DIRS))
         and r.origin != "extension-release"])
    add("kernel-modules", WARNING,
        "kernel modules are bound to one kernel version and need depmod; they break on the "
        "next kernel update", "build one image per kernel (target.sysext_level or VERSION_ID "
        "pinned to the OS release that ships that kernel) and run depmod after merging",
        [p for p in files if p.startswith("usr/lib/modules/") and ".ko" in p.rsplit("/", 1)[-1]])
    add("udev-rules", WARNING,
        "udev rules or hwdb entries take effect only after udev reloads (hwdb needs "
        "systemd-hwdb update, which cannot write into a read-only /usr)",
        "run `udevadm control --reload && udevadm trigger` after merging; for hwdb, ship the "
        "compiled hwdb.bin or use rules instead",
        [p for p in files if re.match(r"^(usr/lib|etc)/udev/(rules\.d|hwdb\.d)/", p)])
    shadowing = [p for p in records if HOST_CRITICAL.match(p) or
                 kind == "confext" and p in HOST_CRITICAL_ETC]
    identity = " etc/os-release replaces the host's identity: systemd-sysext and "\
        "systemd-confext then match every other extension against this copy." \
        if "etc/os-release" in shadowing else ""
    add("shadows-host", SEVERE, "these files replace the host's own: the host would run or "
        "read the extension's copy (and break on the next OS update)." + identity,
        "exclude them with filter.exclude; they belong to the base OS", shadowing)
    add("config-in-usr", WARNING, "the package marks these files as configuration, but "
        "under /usr they are read-only once merged", "override them from /etc (a confext or "
        "drop-in directory) instead of editing them",
        [p for p, r in files.items() if r.config and p.startswith(("usr/", "opt/"))
         and not p.startswith("usr/share/factory/")])
    if kind == "sysext":
        add("dangling-link", WARNING, "symlinks point into /etc, /var or /srv, which a sysext "
            "does not carry, and nothing in this recipe provides the target: they dangle "
            "unless the host has it",
            "ship the target with policy.etc = \"factory\" or a confext, or drop the link",
            [p for p, r in records.items() if r.kind == E.SYMLINK and
             _dangles(p, r.target or "", provided)])
    add("maintainer-scripts", WARNING,
        "these packages have maintainer scripts, which never run for an extension: the "
        "users and groups, host keys, alternatives, caches or enabled units they would make "
        "do not exist on the host",
        "check what the scripts do and ship the result instead (sysusers.d and tmpfiles.d "
        "files, [files] entries), or set it up on the host",
        [f"{name} ({', '.join(scripts)})" for name, scripts in packages_with_scripts
         if scripts])
    level = fields.get(f"{kind.upper()}_LEVEL")
    # A dotted VERSION_ID (RHEL 9.4, Flatcar 3815.2.0, openSUSE Leap 15.5) changes with
    # routine updates; Debian's "12" or Fedora's "40" stay for the life of the release.
    if fields.get("ID") != "_any" and "." in fields.get("VERSION_ID", "") and not level:
        found.append(Finding(
            "version-id-only", WARNING,
            f"the image matches only hosts with VERSION_ID={fields['VERSION_ID']} exactly "
            "(string compare): on OSes whose VERSION_ID changes with updates, every update "
            "stops the merge",
            f"set target.{kind}_level (compared instead when the host has one), or ID=_any "
            "with ARCHITECTURE for payloads that do not depend on the OS version"))
    # systemd merges an image without VERSION_ID (and without a level) only on hosts whose
    # os-release has neither: rolling releases. Debian, Fedora, Ubuntu ... all have one.
    if fields.get("ID") not in (None, "_any") and not fields.get("VERSION_ID") and not level:
        found.append(Finding(
            "no-version", WARNING,
            f"the image has neither VERSION_ID nor {kind.upper()}_LEVEL: only hosts without "
            f"VERSION_ID (rolling releases) merge it; a {fields['ID']} host that has one "
            "ignores it (\"does not contain VERSION_ID\")",
            f"set target.version_id or target.{kind}_level, or ID=_any with "
            "target.architecture"))
    if fields.get("ID") == "_any" and not fields.get("ARCHITECTURE") and any(
            _looks_binary(p, r) for p, r in files.items()):
        found.append(Finding(
            "any-without-arch", WARNING, "ID=_any without ARCHITECTURE: binaries would merge "
            "on hosts of any architecture and any OS version", "set target.architecture"))
    return found


def world_writable(kind: str, mode: int) -> bool:
    """Writable by others, and not a sticky directory (a symlink's own mode means nothing)."""
    if kind == E.SYMLINK or not mode & 0o002:
        return False
    return not (kind == E.DIR and mode & 0o1000)


def special_of(kind: str, mode: int) -> str | None:
    """What ``policy.special_files`` judges about an entry: setuid, setgid, world-writable."""
    if kind in (E.FILE, E.HARDLINK) and mode & 0o4000:
        return "setuid"
    if kind in (E.FILE, E.HARDLINK) and mode & 0o2000:
        return "setgid"
    if world_writable(kind, mode):
        return "world-writable"
    return None


def _dangles(path: str, target: str, provided: frozenset[str]) -> bool:
    """A link into the host's /etc, /var or /srv (absolute, or relative and resolving there)
    whose target nothing in the recipe provides."""
    if not target:
        return False
    if target.startswith("/"):
        resolved = posixpath.normpath(target)
    else:  # relative to the link's directory; ".." above / stays at / as the kernel does
        resolved = posixpath.normpath(posixpath.join("/", posixpath.dirname(path), target))
    resolved = "/" + resolved.lstrip("/")
    top = resolved.split("/")[1]
    return top in HOST_ONLY_TOPS and resolved != f"/{top}" and resolved not in provided


def _looks_binary(path: str, record: Record) -> bool:
    return bool(record.mode & 0o111) or ".so" in path.rsplit("/", 1)[-1]


def payload_paths(records: Mapping[str, Record], release_path: str) -> list[str]:
    """What an image carries besides its directories and its own extension-release file."""
    return [p for p, r in records.items() if r.kind != E.DIR and p != release_path]


def refuse_empty(recipe, staged) -> None:
    """An image whose payload ended up empty (every path dropped, excluded, or no package at
    all) is an error naming why, unless the recipe sets ``policy.empty = "allow"`` (issue 16
    §4: it used to build with exit 0 and no word)."""
    if getattr(recipe, "empty_payload", "error") == "allow":
        return
    for image in staged.images:
        if payload_paths(image.tree.records, image.release_path):
            continue
        dropped, excluded = len(staged.report.dropped), staged.report.excluded
        why = "; ".join(
            ([f"{dropped} path{'s' if dropped != 1 else ''} dropped"] if dropped else [])
            + ([f"{excluded} excluded by filter.exclude"] if excluded else [])) \
            or "no package or [files] entry gave it a file"
        raise InputError(f"{recipe.path}: policy.empty", f"the {image.kind} {image.name} would "
                         f"hold only its extension-release file ({why})",
                         "check [[source]], [files], filter.exclude and extension.kind; "
                         "`sysext-pipeline plan` lists what is dropped and why; "
                         'policy.empty = "allow" builds it anyway')
