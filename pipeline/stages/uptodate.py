"""Up to date: skip a rebuild whose inputs and outputs are exactly what the manifest records.

A build records ``input_digest`` in each manifest: the sha256 of everything that decides the
image bytes and that is known before extracting — the pipeline version, the recipe's bytes
(with its ``include``), the lock's bytes, every package file's sha256, SOURCE_DATE_EPOCH from
the environment when the recipe does not pin one, and the versions of the tools and libraries
the manifest lists. Which key signs is not in the digest (an unsigned ``verify`` rebuild must
write the same manifest): it is compared with the ``certificateFingerprint`` the manifest
records for each signed part.

A rebuild is skipped only when every recorded thing is verified again: the digest, each
image's sha256 (hashed again from the file), each companion file (verity, signature, SBOM,
provenance) present and, where a hash is recorded, with that hash. Anything missing or
unreadable means "rebuild"; a directory image (no sha256) is always rebuilt.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .. import __version__
from ..errors import InputError
from ..outdir import MAX_MANIFEST, hash_entry, read_entry
from . import manifest as mf


def lock_sha256(recipe) -> str | None:
    """sha256 of the recipe's lock file, None when it has none (no ``packages`` source)."""
    from ..sources.lock import lock_path, packages_sources

    if not packages_sources(recipe):
        return None
    return hashlib.sha256(lock_path(recipe).read_bytes()).hexdigest()


def current_tool_versions(names) -> dict[str, str | None]:
    """The versions of ``names`` (a manifest's ``tools`` keys) on this machine now."""
    from .. import tools

    libraries = mf.library_versions()
    found: dict[str, str | None] = {}
    for name in names:
        if name == "sysext-pipeline":
            found[name] = __version__
        elif name == "python":
            import platform

            found[name] = platform.python_version()
        elif name in libraries or name.startswith("lib"):
            found[name] = libraries.get(name)
        else:
            found[name] = tools.version(name)
    return found


def parts(recipe, fetched, environ: dict) -> dict:
    """What the digest covers, known before anything is extracted (tools are added per image)."""
    epoch_env = environ.get("SOURCE_DATE_EPOCH") if recipe.source_date_epoch is None else None
    return {"pipeline": __version__, "recipe": recipe.sha256, "lock": lock_sha256(recipe),
            "packages": [f.sha256 for f in fetched], "source_date_epoch_env": epoch_env or None}


def digest(base: dict, tool_versions: dict) -> str:
    data = {**base, "tools": dict(sorted(tool_versions.items()))}
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":"))
                          .encode()).hexdigest()


def _load(directory: Path, name: str) -> mf.Manifest | None:
    """The manifest ``name`` in the output directory, read like every file there (a plain
    name, a regular file, no symlink, no FIFO, size-capped: see outdir.open_entry) and checked
    by the model; None when it is missing or not a valid manifest (then: rebuild)."""
    data = read_entry(directory, name, MAX_MANIFEST)
    if data is None:
        return None
    try:
        return mf.read(Path(directory) / name, data)
    except InputError:
        return None  # not a manifest we can trust to skip a build: build


def _companions_ok(directory: Path, manifest: mf.Manifest, fingerprint: str | None) -> bool:
    """Every companion the manifest names is there (with its recorded sha256), and each signed
    part was signed by the key this build would use (None: unsigned)."""
    for part in (manifest.ddi, manifest.verity):
        if part is not None and part.certificate_fingerprint != fingerprint:
            return False
    verity = manifest.verity
    if verity is not None:
        if hash_entry(directory, verity.verity_file) != verity.verity_sha256:
            return False
        for file in (verity.roothash_file, verity.signature_file):
            if (file or fingerprint) and hash_entry(directory, file) is None:
                return False
    if manifest.ddi is not None and fingerprint is None and \
            hash_entry(directory, f"{manifest.name}.roothash") is None:  # an unsigned DDI's
        return False
    sbom = manifest.sbom
    if sbom is not None and hash_entry(directory, sbom.file) != sbom.sha256:
        return False
    provenance = manifest.provenance
    if provenance is not None and (provenance.certificate_fingerprint != fingerprint or
                                   hash_entry(directory, provenance.file) is None):
        return False
    return True


def check(output_dir: Path, recipe_name: str, base: dict, fingerprint: str | None,
          ) -> list[tuple[Path, Path, mf.Manifest]] | None:
    """The (image, manifest path, manifest) of every image when the output is up to date for
    these inputs, else None. Reads and hashes; changes nothing."""
    output_dir = Path(output_dir)
    first = _load(output_dir, f"{recipe_name}.manifest.json")
    if first is None:
        return None
    found = []
    for name in [recipe_name, *first.companions]:
        if "/" in name or name.startswith("."):
            return None
        path = output_dir / f"{name}.manifest.json"
        manifest = first if name == recipe_name else _load(output_dir, path.name)
        if manifest is None or manifest.name != name or manifest.input_digest is None:
            return None
        if digest(base, current_tool_versions(manifest.tools)) != manifest.input_digest:
            return None
        file, sha = manifest.image.file, manifest.image.sha256
        if sha is None or "/" in file:
            return None  # a directory image records no sha256: never "up to date"
        if hash_entry(output_dir, file) != sha:
            return None
        if not _companions_ok(output_dir, manifest, fingerprint):
            return None
        found.append((output_dir / file, path, manifest))
    return found
