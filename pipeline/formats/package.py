"""A package file opened once: the bytes that are parsed are the bytes that are hashed.

:class:`Package` reads the metadata on construction (``info``); :meth:`Package.entries` streams
the payload, then reads whatever is left of the file and compares the sha256 of every byte read
with the one the fetch stage verified. A file swapped or changed in a shared cache between
verification and extraction is an error before anything is published, never a silent change.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .compression import HashingReader, Limits, check_read_sha256
from .deb import DebReader
from .entry import Entry
from .rpm import RpmReader


class Package:
    """``decoded``: the .deb's data.tar member decoded before (see :class:`DebReader`); the
    package owns it (closed with the package)."""

    def __init__(self, path: str | os.PathLike[str], fmt: str, *, sha256: str | None = None,
                 limits: Limits | None = None, name: str | None = None,
                 decoded: BinaryIO | None = None):
        self.name = name or Path(path).name
        self.decoded = decoded
        self.expected = sha256
        self.sha256: str | None = None  # of the bytes read, once entries() is through
        self.size = 0
        try:
            self._file = open(path, "rb")  # noqa: SIM115 - closed by close()/__exit__
        except BaseException:
            if decoded is not None:
                decoded.close()
            raise
        self._hash = hashlib.sha256()
        self._stream = HashingReader(self._file, self._hash)
        try:
            if fmt == "deb":
                self._reader = DebReader(self._stream, self.name, limits, decoded=decoded)
            else:
                self._reader = RpmReader(self._stream, self.name, limits)
        except BaseException:
            self.close()
            raise
        self.info = self._reader.info

    def entries(self) -> Iterator[Entry]:
        yield from self._reader.entries()
        self._stream.drain()
        self.sha256, self.size = self._hash.hexdigest(), self._stream.size
        if self.expected is not None:
            check_read_sha256(self.name, self.sha256, self.expected)

    def start(self) -> None:
        """Start decompressing the payload ahead of entries(), where the reader can (deb)."""
        getattr(self._reader, "start", lambda: None)()

    def close(self) -> None:
        self._file.close()
        if self.decoded is not None:
            self.decoded.close()

    def __enter__(self) -> Package:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def decode_payload(path: str | os.PathLike[str], sha256: str, out: BinaryIO, *,
                   limits: Limits | None = None, name: str | None = None) -> int | None:
    """The decoded data.tar member of the .deb at ``path`` written to ``out`` (for a catalogue
    build's builds to read instead of decoding it each: :class:`DebReader`'s ``decoded``); its
    size, or None when the member is not compressed. Every byte of the file is hashed while
    read: a file whose sha256 is not ``sha256`` is an error, so the bytes written are the
    decoding of that very file."""
    name = name or Path(path).name
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        stream = HashingReader(file, digest)
        size = DebReader(stream, name, limits).decode_data(out)
        stream.drain()
    check_read_sha256(name, digest.hexdigest(), sha256)
    return size
