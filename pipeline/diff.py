"""``diff``: why two builds differ, top-down, stopping at the first level that explains it.

Levels, each read only when the one above did not explain the difference:

1. ``manifest`` — the two manifests (found next to the images, or given): inputs (package added,
   removed, other version or hash), SOURCE_DATE_EPOCH, image settings, recipe hash, tool and
   compression-library versions. Different image tools make different bytes legitimately: that
   is said first, the byte levels are skipped and only the file trees are compared.
2. ``container`` — a DDI's GPT (disk UUID, partitions: which one differs, by sha256), the verity
   superblock (salt, UUID, sizes), the root hash, the signature partition (what is signed vs who
   signed); detached ``NAME.verity``/``.roothash``/``.roothash.p7s`` the same way. Without
   images, the manifests' ``ddi``/``verity`` objects.
3. ``superblock`` — squashfs/erofs superblock fields (pipeline/fsinfo/): settings (mkfs time,
   UUID, compressor and its options, block size, flags) explain; counts and table offsets only
   follow from the content.
4. ``tree`` — added and removed paths, then per path the attributes that differ (type, mode, uid,
   gid, mtime, size, sha256, target, xattrs), with counts and the first N paths. Trees come from
   the images (streamed, see pipeline/fsinfo/) or from a manifest's ``files``.
5. ``bytes`` — identical trees and settings but different bytes: the first differing offset and
   the file system region it falls in. That is a reproducibility bug in the packing.

Everything streams: images are compared chunk by chunk, trees merged entry by entry; only the
counts and the first ``limit`` examples are kept.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import fsinfo
from .errors import InputError, PipelineError

LEVELS = ("manifest", "container", "superblock", "tree", "bytes")
TREE_ATTRIBUTES = ("type", "mode", "uid", "gid", "mtime", "size", "sha256", "target", "xattrs",
                   "nlink", "rdev")
#: Tools whose version changes image bytes (the others are noted, not taken as an explanation).
IMAGE_TOOLS = ("mksquashfs", "mkfs.erofs", "systemd-repart", "veritysetup", "libzstd", "liblzma",
               "liblz4", "libz")
#: Values the build derives from a seed over recipe, inputs and epoch (file system UUID, verity
#: salt and UUID, disk UUID): when the recipe differs they follow from it.
SEEDED = ("uuid", "salt", "disk_uuid")
SEEDED_NOTE = " (derived from the recipe and inputs, and the recipe differs)"
#: Manifest keys whose difference alone explains different images.
SETTINGS = ("name", "kind", "version", "mtime_policy", "policy")
IMAGE_SETTINGS = ("format", "filesystem", "compression", "compression_level")


@dataclass
class Finding:
    level: str
    field: str
    a: Any = None
    b: Any = None
    text: str = ""
    explains: bool = True  # False: a consequence or a note, not the reason
    role: str = "follows"  # when it does not explain: "follows" (a consequence) or "note"

    def to_json(self) -> dict:
        return {"level": self.level, "field": self.field, "a": self.a, "b": self.b,
                "text": self.text, "explains": self.explains,
                "role": "cause" if self.explains else self.role}


@dataclass
class TreeDiff:
    limit: int = 10
    compared: int = 0
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[dict] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)  # added, removed, changed
    attributes: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not (self.counts["added"] or self.counts["removed"] or self.counts["changed"])

    def to_json(self) -> dict:
        return {"compared": self.compared, "added": self.counts["added"],
                "removed": self.counts["removed"], "changed": self.counts["changed"],
                "attributes": dict(sorted(self.attributes.items())), "limit": self.limit,
                "paths": {"added": self.added, "removed": self.removed, "changed": self.changed},
                "notes": self.notes}

    def lines(self) -> list[str]:
        head = (f"{self.counts['added']} added, {self.counts['removed']} removed, "
                f"{self.counts['changed']} changed")
        if self.attributes:
            head += " (" + ", ".join(f"{k} {v}" for k, v in self.attributes.most_common()) + ")"
        out = [head]
        out += [f"+ {p}" for p in self.added]
        out += [f"- {p}" for p in self.removed]
        for item in self.changed:
            parts = [f"{k} {_short(v[0])} → {_short(v[1])}" for k, v in item["attributes"].items()]
            out.append(f"~ {item['path']}: " + "; ".join(parts))
        shown = len(self.added) + len(self.removed) + len(self.changed)
        total = self.counts["added"] + self.counts["removed"] + self.counts["changed"]
        if total > shown:
            out.append(f"… and {total - shown} more (--limit)")
        return out + self.notes


@dataclass
class Report:
    a: str
    b: str
    labels: tuple[str, str] = ("in A", "in B")
    tool_labels: tuple[str, str] | None = None  # how tool versions name the sides (verify:
    identical: bool = False                      # "in the manifest", "here")
    manifests_identical: bool | None = None
    explained_at: str | None = None
    summary: str = ""
    notes: list[str] = field(default_factory=list)  # said first (tool versions)
    findings: list[Finding] = field(default_factory=list)
    levels: dict[str, str] = field(default_factory=dict)  # level → differs/same/skipped: why/n/a
    tree: TreeDiff | None = None

    def add(self, level: str, fld: str, a=None, b=None, text: str = "", explains: bool = True,
            role: str = "follows"):
        self.findings.append(Finding(level, fld, a, b, text, explains, role))

    def at(self, level: str) -> list[Finding]:
        return [f for f in self.findings if f.level == level]

    def fields(self, level: str | None = None) -> set[str]:
        return {f.field for f in self.findings if level is None or f.level == level}

    def to_json(self) -> dict:
        return {"a": self.a, "b": self.b, "identical": self.identical,
                "manifests_identical": self.manifests_identical,
                "explained_at": self.explained_at, "summary": self.summary, "notes": self.notes,
                "levels": self.levels, "findings": [f.to_json() for f in self.findings],
                "tree": self.tree.to_json() if self.tree else None}

    def lines(self, verbose: bool = False) -> list[str]:
        """Summary, notes, then per level what explains; what merely follows only when
        ``verbose`` (else counted)."""
        out = [self.summary] + [f"  {n}" for n in self.notes]
        for level in LEVELS:
            if level == "tree" and self.tree is not None and not self.tree.identical:
                out.append("  tree: " + self.tree.lines()[0] + f" (- only {self.labels[0]}, "
                           f"+ only {self.labels[1]})")
                out += [f"    {line}" for line in self.tree.lines()[1:]]
                continue
            hidden = 0
            for f in self.at(level):
                if f.explains and f.text and f.text in self.summary:
                    continue  # the summary said it
                if f.explains or (verbose and f.role != "note"):
                    mark = "" if f.explains else f" ({f.role})"
                    out.append(f"  {level}: {f.text or f.field}{mark}")
                elif f.role == "note" and f.text not in self.notes:
                    out.append(f"  {level}: {f.text}")
                elif not f.explains and f.role != "note":
                    hidden += 1
            state = self.levels.get(level, "")
            if state.startswith(("unreadable", "skipped")):
                out.append(f"  {level}: {state}")
            if hidden:
                out.append(f"  {level}: {hidden} consequential difference{'s' * (hidden > 1)} "
                           "not shown (--full)")
        return out


@dataclass
class Side:
    """One thing being compared: an image (file or directory), its manifest, or both."""

    given: str
    manifest: dict | None = None
    manifest_path: Path | None = None
    image: Path | None = None

    @property
    def is_dir(self) -> bool:
        return self.image is not None and self.image.is_dir()

    @property
    def is_file(self) -> bool:
        return self.image is not None and self.image.is_file()


def load_side(path: str | Path, *, use_manifest: bool = True) -> Side:
    """An image path (its ``NAME.manifest.json`` is used when present) or a manifest path (its
    image is used when it sits next to it)."""
    p = Path(path)
    if not p.exists():
        raise InputError(str(p), "no such file or directory")
    side = Side(str(p))
    if p.is_file() and _looks_like_json(p):
        side.manifest, side.manifest_path = _load_manifest(p), p
        name = (side.manifest.get("image") or {}).get("file")
        if name and (p.parent / name).exists():
            side.image = p.parent / name
        return side
    side.image = p
    stem = p.name[:-len(".raw")] if p.name.endswith(".raw") else p.name
    candidate = p.parent / f"{stem}.manifest.json"
    if use_manifest and candidate.is_file():
        side.manifest, side.manifest_path = _load_manifest(candidate), candidate
    return side


def _looks_like_json(p: Path) -> bool:
    with open(p, "rb") as fh:
        return fh.read(64).lstrip()[:1] == b"{"


def _load_manifest(p: Path) -> dict:
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as err:
        raise InputError(str(p), f"not a readable manifest: {err}") from None
    if not isinstance(data, dict) or "schema" not in data:
        raise InputError(str(p), "not a sysext-pipeline manifest (no schema field)")
    return data


def diff(a: str | Path | Side, b: str | Path | Side, *, limit: int = 10, full: bool = False,
         labels: tuple[str, str] = ("in A", "in B"), tool_labels: tuple[str, str] | None = None,
         use_manifests: bool = True) -> Report:
    """Compare two builds (images and/or manifests); see the module docstring for the levels."""
    sa = a if isinstance(a, Side) else load_side(a, use_manifest=use_manifests)
    sb = b if isinstance(b, Side) else load_side(b, use_manifest=use_manifests)
    report = Report(sa.given, sb.given, labels, tool_labels)
    return _Differ(sa, sb, report, limit, full).run()


class _Differ:
    def __init__(self, a: Side, b: Side, report: Report, limit: int, full: bool):
        self.a, self.b, self.r, self.limit, self.full = a, b, report, limit, full
        self.seed_differs = False  # the recipe differs: values derived from it differ too

    # -- driver ------------------------------------------------------------------------------
    def run(self) -> Report:
        r, a, b = self.r, self.a, self.b
        la, lb = r.labels
        tools_differ = False
        if a.manifest is not None and b.manifest is not None:
            tools_differ = self._manifests()
            r.manifests_identical = not r.at("manifest")
            r.levels["manifest"] = _level_state(r.at("manifest"))
        else:
            r.levels["manifest"] = "n/a: a side has no manifest"

        same = self._same_image()
        if same:
            r.identical = True
            r.summary = "identical images" + ("" if r.manifests_identical in (True, None) else
                                              "; the manifests differ: " +
                                              ", ".join(sorted(r.fields("manifest"))))
            return r
        if same is None and a.image is None and b.image is None:
            r.summary = "cannot tell: neither manifest records an image hash"
            return r

        explaining = [f for f in r.at("manifest") if f.explains]
        if explaining and not self.full:
            return self._explained("manifest", explaining[0].text)

        data = (None, None) if tools_differ else self._container()
        if r.explained_at and not self.full:
            return r
        if tools_differ:
            r.levels["container"] = r.levels["superblock"] = "skipped: tool versions differ"
            r.levels["bytes"] = "skipped: tool versions differ"
        elif data != (None, None):
            self._superblock(*data)
            if r.explained_at and not self.full:
                return r

        tree = self._tree(data)
        if tree is None:
            return self._finish()
        if tree.identical and same is None:
            r.identical = True
            r.summary = "identical file trees" + (
                "" if r.manifests_identical in (True, None) else
                "; the manifests differ: " + ", ".join(sorted(r.fields("manifest"))))
            return r
        if not tree.identical:
            first = (tree.added and f"{tree.added[0]} only {lb}") or \
                (tree.removed and f"{tree.removed[0]} only {la}") or \
                (tree.changed and f"{tree.changed[0]['path']}: " + ", ".join(
                    tree.changed[0]["attributes"]))
            return self._explained("tree", f"file trees differ: {tree.lines()[0]}; first: {first}")
        if tools_differ:
            tool_notes = "; ".join(r.notes)
            return self._explained("manifest", f"different tool versions ({tool_notes}): "
                                   "different bytes are expected; the file trees are identical")
        if data != (None, None) and not r.explained_at:
            self._bytes(*data)
        return self._finish()

    def _explained(self, level: str, text: str) -> Report:
        r = self.r
        if r.explained_at is None:
            r.explained_at = level
            r.summary = f"differs ({level}): {text}"
        return r

    def _finish(self) -> Report:
        r = self.r
        if r.explained_at is None:
            r.summary = "differs, unexplained: " + (
                "; ".join(f.text for f in r.findings if f.text) or "no level found a difference")
        return r

    # -- identity ----------------------------------------------------------------------------
    def _same_image(self) -> bool | None:
        """True/False when it can be decided cheaply, None when only the tree can tell."""
        a, b = self.a, self.b
        if a.is_file and b.is_file:
            if a.image.stat().st_size != b.image.stat().st_size:
                return False
            return fsinfo.first_difference(a.image, b.image) is None
        if a.is_dir or b.is_dir:
            return None  # directories: the tree level decides
        sha_a = _image_sha(a)
        sha_b = _image_sha(b)
        if sha_a and sha_b:
            return sha_a == sha_b
        tree_a, tree_b = _recorded(a, "tree_sha256"), _recorded(b, "tree_sha256")
        if _recorded(a, "format") == _recorded(b, "format") == "directory" and tree_a and tree_b:
            return tree_a == tree_b
        return None

    # -- level 1 -----------------------------------------------------------------------------
    def _manifests(self) -> bool:
        """Compare the manifests; returns whether image tool versions differ."""
        ma, mb, r = self.a.manifest, self.b.manifest, self.r
        la, lb = r.labels
        add = r.add
        ta_label, tb_label = r.tool_labels or r.labels
        tools_a, tools_b = ma.get("tools") or {}, mb.get("tools") or {}
        tools_differ = False
        for tool in sorted(set(tools_a) | set(tools_b)):
            va, vb = tools_a.get(tool), tools_b.get(tool)
            if va != vb:
                relevant = tool in IMAGE_TOOLS
                tools_differ |= relevant
                note = f"{tool} {vb or 'absent'} {tb_label}, {va or 'absent'} {ta_label}"
                if relevant:
                    note += ": different bytes are expected"
                r.notes.append(note)
                add("manifest", f"tools.{tool}", va, vb, note, explains=False, role="note")
        if ma.get("schema") != mb.get("schema"):
            add("manifest", "schema", ma.get("schema"), mb.get("schema"),
                f"manifest schema {ma.get('schema')} → {mb.get('schema')}")
        ra, rb = ma.get("recipe") or {}, mb.get("recipe") or {}
        if ra.get("sha256") != rb.get("sha256"):
            self.seed_differs = True
            add("manifest", "recipe.sha256", ra.get("sha256"), rb.get("sha256"),
                f"recipe {ra.get('file')} ({_short(ra.get('sha256'))}) → {rb.get('file')} "
                f"({_short(rb.get('sha256'))})", explains=False, role="note")
        elif ra.get("file") != rb.get("file"):
            add("manifest", "recipe.file", ra.get("file"), rb.get("file"),
                f"recipe file name {ra.get('file')} → {rb.get('file')} (same content)",
                explains=False, role="note")
        self._inputs(ma.get("inputs") or [], mb.get("inputs") or [])
        ea, eb = ma.get("source_date_epoch"), mb.get("source_date_epoch")
        if ea != eb:
            add("manifest", "source_date_epoch", ea, eb,
                f"source_date_epoch {ea} ({ma.get('source_date_epoch_origin')}) → {eb} "
                f"({mb.get('source_date_epoch_origin')})")
        for key in SETTINGS:
            if ma.get(key) != mb.get(key):
                add("manifest", key, ma.get(key), mb.get(key),
                    f"{key} {_short(ma.get(key))} → {_short(mb.get(key))}")
        ia, ib = ma.get("image") or {}, mb.get("image") or {}
        for key in IMAGE_SETTINGS:
            if ia.get(key) != ib.get(key):
                add("manifest", f"image.{key}", ia.get(key), ib.get(key),
                    f"image {key} {ia.get(key)} → {ib.get(key)}")
        fa = (ma.get("extension_release") or {}).get("fields") or {}
        fb = (mb.get("extension_release") or {}).get("fields") or {}
        for key in sorted(set(fa) | set(fb)):
            if fa.get(key) != fb.get(key):
                add("manifest", f"extension_release.{key}", fa.get(key), fb.get(key),
                    f"extension-release {key}={fa.get(key)} → {key}={fb.get(key)}")
        # Consequences, not causes: listed so that a manifest-only diff is complete.
        for key in ("dropped", "excluded_count"):
            if ma.get(key) != mb.get(key):
                add("manifest", key, None, None, f"{key} differs", explains=False)
        for key in ("sha256", "size", "tree_sha256"):
            if ia.get(key) != ib.get(key):
                add("manifest", f"image.{key}", ia.get(key), ib.get(key),
                    f"image {key} {_short(ia.get(key))} → {_short(ib.get(key))}", explains=False)
        return tools_differ

    def _inputs(self, ia: list[dict], ib: list[dict]) -> None:
        add = self.r.add
        key = lambda p: (p.get("name"), p.get("architecture"))  # noqa: E731
        da, db = {key(p): p for p in ia}, {key(p): p for p in ib}
        for k in sorted(set(da) | set(db), key=lambda k: (str(k[0]), str(k[1]))):
            pa, pb = da.get(k), db.get(k)
            name = k[0] if k[1] in (None, "all") else f"{k[0]}:{k[1]}"
            if pa is None:
                add("manifest", f"inputs.{name}", None, pb.get("version"),
                    f"input {name} {pb.get('version')} added")
            elif pb is None:
                add("manifest", f"inputs.{name}", pa.get("version"), None,
                    f"input {name} {pa.get('version')} removed")
            elif pa.get("version") != pb.get("version"):
                add("manifest", f"inputs.{name}.version", pa.get("version"), pb.get("version"),
                    f"input {name} {pa.get('version')} → {pb.get('version')}")
            elif pa.get("sha256") != pb.get("sha256"):
                add("manifest", f"inputs.{name}.sha256", pa.get("sha256"), pb.get("sha256"),
                    f"input {name} {pa.get('version')}: same version, other file "
                    f"(sha256 {_short(pa.get('sha256'))} → {_short(pb.get('sha256'))})")
            elif pa.get("source") != pb.get("source") or pa.get("file") != pb.get("file"):
                add("manifest", f"inputs.{name}.source", pa.get("source"), pb.get("source"),
                    f"input {name}: same file (sha256), fetched from {pa.get('source')} → "
                    f"{pb.get('source')}", explains=False, role="note")
        order_a = [key(p) for p in ia if key(p) in db]
        order_b = [key(p) for p in ib if key(p) in da]
        if order_a != order_b:  # a later source wins on overlapping paths: order matters
            add("manifest", "inputs.order", None, None, "inputs in a different order "
                "(a later package wins on overlapping paths)")

    # -- level 2 -----------------------------------------------------------------------------
    def _container(self):
        """Returns ((image, offset, size) of A's file system, same for B), or (None, None)."""
        a, b, r = self.a, self.b, self.r
        if a.is_file and b.is_file:
            from .ddi.gpt import has_gpt

            ga, gb = has_gpt(a.image), has_gpt(b.image)
            if ga and gb:
                return self._ddi_images()
            if ga != gb:
                r.levels["container"] = "differs"
                r.add("container", "format", "ddi" if ga else "plain", "ddi" if gb else "plain",
                      "one image is a DDI, the other a plain file system")
                self._explained("container", r.findings[-1].text)
                return None, None
            r.levels["container"] = "n/a: plain file system images"
            self._detached_verity()
            return (a.image, 0, None), (b.image, 0, None)
        ma, mb = a.manifest or {}, b.manifest or {}
        if ma.get("ddi") and mb.get("ddi"):
            self._ddi_manifests(ma["ddi"], mb["ddi"])
        else:
            r.levels["container"] = "n/a"
        return None, None

    def _ddi_images(self):
        from .ddi.assemble import find_verity_set, hash_image
        from .ddi.gpt import read_gpt
        from .ddi.signature import parse_partition
        from .ddi.verity import SUPERBLOCK_SIZE, parse_superblock
        from .systemd import partitions as parts

        r, add = self.r, self.r.add
        la, lb = r.labels
        ia, ib = self.a.image, self.b.image
        ta, tb = read_gpt(ia), read_gpt(ib)
        va, vb = find_verity_set(ta), find_verity_set(tb)
        ha, _, ua = hash_image(ia, ta, va.signature if va else None)
        hb, _, ub = hash_image(ib, tb, vb.signature if vb else None)
        before = len(r.findings)
        for fld in ("disk_uuid", "sector_size", "first_usable_lba", "last_usable_lba"):
            x, y = getattr(ta, fld), getattr(tb, fld)
            if x != y:
                seeded = fld == "disk_uuid" and self.seed_differs
                add("container", f"gpt.{fld}", x, y,
                    f"GPT {fld} {x} → {y}" + (SEEDED_NOTE if seeded else ""),
                    explains=not seeded)

        def name(p):
            found = parts.lookup(p.type_uuid)
            return found[0] if found else f"partition{p.index}"

        pa = {name(p): p for p in ta.partitions}
        pb = {name(p): p for p in tb.partitions}
        data_differs = False
        for n in list(pa) + [n for n in pb if n not in pa]:
            x, y = pa.get(n), pb.get(n)
            if x is None or y is None:
                add("container", f"partitions.{n}", x and x.index, y and y.index,
                    f"partition {n} only {la if y is None else lb}")
                continue
            for fld in ("type_uuid", "uuid", "name", "first_lba", "last_lba", "attributes"):
                if getattr(x, fld) != getattr(y, fld):
                    add("container", f"partitions.{n}.{fld}", getattr(x, fld), getattr(y, fld),
                        f"partition {n} {fld} {_short(getattr(x, fld))} → "
                        f"{_short(getattr(y, fld))}", explains=False)
            if ha[x.index] != hb[y.index]:
                add("container", f"partitions.{n}.sha256", ha[x.index], hb[y.index],
                    f"partition {n} content differs (sha256 {_short(ha[x.index])} → "
                    f"{_short(hb[y.index])})", explains=False)
                if va and vb and x == va.data:
                    data_differs = True
        if va is None or vb is None:
            r.levels["container"] = "differs" if len(r.findings) > before else "same"
            if len(r.findings) > before:
                self._explained("container", r.findings[before].text)
            return None, None

        rha, rhb = va.root_hash_from_uuids(), vb.root_hash_from_uuids()
        if rha != rhb:
            add("container", "root_hash", rha, rhb, f"root hash {_short(rha)} → {_short(rhb)}",
                explains=False)
        sba = parse_superblock(fsinfo.read_range(ia, va.hash.offset, SUPERBLOCK_SIZE))
        sbb = parse_superblock(fsinfo.read_range(ib, vb.hash.offset, SUPERBLOCK_SIZE))
        verity_fields = []
        if sba and sbb:
            for fld in ("salt", "uuid", "algorithm", "data_block_size", "hash_block_size",
                        "data_blocks", "version", "hash_type"):
                x, y = getattr(sba, fld), getattr(sbb, fld)
                if x != y:
                    x, y = (x.hex(), y.hex()) if isinstance(x, bytes) else (x, y)
                    seeded = fld in ("salt", "uuid") and self.seed_differs
                    verity_fields.append(fld)
                    add("container", f"verity.{fld}", x, y,
                        f"verity superblock {fld} {_short(x)} → {_short(y)}"
                        + (SEEDED_NOTE if seeded else ""),
                        explains=not data_differs and not seeded)
        elif bool(sba) != bool(sbb):
            add("container", "verity.superblock", bool(sba), bool(sbb),
                "verity superblock present in one image only")
        sig = self._signatures(ia, ib, va, vb, parse_partition, rha, rhb)

        if data_differs:
            x, y = va.data, vb.data
            if rha == rhb:
                off = fsinfo.first_difference(ia, ib, x.offset, y.offset, min(x.size, y.size))
                where = ""
                try:
                    sb = fsinfo.superblock(ia, x.offset)
                    where = f", in the {fsinfo.region(sb, off)}" if off is not None else ""
                except InputError:
                    pass
                text = (f"data partition {name(x)} differs at byte {off}{where} but the root "
                        f"hash is the same: one image's data no longer matches its verity tree "
                        f"(corrupted or modified after the build)")
                add("container", f"partitions.{name(x)}.data", None, off, text)
                r.levels["container"] = "differs"
                self._explained("container", text)
            else:
                r.levels["container"] = "differs (follows from the file system)"
            return (ia, x.offset, x.size), (ib, y.offset, y.size)

        hash_name = name(va.hash)
        if not data_differs and not verity_fields and ha[va.hash.index] != hb[vb.hash.index] \
                and va.hash.size == vb.hash.size:
            off = fsinfo.first_difference(ia, ib, va.hash.offset, vb.hash.offset, va.hash.size)
            add("container", f"partitions.{hash_name}.tree", None, off,
                f"the verity hash tree differs at byte {off} of partition {hash_name} with the "
                "same data and verity parameters: one image's hash tree is corrupted or "
                "modified" + (" (the root hash differs too)" if rha != rhb else ""))
        explaining = [f for f in r.findings[before:] if f.explains]
        if sig:
            explaining.insert(0, sig)
        if not explaining:
            changed = [f for f in r.findings[before:]]
            if changed:
                for f in changed:
                    f.explains = True
                explaining = changed
        r.levels["container"] = "differs" if explaining else "same"
        if explaining:
            self._explained("container", explaining[0].text)
        return None, None

    def _signatures(self, ia, ib, va, vb, parse_partition, rha, rhb):
        """Compare the signature partitions; return the explaining finding, if any."""
        r, add = self.r, self.r.add
        la, lb = r.labels
        if va.signature is None and vb.signature is None:
            return None
        raw_a = fsinfo.read_range(ia, va.signature.offset, va.signature.size) if va.signature \
            else None
        raw_b = fsinfo.read_range(ib, vb.signature.offset, vb.signature.size) if vb.signature \
            else None
        if raw_a == raw_b:
            return None
        try:
            ba = parse_partition(raw_a, f"{la} signature") if raw_a is not None else None
            bb = parse_partition(raw_b, f"{lb} signature") if raw_b is not None else None
        except InputError as err:
            add("container", "signature", None, None, f"signature unreadable: {err.line()}")
            return r.findings[-1]
        return self._signature_blobs(
            None if ba is None else (ba.root_hash, ba.fingerprint, ba.der),
            None if bb is None else (bb.root_hash, bb.fingerprint, bb.der), rha, rhb)

    def _signature_blobs(self, ba, bb, rha, rhb):
        r, add = self.r, self.r.add
        la, lb = r.labels
        if ba is None or bb is None:
            add("container", "signature.present", ba is not None, bb is not None,
                f"signed only {la if bb is None else lb} (the other's signature partition "
                "is empty: unsigned, for offline signing)")
            return r.findings[-1]
        (ha, fa, da), (hb, fb, db) = ba, bb
        if fa != fb:
            add("container", "signature.certificate_fingerprint", fa, fb,
                f"different signer: certificate {_short(fa)} → {_short(fb)}")
            return r.findings[-1]
        if ha != hb:
            add("container", "signature.root_hash", ha, hb,
                f"same signer, signs a different root hash {_short(ha)} → {_short(hb)}",
                explains=rha == rhb)
            return r.findings[-1] if rha == rhb else None
        if da != db:
            add("container", "signature.bytes", None, None,
                "same signer and root hash, different signature bytes (ECDSA signatures are "
                "randomized; compare the unsigned image sha256)")
            return r.findings[-1]
        return None

    def _ddi_manifests(self, da: dict, db: dict) -> None:
        r, add = self.r, self.r.add
        before = len(r.findings)
        pa = {p.get("designator") or p.get("label"): p for p in da.get("partitions") or []}
        pb = {p.get("designator") or p.get("label"): p for p in db.get("partitions") or []}
        data_differs = False
        for n in list(pa) + [n for n in pb if n not in pa]:
            x, y = pa.get(n) or {}, pb.get(n) or {}
            if x.get("sha256") != y.get("sha256"):
                add("container", f"partitions.{n}.sha256", x.get("sha256"), y.get("sha256"),
                    f"partition {n} content differs", explains=False)
                data_differs |= n in ("root", "usr")
        vpa, vpb = da.get("verity") or {}, db.get("verity") or {}
        for key in sorted(set(vpa) | set(vpb)):
            if vpa.get(key) != vpb.get(key):
                add("container", f"verity.{key}", vpa.get(key), vpb.get(key),
                    f"verity {key} {_short(vpa.get(key))} → {_short(vpb.get(key))}",
                    explains=not data_differs)
        if da.get("rootHash") != db.get("rootHash"):
            add("container", "root_hash", da.get("rootHash"), db.get("rootHash"),
                f"root hash {_short(da.get('rootHash'))} → {_short(db.get('rootHash'))}",
                explains=False)
        if da.get("certificateFingerprint") != db.get("certificateFingerprint"):
            fa, fb = da.get("certificateFingerprint"), db.get("certificateFingerprint")
            text = (f"different signer: certificate {_short(fa)} → {_short(fb)}" if fa and fb
                    else f"signed only {r.labels[0] if fa else r.labels[1]}")
            add("container", "signature.certificate_fingerprint", fa, fb, text)
        elif da.get("unsignedSha256") == db.get("unsignedSha256") and \
                da.get("sha256") != db.get("sha256"):
            add("container", "signature.bytes", None, None, "same unsigned image, different "
                "signature bytes (ECDSA signatures are randomized)")
        explaining = [f for f in r.findings[before:] if f.explains]
        r.levels["container"] = "differs" if len(r.findings) > before else "same"
        if explaining:
            self._explained("container", explaining[0].text)

    def _detached_verity(self) -> None:
        """NAME.verity/.roothash/.roothash.p7s next to both plain images: compare them too."""
        from .ddi.verity import SUPERBLOCK_SIZE, parse_superblock

        r = self.r
        base = [str(s.image)[:-len(".raw")] if str(s.image).endswith(".raw") else None
                for s in (self.a, self.b)]
        if None in base:
            return
        va, vb = (Path(f"{x}.verity") for x in base)
        if not va.exists() and not vb.exists():
            return
        if va.exists() != vb.exists():
            r.add("container", "verity.file", va.exists(), vb.exists(),
                  "detached verity (NAME.verity) next to one image only")
            return
        r.levels["container"] = "detached verity"
        sba = parse_superblock(fsinfo.read_range(va, 0, SUPERBLOCK_SIZE))
        sbb = parse_superblock(fsinfo.read_range(vb, 0, SUPERBLOCK_SIZE))
        same_fs = fsinfo.first_difference(self.a.image, self.b.image) is None
        if sba and sbb:
            for fld in ("salt", "uuid", "algorithm", "data_block_size", "hash_block_size",
                        "data_blocks"):
                x, y = getattr(sba, fld), getattr(sbb, fld)
                if x != y:
                    x, y = (x.hex(), y.hex()) if isinstance(x, bytes) else (x, y)
                    r.add("container", f"verity.{fld}", x, y,
                          f"detached verity superblock {fld} {_short(x)} → {_short(y)}",
                          explains=same_fs)
        ra, rb = (Path(f"{x}.roothash") for x in base)
        rha = ra.read_text().strip() if ra.exists() else None
        rhb = rb.read_text().strip() if rb.exists() else None
        if rha != rhb:
            r.add("container", "root_hash", rha, rhb, f"root hash {_short(rha)} → {_short(rhb)}",
                  explains=False)
        pa, pb = (Path(f"{x}.roothash.p7s") for x in base)
        if pa.exists() or pb.exists():
            blob = lambda p: (rha if p is pa else rhb, _p7s_signer(p), p.read_bytes()) \
                if p.exists() else None  # noqa: E731
            self._signature_blobs(blob(pa), blob(pb), rha, rhb)

    # -- level 3 -----------------------------------------------------------------------------
    def _superblock(self, fa, fb) -> None:
        r = self.r
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
            self._explained("superblock", r.findings[-1].text)
            return
        explains = []
        for key in sa:
            if sa[key] != sb.get(key):
                setting = key in fsinfo.settings(sa) and not (
                    key in SEEDED and self.seed_differs)
                r.add("superblock", key, sa[key], sb.get(key),
                      f"{sa['type']} {key} {_short(sa[key])} → {_short(sb.get(key))}"
                      + (SEEDED_NOTE if key in SEEDED and self.seed_differs else ""),
                      explains=setting)
                if setting:
                    explains.append(r.findings[-1])
        r.levels["superblock"] = _level_state(r.at("superblock"))
        if explains:
            self._explained("superblock", explains[0].text)

    # -- level 4 -----------------------------------------------------------------------------
    def _tree(self, data) -> TreeDiff | None:
        r = self.r
        streams = []
        try:
            for side, fs in zip((self.a, self.b), data):
                stream = self._tree_stream(side, fs)
                if stream is None:
                    r.levels["tree"] = f"n/a: no image or file list for {side.given}"
                    return None
                streams.append(stream)
            manifest_based = any(kind == "manifest" for kind, _ in streams)
            tree = compare_trees(streams[0][1], streams[1][1], limit=self.limit,
                                 manifest_based=manifest_based)
        except PipelineError as err:
            r.levels["tree"] = f"unreadable: {err.line()}"
            return None
        if manifest_based:
            tree.notes.append("(a side's tree comes from its manifest: the root directory and "
                              "hard-link counts are not compared)")
        r.tree = tree
        r.levels["tree"] = "same" if tree.identical else "differs"
        for item in tree.added:
            r.add("tree", item, None, None, f"{item} only {r.labels[1]}")
        for item in tree.removed:
            r.add("tree", item, None, None, f"{item} only {r.labels[0]}")
        for item in tree.changed:
            for attr, (x, y) in item["attributes"].items():
                r.add("tree", f"{item['path']}:{attr}", x, y,
                      f"{item['path']}: {attr} {_short(x)} → {_short(y)}")
        return tree

    def _tree_stream(self, side: Side, fs):
        if fs is not None:
            image, offset, size = fs
            return "image", fsinfo.walk_image(fsinfo.locate(image, offset=offset, size=size))
        if side.is_dir or side.is_file:  # a DDI: its root/usr partition
            return "image", fsinfo.walk_image(side.image)
        if side.manifest and "files" in side.manifest:
            files = sorted(side.manifest["files"], key=lambda f: fsinfo.tree_key(f["path"]))
            return "manifest", iter(files)
        return None

    # -- level 5 -----------------------------------------------------------------------------
    def _bytes(self, fa, fb) -> None:
        r = self.r
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
        text = (f"file trees and file system settings are identical, bytes differ from offset "
                f"{off} ({where}){also}: the layout depends on something outside the "
                "inputs (e.g. directory order on disk)")
        r.add("bytes", "offset", off, off, text)
        r.levels["bytes"] = "differs"
        self._explained("bytes", text)


def compare_trees(a: Iterable[dict], b: Iterable[dict], *, limit: int = 10,
                  manifest_based: bool = False) -> TreeDiff:
    """Merge two tree streams (both in fsinfo.tree_key order) into a TreeDiff."""
    tree = TreeDiff(limit=limit)
    ia, ib = _normalized(a, manifest_based), _normalized(b, manifest_based)
    x, y = next(ia, None), next(ib, None)
    while x is not None or y is not None:
        kx = fsinfo.tree_key(x["path"]) if x is not None else None
        ky = fsinfo.tree_key(y["path"]) if y is not None else None
        tree.compared += 1
        if y is None or (x is not None and kx < ky):
            tree.counts["removed"] += 1
            if len(tree.removed) < limit:
                tree.removed.append(x["path"])
            x = next(ia, None)
        elif x is None or ky < kx:
            tree.counts["added"] += 1
            if len(tree.added) < limit:
                tree.added.append(y["path"])
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
                tree.counts["changed"] += 1
                tree.attributes.update(attrs.keys())
                if len(tree.changed) < limit:
                    tree.changed.append({"path": x["path"], "attributes": attrs})
            x, y = next(ia, None), next(ib, None)
    return tree


def _normalized(entries: Iterable[dict], manifest_based: bool) -> Iterator[dict]:
    for entry in entries:
        if manifest_based:
            if entry["path"] == fsinfo.ROOT:
                continue
            entry = {k: v for k, v in entry.items() if k != "nlink"}
        yield entry


def _level_state(found: list[Finding]) -> str:
    if not found:
        return "same"
    if any(f.explains for f in found):
        return "differs"
    return "differs only in what follows: " + ", ".join(f.field for f in found)


def _recorded(side: Side, key: str):
    return ((side.manifest or {}).get("image") or {}).get(key)


def _image_sha(side: Side) -> str | None:
    if side.is_file:
        from .fetch import hash_file

        return hash_file(side.image)[0]
    return _recorded(side, "sha256")


def _p7s_signer(path: Path) -> str | None:
    try:
        from cryptography.hazmat.primitives.serialization import pkcs7

        from .ddi.signature import read_p7s
        from .keys import fingerprint

        certs = pkcs7.load_der_pkcs7_certificates(read_p7s(path))
        return fingerprint(certs[0]) if certs else None
    except (ValueError, PipelineError):
        return None


def _short(value) -> str:
    if isinstance(value, str) and len(value) > 24 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "…"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)[:80]
    return str(value)
