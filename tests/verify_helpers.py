"""Real builds for the verify/diff/vary tests: a project directory (recipe + its packages,
referenced relatively, as a real repository would hold them), built in-process."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from prereq import require_tool
from recipes_kit import EPOCH, hello_recipe, run_cli, toml_text

from pipeline import keys
from pipeline import recipe as recipe_mod
from pipeline.sources.fetch import Cache
from pipeline.stages.build import build as run_build


def extra_file(**attrs) -> dict:
    """``[files]`` adding one small file (``attrs``: its mode, ...): the smallest real change
    of a recipe, for the tests that compare two builds."""
    return {"files": {"usr/share/hello/extra.txt": {"content": "extra\n", **attrs}}}


def recipe_text(fmt: str, *, epoch: int | None = EPOCH, deb: str = "hello-tools.deb",
                extra: dict | None = None, sign: str | None = None,
                filesystem: str | None = None, verity: str | None = None) -> str:
    """The shared hello recipe with its packages under ``pkgs/`` (relative paths); ``extra``:
    more sections (``extra_file()``), ``sign``: the stem of ``STEM.key``/``STEM.crt``."""
    sections = dict(extra or {})
    if sign:
        sections["sign"] = {"key": f"{sign}.key", "cert": f"{sign}.crt"}
    return toml_text(hello_recipe(fmt, sources=[f"pkgs/{deb}", "pkgs/rtools.rpm"], epoch=epoch,
                                  image={"filesystem": filesystem, "verity": verity},
                                  **sections))


def project(root: Path, packages: dict, fmt: str, *, name: str = "hello.toml", **kw) -> Path:
    """``root/hello.toml`` with the session's packages copied to ``root/pkgs``."""
    pkgs = root / "pkgs"
    pkgs.mkdir(parents=True, exist_ok=True)
    for key, dest in (("deb", "hello-tools.deb"), ("rpm", "rtools.rpm")):
        if not (pkgs / dest).exists():
            shutil.copy(packages[key], pkgs / dest)
    recipe = root / name
    recipe.write_text(recipe_text(fmt, **kw))
    return recipe


def build(recipe: Path, out: Path, cache_dir: Path, *, unsigned: bool = False):
    """Build in this process; returns the (single) ImageResult."""
    kwargs = {"unsigned": True} if unsigned else {}
    result = run_build(recipe_mod.load(recipe), out, Cache(cache_dir), **kwargs)
    [image] = result.images
    return image


def verify_json(*args, cwd=None) -> tuple[int, dict]:
    """``verify ARGS --json``: (exit code, 0 or 3; the report)."""
    proc = run_cli("verify", *map(str, args), "--json", cwd=cwd)
    assert proc.returncode in (0, 3), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def diff_json(a, b, *args) -> dict:
    """``diff A B --json ARGS``: its report, whose ``ok`` matches the exit code (0 or 3)."""
    proc = run_cli("diff", str(a), str(b), "--json", *args)
    assert proc.returncode in (0, 3), proc.stderr
    data = json.loads(proc.stdout)
    assert proc.returncode == (0 if data["ok"] else 3)
    return data


def causes(report: dict, level: str | None = None) -> dict[str, dict]:
    """The findings of a diff report that explain it (of one ``level``, or all), by field."""
    return {f["field"]: f for f in report["findings"]
            if f["explains"] and (level is None or f["level"] == level)}


def signer_files(directory: Path, stem: str, cn: str) -> Path:
    """``directory/stem.key`` + ``.crt`` (RSA-2048: fast enough for tests)."""
    directory.mkdir(parents=True, exist_ok=True)
    keys.generate(directory / f"{stem}.key", directory / f"{stem}.crt", subject=f"CN={cn}",
                  days=30, key_size=2048)
    return directory / f"{stem}.key"


def signed_build(proj: Path, packages: dict, fmt: str, cache_dir: Path, *, cn: str,
                 stem: str = "release", **kw):
    """``proj/STEM.key`` + ``.crt`` (CN ``cn``), the hello project signed with them, built into
    ``proj/out``: the ImageResult."""
    signer_files(proj, stem, cn)
    return build(project(proj, packages, fmt, sign=stem, **kw), proj / "out", cache_dir)


def two_signers(tmp_path_factory, name: str) -> Path:
    """A new directory NAME whose ``p/`` holds the signers ``a`` and ``b``."""
    root = tmp_path_factory.mktemp(name)
    signer_files(root / "p", "a", "signer a")
    signer_files(root / "p", "b", "signer b")
    return root


def two_signer_ddi(tmp_path_factory, name: str, packages: dict,
                   filesystem: str) -> tuple[Path, Path]:
    """:func:`two_signers`, and the hello project in its ``p/`` as a DDI of ``filesystem``
    signed by ``a``, once the DDI tools are known to be there: (the directory, the recipe)."""
    require_tool("systemd-repart", "systemd-repart")
    require_tool("veritysetup", "cryptsetup-bin")
    root = two_signers(tmp_path_factory, name)
    return root, project(root / "p", packages, "ddi", filesystem=filesystem, sign="a")


def ecdsa_signer_files(directory: Path, stem: str, cn: str) -> Path:
    """``directory/stem.key`` + ``.crt`` with an ECDSA P-256 key (``keys generate`` makes RSA
    only; ECDSA signatures are randomized, which is what the tests need)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    key_path = directory / f"{stem}.key"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    (directory / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def repack_squashfs(image: Path, dest: Path, *extra: str) -> Path:
    """The same tree packed again by mksquashfs with other options (what another mksquashfs
    version does: other bytes, same files)."""
    tree = dest.parent / (dest.name + ".tree")
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(tree), str(image)], check=True,
                   capture_output=True)
    subprocess.run(["mksquashfs", str(tree), str(dest), "-noappend", "-no-progress", "-quiet",
                    "-all-time", "1700000000", "-mkfs-time", "1700000000", "-comp", "zstd",
                    *extra], check=True, capture_output=True)
    shutil.rmtree(tree)
    return dest
