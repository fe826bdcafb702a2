"""Build REAL .deb and .rpm packages for tests, with dpkg-deb and rpmbuild.

Readers are only trustworthy when checked against what the real tools produce, so fixtures
use these helpers rather than hand-made archives. Describe the content once as a list of
:class:`PkgFile` (helpers: :func:`file`, :func:`directory`, :func:`symlink`, :func:`hardlink`,
:func:`config`, :func:`ghost`) and build either format from it::

    FILES = [file("/usr/bin/hello", b"#!/bin/sh\\n", 0o755), symlink("/usr/bin/hi", "hello")]
    deb = build_deb(tmp, "hello", "1.0", FILES, compression="zstd")
    rpm = build_rpm(tmp, "hello", "1.0", FILES, compression="xz")

Format gaps, deliberately ignored rather than emulated: a .deb cannot carry file capabilities
or %ghost files (``caps`` and ``ghost`` are dropped for deb), and dpkg-deb ``--root-owner-group``
makes every file root:root (``owner`` applies to rpm only).

Everything is deterministic (fixed mtimes, SOURCE_DATE_EPOCH) and fast: rpmbuild runs with the
brp post-install scripts, debuginfo and build-id links switched off.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

EPOCH = 1_700_000_000  # mtime of every staged file, and SOURCE_DATE_EPOCH

# rpmbuild's _binary_payload: "w<level>.<io>"; low levels keep builds fast.
RPM_PAYLOADS = {
    "gzip": "w1.gzdio",
    "bzip2": "w1.bzdio",
    "xz": "w1.xzdio",
    "lzma": "w1.lzdio",
    "zstd": "w3.zstdio",
    "none": "w0.ufdio",
}
DEB_COMPRESSIONS = ("gzip", "xz", "zstd", "none")


@dataclass(frozen=True)
class PkgFile:
    """One path of a test package. ``path`` is absolute (``/usr/bin/x``).

    kind: "file" | "dir" | "symlink" | "hardlink"; ``target`` is the symlink target or, for a
    hardlink, the absolute path of the file it links to (which must come earlier in the list).
    ``caps`` (rpm only) is libcap text such as ``cap_net_raw=ep``; ``config`` marks /etc files
    as %config(noreplace) / conffiles; ``ghost`` (rpm only) lists a path that is not shipped.
    """

    path: str
    kind: str = "file"
    content: bytes = b""
    mode: int = 0o644
    target: str | None = None
    caps: str | None = None
    config: bool = False
    ghost: bool = False
    owner: tuple[str, str] | None = None  # rpm only: %attr(-, user, group)


def file(path: str, content: bytes = b"", mode: int = 0o644, *, caps: str | None = None,
         owner: tuple[str, str] | None = None) -> PkgFile:
    """A regular file; use mode 0o4755 for setuid, ``caps=`` for a file capability (rpm)."""
    return PkgFile(path, "file", content, mode, caps=caps, owner=owner)


def directory(path: str, mode: int = 0o755) -> PkgFile:
    return PkgFile(path, "dir", mode=mode)


def symlink(path: str, target: str) -> PkgFile:
    return PkgFile(path, "symlink", mode=0o777, target=target)


def hardlink(path: str, target: str) -> PkgFile:
    """A second name for the earlier regular file ``target`` (same inode in the package)."""
    return PkgFile(path, "hardlink", target=target)


def config(path: str, content: bytes = b"", mode: int = 0o644) -> PkgFile:
    """A configuration file: deb conffile / rpm %config(noreplace)."""
    return PkgFile(path, "file", content, mode, config=True)


def ghost(path: str, mode: int = 0o644) -> PkgFile:
    """An rpm %ghost: listed in the header, absent from the payload (dropped for deb)."""
    return PkgFile(path, "file", mode=mode, ghost=True)


def stage(root: Path, files: Iterable[PkgFile], *, skip_ghosts: bool = True) -> None:
    """Create ``files`` under ``root`` with exact modes and a fixed mtime (root gets 0755)."""
    os.chmod(root, 0o755)  # mkdtemp makes 0700, and archivers record the root's mode
    for f in files:
        if f.ghost and skip_ghosts:
            continue
        dest = root / f.path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if f.kind == "dir":
            dest.mkdir(exist_ok=True)
        elif f.kind == "symlink":
            os.symlink(f.target, dest)
        elif f.kind == "hardlink":
            os.link(root / f.target.lstrip("/"), dest)
            continue
        else:
            dest.write_bytes(f.content)
        if f.kind != "symlink":
            os.chmod(dest, f.mode)
    for path in sorted(root.rglob("*"), reverse=True) + [root]:
        os.utime(path, (EPOCH, EPOCH), follow_symlinks=False)


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH), "LC_ALL": "C.UTF-8", "TZ": "UTC"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def build_deb(outdir: str | os.PathLike[str], name: str, version: str, files: Iterable[PkgFile],
              *, arch: str = "amd64", compression: str = "xz", conffiles: Iterable[str] = (),
              depends: str | None = None, fields: dict[str, str] | None = None,
              md5sums: bool = True, scripts: dict[str, str] | None = None) -> Path:
    """Build ``name_version_arch.deb`` in ``outdir`` with ``dpkg-deb --build --root-owner-group``.

    Conffiles are the ``config`` entries plus ``conffiles``. ``compression`` is dpkg-deb's -Z.
    ``fields``: more control fields (Pre-Depends, Provides, Recommends, Conflicts, Multi-Arch…).
    ``md5sums``: write DEBIAN/md5sums as dh_md5sums does (every regular file but conffiles).
    ``scripts``: maintainer scripts by name (``postinst``: its text), executable.
    """
    if compression not in DEB_COMPRESSIONS:
        raise ValueError(f"dpkg-deb cannot compress with {compression!r}")
    files = list(files)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=outdir) as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        stage(root, files)
        control = root / "DEBIAN"
        control.mkdir(mode=0o755, exist_ok=True)
        extra, fields = fields, [f"Package: {name}", f"Version: {version}", f"Architecture: {arch}",
                  "Maintainer: Test <test@example.invalid>", "Description: test package"]
        if depends:
            fields.insert(3, f"Depends: {depends}")
        fields[3:3] = [f"{k}: {v}" for k, v in (extra or {}).items()]
        (control / "control").write_text("\n".join(fields) + "\n")
        for script, text in (scripts or {}).items():
            (control / script).write_text(text)
            (control / script).chmod(0o755)
        conf = [f.path for f in files if f.config] + list(conffiles)
        if conf:
            (control / "conffiles").write_text("".join(f"{p}\n" for p in conf))
        if md5sums:
            sums = [f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.relative_to(root)}\n"
                    for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()
                    and "/" + str(p.relative_to(root)) not in conf
                    and p.relative_to(root).parts[0] != "DEBIAN"]
            if sums:
                (control / "md5sums").write_text("".join(sums))
        os.chmod(root, 0o755)
        out = outdir / f"{name}_{version}_{arch}.deb"
        _run(["dpkg-deb", "--build", "--root-owner-group", f"-Z{compression}", str(root),
              str(out)])
    return out


def build_rpm(outdir: str | os.PathLike[str], name: str, version: str, files: Iterable[PkgFile],
              *, arch: str = "x86_64", compression: str = "xz", release: str = "1",
              epoch: int | None = None, requires: str | None = None,
              tags: Iterable[tuple[str, str]] = ()) -> Path:
    """Build ``name-version-release.arch.rpm`` in ``outdir`` with ``rpmbuild -bb``.

    ``tags``: more spec header lines, e.g. ("Provides", "x = 1"), ("Requires", "(a or b)").
    ``compression`` selects ``_binary_payload`` (gzip, bzip2, xz, lzma, zstd, none). The staged
    tree is copied into the buildroot by %install; %files gets %attr/%caps/%config/%ghost/%dir
    as the entries ask.
    """
    files = list(files)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=outdir) as tmp:
        top = Path(tmp)
        src = top / "stage"
        src.mkdir()
        stage(src, files)
        spec = top / f"{name}.spec"
        spec.write_text(_spec(name, version, release, epoch, arch, requires, src, files,
                              tuple(tags)))
        defines = {
            "_topdir": str(top),
            "_binary_payload": RPM_PAYLOADS[compression],
            "__os_install_post": "%{nil}",
            "debug_package": "%{nil}",
            "_build_id_links": "none",
            "_buildhost": "pkgfactory",
            "use_source_date_epoch_as_buildtime": "1",
            "clamp_mtime_to_source_date_epoch": "1",
        }
        cmd = ["rpmbuild", "-bb", "--quiet", "--target", arch]
        for key, value in defines.items():
            cmd += ["--define", f"{key} {value}"]
        _run(cmd + [str(spec)])
        built = list((top / "RPMS").rglob("*.rpm"))
        if len(built) != 1:
            raise RuntimeError(f"rpmbuild produced {built}")
        out = outdir / built[0].name
        shutil.move(built[0], out)
    return out


def flip_byte(package: str | os.PathLike[str], marker: bytes, out: str | os.PathLike[str],
              offset: int = 0) -> Path:
    """Copy ``package`` to ``out`` with one bit of the byte at ``marker`` + ``offset`` flipped
    (the marker must occur exactly once: use an uncompressed payload)."""
    data = bytearray(Path(package).read_bytes())
    if data.count(marker) != 1:
        raise ValueError(f"{marker!r} occurs {data.count(marker)} times in {package}")
    data[data.index(marker) + offset] ^= 0x01
    Path(out).write_bytes(bytes(data))
    return Path(out)


def _spec(name: str, version: str, release: str, epoch: int | None, arch: str,
          requires: str | None, src: Path, files: list[PkgFile],
          tags: tuple[tuple[str, str], ...] = ()) -> str:
    lines = []
    for f in files:
        owner = f.owner or ("root", "root")
        attr = f"%attr({f.mode:04o},{owner[0]},{owner[1]})" if f.kind != "symlink" else ""
        prefix = {"dir": "%dir "}.get(f.kind, "")
        if f.caps:
            prefix += f"%caps({f.caps}) "
        if f.config:
            prefix += "%config(noreplace) "
        if f.ghost:
            prefix += "%ghost "
        lines.append(f"{attr} {prefix}{f.path}".strip())
    ghosts = [f for f in files if f.ghost]
    touch = "".join(
        f"mkdir -p %{{buildroot}}{os.path.dirname(g.path)}\ntouch %{{buildroot}}{g.path}\n"
        for g in ghosts
    )
    header = textwrap.dedent(f"""\
        Name: {name}
        Version: {version}
        Release: {release}
        Summary: test package
        License: MIT
        BuildArch: {arch}
        """)
    if epoch is not None:
        header += f"Epoch: {epoch}\n"
    if requires:
        header += f"Requires: {requires}\n"
    header += "".join(f"{tag}: {value}\n" for tag, value in tags)
    return (
        header
        + "AutoReqProv: no\n\n%description\ntest package\n\n%install\n"
        + f"mkdir -p %{{buildroot}}\ncp -a {src}/. %{{buildroot}}/\n{touch}\n"
        + "%files\n" + "\n".join(lines) + "\n"
    )


# --- comparing what a reader yields with what a real tool unpacked ------------------------------


@dataclass(frozen=True)
class Node:
    """One path of a tree snapshot: ``payload`` is the sha256 of a file or a symlink's target."""

    kind: str  # "file" | "dir" | "symlink" | "other"
    mode: int  # permission bits incl. setuid/setgid/sticky
    payload: str | None
    mtime: int | None = None


@dataclass
class Snapshot:
    """Paths (relative, "" for the root) → Node, plus the hard link groups (sets of ≥ 2 paths)."""

    nodes: dict[str, Node]
    links: set[frozenset[str]]


def _relpath(path: str) -> str:
    return os.path.normpath("/" + path).lstrip("/")


def _sha256(stream) -> str:
    import hashlib

    digest = hashlib.sha256()
    for chunk in iter(lambda: stream.read(1 << 16), b""):
        digest.update(chunk)
    return digest.hexdigest()


def snapshot_dir(root: str | os.PathLike[str], *, mtimes: bool = True) -> Snapshot:
    """Snapshot a directory tree as unpacked by dpkg-deb -x or cpio -idm."""
    import stat as st

    root = Path(root)
    nodes: dict[str, Node] = {}
    inodes: dict[int, set[str]] = {}
    for path in [root, *sorted(root.rglob("*"))]:
        rel = path.relative_to(root).as_posix() if path != root else ""
        info = path.lstat()
        mode = st.S_IMODE(info.st_mode)
        mtime = int(info.st_mtime) if mtimes else None
        if st.S_ISLNK(info.st_mode):
            nodes[rel] = Node("symlink", mode, os.readlink(path), mtime)
        elif st.S_ISDIR(info.st_mode):
            nodes[rel] = Node("dir", mode, None)
        elif st.S_ISREG(info.st_mode):
            with open(path, "rb") as f:
                nodes[rel] = Node("file", mode, _sha256(f), mtime)
            if info.st_nlink > 1:
                inodes.setdefault(info.st_ino, set()).add(rel)
        else:
            nodes[rel] = Node("other", mode, None, mtime)
    return Snapshot(nodes, {frozenset(g) for g in inodes.values() if len(g) > 1})


def snapshot_entries(entries: Iterable, *, mtimes: bool = True) -> Snapshot:
    """Snapshot an Entry stream the way :func:`snapshot_dir` sees the unpacked tree.

    Consumes each file's ``data`` as it goes (so it also proves the stream is readable in order);
    a HARDLINK takes its target's content and joins its target's link group.
    """
    nodes: dict[str, Node] = {}
    groups: dict[str, set[str]] = {}
    for e in entries:
        rel = _relpath(e.path)
        mtime = e.mtime if mtimes else None
        if e.kind == "file":
            nodes[rel] = Node("file", e.mode, _sha256(e.data), mtime)
        elif e.kind == "hardlink":
            target = _relpath(e.target)
            nodes[rel] = Node("file", e.mode, nodes[target].payload, mtime)
            group = groups.setdefault(target, {target})
            group.add(rel)
            groups[rel] = group
        elif e.kind == "symlink":
            nodes[rel] = Node("symlink", e.mode, e.target, mtime)
        elif e.kind == "dir":
            nodes[rel] = Node("dir", e.mode, None)
        else:
            nodes[rel] = Node("other", e.mode, None, mtime)
    return Snapshot(nodes, {frozenset(g) for g in groups.values()})


def diff_snapshots(got: Snapshot, tool: Snapshot, *, implicit_dirs: bool = False,
                   symlink_mtimes: bool = True) -> list[str]:
    """Human-readable differences between a reader's snapshot and a tool's unpacked tree.

    ``implicit_dirs``: the tool may have created parent directories the archive does not list
    (``cpio -idm`` does for an RPM payload); those must be directories and ancestors of listed
    paths, and their modes are not compared. ``symlink_mtimes=False``: the tool does not set
    them (GNU cpio -m does not).
    """
    from dataclasses import replace

    def norm(node: Node | None) -> Node | None:
        if node is not None and node.kind == "symlink" and not symlink_mtimes:
            return replace(node, mtime=None)
        return node

    problems = []
    for path in sorted(got.nodes.keys() | tool.nodes.keys()):
        mine, theirs = norm(got.nodes.get(path)), norm(tool.nodes.get(path))
        if mine is None:
            ancestor = path == "" or any(p.startswith(path + "/") for p in got.nodes)
            if not (implicit_dirs and theirs.kind == "dir" and ancestor):
                problems.append(f"{path!r}: unpacked by the tool, not yielded: {theirs}")
        elif theirs is None:
            problems.append(f"{path!r}: yielded, not unpacked by the tool: {mine}")
        elif mine != theirs:
            problems.append(f"{path!r}: yielded {mine}, tool has {theirs}")
    if got.links != tool.links:
        problems.append(f"hard links: yielded {sorted(map(sorted, got.links))}, "
                        f"tool has {sorted(map(sorted, tool.links))}")
    return problems


def unpack_rpm(rpm: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Unpack with the real tools: ``rpm2cpio X | cpio -idm --quiet`` into ``dest``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    rpm2cpio = subprocess.Popen(["rpm2cpio", str(rpm)], stdout=subprocess.PIPE)
    cpio = subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"],
                          stdin=rpm2cpio.stdout, cwd=dest, capture_output=True)
    rpm2cpio.stdout.close()
    if rpm2cpio.wait() != 0 or cpio.returncode != 0:
        raise RuntimeError(f"rpm2cpio | cpio failed for {rpm}: {cpio.stderr.decode()}")
    return dest


def unpack_deb(deb: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Unpack with the real tool: ``dpkg-deb -x``."""
    _run(["dpkg-deb", "-x", str(deb), str(dest)])
    return Path(dest)


# A package exercising every feature the readers must get right; reuse it across the suite.
SAMPLE = (
    directory("/usr/share/sample", 0o750),
    file("/usr/bin/sample", b"#!/bin/sh\necho sample\n", 0o755),
    file("/usr/bin/sample-suid", b"setuid\n", 0o4755),
    file("/usr/bin/sample-ping", b"needs raw sockets\n", 0o755, caps="cap_net_raw=ep"),
    file("/usr/share/sample/data", bytes(range(256)) * 64),
    hardlink("/usr/share/sample/data-link", "/usr/share/sample/data"),
    file("/usr/share/sample/empty"),
    hardlink("/usr/share/sample/empty-link", "/usr/share/sample/empty"),
    symlink("/usr/bin/sample-link", "sample"),
    symlink("/usr/share/sample/abs-link", "/usr/bin/sample"),
    file("/usr/share/sample/nobody", b"owned by nobody\n", owner=("nobody", "nogroup")),
    config("/etc/sample.conf", b"key=value\n"),
    ghost("/var/log/sample.log"),
)
