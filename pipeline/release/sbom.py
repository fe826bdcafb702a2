"""What is in an image: an SPDX 2.3 document (``NAME.spdx.json``), one package per input package.

Everything in it comes from the build's inputs, never from the clock or the machine: the creation
time is the build's epoch (SOURCE_DATE_EPOCH), the document namespace is derived from the image's
sha256 (or its file tree's), lists are sorted. Two builds of the same inputs write the same bytes.

Per package: name, version, architecture, a purl (``pkg:deb/debian/jq@1.6-2.1%2Bdeb12u2?arch=amd64
&distro=debian-12``, ``pkg:rpm/fedora/...``), the sha256 of the package file, the supplier (a deb's
Maintainer, an rpm's Vendor or Packager) and the licence: from the Debian copyright file when it is
machine-readable (DEP-5), from the RPM License tag, else NOASSERTION. A licence name that is not an
SPDX identifier becomes a ``LicenseRef-`` with its text in ``hasExtractedLicensingInfos``, so the
document stays valid for SPDX validators.

A deb's facts come from what extraction read (its control text and copyright file, from bytes
whose sha256 extraction checked against the one the fetch stage verified: :func:`deb_facts`); an
rpm's from a second, bounded read of its header (the rest of the file only hashed), whose sha256
must again be the verified one (:func:`package_facts`, also a deb's when no control text was kept).
"""

from __future__ import annotations

import hashlib
import re
import struct
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__, jsonout
from ..errors import InputError
from ..formats.ar import read_ar
from ..formats.compression import (
    HashingReader,
    Limits,
    check_read_sha256,
    open_decompressed,
    read_exact,
    read_upto,
)
from ..formats.deb import parse_control
from ..formats.entry import FILE
from ..formats.tar import tar_entries

NOASSERTION = "NOASSERTION"
#: Longest copyright file or control file read for the SBOM.
MAX_TEXT = 1 << 20
#: Longest licence text carried into the document per licence.
MAX_LICENSE_TEXT = 16 << 10

#: SPDX identifiers (and Debian's short names for them) that are common in distribution packages.
#: Anything else becomes a LicenseRef- (still valid SPDX), so no licence list is needed at run time.
SPDX_IDS = {i.lower(): i for i in (
    "0BSD", "AFL-2.1", "AFL-3.0", "AGPL-3.0-only", "AGPL-3.0-or-later", "Apache-1.1",
    "Apache-2.0", "APSL-2.0", "Artistic-1.0", "Artistic-1.0-Perl", "Artistic-2.0",
    "BSD-1-Clause", "BSD-2-Clause", "BSD-3-Clause", "BSD-4-Clause", "BSL-1.0", "bzip2-1.0.6",
    "CC-BY-3.0", "CC-BY-4.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0", "CC0-1.0", "CDDL-1.0", "curl",
    "EPL-1.0", "EPL-2.0", "FSFAP", "FSFUL", "FSFULLR", "FTL", "GFDL-1.2-or-later",
    "GFDL-1.3-or-later", "GPL-1.0-only", "GPL-1.0-or-later", "GPL-2.0-only", "GPL-2.0-or-later",
    "GPL-3.0-only", "GPL-3.0-or-later", "HPND", "IJG", "ISC", "LGPL-2.0-only",
    "LGPL-2.0-or-later", "LGPL-2.1-only", "LGPL-2.1-or-later", "LGPL-3.0-only",
    "LGPL-3.0-or-later", "Libpng", "libtiff", "MIT", "MIT-0", "MPL-1.1", "MPL-2.0", "NCSA",
    "OFL-1.1", "OpenSSL", "PHP-3.01", "PostgreSQL", "PSF-2.0", "Python-2.0", "Ruby", "Sleepycat",
    "Unicode-DFS-2016", "Unlicense", "Vim", "W3C", "WTFPL", "X11", "Zlib", "ZPL-2.1",
)}
#: Debian (DEP-5) short names that differ from the SPDX identifier.
DEBIAN_NAMES = {
    "expat": "MIT", "bsd-2-clause": "BSD-2-Clause", "bsd-3-clause": "BSD-3-Clause",
    "bsd-4-clause": "BSD-4-Clause", "zlib": "Zlib", "public-domain": None, "gpl": "GPL-1.0-or-later",
    "lgpl": "LGPL-2.0-or-later", "apache-2": "Apache-2.0", "psf-2": "PSF-2.0",
    "mpl-2": "MPL-2.0", "artistic": "Artistic-1.0-Perl", "cc0": "CC0-1.0",
}
_GNU = re.compile(r"^(a?gpl|lgpl|gfdl)-(\d)(?:\.(\d))?(\+?)$", re.I)
_SAFE_REF = re.compile(r"[^A-Za-z0-9.-]+")


@dataclass(frozen=True)
class PackageFacts:
    """What the SBOM says about one input package beyond the manifest's record."""

    supplier: str = NOASSERTION
    license: str | None = None  # the licence as the package states it (None: not machine-readable)
    license_text: str = ""  # the stand-alone licence texts of a DEP-5 file, for LicenseRefs
    homepage: str | None = None


# --- reading the facts ---------------------------------------------------------------------

def package_facts(path: Path, fmt: str, sha256: str, filename: str,
                  copyright_text: bytes | None = None) -> PackageFacts:
    """The facts of one package file (``fmt`` deb or rpm), read with bounded memory; the bytes
    read must hash to ``sha256`` (what the fetch stage verified). ``copyright_text``: a deb's
    usr/share/doc/NAME/copyright, as extraction found it."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        stream = HashingReader(fh, digest)
        facts = _deb_facts(stream, filename, copyright_text) if fmt == "deb" else \
            _rpm_facts(stream, filename)
        stream.drain()
    check_read_sha256(filename, digest.hexdigest(), sha256, "the bytes read for the SBOM")
    return facts


def _deb_facts(stream, filename: str, copyright_bytes: bytes | None) -> PackageFacts:
    limits = Limits()
    control = ""
    for member in read_ar(stream, filename):
        where = f"{filename}:{member.name}"
        if member.name.startswith("control.tar"):
            for entry in tar_entries(open_decompressed(member.data, member.name, where, limits),
                                     where):
                if entry.kind == FILE and entry.path.removeprefix("./") == "control" and \
                        entry.size <= MAX_TEXT:
                    control = read_upto(entry.data, entry.size).decode("utf-8", "replace")
            break  # data.tar: only hashed (extraction kept the copyright file)
    return _deb_control_facts(control, copyright_bytes)


def deb_facts(control: str, copyright_bytes: bytes | None) -> PackageFacts:
    """The facts of a deb from the control text extraction parsed (pipeline.formats.deb decodes
    it with surrogateescape; this reads it as :func:`package_facts` does, bytes with "replace",
    none over MAX_TEXT) — from bytes whose sha256 extraction checked, as package_facts' are."""
    raw = control.encode("utf-8", "surrogateescape")
    return _deb_control_facts(raw.decode("utf-8", "replace") if len(raw) <= MAX_TEXT else "",
                              copyright_bytes)


def _deb_control_facts(control: str, copyright_bytes: bytes | None) -> PackageFacts:
    fields = parse_control(control) if control else {}
    copyright_text = copyright_bytes.decode("utf-8", "replace") if copyright_bytes else None
    license_, text = debian_license(copyright_text) if copyright_text else (None, "")
    return PackageFacts(supplier=supplier(fields.get("Maintainer")), license=license_,
                        license_text=text, homepage=fields.get("Homepage") or None)


#: RPM header tags read for the SBOM (rpmtag.h).
RPM_VENDOR, RPM_LICENSE, RPM_PACKAGER, RPM_URL = 1011, 1014, 1015, 1020
_RPM_MAX_TAGS, _RPM_MAX_STORE = 1 << 16, 256 << 20


def _rpm_facts(stream, filename: str) -> PackageFacts:
    read_exact(stream, 96, f"{filename}:lead", "lead")
    sig = _rpm_header(stream, f"{filename}:signature")
    read_exact(stream, -sig[0] % 8, f"{filename}:signature", "padding")
    _size, tags = _rpm_header(stream, f"{filename}:header")
    vendor = tags.get(RPM_VENDOR) or tags.get(RPM_PACKAGER)
    return PackageFacts(supplier=supplier(vendor), license=tags.get(RPM_LICENSE) or None,
                        homepage=tags.get(RPM_URL) or None)


def _rpm_header(stream, where: str) -> tuple[int, dict[int, str]]:
    """(bytes occupied, the string tags the SBOM wants) of one header structure."""
    intro = read_exact(stream, 16, where, "header")
    if intro[:4] != b"\x8e\xad\xe8\x01":
        raise InputError(where, f"bad header magic {intro[:4].hex()}")
    count, size = struct.unpack(">II", intro[8:16])
    if count > _RPM_MAX_TAGS or size > _RPM_MAX_STORE:
        raise InputError(where, f"absurd header size ({count} tags, {size} bytes)")
    index = read_exact(stream, 16 * count, where, "header index")
    store = read_exact(stream, size, where, "header store")
    tags = {}
    for i in range(count):
        tag, typ, offset, _n = struct.unpack_from(">IIII", index, 16 * i)
        if tag in (RPM_VENDOR, RPM_LICENSE, RPM_PACKAGER, RPM_URL) and typ in (6, 9) and \
                offset < size:
            end = store.find(b"\0", offset)
            tags[tag] = store[offset:end if end >= 0 else size].decode("utf-8", "replace")
    return 16 + len(index) + size, tags


def supplier(who: str | None) -> str:
    """SPDX supplier from ``Name <mail>``: ``Organization: Name (mail)``."""
    if not who or not who.strip():
        return NOASSERTION
    who = " ".join(who.split())
    m = re.match(r"^(.*?)\s*<([^>]*)>\s*$", who)
    name, mail = (m.group(1), m.group(2)) if m else (who, "")
    name = name.replace("(", "[").replace(")", "]") or mail
    return f"Organization: {name} ({mail})" if mail else f"Organization: {name}"


def debian_license(text: str) -> tuple[str | None, str]:
    """(the licence of ``Files: *``, the stand-alone licence paragraphs) of a machine-readable
    (DEP-5) copyright file; (None, "") for a free-form one."""
    paragraphs = [p for p in re.split(r"\n\s*\n", text.replace("\r\n", "\n")) if p.strip()]
    if not paragraphs or not re.match(r"(?i)^format:\s*\S+", paragraphs[0].lstrip()):
        return None, ""
    declared, texts = None, []
    for paragraph in paragraphs[1:]:
        fields = parse_control(paragraph)
        lic = fields.get("License")
        if not lic:
            continue
        first, _, body = lic.partition("\n")
        if "Files" in fields:
            if declared is None and fields["Files"].split() and fields["Files"].split()[0] == "*":
                declared = first.strip()
        elif body.strip():
            texts.append(f"License: {first.strip()}\n{body}")
    if declared is None:  # no "Files: *": the first Files paragraph's licence
        for paragraph in paragraphs[1:]:
            fields = parse_control(paragraph)
            if "Files" in fields and fields.get("License"):
                declared = fields["License"].partition("\n")[0].strip()
                break
    return declared or None, "\n\n".join(texts)


# --- licence names → SPDX expressions ------------------------------------------------------

def spdx_license(stated: str | None, refs: dict[str, str], text: str = "") -> str:
    """An SPDX license expression for a licence as a package states it; names that are not SPDX
    identifiers become ``LicenseRef-…`` (added to ``refs``: id → extracted text)."""
    if not stated or not stated.strip():
        return NOASSERTION
    words = stated.replace(",", " ").replace("(", " ( ").replace(")", " ) ").split()
    out: list[str] = []
    for i, word in enumerate(words):
        low = word.lower()
        if low in ("or", "and") or word in ("(", ")"):
            out.append(word.upper() if low in ("or", "and") else word)
            continue
        if low == "with" and i + 1 < len(words):  # an exception: the whole thing is one ref
            return _ref(stated, refs, text)
        out.append(_identifier(word, refs, text, stated))
    if not out or out[0] in ("OR", "AND") or out[-1] in ("OR", "AND"):
        return _ref(stated, refs, text)
    return " ".join(out)


def _identifier(word: str, refs: dict[str, str], text: str, stated: str) -> str:
    low = word.lower()
    if low in SPDX_IDS:
        return SPDX_IDS[low]
    if DEBIAN_NAMES.get(low):
        return DEBIAN_NAMES[low]
    m = _GNU.match(word)
    if m:
        family, major, minor, plus = m.groups()
        family = family.upper()
        version = f"{major}.{minor or '0'}" if family != "LGPL" or minor else f"{major}.0"
        if family == "LGPL" and major == "2" and minor is None:
            version = "2.0"
        candidate = f"{family}-{version}-{'or-later' if plus else 'only'}"
        if candidate.lower() in SPDX_IDS:
            return SPDX_IDS[candidate.lower()]
    return _ref(word, refs, text or f"The package states the licence {stated!r}.")


def _ref(name: str, refs: dict[str, str], text: str = "") -> str:
    ident = "LicenseRef-" + (_SAFE_REF.sub("-", name).strip("-") or "unknown")
    refs.setdefault(ident, (text or f"The package states the licence {name!r}.")
                    [:MAX_LICENSE_TEXT])
    return ident


# --- purls and the document ------------------------------------------------------------------

def purl(package: dict, target: dict) -> str:
    """``pkg:deb/NAMESPACE/NAME@VERSION?arch=…&distro=ID-VERSION_ID`` (rpm: ``pkg:rpm/…``, its
    epoch as a qualifier, as the purl specification says)."""
    fmt = "deb" if package.get("format") == "deb" else "rpm"
    namespace = target.get("id") if target.get("id") not in (None, "_any") else \
        ("debian" if fmt == "deb" else "rpm")
    version = package["version"]
    qualifiers = {"arch": package["architecture"]}
    if fmt == "rpm" and ":" in version:
        qualifiers["epoch"], version = version.split(":", 1)
    if target.get("id") not in (None, "_any") and target.get("version_id"):
        qualifiers["distro"] = f"{target['id']}-{target['version_id']}"
    quote = lambda s: urllib.parse.quote(str(s), safe=".-_~")  # noqa: E731
    query = "&".join(f"{k}={quote(v)}" for k, v in sorted(qualifiers.items()))
    return f"pkg:{fmt}/{quote(namespace.lower())}/{quote(package['name'])}@{quote(version)}" \
        f"?{query}"


def timestamp(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _spdx_id(prefix: str, *parts: str) -> str:
    return f"SPDXRef-{prefix}-" + _SAFE_REF.sub("-", "-".join(parts)).strip("-")


def document(manifest: dict, facts: list[PackageFacts], target: dict) -> dict:
    """The SPDX 2.3 document of one image, from its manifest (inputs, image, epoch)."""
    image = manifest["image"]
    digest = image.get("sha256") or image["tree_sha256"]
    refs: dict[str, str] = {}
    image_id = _spdx_id("Image", manifest["name"])
    image_package = {
        "SPDXID": image_id,
        "name": image["file"],
        "versionInfo": str(manifest.get("version") or NOASSERTION),
        "primaryPackagePurpose": "ARCHIVE",
        "supplier": NOASSERTION,
        "downloadLocation": NOASSERTION,
        "filesAnalyzed": False,
        "licenseConcluded": NOASSERTION,
        "licenseDeclared": NOASSERTION,
        "copyrightText": NOASSERTION,
        "comment": f"systemd {manifest['kind']} image ({image['format']}"
                   f"{', ' + image['filesystem'] if image.get('filesystem') else ''})"
                   + ("" if image.get("sha256") else "; a directory: the checksum is "
                      "sysext-pipeline's tree_sha256 of its file list, not a file's"),
    }
    if image.get("sha256"):
        image_package["checksums"] = [{"algorithm": "SHA256", "checksumValue": digest}]
    packages = [image_package]
    relationships = [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                      "relatedSpdxElement": image_id}]
    seen: set[str] = set()
    for record, fact in sorted(zip(manifest["inputs"], facts),
                               key=lambda rf: (rf[0]["name"], rf[0]["version"],
                                               rf[0]["architecture"], rf[0]["sha256"])):
        ident = _spdx_id("Package", record["name"], record["version"], record["architecture"])
        if ident in seen:
            ident = _spdx_id("Package", record["name"], record["version"],
                             record["architecture"], record["sha256"][:12])
        seen.add(ident)
        license_ = spdx_license(fact.license, refs, fact.license_text)
        package = {
            "SPDXID": ident,
            "name": record["name"],
            "versionInfo": record["version"],
            "packageFileName": record["file"],
            "supplier": fact.supplier,
            "downloadLocation": NOASSERTION,
            "filesAnalyzed": False,
            "checksums": [{"algorithm": "SHA256", "checksumValue": record["sha256"]}],
            "licenseConcluded": NOASSERTION,
            "licenseDeclared": license_,
            "copyrightText": NOASSERTION,
            "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                              "referenceLocator": purl(record, target)}],
            "comment": f"architecture {record['architecture']}; source {record['source']}",
        }
        if fact.homepage and re.match(r"^https?://\S+$", fact.homepage):
            package["homepage"] = fact.homepage
        packages.append(package)
        relationships.append({"spdxElementId": image_id, "relationshipType": "CONTAINS",
                              "relatedSpdxElement": ident})
    doc = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{manifest['name']}-{manifest.get('version') or 'unversioned'}",
        "documentNamespace": _namespace(manifest, digest),
        "creationInfo": {"created": timestamp(manifest["source_date_epoch"]),
                         "creators": [f"Tool: sysext-pipeline-{__version__}"]},
        "documentDescribes": [image_id],
        "packages": packages,
        "relationships": relationships,
    }
    if refs:
        doc["hasExtractedLicensingInfos"] = [
            {"licenseId": ident, "extractedText": text, "name": ident.removeprefix("LicenseRef-")}
            for ident, text in sorted(refs.items())]
    return doc


def set_image(doc: dict, manifest: dict) -> None:
    """The image's checksum and the namespace derived from it, after ``sign`` changed it."""
    image = manifest["image"]
    digest = image.get("sha256") or image["tree_sha256"]
    doc["documentNamespace"] = _namespace(manifest, digest)
    for package in doc.get("packages", []):
        if package.get("SPDXID") in doc.get("documentDescribes", []) and image.get("sha256"):
            package["checksums"] = [{"algorithm": "SHA256", "checksumValue": digest}]


def _namespace(manifest: dict, digest: str) -> str:
    return f"https://sysext-pipeline.invalid/spdx/{manifest['name']}/{digest}"


def dumps(doc: dict) -> bytes:
    return jsonout.pretty(doc, ensure_ascii=False)


# --- CycloneDX 1.6, from the same document ---------------------------------------------------

CYCLONEDX_SUFFIX = ".cdx.json"
_SUPPLIER = re.compile(r"^Organization: (.*?)(?: \(([^()]*)\))?$")


def cyclonedx(doc: dict) -> dict:
    """The CycloneDX 1.6 BOM of an SPDX document made by :func:`document` (the same packages,
    purls, sha256s, licences, suppliers and timestamp; the image is ``metadata.component`` and
    the packages are its ``components``). The serial number is derived from the SPDX
    namespace (itself from the image's sha256): two builds of the same inputs give the same
    bytes."""
    import uuid

    described = set(doc.get("documentDescribes", []))
    image = next(p for p in doc["packages"] if p["SPDXID"] in described)
    components = [_component(p, "library") for p in doc["packages"]
                  if p["SPDXID"] not in described]
    subject = _component(image, "file")
    bom = {
        "$schema": "http://cyclonedx.org/schema/bom-1.6.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, doc['documentNamespace'])}",
        "version": 1,
        "metadata": {
            "timestamp": doc["creationInfo"]["created"],
            "tools": {"components": [{"type": "application", "name": "sysext-pipeline",
                                      "version": __version__}]},
            "component": subject,
        },
        "components": components,
        "dependencies": [{"ref": subject["bom-ref"],
                          "dependsOn": [c["bom-ref"] for c in components]}]
        + [{"ref": c["bom-ref"]} for c in components],
    }
    return bom


def _component(package: dict, kind: str) -> dict:
    out = {"type": kind, "bom-ref": package["SPDXID"], "name": package["name"]}
    if package.get("versionInfo") not in (None, NOASSERTION):
        out["version"] = package["versionInfo"]
    hashes = [{"alg": "SHA-256", "content": c["checksumValue"]}
              for c in package.get("checksums", []) if c.get("algorithm") == "SHA256"]
    if hashes:
        out["hashes"] = hashes
    match = _SUPPLIER.match(package.get("supplier") or "")
    if match:
        out["supplier"] = {"name": match.group(1)}
        if match.group(2) and "@" in match.group(2):
            out["supplier"]["contact"] = [{"email": match.group(2)}]
    if package.get("licenseDeclared") not in (None, NOASSERTION):
        out["licenses"] = [{"expression": package["licenseDeclared"]}]
    for ref in package.get("externalRefs", []):
        if ref.get("referenceType") == "purl":
            out["purl"] = ref["referenceLocator"]
    if package.get("homepage"):
        out["externalReferences"] = [{"type": "website", "url": package["homepage"]}]
    properties = [{"name": "sysext-pipeline:packageFileName", "value": package[key]}
                  for key in ("packageFileName",) if package.get(key)]
    if package.get("comment"):
        properties.append({"name": "sysext-pipeline:comment", "value": package["comment"]})
    if properties:
        out["properties"] = properties
    return out
