"""The GPT reader, the partition type table and the signature partition parser, on hostile input."""

from __future__ import annotations

import json
import struct
import subprocess
import zlib

import pytest
from prereq import require_tool

from pipeline.errors import InputError
from pipeline.image.ddi import signature as sig
from pipeline.image.ddi.gpt import read_gpt
from pipeline.systemd import partitions

# From SYSTEMD.md's DDI table (itself from the Discoverable Partitions Specification).
EXPECTED = {
    "x86-64": ["4f68bce3-e8cd-4db1-96e7-fbcaf984b709", "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5",
               "41092b05-9fc8-4523-994f-2def0408b176", "8484680c-9521-48c6-9c11-b0720656f69e",
               "77ff5f63-e7b6-4633-acf4-1565b864c0e6", "e7bb33fb-06cf-4e81-8273-e543b413e2e2"],
    "arm64": ["b921b045-1df0-41c3-af44-4c6f280d3fae", "df3300ce-d69f-4c92-978c-9bfb0f38d820",
              "6db69de6-29f4-4758-a7a5-962190f00ce3", "b0e01050-ee5f-4390-949a-9101b17104e9",
              "6e11a4e7-fbca-4ded-b9e9-e1a512bb664e", "c23ce4ff-44bd-4b00-b2d4-b41b3419e02a"],
}


def test_type_table_matches_the_spec():
    for arch, uuids in EXPECTED.items():
        assert [partitions.type_uuid(d, arch) for d in partitions.DESIGNATORS] == uuids
        for designator, u in zip(partitions.DESIGNATORS, uuids):
            assert partitions.lookup(u.upper()) == (designator, arch)
    for arch in ("x86", "arm", "riscv64", "ppc64-le", "s390x", "loongarch64"):
        assert partitions.lookup(partitions.type_uuid("root-verity", arch)) == ("root-verity", arch)
    assert partitions.type_name(EXPECTED["arm64"][2]) == "root-arm64-verity-sig"
    assert partitions.type_name("c12a7328-f81f-11d2-ba4b-00a0c93ec93b") == "esp"
    assert partitions.lookup("00000000-0000-0000-0000-000000000001") is None
    with pytest.raises(InputError, match="systemd spells it 'arm64'"):
        partitions.type_uuid("root", "aarch64")


@pytest.fixture
def sfdisk_image(tmp_path):
    require_tool("sfdisk", "fdisk")
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(4 << 20))
    script = (
        "label: gpt\n"
        "label-id: 01234567-89AB-4CDE-8F01-23456789ABCD\n"
        f"start=2048, size=2048, type={EXPECTED['arm64'][3]}, name=\"usr-arm64\", "
        "uuid=AAAAAAAA-0000-4000-8000-000000000001, attrs=\"GUID:60\"\n"
        f"start=4096, size=100, type={EXPECTED['arm64'][4]}, name=\"usr-arm64-verity\"\n"
    )
    subprocess.run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", image],
                   input=script.encode(), check=True)
    return image


def test_reads_what_sfdisk_wrote(sfdisk_image):
    table = read_gpt(sfdisk_image)
    assert table.disk_uuid == "01234567-89ab-4cde-8f01-23456789abcd"
    first, second = table.partitions
    assert (first.index, first.type_uuid, first.uuid, first.name) == (
        1, EXPECTED["arm64"][3], "aaaaaaaa-0000-4000-8000-000000000001", "usr-arm64")
    assert (first.offset, first.size, first.attributes) == (2048 * 512, 2048 * 512, 1 << 60)
    assert (second.first_lba, second.last_lba, second.name) == (4096, 4195, "usr-arm64-verity")
    out = json.loads(subprocess.run(["sfdisk", "--json", sfdisk_image], check=True,
                                    capture_output=True).stdout)["partitiontable"]
    assert [p["uuid"].lower() for p in out["partitions"]] == [p.uuid for p in table.partitions]


def test_header_crc_mismatch_names_the_image(sfdisk_image):
    data = bytearray(sfdisk_image.read_bytes())
    data[512 + 0x48] ^= 0xFF  # partition-entry LBA, covered by the header CRC
    sfdisk_image.write_bytes(data)
    with pytest.raises(InputError, match=f"{sfdisk_image}: GPT header CRC mismatch"):
        read_gpt(sfdisk_image)


def test_entry_crc_mismatch(sfdisk_image):
    data = bytearray(sfdisk_image.read_bytes())
    entries_lba = struct.unpack_from("<Q", data, 512 + 0x48)[0]
    data[entries_lba * 512 + 56] ^= 0x01  # first byte of partition 1's name
    sfdisk_image.write_bytes(data)
    with pytest.raises(InputError, match="GPT entry array CRC mismatch"):
        read_gpt(sfdisk_image)


def test_entry_array_lies_about_its_size(sfdisk_image):
    data = bytearray(sfdisk_image.read_bytes())
    struct.pack_into("<I", data, 512 + 0x50, 1_000_000)  # number of entries
    struct.pack_into("<I", data, 512 + 0x10, 0)
    struct.pack_into("<I", data, 512 + 0x10, zlib.crc32(bytes(data[512:512 + 92])))
    sfdisk_image.write_bytes(data)
    with pytest.raises(InputError, match="entry array malformed"):
        read_gpt(sfdisk_image)


def test_not_a_disk(tmp_path):
    (tmp_path / "x").write_bytes(b"hsqs" + bytes(8000))
    with pytest.raises(InputError, match="no GPT partition table"):
        read_gpt(tmp_path / "x")


def test_signature_partition_parsing():
    content = sig.partition_content("ab" * 32, "cd" * 32, b"\x30\x03\x02\x01\x01")
    assert len(content) == sig.PARTITION_SIZE
    blob = sig.parse_partition(content, "img")
    assert (blob.root_hash, blob.fingerprint, blob.der) == ("ab" * 32, "cd" * 32,
                                                            b"\x30\x03\x02\x01\x01")
    assert sig.parse_partition(bytes(4096), "img") is None
    with pytest.raises(InputError, match="data after the JSON"):
        sig.parse_partition(content[:-1] + b"x", "img")
    with pytest.raises(InputError, match="not systemd's JSON"):
        sig.parse_partition(b'{"rootHash": 1}' + bytes(10), "img")
