"""Facts about the host (or an OS tree given with --root) that systemd's rules compare against."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from . import rules
from .images import chase
from .release import FOREIGN_ARCHITECTURES, parse_env_file

HIERARCHIES = {"sysext": ("/usr", "/opt"), "confext": ("/etc",)}
META_DIRS = {"sysext": ".systemd-sysext", "confext": ".systemd-confext"}
UNITS = {"sysext": "systemd-sysext.service", "confext": "systemd-confext.service"}


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
    return FOREIGN_ARCHITECTURES.get(machine) or machine


_LIB_RE = re.compile(r"libsystemd-shared-(\d+)(?:\.(\d+))?")


def systemd_version(root: Path | None = None) -> rules.Version | None:
    """The installed systemd: ``systemctl --version`` on the host; in a --root tree the dpkg
    status, else the libsystemd-shared-NNN.so file name (major version only)."""
    if root is None:
        try:
            proc = subprocess.run(["systemctl", "--version"], capture_output=True, text=True,
                                  check=False)
        except FileNotFoundError:
            proc = None
        if proc and proc.returncode == 0 and proc.stdout:
            return rules.parse_version(proc.stdout.splitlines()[0])
        root = Path("/")
    root = Path(root)
    status = root / "var/lib/dpkg/status"
    if status.is_file():
        text = status.read_text(errors="replace")
        match = re.search(r"^Package: systemd\n(?:[^\n]+\n)*?Version: (\S+)", text, re.M)
        if match:
            return rules.parse_version(match.group(1))
    for pattern in ("usr/lib/*/systemd/libsystemd-shared-*.so", "usr/lib/systemd/libsystemd-shared-*.so",
                    "usr/lib64/systemd/libsystemd-shared-*.so", "lib/*/systemd/libsystemd-shared-*.so"):
        for lib in sorted(root.glob(pattern)):
            match = _LIB_RE.search(lib.name)
            if match:
                return (int(match.group(1)), int(match.group(2)) if match.group(2) else 999)
    return None


def in_initrd(root: Path | None, version: rules.Version) -> bool:
    """systemd ≤258 asks the running system; 259+ looks at /etc/initrd-release in --root."""
    env = os.environ.get("SYSTEMD_IN_INITRD")
    if env is not None and env.strip().lower() in ("1", "yes", "true", "on", "0", "no",
                                                   "false", "off"):
        return env.strip().lower() in ("1", "yes", "true", "on")
    if root is not None and version[0] >= 259:
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
        from .release import architecture_problem

        problem = architecture_problem(arch)
        if problem and arch not in FOREIGN_ARCHITECTURES:
            raise InputError("--arch", f"{arch!r} {problem}")
        arch = FOREIGN_ARCHITECTURES.get(arch) or arch
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
        for version in ((252, 0), (254, 0), (258, 0)):
            for initrd in (False, True):
                for d in rules.search_dirs(kind, version, initrd):
                    if d not in every:
                        every.append(d)
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
            if child.is_dir() and child.name.endswith(".v") and host.version[0] >= 256:
                name = child.name[:-2].removesuffix(".raw")
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
    for d in ("etc/systemd/system/sysinit.target.wants", "etc/systemd/system/multi-user.target.wants",
              "usr/lib/systemd/system/sysinit.target.wants", "lib/systemd/system/sysinit.target.wants"):
        if (host.base / d / unit).is_symlink() or (host.base / d / unit).exists():
            return True
    unit_file = None
    for d in ("etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system"):
        if (host.base / d / unit).exists():
            unit_file = host.base / d / unit
            break
    return False if unit_file else None


def unit_wanted_by(host: Host, kind: str) -> str:
    """The target the unit's [Install] section names (sysinit.target for systemd's units)."""
    for d in ("etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system"):
        path = host.base / d / UNITS[kind]
        if path.is_file():
            match = re.search(r"^WantedBy=(\S+)", path.read_text(errors="replace"), re.M)
            if match:
                return match.group(1)
    return "sysinit.target"


def unit_file_path(host: Host, kind: str) -> str:
    for d in ("usr/lib/systemd/system", "lib/systemd/system", "etc/systemd/system"):
        if (host.base / d / UNITS[kind]).is_file():
            return "/" + d + "/" + UNITS[kind]
    return "/usr/lib/systemd/system/" + UNITS[kind]
