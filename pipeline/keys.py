"""Signing keys: ``keys generate`` and loading a key + certificate for signing.

A private key is created 0600 under a temporary name with O_EXCL and then hard-linked into place,
so no other user ever sees it readable, a half-written key never appears, and an existing key is
never replaced; a missing directory for it is created 0700. Loading refuses keys and passphrase
files that group or others can read: a leaked release key is worse than a failed build. Keys are
never written to out/, the manifest or a log line; only the certificate's fingerprint is.

Key, certificate and passphrase paths may be symlinks (a Kubernetes secret volume is a chain of
them: ``release.key -> ..data/release.key -> ..2024_01_01/release.key``): the link is followed and
the permissions checked are those of the file actually opened (``fstat`` of the open descriptor,
so a link swapped between the check and the read cannot slip a different file in).

Key types: RSA (default, deterministic PKCS#7 signatures) and ECDSA (accepted; its signatures
differ between runs). Ed25519 is refused: Debian 12's OpenSSL 3.0 cannot create or verify a PKCS#7
Ed25519 signature without signed attributes (``PKCS7_verify``: "operation not supported for this
keytype"), and the kernel keyring does not take Ed25519 PKCS#7 either, so systemd could never
verify the image and would refuse to activate it.

An RSA key is validated in full (cryptography's default check: p and q prime, d, the CRT values
and n consistent) — but off the critical path: ``load_signer`` reads it without the check, which
costs 0.25 s of one core for a 4096-bit key while holding the GIL, and starts the very same
check in a child Python (the key reaches it through a pipe, never a file or a command line, so
a passphrase-protected key needs no passphrase there). Its verdict is awaited before the key
makes its first signature (``Signer.key``) or through ``Signer.verify()``; a key that fails is
refused there with the same kind of one-line error, before anything is published.
"""

from __future__ import annotations

import atexit
import datetime
import errno
import fcntl
import hashlib
import os
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from .errors import InputError

DEFAULT_SUBJECT = "CN=sysext-pipeline release signing"
DEFAULT_DAYS = 3650


# The check a child Python runs on the key it reads from stdin (unencrypted PKCS#8 DER):
# cryptography's full RSA validation, as load_pem_private_key does it by default. Exit 3 and one
# line on stdout when the key fails it.
_CHECK = """\
import sys
from cryptography.hazmat.primitives.serialization import load_der_private_key
data = sys.stdin.buffer.read()
try:
    load_der_private_key(data, None)
except ValueError as err:
    print(str(err) or "invalid key", flush=True)
    sys.exit(3)
"""


#: check children still running; killed when this process exits without asking their verdict
#: (a build that failed before signing), so none outlives the command that started it
_RUNNING: set[subprocess.Popen] = set()


@atexit.register
def _stop_checks() -> None:
    for proc in list(_RUNNING):
        if proc.poll() is None:
            proc.kill()


class KeyCheck:
    """The full validation of a key, running in a child process from the moment this is made;
    ``wait`` gives its verdict (every call the same one). Thread-safe. A daemon thread feeds the
    key to the child and reaps it, so a check nobody waits for (a build that failed earlier)
    leaves no zombie and no open pipe behind. Should the child not run or not answer (no
    interpreter at ``sys.executable``, cryptography importable only by this process), the same
    check runs here instead: slower, never skipped."""

    def __init__(self, key, where: str):
        self._where = where
        self._lock = threading.Lock()
        self._verdict: InputError | None | bool = False  # False: not known yet
        self._result: tuple[int, bytes] = (-1, b"")
        self._der = key.private_bytes(serialization.Encoding.DER,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
        # -P (-I before 3.11): the current directory does not shadow what the check imports
        flag = "-P" if sys.version_info >= (3, 11) else "-I"
        self._thread: threading.Thread | None = None
        try:
            proc = subprocess.Popen([sys.executable or "python3", flag, "-c", _CHECK],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, close_fds=True)
        except OSError:
            return  # wait() checks here
        _RUNNING.add(proc)
        self._thread = threading.Thread(target=self._run, args=(proc,), daemon=True,
                                        name="key-check")
        self._thread.start()

    def _run(self, proc: subprocess.Popen) -> None:
        try:
            out, _ = proc.communicate(self._der)
        except OSError:  # the child died before reading all of it: no verdict from it
            proc.kill()
            proc.wait()
            return
        finally:
            _RUNNING.discard(proc)
        self._result = proc.returncode, out

    def wait(self) -> None:
        """Return once the key passed; raise InputError naming the key file if it did not."""
        with self._lock:
            if self._verdict is False:
                self._verdict = self._decide()
        if self._verdict is not None:
            raise self._verdict

    def _decide(self) -> InputError | None:
        if self._thread is not None:
            self._thread.join()
        code, out = self._result
        if code == 0:
            return None
        if code == 3:
            reason = out.decode(errors="replace").strip() or "invalid key"
        else:  # the child could not check: the same check, in this process
            try:
                serialization.load_der_private_key(self._der, None)
                return None
            except ValueError as err:
                reason = str(err) or "invalid key"
        return InputError(self._where, f"RSA private key fails validation ({reason}: p, q, d or "
                          "the CRT values do not fit together)", "use an intact key")


@dataclass(frozen=True)
class Signer:
    """A private key and its certificate, checked to belong together.

    ``key`` waits for the key's full validation (``check``, running in a child process since
    the key was loaded) and raises its InputError if it failed: no signature is made with a key
    that did not pass."""

    raw_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = field(repr=False)
    certificate: x509.Certificate
    key_path: Path | None = None
    cert_path: Path | None = None
    check: KeyCheck | None = field(default=None, repr=False, compare=False)

    @property
    def key(self) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
        self.verify()
        return self.raw_key

    def verify(self) -> None:
        """Wait for the key's validation; InputError naming the key file if it failed."""
        if self.check is not None:
            self.check.wait()

    @property
    def cert_der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.certificate)

    @property
    def algorithm(self) -> str:
        # the certificate's public key is the key's (load_signer compares them): no wait
        return key_algorithm(self.certificate.public_key())

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
    """The key passphrase from an environment variable (removed from the environment once
    read) or a file (one trailing newline dropped)."""
    if env_var and file:
        raise InputError("passphrase", "given both as environment variable and as file",
                         "use one")
    if env_var:
        # Taken out of the environment as it is read: no tool started afterwards (a packer, a
        # hook, systemd-sysext) inherits the passphrase. Read it once per process.
        value = os.environ.pop(env_var, None)
        if value is None:
            raise InputError(env_var, "environment variable not set", "export the passphrase")
        secret = value.encode()
    elif file:
        secret = read_secret(Path(file), "passphrase file")
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
    _make_parents(key_path.parent, 0o700)  # before the slow key generation: fail early
    _make_parents(cert_path.parent, 0o755)
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
    # the RSA check cryptography skipped in _load_key, in a child process from here on
    check = KeyCheck(key, str(key_path)) if isinstance(key, rsa.RSAPrivateKey) else None
    return Signer(key, cert, key_path, cert_path, check)


def load_certificate(path: Path) -> x509.Certificate:
    """A certificate from a PEM or DER file (symlinks followed; certificates are public)."""
    data = read_secret(Path(path), "certificate", private=False)
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise InputError(str(path), "not an X.509 certificate (PEM or DER)") from None


def read_secret(path: Path, what: str, *, private: bool = True) -> bytes:
    """The bytes of a key, passphrase or certificate file, symlinks followed.

    ``private``: refuse the file when group or others have any access to it — judged on the file
    actually opened (the symlink's final target), because that is what the permissions protect.
    Failures are said in words, with the symlink's target when there is one: "Too many levels of
    symbolic links" tells nobody that a key is a dangling link.
    """
    where = str(path)
    try:
        # O_NONBLOCK: a FIFO put in place of a key must not hang us (it is refused below)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as err:
        raise InputError(where, f"cannot read {what}: {_why(path, err)}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        via = _via(path)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(where, f"{what} is not a regular file{via}")
        if private and st.st_mode & 0o077:
            real = os.path.realpath(path)
            hint = f"chmod 600 {real}" + (", or defaultMode: 0400 for a Kubernetes secret "
                                          "volume" if via else "")
            raise InputError(where, f"{what} is accessible by group or others "
                             f"(mode {stat.S_IMODE(st.st_mode):04o}{via})", hint)
        return fh.read()


def _via(path: Path) -> str:
    """`` of the symlink target X`` when ``path`` is a symlink, else nothing."""
    if not os.path.islink(path):
        return ""
    return f" of the symlink's target {os.path.realpath(path)}"


def _why(path: Path, err: OSError) -> str:
    """What is wrong with ``path``, in words."""
    if os.path.islink(path) and not os.path.exists(path):
        if err.errno == errno.ELOOP:
            return "it is a symbolic link that loops back on itself"
        return f"it is a symbolic link to {os.readlink(path)}, which does not exist"
    if err.errno == errno.ENOENT:
        return "no such file"
    if err.errno == errno.EACCES:
        return "permission denied"
    if err.errno == errno.EISDIR:
        return "it is a directory"
    if err.errno == errno.ENOTDIR:
        return "a part of the path is not a directory"
    return (err.strerror or str(err)).lower()


def _load_key(path: Path, passphrase: bytes | None):
    where = str(path)
    data = read_secret(path, "private key")
    encrypted = b"ENCRYPTED" in data
    if encrypted and not passphrase:
        raise InputError(where, "private key is encrypted and no passphrase was given",
                         "pass it with --passphrase-env or --passphrase-file")
    try:
        # An RSA key's full validation (0.25 s for 4096 bits, holding the GIL) is not skipped
        # but moved: load_signer runs it in a child process (KeyCheck) and Signer.key waits
        # for its verdict. An ECDSA key's point is still checked here (cheap).
        key = serialization.load_pem_private_key(data, passphrase if encrypted else None,
                                                 unsafe_skip_rsa_key_validation=True)
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


def _make_parents(directory: Path, mode: int) -> None:
    """Create ``directory`` and its missing parents with exactly ``mode`` (not umask-reduced):
    0700 for a key's directory, so a key later written there with a lax umask is still hidden."""
    missing = []
    for parent in (directory, *directory.parents):
        if os.path.isdir(parent):
            break
        missing.append(parent)
    for parent in reversed(missing):
        try:
            os.mkdir(parent, mode)
            os.chmod(parent, mode)
        except FileExistsError:
            if not os.path.isdir(parent):
                raise InputError(str(parent), "exists and is not a directory",
                                 "choose another path for the key") from None
        except OSError as err:
            raise InputError(str(parent), f"cannot create directory: {_why(parent, err)}") \
                from None


def _create_exclusive(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a fresh temporary file (``mode`` from the start), then link it to ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _sweep_temporaries(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except OSError as err:
        raise InputError(str(path), f"cannot create: {(err.strerror or str(err)).lower()}",
                         "check that the directory is writable") from None
    fcntl.flock(fd, fcntl.LOCK_EX)  # held until written and linked: marks it as in use
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # the umask may have removed bits we want (0644 certificates)
        os.link(tmp, path)
    except FileExistsError:
        raise InputError(str(path), "already exists", "refusing to overwrite") from None
    except OSError as err:
        raise InputError(str(path), f"cannot write: {_why(tmp, err)}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _sweep_temporaries(path: Path) -> None:
    """Remove ``.NAME.tmp-*`` files a killed ``keys generate`` left next to ``path`` (a
    temporary key is a private key): regular files only, never through a symlink, and only
    those whose flock is free (a generate still running holds its own)."""
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        prefix = f".{path.name}.tmp-"
        for name in os.listdir(dir_fd):
            if not name.startswith(prefix):
                continue
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             dir_fd=dir_fd)
            except OSError:
                continue
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                try:
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if (st.st_dev, st.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino):
                    os.unlink(name, dir_fd=dir_fd)
            finally:
                os.close(fd)
    finally:
        os.close(dir_fd)
