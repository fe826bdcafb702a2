"""A minimal, streaming reader of Unix ``ar`` archives — the container of a .deb.

Only what dpkg writes is needed: the ``!<arch>`` magic, 60-byte member headers, GNU-style
``name/`` terminators and the 2-byte alignment pad. Members are handed out as bounded streams in
archive order; whatever a consumer does not read is skipped before the next header.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from ..errors import InputError
from .compression import LimitedReader, read_exact, read_upto
from .entry import shown

MAGIC = b"!<arch>\n"
HEADER_SIZE = 60


@dataclass
class ArMember:
    """One member; ``data`` yields exactly ``size`` bytes and is valid until the next member."""

    name: str
    size: int
    mtime: int
    mode: int
    data: LimitedReader


def read_ar(stream: BinaryIO, where: str) -> Iterator[ArMember]:
    """Yield the members of the ar archive ``stream``; ``where`` names it in errors."""
    if read_upto(stream, len(MAGIC)) != MAGIC:
        raise InputError(where, "not an ar archive (bad magic)", "is this really a .deb?")
    while True:
        header = read_upto(stream, HEADER_SIZE)
        if not header:
            return
        if len(header) == 1 and header == b"\n":  # some writers pad the very end
            return
        if len(header) != HEADER_SIZE or header[58:60] != b"`\n":
            raise InputError(where, "corrupt or truncated ar member header")
        name = header[0:16].decode("ascii", "replace").rstrip(" ")
        if name.endswith("/") and name not in ("/", "//"):
            name = name[:-1]
        size = _number(header[48:58], 10, where, name)
        member = ArMember(
            name=name,
            size=size,
            mtime=_number(header[16:28], 10, where, name),
            mode=_number(header[40:48], 8, where, name),
            data=LimitedReader(stream, size, f"{where}:{shown(name)}"),
        )
        yield member
        member.data.skip_rest()
        if size % 2:
            read_exact(stream, 1, f"{where}:{shown(name)}", "padding")


def _number(field: bytes, base: int, where: str, name: str) -> int:
    text = field.decode("ascii", "replace").strip()
    if not text:
        return 0
    try:
        value = int(text, base)
    except ValueError:
        raise InputError(f"{where}:{shown(name)}", f"bad number {shown(text)!r} in ar header") \
            from None
    if value < 0:
        raise InputError(f"{where}:{shown(name)}", f"negative number {text!r} in ar header")
    return value
