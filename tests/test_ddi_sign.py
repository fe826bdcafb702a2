"""``sign`` refuses what it must not sign or replace, in one line, and leaves the image untouched.

Real images (mksquashfs, systemd-repart, veritysetup) and real PKCS#7 from ``openssl smime``.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli
from test_ddi import SEED, build, need_tools, new_fs_image

from pipeline.errors import InputError
from pipeline.image.ddi import detached_verity, inspect_image, sign_ddi, sign_detached


@pytest.fixture(scope="module")
def fs_image(tmp_path_factory) -> Path:
    return new_fs_image(tmp_path_factory.mktemp("fs"))


@pytest.fixture
def signer(rsa_signer):
    return rsa_signer


@pytest.fixture
def other(other_signer):
    return other_signer


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def unsigned_ddi(fs_image: Path, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    info = build(fs_image, directory / "demo.raw")
    (directory / "demo.roothash").write_text(info.root_hash)  # as `build --unsigned` does
    return directory / "demo.raw"


def unsigned_detached(fs_image: Path, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    image = Path(shutil.copy(fs_image, directory / "demo.raw"))
    detached_verity(image, seed=SEED, signer=None, workdir=directory)
    return image


def openssl_sign(content: Path, signer, out: Path, *extra: str) -> Path:
    subprocess.run(["openssl", "smime", "-sign", "-binary", "-outform", "DER", "-md", "sha256",
                    "-in", content, "-signer", signer.cert_path, "-inkey", signer.key_path,
                    "-out", out, *extra], check=True, capture_output=True)
    return out


def bare_root_hash(image: Path) -> Path:
    """NAME.roothash without its newline: the exact signed content."""
    rh = image.with_name("content.txt")
    rh.write_text(image.with_name("demo.roothash").read_text().strip())
    return rh


# --- finding 6: detached verity is checked before signing ------------------------------------

def test_detached_sign_refuses_a_tampered_image(fs_image, signer, tmp_path):
    need_tools()
    image = unsigned_detached(fs_image, tmp_path)
    with open(image, "r+b") as fh:
        fh.seek(image.stat().st_size - 5000)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 1]))
    proc = run_cli("sign", str(image), "--key", str(signer.key_path), "--cert",
                   str(signer.cert_path))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {image}: verity data does not match root hash")
    assert "refusing to sign a damaged or foreign image" in proc.stderr
    assert not (tmp_path / "demo.roothash.p7s").exists()
    (tmp_path / "demo.verity").unlink()
    with pytest.raises(InputError, match="demo.verity next to it"):
        sign_detached(image, signer=signer)


# --- finding 9: a PKCS#7 with signed attributes (or with content) is not systemd's ------------

@pytest.mark.parametrize("kind", ["ddi", "detached"])
def test_p7s_with_signed_attributes_is_refused(fs_image, signer, tmp_path, kind):
    need_tools()
    image = (unsigned_ddi if kind == "ddi" else unsigned_detached)(fs_image, tmp_path)
    content = bare_root_hash(image)
    before = sha256(image)
    with_attrs = openssl_sign(content, signer, tmp_path / "attrs.p7s")  # no -noattr
    proc = run_cli("sign", str(image), "--signature", str(with_attrs), "--cert",
                   str(signer.cert_path))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {with_attrs}: the signature has signed attributes")
    assert "-noattr" in proc.stderr and len(proc.stderr.splitlines()) == 1
    attached = openssl_sign(content, signer, tmp_path / "attached.p7s", "-noattr", "-nodetach")
    proc = run_cli("sign", str(image), "--signature", str(attached), "--cert",
                   str(signer.cert_path))
    assert proc.returncode == 2 and "not detached" in proc.stderr
    assert sha256(image) == before and not (tmp_path / "demo.roothash.p7s").exists()

    good = openssl_sign(content, signer, tmp_path / "good.p7s", "-noattr")
    proc = run_cli("sign", str(image), "--signature", str(good), "--cert", str(signer.cert_path))
    assert proc.returncode == 0, proc.stderr


# --- finding 13: a missing image is a one-line error ------------------------------------------

def test_sign_names_a_missing_image(signer, tmp_path):
    for path, what in [(tmp_path / "missing.raw", "no such file"),
                       (tmp_path, "not a regular file")]:
        proc = run_cli("sign", str(path), "--key", str(signer.key_path), "--cert",
                       str(signer.cert_path))
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr == f"error: {path}: {what}" + (
            " (sign takes an image file)\n" if path == tmp_path else "\n")


# --- finding 17a: another signer's signature is replaced only with --force --------------------

def test_replacing_another_signers_signature_needs_force(fs_image, signer, other, tmp_path):
    need_tools()
    image = unsigned_ddi(fs_image, tmp_path)
    sign_ddi(image, signer=signer)
    signed = sha256(image)
    sign_ddi(image, signer=signer)  # the same certificate again: allowed, same bytes (RSA)
    assert sha256(image) == signed

    args = ["sign", str(image), "--key", str(other.key_path), "--cert", str(other.cert_path)]
    proc = run_cli(*args)
    assert proc.returncode == 2 and sha256(image) == signed
    assert proc.stderr == (f"error: {image}: already signed by certificate {signer.fingerprint}, "
                           f"not by {other.fingerprint} (pass --force to replace that "
                           "signature)\n")
    assert "--force" in run_cli("sign", "--help").stdout
    proc = run_cli(*args, "--force")
    assert proc.returncode == 0, proc.stderr
    report = inspect_image(image, cert=other.cert_path)
    assert report["signature"]["verified"] is True
    assert report["signature"]["certificateFingerprint"] == other.fingerprint


def test_replacing_a_detached_signature_needs_force(fs_image, signer, other, tmp_path):
    need_tools()
    image = unsigned_detached(fs_image, tmp_path)
    p7s = tmp_path / "demo.roothash.p7s"
    # made elsewhere without certificates: its signer is found by verifying it
    openssl_sign(bare_root_hash(image), signer, p7s, "-noattr", "-nocerts")
    sign_detached(image, signer=signer)  # same signer: fine
    mine = p7s.read_bytes()
    with pytest.raises(InputError, match=f"already signed by certificate {signer.fingerprint}"):
        sign_detached(image, signer=other)
    assert p7s.read_bytes() == mine
    sign_detached(image, signer=other, replace=True)
    assert p7s.read_bytes() != mine
    assert inspect_image(image, cert=other.cert_path)["signature"]["verified"] is True
