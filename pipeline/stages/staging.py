"""The one writer of the staging root.

Every archive format and every recipe file reaches disk through :class:`StagingTree`, so path
safety is a property of this class alone: a member path with ``..``, an absolute path, a write
through a symlink, a hardlink that leaves the tree, or a device node is refused with an error
naming the member. All file system calls are relative to directory descriptors opened with
O_NOFOLLOW, so nothing can be created outside the root whatever an archive contains.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..formats import entry as E
from ..formats.entry import shown

CHUNK = 1 << 20
#: Directory descriptors the writer keeps open (see StagingTree._dir_fd).
OPEN_DIRS = 64

#: Longest name of one path component (Linux NAME_MAX).
NAME_MAX = 255
#: Largest owner id a file system stores ((uid_t)-1 means "unchanged" to chown).
MAX_ID = 2**32 - 2

#: Top-level directories that merged-/usr systems keep only as symlinks into /usr.
MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


@dataclass
class Record:
    """What the image will hold at one path; the manifest is made of these."""

    kind: str
    mode: int
    uid: int = 0
    gid: int = 0
    size: int = 0
    sha256: str | None = None
    target: str | None = None  # symlink target
    xattrs: dict[str, bytes] = field(default_factory=dict)
    origin: str = ""  # package or recipe file that put it there
    mtime: int = 0  # as the archive said; normalize decides the final one
    config: bool = False  # the package marks it as a configuration file


def canonical_path(raw: str, member: str) -> str:
    """Turn an archive member name into a safe relative image path, canonicalized to merged /usr.

    ``./usr/bin/x`` → ``usr/bin/x``; ``lib/x`` → ``usr/lib/x``. Absolute names and ``..``
    components are refused rather than "fixed", because a package that ships them is broken or
    hostile and the user should know.
    """
    if len(raw) > E.MAX_NAME or len(raw.encode("utf-8", "surrogateescape")) > E.MAX_NAME:
        raise InputError(member, f"a path of {len(raw.encode('utf-8', 'surrogateescape'))} "
                         f"bytes (limit {E.MAX_NAME})", "no Linux path is that long")
    if raw.startswith("/"):
        raise InputError(member, "absolute path in archive", "refusing to write outside the root")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InputError(member, "path contains '..'", "refusing to write outside the root")
    if _unprintable(raw):
        raise InputError(member, "path has control characters or is not UTF-8",
                         "image paths must be printable UTF-8 (the manifest and the file "
                         "system tools depend on it)")
    for part in parts:
        if len(part.encode("utf-8", "surrogateescape")) > NAME_MAX:
            size = len(part.encode("utf-8", "surrogateescape"))
            raise InputError(member, f"a path component of {size} bytes (limit {NAME_MAX})",
                             "no Linux file system stores such a name")
    if parts and parts[0] in MERGED_USR:
        parts.insert(0, "usr")
    return "/".join(parts)


def _unprintable(text: str) -> bool:
    """Control characters, or bytes that were not UTF-8 (surrogate-escaped by the readers)."""
    if text.isascii():
        return not text.isprintable()  # printable ASCII: 0x20-0x7e
    return any(ord(c) < 0x20 or ord(c) == 0x7F or 0xDC80 <= ord(c) <= 0xDCFF for c in text)


def new_record(entry: E.Entry, uid: int, gid: int, origin: str) -> Record:
    """The record of an entry before its data is written (size and hash come from writing)."""
    record = Record(entry.kind, entry.mode & 0o7777, uid, gid, origin=origin, mtime=entry.mtime,
                    xattrs=dict(entry.xattrs))
    if entry.kind == E.SYMLINK:
        record.mode, record.target = 0o777, entry.target
        record.size = len((entry.target or "").encode())
    return record


#: The only extended attribute a package may bring: file capabilities.
KEPT_XATTRS = ("security.capability",)
#: Namespaces that change how the kernel treats a file in the overlay (trusted.overlay.opaque
#: would hide the host's directory) or its security label: refused, never copied.
REFUSED_XATTR_PREFIXES = ("trusted.", "security.")


class Records(dict):
    """Image path → Record, plus what the pitfalls need beyond the tree itself:
    ``special_policy`` (the recipe's policy.special_files) and ``host_special``, paths the image
    makes on the host at boot (tmpfiles.d ``d`` lines) with what is special about them."""

    def __init__(self):
        super().__init__()
        self.special_policy = "warn"
        self.host_special: dict[str, str] = {}


def _check_capability(value: bytes, member: str) -> None:
    """A security.capability value as the kernel accepts it (VFS_CAP_REVISION_1/2/3 with the
    matching length, only the effective flag): anything else is refused naming the member."""
    sizes = {0x01000000: 12, 0x02000000: 20, 0x03000000: 24}
    magic = int.from_bytes(value[:4], "little") if len(value) >= 4 else 0
    if sizes.get(magic & 0xFF000000) != len(value) or magic & 0x00FFFFFE:
        raise InputError(member, f"malformed security.capability value ({len(value)} bytes)",
                         "not a file capability the kernel would accept")


class _Rules:
    """What may be written where, judged from the records alone — shared by the real writer
    and the recording one, so ``plan`` refuses exactly what ``build`` refuses."""

    def __init__(self):
        self.records: Records = Records()
        self.replaced: list[str] = []  # paths a later source overwrote
        self.dropped_xattrs: list[str] = []  # "path: name" of attributes not carried

    def judge(self, entry: E.Entry, path: str, uid: int, gid: int, origin: str) -> Record:
        """The record ``entry`` becomes at ``path``, or an InputError naming the member."""
        member = entry.member or path
        if entry.kind in (E.CHARDEV, E.BLOCKDEV):
            raise InputError(member, "device node in package", "extensions may not carry devices")
        if entry.kind not in (E.FILE, E.DIR, E.SYMLINK, E.HARDLINK):
            raise InputError(member, f"unsupported entry type {entry.kind}")
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = self.records.get("/".join(parts[:i]))
            if parent is not None and parent.kind != E.DIR:
                what = "symlink" if parent.kind == E.SYMLINK else "file"
                through = shown("/".join(parts[:i]))
                raise InputError(member, f"would write through the {what} {through}",
                                 "refusing to follow links while extracting")
        earlier = self.records.get(path)
        if earlier is not None and (earlier.kind == E.DIR) != (entry.kind == E.DIR):
            if earlier.kind == E.DIR:
                raise InputError(member, f"{shown(path)} is a directory in an earlier entry",
                                 "a file cannot replace a directory")
            raise InputError(member, f"{shown(path)} is a file in an earlier entry",
                             "a directory cannot replace a file")
        if entry.kind == E.HARDLINK:
            target = self.records.get(canonical_path(entry.target or "", member))
            if target is None or target.kind != E.FILE:
                raise InputError(member, f"hardlink to {shown(entry.target or '')!r}, which is not a file "
                                 "extracted before it", "refusing links that leave the package")
            return target  # the same inode: one record object shared by both paths
        if entry.kind == E.SYMLINK and not entry.target:
            raise InputError(member, "symlink without a target")
        if entry.kind == E.SYMLINK and len((entry.target or "").encode(
                "utf-8", "surrogateescape")) >= E.MAX_NAME:
            raise InputError(member, f"symlink target of {len(entry.target or '')} characters "
                             f"(limit {E.MAX_NAME - 1} bytes)", "no Linux symlink is that long")
        if entry.kind == E.SYMLINK and _unprintable(entry.target or ""):
            raise InputError(member, f"symlink target {shown(entry.target or '')!r} has control "
                             "characters or is not UTF-8", "image paths and link targets must "
                             "be printable UTF-8 (the manifest and the file system tools "
                             "depend on it)")
        for what, number in (("uid", uid), ("gid", gid)):
            if not 0 <= number <= MAX_ID:
                raise InputError(member, f"{what} {number} is out of range (0 to {MAX_ID})")
        record = new_record(entry, uid, gid, origin)
        record.xattrs = self._allowed_xattrs(record.xattrs, path, member)
        if record.xattrs and entry.kind == E.SYMLINK:  # the kernel has no xattrs on links
            raise InputError(member, "file capabilities on a symlink",
                             "capabilities apply to regular files only")
        return record

    def _allowed_xattrs(self, xattrs: dict[str, bytes], path: str, member: str) -> dict:
        kept = {}
        for key, value in sorted(xattrs.items()):
            if key in KEPT_XATTRS:
                _check_capability(value, member)
                kept[key] = value
            elif key.startswith(REFUSED_XATTR_PREFIXES):
                raise InputError(member, f"carries the extended attribute {shown(key)}",
                                 "only security.capability is carried into an image; trusted.* "
                                 "and security.* attributes change how the host treats files")
            else:
                self.dropped_xattrs.append(f"{path}: {shown(key)}")
        return kept

    def _implied_parents(self, path: str) -> None:
        parts = path.split("/")
        for i in range(1, len(parts)):
            self.records.setdefault("/".join(parts[:i]), Record(E.DIR, 0o755, origin="(implied)"))

    def add_bytes(self, path: str, content: bytes, mode: int, origin: str) -> None:
        """Write a file the pipeline makes itself (recipe files, extension-release)."""
        entry = E.Entry(path=path, kind=E.FILE, mode=mode, size=len(content),
                        data=io.BytesIO(content), member=origin)
        self.add(entry, path, 0, 0, origin)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class StagingTree(_Rules):
    """Writes entries below ``root`` and remembers, per path, what it wrote.

    Directories are created writable for their owner and get their final mode in
    :meth:`finish_modes`, after every entry is written: a package's 0555 directory must not stop
    a non-root build from filling it (or from cleaning up)."""

    def __init__(self, root: Path, *, owner_ids: bool):
        super().__init__()
        self.root = Path(root)
        self.root.mkdir(mode=0o755, parents=False, exist_ok=False)
        os.chmod(self.root, 0o755)  # mkdtemp-like 0700 would be recorded in the image
        self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        self.owner_ids = owner_ids  # chown on disk (only possible as root)
        self._dirs: collections.OrderedDict[str, int] = collections.OrderedDict()  # _dir_fd

    def _parent(self, path: str, member: str) -> tuple[int, str]:
        """The descriptor of ``path``'s parent directory (created as needed) and the last name.
        Owned by the tree, never closed by the caller."""
        parent, _, name = path.rpartition("/")
        return self._dir_fd(parent, member), name

    def _dir_fd(self, rel: str, member: str) -> int:
        """An open descriptor of the directory ``rel`` (created as needed), opened relative to
        its parent's with O_NOFOLLOW: never through a symlink (the records already said no; this
        is the file system saying it too). The last :data:`OPEN_DIRS` stay open, so an entry
        costs no path walk (archives list siblings together, and return to their parents).
        Staging never removes or replaces a directory (only non-directories are unlinked), so a
        descriptor keeps naming the directory it was opened as."""
        if not rel:
            return self._root_fd
        fd = self._dirs.get(rel)
        if fd is not None:
            self._dirs.move_to_end(rel)
            return fd
        # the deepest open ancestor, then down from it (a loop: packages nest deeper than
        # Python's stack)
        known, missing = rel, []
        while known and known not in self._dirs:
            known, _, part = known.rpartition("/")
            missing.append(part)
        fd = self._dirs[known] if known else self._root_fd
        for part in reversed(missing):
            known = f"{known}/{part}" if known else part
            fd = self._open_dir(fd, part, known, member)
            self._dirs[known] = fd
            if len(self._dirs) > OPEN_DIRS:  # the parent just used is recent: never closed
                os.close(self._dirs.popitem(last=False)[1])
        return fd

    @staticmethod
    def _open_dir(parent: int, part: str, rel: str, member: str) -> int:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(part, flags, dir_fd=parent)
        except FileNotFoundError:
            os.mkdir(part, 0o755, dir_fd=parent)
            os.chmod(part, 0o755, dir_fd=parent, follow_symlinks=False)
            return os.open(part, flags, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise InputError(member, f"would write through a link or file at {rel}",
                                 "refusing to follow links while extracting") from None
            raise

    def close(self) -> None:
        while self._dirs:
            os.close(self._dirs.popitem()[1])
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    # -- writers -----------------------------------------------------------------------------

    def add(self, entry: E.Entry, path: str, uid: int, gid: int, origin: str) -> None:
        """Write one archive entry at the (already canonical) image ``path``."""
        if not path:
            return  # the archive's own "./": the root's mode is ours to decide
        member = entry.member or path
        record = self.judge(entry, path, uid, gid, origin)
        dfd, name = self._parent(path, member)
        if path in self.records and entry.kind != E.DIR:
            os.unlink(name, dir_fd=dfd)
            self.replaced.append(path)
        if entry.kind == E.DIR:
            try:
                os.mkdir(name, 0o755, dir_fd=dfd)
            except FileExistsError:
                pass
        elif entry.kind == E.SYMLINK:
            os.symlink(entry.target, name, dir_fd=dfd)
        elif entry.kind == E.HARDLINK:
            sfd, sname = self._parent(canonical_path(entry.target, member), member)
            sfd = os.dup(sfd)  # finding dfd again may close the cached one
            try:
                dfd, name = self._parent(path, member)
                os.link(sname, name, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
            finally:
                os.close(sfd)
        else:  # a file: written and given its metadata through one descriptor
            record.size, record.sha256 = self._write_file(dfd, name, entry, record, member)
        if entry.kind in (E.DIR, E.SYMLINK):
            self._apply_metadata(dfd, name, record, member)
        self._implied_parents(path)
        self.records[path] = record

    def _write_file(self, dfd: int, name: str, entry: E.Entry, record: Record,
                    member: str) -> tuple[int, str]:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dfd)
        digest = hashlib.sha256()
        written = 0
        try:
            stream = entry.data
            remaining = entry.size
            while stream is not None and remaining > 0:
                chunk = stream.read(min(CHUNK, remaining))
                if not chunk:
                    raise InputError(member, f"truncated: {remaining} of {entry.size} bytes missing")
                digest.update(chunk)
                _write_all(fd, chunk)
                remaining -= len(chunk)
                written += len(chunk)
            if self.owner_ids:
                os.fchown(fd, record.uid, record.gid)  # before the mode: chown clears set-id bits
            os.fchmod(fd, record.mode)
            self._set_xattrs(fd, record, member)
        finally:
            os.close(fd)
        return written, digest.hexdigest()

    def _apply_metadata(self, dfd: int, name: str, record: Record, member: str) -> None:
        """A directory's or symlink's owner and attributes (a directory's mode is set last, in
        :meth:`finish_modes`; a file gets all of it in :meth:`_write_file`)."""
        if self.owner_ids:
            os.chown(name, record.uid, record.gid, dir_fd=dfd, follow_symlinks=False)
        if record.xattrs:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            try:
                self._set_xattrs(fd, record, member)
            finally:
                os.close(fd)

    @staticmethod
    def _set_xattrs(fd: int, record: Record, member: str) -> None:
        for key, value in record.xattrs.items():
            try:
                os.setxattr(fd, key, value)
            except PermissionError:
                raise InputError(member, f"cannot record the {key} attribute without root",
                                 "build as root to keep file capabilities") from None

    def open_data(self, path: str):
        """A written file's content, for a copy elsewhere (a hardlink whose target was routed
        to the other image). Safe for the same reason as set_mtime."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=self._root_fd)
        return os.fdopen(fd, "rb")

    def finish_modes(self) -> None:
        """Give directories their recorded modes, deepest first (they were kept writable)."""
        for path in sorted(self.records, key=lambda p: p.count("/"), reverse=True):
            record = self.records[path]
            if record.kind == E.DIR:
                os.chmod(path, record.mode, dir_fd=self._root_fd, follow_symlinks=False)

    def set_mtime(self, path: str, mtime: int) -> None:
        """Safe because no recorded path has a symlink among its parents (see judge)."""
        os.utime(path, (mtime, mtime), dir_fd=self._root_fd, follow_symlinks=False)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class RecordingTree(_Rules):
    """What a StagingTree would record, without writing anything: ``plan`` uses it to run the
    build's own extract code, with the same refusals. Sizes come from the archive headers."""

    root = None
    owner_ids = False

    def add(self, entry: E.Entry, path: str, uid: int, gid: int, origin: str) -> None:
        if not path:
            return
        record = self.judge(entry, path, uid, gid, origin)
        if path in self.records and entry.kind != E.DIR:
            self.replaced.append(path)
        if entry.kind == E.FILE:
            record.size = entry.size
            if isinstance(entry.data, io.BytesIO):
                record.sha256 = hashlib.sha256(entry.data.getvalue()).hexdigest()
        self._implied_parents(path)
        self.records[path] = record

    def open_data(self, path: str):
        return None  # nothing on disk: the copy is recorded by size

    def finish_modes(self) -> None:
        pass

    def set_mtime(self, path: str, mtime: int) -> None:
        pass

    def close(self) -> None:
        pass
