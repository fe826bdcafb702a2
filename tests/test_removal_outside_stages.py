"""The work a build does outside extraction, made cheaper for issue 14 (target 1): the same
results as the slower way."""

from __future__ import annotations

import ctypes.util
import json
import subprocess
import sys

from recipes_kit import REPO, cli_env

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
