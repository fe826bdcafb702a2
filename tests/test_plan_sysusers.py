"""plan and build agree on a package that makes its system user in its postinst and ships the
sysusers.d line for it (left over in the closing note of issues 14-16: plan read only the
sysusers.d files of [files], so it warned maintainer-script-users where build did not). plan
keeps a package's sysusers.d files in its file list (commands/plan.py SYSUSERS), so the first
plan (reading the package) and the next (replaying the list) say what build says."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli
from pkgfactory import build_deb, file
from prereq import require_tool
from recipes_kit import EPOCH, build_recipe, recipe_dict, write_recipe_dict

POSTINST = """#!/bin/sh
set -e
if ! getent passwd pcapd >/dev/null; then
    adduser --system --quiet --group --no-create-home --home /nonexistent pcapd
fi
"""
SYSUSERS = "# made by the postinst on a real install\nu pcapd - - /nonexistent\n"
USER_WARNINGS = {"maintainer-scripts", "maintainer-script-users"}


def _deb(directory: Path, *, sysusers: bool) -> Path:
    """pcapd 1.0, built by dpkg-deb: a postinst that adds the system user pcapd and, with
    ``sysusers``, usr/lib/sysusers.d/pcapd.conf defining it."""
    require_tool("dpkg-deb", "dpkg")
    files = [file("/usr/sbin/pcapd", b"#!/bin/sh\necho pcapd\n", 0o755)]
    if sysusers:
        files.append(file("/usr/lib/sysusers.d/pcapd.conf", SYSUSERS.encode()))
    return build_deb(directory, "pcapd", "1.0", files, scripts={"postinst": POSTINST})


def _plan_codes(recipe: Path, cache: Path) -> set[str]:
    proc = run_cli("plan", str(recipe), "--json", "--cache-dir", str(cache))
    assert proc.code == 0, proc.stderr
    return {w["code"] for image in json.loads(proc.stdout)["images"] for w in image["warnings"]}


def _build_codes(directory: Path, spec: dict) -> set[str]:
    result = build_recipe(directory, spec)
    return {w["code"] for image in json.loads(result.stdout)["images"]
            for w in image["warnings"]}


def test_plan_reads_a_packages_own_sysusers_file_as_build_does(tmp_path):
    for ships in (True, False):
        work = tmp_path / ("ships" if ships else "bare")
        deb = _deb(work, sysusers=ships)
        spec = recipe_dict("pcap", kind="sysext", sources=[deb],
                           image={"format": "directory", "source_date_epoch": EPOCH})
        recipe = write_recipe_dict(work / "recipe", spec)
        built = _build_codes(work / "build", spec) & USER_WARNINGS
        first = _plan_codes(recipe, work / "cache") & USER_WARNINGS  # reads the package
        again = _plan_codes(recipe, work / "cache") & USER_WARNINGS  # replays its list
        expected = set() if ships else {"maintainer-script-users"}
        assert (built, first, again) == (expected, expected, expected), ships


def test_a_wrong_kept_file_means_reading_the_package_again(tmp_path):
    """The kept content is hostile input like the rest of a list: an index that is not a
    sysusers.d file of the list, a length other than the entry's size, or not hex, and the
    package is decompressed as before (the same plan) and its list written anew."""
    import hashlib

    from pipeline.commands.plan import LISTING_VERSION

    deb = _deb(tmp_path, sysusers=True)
    spec = recipe_dict("pcap", kind="sysext", sources=[deb],
                       image={"format": "directory", "source_date_epoch": EPOCH})
    recipe, cache = write_recipe_dict(tmp_path / "recipe", spec), tmp_path / "cache"
    first = run_cli("plan", str(recipe), "--json", "--cache-dir", str(cache)).stdout
    sha = hashlib.sha256(deb.read_bytes()).hexdigest()
    listing = cache / "lists" / sha[:2] / f"{sha}.v{LISTING_VERSION}.json"
    good = json.loads(listing.read_bytes())
    [(index, content)] = good["kept"].items()
    assert good["entries"][int(index)][0] == "./usr/lib/sysusers.d/pcapd.conf"
    assert bytes.fromhex(content) == SYSUSERS.encode()
    other = next(str(i) for i, row in enumerate(good["entries"]) if row[0].endswith("/pcapd"))
    for kept in ({other: content}, {index: content[:-2]}, {index: "zz" * len(SYSUSERS)},
                 {str(len(good["entries"])): content}, {index: 7}, []):
        listing.write_text(json.dumps({**good, "kept": kept}))
        again = run_cli("plan", str(recipe), "--json", "--cache-dir", str(cache))
        assert again.code == 0 and again.stdout == first, kept
        assert json.loads(listing.read_bytes()) == good, kept
