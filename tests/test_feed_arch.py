"""An arm64 image built on this x86-64 machine, for an arm64 feed: ``check --arch arm64`` says
it merges (and ``--arch x86-64`` that it does not), and ``publish`` names it
``NAME_VERSION_arm64.raw`` with a transfer that matches only arm64 files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from conftest import run_cli, write_recipe
from pkgfactory import build_deb, file
from prereq import require_tool


def aarch64_elf() -> bytes:
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    return ident + struct.pack("<HHI", 3, 183, 1) + bytes(40)


@pytest.fixture(scope="module")
def arm64_image(tmp_path_factory, cache_dir) -> Path:
    require_tool("mksquashfs", "squashfs-tools")
    base = tmp_path_factory.mktemp("arm64")
    deb = build_deb(base / "debs", "armtool", "1.0-1",
                    [file("/usr/bin/armtool", aarch64_elf(), 0o755)], arch="arm64")
    recipe = write_recipe(base / "r", f"""
[extension]
name = "armtool"
kind = "sysext"
version = "1.0"
[target]
id = "debian"
version_id = "12"
architecture = "arm64"
[[source]]
deb = "{deb}"
[image]
format = "squashfs"
source_date_epoch = 1700000000
""")
    proc = run_cli("build", str(recipe), "-o", str(base / "out"), "--cache-dir", str(cache_dir))
    assert proc.returncode == 0, proc.stderr
    return base / "out/armtool.raw"


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
