"""The one record every archive reader yields and the one staging writer consumes.

Keeping a single shape is what lets path safety live in exactly one place (StagingTree): readers
report what the archive *says*, unfiltered, and never touch the file system themselves.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import BinaryIO

FILE = "file"
DIR = "dir"
SYMLINK = "symlink"
HARDLINK = "hardlink"  # target = archive path of an earlier regular file in the same package
CHARDEV = "chardev"
BLOCKDEV = "blockdev"
FIFO = "fifo"
SOCKET = "socket"
KINDS = (FILE, DIR, SYMLINK, HARDLINK, CHARDEV, BLOCKDEV, FIFO, SOCKET)


@dataclass
class Entry:
    """One archive member, as the archive describes it.

    ``path`` is the member name as stored (``./usr/bin/x``, ``usr/bin/x`` or even ``/usr/bin/x``
    or ``../x`` for hostile input): the writer normalizes and judges it. ``mode`` holds only the
    permission bits (including setuid/setgid/sticky, i.e. ``mode & 0o7777``). ``data`` is a
    stream of exactly ``size`` bytes for regular files, valid only until the reader is advanced.
    ``member`` names the entry for error messages, e.g. ``jq_1.6.deb:data.tar.xz:./usr/bin/jq``.
    """

    path: str
    kind: str
    mode: int
    uid: int = 0
    gid: int = 0
    uname: str | None = None
    gname: str | None = None
    mtime: int = 0
    size: int = 0
    target: str | None = None
    xattrs: dict[str, bytes] = field(default_factory=dict)
    data: BinaryIO | None = None
    member: str = ""
    rdev: tuple[int, int] | None = None


@dataclass(frozen=True)
class PackageInfo:
    """What a package says about itself; ``config_files`` are absolute paths it marks as config."""

    name: str
    version: str
    architecture: str
    format: str  # "deb" | "rpm"
    config_files: tuple[str, ...] = ()
    scripts: tuple[str, ...] = ()  # maintainer scripts (postinst, %post, …): never run in an image
    control: str | None = field(default=None, repr=False, compare=False)  # a deb's, for the SBOM


#: Longest member name or link target a reader accepts, in bytes (Linux PATH_MAX).
MAX_NAME = 4096
#: How much of a name a message, log line or manifest entry shows.
SHOWN_CHARS = 160


def shown(name: str | bytes, limit: int = SHOWN_CHARS) -> str:
    """``name`` as it may appear in a message: control characters, undecodable bytes and
    invisible format characters escaped (``\\n``, ``\\xe9``, ``\\u202e``), cut to ``limit``
    characters with the length said. The one way any reader echoes an archive's names."""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "surrogateescape")
    if len(name) <= limit and name.isascii() and name.isprintable() and "\\" not in name:
        return name  # the common case: nothing to escape (isprintable: no control characters)
    out = []
    for ch in name[: limit + 1]:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch == "\\":
            out.append("\\\\")
        elif ch in "\n\t\r":
            out.append(repr(ch)[1:-1])
        elif o < 0x20 or 0x7F <= o < 0xA0:
            out.append(f"\\x{o:02x}")
        elif unicodedata.category(ch) in ("Cf", "Zl", "Zp", "Cs", "Co"):
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    if len(name) > limit:
        return "".join(out[:limit]) + f"…({len(name)} chars)"
    return "".join(out)
