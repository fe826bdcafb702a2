"""The source-kind registry: each kind of ``[[source]]`` declares, in one entry, how it is
fetched, locked, named, labelled and read (osbuild's sources are the model).

A source's kind is ``Source.kind``: ``file`` (a package file next to the recipe), ``url`` (a
package file over http(s), pinned by sha256), ``apt`` (a Debian package by name and version,
through the build host's apt), ``packages`` (names resolved from ``[[repository]]`` tables into
the lock) and ``locked`` (one package of a lock: a repository path, pinned by sha256 and size).

Everything that treats kinds differently asks the entry: ``sources.fetch`` (``download``,
``filename``, ``origin``), ``sources.lock`` (``resolved``), the ``fetch --store`` command
(``stored``), ``reproduce.vary`` (``recipe_files``), and for the stages ``label`` (the
manifest's ``source``), ``describe`` (plan), ``claim`` (what the file must be) and
``archive_name`` (the package file's name in its archive). A new kind is one :func:`register`
call; its ``recipe_key`` (a selecting :class:`recipe.Key`) lets recipes write it.

The entries never import ``fetch``: a download gets the transport (:class:`Net`) as an argument,
so ``fetch`` can import this module.
"""

from __future__ import annotations

import contextlib
import re
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .. import recipe as recipe_mod
from ..errors import InputError, PipelineError
from ..recipe import Source


class Net(Protocol):
    """The transports ``fetch`` lends a download (bounded, retried, verified by the caller)."""

    def http(self, url: str, dest: Path, max_size: int | None = None) -> Path: ...

    def apt(self, source: Source, tmp: Path) -> tuple[Path, str]: ...

    def apt_many(self, sources: list[Source], tmp: Path) -> list[tuple[Path, str]]: ...


@dataclass(frozen=True)
class Claim:
    """What a source says its package is; the file read must be that package."""

    name: str
    version: str | None
    architecture: str | None
    #: whether the version is exact including the epoch (a file name carries no epoch)
    with_epoch: bool
    #: what to fix when it differs
    what: str = "source entry"


@dataclass(frozen=True)
class SourceKind:
    name: str
    doc: str
    #: (source, an empty temporary directory, the transports) → (downloaded file, the package's
    #: own file name); None: read where it is (a file next to the recipe) or, with ``resolved``,
    #: never fetched itself
    download: Callable[[Source, Path, Net], tuple[Path, str]] | None
    #: how messages and the cache name it before it is fetched
    filename: Callable[[Source], str]
    #: how the manifest names where a package came from: words that do not depend on where the
    #: build ran
    label: Callable[[Source], str]
    #: one line for ``plan``
    describe: Callable[[Source], str]
    #: the package a source names, given the fetched file's name (None: it names none)
    claim: Callable[[Source, str], Claim | None]
    #: the package file's name in its archive, given the fetched name and the package's facts
    #: (the same whether it came from the cache or a fresh download)
    archive_name: Callable[[Source, str, Any], str] = lambda source, filename, info: filename
    #: several sources of this kind at once (one ``apt-get download`` for all: apt fetches in
    #: parallel, and one process starts instead of one per package); the files in the order
    #: given. None: one at a time through ``download``. A failure falls back to ``download``
    #: one by one, whose error names the source.
    download_many: Callable[[list[Source], Path, Net], list[tuple[Path, str]]] | None = None
    #: ``Fetched.origin`` of a fresh download
    origin: str = "download"
    #: ``fetch --store`` keeps its file (False: it lives with the recipe, or is not a file)
    stored: bool = True
    #: resolved by ``lock`` into ``locked`` sources; never fetched itself
    resolved: bool = False
    #: one source is one package input (``verify`` can pin its sha256 from a manifest)
    one_input: bool = True
    #: files next to the recipe it needs (``verify --vary recipe-path`` copies them)
    recipe_files: Callable[[Source], list[Path]] = lambda source: []
    #: a ``[[source]]`` key that selects this kind, for kinds registered at run time
    recipe_key: recipe_mod.Key | None = None


KINDS: dict[str, SourceKind] = {}


def register(kind: SourceKind) -> SourceKind:
    """Add a kind (and its recipe key); a name or key already taken is an error."""
    if kind.name in KINDS:
        raise ValueError(f"source kind {kind.name!r} is already registered")
    if kind.recipe_key is not None:
        recipe_mod.add_key(kind.recipe_key)
    KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    kind = KINDS.pop(name)
    if kind.recipe_key is not None:
        recipe_mod.remove_key(kind.recipe_key)


@contextlib.contextmanager
def registered(kind: SourceKind) -> Iterator[SourceKind]:
    """``kind`` registered for the duration of a ``with`` block."""
    register(kind)
    try:
        yield kind
    finally:
        unregister(kind.name)


def of(source: Source) -> SourceKind:
    """The registry entry of ``source``."""
    try:
        return KINDS[source.kind]
    except KeyError:
        raise InputError(f"source {source.label or source.ref or ', '.join(source.names)}",
                         f"unknown source kind {source.kind!r}",
                         f"known: {', '.join(KINDS)}") from None


# --- the built-in kinds ------------------------------------------------------------------------


def _basename(source: Source) -> str:
    return source.ref.rstrip("/").rsplit("/", 1)[-1]


def _as_written(source: Source) -> str:
    return source.label or source.ref


def _typed(source: Source) -> str:
    return f"{source.type} {source.ref}"


_RPM_FILE = re.compile(r"^(.+)-([^-]+)-([^-]+)\.([^.]+)\.rpm$")


def claimed_by_filename(filename: str, fmt: str) -> tuple[str, str, str] | None:
    """(name, version without epoch, architecture) a package file's name claims when it follows
    its format's convention (``jq_1.6-2.1_amd64.deb``, ``jq-1.6-9.fc39.x86_64.rpm``; what
    archives and the build tools name them); None for any other name."""
    filename = urllib.parse.unquote(filename)
    if fmt == "deb" and filename.endswith(".deb"):
        parts = filename[: -len(".deb")].split("_")
        return (parts[0], parts[1], parts[2]) if len(parts) == 3 and all(parts) else None
    match = _RPM_FILE.match(filename) if fmt == "rpm" else None
    return (match[1], f"{match[2]}-{match[3]}", match[4]) if match else None


def _by_filename(source: Source, filename: str) -> Claim | None:
    claimed = claimed_by_filename(filename, source.format)
    return Claim(*claimed, with_epoch=False, what="file name") if claimed else None


def _http(source: Source, tmp: Path, net: Net) -> tuple[Path, str]:
    # a locked source records its size, which bounds the download
    return net.http(source.ref, tmp / "download", getattr(source, "size", None)), \
        _basename(source)


def gone_hint(name: str, recipe: str | None) -> str:
    """The ways out when a locked version is no longer in the archive (one line)."""
    return (f"run `sysext-pipeline lock --update {name} {recipe or 'RECIPE'}` to move it to the "
            "archive's version, or set the [[repository]]'s mirror to a snapshot archive URL "
            "(a URL or $VAR naming the archive as of a date) with "
            "snapshot = true")


def _locked_http(source: Source, tmp: Path, net: Net) -> tuple[Path, str]:
    """A locked file over http; not there (404, 410) means the archive dropped that version
    (a point release, a security update): one line naming the package and the ways out."""
    try:
        return _http(source, tmp, net)
    except PipelineError as exc:
        if getattr(exc, "status", None) not in (404, 410):
            raise
        raise InputError(f"{source.names[0]} {source.version} ({source.label})",
                         f"this locked version is no longer in the archive ({exc.what})",
                         gone_hint(source.names[0], getattr(source, "recipe", None))) from None


def _apt_archive_name(source: Source, filename: str, info) -> str:
    version = info.version.split(":", 1)[-1]
    return f"{info.name}_{version}_{info.architecture}.deb"


def _apt_claim(source: Source, filename: str) -> Claim:
    name, _, arch = source.ref.partition(":")
    return Claim(name, source.version, arch or None, with_epoch=True)


def _locked_claim(source: Source, filename: str) -> Claim:
    return Claim(source.names[0], source.version, source.architecture, with_epoch=True)


def _unfetchable(source: Source) -> str:
    return f"packages {' '.join(source.names)}"


register(SourceKind(
    "file", "A package file next to the recipe, read where it is (a hash is checked when given).",
    download=None, filename=_basename, label=_as_written, describe=_typed, claim=_by_filename,
    origin="local", stored=False, recipe_files=lambda source: [Path(source.ref)]))
register(SourceKind(
    "url", "A package file over http(s), pinned by sha256, fetched into the cache.",
    download=_http, filename=_basename, label=_as_written, describe=_typed, claim=_by_filename))
register(SourceKind(
    "apt", "A Debian package by name and exact version, fetched by the build host's apt "
    "(`apt-get download NAME=VERSION`), pinned by sha256.",
    download=lambda source, tmp, net: net.apt(source, tmp),
    download_many=lambda sources, tmp, net: net.apt_many(sources, tmp),
    filename=lambda source: f"{source.ref}={source.version}",
    label=lambda source: f"apt:{source.ref}={source.version}",
    describe=lambda source: f"apt {source.ref}={source.version} (sha256 {source.sha256})",
    claim=_apt_claim, archive_name=_apt_archive_name, origin="apt"))
register(SourceKind(
    "packages", "Names resolved with their dependencies from the [[repository]] tables into the "
    "lock file; build fetches the locked files (kind `locked`).",
    download=None, filename=_unfetchable, label=_unfetchable, describe=_unfetchable,
    claim=lambda source, filename: None, stored=False, resolved=True, one_input=False))
register(SourceKind(
    "locked", "One package of a lock file: a path below a repository's root, pinned by sha256 "
    "and size (which bounds its download).",
    download=_locked_http, filename=_basename, label=_as_written, describe=_typed, claim=_locked_claim))


# --- one call per question, for the stages and commands ----------------------------------------


def label(source: Source) -> str:
    """Where a package came from, as the manifest names it (``apt:jq=1.6``, ``repo:path``, a
    URL, or a local path as the recipe wrote it)."""
    return of(source).label(source)


def describe(source: Source) -> str:
    """The source in one line of ``plan``."""
    return of(source).describe(source)


def claim(source: Source, filename: str) -> Claim | None:
    """The package ``source`` names (None: it names none), given the fetched file's name."""
    return of(source).claim(source, filename)


def archive_name(source: Source, filename: str, info) -> str:
    """The package file's name in its archive (the manifest's ``file``)."""
    return of(source).archive_name(source, filename, info)
