"""The one door for reading an image's file system: squashfs, erofs, a directory, or the root/usr
partition of a DDI.

- What it is: :func:`locate` (→ :class:`FileSystem`), :func:`sniff` (magic at an offset).
- Its settings: :func:`superblock` (pure Python, from the on-disk structs), :func:`settings`,
  :func:`region`, :func:`superblock_span`; :func:`first_difference`, :func:`read_range` and
  :func:`copy_range` for byte ranges (a partition is just a range of its disk image).
- Its tree: :func:`walk_image` (manifest-shaped entries with sha256, streamed, in
  :func:`tree_key` order), :func:`list_image` (no contents), :func:`walk_dir` (a directory).
- Its files: :func:`read_file` (one file's bytes), :func:`extract` (selected paths: contents,
  permission bits and symlinks, never devices, set-id bits or xattrs), :func:`opened` (the
  whole tree as a directory).

How — for an image from anyone (the default), an unpacking by unsquashfs/fsck.erofs onto an
inert tmpfs in a private namespace, erofs metadata parsed in Python (erofs.py); for the
project's own fresh output (``trusted=True``), a read-only nodev,nosuid,noexec mount in a private
namespace — is decided in access.py only. Callers never run those tools or mount anything
themselves, and nothing an image carries (devices, set-id bits, capabilities) reaches the host.
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
