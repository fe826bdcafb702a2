"""Verity root hash signatures, in the exact form systemd reads them.

A signature is a DER PKCS#7, detached, without signed attributes, over the lowercase hex root hash
(no newline) — what ``systemd-repart`` makes with ``PKCS7_sign(DETACHED|NOATTR|BINARY)``. Without
signed attributes there is no signing time in it, so RSA signatures are byte-identical between
builds (ECDSA ones are not). In a DDI it is wrapped in the signature partition's JSON
``{"rootHash","certificateFingerprint","signature"}``, NUL-padded to the partition's full size:
systemd 252 reads the whole partition and wants nothing but NULs after the JSON, 254+ the same.

Verification mirrors systemd's userspace check (``PKCS7_verify`` with ``NOINTERN|NOVERIFY`` against
the certificates in ``verity.d``): the signer must be the given certificate; no chain is built.
"""

from __future__ import annotations

import base64
import binascii
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs7

from ... import tools
from ...errors import BuildError, InputError
from ...keys import Signer, fingerprint

#: systemd-repart's VERITY_SIG_SIZE (4 × 4 KiB): what every repart version allots to the JSON.
PARTITION_SIZE = 16 * 1024

ECDSA_WARNING = ("ECDSA signatures differ on every run: the signature partition (and the image "
                 "sha256) will change between builds; compare the unsigned-image sha256 instead")


@dataclass(frozen=True)
class SignatureBlob:
    """The contents of a signature partition (or of a .p7s plus what it claims to sign)."""

    root_hash: str
    fingerprint: str | None
    der: bytes

    def embedded_certificates(self) -> list[x509.Certificate]:
        try:
            return pkcs7.load_der_pkcs7_certificates(self.der)
        except ValueError:
            return []


def sign_root_hash(root_hash: str, signer: Signer) -> tuple[bytes, list[str]]:
    """(DER PKCS#7 over the hex root hash, warnings for the caller)."""
    options = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.NoAttributes,
               pkcs7.PKCS7Options.Binary]
    der = (pkcs7.PKCS7SignatureBuilder()
           .set_data(root_hash.lower().encode())
           .add_signer(signer.certificate, signer.key, hashes.SHA256())
           .sign(serialization.Encoding.DER, options))
    return der, ([] if signer.deterministic else [ECDSA_WARNING])


def partition_content(root_hash: str, fingerprint_hex: str, der: bytes,
                      size: int = PARTITION_SIZE) -> bytes:
    """The signature partition: compact JSON (keys in systemd's order), NUL-padded to ``size``."""
    text = json.dumps({
        "rootHash": root_hash.lower(),
        "certificateFingerprint": fingerprint_hex,
        "signature": base64.b64encode(der).decode(),
    }, separators=(",", ":")).encode()
    if len(text) + 1 > size:
        raise BuildError("signature", f"JSON of {len(text)} bytes does not fit the {size}-byte "
                         "partition", "use a smaller certificate chain or key")
    return text + bytes(size - len(text))


def parse_partition(raw: bytes, where: str) -> SignatureBlob | None:
    """Read a signature partition; None when it is all zeros (reserved for offline signing)."""
    end = raw.find(b"\0")
    text, padding = (raw, b"") if end < 0 else (raw[:end], raw[end:])
    if not text:
        if padding.count(0) != len(padding):
            raise InputError(where, "signature partition starts with NUL but is not empty")
        return None
    if padding.count(0) != len(padding):
        raise InputError(where, "signature partition has data after the JSON's NUL padding")
    try:
        data = json.loads(text)
        root_hash = data["rootHash"]
        der = base64.b64decode(data["signature"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error) as err:
        raise InputError(where, f"signature partition is not systemd's JSON: {err}") from None
    return SignatureBlob(str(root_hash).lower(), data.get("certificateFingerprint"), der)


def read_p7s(path: Path) -> bytes:
    """A PKCS#7 signature file as DER (PEM accepted and converted)."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise InputError(str(path), f"cannot read signature: {(err.strerror or '').lower()}") \
            from None
    if data.lstrip().startswith(b"-----BEGIN"):
        body = b"".join(line for line in data.splitlines() if line and not line.startswith(b"-----"))
        try:
            data = base64.b64decode(body, validate=True)
        except binascii.Error:
            raise InputError(str(path), "PEM signature with invalid base64") from None
    if not data.startswith(b"\x30"):
        raise InputError(str(path), "not a DER or PEM PKCS#7 signature")
    return data


_SIGNED_DATA_OID = bytes.fromhex("2a864886f70d010702")  # 1.2.840.113549.1.7.2


def check_format(der: bytes, where: str) -> None:
    """Refuse a PKCS#7 that is not in systemd-repart's shape: SignedData, detached, and without
    signed attributes in any SignerInfo.

    OpenSSL would verify either kind, but ``openssl smime -sign`` without ``-noattr`` adds a
    signing time, so the partition (and the image) would differ from a signed build's and from
    one signing to the next; systemd-repart never makes such a signature and the kernel refuses
    a PKCS#7 that carries its content when the content is also supplied (detached root hash)."""
    try:
        content_info = _der_items(_der_one(der, 0x30))
        if len(content_info) < 2 or content_info[0] != (0x06, _SIGNED_DATA_OID):
            raise InputError(where, "not a PKCS#7 SignedData signature")
        if content_info[1][0] != 0xA0:
            raise InputError(where, "PKCS#7 ContentInfo without content")
        signed_data = _der_items(_der_one(content_info[1][1], 0x30))
        # version, digestAlgorithms, encapContentInfo, [0] certificates, [1] crls, signerInfos
        encap = _der_items(signed_data[2][1])
        if len(encap) > 1:
            raise InputError(where, "the signature carries the signed content (not detached)",
                             "sign with openssl smime -sign -binary -noattr (without -nodetach)")
        signer_infos = _der_items(signed_data[-1][1]) if signed_data[-1][0] == 0x31 else []
        if not signer_infos:
            raise InputError(where, "PKCS#7 without a signer")
        for tag, body in signer_infos:
            # version, sid, digestAlgorithm, [0] IMPLICIT signedAttrs OPTIONAL, ...
            fields = _der_items(body)
            if tag != 0x30 or len(fields) < 5:
                raise InputError(where, "PKCS#7 SignerInfo malformed")
            if fields[3][0] == 0xA0:
                raise InputError(where, "the signature has signed attributes (e.g. a signing "
                                 "time); systemd-repart's signatures have none and a build's "
                                 "would differ", "sign with openssl smime -sign -binary -noattr")
    except (IndexError, ValueError) as err:
        raise InputError(where, f"PKCS#7 structure malformed: {err}") from None


def _der_one(data: bytes, tag: int) -> bytes:
    """The body of ``data``, which must be exactly one element with ``tag``."""
    items = _der_items(data)
    if len(items) != 1 or items[0][0] != tag:
        raise ValueError(f"expected one element with tag 0x{tag:02x}")
    return items[0][1]


def _der_items(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, body) pairs of consecutive DER/BER elements (single-byte tags, as in PKCS#7;
    BER's indefinite lengths, which ``openssl … -stream`` writes, are followed)."""
    items, pos = [], 0
    while pos < len(data):
        tag, body, pos = _der_element(data, pos)
        items.append((tag, body))
    return items


def _der_element(data: bytes, pos: int) -> tuple[int, bytes, int]:
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte tag")
    if length == 0x80:  # indefinite: nested elements up to an end-of-contents 00 00
        start = pos
        while data[pos:pos + 2] != b"\0\0":
            if pos >= len(data):
                raise ValueError("indefinite length without end")
            pos = _der_element(data, pos)[2]
        return tag, data[start:pos], pos + 2
    if length & 0x80:
        n = length & 0x7F
        if not 1 <= n <= 4:
            raise ValueError("oversized length")
        length = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise ValueError("element extends past the end")
    return tag, data[pos:pos + length], pos + length


def verify(der: bytes, root_hash: str, certificate: x509.Certificate) -> tuple[bool, str]:
    """Whether ``der`` is ``certificate``'s signature over the hex root hash: (ok, reason)."""
    tools.find("openssl")  # a missing tool is an error, not a failed verification
    with tempfile.TemporaryDirectory(prefix="sysext-sig-") as tmp:
        sig, content, cert = Path(tmp, "sig.der"), Path(tmp, "roothash"), Path(tmp, "cert.pem")
        sig.write_bytes(der)
        content.write_bytes(root_hash.lower().encode())
        cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        try:
            tools.run("openssl", ["smime", "-verify", "-binary", "-inform", "DER", "-in", sig,
                                  "-content", content, "-certfile", cert, "-nointern", "-noverify",
                                  "-out", "/dev/null"], what="verifying the root hash signature")
        except BuildError as err:
            return False, _openssl_reason(err.hint or err.what)
    return True, ""


def _openssl_reason(text: str) -> str:
    """OpenSSL's reason field (``...:PKCS7_verify:signature failure:file:line:``), else the text."""
    for part in text.split(" | "):
        fields = part.split(":")
        if len(fields) > 5 and fields[1] == "error":
            return fields[5]
    return text


def signer_of(der: bytes) -> str | None:
    """The fingerprint of the certificate a PKCS#7 carries (None: none, or unreadable)."""
    certs = SignatureBlob("", None, der).embedded_certificates()
    return fingerprint(certs[0]) if certs else None
