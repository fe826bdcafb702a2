"""Debian binary packages: ``ar`` ( debian-binary, control.tar.*, data.tar.* ).

Read in one forward pass from the file, like dpkg-deb does: the payload is never unpacked to
disk or memory by this module, only turned into :class:`Entry` objects for the staging writer.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import InputError
from .ar import ArMember, read_ar
from .compression import open_decompressed, read_upto
from .entry import FILE, Entry, PackageInfo
from .tar import tar_entries

MAX_CONTROL_FILE = 4 << 20  # control/conffiles are a few KiB; refuse to buffer absurd ones


def read_deb(path: str | os.PathLike[str]) -> Iterator[Entry]:
    """Yield the entries of the package's data.tar.{gz,xz,zst,bz2,lzma} (or plain data.tar)."""
    name = Path(path).name
    with open(path, "rb") as f:
        for member in _members(f, name, "data.tar"):
            yield from tar_entries(_decompressed(member, name), f"{name}:{member.name}")
            return
    raise InputError(name, "no data.tar member", "not a binary package?")


#: control.tar members that dpkg runs at install time (an extension never runs them).
MAINTAINER_SCRIPTS = ("preinst", "postinst", "prerm", "postrm", "config")


def deb_info(path: str | os.PathLike[str]) -> PackageInfo:
    """Name, version, architecture (from control) and conffiles (from control.tar.*)."""
    name = Path(path).name
    control: str | None = None
    conffiles: list[str] = []
    scripts: list[str] = []
    with open(path, "rb") as f:
        for member in _members(f, name, "control.tar"):
            where = f"{name}:{member.name}"
            for entry in tar_entries(_decompressed(member, name), where):
                base = entry.path.removeprefix("./")
                if entry.kind == FILE and base in MAINTAINER_SCRIPTS:
                    scripts.append(base)
                if entry.kind != FILE or base not in ("control", "conffiles"):
                    continue
                if entry.size > MAX_CONTROL_FILE:
                    raise InputError(entry.member, f"absurd size {entry.size}")
                text = read_upto(entry.data, entry.size).decode("utf-8", "replace")
                if base == "control":
                    control = text
                else:
                    conffiles = _conffiles(text)
            break
    if control is None:
        raise InputError(f"{name}:control.tar", "no control file")
    fields = parse_control(control)
    missing = [k for k in ("Package", "Version", "Architecture") if not fields.get(k)]
    if missing:
        raise InputError(f"{name}:control", f"missing field(s) {', '.join(missing)}")
    return PackageInfo(
        name=fields["Package"],
        version=fields["Version"],
        architecture=fields["Architecture"],
        format="deb",
        config_files=tuple(conffiles),
        scripts=tuple(sorted(scripts)),
    )


def parse_control(text: str) -> dict[str, str]:
    """The first stanza of a deb822 control file; continuation lines are joined with newlines."""
    fields: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        if line[0] in " \t" and key:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip()
            fields[key] = value.strip()
    return fields


def _conffiles(text: str) -> list[str]:
    """Paths from conffiles; dpkg ≥1.20.1 allows flags before the path (remove-on-upgrade)."""
    return [line.split()[-1] for line in text.splitlines() if line.strip()]


def _members(f, name: str, wanted: str) -> Iterator[ArMember]:
    """Check the ar layout dpkg requires and yield the member whose name starts with ``wanted``."""
    members = read_ar(f, name)
    first = next(members, None)
    if first is None or first.name != "debian-binary":
        raise InputError(name, "first member is not debian-binary", "not a .deb package")
    version = read_upto(first.data, 64).decode("ascii", "replace")
    if not version.startswith("2."):
        raise InputError(f"{name}:debian-binary", f"unsupported format version {version.strip()!r}",
                         "only 2.x packages exist")
    for member in members:
        if member.name == wanted or member.name.startswith(wanted + "."):
            yield member
            return


def _decompressed(member: ArMember, name: str):
    return open_decompressed(member.data, member.name, f"{name}:{member.name}")
