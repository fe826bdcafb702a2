"""``publish --compress xz|zstd``: feed files ``NAME_VERSION_ARCH.raw.xz`` / ``.raw.zst`` with
the same bytes on every publish, which the real systemd-sysupdate (254, 257, 262) downloads,
checks against the signed SHA256SUMS and decompresses into ``NAME_VERSION.raw``."""

from __future__ import annotations

import hashlib
import json
import lzma

import pytest
import pyzstd
import test_publish
from feed_kit import installed, publish, served_feed, sha256
from test_feed_install import install_feed, sysupdate, update_to_1_then_2

#: the release key and the images of versions 1-3 (module fixtures of tests/test_publish.py)
gpg_home, images = test_publish.gpg_home, test_publish.images
SUFFIX = {"xz": ".raw.xz", "zstd": ".raw.zst"}
OPEN = {"xz": lzma.open, "zstd": pyzstd.ZstdFile}


@pytest.mark.parametrize("codec", ["xz", "zstd"])
def test_compressed_feed_files_are_reproducible(codec, images, tmp_path):
    raw = images["1"].with_name("feedtool.raw")
    files = []
    for n in (1, 2):
        feed = tmp_path / f"feed{n}"
        proc = publish(feed, "http://updates.example.invalid/", images["1"],
                       extra=["--unsigned", "--compress", codec, "--json"])
        assert proc.returncode == 0, proc.stderr
        [entry] = json.loads(proc.stdout)["index"]["images"]
        assert entry["file"] == f"feedtool_1_x86-64{SUFFIX[codec]}"
        assert entry["compression"] == codec and entry["sha256"] == sha256(raw)
        path = feed / entry["file"]
        assert entry["file_sha256"] == sha256(path)
        with OPEN[codec](path, "rb") as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == sha256(raw)
        assert f"MatchPattern=feedtool_@v_x86-64{SUFFIX[codec]}\n" in \
            (feed / "sysupdate.d/feedtool.transfer").read_text()
        assert (feed / "feedtool_1_x86-64.spdx.json").is_file()
        files.append(path.read_bytes())
    assert files[0] == files[1]
    # a republish of the same version keeps the file; another suffix for the same extension
    # would need a second transfer file: refused, nothing written
    assert publish(tmp_path / "feed1", "http://updates.example.invalid/", images["1"],
                   extra=["--unsigned", "--compress", codec]).returncode == 0
    before = sorted(p.name for p in (tmp_path / "feed1").iterdir())
    proc = publish(tmp_path / "feed1", "http://updates.example.invalid/", images["2"],
                   extra=["--unsigned"])
    assert proc.returncode == 2 and "with the same --compress" in proc.stderr, proc.stderr
    assert sorted(p.name for p in (tmp_path / "feed1").iterdir()) == before


@pytest.mark.root
@pytest.mark.network
@pytest.mark.parametrize("codec", ["xz", "zstd"])
@pytest.mark.parametrize("version", [254, 257, 262])
def test_sysupdate_installs_compressed_feed(version, codec, images, gpg_home, tmp_path):
    with served_feed(tmp_path, gpg_home, images["1"], "--compress", codec) as (
            served, server, signed, root):
        proc = install_feed(server.url, root, version)
        if codec == "zstd" and version < 262:
            # refused, nothing written: this systemd-pull keeps the zstd bytes as the image
            assert proc.returncode == 2 and "without decompressing" in proc.stderr, proc.stderr
            assert not any(root.iterdir())
            # the reason, with the transfer set up by hand: the "image" is the download
            definitions = root / "etc/sysupdate.d"
            definitions.mkdir(parents=True)
            (root / "etc/systemd").mkdir()
            (root / "etc/systemd/import-pubring.gpg").write_bytes(
                (served / "import-pubring.gpg").read_bytes())
            for sub in ("extensions", "extensions.d"):
                (root / "var/lib" / sub).mkdir(parents=True)
            (definitions / "feedtool.conf").write_bytes(
                (served / "sysupdate.d/legacy/feedtool.conf").read_bytes())
            proc = sysupdate(version, root, tmp_path, "update", use_root=False)
            assert proc.returncode == 0, proc.stderr
            assert installed(root / "var/lib/extensions.d") == {
                "feedtool_1.raw": sha256(served / "feedtool_1_x86-64.raw.zst")}
            return
        assert proc.returncode == 0, proc.stderr
        update_to_1_then_2(version, root, tmp_path, images, lambda: publish(
            served, server.url, images["2"], extra=signed))
