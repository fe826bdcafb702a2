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
import platform
from pathlib import Path

from .. import __version__
from ..outdir import MAX_MANIFEST, hash_entry, read_entry

#: The manifest field (a sha256 hex digest).
FIELD = "input_digest"


def lock_sha256(recipe) -> str | None:
    """sha256 of the recipe's lock file, None when it has none (no ``packages`` source)."""
    from ..sources.lock import lock_path, packages_sources

    if not packages_sources(recipe):
        return None
    return hashlib.sha256(lock_path(recipe).read_bytes()).hexdigest()


def current_tool_versions(names) -> dict[str, str | None]:
    """The versions of ``names`` (a manifest's ``tools`` keys) on this machine now."""
    from .. import tools
    from . import manifest as mf

    libraries = mf.library_versions()
    found: dict[str, str | None] = {}
    for name in names:
        if name == "sysext-pipeline":
            found[name] = __version__
        elif name == "python":
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


def _load(directory: Path, name: str) -> dict | None:
    """The manifest ``name`` in the output directory, read like every file there: a plain
    name, a regular file, no symlink, no FIFO, size-capped (see outdir.open_entry)."""
    data = read_entry(directory, name, MAX_MANIFEST)
    try:
        data = json.loads(data) if data is not None else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _companions_ok(directory: Path, manifest: dict, fingerprint: str | None) -> bool:
    """Every companion the manifest names is there (with its recorded sha256), and each signed
    part was signed by the key this build would use (None: unsigned)."""
    name = manifest.get("name")
    for section in ("ddi", "verity"):
        part = manifest.get(section)
        if part is None:
            continue
        if not isinstance(part, dict) or "certificateFingerprint" not in part or \
                part["certificateFingerprint"] != fingerprint:
            return False
    verity = manifest.get("verity")
    if isinstance(verity, dict):
        verity_file = verity.get("verityFile")
        if not isinstance(verity_file, str) or \
                hash_entry(directory, verity_file) != verity.get("veritySha256"):
            return False
        for key in ("roothashFile", "signatureFile"):
            if (verity.get(key) or fingerprint) and \
                    hash_entry(directory, verity.get(key)) is None:
                return False
    if isinstance(manifest.get("ddi"), dict) and fingerprint is None and \
            hash_entry(directory, f"{name}.roothash") is None:  # an unsigned DDI's companion
        return False
    sbom = manifest.get("sbom")
    if sbom is not None and (not isinstance(sbom, dict) or not isinstance(sbom.get("file"), str)
                             or hash_entry(directory, sbom["file"]) != sbom.get("sha256")):
        return False
    provenance = manifest.get("provenance")
    if provenance is not None:
        if not isinstance(provenance, dict) or not isinstance(provenance.get("file"), str) or \
                provenance.get("certificateFingerprint") != fingerprint or \
                hash_entry(directory, provenance["file"]) is None:
            return False
    return True


def check(output_dir: Path, recipe_name: str, base: dict, fingerprint: str | None,
          ) -> list[tuple[Path, Path, dict]] | None:
    """The (image, manifest path, manifest) of every image when the output is up to date for
    these inputs, else None. Reads and hashes; changes nothing."""
    output_dir = Path(output_dir)
    first = _load(output_dir, f"{recipe_name}.manifest.json")
    if first is None:
        return None
    companions = first.get("companions")
    if not isinstance(companions, list) or not all(isinstance(c, str) for c in companions):
        return None
    found = []
    for name in [recipe_name, *companions]:
        if "/" in name or name.startswith("."):
            return None
        path = output_dir / f"{name}.manifest.json"
        manifest = first if name == recipe_name else _load(output_dir, path.name)
        if manifest is None or manifest.get("name") != name:
            return None
        recorded = manifest.get(FIELD)
        tools = manifest.get("tools")
        image = manifest.get("image")
        if not isinstance(recorded, str) or not isinstance(tools, dict) or \
                not isinstance(image, dict):
            return None
        if digest(base, current_tool_versions(tools)) != recorded:
            return None
        file, sha = image.get("file"), image.get("sha256")
        if not isinstance(file, str) or not isinstance(sha, str) or "/" in file:
            return None  # a directory image records no sha256: never "up to date"
        if hash_entry(output_dir, file) != sha:
            return None
        if not _companions_ok(output_dir, manifest, fingerprint):
            return None
        found.append((output_dir / file, path, manifest))
    return found
