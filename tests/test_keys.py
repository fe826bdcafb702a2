"""keys generate / load_signer: never overwrite, 0600, refuse exposed keys, passphrases."""

from __future__ import annotations

import datetime
import os
import shutil
import stat
import subprocess

import pytest
from conftest import run_cli
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from prereq import require_tool
from test_ddi import make_cert, write_key

from pipeline import keys
from pipeline.errors import InputError


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """One real RSA-4096 pair (the default), generated once: it takes a moment."""
    d = tmp_path_factory.mktemp("keys") / "keys"
    signer = keys.generate(d / "release.key", d / "release.crt",
                           subject="CN=Release,O=Example", days=90)
    return d / "release.key", d / "release.crt", signer


def test_generate_defaults(pair):
    key_path, cert_path, signer = pair
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o644
    assert stat.S_IMODE(key_path.parent.stat().st_mode) == 0o700
    loaded = keys.load_signer(key_path, cert_path)
    assert isinstance(loaded.key, rsa.RSAPrivateKey) and loaded.key.key_size == 4096
    cert = loaded.certificate
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Release"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Example"
    assert cert.issuer == cert.subject
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=90) <= lifetime <= datetime.timedelta(days=90, minutes=10)
    assert loaded.fingerprint == signer.fingerprint and loaded.algorithm == "rsa-4096-sha256"
    assert "PRIVATE" not in repr(loaded) and "key=" not in repr(loaded)
    assert sorted(p.name for p in key_path.parent.iterdir()) == ["release.crt", "release.key"]


def test_generate_never_overwrites(pair, tmp_path):
    key_path, cert_path, _ = pair
    before = key_path.read_bytes(), cert_path.read_bytes()
    with pytest.raises(InputError, match="already exists"):
        keys.generate(key_path, cert_path, key_size=2048)
    assert (key_path.read_bytes(), cert_path.read_bytes()) == before
    # only the certificate exists: no key may be left behind either
    (tmp_path / "new.crt").write_text("mine")
    with pytest.raises(InputError, match="already exists"):
        keys.generate(tmp_path / "new.key", tmp_path / "new.crt", key_size=2048)
    assert not (tmp_path / "new.key").exists()
    assert (tmp_path / "new.crt").read_text() == "mine"


def test_key_is_never_readable_by_others_even_with_a_lax_umask(tmp_path):
    old = os.umask(0)
    try:
        keys.generate(tmp_path / "k", tmp_path / "c", key_size=2048)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_refuses_keys_others_can_read(pair, tmp_path, mode):
    key_path, cert_path, _ = pair
    copy = tmp_path / "exposed.key"
    copy.write_bytes(key_path.read_bytes())
    os.chmod(copy, mode)
    with pytest.raises(InputError, match=f"accessible by group or others \\(mode 0{mode:o}\\)"):
        keys.load_signer(copy, cert_path)


def test_passphrase_from_env_and_file(tmp_path, monkeypatch):
    require_tool("openssl", "openssl")
    keys.generate(tmp_path / "k", tmp_path / "c", passphrase=b"s3cret words", key_size=2048)
    assert b"ENCRYPTED PRIVATE KEY" in (tmp_path / "k").read_bytes()
    monkeypatch.setenv("RELEASE_KEY_PASS", "s3cret words")
    secret = keys.read_passphrase(env_var="RELEASE_KEY_PASS")
    keys.load_signer(tmp_path / "k", tmp_path / "c", secret)
    (tmp_path / "pass").write_text("s3cret words\n")
    os.chmod(tmp_path / "pass", 0o600)
    secret = keys.read_passphrase(file=tmp_path / "pass")
    assert secret == b"s3cret words"
    keys.load_signer(tmp_path / "k", tmp_path / "c", secret)
    # other tools (an HSM host's openssl) read the same key with the same passphrase
    subprocess.run(["openssl", "pkey", "-in", tmp_path / "k", "-passin", "env:RELEASE_KEY_PASS",
                    "-noout"], check=True, env={**os.environ, "RELEASE_KEY_PASS": "s3cret words"})

    with pytest.raises(InputError, match="wrong passphrase"):
        keys.load_signer(tmp_path / "k", tmp_path / "c", b"guess")
    with pytest.raises(InputError, match="encrypted and no passphrase"):
        keys.load_signer(tmp_path / "k", tmp_path / "c")
    assert "RELEASE_KEY_PASS" not in os.environ  # read once, then gone
    with pytest.raises(InputError, match="RELEASE_KEY_PASS: environment variable not set"):
        keys.read_passphrase(env_var="RELEASE_KEY_PASS")
    with pytest.raises(InputError, match="both"):
        keys.read_passphrase(env_var="X", file=tmp_path / "pass")


def test_certificate_must_match_the_key(pair, tmp_path):
    key_path, _, _ = pair
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(InputError, match="does not belong to the key"):
        keys.load_signer(key_path, make_cert(other, tmp_path / "other.crt"))
    (tmp_path / "junk.crt").write_text("not a cert")
    with pytest.raises(InputError, match="not an X.509 certificate"):
        keys.load_signer(key_path, tmp_path / "junk.crt")


def test_ed25519_is_refused(tmp_path):
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ed")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, None))
    (tmp_path / "ed.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(InputError, match="unsupported key type Ed25519"):
        keys.load_signer(write_key(key, tmp_path / "ed.key"), tmp_path / "ed.crt")


@pytest.mark.parametrize("subject, expected", [
    ("Plain Name", "CN=Plain Name"),
    ("/C=DE/O=Org/CN=Release", "CN=Release,O=Org,C=DE"),
    ("CN=Release,O=Org", "CN=Release,O=Org"),
])
def test_subject_spellings(subject, expected):
    assert keys._parse_subject(subject).rfc4514_string() == expected


# --- passphrase files, symlinked secrets, where keys are created -------------------------------

def test_passphrase_file_others_can_read_is_refused(tmp_path):
    secret = tmp_path / "pass"
    secret.write_text("s3cret words\n")
    for mode in (0o644, 0o640, 0o604):
        os.chmod(secret, mode)
        with pytest.raises(InputError, match=f"passphrase file is accessible by group or others "
                           f"\\(mode 0{mode:o}\\)"):
            keys.read_passphrase(file=secret)
    os.chmod(secret, 0o644)
    proc = run_cli("keys", "generate", "--key", str(tmp_path / "k/k.key"), "--cert",
                   str(tmp_path / "k/k.crt"), "--passphrase-file", str(secret))
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {secret}: passphrase file")
    assert len(proc.stderr.splitlines()) == 1 and not (tmp_path / "k").exists()
    os.chmod(secret, 0o600)
    assert keys.read_passphrase(file=secret) == b"s3cret words"


def test_symlinked_secrets_are_followed_and_their_targets_checked(pair, tmp_path):
    """A Kubernetes secret volume: release.key -> ..data/release.key -> ..2024/release.key."""
    key_path, cert_path, signer = pair
    volume = tmp_path / "secret"
    (volume / "..2024_01_01").mkdir(parents=True)
    for src, name in ((key_path, "release.key"), (cert_path, "release.crt")):
        shutil.copy(src, volume / "..2024_01_01" / name)
        os.chmod(volume / "..2024_01_01" / name, 0o400)
    (volume / "pass").write_text("unused")
    os.chmod(volume / "pass", 0o400)
    (volume / "..data").symlink_to("..2024_01_01")
    for name in ("release.key", "release.crt"):
        (volume / name).symlink_to(f"..data/{name}")
    (volume / "pass-link").symlink_to("pass")

    loaded = keys.load_signer(volume / "release.key", volume / "release.crt")
    assert loaded.fingerprint == signer.fingerprint
    assert keys.read_passphrase(file=volume / "pass-link") == b"unused"

    target = volume / "..2024_01_01/release.key"
    os.chmod(target, 0o644)  # the link's own mode is always 0777: the target's is what counts
    with pytest.raises(InputError) as err:
        keys.load_signer(volume / "release.key", volume / "release.crt")
    assert err.value.what == f"private key is accessible by group or others (mode 0644 of the " \
        f"symlink's target {target})"
    assert err.value.hint.startswith(f"chmod 600 {target}")
    os.chmod(volume / "pass", 0o644)
    with pytest.raises(InputError, match="passphrase file is accessible"):
        keys.read_passphrase(file=volume / "pass-link")

    (tmp_path / "dangling.key").symlink_to("nowhere.key")
    with pytest.raises(InputError, match="cannot read private key: it is a symbolic link to "
                       "nowhere.key, which does not exist"):
        keys.load_signer(tmp_path / "dangling.key", cert_path)
    (tmp_path / "loop.key").symlink_to("loop.key")
    with pytest.raises(InputError, match="symbolic link that loops back on itself"):
        keys.load_signer(tmp_path / "loop.key", cert_path)
    with pytest.raises(InputError, match="cannot read certificate: no such file"):
        keys.load_certificate(tmp_path / "missing.crt")
    os.mkfifo(tmp_path / "fifo.key", 0o600)  # must not hang
    with pytest.raises(InputError, match="private key is not a regular file"):
        keys.load_signer(tmp_path / "fifo.key", cert_path)


def test_generate_creates_a_private_directory(tmp_path):
    proc = run_cli("keys", "generate", "--key", str(tmp_path / "new/keys/k.key"), "--cert",
                   str(tmp_path / "new/keys/k.crt"), umask=0o022)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE((tmp_path / "new/keys").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "new/keys/k.key").stat().st_mode) == 0o600


def test_generate_where_it_cannot_is_a_one_line_error(tmp_path):
    (tmp_path / "file").write_text("in the way")
    proc = run_cli("keys", "generate", "--key", str(tmp_path / "file/k.key"), "--cert",
                   str(tmp_path / "file/k.crt"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr == f"error: {tmp_path / 'file'}: exists and is not a directory " \
        "(choose another path for the key)\n"


def test_passphrase_variable_is_not_inherited_by_children(monkeypatch):
    """Once read, the passphrase is gone from the environment: a child started afterwards
    (any tool, even one started without pipeline.tools' clean environment) cannot see it."""
    monkeypatch.setenv("RELEASE_KEY_PASS", "s3cret words")
    assert keys.read_passphrase(env_var="RELEASE_KEY_PASS") == b"s3cret words"
    child = subprocess.run(["env"], capture_output=True, text=True, check=True).stdout
    assert "RELEASE_KEY_PASS" not in child and "s3cret" not in child
    assert "RELEASE_KEY_PASS" not in os.environ


def test_temporary_key_of_a_killed_generate_is_swept(tmp_path):
    """A killed ``keys generate`` leaves ``.NAME.tmp-PID`` (a private key): the next generate
    for that name removes it, unless a running generate holds it (flock); links and other
    names are left alone."""
    import fcntl

    stale = tmp_path / ".k.tmp-4242"
    stale.write_bytes(b"half-written key\n")
    held = tmp_path / ".k.tmp-4343"
    held.write_bytes(b"in use")
    outside = tmp_path / "outside"
    outside.write_text("keep")
    os.symlink(outside, tmp_path / ".k.tmp-link")
    (tmp_path / ".other.tmp-1").write_text("keep")
    with open(held, "rb") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        keys.generate(tmp_path / "k", tmp_path / "c", key_size=2048)
    assert not stale.exists()
    assert held.exists() and outside.read_text() == "keep"
    assert (tmp_path / ".k.tmp-link").is_symlink() and (tmp_path / ".other.tmp-1").exists()
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600
