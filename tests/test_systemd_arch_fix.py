"""issue 16 §4: the wrong-architecture fix looks at what the image carries.

An image full of x86-64 ELF files on an arm64 host must be rebuilt for arm64 (``ARCHITECTURE=_any``
would merge binaries the host cannot run); ``_any`` is the fix only for a payload without ELF
files. Real squashfs images, a real ELF binary (the host's /bin/true), the real ``check`` CLI.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli
from test_ddi import make_squashfs, need_tools

from pipeline.host import images
from pipeline.systemd import rules

HOST = rules.HostFacts({"ID": "debian", "VERSION_ID": "12"}, "arm64", (257, 0))


def _image(tmp_path: Path, name: str, binary: bool) -> Path:
    need_tools()
    src = tmp_path / name
    release = src / "usr/lib/extension-release.d"
    release.mkdir(parents=True)
    (release / f"extension-release.{name}").write_text(
        "ID=debian\nVERSION_ID=12\nARCHITECTURE=x86-64\n")
    (src / "usr/bin").mkdir()
    if binary:
        shutil.copy(Path(shutil.which("true")).resolve(), src / "usr/bin/tool")
    (src / "usr/share/doc").mkdir(parents=True)
    (src / "usr/share/doc/README").write_text("plain text, no machine code\n")
    return make_squashfs(src, tmp_path / f"{name}.raw")


def _check(image: Path, tmp_path: Path) -> dict:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/os-release").write_text("ID=debian\nVERSION_ID=12\n")
    proc = run_cli("check", str(image), "--root", str(root), "--systemd", "257", "--arch",
                   "arm64", "--json")
    assert "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)["images"][0]


def test_x86_64_binaries_on_arm64_are_rebuilt_not_made_any(tmp_path):
    if Path(shutil.which("true")).resolve().read_bytes()[18:20] != b"\x3e\x00":
        pytest.fail("this test needs an x86-64 /bin/true (the host's binary)")
    verdict = _check(_image(tmp_path, "tool", binary=True), tmp_path)
    assert (verdict["verdict"], verdict["rule"]) == ("ignored", "match.architecture")
    assert verdict["fix"].startswith('rebuild it for arm64 (build: target.architecture = "arm64"')
    assert "its ELF files are for x86-64" in verdict["fix"]
    assert "ARCHITECTURE=_any would merge them anyway" in verdict["fix"]


def test_a_payload_without_elf_files_may_be_any(tmp_path):
    verdict = _check(_image(tmp_path, "docs", binary=False), tmp_path)
    assert verdict["rule"] == "match.architecture"
    assert verdict["fix"].startswith('set ARCHITECTURE=_any (build: target.architecture = "_any")')


def test_the_image_reader_finds_the_elf_architectures(tmp_path):
    with_binary = images.read(_image(tmp_path, "tool", binary=True), architecture="arm64")
    assert with_binary.facts.elf_architectures == ("x86-64",)
    without = images.read(_image(tmp_path, "docs", binary=False), architecture="arm64")
    assert without.facts.elf_architectures == ()
    # the host's own architecture: nothing to fix, so nothing is scanned
    assert images.read(tmp_path / "tool.raw", architecture="x86-64").facts \
        .elf_architectures is None


@pytest.mark.parametrize("elf, start", [
    (("x86-64",), "rebuild it for arm64"),
    ((), "set ARCHITECTURE=_any"),
    (("arm64",), "set ARCHITECTURE=arm64: its ELF files are for arm64"),
    (None, "rebuild it for arm64 when it carries binaries"),
])
def test_the_model_picks_the_fix_from_the_facts(elf, start):
    facts = rules.ImageFacts("tool.raw", False, {"sysext": {"tool": rules.ReleaseFile(
        "tool", {"ID": "debian", "VERSION_ID": "12", "ARCHITECTURE": "x86-64"})}},
        elf_architectures=elf)
    verdict = rules.evaluate(facts, HOST, "sysext")
    assert verdict.rule.id == "match.architecture" and verdict.fix.startswith(start)
