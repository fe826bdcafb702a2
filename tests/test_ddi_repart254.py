"""Byte identity across systemd-repart versions: the host's 252 and 254 from bookworm-backports.

This is the claim of the DDI format section: repart ≤254 randomizes verity salts, so the images
differ between runs unless every choice is made for it. Needs the network once (cached after).
"""

from __future__ import annotations

import subprocess

import pytest
import systemd_versions
from prereq import missing
from test_ddi import build, need_tools, new_fs_image, new_signer, sha256

from pipeline.ddi import Repart, inspect_image


@pytest.fixture(scope="module")
def fs_image(tmp_path_factory):
    return new_fs_image(tmp_path_factory.mktemp("fs"))


@pytest.fixture(scope="module")
def rsa_signer(tmp_path_factory):
    return new_signer(tmp_path_factory.mktemp("rsa"), "test release")


@pytest.fixture(scope="module")
def repart_254() -> Repart:
    need_tools()
    try:
        root = systemd_versions.systemd_254()
        path, env = systemd_versions.command(root, "systemd-repart")
    except systemd_versions.Unavailable as err:
        missing(f"systemd 254 from bookworm-backports: {err}")
    version = subprocess.run([path, "--version"], env=env, capture_output=True, text=True)
    assert version.stdout.startswith("systemd 254"), version.stdout + version.stderr
    return Repart(path, env)


@pytest.mark.network
@pytest.mark.parametrize("arch", ["x86-64", "arm64"])
def test_repart_252_and_254_write_the_same_bytes(fs_image, rsa_signer, repart_254, tmp_path,
                                                 arch):
    host = subprocess.run(["systemd-repart", "--version"], capture_output=True, text=True).stdout
    assert host.startswith("systemd 252")
    (tmp_path / "252").mkdir()
    (tmp_path / "254").mkdir()
    old = build(fs_image, tmp_path / "252/x.raw", rsa_signer, arch=arch)
    new = build(fs_image, tmp_path / "254/x.raw", rsa_signer, arch=arch, repart=repart_254)
    print(f"{arch}: repart 252 {old.sha256}, repart 254 {new.sha256}")
    assert sha256(tmp_path / "252/x.raw") == sha256(tmp_path / "254/x.raw")
    assert old == new
    assert inspect_image(tmp_path / "254/x.raw")["verity"]["verified"] is True
