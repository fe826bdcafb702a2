"""ELF files checked against the target architecture: a warning naming each foreign file, an
error for a whole package of another architecture; and (network) an arm64 image built on this
x86-64 machine from the archive's arm64 packages, whose ELF files are all aarch64."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import tomllib
from conftest import REPO, run_cli
from pkgfactory import build_deb, file
from prereq import require_tool
from recipes_kit import (
    DEBIAN_12,
    EPOCH,
    build_cli,
    build_recipe,
    recipe_dict,
    write_recipe_dict,
)

from pipeline.formats import elf as elfarch


def elf_header(machine: int, cls: int = 2, data: int = 1) -> bytes:
    ident = b"\x7fELF" + bytes([cls, data, 1]) + bytes(9)
    return ident + struct.pack("<HHI" if data == 1 else ">HHI", 3, machine, 1) + bytes(40)


def recipe(deb: Path) -> dict:
    return recipe_dict("elfy", kind="sysext", version="1",
                       target={**DEBIAN_12, "architecture": "x86-64"}, sources=[deb],
                       image={"format": "squashfs", "source_date_epoch": EPOCH})


def test_foreign_elf_files_are_named(tmp_path, cache_dir):
    require_tool("mksquashfs", "squashfs-tools")
    true = Path(shutil.which("true")).read_bytes()  # a real x86-64 binary: no warning
    deb = build_deb(tmp_path / "debs", "elfy", "1.0-1", [
        file("/usr/bin/elfy", true, 0o755),
        file("/usr/lib/elfy/plugin-arm64.so", elf_header(183), 0o644),
        file("/usr/lib/elfy/plugin-s390x.so", elf_header(22, data=2), 0o644),
        file("/usr/share/elfy/not-elf.txt", b"just text, longer than twenty bytes\n"),
    ])
    proc = build_recipe(tmp_path / "r", recipe(deb), cache_dir=cache_dir)
    [line] = [w for w in proc.json["warnings"] if "ELF" in w]
    assert "2 ELF file(s) not built for x86-64" in line
    assert "/usr/lib/elfy/plugin-arm64.so (aarch64 64-bit LE, from elfy" in line
    assert "/usr/lib/elfy/plugin-s390x.so (s390 64-bit BE" in line
    assert "/usr/bin/elfy" not in line and "not-elf" not in line


def test_a_package_of_another_architecture_is_an_error(tmp_path, cache_dir):
    deb = build_deb(tmp_path / "debs", "elfy", "1.0-1", [file("/usr/bin/x", b"x" * 30, 0o755)],
                    arch="arm64")
    proc = build_recipe(tmp_path / "r", recipe(deb), cache_dir=cache_dir, json_out=False,
                        expect=2)
    assert "built for arm64, but target.architecture is x86-64" in proc.stderr


def test_identify():
    assert elfarch.identify(elf_header(183)) == (2, 1, 183)
    assert elfarch.identify(b"\x7fELF" + bytes(10)) is None
    assert elfarch.identify(b"#!/bin/sh\n" * 3) is None


@pytest.mark.network
def test_arm64_build_on_x86_64(tmp_path, cache_dir):
    """The resolved debug-tools recipe for arm64: locked from the archive's arm64 indices,
    extracted in pure Python, ARCHITECTURE=arm64, every ELF file aarch64; rebuilt identically."""
    require_tool("mksquashfs", "squashfs-tools")
    spec = tomllib.loads((REPO / "recipes/debug-tools.toml").read_text())
    spec["target"].update(architecture="arm64", base=f"{REPO}/recipes/{spec['target']['base']}")
    for repository in spec["repository"]:
        repository["architectures"] = ["arm64"]
    path = write_recipe_dict(tmp_path / "r", spec, "debug-tools-arm64.toml")
    proc = run_cli("lock", str(path), "--cache-dir", str(cache_dir))
    assert proc.returncode == 0, proc.stderr
    outs = []
    for n in ("a", "b"):
        out = tmp_path / n
        proc = build_cli(path, out, cache_dir=cache_dir)
        assert not [w for w in proc.json["warnings"] if "ELF" in w]
        outs.append(out)
    manifest = json.loads((outs[0] / "debug-tools.manifest.json").read_text())
    assert manifest["extension_release"]["fields"]["ARCHITECTURE"] == "arm64"
    assert {p["architecture"] for p in manifest["inputs"]} <= {"arm64", "all"}
    assert (outs[0] / "debug-tools.raw").read_bytes() == (outs[1] / "debug-tools.raw").read_bytes()
    # the ELF files, read back from the image itself
    unpacked = tmp_path / "unpacked"
    require_tool("unsquashfs", "squashfs-tools")
    import subprocess

    subprocess.run(["unsquashfs", "-no-xattrs", "-d", str(unpacked),
                    str(outs[0] / "debug-tools.raw")], check=True, capture_output=True)
    kinds = set()
    for f in unpacked.rglob("*"):
        if f.is_file() and not f.is_symlink():
            with open(f, "rb") as fh:
                ident = elfarch.identify(fh.read(20))
            if ident is not None:
                kinds.add(ident)
    assert kinds == {(2, 1, 183)}  # aarch64, and there are ELF files (strace, jq, libraries)
