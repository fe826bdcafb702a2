"""The shapes resolution works on, shared by the Debian and rpm-md families."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Atom:
    """One requirement: a name (package, virtual, or for rpm a file path), optional relation
    (``<``, ``<=``, ``=``, ``>=``, ``>``) and version, and for Debian an architecture qualifier
    (``any``, ``native`` or an architecture)."""

    name: str
    op: str | None = None
    version: str | None = None
    arch: str | None = None

    def __str__(self) -> str:
        text = self.name + (f":{self.arch}" if self.arch else "")
        return f"{text} ({self.op} {self.version})" if self.op else text


def split_epoch(version: str) -> tuple[int, str]:
    """``[epoch:]rest`` → (epoch, rest); both families write the epoch this way (default 0)."""
    epoch, sep, rest = version.partition(":")
    return (int(epoch or 0), rest) if sep else (0, version)


def order_satisfies(order: int, op: str) -> bool:
    """Whether a comparison result (<0, 0, >0 of have vs want) satisfies relation ``op``; the
    families differ only in how they compare."""
    return {"<": order < 0, "<=": order <= 0, "=": order == 0, ">=": order >= 0,
            ">": order > 0}[op]


@dataclass(frozen=True)
class Conditional:
    """rpm's ``(A if B)``: the OR-group ``then`` is required when ``cond`` is installed."""

    then: tuple[Atom, ...]
    cond: Atom


@dataclass(frozen=True)
class Package:
    name: str
    version: str  # Debian: the full version; rpm: [epoch:]version-release
    arch: str
    repo: str  # repository name from the recipe ("base" for the base)
    path: str  # relative to the repository's root
    size: int
    sha256: str
    depends: tuple[tuple[Atom, ...], ...] = ()  # AND of OR-groups (Debian: Pre-Depends+Depends)
    recommends: tuple[tuple[Atom, ...], ...] = ()  # weak: only when asked for
    conflicts: tuple[Atom, ...] = ()  # Conflicts + Breaks
    provides: tuple[tuple[str, str | None], ...] = ()  # (name, version or None)
    multi_arch: str = "no"
    rank: int = 3  # Debian priority (0 required … 4 extra); lower is preferred among providers
    essential: bool = False
    files: tuple[str, ...] = ()  # rpm: file paths listed in primary metadata
    conditionals: tuple[Conditional, ...] = field(default=())

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.arch)

    def label(self) -> str:
        return f"{self.name} {self.version} ({self.arch})"
