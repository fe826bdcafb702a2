"""The one writer of the staging root.

Every archive format and every recipe file reaches disk through :class:`StagingTree`, so path
safety is a property of this class alone: a member path with ``..``, an absolute path, a write
through a symlink, a hardlink that leaves the tree, or a device node is refused with an error
naming the member. All file system calls are relative to directory descriptors opened with
O_NOFOLLOW, so nothing can be created outside the root whatever an archive contains.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError
from .formats import entry as E

CHUNK = 1 << 20

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
    if raw.startswith("/"):
        raise InputError(member, "absolute path in archive", "refusing to write outside the root")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InputError(member, "path contains '..'", "refusing to write outside the root")
    if "\0" in raw:
        raise InputError(member, "path contains a NUL byte")
    if parts and parts[0] in MERGED_USR:
        parts.insert(0, "usr")
    return "/".join(parts)


def new_record(entry: E.Entry, uid: int, gid: int, origin: str) -> Record:
    """The record of an entry before its data is written (size and hash come from writing)."""
    record = Record(entry.kind, entry.mode & 0o7777, uid, gid, origin=origin, mtime=entry.mtime,
                    xattrs=dict(entry.xattrs))
    if entry.kind == E.SYMLINK:
        record.mode, record.target = 0o777, entry.target
        record.size = len((entry.target or "").encode())
    return record


class StagingTree:
    """Writes entries below ``root`` and remembers, per path, what it wrote."""

    def __init__(self, root: Path, *, owner_ids: bool):
        self.root = Path(root)
        self.root.mkdir(mode=0o755, parents=False, exist_ok=False)
        os.chmod(self.root, 0o755)  # mkdtemp-like 0700 would be recorded in the image
        self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        self.owner_ids = owner_ids  # chown on disk (only possible as root)
        self.records: dict[str, Record] = {}
        self.replaced: list[str] = []  # paths a later source overwrote

    def close(self) -> None:
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- directory walking -------------------------------------------------------------------

    def _open_parent(self, path: str, member: str) -> tuple[int, str]:
        """Open (creating as needed) the parent directory of ``path``; never follows a symlink."""
        parts = path.split("/")
        fd = os.dup(self._root_fd)
        walked = []
        try:
            for part in parts[:-1]:
                walked.append(part)
                sub = "/".join(walked)
                try:
                    nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except FileNotFoundError:
                    os.mkdir(part, 0o755, dir_fd=fd)
                    os.chmod(part, 0o755, dir_fd=fd, follow_symlinks=False)
                    self.records.setdefault(sub, Record(E.DIR, 0o755, origin="(implied)"))
                    nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        earlier = self.records.get(sub)
                        what = "symlink" if earlier and earlier.kind == E.SYMLINK else "file"
                        raise InputError(member, f"would write through the {what} {sub}",
                                         "refusing to follow links while extracting") from None
                    raise
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd, parts[-1]

    def _clear(self, dfd: int, name: str, path: str, new_kind: str, member: str) -> None:
        """Make room for ``path``: a later entry replaces an earlier file, never a directory."""
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if new_kind == E.DIR:
                return
            raise InputError(member, f"{path} is a directory in an earlier entry",
                             "a file cannot replace a directory")
        if new_kind == E.DIR:
            raise InputError(member, f"{path} is a file in an earlier entry",
                             "a directory cannot replace a file")
        os.unlink(name, dir_fd=dfd)
        self.replaced.append(path)

    # -- writers -----------------------------------------------------------------------------

    def add(self, entry: E.Entry, path: str, uid: int, gid: int, origin: str) -> None:
        """Write one archive entry at the (already canonical) image ``path``."""
        member = entry.member or path
        if not path:
            return  # the archive's own "./": the root's mode is ours to decide
        if entry.kind in (E.CHARDEV, E.BLOCKDEV):
            raise InputError(member, "device node in package", "extensions may not carry devices")
        if entry.kind not in (E.FILE, E.DIR, E.SYMLINK, E.HARDLINK):
            raise InputError(member, f"unsupported entry type {entry.kind}")
        dfd, name = self._open_parent(path, member)
        try:
            self._clear(dfd, name, path, entry.kind, member)
            record = new_record(entry, uid, gid, origin)
            if entry.kind == E.DIR:
                try:
                    os.mkdir(name, 0o755, dir_fd=dfd)
                except FileExistsError:
                    pass
            elif entry.kind == E.SYMLINK:
                if not entry.target:
                    raise InputError(member, "symlink without a target")
                os.symlink(entry.target, name, dir_fd=dfd)
            elif entry.kind == E.HARDLINK:
                record = self._hardlink(dfd, name, path, entry, member)
            else:
                record.size, record.sha256 = self._write_file(dfd, name, entry, member)
            if entry.kind != E.HARDLINK:
                self._apply_metadata(dfd, name, record, member)
            self.records[path] = record
        finally:
            os.close(dfd)

    def add_bytes(self, path: str, content: bytes, mode: int, origin: str) -> None:
        """Write a file the pipeline makes itself (recipe files, extension-release)."""
        entry = E.Entry(path=path, kind=E.FILE, mode=mode, size=len(content),
                        data=io.BytesIO(content), member=origin)
        self.add(entry, path, 0, 0, origin)

    def _write_file(self, dfd: int, name: str, entry: E.Entry, member: str) -> tuple[int, str]:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                     dir_fd=dfd)
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
        finally:
            os.close(fd)
        return written, digest.hexdigest()

    def _hardlink(self, dfd: int, name: str, path: str, entry: E.Entry, member: str) -> Record:
        target = canonical_path(entry.target or "", member)
        source = self.records.get(target)
        if source is None or source.kind != E.FILE:
            raise InputError(member, f"hardlink to {entry.target!r}, which is not a file "
                             "extracted before it", "refusing links that leave the package")
        sfd, sname = self._open_parent(target, member)
        try:
            os.link(sname, name, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
        finally:
            os.close(sfd)
        return source  # the same inode: one record object shared by both paths

    def _apply_metadata(self, dfd: int, name: str, record: Record, member: str) -> None:
        if record.kind != E.SYMLINK:
            os.chmod(name, record.mode, dir_fd=dfd, follow_symlinks=False)
        if self.owner_ids:
            os.chown(name, record.uid, record.gid, dir_fd=dfd, follow_symlinks=False)
            if record.mode & 0o6000 and record.kind != E.SYMLINK:
                os.chmod(name, record.mode, dir_fd=dfd)  # chown cleared setuid/setgid
        for key, value in sorted(record.xattrs.items()):
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
                try:
                    os.setxattr(fd, key, value)
                finally:
                    os.close(fd)
            except PermissionError:
                raise InputError(member, f"cannot record the {key} attribute without root",
                                 "build as root to keep file capabilities") from None

    def set_mtime(self, path: str, mtime: int) -> None:
        """Safe because no recorded path has a symlink among its parents (see _open_parent)."""
        os.utime(path, (mtime, mtime), dir_fd=self._root_fd, follow_symlinks=False)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class RecordingTree:
    """What a StagingTree would record, without writing anything: ``plan`` uses it to run the
    build's own extract code. Sizes come from the archive headers; no hashes."""

    root = None
    owner_ids = False

    def __init__(self):
        self.records: dict[str, Record] = {}
        self.replaced: list[str] = []

    def add(self, entry: E.Entry, path: str, uid: int, gid: int, origin: str) -> None:
        if not path:
            return
        parts = path.split("/")
        for i in range(1, len(parts)):
            self.records.setdefault("/".join(parts[:i]), Record(E.DIR, 0o755, origin="(implied)"))
        if entry.kind == E.HARDLINK:
            target = self.records.get(canonical_path(entry.target or "", entry.member))
            if target is not None:
                self.records[path] = target
            return
        if path in self.records and entry.kind != E.DIR:
            self.replaced.append(path)
        record = new_record(entry, uid, gid, origin)
        if entry.kind == E.FILE:
            record.size = entry.size
        self.records[path] = record

    def add_bytes(self, path: str, content: bytes, mode: int, origin: str) -> None:
        entry = E.Entry(path=path, kind=E.FILE, mode=mode, size=len(content), member=origin)
        self.add(entry, path, 0, 0, origin)
        self.records[path].sha256 = hashlib.sha256(content).hexdigest()

    def set_mtime(self, path: str, mtime: int) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass
