"""How an image's file tree is read: the method is chosen here, and nowhere else.

- A directory image is read as it is.
- As root, the file system is loop-mounted read-only inside a private mount namespace: a holder
  process (``unshare -m --propagation private sh -c 'mount …; read'``) mounts it and then waits
  on its stdin, and we read the tree through ``/proc/PID/root/MNT``. The mount exists only in the
  holder's namespace, so it can neither leak into the host's nor outlive us: when we close the
  pipe (or die) the holder exits and the kernel drops the namespace, the mount and the loop
  device. Owners, modes, mtimes and xattrs are then exactly the image's.
- Otherwise (no root, no kernel support, the mount refused), the real tools extract it into a
  temporary directory: ``unsquashfs -d`` (reads at an offset, extracts selected paths) or
  ``fsck.erofs --extract`` (whole images, whole files only: a DDI partition is copied out first;
  erofs-utils 1.5 extracts no xattrs). Owners are then the extracting user's unless that is root.
- squashfs questions that need no contents — a listing, one file's bytes, selected paths — go to
  ``unsquashfs -lln`` / ``-cat`` / ``-d`` for any user: no mount, no full extraction.

``trusted``: whether the bytes may be handed to the kernel's file system driver at all. A crafted
squashfs/erofs image is a way into the kernel (its drivers parse every on-disk structure), so an
image from someone else — ``inspect`` of a download, one whose verity did not verify — is read
with ``trusted=False``: never mounted, only parsed by the userspace tools above, whatever the
user's privileges. The default (True) is for the project's own freshly built images and for
callers that checked the image first.

A file system is named by :class:`FileSystem` (a directory, or squashfs/erofs bytes at an offset
of a file); :func:`locate` finds it in a path, including the root/usr partition of a DDI.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .. import tools
from ..errors import InputError
from .ondisk import copy_range, sniff
from .tree import lln_entry, walk_dir

#: The holder's script: mount (argv 1-5), say so, wait until stdin closes.
_HOLD = '"$1" -t "$2" -o "$3" "$4" "$5" || exit 1; echo mounted; read -r _'


@dataclass(frozen=True)
class FileSystem:
    """Where one file system is: a directory, or squashfs/erofs bytes in a file (at ``offset``,
    ``size`` bytes long when it is a partition)."""

    path: Path
    type: str  # squashfs | erofs | directory
    offset: int = 0
    size: int | None = None
    ddi: bool = False  # found as the root/usr partition of a GPT disk image

    @property
    def label(self) -> str:
        return str(self.path) + (f" (partition at byte {self.offset})" if self.offset else "")


@dataclass(frozen=True)
class View:
    """A file system's whole tree as a directory, for as long as :func:`opened` lasts."""

    root: Path
    method: str  # directory | mount | unsquashfs | fsck.erofs
    owners: bool  # uid/gid are the image's (else the extracting user's)


def locate(source: Path | str | FileSystem, *, offset: int = 0,
           size: int | None = None) -> FileSystem:
    """The file system in ``source``: a directory, a squashfs/erofs image (at ``offset``), or a
    DDI's root (else usr) partition — the verity-protected one when there is one."""
    if isinstance(source, FileSystem):
        return source
    path = Path(source)
    if path.is_dir():
        return FileSystem(path, "directory")
    if not path.is_file():
        raise InputError(str(path), "no such file or directory")
    fs_type = sniff(path, offset)
    if fs_type is not None:
        return FileSystem(path, fs_type, offset, size)
    if offset:
        raise InputError(str(path), f"no squashfs or erofs file system at offset {offset}")
    from ..ddi.gpt import has_gpt

    if has_gpt(path):
        return _ddi_partition(path)
    raise InputError(str(path), "not a squashfs, erofs or GPT (DDI) image, nor a directory")


def _ddi_partition(path: Path) -> FileSystem:
    from ..ddi.assemble import find_verity_set
    from ..ddi.gpt import read_gpt
    from ..systemd import partitions

    table = read_gpt(path)
    found = find_verity_set(table)
    designator = lambda p: (partitions.lookup(p.type_uuid) or (None,))[0]  # noqa: E731
    part = found.data if found else next(
        (p for family in ("root", "usr") for p in table.partitions if designator(p) == family),
        None)
    if part is None:
        raise InputError(str(path), "GPT image without a root or usr partition",
                         "systemd-sysext needs a root (or usr) partition of the host's "
                         "architecture")
    fs_type = sniff(path, part.offset)
    if fs_type is None:
        raise InputError(str(path), f"the {designator(part)} partition is neither squashfs nor "
                         "erofs", "only squashfs and erofs DDIs can be read")
    return FileSystem(path, fs_type, part.offset, part.size, ddi=True)


@contextmanager
def opened(source: Path | str | FileSystem, *, trusted: bool = True) -> Iterator[View]:
    """The whole tree of ``source`` as a directory: the directory itself, a mount (``trusted``
    only), or an extraction into a temporary directory (removed afterwards)."""
    fs = locate(source)
    if fs.type == "directory":
        yield View(fs.path, "directory", owners=True)
        return
    with _mounted(fs, trusted) as root:
        if root is not None:
            yield View(root, "mount", owners=True)
            return
    with tempfile.TemporaryDirectory(prefix="sysext-fsinfo-") as tmp:
        tree = _unpack(fs, Path(tmp) / "tree")
        yield View(tree, "unsquashfs" if fs.type == "squashfs" else "fsck.erofs",
                   owners=os.geteuid() == 0)


def walk_image(source: Path | str | FileSystem, *, hashes: bool = True,
               trusted: bool = True) -> Iterator[dict]:
    """Every entry of the tree (the root first), file contents hashed in chunks, streamed: the
    tree is never held in memory. Without the image's owners (a non-root extraction) each entry
    says ``owners_unknown``."""
    with opened(source, trusted=trusted) as view:
        for entry in walk_dir(view.root, hashes=hashes):
            if not view.owners:
                entry["owners_unknown"] = True
            yield entry


def list_image(source: Path | str | FileSystem, *, trusted: bool = True) -> Iterator[dict]:
    """Every entry without file contents (no sha256). From ``unsquashfs -lln`` a squashfs
    entry also has no mtime and no xattrs."""
    fs = locate(source)
    if fs.type != "squashfs":
        yield from walk_image(fs, hashes=False, trusted=trusted)
        return
    out = tools.run("unsquashfs", ["-lln", *_offset(fs), "-d", "", fs.path],
                    what=f"listing {fs.label}").stdout
    for line in out.decode(errors="replace").splitlines():
        entry = lln_entry(line)
        if entry is not None:
            yield entry


def read_file(source: Path | str | FileSystem, path: str, *, trusted: bool = True) -> bytes:
    """The bytes of the regular file ``path``. Symlinks are not followed, on the way either: an
    image's absolute symlink would otherwise lead out of it, into the host."""
    fs = locate(source)
    rel = path.lstrip("/")
    if fs.type == "squashfs":
        return tools.run("unsquashfs", ["-cat", *_offset(fs), fs.path, rel],
                         what=f"reading {rel} from {fs.label}").stdout
    with opened(fs, trusted=trusted) as view:
        full = view.root
        for part in rel.split("/"):
            full = full / part
            if part in ("", ".", "..") or full.is_symlink():
                break
        else:
            if full.is_file():
                return full.read_bytes()
        raise InputError(f"{fs.label}: {rel}", "not a regular file in the image")


def extract(source: Path | str | FileSystem, dest: Path, paths: list[str] | None = None, *,
            xattrs: bool = True, trusted: bool = True) -> Path:
    """Unpack ``paths`` (with their parents; everything: None) into ``dest`` and return where
    the tree is: ``dest``, or a directory image itself. erofs without a mount unpacks the
    whole image, so ``paths`` is what at least arrives."""
    fs = locate(source)
    if fs.type == "directory":
        return fs.path
    if fs.type == "erofs":
        with _mounted(fs, trusted) as root:
            if root is not None:
                _copy_out(root, Path(dest), paths)
                return Path(dest)
    return _unpack(fs, Path(dest), paths, xattrs)


@contextmanager
def _mounted(fs: FileSystem, trusted: bool = True) -> Iterator[Path | None]:
    """The mounted tree (see the module docstring), or None when it cannot or (an untrusted
    image: never into the kernel) may not be mounted."""
    if not trusted or os.geteuid() != 0 or not (tools.have("unshare") and tools.have("mount")):
        yield None
        return
    options = "ro,loop" + (f",offset={fs.offset}" if fs.offset else "") + \
        (f",sizelimit={fs.size}" if fs.size is not None else "")
    argv = [tools.find("unshare"), "-m", "--propagation", "private", tools.find("sh"), "-c",
            _HOLD, "sh", tools.find("mount"), fs.type, options, os.path.abspath(fs.path)]
    with tempfile.TemporaryDirectory(prefix="sysext-mnt-") as mnt:
        holder = subprocess.Popen([*argv, mnt], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, env=tools.clean_env())
        try:
            ready = holder.stdout.readline() == b"mounted\n"
            yield Path(f"/proc/{holder.pid}/root", mnt.lstrip("/")) if ready else None
        finally:
            holder.stdin.close()
            try:
                holder.wait(timeout=30)
            except subprocess.TimeoutExpired:
                holder.kill()
                holder.wait()
            holder.stdout.close()


def _unpack(fs: FileSystem, dest: Path, paths: list[str] | None = None,
            xattrs: bool = True) -> Path:
    """Extract with the file system's own tool (squashfs: ``paths`` only; erofs: everything).
    unsquashfs's non-fatal errors (xattrs or owners a non-root user cannot set) do not fail."""
    if fs.type == "squashfs":
        flags = ["-user-xattrs"] if os.geteuid() != 0 else []
        tools.run("unsquashfs", ["-quiet", "-no-progress", "-no-exit-code",
                                 *(flags if xattrs else ["-no-xattrs"]), *_offset(fs),
                                 "-d", dest, fs.path, *(p.lstrip("/") for p in paths or ())],
                  what=f"extracting {fs.label}")
        return dest
    with tempfile.TemporaryDirectory(prefix="sysext-fsinfo-", dir=dest.parent) as tmp:
        image = fs.path
        if fs.offset or fs.size is not None:  # fsck.erofs reads whole files only
            image = copy_range(fs.path, fs.offset, fs.size, Path(tmp) / "fs.img")
        proc = tools.run("fsck.erofs", [f"--extract={dest}", "--overwrite", image],
                         what=f"extracting {fs.label}")
    # fsck.erofs 1.5 reports a corrupt image ("<E> erofs: …") and still exits 0: an untrusted
    # image read in userspace must not pass as empty (or half extracted) because of that
    errors = [line for line in proc.stderr.decode(errors="replace").splitlines()
              if line.startswith("<E>")]
    if errors or not dest.is_dir():
        raise InputError(fs.label, "corrupt erofs file system: fsck.erofs: "
                         + (" | ".join(e.removeprefix("<E> ") for e in errors[-3:])
                            or "nothing extracted"))
    return dest


def _copy_out(root: Path, dest: Path, paths: list[str] | None) -> None:
    """``cp -a`` from a mounted tree: owners, modes, times, hard links and xattrs kept."""
    dest.mkdir(parents=True, exist_ok=True)
    if paths is None:
        tools.run("cp", ["-a", "--", f"{root}/.", dest], what=f"copying out of {root}")
        return
    present = [p.lstrip("/") for p in paths if os.path.lexists(root / p.lstrip("/"))]
    if present:
        tools.run("cp", ["-a", "--parents", "--", *present, dest], cwd=root,
                  what=f"copying out of {root}")


def _offset(fs: FileSystem) -> list[str]:
    return ["-o", str(fs.offset)] if fs.offset else []

