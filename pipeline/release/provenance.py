"""How an image was made: an in-toto v1 Statement with a SLSA provenance v1 predicate
(``NAME.provenance.json``), and the SBOM next to it (pipeline/release/sbom.py).

Subject: the image file and its sha256. Resolved dependencies: every input package with its sha256
and purl. Builder: this tool and its version. External parameters: the recipe's and the lock's
file names and sha256; internal ones: the epoch and the tool versions the manifest records. No
time stamp of the run, host name or path: a rebuild writes the same bytes.

With a release key configured (the recipe's ``[sign]``), the file is a DSSE envelope around the
statement, signed with that key (RSA PKCS#1 v1.5 with SHA-256: the same bytes on every signing;
an ECDSA key signs too, differently each time); ``keyid`` is the sha256 of the signer's DER
certificate, the fingerprint the rest of the project pins certificates by. Unsigned (no key, or
``build --unsigned``), the file is the bare statement. The manifest records both companions:
``sbom`` (file, sha256) and ``provenance`` (file, the sha256 of the statement, whether it is
wrapped in a signed envelope or not).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from .. import __version__, jsonout
from ..errors import InputError
from . import sbom

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
BUILD_TYPE = "https://sysext-pipeline.invalid/build/v1"
BUILDER_ID = "https://sysext-pipeline.invalid/builder"
SBOM_SUFFIX = ".spdx.json"
PROVENANCE_SUFFIX = ".provenance.json"
#: A provenance file larger than this is not read (a statement lists packages, not files).
MAX_PROVENANCE = 64 << 20


def _subjects(manifest: dict) -> list[dict]:
    image = manifest["image"]
    digest = {"sha256": image["sha256"]} if image.get("sha256") else \
        {"sysext-pipeline-tree-sha256": image["tree_sha256"]}
    subjects = [{"name": image["file"], "digest": digest}]
    unsigned = (manifest.get("ddi") or {}).get("unsignedSha256")
    if unsigned and unsigned != image.get("sha256"):  # what `sign` signs again, offline
        subjects.append({"name": image["file"], "digest": {"sha256": unsigned},
                         "annotations": {"sysext-pipeline": "the image with its signature "
                                         "partition zeroed (ddi.unsignedSha256)"}})
    return subjects


def _invocation(manifest: dict) -> str:
    image = manifest["image"]
    return f"{manifest['name']}@{image.get('sha256') or image['tree_sha256']}"


def statement(manifest: dict, target: dict, lock: dict | None) -> dict:
    dependencies = [
        {"name": p["file"], "uri": sbom.purl(p, target), "digest": {"sha256": p["sha256"]},
         "annotations": {"source": p["source"]}}
        for p in sorted(manifest["inputs"], key=lambda p: (p["name"], p["version"],
                                                           p["architecture"], p["sha256"]))]
    image = manifest["image"]
    external = {"recipe": dict(manifest["recipe"])}
    if lock:
        external["lock"] = lock
    return {
        "_type": STATEMENT_TYPE,
        "subject": _subjects(manifest),
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external,
                "internalParameters": {
                    "kind": manifest["kind"], "name": manifest["name"],
                    "version": manifest.get("version"),
                    "source_date_epoch": manifest["source_date_epoch"],
                    "image": {k: image.get(k) for k in ("format", "filesystem", "compression",
                                                        "compression_level", "verity")},
                    "tools": manifest.get("tools", {}),
                },
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": {"sysext-pipeline": __version__}},
                "metadata": {"invocationId": _invocation(manifest)},
            },
        },
    }


def canonical(data: dict) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what is signed."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def _hash_and_padding(public_key):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    if isinstance(public_key, rsa.RSAPublicKey):
        return (padding.PKCS1v15(), hashes.SHA256())
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return (ec.ECDSA(hashes.SHA256()),)
    raise InputError("provenance", f"cannot sign with a {type(public_key).__name__}")


def envelope(payload: bytes, signer) -> dict:
    """A DSSE envelope of ``payload`` signed by ``signer`` (pipeline.keys.Signer)."""
    args = _hash_and_padding(signer.key.public_key())
    signature = signer.key.sign(pae(PAYLOAD_TYPE, payload), *args)
    return {"payloadType": PAYLOAD_TYPE,
            "payload": base64.b64encode(payload).decode(),
            "signatures": [{"keyid": signer.fingerprint,
                            "sig": base64.b64encode(signature).decode(),
                            "cert": base64.b64encode(signer.cert_der).decode()}]}


def dumps(data: dict) -> bytes:
    return jsonout.pretty(data, ensure_ascii=False)


def lock_parameter(recipe) -> dict | None:
    """The recipe's lock file (name and sha256) when it has one."""
    lock = Path(recipe.path).with_suffix(".lock")
    try:
        data = lock.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    return {"file": lock.name, "sha256": hashlib.sha256(data).hexdigest()}


def read_facts(fetched, report) -> list[sbom.PackageFacts]:
    """The SBOM facts of every fetched package (``report``: the extraction's, whose packages
    are the manifest's inputs in the same order, with the copyright files it kept). A deb's
    come from the control text extraction read (its bytes' sha256 checked there: no second
    read); an rpm's (and a deb's whose reader kept no control text) from a bounded re-read of
    the file, whose sha256 is checked again."""
    infos = getattr(report, "infos", None) or [None] * len(report.packages)
    return [sbom.deb_facts(info.control, report.copyrights.get(p["name"]))
            if f.source.format == "deb" and getattr(info, "control", None) is not None else
            sbom.package_facts(f.path, f.source.format, f.sha256, f.filename,
                               report.copyrights.get(p["name"]))
            for f, p, info in zip(fetched, report.packages, infos)]


def write_companions(workdir: Path, manifest: dict, recipe, facts, signer) -> list[Path]:
    """Write NAME.spdx.json, NAME.cdx.json (CycloneDX 1.6 of the same document) and
    NAME.provenance.json into ``workdir`` and point the manifest at the SPDX and provenance
    files; the files written (the build publishes them with the image)."""
    name = manifest["name"]
    target = dict(recipe.target)
    spdx = sbom.document(manifest, facts, target)
    doc = sbom.dumps(spdx)
    sbom_path = workdir / f"{name}{SBOM_SUFFIX}"
    sbom_path.write_bytes(doc)
    cdx_path = workdir / f"{name}{sbom.CYCLONEDX_SUFFIX}"
    cdx_path.write_bytes(sbom.dumps(sbom.cyclonedx(spdx)))
    payload = canonical(statement(manifest, target, lock_parameter(recipe)))
    data = dumps(envelope(payload, signer)) if signer is not None else \
        dumps(json.loads(payload))
    prov_path = workdir / f"{name}{PROVENANCE_SUFFIX}"
    prov_path.write_bytes(data)
    manifest["sbom"] = {"file": sbom_path.name, "sha256": hashlib.sha256(doc).hexdigest(),
                        "format": "SPDX-2.3"}
    manifest["provenance"] = {"file": prov_path.name, "format": PREDICATE_TYPE,
                              "statement_sha256": hashlib.sha256(payload).hexdigest(),
                              "certificateFingerprint": signer.fingerprint if signer else None}
    return [sbom_path, cdx_path, prov_path]


def after_signing(directory: Path, manifest: dict, signer) -> None:
    """``sign`` changed the image (a DDI's bytes) or its signature (detached verity): bring the
    SBOM and provenance the manifest names up to date, as a signed build writes them — the
    image's checksum, the statement's subjects, and a DSSE envelope when ``signer`` (the
    private key) is at hand (a signature made elsewhere, ``--signature``, leaves the statement
    unsigned). ``manifest`` is updated; written before the manifest is."""
    doc_section, prov_section = manifest.get("sbom"), manifest.get("provenance")
    if isinstance(doc_section, dict) and isinstance(doc_section.get("file"), str):
        path = directory / doc_section["file"]
        if path.is_file() and "/" not in doc_section["file"]:
            doc = json.loads(path.read_bytes())
            sbom.set_image(doc, manifest)
            data = sbom.dumps(doc)
            _replace(path, data)
            cdx = path.with_name(path.name.removesuffix(SBOM_SUFFIX) + sbom.CYCLONEDX_SUFFIX)
            if cdx.is_file() and not cdx.is_symlink():  # derived from it: follows it
                _replace(cdx, sbom.dumps(sbom.cyclonedx(doc)))
            doc_section["sha256"] = hashlib.sha256(data).hexdigest()
    if isinstance(prov_section, dict) and isinstance(prov_section.get("file"), str):
        path = directory / prov_section["file"]
        if path.is_file() and "/" not in prov_section["file"]:
            payload, _env = load(path)
            statement_ = json.loads(payload)
            statement_["subject"] = _subjects(manifest)
            statement_["predicate"]["runDetails"]["metadata"]["invocationId"] = \
                _invocation(manifest)
            payload = canonical(statement_)
            _replace(path, dumps(envelope(payload, signer)) if signer is not None else
                     dumps(json.loads(payload)))
            prov_section["statement_sha256"] = hashlib.sha256(payload).hexdigest()
            prov_section["certificateFingerprint"] = signer.fingerprint if signer else None


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


# --- checking ---------------------------------------------------------------------------------

def load(path: Path) -> tuple[bytes, dict | None]:
    """(the statement's canonical bytes, the envelope or None) of a provenance file."""
    from ..outdir import read_entry

    data = read_entry(path.parent, path.name, MAX_PROVENANCE)
    if data is None:
        raise InputError(str(path), "missing, not a regular file or too large")
    try:
        doc = json.loads(data)
    except ValueError as err:
        raise InputError(str(path), f"not JSON: {err}") from None
    if not isinstance(doc, dict):
        raise InputError(str(path), "not a provenance statement or DSSE envelope")
    if "payload" in doc:
        if doc.get("payloadType") != PAYLOAD_TYPE or not isinstance(doc.get("payload"), str):
            raise InputError(str(path), f"a DSSE envelope whose payloadType is not {PAYLOAD_TYPE}")
        try:
            payload = base64.b64decode(doc["payload"], validate=True)
            statement_ = json.loads(payload)
        except ValueError:
            raise InputError(str(path), "the envelope's payload is not base64 JSON") from None
        if not isinstance(statement_, dict):
            raise InputError(str(path), "the envelope's payload is not a statement")
        return canonical(statement_), doc
    return canonical(doc), None


def check(manifest: dict, manifest_path: Path, certificates: list) -> tuple[str, str] | None:
    """Check the provenance the manifest points to: ("ok"|"unsigned"|"not checked"|"failed",
    words), or None when the manifest names none. ``certificates``: candidates (x509) to verify
    a signature with; the one whose fingerprint is the signature's keyid is used."""
    from cryptography.exceptions import InvalidSignature

    from ..keys import fingerprint

    section = manifest.get("provenance")
    if not isinstance(section, dict):
        return None
    file = section.get("file")
    if not isinstance(file, str) or "/" in file or file in ("", ".", ".."):
        return "failed", f"the manifest names provenance file {file!r}"
    path = manifest_path.parent / file
    try:
        payload, env = load(path)
    except InputError as err:
        return "failed", err.line()
    if hashlib.sha256(payload).hexdigest() != section.get("statement_sha256"):
        return "failed", f"{file}: its statement is not the one the manifest records"
    subjects = json.loads(payload).get("subject")
    digests = {s.get("digest", {}).get("sha256") for s in subjects if isinstance(s, dict)} \
        if isinstance(subjects, list) else set()
    image = manifest.get("image") or {}
    # a DDI signed again later (`sign`) is the unsigned image the statement names + a signature
    images = {image.get("sha256"), (manifest.get("ddi") or {}).get("unsignedSha256")} - {None}
    if images and not digests & images:
        return "failed", f"{file}: its subject is not the image the manifest records"
    if env is None:
        return "unsigned", f"{file}: unsigned statement, as the manifest records"
    sigs = env.get("signatures")
    if not isinstance(sigs, list) or not sigs or not all(isinstance(s, dict) for s in sigs):
        return "failed", f"{file}: a DSSE envelope without signatures"
    by_print = {fingerprint(c): c for c in certificates}
    pinned = section.get("certificateFingerprint")
    for sig in sigs:  # a certificate the envelope carries, when the manifest pins it
        carried = _certificate(sig.get("cert"))
        if carried is not None and fingerprint(carried) == pinned:
            by_print.setdefault(pinned, carried)
    for sig in sigs:
        cert = by_print.get(sig.get("keyid"))
        if cert is None:
            continue
        try:
            raw = base64.b64decode(sig.get("sig") or "", validate=True)
            cert.public_key().verify(raw, pae(PAYLOAD_TYPE, json_payload(env)),
                                     *_hash_and_padding(cert.public_key()))
        except (InvalidSignature, ValueError, InputError):
            return "failed", f"{file}: the DSSE signature does not verify with certificate " \
                f"{sig.get('keyid', '')[:12]}…"
        return "ok", f"{file}: DSSE signature verified (certificate " \
            f"{cert.subject.rfc4514_string()}, sha256 {fingerprint(cert)[:12]}…)"
    keyids = ", ".join(str(s.get("keyid"))[:12] + "…" for s in sigs)
    return "not checked", f"{file}: signed by {keyids}, and no certificate with that " \
        "fingerprint is at hand (give it with --cert)"


def _certificate(text):
    from cryptography import x509

    if not isinstance(text, str):
        return None
    try:
        return x509.load_der_x509_certificate(base64.b64decode(text, validate=True))
    except ValueError:
        return None


def json_payload(env: dict) -> bytes:
    return base64.b64decode(env["payload"], validate=True)
