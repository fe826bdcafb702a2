"""Extract stage: package payloads and recipe files → the staging tree.

Decides, per entry, *whether* it belongs in the image (kind's hierarchies, exclude globs) and
*as whom* (owner mapping); :class:`StagingTree` decides whether it is safe to write.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from .fetch import Fetched
from .formats import entry as E
from .formats.deb import deb_info, read_deb
from .formats.rpm import read_rpm, rpm_info
from .recipe import Recipe
from .staging import MERGED_USR, StagingTree, canonical_path

#: The hierarchies systemd merges for each kind; everything else in an image is ignored by it.
HIERARCHIES = {"sysext": ("usr", "opt"), "confext": ("etc",)}


@dataclass
class ExtractReport:
    packages: list[dict] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)  # path → reason
    excluded: int = 0
    unmapped_owners: set[str] = field(default_factory=set)
    newest_mtime: int | None = None
    files: int = 0
    bytes: int = 0


def glob_regex(patterns: Iterable[str]) -> re.Pattern | None:
    """One regex for the exclude globs: ``*`` stays in a name, ``**`` crosses directories."""
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


def extract(recipe: Recipe, fetched: list[Fetched], tree: StagingTree) -> ExtractReport:
    report = ExtractReport()
    keep = HIERARCHIES[recipe.kind]
    exclude = glob_regex(recipe.exclude)

    for item in fetched:
        info, entries = package_reader(item)
        origin = f"{info.name}_{info.version}_{info.architecture}"
        report.packages.append({
            "name": info.name, "version": info.version, "architecture": info.architecture,
            "format": info.format, "file": _package_filename(item, info), "sha256": item.sha256,
            "size": item.size, "source": item.source.ref if item.source.type != "apt"
            else f"apt:{item.source.ref}={item.source.version}",
        })
        for entry in entries:
            path = canonical_path(entry.path, entry.member)
            if not path:
                continue
            if entry.mtime and (report.newest_mtime is None or entry.mtime > report.newest_mtime):
                report.newest_mtime = entry.mtime
            reason = _drop_reason(path, entry, keep, exclude)
            if reason:
                if reason == "excluded":
                    report.excluded += 1
                else:
                    report.dropped[path] = f"{reason} ({origin})"
                continue
            uid = _map_id(entry.uname, entry.uid, recipe.users, report)
            gid = _map_id(entry.gname, entry.gid, recipe.groups, report)
            tree.add(entry, path, uid, gid, origin)

    for extra in recipe.files:
        content = extra.content if extra.content is not None else extra.source.read_bytes()
        top = extra.path.split("/", 1)[0]
        if top not in keep:
            report.dropped[extra.path] = f"outside {', '.join('/' + k for k in keep)} (recipe)"
            continue
        tree.add_bytes(extra.path, content, extra.mode, f"recipe:{extra.source or 'content'}")
    return report


def _package_filename(item: Fetched, info) -> str:
    """The name the package file has in its archive: the same whether it came from the cache or
    a fresh download (the manifest must not tell them apart)."""
    if item.source.type == "apt":
        version = info.version.split(":", 1)[-1]
        return f"{info.name}_{version}_{info.architecture}.deb"
    return item.filename


def _drop_reason(path: str, entry: E.Entry, keep: tuple[str, ...], exclude) -> str | None:
    top = path.split("/", 1)[0]
    if top not in keep:
        return f"outside {', '.join('/' + k for k in keep)}"
    if entry.kind == E.SYMLINK and path.count("/") == 1 and path.split("/")[1] in MERGED_USR:
        return "merged-/usr compatibility link"
    if exclude is not None and exclude.match(path):
        return "excluded"
    return None


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
    files = [r for r in tree.records.values() if r.kind == E.FILE]
    return len(files), sum(r.size for r in {id(r): r for r in files}.values())
