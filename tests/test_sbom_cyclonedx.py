"""CycloneDX 1.6 (``NAME.cdx.json``) written by every build from the same document as the SPDX
SBOM, checked by the CycloneDX project's own validator (cyclonedx-python-lib, test-only) and
byte-identical across two builds; ``sign`` of an unsigned DDI brings it to the signed build's
bytes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import package_dir, run_cli, write_recipe
from prereq import require_tool
from recipes_kit import signing_keys
from test_sbom import three_packages

COPYRIGHT = b"""Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
Copyright: 2020 Someone
License: Expat or GPL-2+
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    return three_packages(package_dir(tmp_path_factory, "cdx-packages"), COPYRIGHT, None)


def recipe(inputs, image: str = 'format = "squashfs"', sign: str = "") -> str:
    return f"""
[extension]
name = "tools"
kind = "sysext"
version = "2.1"
[target]
id = "debian"
version_id = "12"
architecture = "x86-64"
[[source]]
deb = "{inputs['deb']}"
[[source]]
deb = "{inputs['free']}"
[[source]]
rpm = "{inputs['rpm']}"
[filter]
exclude = ["usr/share/doc/**"]
[image]
{image}
source_date_epoch = 1700000000
{sign}"""


def build(directory: Path, text: str, cache_dir: Path, *args: str) -> Path:
    path = write_recipe(directory / "recipe", text)
    out = directory / "out"
    proc = run_cli("build", str(path), "-o", str(out), "--cache-dir", str(cache_dir), *args)
    assert proc.returncode == 0, proc.stderr
    return out


def validator():
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    return JsonStrictValidator(SchemaVersion.V1_6)


def test_cyclonedx_validates_matches_spdx_and_reproduces(inputs, cache_dir, tmp_path):
    require_tool("mksquashfs", "squashfs-tools")
    first = build(tmp_path / "a", recipe(inputs), cache_dir)
    second = build(tmp_path / "b", recipe(inputs), cache_dir)
    cdx = first / "tools.cdx.json"
    assert cdx.read_bytes() == (second / "tools.cdx.json").read_bytes()
    error = validator().validate_str(cdx.read_text())
    assert error is None, str(error)

    bom = json.loads(cdx.read_text())
    spdx = json.loads((first / "tools.spdx.json").read_text())
    assert bom["specVersion"] == "1.6"
    assert bom["metadata"]["timestamp"] == spdx["creationInfo"]["created"] == \
        "2023-11-14T22:13:20Z"
    image = bom["metadata"]["component"]
    assert image["name"] == "tools.raw" and image["hashes"] == [
        {"alg": "SHA-256", "content": hashlib.sha256((first / "tools.raw").read_bytes())
         .hexdigest()}]
    by_name = {c["name"]: c for c in bom["components"]}
    assert set(by_name) == {"jqish", "freeform", "rtool"}
    spdx_by_name = {p["name"]: p for p in spdx["packages"]}
    for name, component in by_name.items():
        package = spdx_by_name[name]
        assert component["purl"] == package["externalRefs"][0]["referenceLocator"]
        assert component["hashes"][0]["content"] == package["checksums"][0]["checksumValue"] \
            == hashlib.sha256(inputs[{"jqish": "deb", "freeform": "free", "rtool": "rpm"}[name]]
                              .read_bytes()).hexdigest()
        assert component["version"] == package["versionInfo"]
    assert by_name["jqish"]["purl"] == \
        "pkg:deb/debian/jqish@1.6-2.1%2Bdeb12u2?arch=amd64&distro=debian-12"
    assert by_name["jqish"]["licenses"] == [{"expression": "MIT OR GPL-2.0-or-later"}]
    assert by_name["jqish"]["supplier"] == {"name": "Test",
                                            "contact": [{"email": "test@example.invalid"}]}
    assert "licenses" not in by_name["freeform"]  # no machine-readable licence: none claimed
    assert by_name["rtool"]["supplier"] == {"name": "Example Corp"}
    [top] = [d for d in bom["dependencies"] if d["ref"] == image["bom-ref"]]
    assert sorted(top["dependsOn"]) == sorted(c["bom-ref"] for c in bom["components"])

    # the validator does catch a broken document
    bad = dict(bom, components=[dict(by_name["jqish"], hashes=[{"alg": "SHA-256",
                                                                "content": "zz"}])])
    assert validator().validate_str(json.dumps(bad)) is not None


def test_cyclonedx_of_unsigned_then_signed_ddi_is_the_signed_builds(inputs, cache_dir,
                                                                     tmp_path):
    require_tool("mksquashfs", "squashfs-tools")
    require_tool("systemd-repart", "systemd-repart")
    key, cert = signing_keys(tmp_path / "keys")
    text = recipe(inputs, 'format = "ddi"\nfilesystem = "squashfs"',
                  f'[sign]\nkey = "{key}"\ncert = "{cert}"\n')
    signed = build(tmp_path / "signed", text, cache_dir)
    unsigned = build(tmp_path / "unsigned", text, cache_dir, "--unsigned")
    before = (unsigned / "tools.cdx.json").read_bytes()
    proc = run_cli("sign", str(unsigned / "tools.raw"), "--key", str(key), "--cert", str(cert))
    assert proc.returncode == 0, proc.stderr
    after = (unsigned / "tools.cdx.json").read_bytes()
    assert after != before and after == (signed / "tools.cdx.json").read_bytes()
    assert json.loads(after)["metadata"]["component"]["hashes"][0]["content"] == \
        hashlib.sha256((unsigned / "tools.raw").read_bytes()).hexdigest()
