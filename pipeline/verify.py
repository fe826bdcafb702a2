"""``verify``: rebuild from what a manifest records and compare, byte for byte.

The manifest names its recipe only by file name and sha256 (a build path would make manifests
differ between machines), so the recipe is ``--recipe``, or a file with the recorded sha256 found
next to the manifest, in ``recipes/`` beside it, in ``./recipes`` or in the current directory.
Package files come from the cache by the sha256 each input recorded (a local source without a pin
is pinned to it, so a package file that changed since the build is an error, not a silent
rebuild from other bytes). SOURCE_DATE_EPOCH is given back when the manifest says it came from
the environment. The rebuild runs in a fresh temporary directory.

Result: ``reproduced`` — the same image bytes (a directory image: the same tree) — or ``differs``
with the explanation from pipeline/diff.py, tool-version differences first.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import diff as diff_mod
from .errors import BuildError, InputError
from .fetch import hash_file

LABELS = ("in the original", "in the rebuild")
TOOL_LABELS = ("in the manifest", "here")


@dataclass
class Target:
    """What is being verified: a manifest, and the image next to it when there is one."""

    manifest: dict
    manifest_path: Path
    image: Path | None


@dataclass
class Rebuilt:
    image: Path
    manifest_path: Path
    manifest: dict
    workdir: Path
    recipe: Path
    notes: list[str] = field(default_factory=list)


@dataclass
class VerifyResult:
    status: str  # "reproduced" | "differs"
    name: str
    recipe: str
    recorded_sha256: str | None
    rebuilt_sha256: str | None
    manifest_identical: bool
    notes: list[str] = field(default_factory=list)
    report: diff_mod.Report | None = None
    kept: str | None = None
    variations: list | None = None

    @property
    def ok(self) -> bool:
        return self.status == "reproduced" and all(
            v.status in ("reproduced", "skipped") for v in self.variations or [])

    def to_json(self) -> dict:
        return {"status": self.status, "name": self.name, "recipe": self.recipe,
                "recorded_sha256": self.recorded_sha256, "rebuilt_sha256": self.rebuilt_sha256,
                "manifest_identical": self.manifest_identical, "notes": self.notes,
                "diff": self.report.to_json() if self.report else None, "kept": self.kept,
                "variations": None if self.variations is None else
                [v.to_json() for v in self.variations]}


def load_target(path: str | Path) -> Target:
    """A manifest (``NAME.manifest.json``) or an image (``NAME.raw`` or directory ``NAME``)."""
    side = diff_mod.load_side(path)
    if side.manifest is None:
        raise InputError(str(path), "no manifest next to this image",
                         f"verify needs {Path(path).name.removesuffix('.raw')}.manifest.json, "
                         "which the build wrote next to it")
    return Target(side.manifest, side.manifest_path.resolve(),
                  side.image.resolve() if side.image else None)


def recipe_candidates(target: Target) -> list[Path]:
    here = target.manifest_path.parent
    places = [here, here / "recipes", here.parent, here.parent / "recipes", Path.cwd() / "recipes",
              Path.cwd()]
    seen, found = set(), []
    name = (target.manifest.get("recipe") or {}).get("file")
    for place in places:
        place = place.resolve()
        if place in seen or not place.is_dir():
            continue
        seen.add(place)
        files = sorted(place.glob("*.toml"), key=lambda p: (p.name != name, p.name))
        found += files
    return found


def find_recipe(target: Target, explicit: str | Path | None) -> tuple[Path, list[str]]:
    """The recipe to rebuild from, and notes (a --recipe whose hash is not the recorded one)."""
    recorded = target.manifest.get("recipe") or {}
    want = recorded.get("sha256")
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise InputError(str(path), "recipe not found")
        got = recipe_hash(path) or hash_file(path)[0]
        if want and got != want:
            return path.resolve(), [f"{path} is not the recorded recipe (sha256 {got[:12]}…, "
                                    f"the manifest recorded {want[:12]}… for "
                                    f"{recorded.get('file')}): rebuilding from it anyway"]
        return path.resolve(), []
    for candidate in recipe_candidates(target):
        if recipe_hash(candidate) == want:
            return candidate, []
    raise InputError(str(target.manifest_path), f"no recipe with the recorded sha256 "
                     f"{(want or '?')[:12]}… ({recorded.get('file')}) next to the manifest, in "
                     "./recipes or the current directory", "give it with --recipe FILE")


def recipe_hash(path: Path) -> str | None:
    """The hash the manifest records for a recipe (it covers an ``include``d base too); None for
    a file that is not a valid recipe."""
    from . import recipe as recipe_mod
    from .errors import PipelineError

    try:
        return recipe_mod.load(path).sha256
    except PipelineError:
        return None


def pinned_recipe(recipe, manifest: dict):
    """The recipe with every unpinned deb/rpm/apt source pinned to the sha256 its input recorded
    (sources and inputs correspond one to one, in order, when no source expands to several)."""
    inputs = manifest.get("inputs") or []
    sources = list(recipe.sources)
    if len(sources) != len(inputs) or any(s.type not in ("deb", "rpm", "apt") for s in sources):
        return recipe
    pinned = [s if s.sha256 else dataclasses.replace(s, sha256=i.get("sha256"))
              for s, i in zip(sources, inputs)]
    return dataclasses.replace(recipe, sources=tuple(pinned))


def rebuild_environ(manifest: dict, base: dict | None = None) -> dict:
    environ = dict(os.environ if base is None else base)
    environ.pop("SOURCE_DATE_EPOCH", None)
    if manifest.get("source_date_epoch_origin") == "environment":
        environ["SOURCE_DATE_EPOCH"] = str(manifest["source_date_epoch"])
    return environ


def rebuild(manifest: dict, recipe_path: Path, output_dir: Path, cache_dir: Path | None = None,
            *, offline: bool = False, log=None) -> Rebuilt:
    """Build ``recipe_path`` with the manifest's inputs into ``output_dir``; return the image
    that has the manifest's name."""
    from . import recipe as recipe_mod
    from .build import Log, build
    from .fetch import Cache, default_cache_dir

    recipe = pinned_recipe(recipe_mod.load(recipe_path), manifest)
    cache = Cache(default_cache_dir(cache_dir))
    kwargs = {}
    ddi = manifest.get("ddi") or {}
    if getattr(recipe, "signing", None) and "ddi" in manifest and \
            not ddi.get("certificateFingerprint"):
        kwargs["unsigned"] = True  # built with --unsigned (and maybe signed elsewhere later)
    try:
        result = build(recipe, Path(output_dir), cache, environ=rebuild_environ(manifest),
                       offline=offline, log=log or Log(), **kwargs)
    except InputError as err:
        if "sha256 mismatch" in err.what:
            raise InputError(err.where, "the package file is not the one the manifest "
                             f"recorded ({err.what})", "put the recorded file in the cache, "
                             "or verify against a manifest of the current file") from None
        raise
    for image in result.images:
        if image.name == manifest.get("name"):
            return Rebuilt(image.image, image.manifest_path, image.manifest, Path(output_dir),
                           recipe_path)
    raise BuildError(manifest.get("name", "?"), "the recipe no longer makes this image",
                     "made: " + ", ".join(i.name for i in result.images))


def compare(target: Target, rebuilt: Rebuilt, *, limit: int = 10) -> tuple[bool, bool,
                                                                             diff_mod.Report | None]:
    """(image reproduced, manifest identical, diff report when the image differs)."""
    original = diff_mod.Side(str(target.image or target.manifest_path), target.manifest,
                             target.manifest_path, target.image)
    here = diff_mod.Side(str(rebuilt.image), rebuilt.manifest, rebuilt.manifest_path,
                         rebuilt.image)
    manifest_identical = target.manifest_path.read_bytes() == rebuilt.manifest_path.read_bytes()
    report = diff_mod.diff(original, here, limit=limit, labels=LABELS, tool_labels=TOOL_LABELS)
    return report.identical, manifest_identical, report


def verify(path: str | Path, *, recipe: str | Path | None = None, cache_dir: str | None = None,
           offline: bool = False, keep: bool = False, limit: int = 10, work_dir: str | None = None,
           vary: list[str] | None = None, log=None) -> VerifyResult:
    if vary:
        from . import vary as vary_mod

        vary_mod.select(vary)  # a misspelt variation is bad input before any work
    target = load_target(path)
    recipe_path, notes = find_recipe(target, recipe)
    workdir = Path(tempfile.mkdtemp(prefix="sysext-verify-", dir=work_dir))
    os.chmod(workdir, 0o755)
    try:
        rebuilt = rebuild(target.manifest, recipe_path, workdir / "out", cache_dir,
                          offline=offline, log=log)
        same, manifest_same, report = compare(target, rebuilt, limit=limit)
        notes = notes + _image_notes(target)
        if report is not None:
            notes = report.notes + notes  # tool versions first
        result = VerifyResult(
            status="reproduced" if same else "differs",
            name=target.manifest.get("name", "?"), recipe=str(recipe_path),
            recorded_sha256=(target.manifest.get("image") or {}).get("sha256"),
            rebuilt_sha256=(rebuilt.manifest.get("image") or {}).get("sha256"),
            manifest_identical=manifest_same, notes=notes,
            report=None if same and manifest_same else report)
        if vary:
            from . import vary as vary_mod

            reference = diff_mod.Side(str(target.image or rebuilt.image), target.manifest,
                                      target.manifest_path,
                                      target.image if target.image else rebuilt.image)
            result.variations = vary_mod.run(vary, target=target, recipe=recipe_path,
                                             reference=reference, cache_dir=cache_dir,
                                             offline=offline, workdir=workdir, log=log)
        if keep:
            result.kept = str(workdir)
        return result
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _image_notes(target: Target) -> list[str]:
    recorded = (target.manifest.get("image") or {})
    if target.image is None:
        return [f"{recorded.get('file')} is not next to the manifest: compared with the hashes "
                "the manifest records"]
    if target.image.is_file() and recorded.get("sha256"):
        actual = hash_file(target.image)[0]
        if actual != recorded["sha256"]:
            return [f"{target.image.name} is not the image its manifest describes (sha256 "
                    f"{actual[:12]}…, the manifest records {recorded['sha256'][:12]}…): "
                    "changed after the build"]
    return []


def human_lines(result: VerifyResult) -> list[str]:
    image = result.rebuilt_sha256 or result.recorded_sha256
    if result.status == "reproduced":
        what = f"sha256 {image}" if image else "identical file tree"
        head = f"reproduced: {result.name} ({what})"
        if not result.manifest_identical:
            fields = sorted(result.report.fields("manifest")) if result.report else []
            head += "; the manifest differs: " + (", ".join(fields) or "formatting")
        lines = [head] + [f"  {n}" for n in result.notes]
    else:
        lines = ["differs: " + result.name] + [f"  {n}" for n in result.notes]
        if result.report is not None:
            lines += ["  " + line for line in result.report.lines()[:1]]
            lines += [line for line in result.report.lines()[1:]
                      if line.strip() not in {n.strip() for n in result.notes}]
    if result.variations is not None:
        from .vary import table_lines

        lines += table_lines(result.variations)
    if result.kept:
        lines.append(f"rebuild kept in {result.kept}")
    return lines


def dumps(result: VerifyResult) -> str:
    return json.dumps(result.to_json(), indent=2, sort_keys=True)
