"""How an image's file tree is read: the method is chosen here, and nowhere else.

Every image is untrusted unless the caller says otherwise (``trusted=False`` is the default):
whatever it carries — device nodes, setuid/setgid files, file capabilities, FIFOs, symlinks to
/etc/shadow — must neither reach the kernel's file system drivers nor appear on the host.

- A directory image is read as it is.
- An untrusted squashfs/erofs image is never mounted. Its own userspace tool (``unsquashfs``,
  ``fsck.erofs --extract``) unpacks it inside a private mount namespace onto a fresh tmpfs
  mounted ``nosuid,nodev,noexec`` there: a holder process (``unshare -m --propagation private
  sh -c 'mount -t tmpfs …; TOOL …; read'``; a user without root also gets a user namespace,
  ``unshare -U -r``) unpacks and then waits on its stdin, and we read the tree through
  ``/proc/PID/root/TMP``. Owners, modes, mtimes and device numbers are the image's (as root), but
  the tmpfs lives only in the holder's namespace and is inert there (nodev, nosuid: no device
  opens, no set-id or capability takes effect); it cannot leak into the host's namespace or
  outlive us: when we close the pipe (or die) the holder exits and the kernel drops it. The tool
  runs under ``timeout``. Where no private namespace can be made (a container without the
  privilege), the tool unpacks into a temporary directory and everything a host must not get
  (devices, FIFOs, sockets, set-id bits, security.* xattrs) is removed at once.
- ``trusted`` (the build's own fresh output, or a DDI partition copy whose whole dm-verity tree
  was verified against a root hash with a checked signature): as root, the file system is
  loop-mounted ``ro,nodev,nosuid,noexec`` in the same kind of private namespace.
- Every mount made in a private namespace is checked in the holder's ``/proc/PID/mountinfo``:
  one without ``nosuid,nodev,noexec`` is refused.
- Copying out (:func:`extract`) never recreates what the host must not get: only directories,
  regular files and symlinks are created, modes without set-id bits, no xattrs, owned by us.
- squashfs questions that need no contents — a listing, one file's bytes — go to
  ``unsquashfs -lln`` / ``-cat`` for any user: nothing is unpacked.

A file system is named by :class:`FileSystem` (a directory, or squashfs/erofs bytes at an offset
of a file); :func:`locate` finds it in a path, including the root/usr partition of a DDI.
"""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from ... import tools
from ...digest import hash_file
from ...errors import BuildError, InputError
from .erofs import Reader as ErofsReader
from .ondisk import copy_range, sniff
from .tree import lln_entry, walk_dir

#: The mount holder's script (trusted images): mount (argv 1-5), say so, wait until stdin closes.
_HOLD = '"$1" -t "$2" -o "$3" "$4" "$5" || exit 1; echo mounted; read -r _'
#: The unpack holder's script: a tmpfs (mount: $1, options: $2, at $3), the tool (the rest of
#: argv) unpacks onto it, its output in "$3/log"; say so with its exit code; wait.
_HOLD_UNPACK = ('"$1" -t tmpfs -o "$2" sysext-pipeline "$3" || exit 1; dir=$3; shift 3; '
                '"$@" >"$dir/log" 2>&1; echo "unpacked $?"; read -r _')
#: What every mount made here carries (checked in the namespace's mountinfo).
MOUNT_OPTIONS = ("nosuid", "nodev", "noexec")
#: How long unsquashfs/fsck.erofs may take to unpack one image (seconds).
UNPACK_TIMEOUT = 1800
#: The unpacking tmpfs's size limit (tmpfs's own default: half the RAM).
_TMPFS_SIZE = "50%"


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
    from ...systemd import partitions
    from ..ddi.reader import open_ddi

    image = open_ddi(path)
    table, found = image.table, image.verity_set
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
def opened(source: Path | str | FileSystem, *, trusted: bool = False) -> Iterator[View]:
    """The whole tree of ``source`` as a directory: the directory itself, a mount (``trusted``
    only), or an unpacking (inert, private, removed afterwards; see the module docstring)."""
    fs = locate(source)
    if fs.type == "directory":
        yield View(fs.path, "directory", owners=True)
        return
    if trusted:
        with _mounted(fs) as root:
            if root is not None:
                yield View(root, "mount", owners=True)
                return
    with _unpacked(fs) as (tree, owners):
        yield View(tree, "unsquashfs" if fs.type == "squashfs" else "fsck.erofs", owners=owners)


def walk_image(source: Path | str | FileSystem, *, hashes: bool = True,
               trusted: bool = False) -> Iterator[dict]:
    """Every entry of the tree (the root first), file contents hashed in chunks, streamed: the
    tree is never held in memory. Without the image's owners (a non-root extraction) each entry
    says ``owners_unknown``."""
    fs = locate(source)
    if fs.type == "erofs" and not (trusted and _can_mount()):
        yield from _walk_erofs(fs, hashes)
        return
    with opened(fs, trusted=trusted) as view:
        for entry in walk_dir(view.root, hashes=hashes):
            if not view.owners:
                entry["owners_unknown"] = True
            yield entry


def _walk_erofs(fs: FileSystem, hashes: bool) -> Iterator[dict]:
    """An untrusted erofs tree: every entry from the on-disk metadata (pure Python, see
    erofs.py: exact modes, owners and xattrs, which fsck.erofs 1.5 loses); uncompressed files
    hashed from the image directly, compressed ones from a private unpacking, made only when
    the first one is met (fsck.erofs 1.5 holds a whole file in memory)."""
    with ErofsReader(fs.path, fs.offset, fs.size, fs.label) as reader, ExitStack() as stack:
        tree = None
        for path, entry, ino in reader.walk_inodes():
            if hashes and entry["type"] == "file":
                digest = reader.file_sha256(ino)
                if digest is None:
                    if tree is None:
                        tree, _owners = stack.enter_context(_unpacked(fs))
                    digest = _hash_unpacked(fs, tree, path)
                entry["sha256"] = digest
            yield entry


def _hash_unpacked(fs: FileSystem, tree: Path, path: str) -> str:
    """sha256 of ``path`` in the unpacked tree, reached through real directories only (an
    inconsistent image must not lead the hash out of the tree through a symlink)."""
    full = tree
    regular = True
    for i, part in enumerate(path.split("/")):
        full = full / part
        try:
            mode = os.lstat(full).st_mode
        except OSError:
            regular = False
            break
        if not (stat.S_ISDIR(mode) if i < path.count("/") else stat.S_ISREG(mode)):
            regular = False
            break
    if not regular:
        raise InputError(f"{fs.label}: {path}", "corrupt erofs file system: listed as a file, "
                         "not extracted as one")
    return hash_file(full)[0]


def _can_mount() -> bool:
    return os.geteuid() == 0 and tools.have("unshare") and tools.have("mount")


def list_image(source: Path | str | FileSystem, *, trusted: bool = False) -> Iterator[dict]:
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


def read_file(source: Path | str | FileSystem, path: str, *, trusted: bool = False) -> bytes:
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
            xattrs: bool = True, trusted: bool = False) -> Path:
    """Copy ``paths`` (with their parents; everything: None) into ``dest`` and return where the
    tree is: ``dest``, or a directory image itself. Only directories, regular files and symlinks
    are created — never a device node, FIFO or socket, never a set-id bit, no xattrs (``xattrs``
    is accepted for compatibility and ignored), owners are ours."""
    del xattrs
    fs = locate(source)
    if fs.type == "directory":
        return fs.path
    dest = Path(dest)
    if trusted:
        with _mounted(fs) as root:
            if root is not None:
                copy_safely(root, dest, paths)
                return dest
    with _unpacked(fs, paths) as (tree, _owners):
        copy_safely(tree, dest, paths)
    return dest


def copy_safely(root: Path, dest: Path, paths: list[str] | None = None) -> None:
    """Copy the tree at ``root`` (or ``paths`` of it, with their parent directories) into
    ``dest``: directories, regular files (contents, permission bits without set-id, mtime) and
    symlinks (their targets as they are, never followed); anything else is left out."""
    try:
        _copy_selected(root, dest, paths)
    except OSError as err:
        raise BuildError(str(err.filename or dest), "copying out of the image failed: "
                         f"{(err.strerror or str(err)).lower()}") from None


def _copy_selected(root: Path, dest: Path, paths: list[str] | None) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    if paths is None:
        _copy_children(root, dest)
        return
    for path in paths:
        parts = [p for p in path.strip("/").split("/") if p not in ("", ".")]
        if not parts or ".." in parts:
            continue
        src, dst = root, dest
        for i, part in enumerate(parts):
            src, dst = src / part, dst / part
            try:
                st = src.lstat()
            except FileNotFoundError:
                break
            if i == len(parts) - 1 or not stat.S_ISDIR(st.st_mode):
                if not os.path.lexists(dst):
                    _copy_entry(src, dst, st)
                break
            if not os.path.lexists(dst):
                dst.mkdir(mode=0o755)


def _copy_children(src: Path, dst: Path) -> None:
    for name in sorted(os.listdir(src)):
        child = src / name
        _copy_entry(child, dst / name, child.lstat())


def _copy_entry(src: Path, dst: Path, st: os.stat_result) -> None:
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        os.symlink(os.readlink(src), dst)
        return
    if stat.S_ISDIR(mode):
        dst.mkdir(mode=0o700)
        _copy_children(src, dst)
        os.chmod(dst, stat.S_IMODE(mode) & 0o1777)
    elif stat.S_ISREG(mode):
        fd_in = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                while chunk := os.read(fd_in, 1 << 20):
                    os.write(fd_out, chunk)
                os.fchmod(fd_out, stat.S_IMODE(mode) & 0o777)
            finally:
                os.close(fd_out)
        finally:
            os.close(fd_in)
    else:  # device nodes, FIFOs, sockets: never recreated on the host
        return
    os.utime(dst, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)


def _mount_options(pid: int, mountpoint: str) -> set[str] | None:
    """The per-mount options of ``mountpoint`` as the process ``pid`` sees it (its own mount
    namespace), from /proc/PID/mountinfo; None: nothing is mounted there."""
    escaped = "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in mountpoint)
    found = None
    with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) > 5 and fields[4] == escaped:
                found = set(fields[5].split(","))  # the last one is the one on top
    return found


def _check_mount(pid: int, mountpoint: str, what: str) -> None:
    options = _mount_options(pid, mountpoint)
    lacking = [o for o in MOUNT_OPTIONS if options is None or o not in options]
    if lacking:
        raise BuildError(what, f"the mount in the private namespace lacks {','.join(lacking)}",
                         "refused: nothing from an image is read through such a mount")


@contextmanager
def _mounted(fs: FileSystem) -> Iterator[Path | None]:
    """The mounted tree of a trusted image (see the module docstring), or None when it cannot
    be mounted (no root, no kernel support, the mount refused)."""
    if not _can_mount():
        yield None
        return
    options = "ro,loop," + ",".join(MOUNT_OPTIONS) + \
        (f",offset={fs.offset}" if fs.offset else "") + \
        (f",sizelimit={fs.size}" if fs.size is not None else "")
    argv = [*tools.die_with_parent(os.getpid()), tools.find("unshare"), "-m",
            "--propagation", "private",
            tools.find("sh"), "-c", _HOLD, "sh", tools.find("mount"), fs.type, options, os.path.abspath(fs.path)]
    with tempfile.TemporaryDirectory(prefix="sysext-mnt-") as mnt:
        mnt = os.path.realpath(mnt)  # as mountinfo will name it
        holder = subprocess.Popen([*argv, mnt], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, env=tools.clean_env())
        try:
            ready = holder.stdout.readline() == b"mounted\n"
            if ready:
                _check_mount(holder.pid, mnt, fs.label)
            yield Path(f"/proc/{holder.pid}/root", mnt.lstrip("/")) if ready else None
        finally:
            _release(holder)


def _release(holder: subprocess.Popen) -> None:
    holder.stdin.close()
    try:
        holder.wait(timeout=30)
    except subprocess.TimeoutExpired:
        holder.kill()
        holder.wait()
    holder.stdout.close()


@contextmanager
def _unpacked(fs: FileSystem, paths: list[str] | None = None) -> Iterator[tuple[Path, bool]]:
    """(tree, whether its owners are the image's): the image unpacked by its own tool onto an
    inert tmpfs in a private namespace, else (no namespace possible) into a temporary directory
    that is cleaned of everything the host must not get. ``paths``: squashfs only, the rest is
    not unpacked."""
    root = os.geteuid() == 0
    with tempfile.TemporaryDirectory(prefix="sysext-fsinfo-") as tmp:
        image = Path(os.path.abspath(fs.path))
        if fs.type == "erofs" and (fs.offset or fs.size is not None):
            image = copy_range(fs.path, fs.offset, fs.size, Path(tmp) / "fs.img")
        mnt = Path(os.path.realpath(tmp)) / "mnt"  # as mountinfo will name it
        mnt.mkdir()
        holder, line, owners = None, b"", root
        # as root: a mount namespace; else (a user, or root without CAP_SYS_ADMIN as in a
        # container) a user namespace too, where owners other than ours cannot be set
        variants = ([[]] if root else []) + [["-U", "-r"]]
        if not (tools.have("unshare") and tools.have("mount") and tools.have("timeout")):
            variants = []
        for variant in variants:
            holder = subprocess.Popen(
                [*tools.die_with_parent(os.getpid()), tools.find("unshare"), *variant, "-m",
                 "--propagation", "private", tools.find("sh"), "-c", _HOLD_UNPACK, "sh",
                 tools.find("mount"),
                 "size=" + _TMPFS_SIZE + ",mode=0700," + ",".join(MOUNT_OPTIONS), str(mnt),
                 *tools.die_with_parent(), tools.find("timeout"), "-s", "KILL", str(UNPACK_TIMEOUT),
                 *tools.die_with_parent(), *_unpack_argv(fs, image, mnt / "tree", paths)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                env=tools.clean_env(), cwd="/")
            line = holder.stdout.readline()
            if line.startswith(b"unpacked "):
                owners = root and not variant
                break
            _release(holder)
            holder = None
        try:
            if holder is None:  # no private namespace at all: plain, then cleaned at once
                tree = mnt / "tree"
                try:
                    proc = subprocess.run(_unpack_argv(fs, image, tree, paths),
                                          capture_output=True, env=tools.clean_env(),
                                          timeout=UNPACK_TIMEOUT, check=False)
                    returncode, output = proc.returncode, (proc.stdout + proc.stderr)[-65536:]
                except subprocess.TimeoutExpired:
                    returncode, output = -9, b""
                _strip_unsafe(tree)
                _judge(fs, returncode, output, tree)
                yield tree, root
                return
            inside = Path(f"/proc/{holder.pid}/root", str(mnt).lstrip("/"))
            _check_mount(holder.pid, str(mnt), fs.label)
            _judge(fs, int(line.split()[1]), _tail(inside / "log"), inside / "tree")
            yield inside / "tree", owners
        finally:
            if holder is not None:
                _release(holder)


def _unpack_argv(fs: FileSystem, image: Path, dest: Path,
                 paths: list[str] | None) -> list[str]:
    if fs.type == "squashfs":
        # -da/-fr: unsquashfs's data and fragment caches default to 256 MiB each
        return [tools.find("unsquashfs"), "-quiet", "-no-progress", "-no-exit-code",
                "-da", "16", "-fr", "16", *_offset(fs), "-d", str(dest), str(image),
                *(p.lstrip("/") for p in paths or ())]
    return [tools.find("fsck.erofs"), f"--extract={dest}", "--overwrite", str(image)]


def _tail(log: Path) -> bytes:
    try:
        with open(log, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - 65536))
            return fh.read()
    except OSError:
        return b""


def _judge(fs: FileSystem, returncode: int, output: bytes, tree: Path) -> None:
    """An unpacking that failed, timed out or (fsck.erofs 1.5 exits 0 on a corrupt image with
    "<E> erofs: …" lines) reported corruption is an error naming the image."""
    tool = "unsquashfs" if fs.type == "squashfs" else "fsck.erofs"
    lines = output.decode(errors="replace").strip().splitlines()
    if returncode in (124, 128 + 9, -9):
        raise BuildError(fs.label, f"{tool} did not finish within {UNPACK_TIMEOUT} s: stopped")
    errors = [line for line in lines if line.startswith("<E>")]
    if any("failed to create special file" in e for e in errors):
        raise InputError(fs.label, "fsck.erofs cannot unpack this image's device nodes here "
                         "(it needs root in the initial user namespace, with a private mount "
                         "namespace)")
    if fs.type == "erofs" and (errors or returncode != 0 or not tree.is_dir()):
        raise InputError(fs.label, "corrupt erofs file system: fsck.erofs: "
                         + (" | ".join(e.removeprefix("<E> ") for e in errors[-3:])
                            or " | ".join(lines[-3:]) or "nothing extracted"))
    if returncode != 0 or not tree.is_dir():
        raise InputError(fs.label, f"{tool} could not read the file system: "
                         + (" | ".join(lines[-3:]) or f"exit {returncode}"))


def _strip_unsafe(tree: Path) -> None:
    """Remove from an unpacked tree on the host what must not stay there: device nodes, FIFOs,
    sockets, set-id bits and security.*/trusted.* xattrs (the fallback without a namespace)."""
    if not tree.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                continue
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                os.unlink(full)
                continue
            if st.st_mode & 0o6000:
                os.chmod(full, stat.S_IMODE(st.st_mode) & ~0o6000)
            for attr in os.listxattr(full, follow_symlinks=False):
                if not attr.startswith("user."):
                    os.removexattr(full, attr, follow_symlinks=False)


def _offset(fs: FileSystem) -> list[str]:
    return ["-o", str(fs.offset)] if fs.offset else []
