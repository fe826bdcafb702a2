"""A copy of the staging tree whose directories list their entries in sorted order.

mkfs.erofs 1.5 assigns inodes and lays out data in the order readdir() returns entries. On ext4
that is hash order with a per-file-system seed, so the same tree gives different erofs bytes on
another machine (or another file system). tmpfs lists entries in creation order (kernels ≥ 6.6)
or in reverse creation order (older ones): probing which, then creating every directory's
entries in the order that makes the listing sorted, gives mkfs.erofs the same walk everywhere.
The listing is checked afterwards; a file system that does not cooperate is an error, never a
silently different image.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

from ..errors import BuildError
from ..formats import entry as E
from ..outdir import locked_workdir, sweep
from .staging import StagingTree

TMPFS_CANDIDATES = ("/dev/shm",)

#: Name prefix of the copies; each is flock-ed while in use (pipeline.outdir), so the copy of a
#: killed build is recognised and removed by the next one.
PREFIX = ".sysext-pipeline-"


def _tmpfs_base() -> Path:
    override = os.environ.get("SYSEXT_PIPELINE_TMPFS")
    for candidate in ((override,) if override else TMPFS_CANDIDATES):
        path = Path(candidate)
        if path.is_dir() and os.access(path, os.W_OK | os.X_OK):
            return path
    raise BuildError("erofs", "no writable tmpfs (/dev/shm) to give mkfs.erofs a sorted tree",
                     "mount one, or set SYSEXT_PIPELINE_TMPFS to a tmpfs directory")


def _creation_order_is_listing_order(base: Path) -> bool:
    with tempfile.TemporaryDirectory(dir=base, prefix=".probe-") as probe:
        for name in ("a", "b", "c"):
            Path(probe, name).touch()
        listing = os.listdir(probe)
    if listing == ["a", "b", "c"]:
        return True
    if listing == ["c", "b", "a"]:
        return False
    raise BuildError("erofs", f"{base} lists entries in neither creation nor reverse order",
                     "set SYSEXT_PIPELINE_TMPFS to a tmpfs directory")


@contextmanager
def sorted_copy(tree: StagingTree, size_hint: int):
    """Yield a directory holding a copy of ``tree`` that lists every directory sorted."""
    base = _tmpfs_base()
    sweep(base, PREFIX)  # copies of builds that were killed: their lock is free
    free = shutil.disk_usage(base).free
    if size_hint * 1.1 + (1 << 20) > free:
        raise BuildError("erofs", f"{base} has {free >> 20} MiB free, the tree needs "
                         f"{size_hint >> 20} MiB", "set SYSEXT_PIPELINE_TMPFS to a larger tmpfs")
    with locked_workdir(base, PREFIX) as work:
        forward = _creation_order_is_listing_order(work.path)
        root = work / "root"
        root.mkdir()
        _copy(tree, root, forward)
        _check_sorted(root)
        yield root


def _copy(tree: StagingTree, root: Path, forward: bool) -> None:
    children: dict[str, list[str]] = defaultdict(list)
    for path in tree.records:
        parent, _, name = path.rpartition("/")
        children[parent].append(name)
    linked: dict[int, Path] = {}  # hardlink groups share one Record object
    dirs: list[tuple[Path, object]] = []

    def listing(rel: str):
        return iter(sorted(children.get(rel, ()), key=os.fsencode, reverse=not forward))

    # Depth first, each directory's entries in listing order; a stack, not recursion: a
    # package may nest directories deeper than Python's stack.
    stack = [("", listing(""))]
    while stack:
        rel, names = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            continue
        path = f"{rel}/{name}" if rel else name
        record = tree.records[path]
        src, dst = tree.root / path, root / path
        if record.kind == E.DIR:
            dst.mkdir()
            dirs.append((dst, record))
            stack.append((path, listing(path)))
            continue
        if record.kind == E.SYMLINK:
            os.symlink(os.readlink(src), dst)
        elif id(record) in linked:
            os.link(linked[id(record)], dst)
            continue
        else:
            shutil.copyfile(src, dst, follow_symlinks=False)
            linked[id(record)] = dst
        _metadata(src, dst, record, tree.owner_ids)
    for dst, record in reversed(dirs):  # children first: creating entries touches the parent
        _metadata(tree.root / dst.relative_to(root), dst, record, tree.owner_ids)
    os.chmod(root, 0o755)
    st = os.stat(tree.root)
    os.utime(root, ns=(st.st_mtime_ns, st.st_mtime_ns))


def _metadata(src: Path, dst: Path, record, owners: bool) -> None:
    if owners:
        os.chown(dst, record.uid, record.gid, follow_symlinks=False)
    if record.kind != E.SYMLINK:
        os.chmod(dst, record.mode)
        for key in os.listxattr(src, follow_symlinks=False):
            os.setxattr(dst, key, os.getxattr(src, key, follow_symlinks=False),
                        follow_symlinks=False)
    st = os.lstat(src)
    os.utime(dst, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)


def _check_sorted(root: Path) -> None:
    pending = [root]
    while pending:  # not os.walk: it recurses
        dirpath = pending.pop()
        with os.scandir(dirpath) as entries:
            found = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
        listing = [name for name, _ in found]
        if listing != sorted(listing, key=os.fsencode):
            raise BuildError("erofs", f"the tmpfs copy of {dirpath} does not list sorted",
                             "set SYSEXT_PIPELINE_TMPFS to a tmpfs directory")
        pending += [dirpath / name for name, is_dir in found if is_dir]
