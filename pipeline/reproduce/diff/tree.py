"""Level 4: the file trees — added and removed paths, then per path the attributes that differ.
Trees come from the images (streamed by pipeline/fsinfo, in tree_key order) or from a manifest's
``files``; two streams are merged entry by entry, keeping only counts and the first N paths."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ...errors import PipelineError
from ...image import fsinfo
from .report import TreeDiff, short

TREE_ATTRIBUTES = ("type", "mode", "uid", "gid", "mtime", "size", "sha256", "target", "xattrs",
                   "nlink", "rdev", "hardlink")


def tree(d, data) -> TreeDiff | None:
    """Record the tree level; None when a side has neither an image nor a file list."""
    r = d.r
    streams = []
    try:
        for side, fs in zip((d.a, d.b), data):
            stream = _stream(side, fs)
            if stream is None:
                r.levels["tree"] = f"n/a: no image or file list for {side.given}"
                return None
            streams.append(stream)
        manifest_based = any(kind == "manifest" for kind, _ in streams)
        # Hard-link groups: manifests name them ("hardlink"), image walks count links
        # ("nlink"); each is compared only where both sides have it.
        found = compare_trees(streams[0][1], streams[1][1], limit=d.limit,
                              manifest_based=manifest_based,
                              groups=all(kind == "manifest" for kind, _ in streams))
    except PipelineError as err:
        r.levels["tree"] = f"unreadable: {err.line()}"
        return None
    if manifest_based:
        found.notes.append("(a side's tree comes from its manifest: the root directory and "
                           "hard-link counts are not compared" + ("" if all(
                               kind == "manifest" for kind, _ in streams) else
                               ", nor hard-link groups") + ")")
    r.tree = found
    r.levels["tree"] = "same" if found.identical else "differs"
    for item in found.added:
        r.add("tree", item, None, None, f"{item} only {r.labels[1]}")
    for item in found.removed:
        r.add("tree", item, None, None, f"{item} only {r.labels[0]}")
    for item in found.examples():
        for attr, (x, y) in item["attributes"].items():
            r.add("tree", f"{item['path']}:{attr}", x, y,
                  f"{item['path']}: {attr} {short(x)} → {short(y)}")
    return found


def _stream(side, fs):
    if fs is not None:
        image, offset, size = fs
        return "image", fsinfo.walk_image(fsinfo.locate(image, offset=offset, size=size))
    if side.is_dir or side.is_file:  # a DDI: its root/usr partition
        return "image", fsinfo.walk_image(side.image)
    if side.manifest is not None:
        files = sorted(side.manifest.files, key=lambda f: fsinfo.tree_key(f.path))
        return "manifest", (f.to_json() for f in files)
    return None


def compare_trees(a: Iterable[dict], b: Iterable[dict], *, limit: int = 10,
                  manifest_based: bool = False, groups: bool = False) -> TreeDiff:
    """Merge two tree streams (both in fsinfo.tree_key order) into a TreeDiff. ``groups``:
    both are manifests, whose ``hardlink`` fields are compared."""
    found = TreeDiff(limit=limit)
    ia, ib = _normalized(a, manifest_based, groups), _normalized(b, manifest_based, groups)
    x, y = next(ia, None), next(ib, None)
    while x is not None or y is not None:
        kx = fsinfo.tree_key(x["path"]) if x is not None else None
        ky = fsinfo.tree_key(y["path"]) if y is not None else None
        found.compared += 1
        if y is None or (x is not None and kx < ky):
            found.counts["removed"] += 1
            if len(found.removed) < limit:
                found.removed.append(x["path"])
            x = next(ia, None)
        elif x is None or ky < kx:
            found.counts["added"] += 1
            if len(found.added) < limit:
                found.added.append(y["path"])
            y = next(ib, None)
        else:
            skip_owner = x.get("owners_unknown") or y.get("owners_unknown")
            attrs = {}
            for attr in TREE_ATTRIBUTES:
                if skip_owner and attr in ("uid", "gid"):
                    continue
                if x.get(attr) != y.get(attr):
                    attrs[attr] = [x.get(attr), y.get(attr)]
            if attrs:
                found.add_changed(x["path"], attrs)
            x, y = next(ia, None), next(ib, None)
    return found


def _normalized(entries: Iterable[dict], manifest_based: bool,
                groups: bool = False) -> Iterator[dict]:
    for entry in entries:
        if manifest_based:
            if entry["path"] == fsinfo.ROOT:
                continue
            entry = {k: v for k, v in entry.items()
                     if k != "nlink" and (groups or k != "hardlink")}
        yield entry
