"""Facts about the host (or an OS tree given with --root) that systemd's rules compare against."""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

from .. import tools
from ..errors import BuildError, InputError
from ..sources.debian import stanzas
from ..systemd import rules
from ..systemd.release import (
    FOREIGN_ARCHITECTURES,
    HIERARCHIES,
    architecture_problem,
    parse_env_file,
    systemd_architecture,
)
from .images import chase

META_DIRS = {"sysext": ".systemd-sysext", "confext": ".systemd-confext"}
UNITS = {"sysext": "systemd-sysext.service", "confext": "systemd-confext.service"}
#: Unit directories in systemd's order (the administrator's /etc first), relative to the root.
UNIT_DIRS = ("etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system")


@dataclass
class OsRelease:
    fields: dict[str, str]
    path: str | None  # where it was found (None: nowhere)


def os_release(root: Path | None = None, override: Path | None = None) -> OsRelease:
    """os-release as systemd finds it: $SYSTEMD_OS_RELEASE (no root), /etc, then /usr/lib."""
    if override is not None:
        if not Path(override).is_file():
            raise InputError(str(override), "no such os-release file")
        return OsRelease(parse_env_file(Path(override).read_text(errors="replace")),
                         str(override))
    base = Path(root or "/")
    candidates = ["etc/os-release", "usr/lib/os-release"]
    env = os.environ.get("SYSTEMD_OS_RELEASE")
    if env and root is None:
        candidates = [env.lstrip("/")]
    for rel in candidates:
        resolved = chase(base, rel)
        if resolved is not None and resolved.is_file():
            return OsRelease(parse_env_file(resolved.read_text(errors="replace")),
                             "/" + rel)
    return OsRelease({}, None)


def architecture(machine: str | None = None) -> str:
    """The kernel's architecture in systemd's spelling (uname -m x86_64 → x86-64)."""
    machine = machine or platform.machine()
    return systemd_architecture(machine) or machine


_LIB_RE = re.compile(r"libsystemd-shared-(\d+(?:\.\d+)?)")


def systemd_version(root: Path | None = None) -> rules.Version | None:
    """The installed systemd: ``systemctl --version`` on the host; in a --root tree the dpkg
    status, else the libsystemd-shared-NNN.so file name (major version only).

    A package version without a point release ('254-1') is 254.0; the library's file name never
    carries the point, so that one is read like ``--systemd 254`` (the newest 254.x)."""
    if root is None:
        try:
            answer = tools.run("systemctl", ["--version"], what="asking its version").stdout
        except BuildError:  # no systemctl (a container): read the files below
            answer = b""
        if answer.strip():
            return rules.parse_installed_version(
                answer.decode(errors="replace").splitlines()[0])
        root = Path("/")
    root = Path(root)
    status = root / "var/lib/dpkg/status"
    if status.is_file():
        for package in stanzas(status.read_text(errors="replace"), frozenset({"Package",
                                                                              "Version"})):
            if package.get("Package") == "systemd" and "Version" in package:
                return rules.parse_installed_version(package["Version"])
    for pattern in ("usr/lib/*/systemd/libsystemd-shared-*.so", "usr/lib/systemd/libsystemd-shared-*.so",
                    "usr/lib64/systemd/libsystemd-shared-*.so", "lib/*/systemd/libsystemd-shared-*.so"):
        for lib in sorted(root.glob(pattern)):
            match = _LIB_RE.search(lib.name)
            if match:
                return rules.parse_version(match.group(1))
    return None


def in_initrd(root: Path | None, version: rules.Version) -> bool:
    """systemd ≤258 asks the running system; 259+ looks at /etc/initrd-release in --root."""
    env = os.environ.get("SYSTEMD_IN_INITRD")
    if env is not None and env.strip().lower() in ("1", "yes", "true", "on", "0", "no",
                                                   "false", "off"):
        return env.strip().lower() in ("1", "yes", "true", "on")
    if root is not None and rules.since("scope.initrd-from-root", version):
        return (Path(root) / "etc/initrd-release").exists()
    return Path("/etc/initrd-release").exists()


@dataclass
class Host:
    root: Path | None
    os_release: OsRelease
    architecture: str
    version: rules.Version
    version_source: str
    initrd: bool

    @property
    def base(self) -> Path:
        return Path(self.root or "/")

    def host_path(self, path: Path) -> str:
        """``path`` (a real path, inside --root) as the host will see it: '/var/lib/…'."""
        return "/" + str(path.relative_to(self.base)) if self.root else str(path)

    def facts(self) -> rules.HostFacts:
        return rules.HostFacts(self.os_release.fields, self.architecture, self.version,
                               self.initrd, str(self.root or "/"))

    def as_dict(self) -> dict:
        return {"root": str(self.root or "/"), "os_release": self.os_release.fields,
                "os_release_path": self.os_release.path, "architecture": self.architecture,
                "systemd": rules.format_version(self.version),
                "systemd_source": self.version_source, "initrd": self.initrd}


def detect(root: Path | None = None, *, os_release_file: Path | None = None,
           arch: str | None = None, systemd: str | None = None,
           initrd: bool | None = None) -> Host:
    if root is not None and not Path(root).is_dir():
        raise InputError(str(root), "--root is not a directory")
    if systemd:
        try:
            version = rules.parse_version(systemd)
        except ValueError:
            raise InputError("--systemd", f"not a systemd version: {systemd!r}", "e.g. 254 or 254.5")
        source = "--systemd"
    else:
        found = systemd_version(root)
        source = "systemctl --version" if root is None else "the tree"
        if found is None and root is not None:  # a bare tree: the host's systemd will merge it
            found, source = systemd_version(None), "the host (the tree has no systemd)"
        if found is None:
            raise InputError(str(root or "/"), "cannot tell which systemd is installed",
                             "pass --systemd N")
        version = found
    if not rules.OLDEST <= version[0] <= rules.NEWEST:
        raise InputError("--systemd", f"systemd {version[0]} is outside what is modelled",
                         f"{rules.OLDEST}–{rules.NEWEST}")
    if arch:
        problem = architecture_problem(arch)
        if problem and arch not in FOREIGN_ARCHITECTURES:
            raise InputError("--arch", f"{arch!r} {problem}")
        arch = architecture(arch)
    return Host(root=Path(root) if root else None,
                os_release=os_release(root, os_release_file),
                architecture=arch or architecture(), version=version, version_source=source,
                initrd=in_initrd(root, version) if initrd is None else initrd)


# ---- what is installed and what is merged --------------------------------------------------

@dataclass
class Installed:
    """One entry in a search directory."""

    kind: str
    directory: str  # search directory as on the host ('/var/lib/extensions')
    path: Path  # real path (inside --root)
    name: str | None  # systemd's name for it (None: never discovered)
    shadowed_by: Path | None = None


def installed(host: Host, kind: str, include_unsearched: bool = True) -> list[Installed]:
    """Every entry of every directory any systemd version searches for ``kind``, in order;
    ``shadowed_by`` set where an earlier searched directory holds the same name."""
    searched = rules.search_dirs(kind, host.version, host.initrd)
    every = list(searched)
    if include_unsearched:
        for major in rules.SEARCH_DIRS_CHANGE:
            for initrd in (False, True):
                for d in rules.search_dirs(kind, (major, 0), initrd):
                    if d not in every:
                        every.append(d)
        # where people put confexts by analogy with /etc/extensions; systemd never looks there
        if kind == "confext" and "/etc/confexts" not in every:
            every.append("/etc/confexts")
    out: list[Installed] = []
    first: dict[str, Path] = {}
    for directory in every:
        real = chase(host.base, directory)
        if real is None or not real.is_dir():
            continue
        for child in sorted(real.iterdir()):
            if child.name in (".", "..") or child.name.startswith(".#"):
                continue
            is_dir = child.is_dir() if host.root is None else (child.is_dir()
                                                               and not child.is_symlink())
            name = rules.discovered_name(child.name, is_dir, kind, host.version)
            if name is not None and not is_dir and not child.is_file():
                name = None
            if child.is_dir() and child.name.endswith(".v") and \
                    rules.reads_v_directories(host.version):
                name = rules.v_directory_image_name(child.name)
            entry = Installed(kind, directory, child, name)
            if name is not None and directory in searched:
                if name in first:
                    entry.shadowed_by = first[name]
                else:
                    first[name] = child
            out.append(entry)
    return out


@dataclass
class MergeState:
    kind: str
    hierarchy: str
    merged: bool
    extensions: list[str] = field(default_factory=list)
    since: float | None = None  # mtime of the merged hierarchy's top (the merge time)


def merge_state(host: Host, kind: str) -> list[MergeState]:
    """What is merged now: ``HIERARCHY/.systemd-sysext/extensions`` on a mount point."""
    out = []
    for hierarchy in HIERARCHIES[kind]:
        real = chase(host.base, hierarchy.lstrip("/"))
        meta = real / META_DIRS[kind] if real else None
        if real is None or meta is None or not (meta / "dev").exists():
            out.append(MergeState(kind, hierarchy, False))
            continue
        names_file = meta / "extensions"
        names = names_file.read_text().split() if names_file.exists() else []
        out.append(MergeState(kind, hierarchy, os.path.ismount(real), names,
                              real.stat().st_mtime))
    return out


def unit_enabled(host: Host, kind: str) -> bool | None:
    """Whether the merge service is enabled (a wants symlink in /etc or a preset-made one)."""
    unit = UNITS[kind]
    wants = [f"{d}/sysinit.target.wants" for d in UNIT_DIRS]
    wants.append(f"{UNIT_DIRS[0]}/multi-user.target.wants")
    for d in wants:
        if (host.base / d / unit).is_symlink() or (host.base / d / unit).exists():
            return True
    return False if any((host.base / d / unit).exists() for d in UNIT_DIRS) else None


def unit_wanted_by(host: Host, kind: str) -> str:
    """The target the unit's [Install] section names (sysinit.target for systemd's units)."""
    for d in UNIT_DIRS:
        path = host.base / d / UNITS[kind]
        if path.is_file():
            match = re.search(r"^WantedBy=(\S+)", path.read_text(errors="replace"), re.M)
            if match:
                return match.group(1)
    return "sysinit.target"


def unit_file_path(host: Host, kind: str) -> str:
    """The unit file an [Install] symlink points at: the vendor's copy first."""
    vendor_first = (*UNIT_DIRS[1:], UNIT_DIRS[0])
    for d in vendor_first:
        if (host.base / d / UNITS[kind]).is_file():
            return "/" + d + "/" + UNITS[kind]
    return "/" + vendor_first[0] + "/" + UNITS[kind]
