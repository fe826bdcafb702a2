"""The one way a whole file is hashed: sha256 in 1 MiB chunks, with its size.

It sits at the bottom of the house because every wing needs it (the cache checks downloads with
it, the image readers and writers check partitions, the reproduce wing compares outputs) and
none of them should import another's machinery to get it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20


def hash_open(fh: BinaryIO) -> tuple[str, int]:
    """(sha256 hex, size) of what is left to read in ``fh``."""
    digest = hashlib.sha256()
    size = 0
    while chunk := fh.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def hash_file(path: str | Path) -> tuple[str, int]:
    """(sha256 hex, size) of the file at ``path``."""
    with open(path, "rb") as fh:
        return hash_open(fh)
