"""One pinned rebuild from what a manifest records: the step ``verify`` compares against and
every ``verify --vary`` variation runs in its child process (so neither imports the other)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BuildError, InputError
from ..sources import kinds
from ..stages.manifest import Manifest


@dataclass
class Rebuilt:
    image: Path
    manifest_path: Path
    manifest: dict
    workdir: Path
    recipe: Path
    notes: list[str] = field(default_factory=list)
    model: Manifest | None = None  # ``manifest`` read through pipeline/stages/manifest.py


def as_model(manifest: dict | Manifest) -> Manifest:
    """The manifest through the model (a dict is checked like any manifest read)."""
    return manifest if isinstance(manifest, Manifest) else Manifest.from_json(manifest)


def pinned_recipe(recipe, manifest: dict | Manifest):
    """The recipe with every unpinned deb/rpm/apt source pinned to the sha256 its input recorded
    (sources and inputs correspond one to one, in order, when no source expands to several)."""
    inputs = as_model(manifest).inputs
    sources = list(recipe.sources)
    if len(sources) != len(inputs) or any(not kinds.of(s).one_input for s in sources):
        return recipe
    pinned = [s if s.sha256 else dataclasses.replace(s, sha256=i.sha256)
              for s, i in zip(sources, inputs)]
    return dataclasses.replace(recipe, sources=tuple(pinned))


def rebuild_environ(manifest: dict | Manifest, base: dict | None = None) -> dict:
    manifest = as_model(manifest)
    environ = dict(os.environ if base is None else base)
    environ.pop("SOURCE_DATE_EPOCH", None)
    if manifest.source_date_epoch_origin == "environment":
        environ["SOURCE_DATE_EPOCH"] = str(manifest.source_date_epoch)
    return environ


def rebuild(manifest: dict | Manifest, recipe_path: Path, output_dir: Path, cache_dir: Path | None = None,
            *, offline: bool = False, log=None) -> Rebuilt:
    """Build ``recipe_path`` with the manifest's inputs into ``output_dir``; return the image
    that has the manifest's name."""
    from .. import recipe as recipe_mod
    from ..sources.fetch import Cache, default_cache_dir
    from ..stages.build import Log, build

    manifest = as_model(manifest)
    recipe = pinned_recipe(recipe_mod.load(recipe_path), manifest)
    cache = Cache(default_cache_dir(cache_dir))
    try:
        # unsigned: verifying must never need the private key (see the module docstring)
        result = build(recipe, Path(output_dir), cache, environ=rebuild_environ(manifest),
                       offline=offline, log=log or Log(), unsigned=True)
    except InputError as err:
        if "sha256 mismatch" in err.what:
            raise InputError(err.where, "the package file is not the one the manifest "
                             f"recorded ({err.what})", _mismatch_hint(err.where, cache)) from None
        raise
    for image in result.images:
        if image.name == manifest.name:
            return Rebuilt(image.image, image.manifest_path, image.manifest, Path(output_dir),
                           recipe_path, model=image.model)
    raise BuildError(manifest.name, "the recipe no longer makes this image",
                     "made: " + ", ".join(i.name for i in result.images))


def _mismatch_hint(where: str, cache) -> str:
    """What to do about a package file whose hash is not the recorded one. A local source is
    read from its path (the cache is only looked in by hash, and nothing puts local files
    there), a download from the cache or the URL."""
    if "://" not in where and Path(where).exists():
        return (f"the build reads {where} itself: put the file with the recorded sha256 back "
                "there, or verify against a manifest of the current file")
    return (f"put the recorded file into the cache ({cache.root}/sha256/…, e.g. with "
            "sysext-pipeline fetch --store), or verify against a manifest of the current file")
