"""A confext feed: its transfer targets ``/var/lib/confexts`` (``NAME.raw.v/`` for systemd
≥ 257, ``/var/lib/confexts.d`` and a ``NAME.raw`` link before), where the real systemd-sysupdate
262 and 254 install it after ``install --feed``."""

from __future__ import annotations

import os

import pytest
import test_publish
from conftest import run_cli, write_recipe
from pkgfactory import build_deb, file
from prereq import require_root, require_tool
from test_feed_install import install_feed, sysupdate
from test_publish import Server, installed, publish, sha256

gpg_home = test_publish.gpg_home  # the release key (a module fixture of tests/test_publish.py)


@pytest.fixture(scope="module")
def confext(tmp_path_factory, cache_dir):
    require_tool("mksquashfs", "squashfs-tools")
    base = tmp_path_factory.mktemp("confext")
    deb = build_deb(base / "debs", "feedconf", "1.0-1",
                    [file("/etc/feedconf/settings.conf", b"level = 1\n", 0o644)], arch="all")
    recipe = write_recipe(base / "r", f"""
[extension]
name = "feedconf"
kind = "confext"
version = "1"
[target]
id = "debian"
version_id = "12"
architecture = "x86-64"
[[source]]
deb = "{deb}"
[image]
format = "squashfs"
source_date_epoch = 1700000000
""")
    proc = run_cli("build", str(recipe), "-o", str(base / "out"), "--cache-dir", str(cache_dir))
    assert proc.returncode == 0, proc.stderr
    return base / "out/feedconf.manifest.json"


def test_confext_transfers(confext, tmp_path):
    feed = tmp_path / "feed"
    assert publish(feed, "http://updates.example.invalid/", confext,
                   extra=["--unsigned"]).returncode == 0
    assert "Path=/var/lib/confexts/feedconf.raw.v/\n" in \
        (feed / "sysupdate.d/feedconf.transfer").read_text()
    legacy = (feed / "sysupdate.d/legacy/feedconf.conf").read_text()
    assert "Path=/var/lib/confexts.d/\n" in legacy
    assert "CurrentSymlink=/var/lib/confexts/feedconf.raw\n" in legacy


@pytest.mark.root
@pytest.mark.network
@pytest.mark.parametrize("version", [254, 262])
def test_sysupdate_installs_a_confext_feed(version, confext, gpg_home, tmp_path):
    require_root()
    require_tool("unshare", "util-linux")
    served = tmp_path / "served"
    served.mkdir()
    server = Server(served)
    try:
        assert publish(served, server.url, confext,
                       extra=["--gnupghome", str(gpg_home)]).returncode == 0
        root = tmp_path / "root"
        root.mkdir()
        proc = install_feed(server.url, root, version)
        assert proc.returncode == 0, proc.stderr
        legacy = version < 257
        proc = sysupdate(version, root, tmp_path, "update", use_root=not legacy)
        assert proc.returncode == 0, proc.stderr
        raw = sha256(confext.with_name("feedconf.raw"))
        if legacy:
            assert installed(root / "var/lib/confexts.d") == {"feedconf_1.raw": raw}
            assert os.readlink(root / "var/lib/confexts/feedconf.raw") == \
                "../confexts.d/feedconf_1.raw"
        else:
            assert installed(root / "var/lib/confexts/feedconf.raw.v") == {"feedconf_1.raw": raw}
    finally:
        server.close()
