"""The apt download path (``apt = "NAME"`` sources, fetched by ``apt-get download``) offline:
a local repository indexed with the real dpkg-scanpackages, its Release made by apt-ftparchive
and signed with a throw-away key, served on 127.0.0.1, and a private apt configuration
(``APT_CONFIG``: its own sources, keyring, lists, cache and status). The host's apt state is
never touched (checked)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import urllib.parse
from pathlib import Path

import pytest
from aptkit import private_apt as private_apt_config
from prereq import require_tool
from recipes_kit import build_cli, recipe_dict, write_recipe_dict

pytest_plugins = ["repos"]  # the key and package fixtures


@pytest.fixture
def private_apt(tmp_path, debs, gpg_keys):
    """A flat repository (``deb URL ./``) of the test packages and an apt configuration that
    reads only it; yields (APT_CONFIG path, server)."""
    from repos import Server  # a registered plugin by now
    for tool, package in (("dpkg-scanpackages", "dpkg-dev"), ("apt-ftparchive", "apt-utils"),
                          ("apt-get", "apt")):
        require_tool(tool, package)
    repo = tmp_path / "repo"
    repo.mkdir()
    for deb in debs["main"]:
        if deb.name.startswith(("tool_", "libtool1_", "tl-t_")):
            os.link(deb, repo / deb.name)
    packages = subprocess.run(["dpkg-scanpackages", "--multiversion", ".", "/dev/null"],
                              cwd=repo, capture_output=True, check=True).stdout
    (repo / "Packages").write_bytes(packages)
    release = subprocess.run(["apt-ftparchive", "-o", "APT::FTPArchive::Release::Suite=local",
                              "release", "."], cwd=repo, capture_output=True, check=True).stdout
    (repo / "Release").write_bytes(release)
    key = gpg_keys["good"]
    key.clearsign(repo / "Release", repo / "InRelease")
    server = Server(repo)

    env = private_apt_config(tmp_path / "apt", [f"deb [signed-by={key.keyring}] {server.url}/ ./"],
                             local=True)
    config = Path(env["APT_CONFIG"])
    yield config, server
    server.close()


def _host_apt_state() -> set[str]:
    """What of ours could land in the host's apt state: its lists of 127.0.0.1 sources and the
    test packages in its archive cache (names only, so that another process updating the host's
    lists meanwhile does not matter)."""
    found = set()
    for directory in (Path("/var/lib/apt/lists"), Path("/var/cache/apt/archives")):
        if directory.is_dir():
            found |= {p.name for p in directory.iterdir()
                      if p.name.startswith(("127.0.0.1", "tool_", "libtool1_", "tl-t_"))}
    return found


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_apt_sources_from_a_local_repository(tmp_path, private_apt, debs):
    config, server = private_apt
    by_name = {p.name: p for p in debs["main"]}
    tool, lib = by_name["tool_1.0_amd64.deb"], by_name["libtool1_1.0_amd64.deb"]
    rc = by_name["tl-t_1.0~rc1_amd64.deb"]
    spec = recipe_dict("aptlocal", sources=[
        {"apt": "tool", "version": "1.0", "sha256": _sha(tool)},
        {"apt": "libtool1", "version": "1.0", "sha256": _sha(lib)},
        {"apt": "tl-t", "version": "1.0~rc1", "sha256": _sha(rc)},
    ], image={"format": "directory"})
    recipe = write_recipe_dict(tmp_path / "r", spec)
    assert not _host_apt_state()
    env = {"APT_CONFIG": str(config)}
    built = build_cli(recipe, tmp_path / "out", cache_dir=tmp_path / "cache", env=env)
    tree = Path(built.image["image"])
    assert (tree / "usr/share/test/tool").read_text() == "tool 1.0\n"
    assert (tree / "usr/share/test/tl-t").read_text() == "tl-t 1.0~rc1\n"  # not 1.0: exact pin
    fetched = {urllib.parse.unquote(p).replace("/./", "/") for p in server.paths()
               if p.endswith(".deb")}
    assert fetched == {"/tool_1.0_amd64.deb", "/libtool1_1.0_amd64.deb",
                       "/tl-t_1.0~rc1_amd64.deb"}
    inputs = built.manifest()["inputs"]
    assert sorted(i["source"] for i in inputs) == ["apt:libtool1=1.0", "apt:tl-t=1.0~rc1",
                                                   "apt:tool=1.0"]
    assert not _host_apt_state()  # nothing of ours in the host's lists or cache

    # a second build: from the cache, apt not asked
    server.requests.clear()
    build_cli(recipe, tmp_path / "out2", cache_dir=tmp_path / "cache", env=env)
    assert server.paths() == []


def test_apt_version_not_in_the_repository(tmp_path, private_apt, debs):
    config, _ = private_apt
    spec = recipe_dict("aptgone", sources=[{"apt": "tool", "version": "0.9", "sha256": "0" * 64}],
                       image={"format": "directory"})
    recipe = write_recipe_dict(tmp_path / "r", spec)
    result = build_cli(recipe, tmp_path / "out", cache_dir=tmp_path / "cache", json_out=False,
                       expect=2, env={"APT_CONFIG": str(config)})
    [line] = result.error_lines()
    assert line.startswith("error: tool=0.9: apt-get download failed"), line
    assert "apt's archive has no such version" in line
    assert "pin the version `apt-cache policy tool` shows" in line and "sysext-pipeline lock" in line
    assert not (tmp_path / "out" / "aptgone").exists()


def test_apt_waits_are_bounded_by_timeout(tmp_path, private_apt, debs):
    """--timeout reaches apt-get (apt's own default is 30 s a try): a mirror that accepts and
    never answers fails the build in seconds, naming the package."""
    import time

    config, server = private_apt
    tool = {p.name: p for p in debs["main"]}["tool_1.0_amd64.deb"]
    spec = recipe_dict("aptslow", sources=[{"apt": "tool", "version": "1.0",
                                            "sha256": _sha(tool)}],
                       image={"format": "directory"})
    recipe = write_recipe_dict(tmp_path / "r", spec)
    server.delay = 120.0  # every request: accepted, then silence
    started = time.monotonic()
    result = build_cli(recipe, tmp_path / "out", "--timeout", "1", cache_dir=tmp_path / "cache",
                       json_out=False, expect=1, env={"APT_CONFIG": str(config)})
    took = time.monotonic() - started
    # ~15 s on an idle machine (apt's own retries and their pauses); apt's default timeout
    # (30 s a try, four tries) would take 120 s and more, so 60 s tells them apart with room
    # for a loaded machine (25 s did not leave much)
    assert took < 60, f"apt waited {took:.0f} s with --timeout 1"
    [line] = result.error_lines()
    assert line.startswith("error: tool=1.0: apt-get download failed"), line
