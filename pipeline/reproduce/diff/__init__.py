"""``diff``: why two builds differ, top-down, stopping at the first level that explains it.

Levels, each read only when the one above did not explain the difference:

1. ``manifest`` (manifest.py) — the two manifests (found next to the images, or given): inputs
   (package added, removed, other version or hash), SOURCE_DATE_EPOCH, image settings; the
   recipe hash and tool versions are said, not taken as the reason. Another mksquashfs or
   mkfs.erofs may pack the same files differently: then the superblock does not explain and the
   file trees decide. systemd-repart and veritysetup write nothing the build does not pin, so
   their versions excuse nothing.
2. ``container`` (container.py) — a DDI's GPT and partitions, verity superblock, root hash and
   signature partition; a plain image's detached ``NAME.verity``/``.roothash``/``.roothash.p7s``;
   without images, the manifests' ``ddi``/``verity``. Before any of it, each image is checked
   against itself (integrity.py: data vs verity tree and root hash, signature vs root hash), so
   a tampered image is called that whatever else differs.
3. ``superblock`` (filesystem.py) — squashfs/erofs superblock settings explain; counts and table
   offsets follow from the content.
4. ``tree`` (tree.py) — added and removed paths, then per path the attributes that differ.
5. ``bytes`` (filesystem.py) — identical trees and settings but different bytes: the first
   differing offset and its region. That is a reproducibility bug in the packing.

Values derived from the build's seed (erofs UUID, verity salt and UUID, disk and partition
UUIDs, root hash) or from sizes follow from any other difference: they are the explanation only
when nothing else differs. A signature difference explains the signature alone: when the data
differs too, the levels below still say why.

Everything streams: images are compared chunk by chunk, trees merged entry by entry; only the
counts and the first ``limit`` examples are kept.
"""

from __future__ import annotations

from pathlib import Path

from . import container, integrity
from . import filesystem as fs_level
from . import manifest as manifest_level
from . import tree as tree_level
from .report import LEVELS, Finding, Report, TreeDiff, level_state
from .sides import Side, load_side, own_manifest_mismatches
from .tree import TREE_ATTRIBUTES, compare_trees

__all__ = ["LEVELS", "TREE_ATTRIBUTES", "Finding", "Report", "Side", "TreeDiff", "compare_trees",
           "diff", "load_side", "own_manifest_mismatches"]


def diff(a: str | Path | Side, b: str | Path | Side, *, limit: int = 10, full: bool = False,
         labels: tuple[str, str] = ("in A", "in B"), tool_labels: tuple[str, str] | None = None,
         use_manifests: bool = True, unsigned: bool = False) -> Report:
    """Compare two builds (images and/or manifests); see the module docstring for the levels.

    ``unsigned``: compare what is signed, not the signatures (a DDI's signature partition as
    zeros, no ``.roothash.p7s``, no signing fields in the manifests) — ``verify`` rebuilds
    without the private key and checks the original's signature itself."""
    sa = a if isinstance(a, Side) else load_side(a, use_manifest=use_manifests)
    sb = b if isinstance(b, Side) else load_side(b, use_manifest=use_manifests)
    report = Report(sa.given, sb.given, labels, tool_labels)
    return _Differ(sa, sb, report, limit, full, unsigned).run()


class _Differ:
    def __init__(self, a: Side, b: Side, report: Report, limit: int, full: bool, unsigned: bool):
        self.a, self.b, self.r, self.limit, self.full = a, b, report, limit, full
        self.unsigned = unsigned
        self.tools: list = []  # (tool, version A, version B) that differ
        self.byte_tools: list[str] = []  # of those, the ones that may change the bytes
        self.same_bytes: bool | None = None  # the image bytes (DDI with unsigned: unsigned)
        self.partial: list[Finding] = []  # causes that explain only part (the signature)
        self.integrity_checked = False  # integrity.problems ran on both sides

    # -- driver ------------------------------------------------------------------------------
    def run(self) -> Report:
        r, a, b = self.r, self.a, self.b
        if a.manifest is not None and b.manifest is not None:
            ma, mb = a.manifest, b.manifest
            if self.unsigned:
                ma, mb = ma.unsigned(), mb.unsigned()
            self.tools = manifest_level.compare_manifests(r, ma, mb)
            self.byte_tools = manifest_level.byte_tools(self.tools)
            r.manifests_identical = not r.at("manifest")
            r.levels["manifest"] = level_state(r.at("manifest"))
        else:
            r.levels["manifest"] = "n/a: a side has no manifest"
        for side, which in ((a, "a"), (b, "b")):
            for text in own_manifest_mismatches(side):
                r.notes.append(text)
                r.unverified.append({"side": which, "text": text})
                r.add("manifest", f"own_manifest.{which}", None, None, text, explains=False,
                      role="note")

        same = self.same_bytes = self._same_image()
        if same and container.detached_same(self):
            return self._identical("identical images")
        if same is None and a.image is None and b.image is None and not container_known(a, b):
            r.summary = "cannot tell: neither manifest records an image hash"
            return self._finish("differs")

        for side, label, which in ((a, r.labels[0], "a"), (b, r.labels[1], "b")):
            for fld, text in integrity.problems(side, signatures=not self.unsigned):
                r.add("container", f"{fld}.{which}", None, None, f"{label}: {text}")
                r.unverified.append({"side": which, "text": f"{label}: {text}"})
        self.integrity_checked = True
        data = container.compare(self)
        if r.at("container") and not r.levels.get("container", "").startswith("differs"):
            r.levels["container"] = "differs"  # e.g. only an integrity problem was found
        if self._data_same():  # nothing below differs: what is derived is the difference
            for f in r.at("container"):
                f.explains, f.derived = f.explains or f.derived, False
        causes = r.causes("container")
        broken = [f for f in causes if f.field.startswith("integrity.")]
        if broken:
            where = [f for f in causes if not f.field.startswith("integrity.")
                     and f.field not in container.SIGNATURE_FIELDS]
            self._explained("container", "; ".join(f.text for f in broken[:1] + where[:1]))
            if not self.full:
                return self._finish("differs")
        if r.causes("manifest"):
            self._explained("manifest", r.causes("manifest")[0].text)
            if not self.full:
                return self._finish("differs")
        settled = [f for f in causes if f.field not in container.SIGNATURE_FIELDS]
        if settled:
            self._explained("container", settled[0].text)
            if not self.full:
                return self._finish("differs")
        if self._data_same():
            if causes:
                self._explained("container", causes[0].text)
            return self._finish("differs")
        self.partial = [f for f in causes if f.field in container.SIGNATURE_FIELDS]

        if data != (None, None):
            fs_level.superblock(self, *data)
            if r.causes("superblock"):
                self._explained("superblock", r.causes("superblock")[0].text)
                if not self.full:
                    return self._finish("differs")

        found = tree_level.tree(self, data)
        if found is None:
            return self._finish("differs")
        if found.identical and same is None:
            return self._identical("identical file trees")
        if not found.identical:
            la, lb = r.labels
            first = (found.added and f"{found.added[0]} only {lb}") or \
                (found.removed and f"{found.removed[0]} only {la}") or \
                (found.examples() and f"{found.examples()[0]['path']}: " + ", ".join(
                    found.examples()[0]["attributes"]))
            self._explained("tree", f"file trees differ: {found.lines()[0]}; first: {first}")
            return self._finish("differs")
        if self.byte_tools:
            r.levels["bytes"] = "skipped: another packing tool version may lay out the same " \
                                "files differently"
            self._explained("manifest", "the file trees are identical; the other "
                            f"{'/'.join(self.byte_tools)} version explains the different bytes")
            return self._finish("trees-identical")
        if data != (None, None) and not r.explained_at:
            fs_level.first_bytes(self, *data)
            if r.causes("bytes"):
                self._explained("bytes", r.causes("bytes")[0].text)
        return self._finish("trees-identical")

    def _data_same(self) -> bool:
        """Whether the file system inside is known to be the same on both sides (then only the
        container can explain)."""
        if self.a.is_ddi and self.b.is_ddi:
            return not container.data_differs(self.r)
        return bool(self.same_bytes)

    def _identical(self, what: str) -> Report:
        r = self.r
        r.identical = True
        # Identical is not intact: both could carry the same tampered data or signature, which
        # only each image's own verity tree and signature can tell (then diff exits 1).
        for side, label, which in ((self.a, r.labels[0], "a"), (self.b, r.labels[1], "b")):
            if self.integrity_checked:
                break
            for _, text in integrity.problems(side, signatures=not self.unsigned):
                r.notes.append(f"{label}: {text}")
                r.unverified.append({"side": which, "text": f"{label}: {text}"})
        r.summary = what + ("" if r.manifests_identical in (True, None) else
                            "; the manifests differ: " + ", ".join(sorted(
                                f for f in r.fields("manifest")
                                if not f.startswith("own_manifest"))))
        if r.unverified:
            r.summary += f"; but {len(r.unverified)} thing{'s' * (len(r.unverified) > 1)} " \
                "do not verify (exit 1)"
        manifest_level.tool_notes(r, self.tools, "identical")
        return r

    def _explained(self, level: str, text: str) -> None:
        r = self.r
        if r.explained_at is None:
            r.explained_at = level
            r.summary = f"differs ({level}): {text}"

    def _finish(self, outcome: str) -> Report:
        r = self.r
        derived = [f for f in r.findings if f.derived]
        if r.explained_at is None and derived:
            for f in derived:
                f.explains = True
                r.levels[f.level] = "differs"
            fields = ", ".join(dict.fromkeys(f"{f.level} {f.field}" for f in derived))
            r.explained_at = derived[0].level
            r.summary = (f"differs ({r.explained_at}): only values derived from the build's seed "
                         f"or from sizes differ ({fields}), nothing they are derived from: the "
                         "seed covers the file tree, format, file system, compression, verity, "
                         "architecture and epoch, so one of those differs, or the image was "
                         "made or changed by something else")
        if r.explained_at is None:
            r.summary = "differs, unexplained: " + (
                "; ".join(f.text for f in r.findings if f.text) or "no level found a difference")
        elif self.partial and r.explained_at not in ("container", "manifest"):
            r.summary += "; also: " + "; ".join(f.text for f in self.partial)
        manifest_level.tool_notes(r, self.tools, outcome)
        return r

    # -- identity ----------------------------------------------------------------------------
    def _same_image(self) -> bool | None:
        """True/False when it can be decided cheaply, None when only the tree can tell."""
        a, b = self.a, self.b
        if a.is_file and b.is_file:
            if self.unsigned and a.is_ddi and b.is_ddi:
                return a.sha256(unsigned=True) == b.sha256(unsigned=True)
            if a.image.stat().st_size != b.image.stat().st_size:
                return False
            from ...image import fsinfo

            return fsinfo.first_difference(a.image, b.image) is None
        if a.is_dir or b.is_dir:
            return None  # directories: the tree level decides
        sha_a, sha_b = a.sha256(unsigned=self.unsigned), b.sha256(unsigned=self.unsigned)
        if sha_a and sha_b:
            return sha_a == sha_b
        tree_a, tree_b = a.recorded("tree_sha256"), b.recorded("tree_sha256")
        if a.recorded("format") == b.recorded("format") == "directory" and tree_a and tree_b:
            return tree_a == tree_b
        return None


def container_known(a: Side, b: Side) -> bool:
    """Whether the manifests alone describe the containers (DDIs) or the trees (file lists)."""
    ma, mb = a.manifest, b.manifest
    if ma is None or mb is None:
        return False
    return bool((ma.ddi and mb.ddi) or (ma.files and mb.files))
