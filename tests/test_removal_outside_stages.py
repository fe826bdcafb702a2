"""The work a build does outside extraction, made cheaper for issue 14 (target 1): the same
results as the slower way."""

from __future__ import annotations

import ctypes.util

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
