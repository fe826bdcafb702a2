"""DDI and detached-verity builds through the CLI: reproducible, signed, offline-signable,
checked with the real veritysetup and openssl (this kernel cannot merge a DDI: no device-mapper,
no partition scanning, so the partitions are cut out and verified one by one)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli, write_recipe
from pkgfactory import build_deb, file
from prereq import require_root, require_tool
from recipes_kit import EPOCH, build_cli, build_recipe, recipe_dict, toml_text
from test_build import walk
from test_ddi import cut

from pipeline.image.ddi.gpt import read_gpt


@pytest.fixture(scope="session")
def keypair(tmp_path_factory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("keys")
    proc = run_cli("keys", "generate", "--key", str(directory / "k.key"), "--cert",
                   str(directory / "k.crt"), "--subject", "CN=test release")
    assert proc.returncode == 0, proc.stderr
    assert (directory / "k.key").stat().st_mode & 0o777 == 0o600
    return directory / "k.key", directory / "k.crt"


@pytest.fixture(scope="session")
def noarch_deb(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("noarch")
    return build_deb(out, "scripts", "1.0", [file("/usr/bin/hello-script", b"#!/bin/sh\necho hi\n",
                                                  0o755)], arch="all")


def ddi_spec(packages, keypair, *, arch="x86-64", fmt="ddi", fs="erofs", sign=True,
             version_id="12", **image) -> dict:
    key, cert = keypair
    return recipe_dict("signed", kind="sysext",
                       target={"id": "debian", "version_id": version_id, "architecture": arch},
                       sources=[packages["deb"]],
                       image={"format": fmt, "filesystem": fs if fmt == "ddi" else None,
                              **image, "source_date_epoch": EPOCH},
                       sign={"key": key, "cert": cert} if sign else None)


def part(image: Path, partition, dest: Path) -> Path:
    """One partition of ``image`` copied to ``dest``."""
    return cut(image, partition.offset, partition.size, dest)


def test_ddi_reproducible_verified_signed(tmp_path, packages, cache_dir, keypair):
    require_tool("veritysetup", "cryptsetup-bin")
    require_tool("openssl", "openssl")
    spec = ddi_spec(packages, keypair)
    first = build_recipe(tmp_path / "a", spec, cache_dir=cache_dir).image
    second = build_recipe(tmp_path / "b" / "deeper", spec, cache_dir=cache_dir,
                          env={"TZ": "America/Lima", "LANG": "et_EE.UTF-8"}, umask=0o002).image
    assert first["sha256"] == second["sha256"]
    image = Path(first["image"])
    manifest = json.loads(Path(first["manifest"]).read_text())
    ddi = manifest["ddi"]
    root_hash = ddi["rootHash"]
    parts = {p.type_uuid: p for p in read_gpt(image).partitions}
    assert set(parts) == {"4f68bce3-e8cd-4db1-96e7-fbcaf984b709",   # root x86-64
                          "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5",   # root-verity
                          "41092b05-9fc8-4523-994f-2def0408b176"}   # root-verity-sig
    data = parts["4f68bce3-e8cd-4db1-96e7-fbcaf984b709"]
    hashp = parts["2c7357ed-ebd2-46d9-aec1-23d437ec2bf5"]
    sigp = parts["41092b05-9fc8-4523-994f-2def0408b176"]
    assert data.uuid.replace("-", "") == root_hash[:32]
    assert hashp.uuid.replace("-", "") == root_hash[32:]
    data_img, hash_img = part(image, data, tmp_path / "data"), part(image, hashp, tmp_path / "hash")
    subprocess.run(["veritysetup", "verify", str(data_img), str(hash_img), root_hash],
                   check=True, capture_output=True)
    blob = json.loads(part(image, sigp, tmp_path / "sig").read_bytes().rstrip(b"\0"))
    assert blob["rootHash"] == root_hash
    cert_der = subprocess.run(["openssl", "x509", "-in", str(keypair[1]), "-outform", "DER"],
                              capture_output=True, check=True).stdout
    assert blob["certificateFingerprint"] == hashlib.sha256(cert_der).hexdigest()
    (tmp_path / "p7s").write_bytes(__import__("base64").b64decode(blob["signature"]))
    (tmp_path / "content").write_text(root_hash)
    subprocess.run(["openssl", "smime", "-verify", "-binary", "-inform", "DER", "-in",
                    str(tmp_path / "p7s"), "-content", str(tmp_path / "content"), "-certfile",
                    str(keypair[1]), "-nointern", "-noverify", "-out", os.devnull], check=True,
                   capture_output=True)
    # The file system inside is the one the manifest lists.
    require_root()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop,ro", "-t", "erofs", str(data_img), str(mnt)], check=True)
    try:
        assert walk(mnt) == {f["path"]: f for f in manifest["files"]}
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    proc = run_cli("inspect", str(image), "--cert", str(keypair[1]), "--json")
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["verity"]["verified"] and report["signature"]["verified"]


def test_unsigned_then_sign_equals_signed(tmp_path, packages, cache_dir, keypair):
    spec = ddi_spec(packages, keypair, fs="squashfs")
    signed = build_recipe(tmp_path / "signed", spec, cache_dir=cache_dir).image
    unsigned = build_recipe(tmp_path / "unsigned", spec, "--unsigned", cache_dir=cache_dir).image
    image = Path(unsigned["image"])
    roothash = image.with_name("signed.roothash")
    assert roothash.read_text().strip() == json.loads(
        Path(signed["manifest"]).read_text())["ddi"]["rootHash"] == unsigned["root_hash"]
    assert unsigned["extra_files"] == [str(roothash)] and signed["extra_files"] == []
    before = image.read_bytes()
    proc = run_cli("sign", str(image), "--key", str(keypair[0]), "--cert", str(keypair[1]))
    assert proc.returncode == 0, proc.stderr
    after = image.read_bytes()
    assert hashlib.sha256(after).hexdigest() == signed["sha256"]
    sigp = [p for p in read_gpt(image).partitions
            if p.type_uuid == "41092b05-9fc8-4523-994f-2def0408b176"][0]
    changed = [i for i in range(len(before)) if before[i] != after[i]] if len(before) < 2**24 \
        else []
    assert changed and sigp.offset <= changed[0] and changed[-1] < sigp.offset + sigp.size
    # The manifest, too, is the signed build's, byte for byte.
    assert Path(unsigned["manifest"]).read_bytes() == Path(signed["manifest"]).read_bytes()
    manifest = json.loads(Path(unsigned["manifest"]).read_text())
    assert manifest["image"]["sha256"] == signed["sha256"]
    assert manifest["ddi"]["certificateFingerprint"] is not None


def test_detached_unsigned_then_sign_equals_signed(tmp_path, packages, cache_dir, keypair):
    """``--unsigned`` + ``sign`` on NAME.raw + NAME.roothash gives the signed build's files,
    manifest included (its verity section names the signer and the .p7s)."""
    require_tool("veritysetup", "cryptsetup-bin")
    spec = ddi_spec(packages, keypair, fmt="squashfs", verity="detached")
    signed = build_recipe(tmp_path / "signed", spec, cache_dir=cache_dir).image
    unsigned = build_recipe(tmp_path / "unsigned", spec, "--unsigned", cache_dir=cache_dir).image
    image = Path(unsigned["image"])
    assert json.loads(Path(unsigned["manifest"]).read_text())["verity"]["signatureFile"] is None
    proc = run_cli("sign", str(image), "--key", str(keypair[0]), "--cert", str(keypair[1]))
    assert proc.returncode == 0, proc.stderr
    for name in ("signed.raw", "signed.verity", "signed.roothash", "signed.roothash.p7s",
                 "signed.manifest.json"):
        assert (image.parent / name).read_bytes() == \
            (Path(signed["image"]).parent / name).read_bytes(), name


def test_sign_with_p7s_made_elsewhere(tmp_path, packages, cache_dir, keypair):
    require_tool("openssl", "openssl")
    spec = ddi_spec(packages, keypair)
    signed = build_recipe(tmp_path / "signed", spec, cache_dir=cache_dir).image
    unsigned = build_recipe(tmp_path / "unsigned", spec, "--unsigned", cache_dir=cache_dir).image
    image = Path(unsigned["image"])
    roothash = image.with_name("signed.roothash").read_text().strip()
    (tmp_path / "rh").write_text(roothash)  # no newline: the signed content is the bare hex
    p7s = tmp_path / "x.p7s"
    subprocess.run(["openssl", "smime", "-sign", "-binary", "-noattr", "-outform", "DER",
                    "-in", str(tmp_path / "rh"), "-signer", str(keypair[1]), "-inkey",
                    str(keypair[0]), "-md", "sha256", "-out", str(p7s)], check=True)
    wrong = tmp_path / "wrong.p7s"
    (tmp_path / "other").write_text("0" * 64)
    subprocess.run(["openssl", "smime", "-sign", "-binary", "-noattr", "-outform", "DER",
                    "-in", str(tmp_path / "other"), "-signer", str(keypair[1]), "-inkey",
                    str(keypair[0]), "-md", "sha256", "-out", str(wrong)], check=True)
    before = image.read_bytes()
    proc = run_cli("sign", str(image), "--signature", str(wrong), "--cert", str(keypair[1]))
    assert proc.returncode == 2 and "root hash" in proc.stderr
    assert image.read_bytes() == before
    proc = run_cli("sign", str(image), "--signature", str(p7s), "--cert", str(keypair[1]))
    assert proc.returncode == 0, proc.stderr
    assert hashlib.sha256(image.read_bytes()).hexdigest() == signed["sha256"]


def test_arm64_ddi_on_x86_64(tmp_path, noarch_deb, cache_dir, keypair):
    spec = ddi_spec({"deb": noarch_deb}, keypair, arch="arm64")
    result = build_recipe(tmp_path, spec, cache_dir=cache_dir).image
    types = {p.type_uuid for p in read_gpt(Path(result["image"])).partitions}
    assert types == {"b921b045-1df0-41c3-af44-4c6f280d3fae", "df3300ce-d69f-4c92-978c-9bfb0f38d820",
                     "6db69de6-29f4-4758-a7a5-962190f00ce3"}
    assert result["extension_release"]["ARCHITECTURE"] == "arm64"


def test_package_architecture_must_match_target(tmp_path, packages, cache_dir, keypair):
    proc = build_recipe(tmp_path, ddi_spec(packages, keypair, arch="arm64"),
                        cache_dir=cache_dir, json_out=False, expect=2)
    assert "built for x86-64, but target.architecture is arm64" in \
        proc.stderr
    assert not any((tmp_path / "out").iterdir())


def test_detached_verity_for_squashfs(tmp_path, packages, cache_dir, keypair):
    require_tool("veritysetup", "cryptsetup-bin")
    spec = ddi_spec(packages, keypair, fmt="squashfs", verity="detached")
    result = build_recipe(tmp_path, spec, cache_dir=cache_dir).image
    image = Path(result["image"])
    verity, roothash = image.with_name("signed.verity"), image.with_name("signed.roothash")
    p7s = image.with_name("signed.roothash.p7s")
    assert verity.is_file() and roothash.is_file() and p7s.is_file()
    subprocess.run(["veritysetup", "verify", str(image), str(verity),
                    roothash.read_text().strip()], check=True, capture_output=True)
    manifest = json.loads(Path(result["manifest"]).read_text())
    assert manifest["verity"]["rootHash"] == roothash.read_text().strip()
    # A signed image is replaced only with --force (issue 16 §5, mkosi's -f): nothing touched
    refused = build_cli(tmp_path / "recipe.toml", tmp_path / "out", "--unsigned",
                        cache_dir=cache_dir, json_out=False, expect=2)
    assert f"{image}: is a signed image" in refused.stderr
    assert "--force" in refused.stderr and p7s.is_file()
    # Rebuilt unsigned: the stale signature must not stay behind.
    build_recipe(tmp_path, spec, "--unsigned", "--force", cache_dir=cache_dir)
    assert not p7s.exists() and roothash.is_file()


def test_world_readable_key_is_refused(tmp_path, packages, cache_dir, keypair):
    key = tmp_path / "open.key"
    key.write_bytes(keypair[0].read_bytes())
    key.chmod(0o644)
    proc = build_recipe(tmp_path, ddi_spec(packages, (key, keypair[1])), cache_dir=cache_dir,
                        json_out=False, expect=2)
    assert str(key) in proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_ddi_needs_an_architecture(tmp_path, noarch_deb, cache_dir, keypair):
    proc = build_recipe(tmp_path, ddi_spec({"deb": noarch_deb}, keypair, arch="auto"),
                        cache_dir=cache_dir, json_out=False, expect=2)
    assert "a DDI needs one architecture" in proc.stderr


@pytest.mark.parametrize("fmt, fs", [("ddi", "erofs"), ("erofs", None)])
def test_recipe_comment_does_not_change_the_image(tmp_path, packages, cache_dir, keypair, fmt,
                                                  fs):
    """UUIDs and salts come from the image's content and settings, not the recipe's bytes."""
    spec = ddi_spec(packages, keypair, fmt=fmt, fs=fs or "erofs", sign=fmt == "ddi")
    first = build_recipe(tmp_path / "a", spec, cache_dir=cache_dir).image
    commented = write_recipe(tmp_path / "b", "# a comment changes nothing\n" + toml_text(spec))
    second = build_cli(commented, tmp_path / "b" / "out", cache_dir=cache_dir).image
    assert first["sha256"] == second["sha256"]
    third = build_recipe(tmp_path / "c", ddi_spec(packages, keypair, fmt=fmt, fs=fs or "erofs",
                                                  sign=fmt == "ddi", version_id="13"),
                         cache_dir=cache_dir).image
    assert third["sha256"] != first["sha256"]
