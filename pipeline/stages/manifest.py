"""The manifest: the machine contract of a build (schema-versioned JSON).

It holds everything a second machine needs to rebuild and two machines need to compare — and
nothing that differs between two honest builds (no build paths, durations or host names), so a
reproduced build reproduces its manifest byte for byte too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import json
import os
import platform
from pathlib import Path

from .. import __version__
from ..formats import entry as E
from .staging import Record

#: 2: files that are hard links of each other carry ``hardlink`` (the group's first path), so
#: a hardlinked tree and a copied one differ in the file list and the tree hash.
SCHEMA = 2


def hardlink_groups(records: dict[str, Record], root: Path | None = None) -> dict[str, str]:
    """Path → the first path (sorted) of its group, for every regular file that shares its
    inode with another. From the tree on disk when ``root`` is given (what is packed), else
    from the records (a hard link shares its target's record)."""
    groups: dict[object, list[str]] = {}
    for path in sorted(records):
        record = records[path]
        if record.kind != E.FILE:
            continue
        if root is not None:
            st = os.lstat(Path(root) / path)
            if st.st_nlink < 2:
                continue
            key = (st.st_dev, st.st_ino)
        else:
            key = id(record)
        groups.setdefault(key, []).append(path)
    return {path: members[0] for members in groups.values() if len(members) > 1
            for path in members}


def file_entries(records: dict[str, Record], root: Path | None = None) -> list[dict]:
    """Every path in the image, sorted, with what `unsquashfs -lln` and friends would show;
    members of a hard-link group name its first path in ``hardlink`` (see hardlink_groups)."""
    links = hardlink_groups(records, root)
    entries = []
    for path in sorted(records):
        r = records[path]
        item = {"path": path, "type": r.kind, "mode": f"{r.mode:04o}", "uid": r.uid,
                "gid": r.gid, "mtime": r.mtime}
        if r.kind == E.FILE:
            item["size"] = r.size
            item["sha256"] = r.sha256
            if path in links:
                item["hardlink"] = links[path]
        if r.kind == E.SYMLINK:
            item["target"] = r.target
        if r.xattrs:
            item["xattrs"] = {k: v.hex() for k, v in sorted(r.xattrs.items())}
        entries.append(item)
    return entries


def tree_digest(files: list[dict]) -> str:
    """One hash for the file tree, comparable across tool versions that change image bytes."""
    return hashlib.sha256(canonical_json(files)).hexdigest()


def canonical_json(data) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def dumps(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


@functools.cache
def library_versions() -> dict[str, str]:
    """Compression library versions: same mksquashfs + different libzstd = different bytes."""
    probes = {"zstd": "ZSTD_versionString", "lzma": "lzma_version_string",
              "lz4": "LZ4_versionString", "z": "zlibVersion"}
    found = {}
    for lib, symbol in probes.items():
        name = ctypes.util.find_library(lib)
        if not name:
            continue
        try:
            fn = getattr(ctypes.CDLL(name), symbol)
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_char_p
        found[f"lib{lib}"] = fn().decode()
    return found


def tool_versions(image_tools: dict[str, str | None]) -> dict[str, str | None]:
    versions = {"sysext-pipeline": __version__, "python": platform.python_version()}
    versions.update(image_tools)
    versions.update(library_versions())
    return versions


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())
