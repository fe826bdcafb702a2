"""Read an extension image's metadata without mounting it when possible.

squashfs: ``unsquashfs`` (listing with ``-lln``, the release directories extracted with their
xattrs into a temporary directory); erofs: a read-only loop mount when root, else
``fsck.erofs --extract`` (no xattrs); a plain directory as it is; ``NAME.v/`` directories pick
the newest ``NAME_VERSION[_ARCH].raw`` (or directory) inside, as systemd 256+ does; a DDI (GPT)
is read through its root partition (``pipeline/ddi/gpt.py``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .. import tools
from ..errors import BuildError, InputError
from . import rules
from .release import parse_env_file

RELEASE_DIRS = {"sysext": "usr/lib/extension-release.d", "confext": "etc/extension-release.d"}
STRICT_XATTR = "user.extension-release.strict"
_SQUASHFS_MAGIC = b"hsqs"
_EROFS_MAGIC = b"\xe2\xe1\xf5\xe0"  # at offset 1024


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


def sniff(path: Path) -> str:
    """squashfs | erofs | ddi | directory | unknown."""
    if path.is_dir():
        return "directory"
    with open(path, "rb") as fh:
        head = fh.read(4)
        fh.seek(1024)
        erofs = fh.read(4)
    if head == _SQUASHFS_MAGIC:
        return "squashfs"
    if erofs == _EROFS_MAGIC:
        return "erofs"
    try:
        from ..ddi.gpt import has_gpt
    except ImportError:  # pragma: no cover - the DDI package is optional
        return "unknown"
    return "ddi" if has_gpt(path) else "unknown"


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
        key = _version_key(match["version"])
        if best is None or key > best[0]:
            best = (key, child)
    return best[1] if best else None


def _version_key(version: str):
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
    fmt = sniff(path)
    if fmt == "unknown":
        raise InputError(str(path), "not a squashfs, erofs or GPT (DDI) image, nor a directory")
    with _opened(path, fmt) as tree:
        image = _facts_from_tree(path, fmt, tree, with_entries)
    image.picked_from = picked_from
    return image


class _Tree:
    """A read-only view: ``entries()``, ``read(rel)``, ``xattr(rel, name)``, ``root``."""

    root: Path | None = None

    def entries(self) -> list[Entry]:  # pragma: no cover - interface
        raise NotImplementedError

    def read(self, rel: str) -> bytes | None:  # pragma: no cover
        raise NotImplementedError

    def xattr(self, rel: str, name: str) -> str | None:  # pragma: no cover
        raise NotImplementedError

    def exists(self, rel: str) -> bool:
        return self.read_link_free(rel) is not None

    def read_link_free(self, rel: str) -> Entry | None:
        for entry in self.entries():
            if entry.path == rel:
                return entry
        return None


class _DirTree(_Tree):
    def __init__(self, root: Path):
        self.root = root
        self._entries: list[Entry] | None = None

    def entries(self) -> list[Entry]:
        if self._entries is None:
            out = []
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames.sort()
                for fname in sorted(dirnames + filenames):
                    full = Path(dirpath) / fname
                    rel = str(full.relative_to(self.root))
                    st = full.lstat()
                    if stat.S_ISLNK(st.st_mode):
                        out.append(Entry(rel, "symlink", st.st_mode, 0, os.readlink(full)))
                    elif stat.S_ISDIR(st.st_mode):
                        out.append(Entry(rel, "dir", st.st_mode))
                    elif stat.S_ISREG(st.st_mode):
                        out.append(Entry(rel, "file", st.st_mode, st.st_size))
                    else:
                        out.append(Entry(rel, "other", st.st_mode))
            self._entries = out
        return self._entries

    def exists(self, rel: str) -> bool:
        return chase(self.root, rel) is not None

    def read(self, rel: str) -> bytes | None:
        resolved = chase(self.root, rel)
        if resolved is None or not resolved.is_file():
            return None
        return resolved.read_bytes()

    def xattr(self, rel: str, name: str) -> str | None:
        try:
            return os.getxattr(self.root / rel, name, follow_symlinks=False).decode(
                errors="replace").rstrip("\0")
        except OSError:
            return None

    def listdir(self, rel: str) -> list[tuple[str, str]]:
        """(name, type) of the entries in directory ``rel`` (after resolving it in the root)."""
        resolved = chase(self.root, rel)
        if resolved is None or not resolved.is_dir():
            return []
        out = []
        for child in sorted(resolved.iterdir()):
            kind = "symlink" if child.is_symlink() else "file" if child.is_file() else \
                "dir" if child.is_dir() else "other"
            out.append((child.name, kind))
        return out


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


@contextlib.contextmanager
def _opened(path: Path, fmt: str, offset: int = 0) -> Iterator[_Tree]:
    if fmt == "directory":
        yield _DirTree(path)
        return
    if fmt == "squashfs":
        with tempfile.TemporaryDirectory(prefix="sysext-check-") as tmp:
            yield _squashfs_tree(path, Path(tmp), offset)
        return
    if fmt == "erofs":
        with _erofs_tree(path, offset) as tree:
            yield tree
        return
    if fmt == "ddi":
        part_fmt, part_offset = _ddi_root(path)
        with _opened(path, part_fmt, part_offset) as tree:
            yield tree
        return
    raise InputError(str(path), f"unsupported image format {fmt}")


def _squashfs_tree(path: Path, tmp: Path, offset: int) -> _DirTree:
    """Extract the metadata paths (release dirs, os-release) with xattrs; list everything."""
    off = ["-o", str(offset)] if offset else []
    listing = tools.run("unsquashfs", ["-lln", *off, "-d", "", str(path)],
                        what=f"listing {path}").stdout.decode(errors="replace")
    entries = _parse_lln(listing)
    dest = tmp / "root"
    wanted = [e.path for e in entries if _is_metadata(e.path)]
    # Symlinked release dirs/os-release: pull their targets too (one level is what happens).
    by_path = {e.path: e for e in entries}
    for rel in list(wanted):
        entry = by_path.get(rel)
        if entry and entry.type == "symlink" and entry.target:
            target = entry.target.lstrip("/") if entry.target.startswith("/") else \
                os.path.normpath(os.path.join(os.path.dirname(rel), entry.target))
            wanted.append(target)
    if wanted:
        proc = subprocess.run([tools.find("unsquashfs"), "-no-progress", "-q", *off, "-d",
                               str(dest), str(path), *wanted], capture_output=True,
                              env=tools.clean_env(), check=False)
        if proc.returncode not in (0, 2):  # 2: non-fatal (e.g. xattrs not supported)
            raise BuildError("unsquashfs", f"reading {path} failed (exit {proc.returncode})",
                             proc.stderr.decode(errors="replace").strip()[-300:])
    dest.mkdir(exist_ok=True)
    tree = _DirTree(dest)
    tree._entries = entries
    return tree


def _is_metadata(rel: str) -> bool:
    return (rel in ("usr/lib/os-release", "etc/os-release", "usr", "usr/lib", "etc")
            or rel.startswith(("usr/lib/extension-release.d", "etc/extension-release.d")))


_LLN = re.compile(r"^(?P<mode>[-dlcbps][-rwxsStT]{9})\s+\S+\s+(?P<size>\d+|\d+,\s*\d+)\s+"
                  r"\S+\s+\S+\s+(?P<path>.*)$")


def _parse_lln(text: str) -> list[Entry]:
    out = []
    for line in text.splitlines():
        match = _LLN.match(line)
        if not match:
            continue
        rel = match["path"].lstrip("/")
        if not rel:
            continue
        target = None
        kind = {"-": "file", "d": "dir", "l": "symlink"}.get(match["mode"][0], "other")
        if kind == "symlink" and " -> " in rel:
            rel, target = rel.split(" -> ", 1)
        size = int(match["size"]) if match["size"].isdigit() else 0
        out.append(Entry(rel, kind, _mode_bits(match["mode"]), size, target))
    return out


def _mode_bits(text: str) -> int:
    bits = 0
    for i, ch in enumerate(text[1:]):
        if ch not in "-ST":
            bits |= 1 << (8 - i)
    if text[3] in "sS":
        bits |= 0o4000
    if text[6] in "sS":
        bits |= 0o2000
    return bits


@contextlib.contextmanager
def _erofs_tree(path: Path, offset: int) -> Iterator[_DirTree]:
    with tempfile.TemporaryDirectory(prefix="sysext-check-") as tmp:
        mnt = Path(tmp) / "mnt"
        mnt.mkdir()
        if os.geteuid() == 0:
            opts = "ro,loop" + (f",offset={offset}" if offset else "")
            proc = subprocess.run(["mount", "-t", "erofs", "-o", opts, str(path), str(mnt)],
                                  capture_output=True, text=True, check=False)
            if proc.returncode == 0:
                try:
                    yield _DirTree(mnt)
                finally:
                    subprocess.run(["umount", str(mnt)], capture_output=True, check=False)
                return
        if offset:
            raise InputError(str(path), "reading an erofs partition of a DDI needs root",
                             "run as root (a read-only loop mount)")
        tools.run("fsck.erofs", [f"--extract={mnt}", "--no-preserve", "--overwrite", str(path)],
                  what=f"extracting {path}")
        yield _DirTree(mnt)


def _ddi_root(path: Path) -> tuple[str, int]:
    from ..ddi.gpt import read_gpt
    from . import partitions

    table = read_gpt(path)
    for wanted in ("root", "usr"):
        for part in table.partitions:
            found = partitions.lookup(part.type_uuid)
            if found and found[0] == wanted:
                with open(path, "rb") as fh:
                    fh.seek(part.offset)
                    head = fh.read(2048)
                if head[:4] == _SQUASHFS_MAGIC:
                    return "squashfs", part.offset
                if head[1024:1028] == _EROFS_MAGIC:
                    return "erofs", part.offset
                raise InputError(str(path), f"the {wanted} partition is neither squashfs nor "
                                 "erofs", "check can read squashfs and erofs DDIs")
    raise InputError(str(path), "GPT image without a root or usr partition",
                     "systemd-sysext needs a root (or usr) partition of the host's architecture")


def _facts_from_tree(path: Path, fmt: str, tree: _DirTree, with_entries: bool) -> Image:
    release: dict[str, dict[str, rules.ReleaseFile]] = {}
    for kind, rel_dir in RELEASE_DIRS.items():
        files = {}
        for fname, ftype in tree.listdir(rel_dir):
            if not fname.startswith("extension-release.") or ftype != "file":
                continue
            suffix = fname[len("extension-release."):]
            data = tree.read(f"{rel_dir}/{fname}") or b""
            files[suffix] = rules.ReleaseFile(
                suffix, parse_env_file(data.decode(errors="replace")),
                tree.xattr(f"{rel_dir}/{fname}", STRICT_XATTR))
        if files:
            release[kind] = files
    kinds = list(release)
    kind = kinds[0] if len(kinds) == 1 else ("sysext" if "sysext" in kinds else None)
    facts = rules.ImageFacts(
        file_name=path.name, is_dir=fmt == "directory", release=release,
        has_usr_lib_os_release=tree.exists("usr/lib/os-release"),
        has_etc_os_release=tree.exists("etc/os-release"), kind=kind)
    guess = kind
    if guess is None:  # no release file at all: guess the kind from the content
        top = {e.path.split("/", 1)[0] for e in tree.entries()} if fmt != "directory" else \
            {p.name for p in path.iterdir()}
        guess = "confext" if "etc" in top and not ({"usr", "opt"} & top) else "sysext"
    image = Image(path, fmt, facts, guessed_kind=guess)
    if with_entries:
        image.entries = list(tree.entries())
    return image


def extract(path: Path, dest: Path, paths: list[str] | None = None) -> Path:
    """Unpack the image (or ``paths`` of it) into ``dest`` for content checks (doctor)."""
    path = Path(path)
    fmt = sniff(path)
    if fmt == "directory":
        return path
    if fmt == "squashfs":
        proc = subprocess.run([tools.find("unsquashfs"), "-no-progress", "-q", "-no-xattrs",
                               "-d", str(dest), str(path), *(paths or [])],
                              capture_output=True, env=tools.clean_env(), check=False)
        if proc.returncode not in (0, 2):
            raise BuildError("unsquashfs", f"extracting {path} failed",
                             proc.stderr.decode(errors="replace")[-300:])
        return dest
    if fmt == "erofs":
        tools.run("fsck.erofs", [f"--extract={dest}", "--no-preserve", "--overwrite", str(path)],
                  what=f"extracting {path}")
        return dest
    raise InputError(str(path), f"cannot unpack a {fmt} image here")


def copy_tree(src: Path, dest: Path) -> None:
    shutil.copytree(src, dest, symlinks=True)
