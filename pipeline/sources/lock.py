"""The lock file: what ``packages`` sources resolved to, pinned by sha256, next to the recipe.

``recipes/x.toml`` → ``recipes/x.lock`` (TOML). It names no mirror: a package is its repository
(by the recipe's name for it), its path below the repository root, size and sha256, so next
month's build can fetch it from any mirror of that repository — or from an offline store — and
check the hash. ``inputs_sha256`` is the hash of everything resolution read from the recipe (the
``[[repository]]`` tables as written, the ``packages`` sources, the base list's bytes); when it
differs, the lock is stale and ``build`` refuses it. Other recipe edits (image, filter, files)
do not stale the lock.

The emitter writes only the shapes a lock has (strings, integers, booleans; top-level keys and
arrays of tables) in a fixed order: the same resolution gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import urllib.parse
from dataclasses import asdict
from functools import cmp_to_key
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError, PipelineError
from ..recipe import Recipe, Source
from . import debian, kinds, metadata, rpmmd
from .fetch import Cache, LockedSource
from .model import Atom

if TYPE_CHECKING:  # the solver is loaded by `lock` only, not by every build reading a lock
    from .solver import Base, Family, Index

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

LOCK_VERSION = 1
HEADER = ("# sysext-pipeline lock file: written by `sysext-pipeline lock`, read by `build`.\n"
          "# Do not edit; re-run `sysext-pipeline lock RECIPE` (or `lock --update NAME`).\n")


def lock_path(recipe: Recipe) -> Path:
    return recipe.path.with_suffix(".lock")


def packages_sources(recipe: Recipe) -> list[Source]:
    """The sources ``lock`` resolves (kinds with ``resolved``)."""
    return [s for s in recipe.sources if kinds.of(s).resolved]


# --- inputs and staleness ----------------------------------------------------------------------


def _base_bytes(recipe: Recipe) -> bytes | None:
    base = recipe.target.get("base")
    if not base:
        return None
    path = recipe.directory / base
    if path.is_dir():
        path = path / "var/lib/dpkg/status"
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"{recipe.path}: target.base", f"cannot read {path}: {exc.strerror}",
                         "a list file, or an OS tree with var/lib/dpkg/status") from None


def inputs_sha256(recipe: Recipe) -> str:
    base = _base_bytes(recipe)
    doc = {
        "lock_version": LOCK_VERSION,
        # snapshot only when set: locks written before the key existed stay fresh
        "repositories": [{k: v for k, v in asdict(r).items() if k != "snapshot" or v}
                         for r in recipe.repositories],
        "packages": [{"names": list(s.names), "recommends": s.recommends}
                     for s in packages_sources(recipe)],
        "base": {"path": recipe.target.get("base"),
                 "sha256": hashlib.sha256(base).hexdigest() if base is not None else None},
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def read_lock(recipe: Recipe) -> dict:
    path = lock_path(recipe)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(str(path), "no lock file for this recipe's packages sources",
                         f"run: sysext-pipeline lock {recipe.path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(str(path), f"not a readable lock file: {exc}",
                         f"run: sysext-pipeline lock {recipe.path}") from None
    if data.get("lock_version") != LOCK_VERSION:
        raise InputError(f"{path}: lock_version", f"{data.get('lock_version')!r} is not "
                         f"{LOCK_VERSION}", f"run: sysext-pipeline lock {recipe.path}")
    for index, pkg in enumerate(data.get("package", [])):
        entry = f"package #{index + 1}"  # as recipe entries are named: 1-based, with the name
        if isinstance(pkg, dict) and isinstance(pkg.get("name"), str) and '"' not in pkg["name"]:
            entry += f' (name = "{pkg["name"]}")'
        for key, typ in (("name", str), ("version", str), ("architecture", str),
                         ("repository", str), ("path", str), ("size", int), ("sha256", str)):
            if not isinstance(pkg, dict) or not isinstance(pkg.get(key), typ):
                raise InputError(f"{path}: {entry}.{key}", "missing or of the wrong "
                                 "type", f"run: sysext-pipeline lock {recipe.path}")
    return data


def locked_versions(data: dict) -> dict[tuple[str, str], str]:
    """(name, architecture) → version of every package in lock ``data``."""
    return {(p["name"], p["architecture"]): p["version"] for p in data.get("package", [])}


def check_fresh(recipe: Recipe, data: dict) -> None:
    if data.get("inputs_sha256") != inputs_sha256(recipe):
        raise InputError(str(lock_path(recipe)), "lock is stale: run lock",
                         f"the recipe's repositories, packages or base changed since it was "
                         f"written: sysext-pipeline lock {recipe.path}")


def locked_sources(recipe: Recipe, *, offline: bool = False) -> list[Source]:
    """The lock's packages as fetchable sources (fresh lock required)."""
    data = read_lock(recipe)
    check_fresh(recipe, data)
    repos = {r.name: r for r in recipe.repositories}
    roots: dict[str, str] = {}
    result = []
    for pkg in data.get("package", []):
        repo = repos.get(pkg["repository"])
        if repo is None:  # cannot happen with a fresh lock, unless edited by hand
            raise InputError(str(lock_path(recipe)), f"unknown repository {pkg['repository']!r}",
                             "lock is stale: run lock")
        if repo.name not in roots:
            try:
                roots[repo.name] = metadata.base_url(repo)
            except PipelineError:
                if not offline:
                    raise
                roots[repo.name] = "https://unresolved.invalid"  # only the store can serve it
        url = f"{roots[repo.name]}/{urllib.parse.quote(pkg['path'], safe='/+~:@')}"
        result.append(LockedSource(type="deb" if repo.type == "deb" else "rpm", ref=url,
                             sha256=pkg["sha256"], label=f"{repo.name}:{pkg['path']}",
                             size=pkg.get("size"), names=(pkg["name"],),
                             version=pkg["version"], architecture=pkg["architecture"],
                             recipe=str(recipe.path)))
    return result


def expand_sources(recipe: Recipe, *, offline: bool = False) -> list[Source]:
    """The recipe's sources with every ``packages`` source (every kind ``lock`` resolves)
    replaced by the locked files (at the position of the first one; later ones are already part
    of the same closure)."""
    result: list[Source] = []
    done = False
    for source in recipe.sources:
        if not kinds.of(source).resolved:
            result.append(source)
        elif not done:
            result.extend(locked_sources(recipe, offline=offline))
            done = True
    return result


# --- resolution --------------------------------------------------------------------------------


def _family(recipe: Recipe) -> Family:
    from .solver import Family

    types = {r.type for r in recipe.repositories}
    if len(types) != 1:
        raise InputError(f"{recipe.path}: repository", "mixes deb and rpm-md repositories",
                         "one image is built from one distribution's packages")
    arches = tuple(dict.fromkeys(a for r in recipe.repositories for a in r.architectures))
    if types == {"deb"}:
        return Family("deb", debian.compare_versions, debian.relation_holds, False, arches[0],
                      arches)
    return Family("rpm", rpmmd.compare_evr, rpmmd.relation_holds, True, arches[0],
                  arches + ("noarch",))


def _requested(recipe: Recipe, family: Family) -> list[Atom]:
    atoms = []
    for source in packages_sources(recipe):
        for name in source.names:
            if family.name == "deb":
                atoms.append(debian.parse_atom(name, f"{recipe.path}: source.packages"))
            else:
                atoms.append(Atom(name))
    return atoms


def _base(recipe: Recipe, index: Index, family: Family) -> Base:
    from .solver import Base

    raw = _base_bytes(recipe)
    base = Base()
    if raw is None:
        return base
    where = f"{recipe.path}: target.base"
    if (recipe.directory / recipe.target["base"]).is_dir():
        if family.name != "deb":
            raise InputError(where, "reading an rpmdb is not supported",
                             "list the base's package names in a file instead")
        base.packages = debian.parse_dpkg_status(raw.decode("utf-8", "replace"), where)
        return base
    for number, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.replace("=", " ").split()
        if len(parts) > 2:
            raise InputError(f"{where} line {number}", f"{line!r}: expected NAME [VERSION]")
        name = parts[0].split(":", 1)[0]
        version = parts[1] if len(parts) == 2 else None
        known = index.by_name.get(name, [])
        if version is not None:
            known = [p for p in known if p.version == version]
        if known:
            base.packages.append(known[0])
        elif version is None:
            base.names.add(name)
        else:
            from .model import Package

            base.packages.append(Package(name, version, family.native, "base", "", 0, ""))
    return base


def lock_recipe(recipe: Recipe, cache: Cache, *, update: tuple[str, ...] = (),
                log=None, warn=None) -> tuple[dict, list[metadata.Metadata]]:
    """Resolve the recipe's packages sources against its repositories → lock data.

    ``update``: move only these names (and what they newly need); every other package keeps
    its locked version when the repositories still have it and it still fits. Requested names
    the base already has are recorded in the lock's ``notes``; ``warn`` receives choices the
    metadata leaves open (a virtual package with equal providers).
    """
    if not packages_sources(recipe):
        raise InputError(str(recipe.path), "has no packages sources: nothing to lock",
                         'add [[source]] packages = ["…"] and a [[repository]]')
    preferred: dict[tuple[str, str], str] = {}
    if update:
        old = read_lock(recipe)
        names = {p["name"] for p in old.get("package", [])}
        unknown = [n for n in update if n not in names]
        if unknown:
            raise InputError(str(lock_path(recipe)), f"{', '.join(unknown)} not in the lock",
                             "--update moves packages the lock already has")
        preferred = {key: version for key, version in locked_versions(old).items()
                     if key[0] not in update}
    from .solver import Index, resolve

    family = _family(recipe)
    metas = []
    for repo in recipe.repositories:
        meta = metadata.load(repo, recipe.directory, cache)
        if log:
            log(f"{repo.name}: {len(meta.packages)} packages ({meta.root_file} {meta.date})")
        metas.append(meta)
    order = {r.name: i for i, r in enumerate(recipe.repositories)}
    index = Index(family, (p for m in metas for p in m.packages), order)
    base = _base(recipe, index, family)
    weak = any(s.recommends for s in packages_sources(recipe))
    closure = resolve(index, _requested(recipe, family), base, weak=weak, preferred=preferred)

    vkey = cmp_to_key(family.compare)
    packages = []
    for p in sorted(closure.packages, key=lambda p: (p.name, p.arch, vkey(p.version))):
        entry = {"name": p.name, "version": p.version, "architecture": p.arch,
                 "repository": p.repo, "path": p.path, "size": p.size, "sha256": p.sha256}
        parent = closure.required_by[p.key]
        if parent is None:
            entry["requested"] = True
        else:
            entry["required_by"] = parent
        packages.append(entry)
    if warn:
        for warning in closure.warnings:
            warn(warning)
    data = {
        "lock_version": LOCK_VERSION,
        "recipe": recipe.path.name,
        "inputs_sha256": inputs_sha256(recipe),
        **({"notes": closure.notes} if closure.notes else {}),
        "repository": [{"name": m.repository.name, "type": m.repository.type,
                        **({"suite": m.repository.suite} if m.repository.suite else {}),
                        "metadata": m.root_file, "metadata_sha256": m.root_sha256,
                        "date": m.date} for m in metas],
        "package": packages,
    }
    return data, metas


# --- checking: would the lock move? ------------------------------------------------------------


def _is_security(repository: str, suites: dict[str, str]) -> bool:
    return "security" in repository or "security" in suites.get(repository, "")


def check_lock(recipe: Recipe, cache: Cache, *, log=None) -> dict:
    """What a plain re-lock would change, without writing anything (``lock --check``, a nightly
    CI job): ``stale`` (the recipe's inputs changed), ``moves`` (packages whose version a
    re-lock changes, added or drops) and ``newer`` (locked packages the repositories have a
    newer version of, even where the closure keeps the old one), security suites first.
    ``would_move``: a re-lock would change a package."""
    old = read_lock(recipe)
    stale = old.get("inputs_sha256") != inputs_sha256(recipe)
    data, metas = lock_recipe(recipe, cache, log=log)
    family = _family(recipe)
    suites = {m.repository.name: m.repository.suite or "" for m in metas}
    before, after = locked_versions(old), locked_versions(data)
    repo_of = {(p["name"], p["architecture"]): p["repository"] for p in data["package"]}
    moves = []
    for key in sorted(before.keys() | after.keys()):
        if before.get(key) != after.get(key):
            repo = repo_of.get(key, "")
            moves.append({"name": key[0], "architecture": key[1], "from": before.get(key),
                          "to": after.get(key), "repository": repo or None,
                          "security": _is_security(repo, suites)})
    newest: dict[tuple[str, str], tuple[str, str]] = {}
    for meta in metas:
        for p in meta.packages:
            key = (p.name, p.arch)
            if key in before and family.compare(p.version, before[key]) > 0 and (
                    key not in newest or family.compare(p.version, newest[key][0]) > 0):
                newest[key] = (p.version, p.repo)
    newer = [{"name": key[0], "architecture": key[1], "locked": before[key], "newest": version,
              "repository": repo, "security": _is_security(repo, suites)}
             for key, (version, repo) in sorted(newest.items())]
    first = lambda item: (not item["security"], item["name"], item["architecture"])  # noqa: E731
    return {"stale": stale, "would_move": bool(moves), "moves": sorted(moves, key=first),
            "newer": sorted(newer, key=first)}


def same_resolution(old: dict, new: dict) -> bool:
    """The same packages (every field), inputs and notes: a re-lock that moved nothing, whose
    file stays as it is even when the repositories' root files (their dates) changed."""
    return all(old.get(k) == new.get(k) for k in ("lock_version", "recipe", "inputs_sha256",
                                                  "notes", "package")) and \
        [r.get("name") for r in old.get("repository", [])] == \
        [r["name"] for r in new.get("repository", [])]


# --- writing -----------------------------------------------------------------------------------


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, str):
        out = []
        for ch in value:
            if ch in ('"', "\\"):
                out.append("\\" + ch)
            elif ch == "\n":
                out.append("\\n")
            elif ch == "\t":
                out.append("\\t")
            elif ord(ch) < 0x20 or ord(ch) == 0x7F:
                out.append(f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'
    raise TypeError(f"lock files hold no {type(value).__name__}")


def dumps(data: dict) -> str:
    """TOML for a lock: top-level scalars first, then each array of tables, keys in given order."""
    lines = [HEADER.rstrip("\n")]
    tables = {k: v for k, v in data.items()  # arrays of tables; a list of strings is a value
              if isinstance(v, list) and not (v and all(isinstance(i, str) for i in v))}
    for key, value in data.items():
        if key not in tables:
            lines.append(f"{key} = {_value(value)}")
    for key, items in tables.items():
        for item in items:
            lines += ["", f"[[{key}]]"]
            lines += [f"{k} = {_value(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"


def write_lock(recipe: Recipe, data: dict) -> Path:
    """Write ``data`` as the recipe's lock, unless the lock there already says the same
    (:func:`same_resolution`): a re-lock in which no package moved leaves it byte-identical."""
    path = lock_path(recipe)
    try:
        if same_resolution(tomllib.loads(path.read_text(encoding="utf-8")), data):
            return path
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        pass  # missing or unreadable: write it
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(dumps(data), encoding="utf-8")
    os.replace(tmp, path)
    return path
