"""rpm-md repositories (repomd.xml + primary metadata) and rpm's version order.

Versions compare as ``rpmvercmp`` does (rpm 4.18: ``~`` sorts before everything, ``^`` after the
base but before any further segment), EVRs as epoch, then version, then release — the release only
when both sides have one (``Requires: foo >= 1.2`` matches every 1.2 release). Checked against
``rpm.vercmp`` by the tests.

Dependencies come from primary metadata: Requires (``rpmlib(…)`` features are the installer's
business and skipped), Provides, Conflicts, Recommends (weak, off by default) and the file list
primary carries (``/etc/*``, ``*bin/*``, ``/usr/lib/sendmail``: the paths packages may require
without filelists.xml). Rich dependencies: ``and``, ``or``, ``if`` (also nested or-groups); the
rest (``unless``, ``with``, ``without``, ``if … else``) stay as unsatisfiable requirements whose
error names them.
"""

from __future__ import annotations

import re
from typing import BinaryIO

from ..errors import InputError
from .model import Atom, Conditional, Package, order_satisfies, split_epoch

NS_COMMON = "{http://linux.duke.edu/metadata/common}"
NS_RPM = "{http://linux.duke.edu/metadata/rpm}"
NS_REPO = "{http://linux.duke.edu/metadata/repo}"
FLAGS = {"EQ": "=", "LT": "<", "LE": "<=", "GT": ">", "GE": ">="}


def rpmvercmp(a: str, b: str) -> int:
    if a == b:
        return 0
    one, two = a, b
    while one or two:
        one = re.sub(r"^[^A-Za-z0-9~^]+", "", one)
        two = re.sub(r"^[^A-Za-z0-9~^]+", "", two)
        if one.startswith("~") or two.startswith("~"):
            if not one.startswith("~"):
                return 1
            if not two.startswith("~"):
                return -1
            one, two = one[1:], two[1:]
            continue
        if one.startswith("^") or two.startswith("^"):
            if not one:
                return -1
            if not two:
                return 1
            if not one.startswith("^"):
                return 1
            if not two.startswith("^"):
                return -1
            one, two = one[1:], two[1:]
            continue
        if not (one and two):
            break
        isnum = one[0].isdigit()
        pattern = r"^[0-9]+" if isnum else r"^[A-Za-z]+"
        m1 = re.match(pattern, one)
        m2 = re.match(pattern, two)
        seg1 = m1.group(0) if m1 else ""
        seg2 = m2.group(0) if m2 else ""
        if not seg1:
            return -1
        if not seg2:
            return 1 if isnum else -1
        one, two = one[len(seg1):], two[len(seg2):]
        if isnum:
            seg1, seg2 = seg1.lstrip("0"), seg2.lstrip("0")
            if len(seg1) != len(seg2):
                return 1 if len(seg1) > len(seg2) else -1
        if seg1 != seg2:
            return 1 if seg1 > seg2 else -1
    if not one and not two:
        return 0
    return -1 if not one else 1


def split_evr(evr: str) -> tuple[int, str, str | None]:
    epoch, rest = split_epoch(evr)
    version, sep, release = rest.rpartition("-")
    return (epoch, version, release) if sep else (epoch, rest, None)


def compare_evr(a: str, b: str) -> int:
    ea, va, ra = split_evr(a)
    eb, vb, rb = split_evr(b)
    if ea != eb:
        return -1 if ea < eb else 1
    c = rpmvercmp(va, vb)
    if c or ra is None or rb is None:
        return c
    return rpmvercmp(ra, rb)


def relation_holds(have: str, op: str, want: str) -> bool:
    return order_satisfies(compare_evr(have, want), op)


def format_evr(epoch: str | None, ver: str | None, rel: str | None) -> str | None:
    if ver is None:
        return None
    text = ver + (f"-{rel}" if rel else "")
    return f"{epoch}:{text}" if epoch and epoch != "0" else text


# --- rich dependencies ---------------------------------------------------------------------------

_TOKEN = re.compile(r"\(|\)|[^\s()]+")


class _Unsupported(Exception):
    pass


def _parse_rich(tokens: list[str], pos: int):
    """Parse one term at ``pos``: returns (node, next pos). Node: ("atom", Atom) | (op, [nodes])."""
    if tokens[pos] == "(":
        left, pos = _parse_rich(tokens, pos + 1)
        nodes, op = [left], None
        while tokens[pos] != ")":
            word = tokens[pos]
            if word not in ("and", "or", "if", "else", "unless", "with", "without"):
                raise _Unsupported(word)
            if op not in (None, word):
                raise _Unsupported(f"{op} … {word}")
            op = word
            node, pos = _parse_rich(tokens, pos + 1)
            nodes.append(node)
        return ((op, nodes) if op else left), pos + 1
    name = tokens[pos]
    pos += 1
    if pos + 1 < len(tokens) and tokens[pos] in ("=", "<", "<=", ">", ">="):
        return ("atom", Atom(name, tokens[pos], tokens[pos + 1])), pos + 2
    return ("atom", Atom(name)), pos


def _or_group(node) -> tuple[Atom, ...]:
    if node[0] == "atom":
        return (node[1],)
    if node[0] == "or":
        return tuple(a for n in node[1] for a in _or_group(n))
    raise _Unsupported(node[0])


def _clauses(node) -> tuple[list[tuple[Atom, ...]], list[Conditional]]:
    if node[0] == "and":
        groups, conds = [], []
        for n in node[1]:
            g, c = _clauses(n)
            groups += g
            conds += c
        return groups, conds
    if node[0] == "if" and len(node[1]) == 2 and node[1][1][0] == "atom":
        return [], [Conditional(_or_group(node[1][0]), node[1][1][1])]
    return [_or_group(node)], []


def rich_requirement(text: str) -> tuple[list[tuple[Atom, ...]], list[Conditional]]:
    try:
        node, _ = _parse_rich(_TOKEN.findall(text), 0)
        return _clauses(node)
    except (_Unsupported, IndexError):
        return [(Atom(f"unsupported rich dependency {text}"),)], []


# --- metadata ------------------------------------------------------------------------------------


def parse_repomd(data: bytes, where: str) -> dict[str, dict]:
    """repomd.xml → {type: {"href", "sha256", "size"}} plus "revision" under key ""."""
    import xml.etree.ElementTree as ET  # only when rpm metadata is read (lock), not per build

    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise InputError(where, f"not valid XML: {exc}") from None
    result: dict[str, dict] = {"": {"revision": (root.findtext(f"{NS_REPO}revision") or "")}}
    for item in root.findall(f"{NS_REPO}data"):
        checksum = item.find(f"{NS_REPO}checksum")
        location = item.find(f"{NS_REPO}location")
        if checksum is None or location is None:
            continue
        result[item.get("type", "")] = {
            "href": location.get("href", ""),
            "checksum_type": checksum.get("type", ""),
            "checksum": (checksum.text or "").strip(),
            "size": int(item.findtext(f"{NS_REPO}size") or 0),
        }
    if "primary" not in result:
        raise InputError(where, "repomd.xml has no primary metadata")
    return result


def _entries(fmt, tag: str):
    parent = fmt.find(f"{NS_RPM}{tag}")
    return [] if parent is None else parent.findall(f"{NS_RPM}entry")


def _atom(entry) -> Atom:
    op = FLAGS.get(entry.get("flags", ""))
    version = format_evr(entry.get("epoch"), entry.get("ver"), entry.get("rel")) if op else None
    return Atom(entry.get("name", ""), op, version)


def parse_primary(stream: BinaryIO, repo: str, where: str) -> list[Package]:
    """Stream primary.xml (already decompressed) into Packages; memory stays per-package."""
    import xml.etree.ElementTree as ET

    result = []
    try:
        for _event, elem in ET.iterparse(stream, events=("end",)):
            if elem.tag != f"{NS_COMMON}package":
                continue
            result.append(_package(elem, repo, where))
            elem.clear()
    except ET.ParseError as exc:
        raise InputError(where, f"primary metadata is not valid XML: {exc}") from None
    return result


def _package(elem, repo: str, where: str) -> Package:
    name = elem.findtext(f"{NS_COMMON}name") or ""
    v = elem.find(f"{NS_COMMON}version")
    evr = format_evr(v.get("epoch"), v.get("ver"), v.get("rel"))
    checksum = elem.find(f"{NS_COMMON}checksum")
    if checksum is None or checksum.get("type") != "sha256":
        raise InputError(f"{where}: {name}", "package checksum is not sha256",
                         "the lock and the store are keyed by sha256")
    location = elem.find(f"{NS_COMMON}location")
    size = elem.find(f"{NS_COMMON}size")
    fmt = elem.find(f"{NS_COMMON}format")
    depends: list[tuple[Atom, ...]] = []
    conds: list[Conditional] = []
    for entry in _entries(fmt, "requires"):
        ename = entry.get("name", "")
        if ename.startswith("rpmlib("):
            continue
        if ename.startswith("("):
            g, c = rich_requirement(ename)
            depends += g
            conds += c
        else:
            depends.append((_atom(entry),))
    weak: list[tuple[Atom, ...]] = []
    for entry in _entries(fmt, "recommends"):
        ename = entry.get("name", "")
        weak += rich_requirement(ename)[0] if ename.startswith("(") else [(_atom(entry),)]
    provides = tuple((e.get("name", ""), format_evr(e.get("epoch"), e.get("ver"), e.get("rel"))
                      if e.get("flags") == "EQ" else None) for e in _entries(fmt, "provides"))
    return Package(
        name=name, version=evr or "", arch=elem.findtext(f"{NS_COMMON}arch") or "noarch",
        repo=repo, path=location.get("href", "") if location is not None else "",
        size=int(size.get("package", 0)) if size is not None else 0,
        sha256=(checksum.text or "").strip(),
        depends=tuple(depends), recommends=tuple(weak),
        conflicts=tuple(_atom(e) for e in _entries(fmt, "conflicts")),
        provides=provides,
        files=tuple(f.text or "" for f in fmt.findall(f"{NS_COMMON}file")),
        conditionals=tuple(conds),
    )
