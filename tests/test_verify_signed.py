"""``verify`` of signed images: the rebuild never needs the private key; the unsigned content is
compared, the original's signature checked on its own (also offline-signed, ECDSA and detached
ones). Plus what verify says about tool versions and changed local package files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli
from prereq import require_tool
from verify_helpers import (
    build,
    ecdsa_signer_files,
    project,
    signed_build,
    signer_files,
    verify_json,
)

from pipeline.image.ddi import signature as sig
from pipeline.image.ddi.gpt import read_gpt
from pipeline.image.ddi.reader import find_verity_set
from pipeline.keys import load_signer


def hide_key(proj: Path, stem: str) -> None:
    """The private key is gone (kept on the signing host): verify must not need it."""
    (proj / f"{stem}.key").rename(proj.parent / f"{stem}.key.elsewhere")


@pytest.fixture(autouse=True)
def _tools():
    require_tool("veritysetup", "cryptsetup-bin")
    require_tool("openssl", "openssl")


def test_signed_ddi_without_the_private_key(tmp_path, packages, cache_dir):
    require_tool("systemd-repart", "systemd-repart")
    proj = tmp_path / "proj"
    image = signed_build(proj, packages, "ddi", cache_dir, cn="verify test")
    hide_key(proj, "release")
    rc, result = verify_json(image.manifest_path, "--cache-dir", cache_dir, cwd=tmp_path)
    assert rc == 0 and result["status"] == "reproduced", result
    assert result["signature"]["status"] == "verified"
    assert "CN=verify test" in result["signature"]["detail"]
    assert result["manifest_identical"]
    text = run_cli("verify", str(image.image), "--cache-dir", str(cache_dir), cwd=tmp_path).stdout
    assert text.startswith("reproduced: hello (unsigned image sha256 ")
    assert "  signature verified: by CN=verify test" in text


def test_offline_signed_ddi(tmp_path, packages, cache_dir):
    """Built --unsigned, signed with `sign` (on another host): verifies like a signed build."""
    require_tool("systemd-repart", "systemd-repart")
    proj = tmp_path / "proj"
    signer_files(proj, "release", "offline")
    image = build(project(proj, packages, "ddi", sign="release"), proj / "out", cache_dir,
                  unsigned=True)
    proc = run_cli("sign", str(image.image), "--key", str(proj / "release.key"), "--cert",
                   str(proj / "release.crt"))
    assert proc.returncode == 0, proc.stderr
    hide_key(proj, "release")
    rc, result = verify_json(image.manifest_path, "--cache-dir", cache_dir, cwd=tmp_path)
    assert rc == 0 and result["signature"]["status"] == "verified", result


def test_signature_checked_without_the_certificate_file(tmp_path, packages, cache_dir):
    """A fresh clone has no keys/: the signature is checked with the certificate it carries,
    pinned by the fingerprint the manifest records."""
    require_tool("systemd-repart", "systemd-repart")
    proj = tmp_path / "proj"
    image = signed_build(proj, packages, "ddi", cache_dir, cn="verify test")
    hide_key(proj, "release")
    (proj / "release.crt").unlink()
    rc, result = verify_json(image.manifest_path, "--cache-dir", cache_dir, cwd=tmp_path)
    assert rc == 0 and result["status"] == "reproduced", result
    assert result["signature"]["status"] == "verified"
    assert "the certificate it carries" in result["signature"]["detail"]
    assert "the fingerprint the manifest records" in result["signature"]["detail"]


def _rewrite_signature(image: Path, change) -> None:
    """Rewrite the DDI's signature partition with ``change(der) -> der`` applied."""
    found = find_verity_set(read_gpt(image))
    with open(image, "r+b") as fh:
        fh.seek(found.signature.offset)
        blob = sig.parse_partition(fh.read(found.signature.size), str(image))
        fh.seek(found.signature.offset)
        fh.write(sig.partition_content(blob.root_hash, blob.fingerprint, change(blob.der),
                                       found.signature.size))


def _fix_manifest_sha(image) -> None:
    """Record the tampered image's sha256 in its manifest (as an attacker who rewrites both
    would), so that only the signature can give it away."""
    from pipeline.digest import hash_file

    manifest = json.loads(image.manifest_path.read_text())
    manifest["image"]["sha256"] = hash_file(image.image)[0]
    image.manifest_path.write_text(json.dumps(manifest))


def test_corrupted_signature_fails_without_keys(tmp_path, packages, cache_dir):
    """The last byte of the RSA signature value flipped, no keys/ anywhere: never reproduced."""
    require_tool("systemd-repart", "systemd-repart")
    proj = tmp_path / "proj"
    image = signed_build(proj, packages, "ddi", cache_dir, cn="verify test")
    hide_key(proj, "release")
    (proj / "release.crt").unlink()
    _rewrite_signature(image.image, lambda der: der[:-1] + bytes([der[-1] ^ 0x01]))
    _fix_manifest_sha(image)
    rc, result = verify_json(image.manifest_path, "--cache-dir", cache_dir, cwd=tmp_path)
    assert rc == 3 and result["status"] == "differs", result
    assert result["signature"]["status"] == "failed"
    assert "does not verify with the certificate it carries" in result["signature"]["detail"]
    # Explicitly not checking it: exit 0, and the output says what was not checked.
    proc = run_cli("verify", str(image.manifest_path), "--cache-dir", str(cache_dir),
                   "--no-signature", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("reproduced: hello")
    assert "  signature not checked: --no-signature given" in proc.stdout.splitlines()


def test_signature_without_certificates_is_not_checked(tmp_path, packages, cache_dir):
    """A signature made without embedded certificates (openssl -nocerts) and no certificate
    file: not checked, so not reproduced (exit 1) — unless --cert or --no-signature."""
    require_tool("systemd-repart", "systemd-repart")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.serialization import pkcs7

    proj = tmp_path / "proj"
    image = signed_build(proj, packages, "ddi", cache_dir, cn="nocerts")
    signer = load_signer(proj / "release.key", proj / "release.crt")

    def nocerts(_der: bytes) -> bytes:
        root_hash = find_verity_set(read_gpt(image.image)).root_hash_from_uuids()
        return (pkcs7.PKCS7SignatureBuilder().set_data(root_hash.encode())
                .add_signer(signer.certificate, signer.key, hashes.SHA256())
                .sign(serialization.Encoding.DER,
                      [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.NoAttributes,
                       pkcs7.PKCS7Options.Binary, pkcs7.PKCS7Options.NoCerts]))

    _rewrite_signature(image.image, nocerts)
    _fix_manifest_sha(image)
    hide_key(proj, "release")
    cert = proj.parent / "release.crt.elsewhere"
    (proj / "release.crt").rename(cert)
    rc, result = verify_json(image.manifest_path, "--cache-dir", cache_dir, cwd=tmp_path)
    assert rc == 3 and result["status"] == "incomplete", result
    assert result["signature"]["status"] == "not checked"
    text = run_cli("verify", str(image.manifest_path), "--cache-dir", str(cache_dir),
                   cwd=tmp_path).stdout
    assert text.startswith("incomplete: hello") and "the signature was not checked" in text
    rc, result = verify_json(image.manifest_path, "--cache-dir", cache_dir, "--cert", cert,
                             cwd=tmp_path)
    assert rc == 0 and result["signature"]["status"] == "verified", result
    rc, result = verify_json(image.manifest_path, "--cache-dir", cache_dir, "--no-signature",
                             cwd=tmp_path)
    assert rc == 0 and result["signature"] == {"status": "not checked",
                                               "detail": "--no-signature given"}


def test_image_not_matching_its_manifest_is_not_reproduced(tmp_path, packages, cache_dir):
    """The signature partition rewritten (same unsigned bytes, same signer, valid signature
    bytes re-encoded with other padding): the image is not the one its manifest describes."""
    require_tool("systemd-repart", "systemd-repart")
    proj = tmp_path / "proj"
    image = signed_build(proj, packages, "ddi", cache_dir, cn="verify test")
    found = find_verity_set(read_gpt(image.image))
    with open(image.image, "r+b") as fh:  # the JSON with a space: same meaning, other bytes
        fh.seek(found.signature.offset)
        raw = fh.read(found.signature.size)
        fh.seek(found.signature.offset)
        fh.write(b" " + raw[:-1])
    rc, result = verify_json(image.manifest_path, "--cache-dir", cache_dir, cwd=tmp_path)
    assert rc == 3 and result["status"] == "differs", result
    assert any("not the image its manifest describes" in n for n in result["notes"])


def test_signature_by_someone_else_differs(tmp_path, packages, cache_dir):
    """Same unsigned bytes, but the signature partition now holds another signer's signature
    (the manifest still records the first): differs, and says why."""
    require_tool("systemd-repart", "systemd-repart")
    proj = tmp_path / "proj"
    signer_files(tmp_path / "other", "mallory", "mallory")
    image = signed_build(proj, packages, "ddi", cache_dir, cn="verify test")
    found = find_verity_set(read_gpt(image.image))
    root_hash = found.root_hash_from_uuids()
    mallory = load_signer(tmp_path / "other" / "mallory.key", tmp_path / "other" / "mallory.crt")
    der, _ = sig.sign_root_hash(root_hash, mallory)
    with open(image.image, "r+b") as fh:
        fh.seek(found.signature.offset)
        fh.write(sig.partition_content(root_hash, mallory.fingerprint, der,
                                       found.signature.size))
    rc, result = verify_json(image.manifest_path, "--cache-dir", cache_dir, cwd=tmp_path)
    assert rc == 3 and result["status"] == "differs"
    assert result["signature"]["status"] == "failed"
    assert "the manifest records" in result["signature"]["detail"]
    # The unsigned content is the rebuild's: the signature is the only thing wrong (and the
    # image no longer has the sha256 its manifest records).
    assert result["diff"] is None
    assert any("not the image its manifest describes" in n for n in result["notes"])


def test_ecdsa_signed_ddi_is_reproduced(tmp_path, packages, cache_dir):
    require_tool("systemd-repart", "systemd-repart")
    proj = tmp_path / "proj"
    ecdsa_signer_files(proj, "ec", "ecdsa signer")
    image = build(project(proj, packages, "ddi", sign="ec"), proj / "out", cache_dir)
    assert image.manifest["ddi"]["signatureAlgorithm"].startswith("ecdsa")
    rc, result = verify_json(image.manifest_path, "--cache-dir", cache_dir, cwd=tmp_path)
    assert rc == 0 and result["status"] == "reproduced", result
    assert result["signature"]["status"] == "verified"
    assert "ECDSA signatures differ on every signing" in result["signature"]["detail"]


def test_detached_verity_signed(tmp_path, packages, cache_dir):
    proj = tmp_path / "proj"
    image = signed_build(proj, packages, "squashfs", cache_dir, cn="detached", verity="detached")
    hide_key(proj, "release")
    rc, result = verify_json(image.manifest_path, "--cache-dir", cache_dir, cwd=tmp_path)
    assert rc == 0 and result["status"] == "reproduced", result
    assert result["signature"]["status"] == "verified"
    # A flipped byte in NAME.verity is not "reproduced".
    verity = image.image.with_name("hello.verity")
    data = bytearray(verity.read_bytes())
    data[90] ^= 0xFF
    verity.write_bytes(bytes(data))
    rc, result = verify_json(image.manifest_path, "--cache-dir", cache_dir, cwd=tmp_path)
    assert rc == 3 and result["status"] == "differs"
    assert result["diff"]["explained_at"] == "container"
    assert "hello.verity does not verify" in result["diff"]["summary"]


def test_detached_signature_swapped(tmp_path, packages, cache_dir):
    proj = tmp_path / "proj"
    signer_files(tmp_path / "other", "mallory", "mallory")
    image = signed_build(proj, packages, "squashfs", cache_dir, cn="detached", verity="detached")
    root_hash = image.image.with_name("hello.roothash").read_text().strip()
    mallory = load_signer(tmp_path / "other" / "mallory.key", tmp_path / "other" / "mallory.crt")
    image.image.with_name("hello.roothash.p7s").write_bytes(
        sig.sign_root_hash(root_hash, mallory)[0])
    rc, result = verify_json(image.manifest_path, "--cache-dir", cache_dir, cwd=tmp_path)
    assert rc == 3 and result["signature"]["status"] == "failed", result


def test_same_bytes_other_tool_version_says_one_thing(tmp_path, packages, cache_dir):
    """The manifest names another mksquashfs, yet the rebuild is byte-identical: 'reproduced',
    with a note that says so — never 'different bytes are expected' next to it."""
    proj = tmp_path / "proj"
    image = build(project(proj, packages, "squashfs"), proj / "out", cache_dir)
    manifest = json.loads(image.manifest_path.read_text())
    manifest["tools"]["mksquashfs"] = "4.6.1"
    image.manifest_path.write_text(json.dumps(manifest))
    rc, result = verify_json(image.manifest_path, "--cache-dir", cache_dir, cwd=tmp_path)
    assert rc == 0 and result["status"] == "reproduced"
    assert result["notes"][0].startswith("mksquashfs ") and \
        result["notes"][0].endswith("4.6.1 in the manifest: the bytes are identical all the same")
    text = run_cli("verify", str(image.manifest_path), "--cache-dir", str(cache_dir),
                   cwd=tmp_path).stdout
    assert "expected" not in text


def test_changed_local_package_names_what_to_do(tmp_path, packages, cache_dir):
    """A local package file changed since the build: the hint says the build reads it from its
    path (not from the cache)."""
    proj = tmp_path / "proj"
    image = build(project(proj, packages, "squashfs"), proj / "out", cache_dir)
    other_cache = tmp_path / "empty-cache"  # the session cache may hold the old file by hash
    deb = proj / "pkgs" / "hello-tools.deb"
    deb.write_bytes(deb.read_bytes() + b"\0")
    proc = run_cli("verify", str(image.manifest_path), "--cache-dir", str(other_cache),
                   cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "not the one the manifest recorded" in proc.stderr
    assert f"the build reads {deb} itself: put the file with the recorded sha256 back there" \
        in proc.stderr
    assert "in the cache" not in proc.stderr


def test_variations_of_a_signed_ddi_need_no_key(tmp_path, packages, cache_dir):
    """The variations are unsigned rebuilds compared with verify's own: no row differs in its
    signature, and none needs to read the key."""
    require_tool("systemd-repart", "systemd-repart")
    proj = tmp_path / "proj"
    image = signed_build(proj, packages, "ddi", cache_dir, cn="vary")
    hide_key(proj, "release")
    rc, result = verify_json(image.manifest_path, "--cache-dir", cache_dir, "--vary",
                             "tz,recipe-path", "--work-dir", tmp_path, cwd=tmp_path)
    assert rc == 0, result
    assert [(v["name"], v["status"]) for v in result["variations"]] == [
        ("recipe-path", "reproduced"), ("tz", "reproduced")]
    shutil.rmtree(proj / "out")


def test_cert_of_someone_else_fails(tmp_path, packages, cache_dir):
    """--cert names the certificate the user trusts: a signature by another is 'failed'; on an
    image without verity or signature, asking for a certificate check fails too."""
    require_tool("systemd-repart", "systemd-repart")
    proj = tmp_path / "proj"
    signer_files(tmp_path / "other", "mallory", "mallory")
    image = signed_build(proj, packages, "ddi", cache_dir, cn="verify test")
    rc, result = verify_json(image.manifest_path, "--cache-dir", cache_dir, "--cert",
                             tmp_path / "other" / "mallory.crt", cwd=tmp_path)
    assert rc == 3 and result["status"] == "differs", result
    assert result["signature"]["status"] == "failed"
    assert "the manifest records" in result["signature"]["detail"]
    rc, result = verify_json(image.manifest_path, "--cache-dir", cache_dir, "--cert",
                             proj / "release.crt", cwd=tmp_path)
    assert rc == 0 and "--cert" in result["signature"]["detail"], result
    plain = build(project(tmp_path / "plain", packages, "squashfs"), tmp_path / "plain" / "out",
                  cache_dir)
    rc, result = verify_json(plain.manifest_path, "--cache-dir", cache_dir, "--cert",
                             proj / "release.crt", cwd=tmp_path)
    assert rc == 3 and result["signature"]["status"] == "failed", result
