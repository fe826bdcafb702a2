"""``diff`` on what wraps the file system and on tampered images: detached verity files, integrity
checks that no tool version may excuse, seed-derived values as consequences, a different target
architecture, signers in manifests. Real builds, real signatures, bytes edited in copies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli
from pkgfactory import build_deb, file
from prereq import require_tool
from recipes_kit import hello_recipe, write_recipe_dict
from verify_helpers import (
    build,
    causes,
    diff_json,
    extra_file,
    flip_byte,
    project,
    two_signer_ddi,
    two_signers,
)

from pipeline.image.ddi import signature as sig
from pipeline.image.ddi.gpt import read_gpt
from pipeline.image.ddi.reader import find_verity_set
from pipeline.keys import load_signer

EXTRA = extra_file()


def copy_build(image: Path, dest: Path) -> Path:
    """Everything the build wrote next to ``image`` (manifest, .verity, …) copied to ``dest``."""
    dest.mkdir(parents=True)
    for f in image.parent.iterdir():
        if f.is_file():
            shutil.copy(f, dest / f.name)
    return dest / image.name


def manifest_alone(image, dest: Path) -> Path:
    dest.mkdir(parents=True)
    return Path(shutil.copy(image.manifest_path, dest / image.manifest_path.name))


# --- detached verity --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def detached(tmp_path_factory, packages, cache_dir):
    """A squashfs with detached verity, signed by a at build time; the same built unsigned; and
    that unsigned build signed offline by b."""
    require_tool("veritysetup", "cryptsetup-bin")
    require_tool("openssl", "openssl")
    root = two_signers(tmp_path_factory, "detached")
    recipe = project(root / "p", packages, "squashfs", sign="a", verity="detached")
    signed = build(recipe, root / "signed", cache_dir)
    unsigned = build(recipe, root / "unsigned", cache_dir, unsigned=True)
    by_b = copy_build(unsigned.image, root / "by-b")
    proc = run_cli("sign", str(by_b), "--key", str(root / "p" / "b.key"), "--cert",
                   str(root / "p" / "b.crt"))
    assert proc.returncode == 0, proc.stderr
    return {"signed": signed, "unsigned": unsigned, "by_b": by_b, "keys": root / "p"}


@pytest.mark.parametrize("images_only", (False, True))
def test_flipped_byte_in_detached_verity(detached, tmp_path, images_only):
    image = copy_build(detached["signed"].image, tmp_path / "x")
    # The test image is one 4 KiB block, so the .verity file is its superblock alone: a byte of
    # the salt (struct verity_sb: from byte 88) no longer gives the recorded root hash.
    flip_byte(image.with_name("hello.verity"), 90)
    report = diff_json(detached["signed"].image, image, *(["--images-only"] * images_only))
    assert not report["identical"]
    assert report["explained_at"] == "container"
    assert "integrity.verity.b" in causes(report)
    assert "hello.verity does not verify hello.raw" in report["summary"]
    assert report["summary"].startswith("differs (container): in B:")
    if not images_only:  # its own manifest says which side changed, too
        assert any("hello.verity is not the verity tree the manifest" in n
                   for n in report["notes"])


def test_detached_signature_by_another_signer(detached, tmp_path):
    """Only the .p7s differs: a different signer, not 'identical images'."""
    image = copy_build(detached["signed"].image, tmp_path / "x")
    root_hash = image.with_name("hello.roothash").read_text().strip()
    other = load_signer(detached["keys"] / "b.key", detached["keys"] / "b.crt")
    image.with_name("hello.roothash.p7s").write_bytes(sig.sign_root_hash(root_hash, other)[0])
    for extra in ((), ("--images-only",)):
        report = diff_json(detached["signed"].image, image, *extra)
        assert report["explained_at"] == "container", report["summary"]
        fp = causes(report, "container")["signature.certificate_fingerprint"]
        assert fp["a"] != fp["b"] and "different signer" in report["summary"]
    # The copy's manifest still names signer a: said, naming the side.
    report = diff_json(detached["signed"].image, image)
    assert any(n.startswith("hello.roothash.p7s is signed by certificate") and str(image) in n
               for n in report["notes"]), report["notes"]


def test_detached_signed_vs_unsigned(detached):
    report = diff_json(detached["unsigned"].image, detached["signed"].image)
    assert report["explained_at"] == "container"
    assert causes(report, "container")["signature.present"]["b"] is True
    assert "signed only in B" in report["summary"]


def test_detached_signers_from_manifests_alone(detached, tmp_path):
    """Two machines' manifests: the verity section says who signed."""
    a = manifest_alone(detached["signed"], tmp_path / "a")
    b = tmp_path / "b" / "hello.manifest.json"
    b.parent.mkdir()
    shutil.copy(detached["by_b"].with_name("hello.manifest.json"), b)
    report = diff_json(a, b)
    assert report["explained_at"] == "container"
    assert "signature.certificate_fingerprint" in causes(report, "container")
    # …and with the images: the same.
    report = diff_json(detached["signed"].image, detached["by_b"])
    assert "signature.certificate_fingerprint" in causes(report, "container")
    assert not [f for f in causes(report) if f.startswith("verity.")]


# --- DDIs: integrity before excuses -----------------------------------------------------------

@pytest.fixture(scope="module")
def ddi(tmp_path_factory, packages, cache_dir):
    root, recipe = two_signer_ddi(tmp_path_factory, "ddi-integrity", packages, "erofs")
    base = build(recipe, root / "base", cache_dir)
    extra = build(project(root / "q", packages, "ddi", filesystem="erofs", extra=EXTRA,
                          sign="../p/b"), root / "extra", cache_dir)
    return {"base": base, "extra": extra}


@pytest.mark.parametrize("tool,version", (("systemd-repart", "254"), ("veritysetup", "2.7.0"),
                                          ("mkfs.erofs", "1.8.1")))
def test_tool_version_does_not_excuse_a_tampered_ddi(ddi, tmp_path, tool, version):
    image = copy_build(ddi["base"].image, tmp_path / "x")
    found = find_verity_set(read_gpt(image))
    flip_byte(image, found.data.offset + 300)
    manifest = json.loads(image.with_name("hello.manifest.json").read_text())
    manifest["tools"][tool] = version
    image.with_name("hello.manifest.json").write_text(json.dumps(manifest))
    report = diff_json(ddi["base"].image, image)
    assert report["explained_at"] == "container", report["summary"]
    assert "integrity.verity.b" in causes(report, "container")
    assert "partitions.root.data" in causes(report, "container")
    assert "skipped" not in report["levels"].get("container", "")
    assert any("hello.raw is not the image its manifest describes" in n and str(image) in n
               for n in report["notes"])
    [note] = [n for n in report["notes"] if n.startswith(tool)]
    if tool == "mkfs.erofs":
        assert note.endswith(": different bytes are expected")
    else:  # the build pins what these write: no excuse, and no "different bytes are expected"
        assert "expected" not in note and "no difference comes from it" in note


def test_seed_derived_values_follow_the_tree(ddi):
    """Without manifests, an erofs DDI with an added file: the tree explains; the erofs UUID,
    verity salt, disk and partition UUIDs (all from the seed) only follow."""
    report = diff_json(ddi["base"].image, ddi["extra"].image, "--images-only")
    assert report["explained_at"] == "tree", report["summary"]
    assert "usr/share/hello/extra.txt" in report["tree"]["paths"]["added"]
    derived = {f["field"] for f in report["findings"] if f["derived"]}
    assert {"gpt.disk_uuid", "verity.salt", "root_hash", "uuid"} <= derived
    assert not {f for f in causes(report) if f in derived}
    # The signer differs too: said, but it does not hide the tree.
    assert "different signer" in report["summary"]
    text = run_cli("diff", str(ddi["base"].image), str(ddi["extra"].image),
                   "--images-only").stdout
    assert "disk_uuid" not in text and "erofs uuid" not in text
    assert "consequential differences not shown (--full)" in text
    full = run_cli("diff", str(ddi["base"].image), str(ddi["extra"].image), "--images-only",
                   "--full").stdout
    assert "GPT disk_uuid" in full and "(follows)" in full


def test_plain_erofs_without_manifests_reaches_the_tree(tmp_path, packages, cache_dir):
    """The erofs UUID comes from the seed: with a file added it differs too, but the tree says
    why (it used to stop at the UUID)."""
    a = build(project(tmp_path / "a", packages, "erofs"), tmp_path / "a" / "out", cache_dir)
    b = build(project(tmp_path / "b", packages, "erofs", extra=EXTRA), tmp_path / "b" / "out",
              cache_dir)
    report = diff_json(a.image, b.image, "--images-only")
    assert report["explained_at"] == "tree", report["summary"]
    assert report["tree"]["paths"]["added"] == ["usr/share/hello", "usr/share/hello/extra.txt"]
    uuid = [f for f in report["findings"] if f["field"] == "uuid"]
    assert uuid and uuid[0]["derived"] and not uuid[0]["explains"]


def test_ddi_manifests_alone(ddi, tmp_path):
    """Manifests only: the disk UUID is compared (derived), the signer is said, the tree (from
    the file lists) explains — not the verity salt."""
    a = manifest_alone(ddi["base"], tmp_path / "a")
    b = manifest_alone(ddi["extra"], tmp_path / "b")
    report = diff_json(a, b)
    assert report["explained_at"] == "tree", report["summary"]
    assert "usr/share/hello/extra.txt" in report["tree"]["paths"]["added"]
    assert "different signer" in report["summary"]
    report = diff_json(a, b, "--full")
    fields = {f["field"]: f for f in report["findings"]}
    assert fields["gpt.disk_uuid"]["derived"] and not fields["gpt.disk_uuid"]["explains"]
    assert fields["verity.salt"]["derived"] and not fields["verity.salt"]["explains"]
    assert fields["signature.certificate_fingerprint"]["explains"]


def test_different_target_architecture(tmp_path, cache_dir):
    """The same noarch payload for x86-64 and for arm64: the partition types say why."""
    require_tool("systemd-repart", "systemd-repart")
    deb = build_deb(tmp_path / "pkg", "noarch-data", "1.0", [file("/usr/share/na/x", b"x\n")],
                    arch="all")
    images = {}
    for arch in ("x86-64", "arm64"):
        proj = tmp_path / arch
        (proj / "pkgs").mkdir(parents=True)
        shutil.copy(deb, proj / "pkgs" / "noarch.deb")
        spec = hello_recipe("ddi", sources=["pkgs/noarch.deb"], target={"architecture": arch},
                            filter=None, owners=None)
        write_recipe_dict(proj, spec, "r.toml")
        images[arch] = build(proj / "r.toml", proj / "out", cache_dir).image
    report = diff_json(images["x86-64"], images["arm64"], "--images-only")
    assert report["explained_at"] == "container"
    cause = causes(report, "container")["partitions.root.type_uuid"]
    assert "different target architecture: x86-64 → arm64" in cause["text"]
    assert "different target architecture" in report["summary"]


# --- exit status: identical is not intact --------------------------------------------------------

def test_identical_but_tampered_alike_exits_1(detached, tmp_path):
    """Both copies carry the same flipped verity byte: identical to each other, yet neither
    verifies against itself — diff says so and exits 1 (README: 1 when something does not
    verify or differs)."""
    a = copy_build(detached["signed"].image, tmp_path / "a")
    b = copy_build(detached["signed"].image, tmp_path / "b")
    for image in (a, b):
        flip_byte(image.with_name("hello.verity"), 90)
    proc = run_cli("diff", str(a), str(b), "--images-only")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "do not verify (exit 1)" in proc.stdout.splitlines()[2]
    assert "hello.verity does not verify hello.raw" in proc.stdout
    report = diff_json(a, b, "--images-only")
    assert report["identical"] and not report["ok"]
    assert {u["side"] for u in report["unverified"]} == {"a", "b"}


def test_identical_but_not_what_the_manifest_says_exits_1(detached, tmp_path):
    """Two identical images, one of whose manifest records another sha256: exit 1."""
    a = copy_build(detached["signed"].image, tmp_path / "a")
    b = copy_build(detached["signed"].image, tmp_path / "b")
    assert run_cli("diff", str(a), str(b)).returncode == 0
    manifest_path = b.with_name("hello.manifest.json")
    manifest = json.loads(manifest_path.read_text())
    manifest["image"]["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    report = diff_json(a, b)
    assert report["identical"] and not report["ok"]
    assert [u["side"] for u in report["unverified"]] == ["b"]
    assert "not the image its manifest describes" in report["unverified"][0]["text"]
