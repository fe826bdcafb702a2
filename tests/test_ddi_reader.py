"""issue 12 item 2: one DDI reader (image/ddi/reader.py) that verifies each image once per run.

``check`` and ``doctor`` used to inspect an image once per installed certificate, copying its
partitions and running ``veritysetup verify`` each time. Here a wrapper script on PATH logs every
``veritysetup`` and ``openssl`` call and execs the real tool (real tools, nothing mocked): with
two certificates in verity.d, each image's tree is verified once and its signature checked at
most once per certificate. The cache never outlives the bytes it describes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from prereq import require_tool
from test_ddi import build, make_squashfs, make_tree, new_fs_image, new_signer

from pipeline.errors import InputError
from pipeline.image.ddi import reader


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    d = tmp_path_factory.mktemp("reader")
    signer = new_signer(d / "keys", "reader test")
    other = new_signer(d / "other", "someone else")
    build(new_fs_image(d), d / "demo.raw", signer)
    build(make_squashfs(make_tree(d / "second", "second"), d / "second.squashfs"),
          d / "second.raw", signer)
    time.sleep(0.2)  # older than the reads below (a fresh file is not cached: see reader.py)
    return d / "demo.raw", signer, other


def _logging_path(tmp_path: Path) -> tuple[dict, Path]:
    """A PATH whose veritysetup and openssl log their arguments and exec the real ones."""
    wrappers, log = tmp_path / "wrappers", tmp_path / "calls.log"
    wrappers.mkdir()
    for tool, package in (("veritysetup", "cryptsetup-bin"), ("openssl", "openssl")):
        require_tool(tool, package)
        real = shutil.which(tool, path=os.environ["PATH"] + ":/usr/sbin:/sbin")
        script = wrappers / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\nexec "{real}" "$@"\n')
        script.chmod(0o755)
    return {"PATH": f"{wrappers}:{os.environ['PATH']}"}, log


def _calls(log: Path, prefix: str) -> list[str]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [line for line in lines if line.startswith(prefix)]


def _root_with_two_certificates(root: Path, signed) -> Path:
    from merge import make_root

    image, signer, other = signed
    make_root(root, "ID=debian\nVERSION_ID=12\n")
    verity_d = root / "etc/verity.d"
    verity_d.mkdir(parents=True)
    (verity_d / "0-other.crt").write_bytes(other.cert_path.read_bytes())
    (verity_d / "1-release.crt").write_bytes(signer.cert_path.read_bytes())
    for name in ("demo.raw", "second.raw"):
        shutil.copy2(image.with_name(name), root / "var/lib/extensions" / name)
    old = time.time() - 60
    for name in ("demo.raw", "second.raw"):
        os.utime(root / "var/lib/extensions" / name, (old, old))
    time.sleep(0.2)  # ctime, which utime cannot set back, must be older than the read
    return root


@pytest.mark.parametrize("command", ["doctor", "check"])
def test_two_certificates_verify_each_image_once(command, signed, tmp_path):
    from conftest import run_cli

    env, log = _logging_path(tmp_path)
    root = _root_with_two_certificates(tmp_path / "root", signed)
    images = [root / "var/lib/extensions" / n for n in ("demo.raw", "second.raw")]
    if command == "doctor":
        proc = run_cli("doctor", "--root", str(root), "--systemd", "252", "--json", env=env)
        findings = json.loads(proc.stdout)["findings"]
        verified = [f for f in findings if f["code"] == "signature.verified"]
        assert len(verified) == 2 and all("1-release.crt" in f["message"] for f in verified)
    else:
        proc = run_cli("check", *map(str, images), "--root", str(root), "--systemd", "252",
                       "--json", env=env)
        judged = json.loads(proc.stdout)["images"]
        assert [j["verdict"] for j in judged] == ["merges", "merges"], judged
    assert "Traceback" not in proc.stderr, proc.stderr
    verifies = _calls(log, "veritysetup verify")
    # one tree check per image, not one per certificate
    assert len(verifies) == 2, verifies
    # the wrong certificate is tried, then the right one: two PKCS#7 checks per image, however
    # often check/doctor ask
    smime = _calls(log, "openssl smime -verify")
    assert len(smime) == 4, smime


def test_the_same_file_is_read_and_verified_once(signed):
    image, signer, other = signed
    reader.clear_cache()
    first = reader.open_image(image)
    assert reader.open_image(image) is first
    assert first.format == "ddi" and first.root_hash == first.uuid_root_hash
    assert first.signature.where == "root-verity-sig" and first.signature.blob is not None
    assert first.check_verity() == (True, "")
    assert first._verity  # remembered on the object the cache hands out again
    verdict = reader.verify(image, [other.certificate, signer.certificate])
    assert verdict == reader.Verdict((True, ""), True, 1)
    assert reader.verify(image, [other.certificate]).verified_by is None


def test_a_changed_file_is_read_again(signed, tmp_path):
    image, _, _ = signed
    copy = Path(shutil.copy2(image, tmp_path / "copy.raw"))
    old = time.time() - 60
    os.utime(copy, (old, old))
    time.sleep(0.2)
    first = reader.open_image(copy)
    assert reader.open_image(copy) is first
    found = first.verity_set
    with open(copy, "r+b") as fh:  # one byte of the data partition's last block
        fh.seek(found.data.offset + found.data.size - 1)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    os.utime(copy, (old, old))  # the same mtime: the ctime still tells the change
    second = reader.open_image(copy)
    assert second is not first
    ok, reason = second.check_verity()
    assert not ok and reason


def test_a_file_changed_just_before_the_read_is_not_remembered(signed, tmp_path):
    """File times tick coarsely: a file written in the same tick as the read is read again."""
    image, _, _ = signed
    fresh = Path(shutil.copy(image, tmp_path / "fresh.raw"))
    for _ in range(50):  # a stall of the machine between the touch and the read: try again
        os.utime(fresh)  # changed (ctime) just now
        read = reader.open_image(fresh)
        if (str(fresh), read._stamp) not in reader._CACHE:
            break
    else:
        pytest.fail("an image changed just before the read was cached")
    assert reader.open_image(fresh) is not read


def test_plain_image_with_detached_files(tmp_path):
    from test_ddi import need_tools

    need_tools()
    fs = new_fs_image(tmp_path)
    image = Path(shutil.copy(fs, tmp_path / "plain.raw"))
    read = reader.open_image(image)
    assert read.format == "plain" and read.signature is None
    assert read.detached == reader.Detached(None, None, None)
    with pytest.raises(InputError, match="plain.raw: no GPT partition table"):
        reader.open_ddi(image)
    (tmp_path / "plain.roothash.p7s").write_bytes(b"junk")
    read = reader.open_image(image)
    assert read.signature.where == "plain.roothash.p7s"
    assert read.signature.present and read.signature.blob is None
    assert "not a DER or PEM PKCS#7" in read.signature.error.line()


def test_a_signature_partition_larger_than_systemd_reads_is_not_read(tmp_path):
    """systemd refuses a signature partition over 4 MiB (EFBIG); so does the reader, without
    reading it into memory. A GPT written by the real sfdisk."""
    import subprocess

    require_tool("sfdisk", "fdisk")
    image = tmp_path / "big-sig.raw"
    with open(image, "wb") as fh:
        fh.truncate(12 << 20)
    table = ("label: gpt\n"
             "size=1MiB, type=4f68bce3-e8cd-4db1-96e7-fbcaf984b709\n"
             "size=1MiB, type=2c7357ed-ebd2-46d9-aec1-23d437ec2bf5\n"
             "size=5MiB, type=41092b05-9fc8-4523-994f-2def0408b176\n")
    subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(image)],
                   input=table.encode(), check=True, capture_output=True)
    carried = reader.open_image(image).signature
    assert carried.where == "root-verity-sig" and carried.raw is None
    assert carried.present and carried.blob is None
    assert carried.error.line() == (f"{image}: signature partition of 5242880 bytes: systemd "
                                    "reads at most 4194304 (dissect-image.c: EFBIG)")
