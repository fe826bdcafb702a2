"""``inspect`` says FAILED (exit 1) for every way an image fails on a host, names inputs it cannot
read (exit 2), and never loop-mounts a file system it cannot trust.

Images are real: squashfs/erofs made by mksquashfs/mkfs.erofs, DDIs assembled with systemd-repart,
partition UUIDs changed with sfdisk, signatures checked by openssl.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli
from prereq import require_tool
from test_ddi import SEED, build, make_tree, need_tools, new_fs_image, new_signer

from pipeline.errors import InputError
from pipeline.image.ddi import assemble_ddi, inspect_image, sign_ddi


@pytest.fixture(scope="module")
def signer(tmp_path_factory):
    return new_signer(tmp_path_factory.mktemp("rsa"), "inspect test")


@pytest.fixture(scope="module")
def signed(tmp_path_factory, signer) -> Path:
    d = tmp_path_factory.mktemp("signed")
    out = d / "demo.raw"
    build(new_fs_image(d), out, signer)
    return out


@pytest.fixture(scope="module")
def erofs_fs(tmp_path_factory) -> Path:
    need_tools()
    require_tool("mkfs.erofs", "erofs-utils")
    require_tool("fsck.erofs", "erofs-utils")
    d = tmp_path_factory.mktemp("erofs")
    img = d / "ero.erofs"
    subprocess.run(["mkfs.erofs", "-T0", "-U", "11111111-2222-3333-4444-555555555555",
                    "--all-root", img, make_tree(d / "src", name="ero")], check=True,
                   capture_output=True)
    return img


def erofs_ddi(fs: Path, out: Path, signer=None) -> Path:
    assemble_ddi(fs, out, arch="x86-64", fs_type="erofs", seed=SEED, signer=signer,
                 workdir=out.parent)
    return out


def inspect_cli(image: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    human = run_cli("inspect", str(image), *args)
    machine = run_cli("inspect", str(image), "--json", *args)
    assert machine.returncode == human.returncode, (human.stderr, machine.stderr)
    return human, json.loads(machine.stdout)


# --- finding 5: partition UUIDs that do not spell the root hash -----------------------------

def test_partition_uuid_not_from_root_hash_fails(signed, signer, tmp_path):
    require_tool("sfdisk", "fdisk")
    image = Path(shutil.copy(signed, tmp_path / "demo.raw"))
    good, good_report = inspect_cli(image, "--cert", str(signer.cert_path))
    assert good.returncode == 0 and good_report["problems"] == []
    assert "result: no problems found" in good.stdout

    subprocess.run(["sfdisk", "--part-uuid", image, "1", "11111111-2222-3333-4444-555555555555"],
                   check=True, capture_output=True)
    human, report = inspect_cli(image, "--cert", str(signer.cert_path))
    # The tree still verifies against the signed root hash, and the signature verifies: only
    # systemd 258+, which takes the root hash from the UUIDs, would refuse it. That is a failure.
    assert report["verity"]["verified"] is True and report["signature"]["verified"] is True
    assert report["verity"]["uuids_match_root_hash"] is False
    assert report["verity"]["root_hash_from_uuids"].startswith("11111111222233334444555555555555")
    assert human.returncode == 3
    assert "FAILED: the partition UUIDs spell root hash 1111111122223333" in human.stdout
    assert "systemd 258+" in human.stdout and "— verified\n" not in human.stdout
    assert any("partition UUIDs" in p for p in report["problems"])
    with pytest.raises(InputError, match="does not match root hash"):
        sign_ddi(image, signer=signer)  # nor is it signed again


# --- finding 14: inputs inspect cannot read ---------------------------------------------------

def test_not_an_image_is_an_input_error(tmp_path):
    junk = tmp_path / "junk.raw"
    junk.write_bytes(random.Random(93).randbytes(100_000))  # the same bytes every run
    for path, what in [(junk, "not a squashfs, erofs or GPT disk image"),
                       (tmp_path / "missing.raw", "no such file"),
                       (tmp_path, "not a regular file")]:
        proc = run_cli("inspect", str(path))
        assert proc.returncode == 2, proc.stdout
        assert proc.stderr.startswith(f"error: {path}: {what}") and "Traceback" not in proc.stderr
        assert proc.stdout == ""


def test_corrupt_erofs_partition_says_what_failed(erofs_fs, tmp_path):
    bad_fs = tmp_path / "bad.erofs"
    content = bytearray(erofs_fs.read_bytes())
    content[1024 + 128] ^= 0xFF  # the root inode, covered by the superblock checksum
    bad_fs.write_bytes(content)
    image = erofs_ddi(bad_fs, tmp_path / "bad.raw")  # verity is computed over the corrupt bytes
    human, report = inspect_cli(image)
    assert report["verity"]["verified"] is True
    fs = report["filesystem"]
    assert fs["type"] == "erofs" and "corrupt erofs file system" in fs["error"]
    assert "checksum" in fs["error"] and str(tmp_path) not in fs["error"]
    assert human.returncode == 3
    assert "file system: erofs — NOT readable (corrupt erofs file system" in human.stdout
    assert "None" not in human.stdout

    # No file system magic at all in the data partition (tampered after the build):
    wiped = Path(shutil.copy(erofs_ddi(erofs_fs, tmp_path / "ok.raw"), tmp_path / "wiped.raw"))
    data = inspect_image(wiped)["partitions"][0]
    with open(wiped, "r+b") as fh:
        fh.seek(data["offset"] + 1024)
        fh.write(bytes(4))
    human, report = inspect_cli(wiped)
    assert report["filesystem"]["type"] is None
    assert "neither squashfs nor erofs" in report["filesystem"]["error"]
    assert human.returncode == 3 and "file system: unknown — NOT readable" in human.stdout


# --- finding 10: an untrusted file system never reaches the kernel ----------------------------

def test_untrusted_erofs_is_read_in_userspace(erofs_fs, signer, tmp_path):
    unsigned = erofs_ddi(erofs_fs, tmp_path / "unsigned.raw")
    report = inspect_image(unsigned)
    assert report["verity"]["verified"] is True  # verity alone: anyone can compute a tree
    assert report["filesystem"]["readWith"] == "fsck.erofs"
    assert report["filesystem"]["trusted"] is False
    assert report["filesystem"]["release"]["fields"]["VERSION_ID"] == "12"

    signed = erofs_ddi(erofs_fs, tmp_path / "signed.raw", signer)
    # The embedded certificate is the image's own claim: still not trusted.
    assert inspect_image(signed)["filesystem"]["readWith"] == "fsck.erofs"
    trusted = inspect_image(signed, cert=signer.cert_path)["filesystem"]
    assert trusted["trusted"] is True
    assert trusted["readWith"] == ("mount" if os.geteuid() == 0 else "fsck.erofs")
    assert trusted["files"] == report["filesystem"]["files"] == 3

    tampered = Path(shutil.copy(signed, tmp_path / "tampered.raw"))
    data = inspect_image(signed)["partitions"][0]
    with open(tampered, "r+b") as fh:  # a byte of the incompressible blob, not the metadata
        fh.seek(data["offset"] + 3 * 4096 + 100)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 1]))
    report = inspect_image(tampered, cert=signer.cert_path)
    assert report["verity"]["verified"] is False
    assert report["filesystem"]["readWith"] == "fsck.erofs"
    human = run_cli("inspect", str(tampered), "--cert", str(signer.cert_path))
    assert human.returncode == 3 and "not mounted: untrusted image" in human.stdout


# --- issue 11 §7: --cert with nothing to verify is a failure ----------------------------------

def test_cert_given_but_image_unsigned_fails(signer, tmp_path):
    fs_image = new_fs_image(tmp_path)
    unsigned = tmp_path / "unsigned.raw"
    build(fs_image, unsigned)
    for image in (unsigned, fs_image):  # an unsigned DDI, a plain squashfs image
        plain, _ = inspect_cli(image)
        assert plain.returncode == 0, plain.stdout  # nothing asked, nothing failed
        human, report = inspect_cli(image, "--cert", str(signer.cert_path))
        assert human.returncode == 3, human.stdout
        assert report["problems"] == [f"no signature to check against {signer.cert_path}: "
                                      "the image is not signed"]
        assert f"FAILED: no signature to check against {signer.cert_path}" in human.stdout
        assert "no problems found" not in human.stdout
