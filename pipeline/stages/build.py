"""The build: recipe → fetch → extract → normalize → release → package → manifest.

Everything happens in a work directory *inside* the output directory (so the final renames are
atomic on one file system) and is deleted on success or failure: the output directory only ever
gains complete images and manifests. :func:`stage` is shared with ``plan``, which runs it
against recording-only trees.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..digest import hash_file
from ..errors import BuildError, InputError
from ..formats import elf as elfarch
from ..outdir import (
    MAX_MANIFEST,
    WorkDir,
    locked,
    locked_workdir,
    plain_name,
    read_entry,
    remove_at,
    remove_path,
    sweep,
)
from ..recipe import Recipe
from ..release import provenance
from ..sources.fetch import Cache, Fetched, fetch_all
from ..systemd import release as sdrelease
from . import extract as extract_stage
from . import layout, pitfalls, uptodate
from . import manifest as mf
from .normalize import apply_times, choose_epoch
from .package import pack, refuse_unowned_directory
from .staging import StagingTree

#: Files that may sit next to NAME.raw, written by detached verity or an unsigned DDI build.
COMPANION_SUFFIXES = (".verity", ".roothash", ".roothash.p7s", ".spdx.json", ".cdx.json",
                      ".provenance.json")

#: Paths that no extension may carry (systemd refuses or misbehaves), per kind.
FORBIDDEN = {"sysext": ("usr/lib/os-release",), "confext": ()}


@dataclass
class StagedImage:
    kind: str
    name: str
    tree: StagingTree
    fields: dict[str, str]
    release_path: str
    release_bytes: bytes
    findings: list[pitfalls.Finding] = field(default_factory=list)


@dataclass
class Staged:
    """The staged payload: one tree per image, decided and released, not yet packed."""

    report: extract_stage.ExtractReport
    images: list[StagedImage]
    decision: str
    epoch: int
    epoch_origin: str
    architecture: str | None
    package_facts: list = field(default_factory=list)  # SBOM facts per input (provenance.py)
    digest_base: dict | None = None  # what the manifest's input_digest covers (uptodate.py)


@dataclass
class ImageResult:
    kind: str
    name: str
    image: Path
    manifest_path: Path
    manifest: dict  # the manifest's JSON (model.to_json())
    extras: list[Path] = field(default_factory=list)  # NAME.verity, NAME.roothash, …
    model: mf.Manifest | None = None  # the manifest, read through pipeline/stages/manifest.py


@dataclass
class BuildResult:
    images: list[ImageResult]
    decision: str
    warnings: list[str] = field(default_factory=list)
    findings: list[pitfalls.Finding] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    up_to_date: bool = False  # nothing was built: the output already is what these inputs make


class Log:
    """Stage lines for people on stderr; silent when nobody is meant to read them."""

    def __init__(self, write=None, tty=None):
        self.write = write
        self.tty = tty  # a terminal stream for progress lines, or None
        self.timings: dict[str, float] = {}
        self._start = time.monotonic()

    def ticker(self, what: str):
        """A ``tick(seconds)`` that redraws one status line, on a terminal only (CI logs stay
        plain: one line per stage)."""
        if self.write is None or not self.tty:
            return None

        def tick(seconds: float) -> None:
            self.tty.write(f"\r{what} … {seconds:.0f}s ")
            self.tty.flush()

        return tick

    def note(self, name: str, text: str) -> None:
        """A detail line under the stage that follows (not timed)."""
        if self.write:
            self.write(f"{name:<10}{text}")

    def stage(self, name: str, text: str) -> None:
        now = time.monotonic()
        took = now - self._start
        self._start = now
        self.timings[name] = round(self.timings.get(name, 0) + took, 3)
        if self.write:
            if self.tty:
                self.tty.write("\r\033[K")  # clear a progress line
            self.write(f"{name:<10}{text} ({took:.1f}s)")


def image_filename(recipe_format: str, name: str) -> str:
    return name if recipe_format == "directory" else f"{name}.raw"


def stage(recipe: Recipe, fetched: list[Fetched], new_tree: Callable[[str], StagingTree],
          environ: dict) -> Staged:
    """Extract, decide the images, write tmpfiles.d and release files: everything but time
    stamps and packing. ``new_tree(kind)`` makes the (real or recording) tree of one kind."""
    router = layout.Router(recipe.kind, recipe.etc_policy, recipe.var_policy)
    trees: dict[str, StagingTree] = {}

    def tree_for(kind: str) -> StagingTree:
        if kind not in trees:
            trees[kind] = new_tree(kind)
        return trees[kind]

    report = extract_stage.extract(recipe, fetched, tree_for, router)
    kinds, decision = layout.decide(recipe.kind, router.layout)
    names = layout.image_names(recipe.name, kinds)
    target = {**recipe.target,
              "architecture": _architecture(recipe.target["architecture"], report.packages)}
    for kind, tree in trees.items():  # content routed to an image that is not made
        if kind not in kinds:
            for path in tree.records:
                report.dropped.setdefault(path, f"no {kind} is made")

    scripts = tuple(sorted((p["name"], tuple(p["scripts"])) for p in report.packages
                           if p.get("scripts")))  # said once, with the first image
    script_text = pitfalls.script_texts(report.packages, fetched) if scripts else {}
    images = []
    for kind in sorted(kinds, key=("sysext", "confext").index):
        name = names[kind]
        tree = tree_for(kind)
        for path in FORBIDDEN[kind]:
            if path in tree.records:
                raise InputError(path, f"a {kind} must not carry {path}",
                                 f"it comes from {tree.records[path].origin}; exclude it")
        lines = router.layout.tmpfiles[kind]
        if lines:
            tree.add_bytes(layout.tmpfiles_path(kind, recipe.name),
                           layout.tmpfiles_content(lines), 0o644, "tmpfiles.d")
        fields = sdrelease.release_fields(kind, name, recipe.version, target)
        release_bytes = sdrelease.format_release(fields)
        release_path = sdrelease.release_path(kind, name)
        tree.add_bytes(release_path, release_bytes, 0o644, "extension-release")
        provided = layout.provided_paths(
            router.layout, [tree_for(k).records for k in kinds if k != kind])
        findings = pitfalls.find(kind, tree.records, fields, target, provided=provided,
                                 packages_with_scripts=scripts if not images else (),
                                 script_text=script_text, open_data=tree.open_data)
        images.append(StagedImage(kind, name, tree, fields, release_path, release_bytes,
                                  findings))
    epoch, epoch_origin = choose_epoch(recipe.source_date_epoch, environ, report.newest_mtime)
    return Staged(report, images, decision, epoch, epoch_origin, target["architecture"])


def build(recipe: Recipe, output_dir: Path, cache: Cache, *, environ: dict | None = None,
          offline: bool = False, unsigned: bool = False, log: Log | None = None,
          progress=None, force: bool = False) -> BuildResult:
    """Build every image of ``recipe`` into ``output_dir``. ``unsigned`` skips [sign] (for
    offline signing with ``sysext-pipeline sign``). Unless ``force``, an output that already
    is what these inputs make is left as it is (``up_to_date`` in the result)."""
    environ = dict(os.environ if environ is None else environ)
    # before anything is fetched, for every caller (build, a catalogue, verify's and vary's
    # rebuilds); packing checks it again as the last guard
    refuse_unowned_directory(recipe.format, os.geteuid() == 0)
    signer = None if unsigned else load_recipe_signer(recipe)
    log = log or Log()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    from ..sources.lock import expand_sources

    sources = expand_sources(recipe, offline=offline)  # refuses a missing or stale lock
    fetched = fetch_all(sources, cache, offline=offline, progress=progress)
    origins = [f.origin for f in fetched]
    log.stage("fetch", f"{len(fetched)} packages, {_size(sum(f.size for f in fetched))} "
              f"({sum(o not in ('cache', 'local') for o in origins)} downloaded, "
              f"{origins.count('cache')} cached, {origins.count('local')} local)")

    warnings = prepare_output(output_dir, recipe.name)
    digest_base = uptodate.parts(recipe, fetched, environ)
    if not force:
        current = _up_to_date(output_dir, recipe.name, digest_base, signer, log)
        if current is not None:
            if signer is not None:
                signer.verify()  # the key's validation (keys.KeyCheck): refused even so
            current.warnings[:0] = warnings
            return current
        _refuse_replacing_signed(output_dir, recipe.name)
    _check_space(output_dir, sum(f.size for f in fetched) * STAGING_FACTOR,
                 f"staging {len(fetched)} packages (estimated at {STAGING_FACTOR}× their size)")
    with locked_workdir(output_dir, f".{recipe.name}.build-") as work:
        workdir = work.path
        trees: list[StagingTree] = []

        def new_tree(kind: str) -> StagingTree:
            trees.append(StagingTree(workdir / kind, owner_ids=os.geteuid() == 0))
            return trees[-1]

        try:
            staged = stage(recipe, fetched, new_tree, environ)
            pitfalls.refuse_empty(recipe, staged)  # policy.empty (issue 16 §4)
            staged.digest_base = digest_base
            staged.package_facts = provenance.read_facts(fetched, staged.report)
            result = _package_all(recipe, staged, output_dir, work, log, signer)
        finally:
            for tree in trees:
                tree.close()
    result.warnings[:0] = warnings
    return result


def _refuse_replacing_signed(output_dir: Path, name: str) -> None:
    """A signed image is replaced only with --force, as mkosi's -f (issue 16 §5). The old
    manifest is read as bare JSON, not through the model: one that is damaged but names a
    signer still protects its image (like _retired, which reads only ``companions``)."""
    data = read_entry(output_dir, f"{name}.manifest.json", MAX_MANIFEST)
    try:
        manifest = json.loads(data) if data is not None else None
    except ValueError:
        return
    if not isinstance(manifest, dict):
        return
    if any(isinstance(manifest.get(s), dict) and manifest[s].get("certificateFingerprint")
           for s in ("ddi", "verity")):
        image = (manifest.get("image") or {}).get("file") or name
        raise InputError(str(output_dir / str(image)), "is a signed image and this build "
                         "(other inputs) would replace it", "pass --force to replace it, or "
                         "build into another -o directory")


def _up_to_date(output_dir: Path, recipe_name: str, digest_base: dict, signer,
                log: Log) -> BuildResult | None:
    """The result of a build that finds its output already made from these inputs (read and
    hashed under the output directory's lock, nothing touched), else None."""
    with locked(output_dir):
        found = uptodate.check(output_dir, recipe_name, digest_base,
                               signer.fingerprint if signer is not None else None)
    if found is None:
        return None
    images = []
    for image, manifest_path, model in found:
        verity = model.verity
        extras = [output_dir / file for file in (verity.verity_file, verity.roothash_file,
                                                 verity.signature_file) if file] \
            if verity else []
        if model.ddi and signer is None:
            extras.append(output_dir / f"{model.name}.roothash")
        images.append(ImageResult(model.kind, model.name, image, manifest_path,
                                  model.to_json(), extras, model))
    log.stage("up-to-date", ", ".join(str(i.image) for i in images))
    return BuildResult(images, found[0][2].decision, timings=log.timings, up_to_date=True)


def _input_digest(digest_base: dict | None, tool_versions: dict) -> str | None:
    """The manifest's ``input_digest`` field (none when the caller gave no digest base)."""
    if digest_base is None:
        return None
    return uptodate.digest(digest_base, tool_versions)


def _packed_sections(sections: dict) -> dict:
    """The format's manifest sections from the package stage (``ddi``: a DdiInfo,
    ``verity``: a DetachedVerity), made into the model's."""
    kinds = {"ddi": mf.Ddi, "verity": mf.DetachedVerity}
    return {key: kinds[key].of(value) for key, value in sections.items()}


#: Bytes of free space staging needs per byte of package files (a package unpacks to at
#: least about twice its compressed size); the estimate is checked before anything is unpacked.
STAGING_FACTOR = 2


def _check_space(directory: Path, needed: int, what: str) -> None:
    """Refuse to start a step that cannot fit, naming the directory and the bytes."""
    free = shutil.disk_usage(directory).free
    if needed > free:
        raise BuildError(str(directory), f"not enough free space for {what}: about {needed} "
                         f"bytes needed ({_size(needed)}), {free} bytes free ({_size(free)})",
                         "free some space or choose another output directory")


def _crash_point(label: str) -> None:
    """Testing hook: SIGKILL ourselves at a named point of publishing, to prove that a build
    killed there is finished by the next one (SYSEXT_PIPELINE_CRASH_AT=label)."""
    if os.environ.get("SYSEXT_PIPELINE_CRASH_AT") == label:
        os.kill(os.getpid(), signal.SIGKILL)


def _journal(recipe_name: str) -> str:
    return f".{recipe_name}.publish.json"


def prepare_output(output_dir: Path, recipe_name: str) -> list[str]:
    """Before a build: finish a publish that a killed build left half done, then remove what
    killed builds of this recipe left (work trees whose lock is free, directory images moved
    aside by older versions). Under the output directory's lock; the warnings."""
    with locked(output_dir) as out_fd:
        warnings = _roll_forward(out_fd, recipe_name)
        sweep(output_dir, f".{recipe_name}.build-")
        for name in sorted(own_names(recipe_name)):
            sweep(output_dir, f".{name}.old-")
    return warnings


def _roll_forward(out_fd: int, recipe_name: str) -> list[str]:
    """Finish the publish journal a killed build left (the caller holds the output lock, so
    its writer is gone). A journal that is not one of ours is left alone, with a warning."""
    journal = _journal(recipe_name)
    if _exists(journal, out_fd) is None:
        return []
    data = read_entry(out_fd, journal, 1 << 20) or b""
    try:
        plan = json.loads(data)
        work, steps = plan["workdir"], plan["steps"]
    except (ValueError, TypeError, KeyError):
        return [f"{journal}: not a publish journal of this tool; left as it is"]
    allowed = {e for name in own_names(recipe_name) for e in image_entries(name)}
    valid = plain_name(work) and work.startswith(f".{recipe_name}.build-") and \
        isinstance(steps, list) and all(_valid_step(step, allowed) for step in steps)
    if not valid:
        return [f"{journal}: names entries this recipe does not make; left as it is"]
    try:
        work_fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=out_fd)
    except FileNotFoundError:
        work_fd = None
    except OSError:  # a file or a symlink where the work tree should be: not ours
        return [f"{journal}: {work} is not a work tree; left as it is"]
    try:
        if work_fd is not None:
            try:
                fcntl.flock(work_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its build still runs (it gave up publishing): its turn
                return [f"{journal}: its build ({work}) still holds its work tree; left as it is"]
        _apply(out_fd, work_fd, steps)
        os.unlink(journal, dir_fd=out_fd)
        if work_fd is not None:
            remove_at(out_fd, work)
    finally:
        if work_fd is not None:
            os.close(work_fd)
    return []


def _valid_step(step, allowed: set[str]) -> bool:
    if not isinstance(step, list) or not step:
        return False
    if not all(isinstance(name, str) for name in step):
        return False
    if step[0] == "move" and len(step) == 3:
        return plain_name(step[1]) and step[2] in allowed
    return step[0] == "retire" and len(step) == 2 and step[1] in allowed


def _exists(name: str, dir_fd: int | None) -> os.stat_result | None:
    if dir_fd is None:
        return None
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _apply(out_fd: int, work_fd: int | None, steps: list) -> None:
    """Carry out publish steps; idempotent, so a killed run is finished by running it again.

    ``move SRC DEST``: the work tree's SRC becomes the output's DEST (a directory, or anything
    of another type, first moved aside into the work tree's ``.old``); a missing SRC was moved
    already. ``retire DEST``: DEST is moved aside. What was moved aside goes with the work
    tree."""
    for i, (op, *names) in enumerate(steps):
        dest = names[-1]
        if op == "move":
            src = _exists(names[0], work_fd)
            if src is None:
                continue
            old = _exists(dest, out_fd)
            if old is not None and (stat.S_ISDIR(old.st_mode) or stat.S_ISDIR(src.st_mode)):
                _aside(out_fd, work_fd, dest)
                _crash_point("aside")
            os.rename(names[0], dest, src_dir_fd=work_fd, dst_dir_fd=out_fd)
        elif _exists(dest, out_fd) is not None and work_fd is not None:
            _aside(out_fd, work_fd, dest)
        elif work_fd is None:  # the killed build's tree is gone: nowhere to move it aside to
            if _exists(dest, out_fd) is not None:
                remove_at(out_fd, dest)
        _crash_point(f"publish-{i}")


def _aside(out_fd: int, work_fd: int, name: str) -> None:
    try:
        os.mkdir(".old", 0o700, dir_fd=work_fd)
    except FileExistsError:
        pass
    old_fd = os.open(".old", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=work_fd)
    try:
        remove_at(old_fd, name)
        os.rename(name, name, src_dir_fd=out_fd, dst_dir_fd=old_fd)
    finally:
        os.close(old_fd)


def _publish(output_dir: Path, work: WorkDir, recipe_name: str, steps: list,
             made: set[str]) -> list[str]:
    """Make the packed images, their companions and manifests appear: a journal of renames is
    written first (one rename makes it appear), then carried out, then removed. A build killed
    in between leaves the journal, and the next build of the recipe finishes it (images
    before manifests; each manifest records its image's sha256, so a reader in between can
    tell an image from the manifest of another build)."""
    journal = _journal(recipe_name)
    with locked(output_dir) as out_fd:
        warnings = _roll_forward(out_fd, recipe_name)  # another build killed meanwhile
        entries, retire_warnings = _retired(output_dir, recipe_name, made)
        warnings += retire_warnings
        manifests = [s for s in steps if s[0] == "move" and s[2].endswith(".manifest.json")]
        steps = [s for s in steps if s not in manifests]
        steps += [["retire", e] for e in entries]
        steps += manifests
        work_fd = os.open(work.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            text = json.dumps({"workdir": work.path.name, "steps": steps}).encode()
            tmp = os.open("publish.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                          0o644, dir_fd=work_fd)
            with os.fdopen(tmp, "wb") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.rename("publish.json", journal, src_dir_fd=work_fd, dst_dir_fd=out_fd)
            _crash_point("journal")
            try:
                _apply(out_fd, work_fd, steps)
            except BaseException:  # SIGTERM, Ctrl-C: finish (renames only), or leave it all
                try:                # for the next build to finish
                    _apply(out_fd, work_fd, steps)
                except BaseException:
                    work.keep = True
                    raise
                os.unlink(journal, dir_fd=out_fd)
                raise
            os.unlink(journal, dir_fd=out_fd)
        finally:
            os.close(work_fd)
    return warnings


def own_names(recipe_name: str) -> set[str]:
    """The image names a recipe called ``recipe_name`` can make (layout.image_names)."""
    return {recipe_name, f"{recipe_name}-config"}


def image_entries(name: str) -> list[str]:
    """Every output-directory entry an image called ``name`` can have: the image in either
    format, its manifest and the fixed companion files."""
    return [name, f"{name}.raw", f"{name}.manifest.json",
            *(f"{name}{suffix}" for suffix in COMPANION_SUFFIXES)]




def _retired(output_dir: Path, recipe_name: str, made: set[str]) -> tuple[list[str], list[str]]:
    """Entries of images an earlier build of this recipe made and this one does not (a recipe
    that made NAME and NAME-config and now makes one image: the other, left in the output
    directory, would be installed next to the new one and describe an old build).

    The earlier manifests are not trusted: a companion name that this recipe cannot make
    ("..", "", "/etc", "../x", another recipe's image) is a warning and removes nothing.
    Returns (entry names to remove, warnings)."""
    allowed = own_names(recipe_name)
    entries: list[str] = []
    warnings: list[str] = []
    for name in sorted(made):
        previous = output_dir / f"{name}.manifest.json"
        data = read_entry(output_dir, previous.name, MAX_MANIFEST)
        if data is None:
            continue
        try:
            companions = json.loads(data).get("companions", [])
        except (ValueError, AttributeError):
            continue
        if not isinstance(companions, list):
            companions = [companions]
        for old in companions:
            if old in made:
                continue
            if not plain_name(old) or old not in allowed:
                shown = repr(old)[:80]
                warnings.append(f"{previous.name}: companion {shown} is not an image recipe "
                                f"{recipe_name!r} makes; nothing removed for it")
                continue
            entries += [e for e in image_entries(old) if e not in entries]
    return entries, warnings


def remove_tree(path: Path) -> None:
    """Delete a work tree even when a package made some of its directories read-only; a
    symlink is removed itself, never followed."""
    remove_path(path)


def load_recipe_signer(recipe: Recipe):
    """The recipe's [sign] key, loaded (and checked) before any work is done."""
    if not recipe.signing:
        return None
    from ..keys import load_signer, read_passphrase

    passphrase = read_passphrase(recipe.signing.get("passphrase_env"),
                                 recipe.signing.get("passphrase_file"))
    return load_signer(recipe.signing["key"], recipe.signing["cert"], passphrase)


def _package_all(recipe, staged: Staged, output_dir, work: WorkDir, log,
                 signer) -> BuildResult:
    workdir = work.path
    report = staged.report
    counts = [(img, *extract_stage.stats(img.tree)) for img in staged.images]
    summary = "; ".join(f"{img.kind} {img.name}: {files} files, {_size(size)}"
                        for img, files, size in counts)
    log.stage("extract", f"{summary}; {len(report.dropped)} dropped, {report.excluded} excluded")
    for reason, paths in _by_reason(report.dropped).items():
        shown = ", ".join("/" + p for p in paths[:4]) + (f", … (+{len(paths) - 4})"
                                                         if len(paths) > 4 else "")
        log.note("dropped", f"{reason}: {shown}")
    log.stage("layout", staged.decision)
    for img in staged.images:
        apply_times(img.tree, staged.epoch, recipe.mtime)
    log.stage("normalize", f"epoch {staged.epoch} ({staged.epoch_origin}), mtime policy "
              f"{recipe.mtime}; " + ", ".join(img.release_path for img in staged.images))

    if recipe.format != "directory":  # a directory image is renamed into place: no space
        tree_bytes = sum(size for _, _, size in counts)
        needed = tree_bytes if recipe.compression == "none" else tree_bytes // 2
        if recipe.format == "ddi":  # the file system image and the disk image side by side
            needed *= 2
        _check_space(output_dir, needed + (1 << 20),
                     f"packing {_size(tree_bytes)} of files into {recipe.format} images "
                     f"({recipe.compression})")
    packed = []
    release_files: dict[str, list[Path]] = {}
    for img in staged.images:
        file_list = mf.file_entries(img.tree.records, img.tree.root)
        tree_sha256 = mf.tree_digest(file_list)
        final = output_dir / image_filename(recipe.format, img.name)
        seed = _image_seed(recipe, tree_sha256, staged.architecture, staged.epoch)
        result = pack(recipe, img.tree, workdir / final.name, staged.epoch, seed,
                      arch=staged.architecture, signer=signer,
                      tick=log.ticker(f"packing {final.name}"))
        image_sha, image_size = (None, None) if recipe.format == "directory" else \
            result.digest or hash_file(result.path)
        companions = [o.name for o in staged.images if o is not img]
        tools = mf.tool_versions(result.tools)
        model = mf.Manifest(
            schema=mf.SCHEMA, name=img.name, kind=img.kind, version=recipe.version,
            companions=companions, decision=staged.decision,
            recipe=mf.RecipeRef(recipe.path.name, recipe.sha256),
            inputs=[mf.Input(**p) for p in report.packages],
            source_date_epoch=staged.epoch, source_date_epoch_origin=staged.epoch_origin,
            mtime_policy=recipe.mtime,
            policy=mf.Policy(recipe.etc_policy, recipe.var_policy),
            tools=tools, input_digest=_input_digest(staged.digest_base, tools),
            extension_release=mf.ExtensionRelease(
                img.release_path, dict(img.fields),
                hashlib.sha256(img.release_bytes).hexdigest()),
            dropped=dict(sorted(report.dropped.items())),
            excluded_count=report.excluded,
            warnings=[mf.Pitfall(**f.to_json()) for f in img.findings],
            image=mf.Image(final.name, recipe.format,
                           None if recipe.format == "directory" else recipe.filesystem,
                           recipe.verity, recipe.compression, recipe.compression_level,
                           image_size, image_sha, tree_sha256),
            files=file_list, **_packed_sections(result.manifest))
        # SBOM + provenance, published with the image (pipeline/release/provenance.py), which
        # reads the manifest's JSON and names the files in it
        manifest, manifest_tmp_name = model.to_json(), f"{img.name}.manifest.json"
        release_files[img.name] = provenance.write_companions(
            workdir, manifest, recipe, staged.package_facts, signer)
        model.sbom = mf.Sbom.from_json(manifest["sbom"], manifest_tmp_name, "sbom")
        model.provenance = mf.Provenance.from_json(manifest["provenance"], manifest_tmp_name,
                                                   "provenance")
        manifest = model.to_json()
        manifest_tmp = workdir / f"{img.name}.manifest.json"
        manifest_tmp.write_bytes(mf.dumps(manifest))
        packed.append((img, result, final, manifest_tmp, model, manifest))

    steps: list[list[str]] = []
    suffixes = {f"{img.name}{suffix}" for img in staged.images for suffix in COMPANION_SUFFIXES}
    extras = {extra.name for _, result, *_ in packed for extra in result.extras}
    extras |= {path.name for paths in release_files.values() for path in paths}
    for img, result, final, manifest_tmp, *_ in packed:  # all packed: now publish
        steps.append(["move", final.name, final.name])
        other = image_filename("directory" if recipe.format != "directory" else "squashfs",
                               img.name)
        steps.append(["retire", other])  # the image in the other format, from an earlier build
        steps += [["move", extra.name, extra.name] for extra in result.extras]
        steps += [["move", path.name, path.name] for path in release_files[img.name]]
        steps.append(["move", manifest_tmp.name, f"{img.name}.manifest.json"])
    steps += [["retire", stale] for stale in sorted(suffixes - extras)]  # an earlier kind's
    retire_warnings = _publish(output_dir, work, recipe.name, steps,
                               {img.name for img in staged.images})
    images = []
    for img, result, final, _manifest_tmp, model, manifest in packed:
        manifest_final = output_dir / f"{img.name}.manifest.json"
        images.append(ImageResult(img.kind, img.name, final, manifest_final, manifest,
                                  [output_dir / e.name for e in result.extras], model))
        sha = model.image.sha256
        shown = f"sha256 {sha[:16]}…, {_size(model.image.size)}" if sha else \
            f"tree {model.image.tree_sha256[:16]}…"
        log.stage("package", f"{final} ({img.kind}, {recipe.format}, {recipe.compression}; "
                  f"{shown})")
    warnings = list(retire_warnings)
    if report.unmapped_owners:
        warnings.append("owners kept by number (add them to [owners]): "
                        + ", ".join(sorted(report.unmapped_owners)))
    for img, _, final, *_ in packed:  # compiled code for another architecture (formats/elf.py)
        root = final if recipe.format == "directory" else img.tree.root  # a directory: published
        elf = elfarch.warning(elfarch.mismatches(img.tree.records, root,
                                                 staged.architecture), staged.architecture)
        if elf:
            warnings.append(f"{img.name}: {elf}")
    xattrs = [x for img in staged.images for x in img.tree.dropped_xattrs]
    if xattrs:
        warnings.append(f"extended attributes not carried (only security.capability is): "
                        f"{', '.join(xattrs[:5])}" + (" …" if len(xattrs) > 5 else ""))
    replaced = [p for img in staged.images for p in img.tree.replaced]
    if replaced:
        warnings.append(f"{len(replaced)} paths written by more than one source, the later "
                        f"won: {', '.join(replaced[:5])}")
    findings = [f for img in staged.images for f in img.findings]
    warnings += [w for _, result, *_ in packed for w in result.warnings]
    return BuildResult(images, staged.decision, warnings, findings, log.timings)


def _architecture(requested: str | None, packages: list[dict]) -> str | None:
    """ARCHITECTURE= for the release file. ``auto``: the one systemd architecture the binary
    packages share (None when all are arch-independent); otherwise every binary package must
    be of the requested architecture (a DDI's partition types and the host match depend on it)."""
    arches = {sdrelease.systemd_architecture(p["architecture"]): p for p in packages}
    arches.pop(None, None)
    if requested == "auto":
        if len(arches) > 1:
            raise InputError("target.architecture", f"packages mix architectures "
                             f"{sorted(arches)}", "set target.architecture explicitly or fix "
                             "the package list")
        return next(iter(arches), None)
    for arch, package in arches.items():
        if requested != "_any" and arch != requested:
            raise InputError(package["file"], f"built for {arch}, but target.architecture is "
                             f"{requested}", "use packages of the target architecture")
    return requested


def _by_reason(dropped: dict[str, str]) -> dict[str, list[str]]:
    """Dropped paths grouped by why (the package in parentheses left out), in path order."""
    groups: dict[str, list[str]] = {}
    for path, why in sorted(dropped.items()):
        groups.setdefault(why.rsplit(" (", 1)[0], []).append(path)
    return groups


def _image_seed(recipe: Recipe, tree_sha256: str, arch: str | None, epoch: int) -> bytes:
    """Deterministic "randomness" (erofs UUID, verity salt and UUIDs, disk UUID) for one image.

    Derived from what the image *is* — its file tree (which includes the release file, so the
    kind and name), the packing settings and the epoch — not from the recipe's bytes: editing
    a comment, or moving a key path in [sign], must not change a single byte of the image."""
    settings = [recipe.format, recipe.filesystem, recipe.compression,
                str(recipe.compression_level), recipe.verity, str(arch), str(epoch)]
    return hashlib.sha256("\0".join([tree_sha256, *settings]).encode()).digest()


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
