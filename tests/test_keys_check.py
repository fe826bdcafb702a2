"""An RSA key's full validation runs off the critical path (pipeline/keys.py, KeyCheck: a child
Python loads the key with cryptography's default check) — and still refuses a key that fails it:
one line naming the key file, exit 2, no signature made and nothing published, also when the
build would otherwise be up to date. A valid key and a passphrase-protected key still sign."""

from __future__ import annotations

import datetime
import hashlib
import sys
from pathlib import Path

import pytest
from conftest import run_cli
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from prereq import require_tool
from recipes_kit import hello_recipe, write_recipe_dict

from pipeline import keys
from pipeline.errors import InputError


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


def _pem(key, passphrase: bytes | None = None) -> bytes:
    enc = serialization.BestAvailableEncryption(passphrase) if passphrase else \
        serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def _cert_for(public_key, signing_key) -> bytes:
    """A certificate for ``public_key`` (signed by a sound key: only the key pair matters)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "check")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(public_key).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(signing_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def _wrong_d(good: rsa.RSAPrivateKey) -> rsa.RSAPrivateKey:
    """The same public key (so the certificate still fits) with a private exponent that is off."""
    n = good.private_numbers()
    return rsa.RSAPrivateNumbers(n.p, n.q, n.d + 2, n.dmp1, n.dmq1, n.iqmp,
                                 n.public_numbers).private_key(unsafe_skip_rsa_key_validation=True)


def _composite_p() -> rsa.RSAPrivateKey:
    """A "key" whose p is the product of two primes: d, the CRT values and n all computed
    from it as if it were prime. Only the primality check can tell."""
    a, b = (rsa.generate_private_key(65537, 1024).private_numbers() for _ in range(2))
    p, q, e = a.p * a.q, b.p, 65537
    d = pow(e, -1, (p - 1) * (q - 1))
    numbers = rsa.RSAPrivateNumbers(p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q),
                                    rsa.rsa_crt_iqmp(p, q), rsa.RSAPublicNumbers(e, p * q))
    return numbers.private_key(unsafe_skip_rsa_key_validation=True)


@pytest.fixture(scope="module")
def sound() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, sound) -> dict[str, tuple[Path, Path]]:
    """name -> (key, cert): ``good``, ``wrong-d`` (same public key and certificate as good),
    ``composite-p`` and ``good-pass`` (good, encrypted with the passphrase b"s3cret")."""
    d = tmp_path_factory.mktemp("keycheck")
    cert = _write(d / "good.crt", _cert_for(sound.public_key(), sound), 0o644)
    composite = _composite_p()
    return {
        "good": (_write(d / "good.key", _pem(sound)), cert),
        "wrong-d": (_write(d / "wrong-d.key", _pem(_wrong_d(sound))), cert),
        "composite-p": (_write(d / "composite-p.key", _pem(composite)),
                        _write(d / "composite-p.crt",
                               _cert_for(composite.public_key(), sound), 0o644)),
        "good-pass": (_write(d / "good-pass.key", _pem(sound, b"s3cret")), cert),
    }


@pytest.mark.parametrize("name", ["wrong-d", "composite-p"])
def test_an_invalid_key_loads_but_never_signs(pairs, name):
    key, cert = pairs[name]
    signer = keys.load_signer(key, cert)  # the check runs in a child meanwhile
    assert signer.fingerprint and signer.algorithm.startswith("rsa-")  # no private key needed
    for use in (signer.verify, lambda: signer.key):
        with pytest.raises(InputError) as err:
            use()
        assert err.value.where == str(key)
        assert "RSA private key fails validation" in err.value.what


def test_a_valid_key_passes_and_a_passphrase_key_too(pairs, sound):
    for name, passphrase in (("good", None), ("good-pass", b"s3cret")):
        signer = keys.load_signer(*pairs[name], passphrase)
        signer.verify()
        assert signer.key.private_numbers() == sound.private_numbers()


def _signed_recipe(directory: Path, deb: Path, key: Path, cert: Path, **sign) -> Path:
    spec = hello_recipe("squashfs", sources=[deb], image={"verity": "detached"},
                        sign={"key": str(key), "cert": str(cert), **sign})
    return write_recipe_dict(directory, spec)


def _published(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) \
        if out.exists() else []


def test_build_refuses_an_invalid_key_and_publishes_nothing(packages, pairs, tmp_path,
                                                            cache_dir):
    require_tool("mksquashfs", "squashfs-tools")
    require_tool("veritysetup", "cryptsetup-bin")
    recipe = _signed_recipe(tmp_path / "r", packages["deb"], *pairs["composite-p"])
    out = tmp_path / "out"
    proc = run_cli("build", str(recipe), "-o", str(out), "--cache-dir", str(cache_dir))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: {pairs['composite-p'][0]}: RSA private key fails "
                                "validation"), proc.stderr
    assert _published(out) == []


def test_an_up_to_date_build_still_refuses_the_key(packages, pairs, tmp_path, cache_dir):
    """Built with the good key; then its file is swapped for one with the same public key (so
    the same certificate and fingerprint, an up-to-date output) but a wrong d."""
    require_tool("mksquashfs", "squashfs-tools")
    require_tool("veritysetup", "cryptsetup-bin")
    good_key, cert = pairs["good"]
    key = _write(tmp_path / "keys" / "release.key", good_key.read_bytes())
    recipe = _signed_recipe(tmp_path / "r", packages["deb"], key, cert)
    out = tmp_path / "out"
    first = run_cli("build", str(recipe), "-o", str(out), "--cache-dir", str(cache_dir))
    assert first.returncode == 0, first.stderr
    before = {name: hashlib.sha256((out / name).read_bytes()).hexdigest()
              for name in _published(out)}
    assert "hello.roothash.p7s" in before
    again = run_cli("build", str(recipe), "-o", str(out), "--cache-dir", str(cache_dir))
    assert again.returncode == 0 and "up to date" in again.stderr.lower(), again.stderr

    key.write_bytes(pairs["wrong-d"][0].read_bytes())
    proc = run_cli("build", str(recipe), "-o", str(out), "--cache-dir", str(cache_dir))
    assert proc.returncode == 2, proc.stderr
    assert f"error: {key}: RSA private key fails validation" in proc.stderr
    assert {name: hashlib.sha256((out / name).read_bytes()).hexdigest()
            for name in _published(out)} == before


def test_sign_refuses_an_invalid_key_and_a_passphrase_key_signs(packages, pairs, tmp_path,
                                                                cache_dir):
    require_tool("mksquashfs", "squashfs-tools")
    require_tool("veritysetup", "cryptsetup-bin")
    good_key, cert = pairs["good"]
    recipe = _signed_recipe(tmp_path / "r", packages["deb"], good_key, cert)
    out = tmp_path / "out"
    built = run_cli("build", str(recipe), "-o", str(out), "--cache-dir", str(cache_dir),
                    "--unsigned")
    assert built.returncode == 0, built.stderr
    image = out / "hello.raw"
    before = {name: (out / name).read_bytes() for name in _published(out)}

    bad = run_cli("sign", str(image), "--key", str(pairs["wrong-d"][0]), "--cert", str(cert))
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith(
        f"error: {pairs['wrong-d'][0]}: RSA private key fails validation"), bad.stderr
    assert {name: (out / name).read_bytes() for name in _published(out)} == before

    passfile = _write(tmp_path / "pass", b"s3cret\n")
    ok = run_cli("sign", str(image), "--key", str(pairs["good-pass"][0]), "--cert", str(cert),
                 "--passphrase-file", str(passfile))
    assert ok.returncode == 0, ok.stderr
    assert (out / "hello.roothash.p7s").is_file()


@pytest.mark.parametrize("interpreter", ["/nonexistent/python3", "/bin/false"])
def test_without_a_working_child_the_check_runs_here(pairs, monkeypatch, interpreter):
    """No interpreter at sys.executable (an embedded or frozen Python), or one that answers
    nothing: the same validation runs in this process — never skipped."""
    monkeypatch.setattr(sys, "executable", interpreter)
    good = keys.load_signer(*pairs["good"])
    good.verify()
    bad = keys.load_signer(*pairs["wrong-d"])
    with pytest.raises(InputError, match="RSA private key fails validation"):
        bad.verify()
    with pytest.raises(InputError, match="RSA private key fails validation"):
        bad.key  # noqa: B018 - the property is the point


def test_no_check_outlives_the_command(pairs):
    """A command that ends before it asked for the verdict (a build that failed earlier) kills
    its check: no child process (holding the key) is left running."""
    import subprocess

    from recipes_kit import REPO, cli_env

    key, cert = pairs["good"]
    probe = ("from pipeline import keys\n"
             f"signer = keys.load_signer({str(key)!r}, {str(cert)!r})\n"
             "[proc] = keys._RUNNING\n"
             "print(proc.pid, flush=True)\n")
    # The command runs under a child subreaper (PR_SET_CHILD_SUBREAPER), which inherits the
    # check child once the command has exited and waits for it: "killed" (SIGKILL, the
    # command's doing), "reaped" (it ended, and was waited for, before the command exited),
    # else how it ended by itself after its command. Sampling /proc once raced: a child
    # SIGKILLed moments before was still "R" on a loaded machine until it next ran.
    reaper = (
        "import ctypes, os, signal, subprocess, sys, time\n"
        "assert ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0\n"
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "assert done.returncode == 0, done.stderr\n"
        "pid = int(done.stdout.split()[0])\n"
        "deadline = time.monotonic() + 60\n"
        "while True:\n"
        "    try:\n"
        "        got, status = os.waitpid(pid, os.WNOHANG)\n"
        "    except ChildProcessError:\n"
        "        print('reaped'); break\n"
        "    if got:\n"
        "        print('killed' if os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9\n"
        "              else f'ended by itself: {status}'); break\n"
        "    if time.monotonic() > deadline:\n"
        "        os.kill(pid, signal.SIGKILL); print('still running after 60 s'); break\n"
        "    time.sleep(0.01)\n")
    done = subprocess.run([sys.executable, "-c", reaper, sys.executable, "-c", probe],
                          capture_output=True, text=True, cwd=REPO, env=cli_env(), timeout=180)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in ("killed", "reaped"), done.stdout
