"""Debian binary packages: ``ar`` ( debian-binary, control.tar.*, data.tar.* ).

Read in one forward pass, like dpkg-deb does: :class:`DebReader` reads the control member
(fields, conffiles, md5sums, maintainer scripts), then streams data.tar as :class:`Entry`
objects; the payload is never unpacked to disk or memory by this module. Every regular file the
md5sums control member lists is checked against it while it streams, and a file md5sums lists
that data.tar lacks is an error.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import InputError
from .ar import ArMember, read_ar
from .compression import CHUNK, DigestCheck, Limits, open_decompressed, open_plain, read_upto
from .entry import FILE, HARDLINK, Entry, PackageInfo, shown
from .tar import tar_entries

MAX_CONTROL_FILE = 4 << 20  # control/conffiles are a few KiB; refuse to buffer absurd ones


MAX_MD5SUMS = 16 << 20  # a few MiB for the largest packages (100k files)
_MD5_LINE = re.compile(r"^([0-9a-fA-F]{32}) [ *](.+)$")
#: What dpkg accepts in the identity fields (deb-control(5), deb-version(7)); these end up in
#: messages, the manifest and every record's origin, so nothing else passes.
_FIELD_RULES = {
    "Package": re.compile(r"^[a-z0-9][a-z0-9+.-]{0,253}$"),
    "Version": re.compile(r"^([0-9]+:)?[A-Za-z0-9][A-Za-z0-9.+~:_-]{0,255}$"),
    "Architecture": re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$"),
}


def read_deb(path: str | os.PathLike[str], limits: Limits | None = None) -> Iterator[Entry]:
    """Yield the entries of the package's data.tar.{gz,xz,zst,bz2,lzma} (or plain data.tar)."""
    with open(path, "rb") as f:
        yield from DebReader(f, Path(path).name, limits).entries()


#: control.tar members that dpkg runs at install time (an extension never runs them).
MAINTAINER_SCRIPTS = ("preinst", "postinst", "prerm", "postrm", "config")


def deb_info(path: str | os.PathLike[str]) -> PackageInfo:
    """Name, version, architecture (from control) and conffiles (from control.tar.*)."""
    with open(path, "rb") as f:
        return DebReader(f, Path(path).name).info


class DebReader:
    """One pass over a .deb read from ``stream``: ``info`` once constructed, then
    :meth:`entries` (once). ``name`` is the file name used in messages.

    ``decoded``: this package's data.tar member decoded before, by a catalogue build that
    decodes each shared package once (pipeline/commands/build.py): its bytes are parsed and
    checked exactly as the decoder's would be, and the compressed member is read (and hashed,
    for the package's sha256) without decoding it again."""

    def __init__(self, stream: BinaryIO, name: str, limits: Limits | None = None, *,
                 decoded: BinaryIO | None = None):
        self.name = name
        self.limits = limits if limits is not None else Limits()
        self.md5sums: dict[str, str] = {}
        self._data = None  # (data.tar member, its decompressed stream) once started
        self._decoded = decoded
        self._members = read_ar(stream, name)
        first = next(self._members, None)
        if first is None or first.name != "debian-binary":
            raise InputError(name, "first member is not debian-binary", "not a .deb package")
        version = read_upto(first.data, 64).decode("ascii", "replace")
        if not version.startswith("2."):
            raise InputError(f"{name}:debian-binary",
                             f"unsupported format version {shown(version.strip())!r}",
                             "only 2.x packages exist")
        member = self._next_member("control.tar")
        if member is None:
            raise InputError(f"{name}:control.tar", "no control file")
        self.info = self._read_control(member)

    def _next_member(self, wanted: str) -> ArMember | None:
        """The next member, which must be ``wanted`` (members named ``_*`` are skipped, as dpkg
        does); None at the end of the archive."""
        for member in self._members:
            if member.name == wanted or member.name.startswith(wanted + "."):
                return member
            if member.name.startswith("_"):
                continue
            if wanted == "data.tar" and _is(member.name, "control.tar"):  # dpkg-deb refuses it
                raise InputError(f"{self.name}:{shown(member.name)}", "a second control.tar "
                                 "member", "dpkg-deb refuses two: the package is corrupt or hostile")
            raise InputError(f"{self.name}:{shown(member.name)}",
                             f"unexpected member where {wanted} belongs",
                             "dpkg requires debian-binary, control.tar, data.tar in this order")
        return None

    def _read_control(self, member: ArMember) -> PackageInfo:
        name = self.name
        control: str | None = None
        conffiles: list[str] = []
        scripts: list[str] = []
        where = f"{name}:{shown(member.name)}"
        for entry in tar_entries(_decompressed(member, name, self.limits, ahead=False), where):
            base = entry.path.removeprefix("./")
            if entry.kind == FILE and base in MAINTAINER_SCRIPTS:
                scripts.append(base)
            if entry.kind != FILE or base not in ("control", "conffiles", "md5sums"):
                continue
            limit = MAX_MD5SUMS if base == "md5sums" else MAX_CONTROL_FILE
            if entry.size > limit:
                raise InputError(entry.member, f"absurd size {entry.size} (limit {limit})")
            text = read_upto(entry.data, entry.size).decode("utf-8", "surrogateescape")
            if base == "control":
                control = text
            elif base == "conffiles":
                conffiles = _conffiles(text)
            else:
                self.md5sums = _md5sums(text, entry.member)
        if control is None:
            raise InputError(f"{name}:control.tar", "no control file")
        fields = parse_control(control)
        missing = [k for k in ("Package", "Version", "Architecture") if not fields.get(k)]
        if missing:
            raise InputError(f"{name}:control", f"missing field(s) {', '.join(missing)}")
        for key, rule in _FIELD_RULES.items():
            if not rule.match(fields[key]):
                raise InputError(f"{name}:control", f"{key} {shown(fields[key])!r} is not a "
                                 f"valid {key.lower()}", "dpkg would refuse this package")
        return PackageInfo(
            name=fields["Package"],
            version=fields["Version"],
            architecture=fields["Architecture"],
            format="deb",
            config_files=tuple(conffiles),
            scripts=tuple(sorted(scripts)),
            control=control,
        )

    def start(self) -> None:
        """Open data.tar now: its decompression thread starts running ahead while the packages
        before this one are written (the extract stage), without waiting for an entry."""
        if self._data is None:
            member = self._next_member("data.tar")
            if member is None:
                raise InputError(self.name, "no data.tar member", "not a binary package?")
            if self._decoded is not None:
                self._data = member, open_plain(self._decoded, f"{self.name}:"
                                                f"{shown(member.name)}", self.limits)
            else:
                self._data = member, _decompressed(member, self.name, self.limits, ahead=True)

    def decode_data(self, out: BinaryIO) -> int | None:
        """Write the decoded data.tar member to ``out`` (nothing is parsed: the build that
        reads it back does that); its size, or None when the member is not compressed (it
        is read as it is, and nothing is written)."""
        member = self._next_member("data.tar")
        if member is None:
            raise InputError(self.name, "no data.tar member", "not a binary package?")
        payload = _decompressed(member, self.name, self.limits, ahead=False)
        if payload.codec == "none":
            return None
        size = 0
        for chunk in iter(lambda: payload.read(CHUNK), b""):
            out.write(chunk)
            size += len(chunk)
        return size

    def entries(self) -> Iterator[Entry]:
        self.start()
        member, payload = self._data
        where = f"{self.name}:{shown(member.name)}"
        seen: dict[str, str] = {}  # md5sums path → md5 of what was extracted there
        for entry in tar_entries(payload, where):
            key = _md5_key(entry.path)
            if entry.kind == FILE:
                check = DigestCheck(entry.data, entry.size, hashlib.md5(),
                                    self.md5sums.get(key), entry.member, "md5sums")
                entry.data = check
                yield entry
                seen[key] = check.finish()
                continue
            if entry.kind == HARDLINK and key in self.md5sums:
                target = seen.get(_md5_key(entry.target or ""))
                if target is not None and target != self.md5sums[key]:
                    raise InputError(entry.member, "content does not match the package's "
                                     "md5sums (a hard link to a file with other content)",
                                     "the package is corrupt or was tampered with")
                if target is not None:
                    seen[key] = target
            yield entry
        missing = sorted(set(self.md5sums) - set(seen))
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise InputError(f"{self.name}:md5sums", f"lists {shown(missing[0])}{more}, which "
                             f"{shown(member.name)} lacks", "the package is corrupt or incomplete")
        for extra in self._members:  # read (and hashed); only dpkg's "_" members may follow
            if not extra.name.startswith("_"):
                raise InputError(f"{self.name}:{shown(extra.name)}", "a second data.tar member"
                                 if _is(extra.name, "data.tar") else "member after data.tar",
                                 "dpkg refuses it: the package is corrupt or hostile")


def _is(name: str, member: str) -> bool:
    """``name`` is a ``member`` (``control.tar``, ``data.tar``) with any compression suffix."""
    return name == member or name.startswith(member + ".")


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


def _md5_key(path: str) -> str:
    """md5sums names files as ``usr/bin/x``; data.tar as ``./usr/bin/x``."""
    while path.startswith(("./", "/")):
        path = path[1:] if path.startswith("/") else path[2:]
    return path


def _md5sums(text: str, member: str) -> dict[str, str]:
    """``md5  path`` lines (md5sum's format); escaped names (a leading backslash) cannot be in
    an image anyway and are left out."""
    sums: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("\\"):
            continue
        match = _MD5_LINE.match(line)
        if not match:
            raise InputError(f"{member} line {number}", "malformed md5sums line",
                             "expected: 32 hex digits, two spaces, a path")
        sums[_md5_key(match[2])] = match[1].lower()
    return sums


def _decompressed(member: ArMember, name: str, limits: Limits, *, ahead: bool):
    return open_decompressed(member.data, member.name, f"{name}:{shown(member.name)}", limits,
                             ahead=ahead)
