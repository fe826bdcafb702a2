"""``verify``: rebuild from what a manifest records and compare, byte for byte.

The manifest names its recipe only by file name and sha256 (a build path would make manifests
differ between machines), so the recipe is ``--recipe``, or a file with the recorded sha256 found
next to the manifest, in ``recipes/`` beside it, in ``./recipes`` or in the current directory.
Package files come from the cache by the sha256 each input recorded (a local source without a pin
is pinned to it, so a package file that changed since the build is an error, not a silent
rebuild from other bytes). SOURCE_DATE_EPOCH is given back when the manifest says it came from
the environment. The rebuild runs in a fresh temporary directory.

The rebuild is always unsigned: whoever verifies must not need the private key, and an image
signed offline (on another host, or by an HSM) could not be re-signed anyway. So verify compares
what is signed — a DDI with its signature partition as zeros (the manifest's ``unsignedSha256``),
a plain image with its ``NAME.verity`` and ``NAME.roothash`` — and then checks the original's
signature on its own: over the rebuilt root hash, with the certificate the PKCS#7 carries whose
sha256 is the fingerprint the manifest records (or the recipe's ``[sign] cert`` with that
fingerprint, or the user's ``--cert``) — no keys/ directory needed. ECDSA signatures differ on
every signing, so this is the only way they can be verified at all.

Result: ``reproduced`` — the same unsigned bytes (a directory image: the same tree), an image
that is what its own manifest records, and a signature that checks (or an unsigned image, or
``--no-signature``, which is said) — ``incomplete`` when the signature could not be checked, or
``differs`` with the explanation from pipeline/diff, tool-version differences first. Only
``reproduced`` exits 0: nothing is called reproduced that was not checked.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..digest import hash_file
from ..errors import InputError
from ..stages.manifest import Manifest
from . import diff as diff_mod
from .rebuild import Rebuilt, as_model, rebuild

LABELS = ("in the original", "in the rebuild")
TOOL_LABELS = ("in the manifest", "here")


@dataclass
class Target:
    """What is being verified: a manifest, and the image next to it when there is one."""

    manifest_path: Path
    image: Path | None
    model: Manifest  # read and checked through pipeline/stages/manifest.py


@dataclass
class VerifyResult:
    status: str  # "reproduced" | "incomplete" (reproduced, signature not checked) | "differs"
    name: str
    recipe: str
    recorded_sha256: str | None
    rebuilt_sha256: str | None
    manifest_identical: bool
    notes: list[str] = field(default_factory=list)
    report: diff_mod.Report | None = None
    kept: str | None = None
    variations: list | None = None
    signature: dict | None = None  # {"status": verified|not checked|failed|unsigned, "detail"}

    @property
    def ok(self) -> bool:
        return self.status == "reproduced" and all(
            v.status in ("reproduced", "skipped") for v in self.variations or [])

    def to_json(self) -> dict:
        return {"status": self.status, "name": self.name, "recipe": self.recipe,
                "recorded_sha256": self.recorded_sha256, "rebuilt_sha256": self.rebuilt_sha256,
                "manifest_identical": self.manifest_identical, "notes": self.notes,
                "diff": self.report.to_json() if self.report else None, "kept": self.kept,
                "signature": self.signature,
                "variations": None if self.variations is None else
                [v.to_json() for v in self.variations]}


def load_target(path: str | Path) -> Target:
    """A manifest (``NAME.manifest.json``) or an image (``NAME.raw`` or directory ``NAME``)."""
    side = diff_mod.load_side(path)
    if side.manifest is None:
        raise InputError(str(path), "no manifest next to this image",
                         f"verify needs {Path(path).name.removesuffix('.raw')}.manifest.json, "
                         "which the build wrote next to it")
    return Target(side.manifest_path.resolve(), side.image.resolve() if side.image else None,
                  side.manifest)


def recipe_candidates(target: Target) -> list[Path]:
    here = target.manifest_path.parent
    places = [here, here / "recipes", here.parent, here.parent / "recipes", Path.cwd() / "recipes",
              Path.cwd()]
    seen, found = set(), []
    name = target.model.recipe.file
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
    recorded = target.model.recipe
    want = recorded.sha256
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise InputError(str(path), "recipe not found")
        got = recipe_hash(path) or hash_file(path)[0]
        if want and got != want:
            return path.resolve(), [f"{path} is not the recorded recipe (sha256 {got[:12]}…, "
                                    f"the manifest recorded {want[:12]}… for "
                                    f"{recorded.file}): rebuilding from it anyway"]
        return path.resolve(), []
    for candidate in recipe_candidates(target):
        if recipe_hash(candidate) == want:
            return candidate, []
    raise InputError(str(target.manifest_path), f"no recipe with the recorded sha256 "
                     f"{want[:12]}… ({recorded.file}) next to the manifest, in "
                     "./recipes or the current directory", "give it with --recipe FILE")


def recipe_hash(path: Path) -> str | None:
    """The hash the manifest records for a recipe (it covers an ``include``d base too); None for
    a file that is not a valid recipe."""
    from .. import recipe as recipe_mod
    from ..errors import PipelineError

    try:
        return recipe_mod.load(path).sha256
    except PipelineError:
        return None


def compare(target: Target, rebuilt: Rebuilt, *, limit: int = 10) -> tuple[bool, bool,
                                                                             diff_mod.Report | None]:
    """(unsigned content reproduced, manifest identical apart from signatures, diff report);
    the manifests are compared in their unsigned view (Manifest.unsigned)."""
    original = diff_mod.Side(str(target.image or target.manifest_path), target.model,
                             target.manifest_path, target.image)
    rebuilt_model = _rebuilt_model(rebuilt)
    here = diff_mod.Side(str(rebuilt.image), rebuilt_model, rebuilt.manifest_path,
                         rebuilt.image)
    manifest_identical = target.model.unsigned() == rebuilt_model.unsigned()
    report = diff_mod.diff(original, here, limit=limit, labels=LABELS, tool_labels=TOOL_LABELS,
                           unsigned=True)
    same = report.identical and target.model.unsigned_sha256 in (
        None, rebuilt_model.unsigned_sha256)
    return same, manifest_identical, report


def _rebuilt_model(rebuilt: Rebuilt) -> Manifest:
    return rebuilt.model or as_model(rebuilt.manifest)


@dataclass
class SignatureCheck:
    status: str  # verified | not checked | failed | unsigned
    detail: str

    def to_json(self) -> dict:
        return {"status": self.status, "detail": self.detail}

    def line(self) -> str:
        return f"signature {self.status}: {self.detail}" if self.detail else \
            f"signature {self.status}"


def check_signature(target: Target, rebuilt: Rebuilt, cert: str | Path | None = None,
                    ) -> SignatureCheck | None:
    """Check the original image's signature (a DDI's signature partition, or NAME.roothash.p7s)
    against the rebuilt root hash; None when the image has no verity at all. Never reads a
    private key.

    The certificate is ``cert`` when the user gives one; else the one the PKCS#7 carries whose
    sha256 is the fingerprint the manifest records (pinned: a signature by anyone else, or one
    whose embedded certificate was swapped, does not verify); else the recipe's ``[sign] cert``
    when it has that fingerprint (a signature made without embedded certificates). Anything
    else is "not checked", which verify does not call reproduced."""
    from ..image.ddi import signature as sig
    from ..keys import fingerprint, load_certificate

    section = target.model.signed_section
    if section is None:
        if cert is not None:
            return SignatureCheck("failed", f"--cert {cert} given, but the manifest records no "
                                  "verity and so no signature to check")
        return None
    recorded = section.certificate_fingerprint
    root_hash = _rebuilt_model(rebuilt).root_hash
    given = load_certificate(Path(cert)) if cert is not None else None
    if target.image is None or not target.image.is_file():
        if recorded or given is not None:
            return SignatureCheck("not checked", "the image is not next to the manifest")
        return SignatureCheck("unsigned", "")
    try:
        found = _original_signature(target, section)
    except InputError as err:
        return SignatureCheck("failed", err.line())
    if found is None:
        if recorded:
            return SignatureCheck("failed", f"the manifest records a signature by certificate "
                                  f"{recorded[:12]}…, but {_signature_place(target)} is empty "
                                  "or missing")
        if given is not None:
            return SignatureCheck("failed", f"--cert {cert} given, but the image is unsigned")
        return SignatureCheck("unsigned", "")
    der, signed_hash, claimed = found
    if signed_hash is not None and signed_hash != root_hash:
        return SignatureCheck("failed", f"it signs root hash {signed_hash[:12]}…, the rebuild's "
                              f"is {str(root_hash)[:12]}…")
    if recorded and claimed and claimed != recorded:
        return SignatureCheck("failed", f"signed by certificate {claimed[:12]}…, the manifest "
                              f"records {recorded[:12]}…")
    embedded = sig.SignatureBlob(root_hash or "", claimed, der).embedded_certificates()
    if given is not None:
        certificate, source = given, f"--cert {cert}"
        if recorded and fingerprint(given) != recorded:
            return SignatureCheck("failed", f"{cert} is certificate {fingerprint(given)[:12]}…, "
                                  f"the manifest records {recorded[:12]}…")
    elif not recorded:
        return SignatureCheck("not checked", "the manifest records no certificate fingerprint "
                              "to pin the signer by (give the signer's certificate with --cert)")
    else:
        pinned = [c for c in embedded if fingerprint(c) == recorded]
        certificate, source = (pinned[0], "the certificate it carries") if pinned else \
            (None, "")
        if certificate is None:
            certificate, source, why = _recipe_certificate(rebuilt.recipe, recorded)
            if certificate is None:
                carried = ", ".join(fingerprint(c)[:12] + "…" for c in embedded) or "none"
                return SignatureCheck("not checked", f"no certificate with the recorded "
                                      f"fingerprint {recorded[:12]}… to check it with: the "
                                      f"signature carries {carried}; {why} (give it with "
                                      "--cert)")
    ok, reason = sig.verify(der, root_hash, certificate)
    if not ok:
        return SignatureCheck("failed", f"does not verify with {source} ({fingerprint(certificate)[:12]}…) "
                              f"over the rebuilt root hash {root_hash[:12]}…: {reason}")
    text = f"by {certificate.subject.rfc4514_string()} ({source}, sha256 " \
        f"{fingerprint(certificate)[:12]}…"
    text += (", the fingerprint the manifest records" if recorded else "") + \
        f") over the rebuilt root hash {root_hash[:12]}…"
    if str(section.signature_algorithm or "").startswith("ecdsa"):
        text += "; ECDSA signatures differ on every signing, so the signature was checked " \
            "rather than compared"
    return SignatureCheck("verified", text)


def _recipe_certificate(recipe_path: Path, recorded: str):
    """(certificate, how it is named, why not) from the recipe's ``[sign] cert`` when it has
    the recorded fingerprint."""
    from ..keys import fingerprint, load_certificate

    cert_path = (_recipe_signing(recipe_path) or {}).get("cert")
    if cert_path is None:
        return None, "", "the recipe names no certificate ([sign] cert)"
    if not Path(cert_path).is_file():
        return None, "", f"the certificate the recipe names, {cert_path}, is not here"
    certificate = load_certificate(cert_path)
    if fingerprint(certificate) != recorded:
        return None, "", f"{cert_path} is certificate {fingerprint(certificate)[:12]}…"
    return certificate, str(cert_path), ""


def _original_signature(target: Target, section) -> tuple[bytes, str | None, str | None] | None:
    """(DER, the root hash it claims to sign or None, the certificate it names or None) from
    the original image, or None when it carries no signature."""
    from ..image.ddi import signature as sig

    image = target.image
    if target.model.ddi is not None:
        from ..image.ddi.reader import open_ddi

        carried = open_ddi(image).signature
        if carried is None:
            return None
        if carried.error is not None:
            raise carried.error
        blob = carried.blob
        return None if blob is None else (blob.der, blob.root_hash, blob.fingerprint)
    p7s = image.with_name(section.signature_file or
                          image.name.removesuffix(".raw") + ".roothash.p7s")
    if not p7s.is_file():
        return None
    roothash = image.with_name(section.roothash_file or
                               image.name.removesuffix(".raw") + ".roothash")
    signed = roothash.read_text().strip().lower() if roothash.is_file() else None
    return sig.read_p7s(p7s), signed, None


def _signature_place(target: Target) -> str:
    if target.model.ddi is not None:
        return f"the signature partition of {target.image.name}"
    return f"{target.image.name.removesuffix('.raw')}.roothash.p7s"


def _recipe_signing(recipe_path: Path) -> dict | None:
    from .. import recipe as recipe_mod
    from ..errors import PipelineError

    try:
        return recipe_mod.load(recipe_path).signing
    except PipelineError:
        return None


def verify(path: str | Path, *, recipe: str | Path | None = None, cache_dir: str | None = None,
           offline: bool = False, keep: bool = False, limit: int = 10, work_dir: str | None = None,
           vary: list[str] | None = None, log=None, cert: str | Path | None = None,
           no_signature: bool = False) -> VerifyResult:
    """Rebuild and compare. ``cert``: the certificate to check the signature with (default:
    the one the signature carries, pinned by the manifest's fingerprint); ``no_signature``: do
    not check the signature, and say so (otherwise a signature that could not be checked is
    not "reproduced")."""
    if vary:
        from . import vary as vary_mod

        vary_mod.select(vary)  # a misspelt variation is bad input before any work
    target = load_target(path)
    recipe_path, notes = find_recipe(target, recipe)
    workdir = Path(tempfile.mkdtemp(prefix="sysext-verify-", dir=work_dir))
    os.chmod(workdir, 0o755)
    try:
        rebuilt = rebuild(target.model, recipe_path, workdir / "out", cache_dir,
                          offline=offline, log=log)
        same, manifest_same, report = compare(target, rebuilt, limit=limit)
        if no_signature:
            signature = SignatureCheck("not checked", "--no-signature given") \
                if target.model.signed else None
        else:
            signature = check_signature(target, rebuilt, cert)
        notes = report.notes + notes + _image_notes(target)  # tool versions first
        if signature is not None and signature.status != "unsigned":
            notes.append(signature.line())
        if report.identical and not same:
            notes.append("the rebuild is the image given, but not the sha256 its manifest "
                         "records")
        # The image given must be what its own manifest says (sha256, detached files): a
        # reproduced manifest next to another image is not a reproduced image.
        consistent = not [u for u in report.unverified if u["side"] == "a"]
        provenance = None if no_signature else _check_provenance(target, recipe_path, cert)
        if provenance is not None:
            notes.append(f"provenance {provenance[0]}: {provenance[1]}")
        if not (same and consistent) or (signature and signature.status == "failed") or \
                (provenance and provenance[0] == "failed"):
            status = "differs"
        elif provenance and provenance[0] == "not checked":
            status = "incomplete"
            notes.append("the provenance signature was not checked: give the signer's "
                         "certificate with --cert FILE, or --no-signature")
        elif signature and signature.status == "not checked" and not no_signature:
            status = "incomplete"
            notes.append("not everything was checked: give the signer's certificate with "
                         "--cert FILE, or --no-signature to accept an unchecked signature")
        else:
            status = "reproduced"
        result = VerifyResult(
            status=status,
            name=target.model.name, recipe=str(recipe_path),
            recorded_sha256=target.model.image.sha256,
            rebuilt_sha256=_rebuilt_model(rebuilt).image.sha256,
            manifest_identical=manifest_same, notes=notes,
            report=None if same and manifest_same else report,
            signature=signature.to_json() if signature else None)
        if vary:
            from . import vary as vary_mod

            # Variations are compared with this rebuild: unsigned like them, so a signed
            # original does not make every row differ in its signature.
            reference = diff_mod.Side(str(rebuilt.image), _rebuilt_model(rebuilt),
                                      rebuilt.manifest_path, rebuilt.image)
            result.variations = vary_mod.run(vary, target=target, recipe=recipe_path,
                                             reference=reference, cache_dir=cache_dir,
                                             offline=offline, workdir=workdir, log=log)
        if keep:
            result.kept = str(workdir)
        return result
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _check_provenance(target: Target, recipe_path: Path, cert) -> tuple[str, str] | None:
    """The NAME.provenance.json the manifest points to, checked (pipeline/release/provenance.py) with
    ``--cert`` or the recipe's ``[sign] cert``."""
    from ..keys import load_certificate
    from ..release import provenance

    certificates = []
    if cert is not None:
        certificates.append(load_certificate(Path(cert)))
    cert_path = (_recipe_signing(recipe_path) or {}).get("cert")
    if cert is None and cert_path is not None and Path(cert_path).is_file():
        certificates.append(load_certificate(Path(cert_path)))
    # release/ reads no model (it may not import stages/): it gets the checked manifest's JSON
    return provenance.check(target.model.to_json(), target.manifest_path, certificates)


def _image_notes(target: Target) -> list[str]:
    """Said when the image is absent (an image that no longer matches its manifest is said by
    diff, which checks both sides the same way: diff.own_manifest_mismatches)."""
    if target.image is None:
        return [f"{target.model.image.file} is not next to the manifest: compared with the hashes "
                "the manifest records"]
    return []


def human_lines(result: VerifyResult) -> list[str]:
    image = result.rebuilt_sha256 or result.recorded_sha256
    if result.status == "reproduced":
        signed = result.signature and result.signature["status"] != "unsigned"
        what = (f"{'unsigned image ' if signed else ''}sha256 {image}" if image else
                "identical file tree")
        head = f"reproduced: {result.name} ({what})"
        if not result.manifest_identical:
            fields = sorted(result.report.fields("manifest")) if result.report else []
            head += "; the manifest differs: " + (", ".join(fields) or "formatting")
        lines = [head] + [f"  {n}" for n in result.notes]
    elif result.status == "incomplete":
        what = f"unsigned image sha256 {image}" if image else "identical file tree"
        lines = [f"incomplete: {result.name} ({what} reproduced; the signature was not "
                 "checked)"] + [f"  {n}" for n in result.notes]
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
