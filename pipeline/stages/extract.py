"""Extract stage: package payloads and recipe files → one staging tree per image kind.

Decides, per entry, *whether* and *where* it belongs (exclude globs, then the layout router),
and *as whom* (owner mapping); the staging tree decides whether it is safe to write. ``plan``
runs this same code against recording-only trees, so plan and build cannot disagree.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..errors import InputError
from ..formats import entry as E
from ..formats.compression import (
    CHUNK,
    AheadBudget,
    DigestCheck,
    Limits,
    read_ahead,
    read_upto,
)
from ..formats.entry import shown
from ..formats.package import Package
from ..recipe import Recipe
from ..sources import kinds
from ..sources.fetch import Fetched
from .layout import Router
from .pitfalls import RELEASE_DIRS, special_of
from .staging import MERGED_USR, StagingTree, canonical_path


@dataclass
class ExtractReport:
    packages: list[dict] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)  # path → reason (package)
    excluded: int = 0
    unmapped_owners: set[str] = field(default_factory=set)
    newest_mtime: int | None = None
    #: package name → its usr/share/doc/NAME/copyright, kept for the SBOM's licence (sbom.py)
    copyrights: dict[str, bytes] = field(default_factory=dict)
    #: each package's PackageInfo, in the order of ``packages`` (its control text: the SBOM's)
    infos: list = field(default_factory=list)


def glob_regex(patterns: Iterable[str]) -> re.Pattern | None:
    """One regex for the exclude globs: ``*`` stays in a name, ``**`` crosses directories,
    and ``dir/**`` also matches ``dir`` itself."""
    parts = []
    for pattern in patterns:
        pattern = pattern.strip("/")
        rx = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("/**", i) and i + 3 == len(pattern):
                rx += "(/.*)?"
                i += 3
            elif pattern.startswith("**", i):
                rx += ".*"
                i += 2
            elif pattern[i] == "*":
                rx += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                rx += "[^/]"
                i += 1
            else:
                rx += re.escape(pattern[i])
                i += 1
        parts.append(rx)
    return re.compile("^(?:" + "|".join(parts) + ")$") if parts else None


#: Largest copyright file kept for the SBOM (sbom.py reads the licence from it).
COPYRIGHT_LIMIT = 1 << 20

#: Times squashfs and erofs images can hold (unsigned 32-bit seconds: 1970 to 2106).
MAX_MTIME = 2**32 - 1


def open_package(fetched: Fetched, limits: Limits | None = None) -> Package:
    """The fetched file, opened once: its sha256 is checked against what fetch verified over
    the very bytes that are parsed (at the end of ``entries()``). A ``fetched`` with its own
    ``open_package`` (``plan``'s file-list cache, pipeline/commands/plan.py) opens through it."""
    opener = getattr(fetched, "open_package", None)
    if opener is not None:
        return opener(limits)
    decoded = stored_payload(fetched) if fetched.source.format == "deb" else None
    return Package(fetched.path, fetched.source.format, sha256=fetched.sha256, limits=limits,
                   name=fetched.filename, decoded=decoded)


#: A catalogue build (pipeline/commands/build.py) decodes each package its recipes share once,
#: into a private directory of its own (mode 0700, in the output directory, removed when it
#: ends), and names that directory to its builds in this environment variable: the data.tar
#: member of the .deb whose sha256 is S is there as the file S, complete (written under
#: another name, then renamed). A build without it (every build of one recipe) decodes all.
DECODED_ENV = "SYSEXT_PIPELINE_DECODED"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def stored_payload(fetched: Fetched):
    """The catalogue's decoded data.tar of this package, open; None when there is none (not
    shared, not decodable, or the directory is not a private one of this user's)."""
    store = os.environ.get(DECODED_ENV)
    if not store or not _SHA256.fullmatch(fetched.sha256 or ""):
        return None
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        dir_fd = os.open(store, flags | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        mine = os.fstat(dir_fd)
        if mine.st_uid != os.geteuid() or mine.st_mode & 0o077:
            return None
        fd = os.open(fetched.sha256, flags, dir_fd=dir_fd)
    except OSError:
        return None
    finally:
        os.close(dir_fd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        return None
    return os.fdopen(fd, "rb", buffering=0)


def check_identity(item: Fetched, info) -> None:
    """What the file says it is must be what the recipe (or lock) names: a cached sha256 never
    changes what a recipe means (``apt = "jqq"`` with jq's sha256 is an error, not jq). For a
    file or URL the name is the claim when it follows the format's convention (an archive's
    ``jq_1.6-2.1_amd64.deb``); the epoch is not in file names and is then not compared."""
    source = item.source
    claim = kinds.claim(source, item.filename)
    if claim is None:
        return
    name, version, arch, epoch = claim.name, claim.version, claim.architecture, claim.with_epoch
    have = _version(info.version) if epoch else _version(info.version).split(":", 1)[-1]
    wanted = []
    if name and info.name != name:
        wanted.append(f"name {name}")
    if version is not None and have != _version(version):
        wanted.append(f"version {version}")
    if arch and info.architecture != arch:
        wanted.append(f"architecture {arch}")
    if wanted:
        raise InputError(f"source {shown(kinds.label(source))}",
                         f"the file is {shown(info.name)} {shown(info.version)} "
                         f"({shown(info.architecture)}), not {', '.join(shown(w) for w in wanted)}",
                         f"fix the {claim.what} (or its sha256): the package must be the one it "
                         "names")


def _version(version: str) -> str:
    return version[2:] if version.startswith("0:") else version


def package_record(item: Fetched, info) -> dict:
    return {
        "name": info.name, "version": info.version, "architecture": info.architecture,
        "format": info.format, "file": kinds.archive_name(item.source, item.filename, info), "sha256": item.sha256,
        "size": item.size, "source": kinds.label(item.source),
        "scripts": list(info.scripts),
    }


def extract(recipe: Recipe, fetched: list[Fetched], tree_for: Callable[[str], StagingTree],
            router: Router) -> ExtractReport:
    """Write every package entry and recipe file to ``tree_for(kind)`` as ``router`` says."""
    report = ExtractReport()
    exclude = glob_regex(recipe.exclude)
    limits = Limits(unpacked=recipe.unpacked_limit, ratio=recipe.ratio_limit,
                    entries=recipe.entries_limit)

    budget = AheadBudget(EXTRACT_READ_AHEAD, cap=EXTRACT_READ_AHEAD_ONE, workers=_cores())
    order = _OpenOrder([item.size for item in fetched])
    opened: dict[int, _Ahead] = {}
    with read_ahead(budget):
        try:
            for position, item in enumerate(fetched):
                # the packages that must start soonest decompress while this one is written
                for ahead in order.next_to_open(position, opened):
                    with budget.opening(order.rank[ahead]):
                        opened[ahead] = _Ahead(fetched[ahead], limits)
                current = opened.pop(position)
                try:
                    info = current.info()
                    check_identity(item, info)
                    report.packages.append(package_record(item, info))
                    report.infos.append(info)
                    _Package(item, info, recipe, exclude, router, tree_for, report,
                             limits).extract(current.entries())
                finally:
                    current.close()
        finally:
            for ahead in opened.values():
                ahead.close()

    for extra in recipe.files:
        content = extra.content if extra.content is not None else extra.source.read_bytes()
        entry = E.Entry(path=extra.path, kind=E.FILE, mode=extra.mode, size=len(content),
                        data=io.BytesIO(content), member=f"files.{extra.path!r}")
        route = router.route(extra.path, entry, entry.member)
        if route.dropped:
            report.dropped[extra.path] = f"{route.dropped} (recipe)"
        if route.image is not None:
            tree = tree_for(route.image)
            tree.records.special_policy = recipe.special_files
            tree.add(entry, route.path, 0, 0, "recipe")
    return report


#: Decompressed bytes all the packages in flight may hold ahead of the writer together ...
EXTRACT_READ_AHEAD = 40 << 20
#: ... one package at most (the rest stays for the ones written before it) ...
EXTRACT_READ_AHEAD_ONE = 32 << 20
#: ... and how many packages after the current one are open (decompressing) at once, chosen
#: among the next LOOKAHEAD ones by when their decompression must start (:class:`_OpenOrder`).
#: Memory: at most EXTRACT_READ_AHEAD + (1 + PACKAGES_AHEAD) × AHEAD_PIECE decompressed
#: bytes (compression.AheadBudget), whatever the payload; besides, each open xz decoder
#: keeps its dictionary (8 MiB at xz -6) and each thread its malloc arena, which is why few
#: packages are open at once (8 with a 48 MiB budget: peak RSS 163 MiB at the 1 GB bench
#: payload, 94 MiB with these, 79 MiB before the shared budget; no faster) and the budget,
#: not the count, lets the large one run ahead.
PACKAGES_AHEAD = 3
LOOKAHEAD = 32
#: A package should start decompressing when the compressed bytes written before it are no
#: more than this many times its own (its xz takes about as long as the writer's way there).
START_EARLY = 2


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class _OpenOrder:
    """Which packages to open ahead of their turn, and their rank in the read-ahead budget.

    The write order is the recipe's; the *decompression* order is not: libicu72 (9 MB of xz,
    a third of a typical payload's decompression) must start long before the writer reaches
    it, or the writer waits half a second for it at its turn. A package's rank is the
    compressed bytes before it minus START_EARLY times its own size (a latest start, in
    bytes): the lowest ranks among the next LOOKAHEAD packages are opened first, and decode
    first when the budget must choose (compression.AheadBudget)."""

    def __init__(self, sizes: list[int]):
        self.sizes = sizes
        before = 0
        self.rank = []
        for size in sizes:
            self.rank.append(before - START_EARLY * size)
            before += size

    def next_to_open(self, position: int, opened: dict) -> list[int]:
        chosen = [] if position in opened else [position]
        window = range(position + 1, min(position + LOOKAHEAD, len(self.sizes)))
        room = PACKAGES_AHEAD - sum(1 for p in opened if p > position)
        candidates = sorted((p for p in window if p not in opened),
                            key=lambda p: (self.rank[p], p))
        return chosen + candidates[:max(room, 0)]


class _Ahead:
    """A package opened before its turn, its payload's decompression thread started
    (pipeline.formats.compression; a reader without ``start`` starts it by reading the first
    entry). Its entries are consumed strictly in order when its turn comes, so the trees are
    written exactly as without it; an error met early is raised at its turn (the earlier
    package's own error comes first)."""

    def __init__(self, item: Fetched, limits: Limits):
        self._package = None
        self._entries = None
        self._first: list[E.Entry] = []
        self._error: InputError | None = None
        try:
            self._package = open_package(item, limits)
            start = getattr(self._package, "start", None)
            if start is not None:
                start()  # the decompression thread runs; no entry is waited for
            self._entries = self._package.entries()
            if start is None:  # reading the first entry starts it
                self._first = [entry for entry in (next(self._entries, None),)
                               if entry is not None]
        except InputError as exc:
            self._error = exc

    def info(self):
        if self._package is None:
            raise self._error
        return self._package.info

    def entries(self):
        if self._error is not None:
            raise self._error
        yield from self._first
        self._first = []
        yield from self._entries

    def close(self) -> None:
        if self._entries is not None:
            self._entries.close()  # stops its decompression thread before the file closes
        if self._package is not None:
            self._package.close()


class _Package:
    """One package's entries on their way into the trees.

    Hardlinks are the subtle part: a link's target may have been routed elsewhere (into the
    other image, or to usr/share/factory) or not written at all (excluded, dropped). The link
    then becomes a copy of the target's data — taken from the other tree, or streamed from a
    second read of the archive, checked against the sha256 of the first — instead of a
    dangling link the writer would refuse. Nothing is ever held in memory."""

    def __init__(self, item, info, recipe, exclude, router, tree_for, report, limits):
        self.item, self.info, self.recipe = item, info, recipe
        self.exclude, self.router, self.tree_for, self.report = exclude, router, tree_for, report
        self.limits = limits
        self.origin = f"{info.name}_{info.version}_{info.architecture}"
        self.config = {canonical_path(p.lstrip("/"), self.origin) for p in info.config_files}
        self.placed: dict[str, tuple[str, str]] = {}  # archive path → (image kind, image path)
        # regular files not written (excluded or dropped) → (size, sha256 of their data)
        self.skipped: dict[str, tuple[int, str]] = {}

    def extract(self, entries) -> None:
        report = self.report
        for entry in entries:
            self.limits.count_entry(entry.member)
            path = canonical_path(entry.path, entry.member)
            if entry.kind == E.FILE and entry.size <= COPYRIGHT_LIMIT and \
                    path == f"usr/share/doc/{self.info.name}/copyright":  # for the SBOM
                data = read_upto(entry.data, entry.size)
                report.copyrights[self.info.name] = data
                entry.data = io.BytesIO(data)
            if not path:
                if entry.kind == E.DIR:
                    continue  # the archive's own "./": the root's mode is ours to decide
                raise InputError(entry.member, f"a {entry.kind} named {shown(entry.path)!r}, "
                                 "which is the image's root directory",
                                 "the package is broken")
            if not 0 <= entry.mtime <= MAX_MTIME:
                raise InputError(entry.member, f"mtime {entry.mtime} is outside 1970-2106 (what "
                                 "squashfs and erofs can store)", "the package is broken")
            if entry.mtime and (report.newest_mtime is None or entry.mtime > report.newest_mtime):
                report.newest_mtime = entry.mtime
            if self.exclude is not None and self.exclude.match(path):
                report.excluded += 1
                self._skip(entry, path)
                continue
            reason = _usr_link_reason(entry, path)
            if reason:
                report.dropped[path] = f"{reason} ({self.origin})"
                continue
            entry.uid = self._owner(entry.uname, entry.uid, "users", entry.member)
            entry.gid = self._owner(entry.gname, entry.gid, "groups", entry.member)
            route = self.router.route(path, entry, entry.member)
            if route.dropped:
                report.dropped[path] = f"{route.dropped} ({self.origin})"
            self._special(entry, path, route)
            if route.image is None:
                self._skip(entry, path)
                continue
            if route.path in RELEASE_DIRS and entry.kind != E.DIR:
                raise InputError(entry.member, f"a {entry.kind} at /{route.path}, where the "
                                 "image's own extension-release file goes",
                                 "exclude it with filter.exclude")
            tree = self.tree_for(route.image)
            tree.records.special_policy = self.recipe.special_files
            if entry.kind == E.HARDLINK:
                self._add_link(entry, path, route.image, route.path, tree)
            else:
                tree.add(entry, route.path, entry.uid, entry.gid, self.origin)
            if entry.kind in (E.FILE, E.HARDLINK):
                self.placed[path] = (route.image, route.path)
            if path in self.config:
                tree.records[route.path].config = True

    def _special(self, entry: E.Entry, path: str, route) -> None:
        """setuid/setgid files and world-writable paths that reach the host, judged by the
        recipe's policy.special_files: an error, a severe finding (the pitfalls read the
        records; a tmpfiles.d directory has none, so it is remembered here), or nothing."""
        if route.image is None and route.tmpfiles is None:
            return
        what = special_of(entry.kind, entry.mode)
        policy = self.recipe.special_files
        if what is None or policy == "allow":
            return
        if policy == "error":
            raise InputError(entry.member, f"{what} (mode {entry.mode:04o}; "
                             'policy.special_files = "error")',
                             'fix the package, or review it and set policy.special_files = '
                             '"warn" or "allow"')
        if route.image is None:  # a tmpfiles.d line makes it at boot
            for kind, lines in self.router.layout.tmpfiles.items():
                if any(line is route.tmpfiles for line in lines):
                    records = self.tree_for(kind).records
                    records.special_policy = policy
                    records.host_special[path] = what

    def _skip(self, entry: E.Entry, path: str) -> None:
        """Remember what a later hard link may need: the size and sha256 of the data."""
        if entry.kind == E.FILE:
            digest = hashlib.sha256()
            if entry.data is not None:
                for chunk in iter(lambda: entry.data.read(CHUNK), b""):
                    digest.update(chunk)
            self.skipped[path] = (entry.size, digest.hexdigest())
        elif entry.kind == E.HARDLINK:
            target = canonical_path(entry.target or "", entry.member)
            if target in self.skipped:
                self.skipped[path] = self.skipped[target]

    def _add_link(self, entry: E.Entry, path: str, image: str, image_path: str,
                  tree: StagingTree) -> None:
        target = canonical_path(entry.target or "", entry.member)
        if target in self.placed:
            target_image, target_path = self.placed[target]
            if target_image == image:
                entry.target = target_path  # where the target really went
                tree.add(entry, image_path, entry.uid, entry.gid, self.origin)
                return
            source = self.tree_for(target_image)
            record = source.records[target_path]
            data = source.open_data(target_path)
            try:
                tree.add(_as_file(entry, record.size, data), image_path, entry.uid, entry.gid,
                         self.origin)
            finally:
                if data is not None:
                    data.close()
            return
        if target in self.skipped:
            self._copy_from_archive(entry, target, image_path, tree)
            return
        raise InputError(entry.member, f"hardlink to {shown(entry.target or '')!r}, which is "
                         "not a file extracted before it",
                         "the package is broken (its hard link has no target)")

    def _copy_from_archive(self, entry: E.Entry, target: str, image_path: str,
                           tree: StagingTree) -> None:
        """A link to a file that was not written (excluded, dropped): read the package a second
        time up to the target and stream its data into the tree, checked against the sha256
        the first read saw (rare; never held in memory)."""
        size, sha256 = self.skipped[target]
        with open_package(self.item, self.limits) as package:
            for other in package.entries():
                if other.kind == E.FILE and canonical_path(other.path, other.member) == target:
                    data = DigestCheck(other.data, other.size, hashlib.sha256(), sha256,
                                       other.member, "first read (it changed while read)")
                    tree.add(_as_file(entry, size, data), image_path, entry.uid, entry.gid,
                             self.origin)
                    data.finish()
                    return
        raise InputError(entry.member, "the hard link's target vanished on a second read",
                         "the file changed while it was read")

    def _owner(self, name: str | None, number: int, table: str, member: str) -> int:
        """Owner by name through the recipe's [owners] table; root is 0 everywhere.

        A name without a mapping keeps the archive's number when it has one (Debian's static
        ids), with a warning; a name whose number is unknown (RPM payloads say 0) is an error,
        since guessing would make a setgid-mail file setgid-root."""
        mapping = getattr(self.recipe, table)
        if name is None or name == "root":
            return number if name is None else 0
        if name in mapping:
            return mapping[name]
        if number != 0:
            self.report.unmapped_owners.add(f"{shown(name)}={number}")
            return number
        raise InputError(member, f"owned by {table[:-1]} {shown(name)!r}, which [owners] does "
                         "not map", f"add [owners] {table} = {{ {shown(name)} = <number on the "
                         "target OS> }")


def _as_file(link: E.Entry, size: int, data) -> E.Entry:
    return E.Entry(path=link.path, kind=E.FILE, mode=link.mode, uid=link.uid, gid=link.gid,
                   uname=link.uname, gname=link.gname, mtime=link.mtime, size=size,
                   xattrs=dict(link.xattrs), data=data, member=link.member)


def _usr_link_reason(entry: E.Entry, path: str) -> str | None:
    """Symlinks that would replace a directory the host's merged /usr depends on."""
    if entry.kind != E.SYMLINK:
        return None
    raw = [p for p in entry.path.split("/") if p not in ("", ".")]
    if len(raw) == 1 and raw[0] in MERGED_USR:
        return "merged-/usr compatibility link (the host has its own)"
    if path.count("/") == 1 and path.split("/")[1] in MERGED_USR:
        return f"a symlink at /{path} would hide the host's /{path} directory in the overlay"
    return None


def stats(tree: StagingTree) -> tuple[int, int]:
    """(files, bytes) with hardlinked files counted once."""
    files = {id(r): r for r in tree.records.values() if r.kind == E.FILE}
    return len(files), sum(r.size for r in files.values())
