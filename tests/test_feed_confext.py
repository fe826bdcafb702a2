"""A confext feed: its transfer targets ``/var/lib/confexts`` (``NAME.raw.v/`` for systemd
≥ 257, ``/var/lib/confexts.d`` and a ``NAME.raw`` link before), where the real systemd-sysupdate
262 and 254 install it after ``install --feed``."""

from __future__ import annotations

import os

import pytest
import test_publish
from feed_kit import installed, one_file_image, publish, served_feed, sha256
from test_feed_install import install_feed, sysupdate

gpg_home = test_publish.gpg_home  # the release key (a module fixture of tests/test_publish.py)


@pytest.fixture(scope="module")
def confext(tmp_path_factory, cache_dir):
    return one_file_image(tmp_path_factory.mktemp("confext"), cache_dir, "feedconf",
                          kind="confext", path="/etc/feedconf/settings.conf",
                          content=b"level = 1\n", mode=0o644, deb_arch="all")


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
    with served_feed(tmp_path, gpg_home, confext) as (_feed, server, _signed, root):
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
