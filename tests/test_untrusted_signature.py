"""issue 11 §9: signature.state judges what it read; it never turns a failure into a verdict.

A certificate in verity.d that cannot be read verifies nothing and is named; an image whose
partition table cannot be read is an error naming it, not "unsigned". Real signed DDIs
(systemd-repart, openssl), real files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_ddi import build, new_fs_image, new_signer

from pipeline.errors import InputError
from pipeline.host import signature


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    d = tmp_path_factory.mktemp("signed")
    signer = new_signer(d / "keys", "state test")
    build(new_fs_image(d), d / "demo.raw", signer)
    return d / "demo.raw", signer


def _verity_d(base: Path, certs: dict[str, bytes]) -> Path:
    directory = base / "etc/verity.d"
    directory.mkdir(parents=True)
    for name, data in certs.items():
        (directory / name).write_bytes(data)
    return base


def test_unreadable_certificate_is_named_and_the_good_one_still_verifies(signed, tmp_path):
    image, signer = signed
    base = _verity_d(tmp_path / "root", {"0-broken.crt": b"not a certificate\n",
                                         "1-good.crt": signer.cert_path.read_bytes()})
    state = signature.state(image, base)
    assert state.status == signature.TRUSTED
    assert state.verified_by.name == "1-good.crt"
    [unusable] = state.unusable
    assert "0-broken.crt" in unusable and "not an X.509 certificate" in unusable


def test_only_an_unreadable_certificate_leaves_the_image_untrusted_and_says_why(signed, tmp_path):
    image, _ = signed
    base = _verity_d(tmp_path / "root", {"broken.crt": b"\x30\x03garbage"})
    state = signature.state(image, base)
    assert state.status == signature.UNTRUSTED and state.verified_by is None
    assert len(state.unusable) == 1 and "broken.crt" in state.unusable[0]


def test_a_corrupt_partition_table_is_an_error_not_unsigned(signed, tmp_path):
    image, signer = signed
    bad = Path(shutil.copy(image, tmp_path / "bad.raw"))
    with open(bad, "r+b") as fh:  # the primary GPT header's CRC field (LBA 1, offset 16)
        fh.seek(512 + 16)
        crc = fh.read(4)
        fh.seek(512 + 16)
        fh.write(bytes(b ^ 0xFF for b in crc))
    base = _verity_d(tmp_path / "root", {"good.crt": signer.cert_path.read_bytes()})
    with pytest.raises(InputError, match="bad.raw.*GPT header CRC mismatch"):
        signature.state(bad, base)


def test_doctor_names_the_unusable_certificate(signed, tmp_path):
    from conftest import run_cli
    from merge import make_root

    image, signer = signed
    root = make_root(tmp_path / "root", "ID=debian\nVERSION_ID=12\n")
    _verity_d(root, {"0-broken.crt": b"junk", "1-good.crt": signer.cert_path.read_bytes()})
    shutil.copy(image, root / "var/lib/extensions/demo.raw")
    proc = run_cli("doctor", "--root", str(root), "--systemd", "252", "--json")
    assert "Traceback" not in proc.stderr, proc.stderr
    findings = json.loads(proc.stdout)["findings"]
    assert any(f["code"] == "signature.verified" for f in findings)
    [bad] = [f for f in findings if f["code"] == "certificate.unusable"]
    assert "0-broken.crt" in bad["message"] and bad["severity"] == "warning"
