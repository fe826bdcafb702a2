"""SBOM (SPDX 2.3) and provenance (in-toto + SLSA v1, DSSE) written by every build.

Real packages (dpkg-deb, rpmbuild), real builds through the CLI, and the SPDX documents checked
by spdx-tools' own validator (a test-only dependency).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from conftest import package_dir, run_cli
from pkgfactory import build_deb, build_rpm, file
from prereq import require_tool
from recipes_kit import build_cli, hello_recipe, signing_keys, write_recipe_dict

from pipeline.release import sbom

COPYRIGHT = b"""Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: jqish

Files: *
Copyright: 2020 Someone
License: Expat or GPL-2+

Files: debian/*
Copyright: 2021 Someone Else
License: Weird-Licence

License: Weird-Licence
 You may do weird things.
"""


def three_packages(out: Path, copyright: bytes, free_copyright: bytes | None) -> dict[str, Path]:
    """In ``out``: a deb jqish with a Homepage and ``copyright``, a deb freeform (with
    ``free_copyright`` as its copyright file when given) and an rpm rtool with a Vendor."""
    free = [file("/usr/bin/freeform", b"#!/bin/sh\n", 0o755)]
    if free_copyright is not None:
        free.append(file("/usr/share/doc/freeform/copyright", free_copyright))
    return {
        "deb": build_deb(out, "jqish", "1.6-2.1+deb12u2",
                         [file("/usr/bin/jqish", b"#!/bin/sh\n", 0o755),
                          file("/usr/share/doc/jqish/copyright", copyright)],
                         fields={"Homepage": "https://example.invalid/jqish"}),
        "free": build_deb(out, "freeform", "1.0-1", free),
        "rpm": build_rpm(out, "rtool", "2.0", [file("/usr/bin/rtool", b"#!/bin/sh\n", 0o755)],
                         epoch=3, tags=[("Vendor", "Example Corp")]),
    }


@pytest.fixture(scope="module")
def sbom_packages(tmp_path_factory) -> dict[str, Path]:
    return three_packages(package_dir(tmp_path_factory, "sbom-packages"), COPYRIGHT,
                          b"Do what you like.\n")


def tools_recipe(packages, sign: tuple[Path, Path] | None = None, **image) -> dict:
    return hello_recipe("squashfs", name="tools", version="2.1",
                        sources=[packages["deb"], packages["free"], packages["rpm"]],
                        owners=None, image=image,
                        sign={"key": sign[0], "cert": sign[1]} if sign else None)


def built(directory: Path, recipe: Path, cache_dir: Path) -> Path:
    """The output directory of a build of ``recipe``."""
    build_cli(recipe, directory / "out", cache_dir=cache_dir)
    return directory / "out"


def validate_spdx(path: Path) -> None:
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    messages = validate_full_spdx_document(parse_file(str(path)))
    assert messages == [], [m.validation_message for m in messages]


def test_sbom_and_provenance_validate_and_reproduce(sbom_packages, cache_dir, tmp_path):
    require_tool("mksquashfs", "squashfs-tools")
    recipe = write_recipe_dict(tmp_path / "recipe", tools_recipe(sbom_packages))
    first = built(tmp_path / "a", recipe, cache_dir)
    second = built(tmp_path / "b", recipe, cache_dir)
    for name in ("tools.spdx.json", "tools.provenance.json", "tools.manifest.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name

    validate_spdx(first / "tools.spdx.json")
    doc = json.loads((first / "tools.spdx.json").read_text())
    manifest = json.loads((first / "tools.manifest.json").read_text())
    image_sha = hashlib.sha256((first / "tools.raw").read_bytes()).hexdigest()
    assert manifest["sbom"]["sha256"] == \
        hashlib.sha256((first / "tools.spdx.json").read_bytes()).hexdigest()
    assert doc["creationInfo"]["created"] == "2023-11-14T22:13:20Z"  # the epoch, not the clock
    described = [p for p in doc["packages"] if p["SPDXID"] in doc["documentDescribes"]]
    assert described[0]["checksums"] == [{"algorithm": "SHA256", "checksumValue": image_sha}]
    by_name = {p["name"]: p for p in doc["packages"]}
    jq = by_name["jqish"]
    assert jq["externalRefs"][0]["referenceLocator"] == \
        "pkg:deb/debian/jqish@1.6-2.1%2Bdeb12u2?arch=amd64&distro=debian-12"
    assert jq["licenseDeclared"] == "MIT OR GPL-2.0-or-later"
    assert jq["supplier"] == "Organization: Test (test@example.invalid)"
    assert jq["checksums"][0]["checksumValue"] == \
        hashlib.sha256(sbom_packages["deb"].read_bytes()).hexdigest()
    assert by_name["freeform"]["licenseDeclared"] == "NOASSERTION"  # not machine-readable
    rtool = by_name["rtool"]
    assert rtool["licenseDeclared"] == "MIT"
    assert rtool["supplier"] == "Organization: Example Corp"
    assert rtool["externalRefs"][0]["referenceLocator"] == \
        "pkg:rpm/debian/rtool@2.0-1?arch=x86_64&distro=debian-12&epoch=3"
    contains = {r["relatedSpdxElement"] for r in doc["relationships"]
                if r["relationshipType"] == "CONTAINS"}
    assert contains == {p["SPDXID"] for p in doc["packages"]} - set(doc["documentDescribes"])

    statement = json.loads((first / "tools.provenance.json").read_text())  # unsigned: bare
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    assert statement["subject"] == [{"name": "tools.raw", "digest": {"sha256": image_sha}}]
    definition = statement["predicate"]["buildDefinition"]
    assert sorted(d["digest"]["sha256"] for d in definition["resolvedDependencies"]) == \
        sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in sbom_packages.values())
    assert definition["externalParameters"]["recipe"]["sha256"] == \
        hashlib.sha256(recipe.read_bytes()).hexdigest()
    assert statement["predicate"]["runDetails"]["builder"]["version"]["sysext-pipeline"]


def test_signed_provenance_verifies_and_a_corrupt_signature_fails(sbom_packages, cache_dir,
                                                                  tmp_path):
    require_tool("mksquashfs", "squashfs-tools")
    require_tool("veritysetup", "cryptsetup-bin")
    recipe = write_recipe_dict(tmp_path / "recipe", tools_recipe(
        sbom_packages, signing_keys(tmp_path / "keys", "release"), verity="detached"))
    first = built(tmp_path / "a", recipe, cache_dir)
    second = built(tmp_path / "b", recipe, cache_dir)
    prov = first / "tools.provenance.json"
    assert prov.read_bytes() == (second / "tools.provenance.json").read_bytes()  # RSA: same bytes
    envelope = json.loads(prov.read_text())
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    payload = json.loads(base64.b64decode(envelope["payload"]))
    assert payload["subject"][0]["digest"]["sha256"] == \
        hashlib.sha256((first / "tools.raw").read_bytes()).hexdigest()

    args = ["verify", str(first / "tools.manifest.json"), "--recipe", str(recipe),
            "--cache-dir", str(cache_dir), "--json"]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "DSSE signature verified" in proc.stdout

    sig = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
    sig[10] ^= 1
    envelope["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    prov.write_text(json.dumps(envelope))
    proc = run_cli(*args)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "does not verify" in proc.stdout


def test_licence_names_become_valid_expressions():
    refs: dict[str, str] = {}
    assert sbom.spdx_license("GPL-2+ or Artistic", refs) == "GPL-2.0-or-later OR Artistic-1.0-Perl"
    assert sbom.spdx_license("LGPL-2.1+", refs) == "LGPL-2.1-or-later"
    assert sbom.spdx_license("GPL-2+ with OpenSSL exception", refs).startswith("LicenseRef-")
    assert sbom.spdx_license("", refs) == "NOASSERTION"
    assert sbom.spdx_license("Weird", refs) == "LicenseRef-Weird" and "LicenseRef-Weird" in refs
