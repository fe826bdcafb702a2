"""An extension image as systemd-sysext sees it: its release files, os-release and entries.

The file system is read through pipeline/image/fsinfo/ as an image from anyone (unpacked by unsquashfs
or fsck.erofs onto an inert tmpfs in a private namespace, never mounted; it finds a DDI's
root/usr partition); :func:`extract` copies out contents, never devices, set-id bits or
capabilities. This module adds
systemd's view of it: a ``NAME.v/`` directory picks the newest ``NAME_VERSION[_ARCH].raw`` (or
directory) inside, as systemd 256+ does, and paths resolve inside the image the way systemd's
chase() does, so a symlinked release directory is found where systemd would find it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..image import fsinfo
from ..systemd import rules
from ..systemd.release import RELEASE_DIRS, parse_env_file

STRICT_XATTR = "user.extension-release.strict"


@dataclass
class Entry:
    path: str  # relative, no leading slash
    type: str  # file | dir | symlink | other
    mode: int = 0
    size: int = 0
    target: str | None = None


@dataclass
class Image:
    path: Path
    format: str  # squashfs | erofs | directory | ddi
    facts: rules.ImageFacts
    entries: list[Entry] = field(default_factory=list)
    picked_from: Path | None = None  # the .v/ directory this image was picked from
    guessed_kind: str | None = None  # kind from the release files, else from the content

    @property
    def kind(self) -> str | None:
        return self.facts.kind

    @property
    def is_dir(self) -> bool:
        return self.facts.is_dir


_V_ENTRY = re.compile(r"^(?P<name>[^_]+)_(?P<version>[^_]+?)(?:_(?P<arch>[a-z0-9-]+))?$")


def pick_from_v(directory: Path, architecture: str | None = None) -> Path | None:
    """The entry systemd 256+ picks in ``NAME.v/`` or ``NAME.raw.v/``: the newest version."""
    base = directory.name[: -len(".v")]
    want_raw = base.endswith(".raw")
    stem = base[: -len(".raw")] if want_raw else base
    best: tuple[object, Path] | None = None
    for child in directory.iterdir():
        fname = child.name
        if want_raw:
            if not fname.endswith(".raw") or not child.is_file():
                continue
            fname = fname[: -len(".raw")]
        match = _V_ENTRY.match(fname)
        if not match or match["name"] != stem:
            continue
        if match["arch"] and architecture and match["arch"] != architecture:
            continue
        key = version_key(match["version"])
        if best is None or key > best[0]:
            best = (key, child)
    return best[1] if best else None


def version_key(version: str):
    """strverscmp_improved, approximately: digits numerically, '~' sorts before everything."""
    parts = []
    for token in re.findall(r"\d+|[A-Za-z]+|~|[^\dA-Za-z~]", version):
        if token.isdigit():
            parts.append((2, int(token), ""))
        elif token == "~":
            parts.append((0, 0, ""))
        else:
            parts.append((1, 0, token))
    return parts


def read(path: Path | str, *, with_entries: bool = False, architecture: str | None = None) -> Image:
    """Read ``path`` (raw image, directory, or ``.v/`` directory) into an :class:`Image`."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise InputError(str(path), "no such image")
    picked_from = None
    if path.is_dir() and path.name.endswith(".v"):
        chosen = pick_from_v(path, architecture)
        if chosen is None:
            raise InputError(str(path), "no NAME_VERSION entry in this .v/ directory",
                             "add e.g. NAME_1.raw inside it")
        picked_from, path = path, chosen
    fs = fsinfo.locate(path)
    with fsinfo.opened(fs) as view:
        image = _facts_from_tree(path, "ddi" if fs.ddi else fs.type, view.root, with_entries,
                                 architecture)
    image.picked_from = picked_from
    return image


def chase(root: Path, rel: str, _depth: int = 0) -> Path | None:
    """Resolve ``rel`` inside ``root`` the way systemd's chase(CHASE_PREFIX_ROOT) does:
    absolute symlink targets are relative to ``root``, nothing escapes it. None: missing."""
    root = Path(root)
    current = root
    parts = [p for p in rel.split("/") if p and p != "."]
    while parts:
        part = parts.pop(0)
        if part == "..":
            if current != root:
                current = current.parent
            continue
        candidate = current / part
        if candidate.is_symlink():
            if _depth > 32:
                return None
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = root
            parts = [p for p in target.split("/") if p and p != "."] + parts
            _depth += 1
            continue
        if not candidate.exists():
            return None
        current = candidate
    return current


def _listdir(root: Path, rel: str) -> list[tuple[str, str]]:
    """(name, type) of the entries of directory ``rel``, resolved inside the image."""
    resolved = chase(root, rel)
    if resolved is None or not resolved.is_dir():
        return []
    return [(child.name, "symlink" if child.is_symlink() else "file" if child.is_file() else
             "dir" if child.is_dir() else "other") for child in sorted(resolved.iterdir())]


def _read(root: Path, rel: str) -> bytes | None:
    resolved = chase(root, rel)
    return resolved.read_bytes() if resolved is not None and resolved.is_file() else None


def _xattr(root: Path, rel: str, name: str) -> str | None:
    resolved = chase(root, rel)
    try:
        return os.getxattr(resolved, name, follow_symlinks=False).decode(
            errors="replace").rstrip("\0") if resolved is not None else None
    except OSError:
        return None


def _entry(item: dict) -> Entry:
    kind = item["type"] if item["type"] in ("file", "dir", "symlink") else "other"
    return Entry(item["path"], kind, int(item["mode"], 8), item.get("size", 0), item.get("target"))


def elf_architectures(root: Path) -> tuple[str, ...]:
    """The architectures (systemd spelling; another machine as formats/elf.py describes it) of
    the ELF files under ``root``: () for an architecture-independent payload. Only the first 20
    bytes of each regular file are read, without following symlinks."""
    from ..formats import elf

    names = {ident: arch for arch, ident in elf.ELF_MACHINES.items()}
    found: set[str] = set()
    for directory, _dirs, files in os.walk(root):
        for name in files:
            try:
                fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_NOFOLLOW |
                             os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:  # a symlink, a socket: not a file of the payload
                continue
            try:
                header = os.pread(fd, 20, 0) if os.fstat(fd).st_size >= 20 else b""
            except OSError:
                header = b""
            finally:
                os.close(fd)
            ident = elf.identify(header)
            if ident is not None:
                found.add(names.get(ident) or elf.describe(ident))
    return tuple(sorted(found))


def _facts_from_tree(path: Path, fmt: str, root: Path, with_entries: bool,
                     architecture: str | None = None) -> Image:
    release: dict[str, dict[str, rules.ReleaseFile]] = {}
    for kind, rel_dir in RELEASE_DIRS.items():
        files = {}
        for fname, ftype in _listdir(root, rel_dir):
            if not fname.startswith("extension-release.") or ftype not in ("file", "symlink"):
                continue
            if ftype == "symlink":  # followed inside the image: only a regular file counts
                target = chase(root, f"{rel_dir}/{fname}")
                if target is None or not target.is_file():
                    continue
            suffix = fname[len("extension-release."):]
            data = _read(root, f"{rel_dir}/{fname}") or b""
            files[suffix] = rules.ReleaseFile(
                suffix, parse_env_file(data.decode(errors="replace")),
                _xattr(root, f"{rel_dir}/{fname}", STRICT_XATTR), symlink=ftype == "symlink")
        if files:
            release[kind] = files
    kinds = list(release)
    kind = kinds[0] if len(kinds) == 1 else ("sysext" if "sysext" in kinds else None)
    # which architectures its binaries are for, when a release file names another one than the
    # host's (rule match.architecture: its fix depends on them)
    other = {f.fields.get("ARCHITECTURE") for files in release.values() for f in files.values()}
    other -= {None, "", "_any", architecture}
    facts = rules.ImageFacts(
        file_name=path.name, is_dir=fmt == "directory", release=release,
        has_usr_lib_os_release=chase(root, "usr/lib/os-release") is not None,
        has_etc_os_release=chase(root, "etc/os-release") is not None, kind=kind,
        elf_architectures=elf_architectures(root) if other else None)
    guess = kind
    if guess is None:  # no release file at all: guess the kind from the content
        top = set(os.listdir(root))
        guess = "confext" if "etc" in top and not ({"usr", "opt"} & top) else "sysext"
    image = Image(path, fmt, facts, guessed_kind=guess)
    if with_entries:
        image.entries = [_entry(e) for e in fsinfo.walk_dir(root, include_root=False,
                                                            hashes=False)]
    return image


def extract(path: Path, dest: Path, paths: list[str] | None = None) -> Path:
    """Unpack the image (or ``paths`` of it) into ``dest`` for content checks (doctor); a
    directory image is returned as it is."""
    return fsinfo.extract(path, Path(dest), paths, xattrs=False)
