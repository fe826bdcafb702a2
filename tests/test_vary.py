"""``verify --vary all``: every variation must reproduce, for every format.

One varied rebuild table per format (computed once), then one test per (format, variation) so a
failure names exactly which environment change makes which format differ. Variations that cannot
run here are skipped with the variation's own reason locally; under CI=true they fail.
Known build bugs are strict xfails: fixing the build turns them into failures to remove.
"""

from __future__ import annotations

import json

import pytest
from conftest import run_cli
from prereq import missing, require_tool
from verify_helpers import build, project, signer_files

from pipeline.reproduce.vary import NAMES

FORMATS = ("squashfs", "erofs", "directory", "ddi")

#: (format or "*", variation) → the bug, reported to the build's owner; strict: a fix fails here.
KNOWN_BUGS = {
    ("*", "user"): "a build as another (non-root) user refuses the test rpm's file capability "
                   "(security.capability), and a directory image gets the builder's owners "
                   "while its manifest says root",
}


@pytest.fixture(scope="module")
def tables(packages, unprivileged):
    """Everything a variation reads lives under a world-readable directory, and verify runs
    from the world-readable interpreter and copy of the project: the ``user`` variation's
    rebuild as nobody needs them, wherever the checkout and this interpreter live."""
    made: dict[str, dict] = {}
    shared = unprivileged.make_workdir(mode=0o755)
    cache = shared / "cache"

    def table(fmt: str) -> dict:
        if fmt not in made:
            root = shared / f"vary-{fmt}"
            root.mkdir()
            sign = None
            if fmt == "ddi":
                require_tool("systemd-repart", "systemd-repart")
                sign = "release"
                signer_files(root / "proj", sign, "vary test")
            recipe = project(root / "proj", packages, fmt, sign=sign)
            image = build(recipe, root / "proj" / "out", cache)
            proc = unprivileged.run_cli(None, "verify", str(image.manifest_path), "--cache-dir",
                                        str(cache), "--vary", "all", "--json", "--work-dir",
                                        str(root), cwd=root / "proj")
            assert proc.returncode in (0, 3), proc.stderr
            made[fmt] = json.loads(proc.stdout)
        return made[fmt]

    return table


def _applies(fmt: str, variation: str) -> bool:
    """Thread counts exist only for mksquashfs (mkfs.erofs 1.5 has none; a directory image and
    the erofs DDI here run no squashfs packer): those pairs are not tests, not skips."""
    return not (variation.startswith("threads") and fmt != "squashfs")


@pytest.mark.parametrize("fmt, variation",
                         [(f, v) for f in FORMATS for v in NAMES if _applies(f, v)])
def test_variation_reproduces(tables, request, fmt, variation):
    result = tables(fmt)
    assert result["status"] == "reproduced", result["diff"]
    [row] = [r for r in result["variations"] if r["name"] == variation]
    if row["status"] == "skipped":  # locally a skip with the reason; under CI a failure
        missing(f"{variation}: {row['detail']}")
    bug = KNOWN_BUGS.get((fmt, variation)) or KNOWN_BUGS.get(("*", variation))
    if bug:
        request.applymarker(pytest.mark.xfail(reason=bug, strict=True))
    assert row["status"] == "reproduced", f"{variation} ({row['what']}): {row['detail']}"


def test_table_in_text(tmp_path, packages, cache_dir):
    recipe = project(tmp_path / "proj", packages, "directory")
    image = build(recipe, tmp_path / "proj" / "out", cache_dir)
    proc = run_cli("verify", str(image.manifest_path), "--cache-dir", str(cache_dir), "-q",
                   "--vary", "tz,umask", "--vary", "threads-1", cwd=tmp_path / "proj")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("reproduced: hello")
    # the table follows verify's own lines (signature, provenance, ...)
    head = next(i for i, line in enumerate(lines)
                if line.split() == ["variation", "result", "detail"])
    assert [line.split()[:2] for line in lines[head + 1:head + 4]] == [
        ["tz", "reproduced"], ["umask", "reproduced"], ["threads-1", "skipped"]]
    assert "no packing tool" in lines[head + 3]
    assert lines[head + 4] == "2 reproduced, 1 skipped"


def test_unknown_variation_is_bad_input(tmp_path):
    proc = run_cli("verify", str(tmp_path / "x.manifest.json"), "--vary", "moon-phase")
    assert proc.returncode == 2 and "unknown variation moon-phase" in proc.stderr
