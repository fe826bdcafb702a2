"""What ``diff`` found: findings per level, the tree comparison, and how both are shown."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

LEVELS = ("manifest", "container", "superblock", "tree", "bytes")


@dataclass
class Finding:
    level: str
    field: str
    a: Any = None
    b: Any = None
    text: str = ""
    explains: bool = True  # False: a consequence or a note, not the reason
    role: str = "follows"  # when it does not explain: "follows" (a consequence) or "note"
    #: follows from other differences by construction — values derived from the build's seed
    #: (file system UUID, verity salt and UUID, disk and partition UUIDs, root hash) or from
    #: sizes (LBAs, block counts): a consequence of any other difference, the cause only when
    #: nothing else differs (the driver decides at the end).
    derived: bool = False

    def to_json(self) -> dict:
        return {"level": self.level, "field": self.field, "a": self.a, "b": self.b,
                "text": self.text, "explains": self.explains, "derived": self.derived,
                "role": "cause" if self.explains else self.role}


#: Distinct (old, new) mtime pairs kept to tell whether every mtime moved the same way.
_MTIME_PAIRS = 2


@dataclass
class TreeDiff:
    """Two file trees compared: counts, and at most ``limit`` examples of each kind. Content
    changes (any attribute but the time) come before paths whose mtime alone moved, and when
    every mtime moved from one A to one B (another SOURCE_DATE_EPOCH) that is one line."""

    limit: int = 10
    compared: int = 0
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[dict] = field(default_factory=list)  # content changes (mtime may differ too)
    retimed: list[dict] = field(default_factory=list)  # only the mtime differs
    counts: Counter = field(default_factory=Counter)  # added, removed, changed, retimed
    attributes: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    mtime_pairs: Counter = field(default_factory=Counter)  # (A, B) → paths; bounded

    @property
    def identical(self) -> bool:
        return not (self.counts["added"] or self.counts["removed"] or self.counts["changed"])

    def add_changed(self, path: str, attrs: dict) -> None:
        self.counts["changed"] += 1
        self.attributes.update(attrs.keys())
        if "mtime" in attrs:
            pair = tuple(attrs["mtime"])
            if pair in self.mtime_pairs or len(self.mtime_pairs) < _MTIME_PAIRS:
                self.mtime_pairs[pair] += 1
        content = len(attrs) > 1 or "mtime" not in attrs
        if not content:
            self.counts["retimed"] += 1
        examples = self.changed if content else self.retimed
        if len(examples) < self.limit:
            examples.append({"path": path, "attributes": attrs})

    @property
    def mtime_moved(self) -> tuple[int, int, int] | None:
        """(A, B, paths) when every mtime that differs moved from A to B, else None."""
        if len(self.mtime_pairs) != 1:
            return None
        (pair, paths), = self.mtime_pairs.items()
        return (*pair, paths) if paths == self.attributes["mtime"] else None

    def examples(self) -> list[dict]:
        """The changed paths shown: content changes first, then mtime-only ones."""
        return self.changed + self.retimed

    def to_json(self) -> dict:
        moved = self.mtime_moved
        return {"compared": self.compared, "added": self.counts["added"],
                "removed": self.counts["removed"], "changed": self.counts["changed"],
                "attributes": dict(sorted(self.attributes.items())), "limit": self.limit,
                "paths": {"added": self.added, "removed": self.removed,
                          "changed": self.examples()[:self.limit]},
                "mtime_moved": None if moved is None else
                {"from": moved[0], "to": moved[1], "paths": moved[2]},
                "notes": self.notes}

    def lines(self) -> list[str]:
        head = (f"{self.counts['added']} added, {self.counts['removed']} removed, "
                f"{self.counts['changed']} changed")
        if self.attributes:
            head += " (" + ", ".join(f"{k} {v}" for k, v in self.attributes.most_common()) + ")"
        out = [head]
        out += [f"+ {p}" for p in self.added]
        out += [f"- {p}" for p in self.removed]
        moved = self.mtime_moved
        for item in self.changed:
            attrs = {k: v for k, v in item["attributes"].items()
                     if not (moved and k == "mtime")}
            parts = [f"{k} {short(v[0])} → {short(v[1])}" for k, v in attrs.items()]
            out.append(f"~ {item['path']}: " + "; ".join(parts))
        shown = len(self.added) + len(self.removed) + len(self.changed)
        total = self.counts["added"] + self.counts["removed"] + self.counts["changed"]
        if moved:
            out.append(f"~ every mtime moved from {moved[0]} to {moved[1]} ({moved[2]} "
                       f"path{'s' * (moved[2] != 1)})")
            shown += self.counts["retimed"]  # all of them, in that line
        else:
            for item in self.retimed:
                a, b = item["attributes"]["mtime"]
                out.append(f"~ {item['path']}: mtime {short(a)} → {short(b)}")
            shown += len(self.retimed)
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
    notes: list[str] = field(default_factory=list)  # said first (tool versions, own manifests)
    findings: list[Finding] = field(default_factory=list)
    levels: dict[str, str] = field(default_factory=dict)  # level → differs/same/skipped: why/n/a
    tree: TreeDiff | None = None
    #: what does not verify on its own (an image that is not what its manifest records, a
    #: verity tree or signature that does not match): never "ok", even when identical
    unverified: list[dict] = field(default_factory=list)  # {"side": "a"|"b", "text"}

    @property
    def ok(self) -> bool:
        """Identical, and each side is what it says it is: diff's exit status 0."""
        return self.identical and not self.unverified

    def add(self, level: str, fld: str, a=None, b=None, text: str = "", explains: bool = True,
            role: str = "follows", derived: bool = False) -> Finding:
        found = Finding(level, fld, a, b, text, explains and not derived, role, derived)
        self.findings.append(found)
        return found

    def at(self, level: str) -> list[Finding]:
        return [f for f in self.findings if f.level == level]

    def causes(self, level: str | None = None) -> list[Finding]:
        return [f for f in self.findings if f.explains and (level is None or f.level == level)]

    def fields(self, level: str | None = None) -> set[str]:
        return {f.field for f in self.findings if level is None or f.level == level}

    def to_json(self) -> dict:
        return {"a": self.a, "b": self.b, "identical": self.identical, "ok": self.ok,
                "unverified": self.unverified,
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
                    mark = "" if f.explains else \
                        " (follows: derived from the seed or sizes)" if f.derived else f" ({f.role})"
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


def level_state(found: list[Finding]) -> str:
    if not found:
        return "same"
    if any(f.explains for f in found):
        return "differs"
    return "differs only in what follows: " + ", ".join(f.field for f in found)


def short(value) -> str:
    if isinstance(value, str) and len(value) > 24 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "…"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)[:80]
    return str(value)
