"""inspect on a DDI that systemd-repart made by itself (Verity=data/hash/signature).

An image this project did not make: 512-byte verity blocks, random salt, repart's own JSON. The
expected values are taken independently (sfdisk offsets, veritysetup, the certificate), not from
our GPT reader.
"""

from __future__ import annotations

import hashlib
import subprocess

import pytest
from prereq import require_root
from test_ddi import cut, make_tree, need_tools, sfdisk_table

from pipeline.image.ddi import inspect_image


@pytest.fixture(scope="module")
def repart_ddi(tmp_path_factory, rsa_signer):
    need_tools()
    require_root()  # repart 252 formats file systems and verity through loop devices
    d = tmp_path_factory.mktemp("foreign")
    src = make_tree(d / "src", name="foreign")
    defs = d / "repart.d"
    defs.mkdir()
    (defs / "10-root.conf").write_text(
        "[Partition]\nType=root-x86-64\nFormat=squashfs\n"
        f"CopyFiles={src}/usr:/usr\nVerity=data\nVerityMatchKey=root\n"
        "SizeMinBytes=1M\nSizeMaxBytes=1M\n")
    (defs / "20-verity.conf").write_text(
        "[Partition]\nType=root-x86-64-verity\nVerity=hash\nVerityMatchKey=root\n"
        "SizeMinBytes=256K\nSizeMaxBytes=256K\n")
    (defs / "30-sig.conf").write_text(
        "[Partition]\nType=root-x86-64-verity-sig\nVerity=signature\nVerityMatchKey=root\n")
    image = d / "foreign.raw"
    proc = subprocess.run(["systemd-repart", "--empty=create", "--size=auto", "--dry-run=no",
                           f"--definitions={defs}", "--seed=random",
                           f"--private-key={rsa_signer.key_path}",
                           f"--certificate={rsa_signer.cert_path}", image],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"systemd-repart could not build the reference DDI: {proc.stderr[-500:]}")
    return image


@pytest.mark.root
def test_inspect_reads_repart_ddi(repart_ddi, rsa_signer, tmp_path):
    table = sfdisk_table(repart_ddi)
    data, hash_part, sig_part = table["partitions"]
    root_hash = (data["uuid"] + hash_part["uuid"]).replace("-", "").lower()
    d = cut(repart_ddi, data["start"] * 512, data["size"] * 512, tmp_path / "d")
    h = cut(repart_ddi, hash_part["start"] * 512, hash_part["size"] * 512, tmp_path / "h")
    subprocess.run(["veritysetup", "verify", d, h, root_hash], check=True, capture_output=True)

    report = inspect_image(repart_ddi, cert=rsa_signer.cert_path)
    assert report["diskUuid"] == table["id"].lower()
    assert [(p["designator"], p["arch"], p["offset"], p["size"]) for p in report["partitions"]] == [
        (name, "x86-64", p["start"] * 512, p["size"] * 512)
        for name, p in zip(["root", "root-verity", "root-verity-sig"], table["partitions"])]
    verity = report["verity"]
    assert verity["rootHash"] == root_hash and verity["verified"] is True
    assert verity["rootHashSource"] == "signature" and verity["uuidsMatchRootHash"] is True
    assert verity["superblock"]["dataBlockSize"] == 512  # repart 252's choice, not ours
    assert verity["superblock"]["dataBlocks"] == data["size"]
    sig = report["signature"]
    assert sig["verified"] is True and sig["fingerprintMatches"] is True
    assert sig["certificateFingerprint"] == hashlib.sha256(rsa_signer.cert_der).hexdigest()
    assert report["filesystem"]["release"]["path"] == (
        "usr/lib/extension-release.d/extension-release.foreign")


@pytest.mark.root
def test_inspect_flags_tampering_in_repart_ddi(repart_ddi, other_signer, tmp_path):
    data = sfdisk_table(repart_ddi)["partitions"][0]
    bad = tmp_path / "bad.raw"
    content = bytearray(repart_ddi.read_bytes())
    content[data["start"] * 512 + 100] ^= 0x80  # squashfs superblock area: surely covered
    bad.write_bytes(content)
    report = inspect_image(bad, cert=other_signer.cert_path)
    assert report["verity"]["verified"] is False
    assert report["signature"]["verified"] is False
