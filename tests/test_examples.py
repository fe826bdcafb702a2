"""The shipped example recipes, built for real (the default one through the host's apt)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_cli
from merge import in_namespace
from prereq import require_tool


@pytest.fixture(scope="session")
def apt_cache(tmp_path_factory) -> Path:
    """The session's package cache (never the invoking user's home)."""
    return tmp_path_factory.mktemp("apt-cache")


@pytest.mark.network
@pytest.mark.root
def test_default_recipe_builds_reproducibly_and_runs(tmp_path, apt_cache):
    require_tool("mksquashfs", "squashfs-tools")
    results = []
    for n in range(2):
        proc = run_cli("build", str(REPO / "recipes/debug-tools.toml"), "-o",
                       str(tmp_path / f"out{n}"), "--cache-dir", str(apt_cache), "--json",
                       umask=0o002 if n else 0o022, env={"TZ": "Asia/Kolkata" if n else "UTC"})
        # A failure is the build's own one-line message, never a skip: a locked version the
        # archive no longer has (a point release) names `lock --update NAME` and a snapshot.
        assert proc.returncode == 0, proc.stderr
        assert not proc.error_lines()
        built = json.loads(proc.stdout)
        assert not built["warnings"], built["warnings"]  # the example builds clean
        [image] = built["images"]
        results.append(image)
    assert results[0]["sha256"] == results[1]["sha256"]
    image = Path(results[0]["image"])
    # Merge over the real /usr in a private namespace: the tools must run from the overlay.
    proc = in_namespace(f"mkdir -p /run/extensions && cp {image} /run/extensions/ && "
                        "systemd-sysext merge && tcpdump --version && strace -V && "
                        "systemd-sysusers --dry-run 2>&1 | grep -q tcpdump && "
                        "echo '{\"a\": 42}' | jq .a && ls /usr/lib/extension-release.d")
    assert proc.returncode == 0, proc.stderr
    assert "tcpdump version 4.99" in proc.stdout and "strace -- version 6.1" in proc.stdout
    assert "\n42\n" in proc.stdout and "extension-release.debug-tools" in proc.stdout


def test_default_example_names_packages_and_its_locks_pin_them():
    """The quick start's recipe names packages, not versions (nothing in it for a point
    release to break); its committed lock pins each file by version and sha256, and the DDI
    variant (which includes it) has its own lock with the same packages. No network."""
    from pipeline import recipe as recipe_mod
    from pipeline.sources import kinds
    from pipeline.sources.lock import check_fresh, read_lock

    recipe = recipe_mod.load(REPO / "recipes/debug-tools.toml")
    assert recipe.sources and all(kinds.of(s).resolved for s in recipe.sources)
    assert all(r.url == "host" for r in recipe.repositories)  # no mirror in the repository
    locks = []
    for name in ("debug-tools", "debug-tools-ddi"):
        each = recipe_mod.load(REPO / f"recipes/{name}.toml")
        data = read_lock(each)
        check_fresh(each, data)
        locks.append(data["package"])
    assert locks[0] == locks[1]
    assert {p["name"] for p in locks[0]} >= {"strace", "jq", "tcpdump"}
    assert all(len(p["sha256"]) == 64 and p["version"] for p in locks[0])


def test_confext_example(tmp_path, cache_dir):
    require_tool("unsquashfs", "squashfs-tools")
    proc = run_cli("build", str(REPO / "recipes/debug-config.toml"), "-o", str(tmp_path),
                   "--cache-dir", str(cache_dir), "--json")
    assert proc.returncode == 0, proc.stderr
    [result] = json.loads(proc.stdout)["images"]
    listing = subprocess.run(["unsquashfs", "-lln", "-d", "", result["image"]],
                             capture_output=True, text=True, check=True).stdout
    paths = {line.split()[-1] for line in listing.splitlines()}
    assert "/etc/extension-release.d/extension-release.debug-config" in paths
    assert "/etc/systemd/journald.conf.d/90-debug.conf" in paths
    assert not any(p.startswith("/usr") for p in paths)
    assert result["extension_release"] == {"ID": "debian", "VERSION_ID": "12",
                                           "CONFEXT_LEVEL": "1", "CONFEXT_ID": "debug-config",
                                           "CONFEXT_VERSION_ID": "1.0.0"}


@pytest.mark.network
def test_the_quick_bench_runs_on_the_default_recipe(apt_cache):
    """``nox -s bench -- --quick`` (the 9-package comparison) still runs: it broke unnoticed
    when the default recipe moved to a lock (its packages come through expand_sources)."""
    require_tool("mksquashfs", "squashfs-tools")
    require_tool("dpkg-deb", "dpkg")
    proc = subprocess.run([sys.executable, str(REPO / "tests/bench.py"), "--quick", "--rounds",
                           "1", "--cache-dir", str(apt_cache)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ratio pipeline/baseline: time" in proc.stdout, proc.stdout
