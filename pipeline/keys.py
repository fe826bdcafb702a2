"""Signing keys: ``keys generate`` and loading a key + certificate for signing.

A private key is created 0600 under a temporary name with O_EXCL and then hard-linked into place,
so no other user ever sees it readable, a half-written key never appears, and an existing key is
never replaced. Loading refuses keys that group or others can read: a leaked release key is worse
than a failed build. Keys are never written to out/, the manifest or a log line; only the
certificate's fingerprint is.

Key types: RSA (default, deterministic PKCS#7 signatures) and ECDSA (accepted; its signatures
differ between runs). Ed25519 is refused: Debian 12's OpenSSL 3.0 cannot create or verify a PKCS#7
Ed25519 signature without signed attributes (``PKCS7_verify``: "operation not supported for this
keytype"), and the kernel keyring does not take Ed25519 PKCS#7 either, so systemd could never
verify the image and would refuse to activate it.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from .errors import InputError

DEFAULT_SUBJECT = "CN=sysext-pipeline release signing"
DEFAULT_DAYS = 3650


@dataclass(frozen=True)
class Signer:
    """A private key and its certificate, checked to belong together."""

    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = field(repr=False)
    certificate: x509.Certificate
    key_path: Path | None = None
    cert_path: Path | None = None

    @property
    def cert_der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.certificate)

    @property
    def algorithm(self) -> str:
        return key_algorithm(self.key.public_key())

    @property
    def deterministic(self) -> bool:
        """RSA PKCS#1 v1.5 signatures repeat byte for byte; ECDSA ones do not."""
        return isinstance(self.key, rsa.RSAPrivateKey)


def fingerprint(certificate: x509.Certificate) -> str:
    """sha256 of the DER certificate: what systemd writes as ``certificateFingerprint``."""
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def key_algorithm(public_key) -> str:
    """How signatures by this key are described in the manifest, e.g. ``rsa-4096-sha256``."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"rsa-{public_key.key_size}-sha256"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"ecdsa-{public_key.curve.name}-sha256"
    return type(public_key).__name__.removesuffix("PublicKey").lower()


def read_passphrase(env_var: str | None = None, file: Path | None = None) -> bytes | None:
    """The key passphrase from an environment variable or a file (one trailing newline dropped)."""
    if env_var and file:
        raise InputError("passphrase", "given both as environment variable and as file",
                         "use one")
    if env_var:
        value = os.environ.get(env_var)
        if value is None:
            raise InputError(env_var, "environment variable not set", "export the passphrase")
        secret = value.encode()
    elif file:
        try:
            secret = Path(file).read_bytes()
        except OSError as err:
            raise InputError(str(file), f"cannot read passphrase file: {err.strerror}") from None
        secret = secret[:-1] if secret.endswith(b"\n") else secret
        secret = secret[:-1] if secret.endswith(b"\r") else secret
    else:
        return None
    if not secret:
        raise InputError(env_var or str(file), "passphrase is empty")
    return secret


def generate(key_path: Path, cert_path: Path, *, subject: str = DEFAULT_SUBJECT,
             days: int = DEFAULT_DAYS, passphrase: bytes | None = None,
             key_size: int = 4096) -> Signer:
    """Create an RSA key (0600) and a self-signed certificate; never overwrite either."""
    key_path, cert_path = Path(key_path), Path(cert_path)
    if days < 1:
        raise InputError("days", f"validity must be at least one day, not {days}")
    name = _parse_subject(subject)
    for path in (key_path, cert_path):
        if os.path.lexists(path):
            raise InputError(str(path), "already exists", "refusing to overwrite; remove it first")
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                       critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                  else serialization.NoEncryption())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                encryption)
    _create_exclusive(key_path, key_pem, 0o600)
    try:
        _create_exclusive(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except BaseException:
        key_path.unlink()  # ours, created a moment ago: do not leave half a key pair
        raise
    return Signer(key, cert, key_path, cert_path)


def load_signer(key_path: Path, cert_path: Path, passphrase: bytes | str | None = None) -> Signer:
    """Load and cross-check a private key (not readable by others) and its certificate."""
    key_path, cert_path = Path(key_path), Path(cert_path)
    if isinstance(passphrase, str):
        passphrase = passphrase.encode()
    key = _load_key(key_path, passphrase)
    cert = load_certificate(cert_path)
    public = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*public) != cert.public_key().public_bytes(*public):
        raise InputError(str(cert_path), f"certificate does not belong to the key {key_path}",
                         "pass the certificate made with this key")
    return Signer(key, cert, key_path, cert_path)


def load_certificate(path: Path) -> x509.Certificate:
    """A certificate from a PEM or DER file."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise InputError(str(path), f"cannot read certificate: {err.strerror}") from None
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise InputError(str(path), "not an X.509 certificate (PEM or DER)") from None


def _load_key(path: Path, passphrase: bytes | None):
    where = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise InputError(where, f"cannot open private key: {err.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fh.fileno()).st_mode
        if mode & 0o077:
            raise InputError(where, f"private key is accessible by group or others "
                             f"(mode {stat.S_IMODE(mode):04o})", f"chmod 600 {path}")
        data = fh.read()
    encrypted = b"ENCRYPTED" in data
    if encrypted and not passphrase:
        raise InputError(where, "private key is encrypted and no passphrase was given",
                         "pass it with --passphrase-env or --passphrase-file")
    try:
        key = serialization.load_pem_private_key(data, passphrase if encrypted else None)
    except ValueError:
        if encrypted:
            raise InputError(where, "cannot decrypt private key: wrong passphrase") from None
        raise InputError(where, "not a PEM private key") from None
    if isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        return key
    raise InputError(where, f"unsupported key type {type(key).__name__.removesuffix('PrivateKey')}",
                     "systemd can verify RSA (and ECDSA) PKCS#7 signatures; use an RSA key")


def _parse_subject(subject: str) -> x509.Name:
    """``CN=x,O=y`` (RFC 4514), ``/CN=x/O=y`` (openssl style) or a bare common name."""
    text = subject.strip()
    if not text:
        raise InputError("subject", "empty")
    if "=" not in text:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])
    if text.startswith("/"):
        text = ",".join(reversed([p for p in text.split("/") if p]))
    try:
        return x509.Name.from_rfc4514_string(text)
    except ValueError as err:
        raise InputError("subject", f"cannot parse {subject!r}: {err}",
                         "write it like CN=name,O=org") from None


def _create_exclusive(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a fresh temporary file (``mode`` from the start), then link it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # the umask may have removed bits we want (0644 certificates)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise InputError(str(path), "already exists", "refusing to overwrite") from None
    finally:
        tmp.unlink(missing_ok=True)
