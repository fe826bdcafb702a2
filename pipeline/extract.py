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
        origin = f"{info.name}_{info.version}_{info.architecture}"
        report.packages.append(package_record(item, info))
        config = {canonical_path(p.lstrip("/"), origin) for p in info.config_files}
        for entry in entries:
            path = canonical_path(entry.path, entry.member)
            if not path:
                continue
            if entry.mtime and (report.newest_mtime is None or entry.mtime > report.newest_mtime):
                report.newest_mtime = entry.mtime
            if exclude is not None and exclude.match(path):
                report.excluded += 1
                continue
            if entry.kind == E.SYMLINK and path.count("/") == 1 and \
                    path.split("/")[1] in MERGED_USR:
                report.dropped[path] = f"merged-/usr compatibility link ({origin})"
                continue
            entry.uid = _map_id(entry.uname, entry.uid, recipe.users, report)
            entry.gid = _map_id(entry.gname, entry.gid, recipe.groups, report)
            route = router.route(path, entry, entry.member)
            if route.dropped:
                report.dropped[path] = f"{route.dropped} ({origin})"
            if route.image is None:
                continue
            tree = tree_for(route.image)
            tree.add(entry, route.path, entry.uid, entry.gid, origin)
            if path in config:
                tree.records[route.path].config = True

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


def _package_filename(item: Fetched, info) -> str:
    """The name the package file has in its archive: the same whether it came from the cache or
    a fresh download (the manifest must not tell them apart)."""
    if item.source.type == "apt":
        version = info.version.split(":", 1)[-1]
        return f"{info.name}_{version}_{info.architecture}.deb"
    return item.filename


def _map_id(name: str | None, number: int, table: dict[str, int], report: ExtractReport) -> int:
    """Owner by name through the recipe's table; root is 0 everywhere."""
    if name == "root":
        return 0
    if name and name in table:
        return table[name]
    if name and number != 0:
        report.unmapped_owners.add(f"{name}={number}")
    return number


def stats(tree: StagingTree) -> tuple[int, int]:
    """(files, bytes) with hardlinked files counted once."""
    files = {id(r): r for r in tree.records.values() if r.kind == E.FILE}
    return len(files), sum(r.size for r in files.values())
