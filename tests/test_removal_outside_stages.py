"""The work a build does outside extraction, made cheaper for issue 14 (target 1): the same
results as the slower way."""

from __future__ import annotations

import ctypes.util
import json
import subprocess
import sys

from pkgfactory import build_deb, file
from prereq import require_root
from recipes_kit import DEBIAN_12, EPOCH, REPO, build_recipe, cli_env, recipe_dict
from test_elfarch import elf_header

from pipeline.stages import manifest as mf


def test_library_versions_find_the_libraries_find_library_finds():
    """One ``ldconfig -p`` for all four libraries names the same ones as find_library's one
    per library, so the manifest's ``tools`` stay the same bytes."""
    sonames = mf._ldconfig_sonames(["zstd", "lzma", "lz4", "z", "no-such-library-here"])
    assert "no-such-library-here" not in sonames
    assert sonames, "ldconfig -p found none of the compression libraries"
    for name, soname in sonames.items():
        assert soname == ctypes.util.find_library(name)
    versions = mf.library_versions()
    assert set(versions) == {f"lib{name}" for name in ("zstd", "lzma", "lz4", "z")
                             if ctypes.util.find_library(name)}
    assert all(isinstance(v, str) and v[0].isdigit() for v in versions.values())


def test_the_build_modules_leave_erofs_and_library_probing_modules_out():
    """What only an erofs image (uuid, which imports platform; the sorted copy) or the
    library probe (ctypes, run once a build packs) needs is imported when used."""
    probe = ("import json, sys\n"
             "import pipeline.commands.cli, pipeline.commands.build, pipeline.stages.build\n"
             "import pipeline.sources.lock\n"
             "print(json.dumps(sorted(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=REPO, env=cli_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert "pipeline.stages.package" in loaded and "pipeline.stages.manifest" in loaded
    assert not loaded & {"ctypes", "platform", "uuid", "pipeline.stages.sorted_tree"}


def test_a_directory_image_gets_the_elf_architecture_warning_too(tmp_path, cache_dir):
    """The check after publishing read a directory image's files where staging had them (gone:
    the tree is the image, renamed into the output): every open failed and a foreign ELF file
    was never named. Now it reads the published tree, as squashfs builds read the staging."""
    require_root()
    deb = build_deb(tmp_path / "debs", "elfy", "1.0-1", [
        file("/usr/lib/elfy/plugin-arm64.so", elf_header(183), 0o644),
        file("/usr/share/elfy/not-elf.txt", b"just text, longer than twenty bytes\n")])
    spec = recipe_dict("elfy", kind="sysext", version="1",
                       target={**DEBIAN_12, "architecture": "x86-64"}, sources=[deb],
                       image={"format": "directory", "source_date_epoch": EPOCH})
    proc = build_recipe(tmp_path / "r", spec, cache_dir=cache_dir)
    assert proc.code == 0, proc.stderr
    [line] = [w for w in proc.json["warnings"] if "ELF" in w]
    assert "elfy: 1 ELF file(s) not built for x86-64: /usr/lib/elfy/plugin-arm64.so " \
        "(aarch64 64-bit LE, from elfy" in line
