"""File tree entries in the manifest's shape, from a directory or from an ``unsquashfs`` listing.

An entry is a dict: path (relative, no leading slash; the root is ``.``), type (file, dir,
symlink, chardev, blockdev, fifo, socket), mode (``"0755"``), uid, gid, and where known mtime,
size, sha256, target, rdev and xattrs (name → hex value) — so an image's tree compares directly
with a manifest's ``files``. Every stream is in :func:`tree_key` order (depth first, names
sorted), so two trees can be merged entry by entry without holding either in memory.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

from ...digest import hash_file

ROOT = "."  # the image's root directory in a walked tree (manifests do not list it)
_KINDS = {"-": "file", "d": "dir", "l": "symlink", "c": "chardev", "b": "blockdev", "p": "fifo",
          "s": "socket"}


def tree_key(path: str) -> tuple[str, ...]:
    """The order every tree stream is in: depth first, names sorted (the root first)."""
    return () if path == ROOT else tuple(path.split("/"))


def walk_dir(root: Path, *, include_root: bool = True, hashes: bool = True) -> Iterator[dict]:
    """Entries of the directory tree at ``root``, in :func:`tree_key` order; file contents are
    hashed streaming (``hashes=False``: a listing, no file is opened). Memory: the names of the
    directories on the current path, nothing more."""
    root = Path(root)
    if include_root:
        yield _entry(root, ROOT, hashes)
    stack = [iter(_children(root, ""))]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        path, full = item
        entry = _entry(full, path, hashes)
        yield entry
        if entry["type"] == "dir":
            stack.append(iter(_children(full, path)))


def _children(directory: Path, rel: str) -> list[tuple[str, Path]]:
    return [(f"{rel}/{name}" if rel else name, directory / name)
            for name in sorted(os.listdir(directory))]


def _entry(full: Path, path: str, hashes: bool) -> dict:
    st = full.lstat()
    mode = st.st_mode
    kind = ("dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else
            "symlink" if stat.S_ISLNK(mode) else "chardev" if stat.S_ISCHR(mode) else
            "blockdev" if stat.S_ISBLK(mode) else "fifo" if stat.S_ISFIFO(mode) else "socket")
    item: dict = {"path": path, "type": kind, "mode": f"{stat.S_IMODE(mode):04o}",
                  "uid": st.st_uid, "gid": st.st_gid, "mtime": int(st.st_mtime)}
    if kind == "file":
        item["size"] = st.st_size
        if hashes:
            item["sha256"] = hash_file(full)[0]
        if st.st_nlink > 1:
            item["nlink"] = st.st_nlink  # image trees only: manifests do not record it
    elif kind == "symlink":
        item["target"] = os.readlink(full)
    elif kind in ("chardev", "blockdev"):
        item["rdev"] = f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
    try:
        names = sorted(os.listxattr(full, follow_symlinks=False))
    except OSError:
        names = []
    if names:
        item["xattrs"] = {n: os.getxattr(full, n, follow_symlinks=False).hex() for n in names}
    return item


# unsquashfs -lln: "drwxr-xr-x 0/0  26 2024-01-01 00:00 /usr" ("1,  3" as the size of a device)
_LLN = re.compile(r"^(?P<mode>[-dlcbps][-rwxsStT]{9})\s+(?P<uid>\d+)/(?P<gid>\d+)\s+"
                  r"(?P<size>\d+|\d+,\s*\d+)\s+\S+\s+\S+\s?(?P<path>.*)$")


def lln_entry(line: str) -> dict | None:
    """One line of ``unsquashfs -lln`` as an entry (None: not an entry line). The listing has
    no mtime (minutes only), no xattrs and no contents, so those keys are absent."""
    match = _LLN.match(line)
    if not match:
        return None
    path, target = match["path"].lstrip("/") or ROOT, None
    kind = _KINDS[match["mode"][0]]
    if kind == "symlink" and " -> " in path:
        path, target = path.split(" -> ", 1)
    item: dict = {"path": path, "type": kind, "mode": f"{_mode_bits(match['mode']):04o}",
                  "uid": int(match["uid"]), "gid": int(match["gid"])}
    if kind == "file":
        item["size"] = int(match["size"])
    elif kind == "symlink":
        item["target"] = target
    elif kind in ("chardev", "blockdev"):
        item["rdev"] = re.sub(r"\s+", "", match["size"])
    return item


def _mode_bits(text: str) -> int:
    """``-rwsr-xr-t`` → 0o5755 (s/S: set-id with/without x, t/T: sticky with/without x)."""
    bits = 0
    for i, special in enumerate((0o4000, 0o2000, 0o1000)):
        r, w, x = text[1 + 3 * i:4 + 3 * i]
        shift = 6 - 3 * i
        bits |= (r == "r") << (shift + 2) | (w == "w") << (shift + 1)
        bits |= (x in "xst") << shift
        if x in "sStT":
            bits |= special
    return bits
