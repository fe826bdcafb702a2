"""Levels 3 and 5: the squashfs/erofs superblock (settings explain; counts and table offsets
follow from the content; the erofs UUID is derived from the seed), and — when trees and settings
agree — the first differing byte and the file system region it falls in."""

from __future__ import annotations

from ...errors import InputError
from ...image import fsinfo
from .report import level_state, short

#: Superblock fields derived from the build's seed: they follow from any other difference.
DERIVED = ("uuid",)


def superblock(d, fa, fb) -> None:
    """Record the superblock level. With another packing tool version recorded, settings are
    not taken as the reason (that version may choose other defaults): the tree decides."""
    r = d.r
    (ia, oa, _), (ib, ob, _) = fa, fb
    try:
        sa, sb = fsinfo.superblock(ia, oa), fsinfo.superblock(ib, ob)
    except InputError as err:
        r.levels["superblock"] = f"unreadable: {err.line()}"
        return
    if sa["type"] != sb["type"]:
        r.add("superblock", "type", sa["type"], sb["type"],
              f"file system {sa['type']} → {sb['type']}")
        r.levels["superblock"] = "differs"
        return
    settings = fsinfo.settings(sa)
    for key in sa:
        if sa[key] == sb.get(key):
            continue
        text = f"{sa['type']} {key} {short(sa[key])} → {short(sb.get(key))}"
        if key in settings and d.byte_tools and key not in DERIVED:
            text += f" (another {'/'.join(d.byte_tools)} version)"
        r.add("superblock", key, sa[key], sb.get(key), text,
              explains=key in settings and not d.byte_tools, derived=key in DERIVED)
    r.levels["superblock"] = level_state(r.at("superblock"))


def first_bytes(d, fa, fb) -> None:
    r = d.r
    (ia, oa, za), (ib, ob, zb) = fa, fb
    length = None if za is None or zb is None else min(za, zb)
    off = fsinfo.first_difference(ia, ib, oa, ob, length)
    if off is None:
        r.levels["bytes"] = "same"
        return
    also = ""
    try:
        sb = fsinfo.superblock(ia, oa)
        start, end = fsinfo.superblock_span(sb)
        if start <= off < end:  # e.g. erofs' checksum: look for the cause beyond it
            rest = fsinfo.first_difference(ia, ib, oa + end, ob + end,
                                           None if length is None else length - end)
            if rest is not None:
                off, also = end + rest, " (and in the superblock's checksum or counts)"
        where = fsinfo.region(sb, off)
    except InputError:
        where = "unknown region"
    r.add("bytes", "offset", off, off,
          f"file trees and file system settings are identical, bytes differ from offset "
          f"{off} ({where}){also}: the layout depends on something outside the inputs (e.g. "
          "directory order on disk)")
    r.levels["bytes"] = "differs"
