"""The two things ``diff`` compares: an image (file or directory), its manifest, or both; and what
each side says about itself (its hashes, its detached verity files, whether it still matches its
own manifest). A side's manifest is read through the model (pipeline/stages/manifest.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ...digest import hash_file
from ...errors import InputError
from ...stages import manifest as manifest_mod
from ...stages.manifest import Manifest


@dataclass
class Side:
    """One thing being compared: an image (file or directory), its manifest, or both."""

    given: str
    manifest: Manifest | None = None
    manifest_path: Path | None = None
    image: Path | None = None
    _hashes: dict = field(default_factory=dict, repr=False)

    @property
    def is_dir(self) -> bool:
        return self.image is not None and self.image.is_dir()

    @property
    def is_file(self) -> bool:
        return self.image is not None and self.image.is_file()

    @property
    def is_ddi(self) -> bool:
        if self.is_file:
            from ...image.ddi.gpt import has_gpt

            return has_gpt(self.image)
        return self.manifest is not None and self.manifest.ddi is not None

    def recorded(self, key: str):
        """A field of the manifest's ``image`` section (None without a manifest)."""
        return None if self.manifest is None else getattr(self.manifest.image, key)

    def sha256(self, *, unsigned: bool = False) -> str | None:
        """The image's sha256 (a DDI with ``unsigned``: with its signature partition zeroed):
        computed from the file when there is one, else what the manifest records."""
        if not self.is_file:
            if unsigned and self.manifest is not None and self.manifest.ddi is not None:
                return self.manifest.ddi.unsigned_sha256
            return self.recorded("sha256")
        key = "unsigned" if unsigned and self.is_ddi else "whole"
        if key not in self._hashes:
            if key == "unsigned":
                from ...image.ddi.reader import open_ddi

                _, whole, zeroed = open_ddi(self.image).hashes()
                self._hashes["whole"], self._hashes["unsigned"] = whole, zeroed
            else:
                self._hashes["whole"] = hash_file(self.image)[0]
        return self._hashes[key]

    def detached(self, suffix: str) -> Path | None:
        """``NAME.verity``/``.roothash``/``.roothash.p7s`` next to a plain ``NAME.raw``, if there."""
        if not self.is_file or not self.image.name.endswith(".raw"):
            return None
        path = self.image.with_name(self.image.name[:-len(".raw")] + suffix)
        return path if path.is_file() else None


def load_side(path: str | Path, *, use_manifest: bool = True) -> Side:
    """An image path (its ``NAME.manifest.json`` is used when present) or a manifest path (its
    image is used when it sits next to it)."""
    p = Path(path)
    if not p.exists():
        raise InputError(str(p), "no such file or directory")
    side = Side(str(p))
    if p.is_file() and _looks_like_json(p):
        side.manifest, side.manifest_path = manifest_mod.read(p), p
        name = side.manifest.image.file
        if name and (p.parent / name).exists():
            side.image = p.parent / name
        return side
    side.image = p
    stem = p.name[:-len(".raw")] if p.name.endswith(".raw") else p.name
    candidate = p.parent / f"{stem}.manifest.json"
    if use_manifest and candidate.is_file():
        side.manifest, side.manifest_path = manifest_mod.read(candidate), candidate
    return side


def own_manifest_mismatches(side: Side, name: str | None = None) -> list[str]:
    """Where an image no longer is what its own manifest says (image sha256; detached verity
    files; the SBOM, SPDX and CycloneDX): the first thing to know about a side, since every other comparison of it trusts
    those hashes. Sentences naming the file (``name``, default the path given)."""
    manifest = side.manifest
    if manifest is None or not (side.is_file or side.is_dir):
        return []
    name = name or side.given
    out = []
    recorded = side.recorded("sha256")
    if recorded:
        actual = side.sha256()
        if actual != recorded:
            out.append(f"{name} is not the image its manifest describes (sha256 {actual[:12]}…, "
                       f"the manifest records {recorded[:12]}…): changed after the build")
    verity = manifest.verity
    if verity is not None:
        folder = side.image.parent
        vfile = verity.verity_file
        if not (folder / vfile).is_file():
            out.append(f"{vfile}, which the manifest of {name} names, is missing")
        elif hash_file(folder / vfile)[0] != verity.verity_sha256:
            out.append(f"{vfile} is not the verity tree the manifest of {name} records (sha256 "
                       "differs): changed after the build")
        rfile = verity.roothash_file
        if (folder / rfile).is_file():
            text = (folder / rfile).read_text(errors="replace").strip().lower()
            if text != verity.root_hash:
                out.append(f"{rfile} holds root hash {text[:12]}…, the manifest of {name} "
                           f"records {verity.root_hash[:12]}…")
        sfile = verity.signature_file
        if sfile and not (folder / sfile).is_file():
            out.append(f"{sfile}, which the manifest of {name} names, is missing")
        elif sfile and verity.certificate_fingerprint:
            from ...image.ddi.signature import signer_of

            found = signer_of((folder / sfile).read_bytes())
            if found and found != verity.certificate_fingerprint:
                out.append(f"{sfile} is signed by certificate {found[:12]}…, the manifest of "
                           f"{name} records {verity.certificate_fingerprint[:12]}…")
    return out + _sbom_mismatches(side, name)


def _sbom_mismatches(side: Side, name: str) -> list[str]:
    """The SBOM beside the image: ``NAME.spdx.json`` must have the sha256 the manifest records,
    and ``NAME.cdx.json`` (CycloneDX, which the manifest does not record: it is derived from
    the SPDX document) must be what that document derives. An SBOM that is not there is not
    checked (the image and its manifest are what a copy needs)."""
    import hashlib

    from ...outdir import MAX_MANIFEST, read_entry
    from ...release import sbom

    section = side.manifest.sbom
    folder = side.image.parent
    if section is None or section.sha256 is None or "/" in section.file:
        return []
    spdx = read_entry(folder, section.file, MAX_MANIFEST)
    if spdx is None:
        return []
    if hashlib.sha256(spdx).hexdigest() != section.sha256:
        return [f"{section.file} is not the SBOM the manifest of {name} records (sha256 "
                "differs): changed after the build"]
    cdx_name = section.file.removesuffix(".spdx.json") + sbom.CYCLONEDX_SUFFIX
    cdx = read_entry(folder, cdx_name, MAX_MANIFEST) if cdx_name != section.file else None
    if cdx is not None and cdx != sbom.dumps(sbom.cyclonedx(json.loads(spdx))):
        return [f"{cdx_name} is not the CycloneDX form of {section.file} (the SBOM the "
                f"manifest of {name} records): changed after the build"]
    return []


def _looks_like_json(p: Path) -> bool:
    with open(p, "rb") as fh:
        return fh.read(64).lstrip()[:1] == b"{"
