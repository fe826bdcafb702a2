"""``publish --features``: every extension of the feed is also a systemd-sysupdate optional
feature (``sysupdate.d/NAME.feature``, ``Features=NAME`` in its ``.transfer``), which the real
systemd-sysupdate 257 and 262 list, update while it is enabled, and uninstall once a host
disables it with a drop-in — when another, enabled transfer is defined: a disabled feature
whose transfer is the only one makes sysupdate say "No transfer definitions found" (exit 1) and
leave the installed versions. 254's legacy ``.conf`` has no ``Features=`` (it knows none)."""

from __future__ import annotations

import pytest
import test_publish
from feed_kit import installed, publish, served_feed, sha256
from test_feed_install import install_feed, sysupdate

#: the release key and the images of versions 1-3 (module fixtures of tests/test_publish.py)
gpg_home, images = test_publish.gpg_home, test_publish.images


def test_feature_files(images, tmp_path):
    feed = tmp_path / "feed"
    proc = publish(feed, "http://updates.example.invalid/", images["1"],
                   extra=["--unsigned", "--features"])
    assert proc.returncode == 0, proc.stderr
    text = (feed / "sysupdate.d/feedtool.feature").read_text()
    assert "[Feature]\n" in text and "Enabled=true\n" in text
    assert "Features=feedtool\n" in (feed / "sysupdate.d/feedtool.transfer").read_text()
    assert "Features=" not in (feed / "sysupdate.d/legacy/feedtool.conf").read_text()
    # published again without --features: the feature goes, from the feed and from install
    assert publish(feed, "http://updates.example.invalid/", images["1"],
                   extra=["--unsigned"]).returncode == 0
    assert not (feed / "sysupdate.d/feedtool.feature").exists()
    assert "Features=" not in (feed / "sysupdate.d/feedtool.transfer").read_text()


@pytest.mark.root
@pytest.mark.network
@pytest.mark.parametrize("version", [257, 262])
def test_sysupdate_feature_enabled_then_disabled(version, images, gpg_home, tmp_path):
    with served_feed(tmp_path, gpg_home, images["1"], "--features") as (served, server, signed,
                                                                         root):
        proc = install_feed(server.url, root, version)
        assert proc.returncode == 0, proc.stderr
        definitions = root / "etc/sysupdate.d"
        assert (definitions / "feedtool.feature").read_bytes() == \
            (served / "sysupdate.d/feedtool.feature").read_bytes()
        target = root / "var/lib/extensions/feedtool.raw.v"
        proc = sysupdate(version, root, tmp_path, "features")
        assert proc.returncode == 0 and "feedtool" in proc.stdout, proc.stdout + proc.stderr
        proc = sysupdate(version, root, tmp_path, "update")
        assert proc.returncode == 0, proc.stderr
        raw1 = sha256(images["1"].with_name("feedtool.raw"))
        assert installed(target) == {"feedtool_1.raw": raw1}

        # the host turns the extension off: alone in sysupdate.d, nothing is left to run (and
        # what is installed stays: uninstall it); next to an enabled transfer, its versions go
        # and version 2 is not fetched for it
        dropin = definitions / "feedtool.feature.d"
        dropin.mkdir()
        (dropin / "off.conf").write_text("[Feature]\nEnabled=false\n")
        assert publish(served, server.url, images["2"], extra=signed).returncode == 0
        proc = sysupdate(version, root, tmp_path, "update")
        assert proc.returncode != 0 and "No transfer definitions found" in proc.stderr, \
            proc.stderr
        assert installed(target) == {"feedtool_1.raw": raw1}
        (definitions / "other.transfer").write_text(  # another extension's, enabled
            (definitions / "feedtool.transfer").read_text().replace("Features=feedtool\n", "")
            .replace("feedtool.raw.v", "other.raw.v"))
        proc = sysupdate(version, root, tmp_path, "update")
        assert proc.returncode == 0, proc.stderr
        assert installed(target) == {}, proc.stderr
        assert installed(root / "var/lib/extensions/other.raw.v") == {
            "feedtool_2.raw": sha256(images["2"].with_name("feedtool.raw"))}


def test_install_feed_writes_the_feature_only_where_read(images, gpg_home, tmp_path):
    feed = tmp_path / "feed"
    assert publish(feed, "http://updates.example.invalid/", images["1"],
                   extra=["--gnupghome", str(gpg_home), "--features"]).returncode == 0
    root = tmp_path / "root"
    root.mkdir()
    definitions = root / "etc/sysupdate.d"
    proc = install_feed(feed, root, 257)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in definitions.iterdir()) == ["feedtool.feature",
                                                             "feedtool.transfer"]
    proc = install_feed(feed, root, 256)  # 256's sysupdate reads *.conf and no features
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in definitions.iterdir()) == ["feedtool.conf"]
    assert "Features=" not in (definitions / "feedtool.conf").read_text()
