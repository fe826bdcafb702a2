"""Extract stage: package payloads and recipe files → one staging tree per image kind.

Decides, per entry, *whether* and *where* it belongs (exclude globs, then the layout router),
and *as whom* (owner mapping); the staging tree decides whether it is safe to write. ``plan``
runs this same code against recording-only trees, so plan and build cannot disagree.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .errors import InputError
from .fetch import Fetched
from .formats import entry as E
from .formats.deb import deb_info, read_deb
from .formats.rpm import read_rpm, rpm_info
from .layout import Router
from .recipe import Recipe
from .staging import MERGED_USR, StagingTree, canonical_path


@dataclass
class ExtractReport:
    packages: list[dict] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)  # path → reason (package)
    excluded: int = 0
    unmapped_owners: set[str] = field(default_factory=set)
    newest_mtime: int | None = None


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


def package_reader(fetched: Fetched):
    """(info, entries) for a fetched package, by format."""
    if fetched.source.format == "deb":
        return deb_info(fetched.path), read_deb(fetched.path)
    return rpm_info(fetched.path), read_rpm(fetched.path)


def package_record(item: Fetched, info) -> dict:
    return {
        "name": info.name, "version": info.version, "architecture": info.architecture,
        "format": info.format, "file": _package_filename(item, info), "sha256": item.sha256,
        "size": item.size, "source": _source_label(item.source),
        "scripts": list(info.scripts),
    }


def _source_label(source) -> str:
    """Where a package came from, in words that do not depend on where the build ran: a URL,
    ``apt:NAME=VERSION``, ``repository:path`` for locked packages, or a local path as the recipe
    wrote it."""
    if source.type == "apt":
        return f"apt:{source.ref}={source.version}"
    return source.label or source.ref


def extract(recipe: Recipe, fetched: list[Fetched], tree_for: Callable[[str], StagingTree],
            router: Router) -> ExtractReport:
    """Write every package entry and recipe file to ``tree_for(kind)`` as ``router`` says."""
    report = ExtractReport()
    exclude = glob_regex(recipe.exclude)

    for item in fetched:
        info, entries = package_reader(item)
        report.packages.append(package_record(item, info))
        _Package(item, info, recipe, exclude, router, tree_for, report).extract(entries)

    for extra in recipe.files:
        content = extra.content if extra.content is not None else extra.source.read_bytes()
        entry = E.Entry(path=extra.path, kind=E.FILE, mode=extra.mode, size=len(content),
                        data=io.BytesIO(content), member=f"files.{extra.path!r}")
        route = router.route(extra.path, entry, entry.member)
        if route.dropped:
            report.dropped[extra.path] = f"{route.dropped} (recipe)"
        if route.image is not None:
            tree_for(route.image).add(entry, route.path, 0, 0, "recipe")
    return report


class _Package:
    """One package's entries on their way into the trees.

    Hardlinks are the subtle part: a link's target may have been routed elsewhere (into the
    other image, or to usr/share/factory) or not written at all (excluded, dropped). The link
    then becomes a copy of the target's data — taken from the other tree, or from a second read
    of the archive — instead of a dangling link the writer would refuse."""

    def __init__(self, item, info, recipe, exclude, router, tree_for, report):
        self.item, self.info, self.recipe = item, info, recipe
        self.exclude, self.router, self.tree_for, self.report = exclude, router, tree_for, report
        self.origin = f"{info.name}_{info.version}_{info.architecture}"
        self.config = {canonical_path(p.lstrip("/"), self.origin) for p in info.config_files}
        self.placed: dict[str, tuple[str, str]] = {}  # archive path → (image kind, image path)
        self.skipped: set[str] = set()  # regular files not written (excluded or dropped)

    def extract(self, entries) -> None:
        report = self.report
        for entry in entries:
            path = canonical_path(entry.path, entry.member)
            if not path:
                continue
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
            if route.image is None:
                self._skip(entry, path)
                continue
            tree = self.tree_for(route.image)
            if entry.kind == E.HARDLINK:
                entry = self._link_or_copy(entry, route.image)
            try:
                tree.add(entry, route.path, entry.uid, entry.gid, self.origin)
            finally:
                if entry.data is not None and getattr(entry.data, "owned_copy", False):
                    entry.data.close()
            if entry.kind in (E.FILE, E.HARDLINK):
                self.placed[path] = (route.image, route.path)
            if path in self.config:
                tree.records[route.path].config = True

    def _skip(self, entry: E.Entry, path: str) -> None:
        if entry.kind in (E.FILE, E.HARDLINK):
            self.skipped.add(path)

    def _link_or_copy(self, entry: E.Entry, image: str) -> E.Entry:
        target = canonical_path(entry.target or "", entry.member)
        if target in self.placed:
            target_image, target_path = self.placed[target]
            if target_image == image:
                entry.target = target_path  # where the target really went
                return entry
            tree = self.tree_for(target_image)
            record = tree.records[target_path]
            data = tree.open_data(target_path)
            if data is not None:
                data.owned_copy = True  # ours to close once written
            return _as_file(entry, record.size, data)
        if target in self.skipped:
            return self._copy_from_archive(entry, target)
        return entry  # the writer refuses it: a link to nothing extracted before

    def _copy_from_archive(self, entry: E.Entry, target: str) -> E.Entry:
        """Read the package again up to the target's data (rare: a link to an excluded file)."""
        _, entries = package_reader(self.item)
        for other in entries:
            if other.kind == E.FILE and canonical_path(other.path, other.member) == target:
                data = io.BytesIO(other.data.read(other.size)) if other.data else None
                return _as_file(entry, other.size, data)
        return entry

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
            self.report.unmapped_owners.add(f"{name}={number}")
            return number
        raise InputError(member, f"owned by {table[:-1]} {name!r}, which [owners] does not map",
                         f"add [owners] {table} = {{ {name} = <number on the target OS> }}")


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


def _package_filename(item: Fetched, info) -> str:
    """The name the package file has in its archive: the same whether it came from the cache or
    a fresh download (the manifest must not tell them apart)."""
    if item.source.type == "apt":
        version = info.version.split(":", 1)[-1]
        return f"{info.name}_{version}_{info.architecture}.deb"
    return item.filename


def stats(tree: StagingTree) -> tuple[int, int]:
    """(files, bytes) with hardlinked files counted once."""
    files = {id(r): r for r in tree.records.values() if r.kind == E.FILE}
    return len(files), sum(r.size for r in files.values())
