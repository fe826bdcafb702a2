"""DDI assembly, signing and inspection against the real tools (repart, veritysetup, openssl).

The kernel here cannot merge a DDI (no device-mapper, no partition scanning), so correctness is
shown the way systemd would check it: partitions cut out of the image by offset pass
``veritysetup verify``, the signature passes ``openssl smime -verify``, and the GPT read back by
sfdisk has the right types and root-hash-derived UUIDs. Helpers here are reused by the other
test_ddi_* files.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prereq import require_tool

from pipeline import keys
from pipeline.errors import InputError
from pipeline.image.ddi import assemble_ddi, detached_verity, inspect_image, sign_ddi
from pipeline.image.ddi.gpt import read_gpt
from pipeline.stages.manifest import Ddi
from pipeline.systemd import partitions

SEED = hashlib.sha256(b"test inputs").digest()
SIG_SIZE = 16 * 1024


def need_tools() -> None:
    for tool, package in [("mksquashfs", "squashfs-tools"), ("veritysetup", "cryptsetup-bin"),
                          ("systemd-repart", "systemd-repart"), ("openssl", "openssl"),
                          ("sfdisk", "fdisk")]:
        require_tool(tool, package)


def make_tree(root: Path, name: str = "demo", payload: bytes = b"hello\n") -> Path:
    release = root / "usr/lib/extension-release.d"
    release.mkdir(parents=True)
    (release / f"extension-release.{name}").write_text("ID=debian\nVERSION_ID=12\n")
    (root / "usr/bin").mkdir()
    (root / "usr/bin/hello").write_bytes(payload)
    (root / "usr/share/big").mkdir(parents=True)
    # ~200 KiB of incompressible data: more than one hash block, so the tree has real levels
    (root / "usr/share/big/blob").write_bytes(hashlib.shake_256(payload).digest(200_000))
    return root


def make_squashfs(src: Path, out: Path) -> Path:
    subprocess.run(["mksquashfs", src, out, "-noappend", "-all-root", "-mkfs-time", "0",
                    "-all-time", "0", "-no-progress", "-quiet"], check=True)
    return out


def make_cert(key, path: Path, cn: str = "test") -> Path:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(7)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=9000))
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def write_key(key, path: Path) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    return path


def new_signer(directory: Path, cn: str) -> keys.Signer:
    """An RSA-2048 key pair made by ``keys.generate`` (2048 bits: fast enough for tests)."""
    directory.mkdir(parents=True, exist_ok=True)
    keys.generate(directory / "release.key", directory / "release.crt", subject=f"CN={cn}",
                  days=30, key_size=2048)
    return keys.load_signer(directory / "release.key", directory / "release.crt")


def new_fs_image(directory: Path) -> Path:
    need_tools()
    return make_squashfs(make_tree(directory / "src"), directory / "demo.squashfs")


@pytest.fixture(scope="session")
def fs_image(tmp_path_factory) -> Path:
    return new_fs_image(tmp_path_factory.mktemp("fs"))


@pytest.fixture(scope="session")
def signed_ddi(tmp_path_factory, fs_image, rsa_signer):
    d = tmp_path_factory.mktemp("signed")
    out = d / "demo.raw"
    info = assemble_ddi(fs_image, out, arch="x86-64", fs_type="squashfs", seed=SEED,
                        signer=rsa_signer, workdir=d)
    return out, info


def build(fs_image: Path, out: Path, signer=None, **kw):
    kw.setdefault("arch", "x86-64")
    return assemble_ddi(fs_image, out, fs_type="squashfs", seed=SEED, signer=signer,
                        workdir=out.parent, **kw)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cut(image: Path, offset: int, size: int, dest: Path) -> Path:
    with open(image, "rb") as fh:
        fh.seek(offset)
        dest.write_bytes(fh.read(size))
    return dest


def sfdisk_table(image: Path) -> dict:
    out = subprocess.run(["sfdisk", "--json", image], check=True, capture_output=True).stdout
    return json.loads(out)["partitiontable"]


def openssl_verify(der: bytes, root_hash: str, cert_pem: Path, tmp: Path) -> subprocess.CompletedProcess:
    (tmp / "sig.der").write_bytes(der)
    (tmp / "roothash.txt").write_text(root_hash)
    return subprocess.run(["openssl", "smime", "-verify", "-binary", "-inform", "DER",
                           "-in", tmp / "sig.der", "-content", tmp / "roothash.txt",
                           "-CAfile", cert_pem, "-purpose", "any", "-out", "/dev/null"],
                          capture_output=True, text=True)


# --- reproducibility -------------------------------------------------------------------------

def test_same_bytes_from_different_dirs_env_and_umask(fs_image, rsa_signer, tmp_path,
                                                       monkeypatch):
    first = build(fs_image, (tmp_path / "a").mkdir() or tmp_path / "a/x.raw", rsa_signer)
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "12345")
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o077)
    try:
        second = build(fs_image, (tmp_path / "b c").mkdir() or tmp_path / "b c/y.raw", rsa_signer)
    finally:
        os.umask(old)
    assert sha256(tmp_path / "a/x.raw") == sha256(tmp_path / "b c/y.raw") == first.sha256
    assert first == second


# --- the image as systemd would check it -------------------------------------------------------

def test_partitions_verify_with_veritysetup_and_openssl(signed_ddi, rsa_signer, tmp_path):
    image, info = signed_ddi
    table = read_gpt(image)
    ours = [(p.first_lba, p.last_lba - p.first_lba + 1, p.type_uuid, p.uuid, p.name)
            for p in table.partitions]
    theirs = sfdisk_table(image)
    assert theirs["id"].lower() == table.disk_uuid == info.disk_uuid
    assert ours == [(p["start"], p["size"], p["type"].lower(), p["uuid"].lower(), p["name"])
                    for p in theirs["partitions"]]
    data, verity_part, sig_part = table.partitions
    assert [p.type_uuid for p in table.partitions] == [
        "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5",
        "41092b05-9fc8-4523-994f-2def0408b176"]
    assert [p.name for p in table.partitions] == [
        "root-x86-64", "root-x86-64-verity", "root-x86-64-verity-sig"]
    assert data.attributes == verity_part.attributes == 1 << 60 and sig_part.attributes == 0

    root_hash = info.root_hash
    assert uuid.UUID(data.uuid).hex == root_hash[:32]
    assert uuid.UUID(verity_part.uuid).hex == root_hash[32:]

    d = cut(image, data.offset, data.size, tmp_path / "data")
    h = cut(image, verity_part.offset, verity_part.size, tmp_path / "hash")
    subprocess.run(["veritysetup", "verify", d, h, root_hash], check=True, capture_output=True)
    dump = subprocess.run(["veritysetup", "dump", h], check=True, capture_output=True,
                          text=True).stdout
    key = bytearray(SEED[:16])  # repart 255+'s --seed: a v4 UUID; salt = HMAC(seed, token)
    key[6], key[8] = (key[6] & 0x0F) | 0x40, (key[8] & 0x3F) | 0x80
    salt = hmac.new(bytes(key), b"verity-salt", hashlib.sha256).hexdigest()
    assert f"Salt:            \t{salt}" in dump
    assert "Data block size: \t4096" in dump and "Hash block size: \t4096" in dump
    assert info.verity.salt.hex() == salt

    raw = cut(image, sig_part.offset, sig_part.size, tmp_path / "sig").read_bytes()
    assert len(raw) == SIG_SIZE
    text, _, padding = raw.partition(b"\0")
    assert set(padding) == {0}
    doc = json.loads(text)
    assert list(doc) == ["rootHash", "certificateFingerprint", "signature"]
    assert doc["rootHash"] == root_hash
    assert doc["certificateFingerprint"] == hashlib.sha256(rsa_signer.cert_der).hexdigest()
    proc = openssl_verify(base64.b64decode(doc["signature"]), root_hash, rsa_signer.cert_path,
                          tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert openssl_verify(base64.b64decode(doc["signature"]), root_hash + "\n",
                          rsa_signer.cert_path, tmp_path).returncode != 0  # no newline signed

    files = subprocess.run(["unsquashfs", "-lc", "-d", "", d], check=True, capture_output=True,
                           text=True).stdout.split()
    assert "/usr/bin/hello" in files


def test_manifest_describes_the_image(signed_ddi, rsa_signer):
    image, info = signed_ddi
    m = Ddi.of(info).to_json()  # the manifest's "ddi" section (pipeline/stages/manifest.py)
    assert m["sha256"] == sha256(image) and m["size"] == image.stat().st_size
    assert [p["designator"] for p in m["partitions"]] == ["root", "root-verity", "root-verity-sig"]
    for p in m["partitions"]:
        assert p["sha256"] == hashlib.sha256(
            cut(image, p["offset"], p["size"], image.with_suffix(".part")).read_bytes()).hexdigest()
    assert m["certificateFingerprint"] == rsa_signer.fingerprint
    assert m["signatureAlgorithm"] == "rsa-2048-sha256"
    assert m["verity"]["superblockUuid"] == str(uuid.UUID(m["verity"]["superblockUuid"]))
    blank = bytearray(image.read_bytes())
    sig = m["partitions"][2]
    blank[sig["offset"]:sig["offset"] + sig["size"]] = bytes(sig["size"])
    assert m["unsignedSha256"] == hashlib.sha256(blank).hexdigest() != m["sha256"]
    json.dumps(m)


def test_arm64_image_built_on_any_host(fs_image, tmp_path):
    info = build(fs_image, tmp_path / "arm.raw", arch="arm64")
    types = [p["type"].lower() for p in sfdisk_table(tmp_path / "arm.raw")["partitions"]]
    assert types == [partitions.type_uuid(d, "arm64")
                     for d in ("root", "root-verity", "root-verity-sig")]
    assert types == ["b921b045-1df0-41c3-af44-4c6f280d3fae", "df3300ce-d69f-4c92-978c-9bfb0f38d820",
                     "6db69de6-29f4-4758-a7a5-962190f00ce3"]
    assert [p.label for p in info.partitions] == [
        "root-arm64", "root-arm64-verity", "root-arm64-verity-sig"]


def test_bad_arguments_are_input_errors(fs_image, tmp_path):
    with pytest.raises(InputError, match="systemd spells it 'x86-64'"):
        build(fs_image, tmp_path / "x.raw", arch="x86_64")
    with pytest.raises(InputError, match="not a erofs image"):
        assemble_ddi(fs_image, tmp_path / "x.raw", arch="x86-64", fs_type="erofs", seed=SEED,
                     signer=None, workdir=tmp_path)
    assert not (tmp_path / "x.raw").exists()


# --- inspect --------------------------------------------------------------------------------

def test_inspect_reports_our_image(signed_ddi, rsa_signer):
    image, info = signed_ddi
    report = inspect_image(image, cert=rsa_signer.cert_path)
    assert report["format"] == "ddi" and report["sha256"] == info.sha256
    assert [p["type"] for p in report["partitions"]] == [
        "root-x86-64", "root-x86-64-verity", "root-x86-64-verity-sig"]
    assert report["verity"]["verified"] is True
    assert report["verity"]["rootHash"] == info.root_hash
    sig = report["signature"]
    assert sig["verified"] is True and sig["verifiedWith"] == "given certificate"
    assert sig["fingerprintMatches"] is True
    fs = report["filesystem"]
    assert fs["type"] == "squashfs" and fs["files"] == 3
    assert fs["release"]["path"] == "usr/lib/extension-release.d/extension-release.demo"
    assert fs["release"]["fields"] == {"ID": "debian", "VERSION_ID": "12"}
    json.dumps(report)


def test_inspect_reports_tampered_data(signed_ddi, rsa_signer, tmp_path):
    image, info = signed_ddi
    bad = tmp_path / "bad.raw"
    content = bytearray(image.read_bytes())
    data = info.partitions[0]
    content[data.offset + data.size - 5000] ^= 0x01  # inside the incompressible blob
    bad.write_bytes(content)
    report = inspect_image(bad)
    assert report["verity"]["verified"] is False
    assert "Verification" in report["verity"]["reason"]
    with pytest.raises(InputError, match="does not match root hash"):
        sign_ddi(bad, signer=rsa_signer)


def test_inspect_wrong_certificate(signed_ddi, other_signer):
    image, _ = signed_ddi
    sig = inspect_image(image, cert=other_signer.cert_path)["signature"]
    assert sig["verified"] is False
    assert sig["fingerprintMatches"] is False
    assert sig["reason"] == "signer certificate not found"


def test_inspect_reports_a_garbled_signature_partition(signed_ddi, tmp_path):
    image, info = signed_ddi
    bad = tmp_path / "bad.raw"
    content = bytearray(image.read_bytes())
    content[info.partitions[2].offset] = ord("[")
    bad.write_bytes(content)
    report = inspect_image(bad)
    assert report["verity"]["verified"] is True
    assert report["signature"]["verified"] is False
    assert "not systemd's JSON" in report["signature"]["reason"]


# --- offline signing -------------------------------------------------------------------------

def test_sign_after_unsigned_build_gives_the_signed_bytes(fs_image, signed_ddi, rsa_signer,
                                                          tmp_path):
    signed, signed_info = signed_ddi
    image = tmp_path / "demo.raw"
    unsigned_info = build(fs_image, image)
    assert unsigned_info.certificate_fingerprint is None
    assert unsigned_info.unsigned_sha256 == unsigned_info.sha256 == signed_info.unsigned_sha256
    sig = unsigned_info.partitions[2]
    before = image.read_bytes()
    assert before[sig.offset:sig.offset + sig.size] == bytes(sig.size)
    assert inspect_image(image)["signature"] == {"present": False, "reserved": True,
                                                 "verified": None}

    info = sign_ddi(image, signer=rsa_signer)
    after = image.read_bytes()
    assert after == signed.read_bytes() and info == signed_info
    changed = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
    assert changed and sig.offset <= changed[0] and changed[-1] < sig.offset + sig.size


def test_sign_with_p7s_made_by_openssl(fs_image, signed_ddi, rsa_signer, other_signer, tmp_path):
    signed, _ = signed_ddi
    image = tmp_path / "demo.raw"
    info = build(fs_image, image)
    roothash = tmp_path / "demo.roothash"
    roothash.write_text(info.root_hash)  # what `build --unsigned` hands to the signing host
    p7s = tmp_path / "demo.roothash.p7s"
    subprocess.run(["openssl", "smime", "-sign", "-binary", "-noattr", "-outform", "DER",
                    "-in", roothash, "-signer", rsa_signer.cert_path,
                    "-inkey", rsa_signer.key_path, "-out", p7s], check=True)
    with pytest.raises(InputError, match="not a signature by"):
        sign_ddi(image, p7s=p7s, cert=other_signer.cert_path)
    assert sha256(image) == info.sha256  # refused: untouched

    sign_ddi(image, p7s=p7s, cert=rsa_signer.cert_path)
    assert image.read_bytes() == signed.read_bytes()


def test_p7s_over_another_root_hash_is_refused(fs_image, rsa_signer, tmp_path):
    image = tmp_path / "demo.raw"
    info = build(fs_image, image)
    other = tmp_path / "other.txt"
    other.write_text("0" * 64)
    p7s = tmp_path / "other.p7s"
    subprocess.run(["openssl", "smime", "-sign", "-binary", "-noattr", "-outform", "DER",
                    "-in", other, "-signer", rsa_signer.cert_path,
                    "-inkey", rsa_signer.key_path, "-out", p7s], check=True)
    with pytest.raises(InputError, match=f"over root hash {info.root_hash}"):
        sign_ddi(image, p7s=p7s, cert=rsa_signer.cert_path)
    assert sha256(image) == info.sha256


def test_ecdsa_is_allowed_with_a_warning(fs_image, signed_ddi, tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    signer = keys.load_signer(write_key(key, tmp_path / "ec.key"),
                              make_cert(key, tmp_path / "ec.crt"))
    info = build(fs_image, tmp_path / "ec.raw", signer)
    assert any("ECDSA" in w for w in info.warnings)
    assert info.signature_algorithm == "ecdsa-secp256r1-sha256"
    assert info.unsigned_sha256 == signed_ddi[1].unsigned_sha256
    assert inspect_image(tmp_path / "ec.raw", cert=tmp_path / "ec.crt")["signature"]["verified"]


# --- detached verity for plain images ---------------------------------------------------------

def test_detached_verity_next_to_plain_image(fs_image, rsa_signer, tmp_path):
    image = tmp_path / "demo.raw"
    image.write_bytes(fs_image.read_bytes())
    result = detached_verity(image, seed=SEED, signer=rsa_signer, workdir=tmp_path)
    assert result.verity_path == tmp_path / "demo.verity"
    root_hash = (tmp_path / "demo.roothash").read_text().strip()
    assert root_hash == result.root_hash
    subprocess.run(["veritysetup", "verify", image, result.verity_path, root_hash], check=True,
                   capture_output=True)
    proc = openssl_verify((tmp_path / "demo.roothash.p7s").read_bytes(), root_hash,
                          rsa_signer.cert_path, tmp_path)
    assert proc.returncode == 0, proc.stderr

    report = inspect_image(image, cert=rsa_signer.cert_path)
    assert report["format"] == "squashfs"
    assert report["verity"]["verified"] is True and report["signature"]["verified"] is True
    again = detached_verity(image, seed=SEED, signer=None, workdir=tmp_path)
    assert again.verity_sha256 == result.verity_sha256 and again.root_hash == root_hash
    assert not (tmp_path / "demo.roothash.p7s").exists()  # a stale signature is removed


def test_erofs_ddi_is_inspectable(tmp_path):
    require_tool("mkfs.erofs", "erofs-utils")
    require_tool("fsck.erofs", "erofs-utils")
    src = make_tree(tmp_path / "src", name="ero")
    img = tmp_path / "ero.erofs"
    subprocess.run(["mkfs.erofs", "-T0", "-U", "11111111-2222-3333-4444-555555555555",
                    "--all-root", img, src], check=True, capture_output=True)
    image = tmp_path / "ero.raw"
    assemble_ddi(img, image, arch="x86-64", fs_type="erofs", seed=SEED, signer=None,
                 workdir=tmp_path)
    report = inspect_image(image)
    assert report["verity"]["verified"] is True
    assert report["filesystem"]["type"] == "erofs"
    assert report["filesystem"]["release"]["fields"]["VERSION_ID"] == "12"
