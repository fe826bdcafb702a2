"""An arm64 image built on this x86-64 machine, for an arm64 feed: ``check --arch arm64`` says
it merges (and ``--arch x86-64`` that it does not), and ``publish`` names it
``NAME_VERSION_arm64.raw`` with a transfer that matches only arm64 files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from conftest import run_cli
from feed_kit import one_file_image


def aarch64_elf() -> bytes:
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    return ident + struct.pack("<HHI", 3, 183, 1) + bytes(40)


@pytest.fixture(scope="module")
def arm64_image(tmp_path_factory, cache_dir) -> Path:
    manifest = one_file_image(tmp_path_factory.mktemp("arm64"), cache_dir, "armtool",
                              path="/usr/bin/armtool", content=aarch64_elf(), version="1.0",
                              deb_arch="arm64", architecture="arm64")
    return manifest.with_name("armtool.raw")


def check(image: Path, arch: str):
    return run_cli("check", str(image), "--arch", arch, "--systemd", "257",
                   "--os-release", str(image.parent.parent / "os-release"), "--json")


def test_check_arch_arm64_merges(arm64_image):
    (arm64_image.parent.parent / "os-release").write_text("ID=debian\nVERSION_ID=12\n")
    proc = check(arm64_image, "arm64")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [verdict] = json.loads(proc.stdout)["images"]
    assert verdict["verdict"] == "merges", verdict
    proc = check(arm64_image, "x86-64")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    [verdict] = json.loads(proc.stdout)["images"]
    assert verdict["verdict"] != "merges" and "ARCHITECTURE" in json.dumps(verdict), verdict


def test_publish_arm64_feed(arm64_image, tmp_path):
    feed = tmp_path / "feed"
    proc = run_cli("publish", str(arm64_image), "--feed", str(feed), "--url",
                   "http://updates.example.invalid/", "--unsigned", "--json")
    assert proc.returncode == 0, proc.stderr
    [entry] = json.loads(proc.stdout)["index"]["images"]
    assert entry["file"] == "armtool_1.0_arm64.raw" and entry["architecture"] == "arm64"
    assert "MatchPattern=armtool_@v_arm64.raw\n" in \
        (feed / "sysupdate.d/armtool.transfer").read_text()
