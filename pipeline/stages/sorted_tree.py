"""A copy of the staging tree whose directories list their entries in sorted order.

mkfs.erofs 1.5 assigns inodes and lays out data in the order readdir() returns entries. On ext4
that is hash order with a per-file-system seed, so the same tree gives different erofs bytes on
another machine (or another file system). tmpfs lists entries in creation order (kernels ≥ 6.6)
or in reverse creation order (older ones): probing which, then creating every directory's
entries in the order that makes the listing sorted, gives mkfs.erofs the same walk everywhere.
The listing is checked afterwards; a file system that does not cooperate is an error, never a
silently different image.

No file's data is copied when the build runs as root on a kernel with overlayfs data-only lower
layers (6.5+): the tmpfs tree is then a *skeleton* — directories, symlinks, and for each file an
empty stub of its size, mode, owners and times carrying ``trusted.overlay.metacopy`` and a
``trusted.overlay.redirect`` to the file in the staging tree — and mkfs.erofs reads
``lowerdir=SKELETON::STAGING`` mounted in a private mount namespace: the listing is the
skeleton's, the data the staging tree's. A few KiB of tmpfs for any payload, instead of a copy
of it (102 MiB at the benchmark payload, 1 GiB at a 1 GB one). Without root, or where the probe
mount fails, the tree is copied as before; both give the same image bytes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

from .. import tools
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


def run_sorted(tree: StagingTree, tool: str, args: list, *, what: str, tick=None,
               size_hint: int) -> str:
    """Run ``tool *args ROOT`` where ROOT lists ``tree`` sorted: the staging tree seen through a
    skeleton overlay when possible, else a tmpfs copy. Returns how ("overlay" or "copy")."""
    base = _tmpfs_base()
    sweep(base, PREFIX)  # trees of builds that were killed: their lock is free
    with locked_workdir(base, PREFIX) as work:
        forward = _creation_order_is_listing_order(work.path)
        if _overlay_usable(tree, work.path):
            skeleton = work / "skeleton"
            skeleton.mkdir()
            _copy(tree, skeleton, forward, stub=True)
            _check_sorted(skeleton)
            mnt = work / "mnt"
            mnt.mkdir()
            options = (f"ro,nodev,nosuid,noexec,metacopy=on,"
                       f"lowerdir={skeleton}::{os.path.realpath(tree.root)}")
            try:
                tools.run("unshare", ["-m", "--propagation", "private", tools.find("sh"), "-c",
                                      _MOUNT_AND_RUN, "sh", tools.find("mount"), options, mnt,
                                      tools.find(tool), *args, mnt], what=what, tick=tick)
            except BuildError as err:  # the tool failed (the mount was probed): name the tool
                raise BuildError(tool, err.what, err.hint) from None
            return "overlay"
        free = shutil.disk_usage(base).free
        if size_hint * 1.1 + (1 << 20) > free:
            raise BuildError("erofs", f"{base} has {free >> 20} MiB free, the tree needs "
                             f"{size_hint >> 20} MiB",
                             "set SYSEXT_PIPELINE_TMPFS to a larger tmpfs")
        root = work / "root"
        root.mkdir()
        _copy(tree, root, forward)
        _check_sorted(root)
        tools.run(tool, [*args, root], what=what, tick=tick)
        return "copy"


#: In a private mount namespace: mount the overlay ($1 mount, $2 options, $3 mount point), then
#: become the tool (the rest); the mount goes away with the namespace.
_MOUNT_AND_RUN = ('"$1" -t overlay -o "$2" overlay "$3" || exit 1; shift 3; exec "$@"')
#: What a lowerdir= path may not contain (the option syntax's separators and escapes).
_UNSAFE_IN_OPTIONS = set(",:\\ \t\n=\"'")


def _overlay_usable(tree: StagingTree, work: Path) -> bool:
    """Root, the tools, paths the option string can carry, and a kernel that mounts a skeleton
    over a data-only layer (tried once per process, on a one-file tree)."""
    if os.environ.get("SYSEXT_PIPELINE_EROFS_COPY") or os.geteuid() != 0:
        return False
    if not all(tools.have(t) for t in ("unshare", "mount", "sh")):
        return False
    paths = (str(work), os.path.realpath(tree.root))
    if any(set(p) & _UNSAFE_IN_OPTIONS for p in paths):
        return False
    return _probe(work)


_probed: dict[str, bool] = {}


def _probe(work: Path) -> bool:
    key = "overlay"
    if key not in _probed:
        probe = work / "probe"
        (probe / "data").mkdir(parents=True)
        (probe / "skeleton").mkdir()
        (probe / "mnt").mkdir()
        (probe / "data" / "f").write_bytes(b"probe\n")
        stub = probe / "skeleton" / "f"
        try:
            stub.touch()
            os.truncate(stub, 6)
            os.setxattr(stub, "trusted.overlay.metacopy", b"")
            os.setxattr(stub, "trusted.overlay.redirect", b"/f")
            options = (f"ro,nodev,nosuid,noexec,metacopy=on,"
                       f"lowerdir={probe / 'skeleton'}::{probe / 'data'}")
            proc = tools.run("unshare", ["-m", "--propagation", "private", tools.find("sh"),
                                         "-c", _MOUNT_AND_RUN, "sh", tools.find("mount"),
                                         options, probe / "mnt", tools.find("sh"), "-c",
                                         'cat "$0/f"', probe / "mnt"], what="probing overlayfs",
                             timeout=30)
            _probed[key] = proc.stdout == b"probe\n"
        except (OSError, BuildError):
            _probed[key] = False  # no trusted.* xattrs (no CAP_SYS_ADMIN), or no such overlay
        shutil.rmtree(probe, ignore_errors=True)
    return _probed[key]


def _copy(tree: StagingTree, root: Path, forward: bool, *, stub: bool = False) -> None:
    """Recreate ``tree`` under ``root`` so that every directory lists sorted; with ``stub``,
    each file is an overlayfs metacopy stub redirecting to its data in ``tree`` (no data)."""
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
            os.symlink(record.target, dst)
        elif id(record) in linked:
            os.link(linked[id(record)], dst)
            continue
        elif stub:
            with open(dst, "xb") as fh:
                fh.truncate(record.size)
            os.setxattr(dst, "trusted.overlay.metacopy", b"")
            os.setxattr(dst, "trusted.overlay.redirect", os.fsencode("/" + path))
            linked[id(record)] = dst
        else:
            shutil.copyfile(src, dst, follow_symlinks=False)
            linked[id(record)] = dst
        _metadata(dst, record, tree.owner_ids)
    for dst, record in reversed(dirs):  # children first: creating entries touches the parent
        _metadata(dst, record, tree.owner_ids)
    os.chmod(root, 0o755)
    st = os.stat(tree.root)
    os.utime(root, ns=(st.st_mtime_ns, st.st_mtime_ns))


def _metadata(dst: Path, record, owners: bool) -> None:
    """Owners, mode, attributes and time as the records say: what the staging writer and the
    normalize stage put on disk (read from the records, not stat-ed again)."""
    if owners:
        os.chown(dst, record.uid, record.gid, follow_symlinks=False)
    if record.kind != E.SYMLINK:
        os.chmod(dst, record.mode)
        for key, value in record.xattrs.items():
            os.setxattr(dst, key, value, follow_symlinks=False)
    os.utime(dst, (record.mtime, record.mtime), follow_symlinks=False)


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
