"""Dependency closure over an index of packages; the same walk for Debian and rpm-md.

Deterministic by construction: requested names are taken in recipe order, dependencies
breadth-first in the order the package lists them, alternatives left to right, and among several
packages that satisfy one requirement the order is fixed (exact name before providers; highest
version; repository order; then for providers Debian priority and name). A requirement already
met by the base or by something selected earlier is never resolved again. There is no
backtracking (neither apt nor dnf promise one for a first pick): when the first satisfiable
alternative later turns out to conflict, the error names both chains and the recipe can name the
wanted alternative explicitly.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..errors import InputError
from .model import Atom, Package


@dataclass(frozen=True)
class Family:
    """What differs between Debian and rpm: version order, relations, architecture rules."""

    name: str  # "deb" | "rpm"
    compare: Callable[[str, str], int]
    holds: Callable[[str, str, str], bool]  # (have, op, want)
    unversioned_provide_matches: bool  # rpm: yes, Debian: no
    native: str
    arches: tuple[str, ...]

    def arch_ok(self, cand: Package, atom: Atom, parent: Package | None) -> bool:
        if self.name == "rpm":
            return cand.arch in self.arches or cand.arch == "noarch"
        if cand.arch == "all":
            return True
        if atom.arch == "any":
            want = parent.arch if parent and parent.arch != "all" else self.native
            return cand.multi_arch == "allowed" or cand.arch == want
        if atom.arch == "native":
            return cand.arch == self.native
        if atom.arch:
            return cand.arch == atom.arch
        want = parent.arch if parent and parent.arch != "all" else self.native
        return cand.arch == want or cand.multi_arch == "foreign"

    def arch_rank(self, arch: str) -> int:
        return self.arches.index(arch) if arch in self.arches else len(self.arches)


class Index:
    """Packages by name, by provided name and (rpm) by file path, each list in preference order."""

    def __init__(self, family: Family, packages: Iterable[Package], repo_order: dict[str, int]):
        from functools import cmp_to_key

        self.family = family
        vkey = cmp_to_key(family.compare)
        self.by_name: dict[str, list[Package]] = {}
        self.by_provide: dict[str, list[tuple[Package, str | None]]] = {}
        self.by_file: dict[str, list[Package]] = {}
        for p in packages:
            self.by_name.setdefault(p.name, []).append(p)
            for name, version in p.provides:
                self.by_provide.setdefault(name, []).append((p, version))
            for path in p.files:
                self.by_file.setdefault(path, []).append(p)

        def pref(p: Package):
            return (_Neg(vkey(p.version)), family.arch_rank(p.arch), repo_order.get(p.repo, 99),
                    p.path)

        for lst in self.by_name.values():
            lst.sort(key=pref)
        for lst in self.by_provide.values():
            lst.sort(key=lambda pv: (pv[0].rank, pv[0].name, pref(pv[0])))
        for lst in self.by_file.values():
            lst.sort(key=lambda p: (p.name, pref(p)))

    def matches(self, pkg: Package, atom: Atom, parent: Package | None) -> bool:
        """Does ``pkg`` (by name, a Provides, or a file) satisfy ``atom``?"""
        if not self.family.arch_ok(pkg, atom, parent):
            return False
        f = self.family
        if pkg.name == atom.name and (atom.op is None or f.holds(pkg.version, atom.op,
                                                                 atom.version)):
            return True
        for name, version in pkg.provides:
            if name != atom.name:
                continue
            if atom.op is None:
                return True
            if version is None:
                if f.unversioned_provide_matches:
                    return True
            elif f.holds(version, atom.op, atom.version):
                return True
        return atom.name.startswith("/") and atom.name in pkg.files

    def candidates(self, atom: Atom, parent: Package | None) -> list[Package]:
        seen, result = set(), []
        pools = [self.by_name.get(atom.name, []),
                 [p for p, _ in self.by_provide.get(atom.name, [])],
                 self.by_file.get(atom.name, []) if atom.name.startswith("/") else []]
        for pool in pools:
            for p in pool:
                if id(p) not in seen and self.matches(p, atom, parent):
                    seen.add(id(p))
                    result.append(p)
        return result


class _Neg:
    """Reverse the order of a sort key (highest version first)."""

    __slots__ = ("k",)

    def __init__(self, k):
        self.k = k

    def __lt__(self, other):
        return other.k < self.k

    def __eq__(self, other):
        return self.k == other.k


@dataclass
class Base:
    """What the target system already has: packages with known metadata, and bare names."""

    packages: list[Package] = field(default_factory=list)
    names: set[str] = field(default_factory=set)  # version/provides unknown: any relation holds

    def satisfies(self, index: Index, atom: Atom, parent: Package | None) -> bool:
        if atom.name in self.names:
            return True
        return any(index.matches(p, atom, parent) for p in self.packages)

    def has_name(self, name: str) -> bool:
        return name in self.names or any(p.name == name for p in self.packages)


@dataclass
class Closure:
    packages: list[Package]  # in selection order
    required_by: dict[tuple[str, str], str | None]  # key → the package that pulled it in
    #: requested names that add nothing (the base has them): said, never silently dropped
    notes: list[str] = field(default_factory=list)
    #: choices the metadata does not settle (a virtual package with equal providers)
    warnings: list[str] = field(default_factory=list)


def resolve(index: Index, requested: list[Atom], base: Base, *, weak: bool = False,
            preferred: dict[tuple[str, str], str] | None = None) -> Closure:
    """The closure of ``requested`` over Depends (+ weak ones when asked), minus the base."""
    preferred = preferred or {}
    notes: list[str] = []
    warnings: list[str] = []
    selected: dict[tuple[str, str], Package] = {}
    parent_of: dict[tuple[str, str], tuple[str, str] | None] = {}
    order: list[Package] = []
    queue: deque[Package] = deque()

    def chain(key) -> str:
        names = []
        while key is not None:
            names.append(selected[key].name)
            key = parent_of[key]
        return " → ".join(reversed(names))

    def met(atom: Atom, parent: Package | None) -> bool:
        if base.satisfies(index, atom, parent):
            return True
        return any(index.matches(p, atom, parent) for p in selected.values())

    def choose(group: tuple[Atom, ...], parent: Package | None) -> Package:
        blocked = []
        for atom in group:
            cands = []
            for cand in index.candidates(atom, parent):
                have = selected.get(cand.key)
                if have is not None and have.version != cand.version:
                    blocked.append(f"{have.label()} is already selected (by {chain(cand.key)})")
                elif base.has_name(cand.name):
                    blocked.append(f"the base has {cand.name} and it does not satisfy {atom}")
                else:
                    cands.append(cand)
            if cands:
                for cand in cands:
                    if preferred.get(cand.key) == cand.version:
                        return cand
                _warn_if_tied(atom, cands, parent)
                return cands[0]
        where = chain(parent.key) + " → " if parent else "requested: "
        text = " | ".join(map(str, group))
        why = "; ".join(dict.fromkeys(blocked)) or "no package in the repositories satisfies it"
        raise InputError(f"{where}{text}", f"unsatisfiable dependency: {why}",
                         "check the repositories (suite, components, architectures) and the "
                         "base list; naming the wanted alternative in packages settles a choice")

    def _warn_if_tied(atom: Atom, cands: list[Package], parent: Package | None) -> None:
        """A virtual package whose best providers are equal (same priority): the pick is by
        name only, which the user should know and can settle by naming one."""
        if any(c.name == atom.name for c in cands):
            return
        first = cands[0]
        tied = sorted({c.name for c in cands if c.rank == first.rank and c.name != first.name})
        if tied:
            by = f" (for {chain(parent.key)})" if parent else ""
            warnings.append(f"{atom}{by} is a virtual package that {first.name} and "
                            f"{', '.join(tied)} provide with the same priority: took "
                            f"{first.name} (the first by name); name the one you want in "
                            "packages to choose")

    def add(pkg: Package, parent: Package | None) -> None:
        if pkg.key in selected:
            return
        selected[pkg.key] = pkg
        parent_of[pkg.key] = parent.key if parent else None
        order.append(pkg)
        queue.append(pkg)

    for atom in requested:
        if base.satisfies(index, atom, None):
            notes.append(f"{atom} is already in the base (target.base): not added")
        elif not met(atom, None):  # met: an earlier name brought it
            add(choose((atom,), None), None)

    while True:
        while queue:
            pkg = queue.popleft()
            groups = pkg.depends + (pkg.recommends if weak else ())
            for group in groups:
                if any(met(atom, pkg) for atom in group):
                    continue
                try:
                    add(choose(group, pkg), pkg)
                except InputError:
                    if group in pkg.depends:
                        raise
        # rpm (A if B): re-examined until nothing changes, since B may arrive late.
        for pkg in list(order):
            for cond in pkg.conditionals:
                if met(cond.cond, pkg) and not any(met(a, pkg) for a in cond.then):
                    add(choose(cond.then, pkg), pkg)
        if not queue:
            break

    _check_conflicts(index, order, base, chain)
    required_by = {p.key: (selected[parent_of[p.key]].name if parent_of[p.key] else None)
                   for p in order}
    return Closure(order, required_by, notes, list(dict.fromkeys(warnings)))


def _check_conflicts(index: Index, order: list[Package], base: Base, chain) -> None:
    installed = [(p, True) for p in order] + [(p, False) for p in base.packages]
    for p, p_sel in installed:
        for atom in p.conflicts:
            for q, q_sel in installed:
                if q is p or q.name == p.name or not (p_sel or q_sel):
                    continue
                if index.matches(q, Atom(atom.name, atom.op, atom.version), p):
                    left = chain(p.key) if p_sel else f"{p.name} (base)"
                    right = chain(q.key) if q_sel else f"{q.name} (base)"
                    raise InputError(left, f"conflict: {p.label()} conflicts with {atom}, "
                                     f"which {right} brings", "name another alternative in the "
                                     "recipe's packages, or drop one of them")
