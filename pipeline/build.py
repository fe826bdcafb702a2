"""The build: recipe → fetch → extract → normalize → release → package → manifest.

Everything happens in a work directory *inside* the output directory (so the final renames are
atomic on one file system) and is deleted on success or failure: the output directory only ever
gains complete images and manifests.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import extract as extract_stage
from . import manifest as mf
from .errors import InputError
from .fetch import Cache, fetch_all, hash_file
from .formats import entry as E
from .normalize import apply_times, choose_epoch
from .package import pack, replace_atomically
from .recipe import Recipe
from .staging import StagingTree
from .systemd import release as sdrelease

#: Paths that no extension may carry (systemd refuses or misbehaves), per kind.
FORBIDDEN = {"sysext": ("usr/lib/os-release",), "confext": ()}


@dataclass
class BuildResult:
    image: Path
    manifest_path: Path
    manifest: dict
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


class Log:
    """Stage lines for people on stderr; silent when nobody is meant to read them."""

    def __init__(self, write=None):
        self.write = write
        self.timings: dict[str, float] = {}
        self._start = time.monotonic()

    def stage(self, name: str, text: str) -> None:
        now = time.monotonic()
        self.timings[name] = round(now - self._start, 3)
        self._start = now
        if self.write:
            self.write(f"{name:<10}{text} ({self.timings[name]:.1f}s)")


def image_filename(recipe: Recipe) -> str:
    return recipe.name if recipe.format == "directory" else f"{recipe.name}.raw"


def build(recipe: Recipe, output_dir: Path, cache: Cache, *, environ: dict | None = None,
          offline: bool = False, log: Log | None = None, progress=None) -> BuildResult:
    environ = dict(os.environ if environ is None else environ)
    log = log or Log()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    fetched = fetch_all(recipe.sources, cache, offline=offline, progress=progress)
    origins = [f.origin for f in fetched]
    log.stage("fetch", f"{len(fetched)} packages, {_size(sum(f.size for f in fetched))} "
              f"({origins.count('download') + origins.count('apt')} downloaded, "
              f"{origins.count('cache')} cached, {origins.count('local')} local)")

    workdir = Path(tempfile.mkdtemp(prefix=f".{recipe.name}.build-", dir=output_dir))
    try:
        return _build_in(recipe, output_dir, workdir, fetched, environ, log)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _build_in(recipe, output_dir, workdir, fetched, environ, log) -> BuildResult:
    with StagingTree(workdir / "root", owner_ids=os.geteuid() == 0) as tree:
        report = extract_stage.extract(recipe, fetched, tree)
        files, size = extract_stage.stats(tree)
        log.stage("extract", f"{files} files, {_size(size)}; {len(report.dropped)} dropped, "
                  f"{report.excluded} excluded")
        for path in FORBIDDEN[recipe.kind]:
            if path in tree.records:
                raise InputError(path, f"a {recipe.kind} must not carry {path}",
                                 f"it comes from {tree.records[path].origin}; exclude it")

        target = dict(recipe.target)
        if target["architecture"] == "auto":
            target["architecture"] = _derive_architecture(report.packages)
        fields = sdrelease.release_fields(recipe.kind, recipe.name, recipe.version, target)
        release_bytes = sdrelease.format_release(fields)
        release_path = sdrelease.release_path(recipe.kind, recipe.name)
        tree.add_bytes(release_path, release_bytes, 0o644, "extension-release")

        epoch, epoch_origin = choose_epoch(recipe.source_date_epoch, environ, report.newest_mtime)
        apply_times(tree, epoch, recipe.mtime)
        warnings = _warnings(recipe, tree, report)
        log.stage("normalize", f"epoch {epoch} ({epoch_origin}), mtime policy {recipe.mtime}; "
                  f"{release_path}")

        file_list = mf.file_entries(tree.records)
        seed = _seed(recipe, fetched, epoch)
        final = output_dir / image_filename(recipe)
        packed = pack(recipe, tree, workdir / final.name, epoch, seed)

    if recipe.format == "directory":
        image_sha, image_size = None, None
    else:
        image_sha, image_size = hash_file(packed.path)
    manifest = {
        "schema": mf.SCHEMA,
        "name": recipe.name,
        "kind": recipe.kind,
        "version": recipe.version,
        "recipe": {"file": recipe.path.name, "sha256": recipe.sha256},
        "inputs": report.packages,
        "source_date_epoch": epoch,
        "source_date_epoch_origin": epoch_origin,
        "mtime_policy": recipe.mtime,
        "tools": mf.tool_versions(packed.tools),
        "extension_release": {"path": release_path, "fields": fields,
                              "sha256": hashlib.sha256(release_bytes).hexdigest()},
        "dropped": dict(sorted(report.dropped.items())),
        "excluded_count": report.excluded,
        "image": {"file": final.name, "format": recipe.format,
                  "compression": recipe.compression,
                  "compression_level": recipe.compression_level,
                  "size": image_size, "sha256": image_sha,
                  "tree_sha256": mf.tree_digest(file_list)},
        "files": file_list,
    }
    manifest_tmp = workdir / "manifest.json"
    manifest_tmp.write_bytes(mf.dumps(manifest))
    manifest_final = output_dir / f"{recipe.name}.manifest.json"
    replace_atomically(packed.path, final)
    os.replace(manifest_tmp, manifest_final)
    shown = f"sha256 {image_sha[:16]}…, {_size(image_size)}" if image_sha else \
        f"tree {manifest['image']['tree_sha256'][:16]}…"
    log.stage("package", f"{final} ({recipe.format}, {recipe.compression}; {shown})")
    return BuildResult(final, manifest_final, manifest, warnings, log.timings)


def _derive_architecture(packages: list[dict]) -> str | None:
    """The one systemd architecture the binary packages share (None: all arch-independent)."""
    arches = {sdrelease.systemd_architecture(p["architecture"]) for p in packages}
    arches.discard(None)
    if len(arches) > 1:
        raise InputError("target.architecture", f"packages mix architectures {sorted(arches)}",
                         "set target.architecture explicitly or fix the package list")
    return arches.pop() if arches else None


def _seed(recipe: Recipe, fetched, epoch: int) -> bytes:
    """Deterministic randomness (file system UUIDs, verity salts) derived from the inputs."""
    digest = hashlib.sha256()
    digest.update(recipe.sha256.encode())
    for item in fetched:
        digest.update(item.sha256.encode())
    digest.update(str(epoch).encode())
    return digest.digest()


def _warnings(recipe: Recipe, tree: StagingTree, report) -> list[str]:
    warnings = []
    if report.unmapped_owners:
        warnings.append("owners kept by number (add them to [owners]): "
                        + ", ".join(sorted(report.unmapped_owners)))
    if recipe.kind == "sysext":
        for path, record in sorted(tree.records.items()):
            if record.kind == E.SYMLINK and record.target.startswith(("/etc/", "/var/")):
                warnings.append(f"{path} → {record.target}: points outside the merged "
                                "hierarchies; it dangles unless the host has the target")
    if tree.replaced:
        warnings.append(f"{len(tree.replaced)} paths written by more than one source, the later "
                        f"won: {', '.join(tree.replaced[:5])}")
    return warnings


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"
