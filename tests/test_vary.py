"""``verify --vary all``: every variation must reproduce, for every format.

One varied rebuild table per format (computed once), then one test per (format, variation) so a
failure names exactly which environment change makes which format differ. Variations that cannot
run here are skipped with the variation's own reason locally; under CI=true they fail.

The ``user`` variation (a rebuild as nobody) runs on its own payload: the shared recipe's rpm
carries a file capability and a ``daemon`` owner, which only a root build can write (a build as
nobody refuses them, and ``verify --vary`` says so: tests/test_vary_select.py), so it rebuilds the
root-owned deb alone. A directory image built as nobody is refused too (its owners are on
disk): that row is skipped by design, with the reason.
"""

from __future__ import annotations

import json

import pytest
from conftest import run_cli
from prereq import missing, require_tool
from recipes_kit import hello_recipe, toml_text
from verify_helpers import build, project, signer_files

from pipeline.reproduce.vary import NAMES

FORMATS = ("squashfs", "erofs", "directory", "ddi")

#: (format, variation) → words of the reason its row is skipped by design (not a missing tool).
BY_DESIGN = {
    ("directory", "user"): "a build as nobody is refused by design: a directory image holds "
                           "its owners on disk",
}


@pytest.fixture(scope="module")
def tables(packages, unprivileged):
    """Everything a variation reads lives under a world-readable directory, and verify runs
    from the world-readable interpreter and copy of the project: the ``user`` variation's
    rebuild as nobody needs them, wherever the checkout and this interpreter live."""
    made: dict[tuple[str, str], dict] = {}
    shared = unprivileged.make_workdir(mode=0o755)
    cache = shared / "cache"

    def table(fmt: str, variation: str) -> dict:
        """``user``: that variation alone, on the deb (root-owned, no capability); any other:
        every variation but ``user`` (reprotest's ``all,-user``) on the shared recipe."""
        which = "user" if variation == "user" else "all,-user"
        if (fmt, which) not in made:
            root = shared / f"vary-{fmt}-{which.replace(',', '')}"
            root.mkdir()
            sign = None
            if fmt == "ddi":
                require_tool("systemd-repart", "systemd-repart")
                sign = "release"
                signer_files(root / "proj", sign, "vary test")
            recipe = project(root / "proj", packages, fmt, sign=sign)
            if which == "user":
                signing = {"sign": {"key": f"{sign}.key", "cert": f"{sign}.crt"}} if sign else {}
                recipe.write_text(toml_text(hello_recipe(fmt, sources=["pkgs/hello-tools.deb"],
                                                         **signing)))
            image = build(recipe, root / "proj" / "out", cache)
            proc = unprivileged.run_cli(None, "verify", str(image.manifest_path), "--cache-dir",
                                        str(cache), f"--vary={which}", "--json", "--work-dir",
                                        str(root), cwd=root / "proj")
            assert proc.returncode in (0, 3), proc.stderr
            made[fmt, which] = json.loads(proc.stdout)
        return made[fmt, which]

    return table


def _applies(fmt: str, variation: str) -> bool:
    """Thread counts exist only for mksquashfs (mkfs.erofs 1.5 has none; a directory image and
    the erofs DDI here run no squashfs packer): those pairs are not tests, not skips."""
    return not (variation.startswith("threads") and fmt != "squashfs")


@pytest.mark.parametrize("fmt, variation",
                         [(f, v) for f in FORMATS for v in NAMES if _applies(f, v)])
def test_variation_reproduces(tables, fmt, variation):
    result = tables(fmt, variation)
    assert result["status"] == "reproduced", result["diff"]
    [row] = [r for r in result["variations"] if r["name"] == variation]
    by_design = BY_DESIGN.get((fmt, variation))
    if by_design:
        assert row["status"] == "skipped" and by_design in row["detail"], row
        return
    if row["status"] == "skipped":  # locally a skip with the reason; under CI a failure
        missing(f"{variation}: {row['detail']}")
    assert row["status"] == "reproduced", f"{variation} ({row['what']}): {row['detail']}"


@pytest.mark.parametrize("fmt", ["squashfs"])
def test_excluded_variation_does_not_run(tables, fmt):
    """``--vary=all,-user`` (reprotest's syntax) runs every variation but user, in table
    order."""
    rows = [r["name"] for r in tables(fmt, "tz")["variations"]]
    assert rows == [n for n in NAMES if n != "user"]


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
