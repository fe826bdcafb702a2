"""``publish`` / ``sign-feed``: a feed that the real systemd-sysupdate installs from with
``Verify=yes``, served on 127.0.0.1 by a local HTTP server.

systemd-sysupdate runs ``/usr/lib/systemd/systemd-pull`` by that fixed path and checks the
signature with the keyring at ``/etc/systemd/import-pubring.gpg`` — on the host, not under
``--root`` (checked here: nothing is read from the root's /etc/systemd). So each run happens in a
private mount namespace where ``/usr/lib/systemd`` holds a ``systemd-pull`` of the same version
and ``/etc/systemd`` the feed's public key. systemd 257 and 262 run with ``--root`` a scratch tree
and the feed's ``sysupdate.d/NAME.transfer`` (``NAME.raw.v/``); 254 (``sysupdate.d/legacy/
NAME.conf``, CurrentSymlink) runs on host paths, with the namespace's ``/var/lib`` a scratch
directory, because with ``--root`` 254–262 all follow an existing CurrentSymlink and turn the
previous version's file into a link instead of retargeting ``NAME.raw`` (seen here, and only
with ``--root``).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli
from feed_kit import installed, one_file_image, publish, run_sysupdate, served_feed, sha256
from prereq import require_tool


@pytest.fixture(scope="module")
def gpg_home(tmp_path_factory) -> Path:
    require_tool("gpg", "gnupg")
    home = tmp_path_factory.mktemp("gpg") / "home"
    proc = run_cli("keys", "generate", "--openpgp", str(home), "--subject", "Feed test")
    assert proc.returncode == 0, proc.stderr
    assert (home.stat().st_mode & 0o777) == 0o700
    return home


@pytest.fixture(scope="module")
def images(tmp_path_factory, cache_dir) -> dict[str, Path]:
    """The same extension built in versions 1, 2 and 3: {version: NAME.manifest.json}."""
    base = tmp_path_factory.mktemp("feed-images")
    return {version: one_file_image(base, cache_dir, "feedtool", path="/usr/bin/feedtool",
                                    content=f"#!/bin/sh\necho {version}\n".encode(),
                                    version=version, deb_version=f"{version}.0-1")
            for version in ("1", "2", "3")}


# --- the feed itself (no systemd needed) ----------------------------------------------------

def test_feed_layout_sums_and_signature(images, gpg_home, tmp_path):
    feed = tmp_path / "feed"
    proc = publish(feed, "http://updates.example.invalid/feed", images["1"],
                   extra=["--gnupghome", str(gpg_home), "--json"])
    assert proc.returncode == 0, proc.stderr
    index = json.loads(proc.stdout)["index"]  # the envelope (pipeline/commands/clikit.py) around it
    [entry] = index["images"]
    assert entry["file"] == "feedtool_1_x86-64.raw"
    raw = images["1"].with_name("feedtool.raw")
    assert sha256(feed / entry["file"]) == sha256(raw) == entry["sha256"]
    assert (feed / "feedtool_1_x86-64.spdx.json").is_file()
    assert (feed / "feedtool_1_x86-64.provenance.json").is_file()
    assert (feed / "feedtool_1_x86-64.cdx.json").is_file()
    listed = dict(reversed(line.split("  ")) for line in (feed / "SHA256SUMS").read_text()
                  .splitlines())
    assert set(listed) == {p.name for p in feed.iterdir() if p.is_file()} - {
        "SHA256SUMS", "SHA256SUMS.gpg"}
    assert all(sha256(feed / name) == digest for name, digest in listed.items())
    subprocess.run(["gpgv", "--homedir", str(tmp_path), "--keyring",
                    str(feed / "import-pubring.gpg"), str(feed / "SHA256SUMS.gpg"),
                    str(feed / "SHA256SUMS")], check=True, capture_output=True)
    transfer = (feed / "sysupdate.d/feedtool.transfer").read_text()
    assert "Verify=yes" in transfer and "MatchPattern=feedtool_@v_x86-64.raw" in transfer
    assert "Path=/var/lib/extensions/feedtool.raw.v/" in transfer
    assert json.loads((feed / "index.json").read_text())["images"] == index["images"]

    # a published version never changes
    proc = publish(feed, "http://updates.example.invalid/feed", images["2"],
                   extra=["--gnupghome", str(gpg_home)])
    assert proc.returncode == 0, proc.stderr
    os.rename(feed / "feedtool_2_x86-64.raw", tmp_path / "v2.raw")
    (feed / "feedtool_2_x86-64.raw").write_bytes(b"other bytes")
    proc = publish(feed, "http://updates.example.invalid/feed", images["2"],
                   extra=["--gnupghome", str(gpg_home)])
    assert proc.returncode == 2 and "already published with other bytes" in proc.stderr


def test_unsigned_then_sign_feed(images, gpg_home, tmp_path):
    feed = tmp_path / "feed"
    proc = publish(feed, "http://updates.example.invalid/", images["1"], extra=["--unsigned"])
    assert proc.returncode == 0, proc.stderr
    assert not (feed / "SHA256SUMS.gpg").exists()
    # signed elsewhere: a signature by another key is refused, nothing written
    other = tmp_path / "other"
    assert run_cli("keys", "generate", "--openpgp", str(other)).returncode == 0
    keyring = tmp_path / "release.gpg"
    keyring.write_bytes(subprocess.run(["gpg", "--homedir", str(gpg_home), "--export"],
                                       capture_output=True, check=True).stdout)
    for home in (other, gpg_home):
        sig = tmp_path / f"{home.name}.sig"
        subprocess.run(["gpg", "--homedir", str(home), "--batch", "--detach-sign", "--output",
                        str(sig), str(feed / "SHA256SUMS")], check=True, capture_output=True)
    proc = run_cli("sign-feed", str(feed), "--signature", str(tmp_path / "other.sig"),
                   "--keyring", str(keyring))
    assert proc.returncode == 2 and "does not verify" in proc.stderr, proc.stderr
    assert not (feed / "SHA256SUMS.gpg").exists()
    proc = run_cli("sign-feed", str(feed), "--signature", str(tmp_path / "home.sig"),
                   "--keyring", str(keyring))
    assert proc.returncode == 0, proc.stderr
    assert (feed / "SHA256SUMS.gpg").read_bytes() == (tmp_path / "home.sig").read_bytes()
    assert (feed / "import-pubring.gpg").read_bytes() == keyring.read_bytes()
    for home in (other, gpg_home):  # no gpg-agent left behind
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)


# --- the real systemd-sysupdate -------------------------------------------------------------

def sysupdate(version: int, feed: Path, work: Path, *args: str, root: Path | None = None,
              var_lib: Path | None = None) -> subprocess.CompletedProcess:
    """Run systemd-sysupdate ``version`` in a private mount namespace (see the module doc)."""
    etc = work / "etc-systemd"
    etc.mkdir(exist_ok=True)
    (etc / "import-pubring.gpg").write_bytes((feed / "import-pubring.gpg").read_bytes())
    return run_sysupdate(version, work, etc, *args, var_lib=var_lib,
                         where=[f"--root={root}"] if root is not None else [])


@pytest.mark.root
@pytest.mark.network
@pytest.mark.parametrize("version", [257, 262])
def test_sysupdate_installs_updates_vacuums_and_refuses_tampering(version, images, gpg_home,
                                                                  tmp_path):
    with served_feed(tmp_path, gpg_home, images["1"]) as (feed, server, signed, root):
        (root / "etc/sysupdate.d").mkdir(parents=True)
        (root / "etc/sysupdate.d/feedtool.transfer").write_bytes(
            (feed / "sysupdate.d/feedtool.transfer").read_bytes())
        target = root / "var/lib/extensions/feedtool.raw.v"
        raw = {v: sha256(m.with_name("feedtool.raw")) for v, m in images.items()}

        proc = sysupdate(version, feed, tmp_path, "update", root=root)
        assert proc.returncode == 0, proc.stderr
        assert installed(target) == {"feedtool_1.raw": raw["1"]}

        assert publish(feed, server.url, images["2"], extra=signed).returncode == 0
        proc = sysupdate(version, feed, tmp_path, "update", root=root)
        assert proc.returncode == 0, proc.stderr
        assert installed(target) == {"feedtool_1.raw": raw["1"], "feedtool_2.raw": raw["2"]}
        proc = sysupdate(version, feed, tmp_path, "list", root=root)
        assert proc.returncode == 0, proc.stderr
        rows = {}
        for line in proc.stdout.splitlines():
            shown = [t for t in line.split()[:2] if t in ("1", "2", "3")]
            if shown:
                rows[shown[0]] = line
        assert set(rows) == {"1", "2"} and "current" in rows["2"], proc.stdout

        assert publish(feed, server.url, images["3"], extra=signed).returncode == 0
        proc = sysupdate(version, feed, tmp_path, "update", root=root)
        assert proc.returncode == 0, proc.stderr
        assert installed(target) == {"feedtool_2.raw": raw["2"], "feedtool_3.raw": raw["3"]}

        # altered after signing: an image, then SHA256SUMS — refused, nothing installed
        fresh = tmp_path / "fresh"
        (fresh / "etc/sysupdate.d").mkdir(parents=True)
        (fresh / "etc/sysupdate.d/feedtool.transfer").write_bytes(
            (feed / "sysupdate.d/feedtool.transfer").read_bytes())
        with open(feed / "feedtool_3_x86-64.raw", "r+b") as fh:
            fh.seek(100)
            byte = fh.read(1)
            fh.seek(100)
            fh.write(bytes([byte[0] ^ 1]))
        proc = sysupdate(version, feed, tmp_path, "update", root=fresh)
        assert proc.returncode != 0
        assert installed(fresh / "var/lib/extensions/feedtool.raw.v") == {}
        sums = (feed / "SHA256SUMS").read_text()
        (feed / "SHA256SUMS").write_text(sums.replace(raw["3"], sha256(
            feed / "feedtool_3_x86-64.raw")))
        proc = sysupdate(version, feed, tmp_path, "update", root=fresh)
        assert proc.returncode != 0 and "ignature" in proc.stderr, proc.stderr
        assert installed(fresh / "var/lib/extensions/feedtool.raw.v") == {}


@pytest.mark.root
@pytest.mark.network
def test_sysupdate_254_legacy_transfer(images, gpg_home, tmp_path):
    """254's sysext has no NAME.raw.v/: the legacy transfer keeps a CurrentSymlink."""
    with served_feed(tmp_path, gpg_home, images["1"]) as (feed, server, signed, _root):
        definitions = tmp_path / "definitions"
        definitions.mkdir()
        var_lib = tmp_path / "var-lib"
        for sub in ("extensions", "extensions.d"):  # a host makes them (README)
            (var_lib / sub).mkdir(parents=True)
        raw = {v: sha256(m.with_name("feedtool.raw")) for v, m in images.items()}
        for number in ("1", "2"):
            if number == "2":
                assert publish(feed, server.url, images["2"], extra=signed).returncode == 0
            (definitions / "feedtool.conf").write_bytes(
                (feed / "sysupdate.d/legacy/feedtool.conf").read_bytes())
            proc = sysupdate(254, feed, tmp_path, f"--definitions={definitions}", "update",
                             var_lib=var_lib)
            assert proc.returncode == 0, proc.stderr
            link = var_lib / "extensions/feedtool.raw"
            assert os.readlink(link) == f"../extensions.d/feedtool_{number}.raw"
            assert sha256(link) == raw[number]
        assert installed(var_lib / "extensions.d") == {"feedtool_1.raw": raw["1"],
                                                       "feedtool_2.raw": raw["2"]}
