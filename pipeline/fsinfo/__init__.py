"""The one door for reading an image's file system: squashfs, erofs, a directory, or the root/usr
partition of a DDI.

- What it is: :func:`locate` (→ :class:`FileSystem`), :func:`sniff` (magic at an offset).
- Its settings: :func:`superblock` (pure Python, from the on-disk structs), :func:`settings`,
  :func:`region`, :func:`superblock_span`; :func:`first_difference`, :func:`read_range` and
  :func:`copy_range` for byte ranges (a partition is just a range of its disk image).
- Its tree: :func:`walk_image` (manifest-shaped entries with sha256, streamed, in
  :func:`tree_key` order), :func:`list_image` (no contents), :func:`walk_dir` (a directory).
- Its files: :func:`read_file` (one file's bytes), :func:`extract` (selected paths, with owners
  and xattrs as far as the method allows), :func:`opened` (the whole tree as a directory).

How — a mount in a private namespace as root, else unsquashfs or fsck.erofs — is decided in
access.py only. Callers never run those tools or mount anything themselves. Callers reading an
image they did not make (or could not verify) pass ``trusted=False``: it is then never mounted,
only read by the userspace tools (a crafted file system must not reach the kernel's driver).
"""

from .access import FileSystem, View, extract, list_image, locate, opened, read_file, walk_image
from .ondisk import (
    copy_range,
    first_difference,
    read_range,
    region,
    settings,
    sniff,
    superblock,
    superblock_span,
)
from .tree import ROOT, tree_key, walk_dir

__all__ = [
    "ROOT", "FileSystem", "View", "copy_range", "extract", "first_difference", "list_image",
    "locate", "opened", "read_file", "read_range", "region", "settings", "sniff", "superblock",
    "superblock_span", "tree_key", "walk_dir", "walk_image",
]
