"""The SBOM beside an image is checked like the image's other files: ``NAME.spdx.json`` must have
the sha256 its manifest records, and ``NAME.cdx.json`` (CycloneDX, which the manifest does not
record because it is derived from the SPDX document) must be what that document derives. diff
names an edited one as not verifying (exit 3), and so verify calls the build ``differs``; an
SBOM that is absent is not checked (an image and its manifest are what a copy needs)."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import run_cli
from verify_helpers import build, diff_json, project


@pytest.fixture(scope="module", params=("squashfs", "directory"))
def built(request, tmp_path_factory, packages, cache_dir):
    root = tmp_path_factory.mktemp(f"sbom-{request.param}")
    recipe = project(root / "proj", packages, request.param)
    return build(recipe, root / "proj" / "out", cache_dir), cache_dir


def _copy(built, tmp_path):
    """The output directory copied as it is (owners, times, links: ``cp -a``), and the image
    in the copy."""
    image, _ = built
    out = tmp_path / "out"
    subprocess.run(["cp", "-a", str(image.image.parent), str(out)], check=True)
    return out / image.image.name


def _edit(path, change):
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def test_an_intact_sbom_verifies(built, tmp_path):
    image = _copy(built, tmp_path)
    assert (image.parent / "hello.spdx.json").is_file()
    assert (image.parent / "hello.cdx.json").is_file()
    report = diff_json(built[0].image, image)
    assert report["ok"] and report["unverified"] == []


@pytest.mark.parametrize("member, words", [
    ("hello.cdx.json", "hello.cdx.json is not the CycloneDX form of hello.spdx.json"),
    ("hello.spdx.json", "hello.spdx.json is not the SBOM the manifest of"),
])
def test_an_edited_sbom_does_not_verify(built, tmp_path, member, words):
    image = _copy(built, tmp_path)
    _edit(image.parent / member, lambda doc: doc.update(comment="edited"))
    report = diff_json(built[0].image, image)
    assert not report["ok"]
    [item] = report["unverified"]
    assert item["side"] == "b" and words in item["text"] and "changed after the build" in \
        item["text"]


def test_verify_says_differs_for_an_edited_cyclonedx(built, tmp_path):
    image = _copy(built, tmp_path)
    _edit(image.parent / "hello.cdx.json", lambda doc: doc["metadata"].update(timestamp="x"))
    proc = run_cli("verify", str(image), "--cache-dir", str(built[1]), "--recipe",
                   str(built[0].image.parent.parent / "hello.toml"), "--json",
                   cwd=built[0].image.parent.parent)
    assert proc.returncode == 3, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "differs"
    assert any("hello.cdx.json is not the CycloneDX form" in n for n in result["notes"])


def test_an_absent_sbom_is_not_checked(built, tmp_path):
    image = _copy(built, tmp_path)
    (image.parent / "hello.cdx.json").unlink()
    (image.parent / "hello.spdx.json").unlink()
    assert diff_json(built[0].image, image)["ok"]
