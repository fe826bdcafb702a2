"""``install --feed``: a host (here a --root tree) set up for a feed, then updated by the real
systemd-sysupdate from it.

The first tests need no systemd: what install writes for each systemd version, that a second
run changes nothing, that moving to another layout removes the other file, and that a feed
altered after signing is refused with nothing written. The end-to-end tests serve the feed on
127.0.0.1 and run systemd-sysupdate 254, 257 and 262 in a private mount namespace whose
``/etc/systemd`` is the tree's own (so the keyring used is the one install put there; sysupdate
reads that host path even with --root, see tests/test_publish.py).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import jsonschema
import pytest
import systemd_versions
import test_publish
from conftest import run_cli
from feed_kit import installed, publish, run_sysupdate, served_feed, sha256
from prereq import missing, require_tool

#: the release key and the images of versions 1-3 (module fixtures of tests/test_publish.py)
gpg_home, images = test_publish.gpg_home, test_publish.images

def install_feed(feed: str | Path, root: Path, systemd: int, *extra: str):
    return run_cli("install", "--feed", str(feed), "--root", str(root), "--systemd",
                   str(systemd), *extra)


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root``: file bytes, or None for a directory."""
    found = {}
    for path in sorted(root.rglob("*")):
        found[str(path.relative_to(root))] = None if path.is_dir() else path.read_bytes()
    return found


@pytest.fixture()
def feed(images, gpg_home, tmp_path) -> Path:
    feed = tmp_path / "feed"
    proc = publish(feed, "http://updates.example.invalid/feedtool/", images["1"],
                   extra=["--gnupghome", str(gpg_home)])
    assert proc.returncode == 0, proc.stderr
    return feed


def test_install_feed_writes_per_version_layout(feed, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    proc = install_feed(feed, root, 257, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    jsonschema.validate(out, json.loads((Path(__file__).parent.parent / "docs/schemas"
                                         / "install.schema.json").read_text()))
    assert out["installed"] == "/etc/sysupdate.d/feedtool.transfer"
    assert out["feed"]["written"] == ["/etc/systemd/import-pubring.gpg",
                                      "/etc/sysupdate.d/feedtool.transfer"]
    assert (root / "etc/sysupdate.d/feedtool.transfer").read_bytes() == \
        (feed / "sysupdate.d/feedtool.transfer").read_bytes()
    assert (root / "etc/systemd/import-pubring.gpg").read_bytes() == \
        (feed / "import-pubring.gpg").read_bytes()
    assert (root / "var/lib/extensions").is_dir()
    assert not (root / "var/lib/extensions.d").exists()
    assert "fingerprint" in proc.stderr  # the key came from the feed: said, with its fingerprint

    before = tree(root)
    proc = install_feed(feed, root, 257)
    assert proc.returncode == 0 and "nothing changed" in proc.stderr, proc.stderr
    assert tree(root) == before

    # the host's systemd is 254 after all: the legacy file replaces the .transfer (257 reads
    # *.conf too, so both would install every version twice)
    proc = install_feed(feed, root, 254)
    assert proc.returncode == 0, proc.stderr
    assert "must run on the host itself, not with --root" in proc.stderr
    assert not (root / "etc/sysupdate.d/feedtool.transfer").exists()
    assert (root / "etc/sysupdate.d/feedtool.conf").read_bytes() == \
        (feed / "sysupdate.d/legacy/feedtool.conf").read_bytes()
    assert (root / "var/lib/extensions.d").is_dir()
    # the key is already there: not added a second time
    assert (root / "etc/systemd/import-pubring.gpg").read_bytes() == \
        (feed / "import-pubring.gpg").read_bytes()


def test_install_feed_adds_the_key_to_an_existing_keyring(feed, tmp_path):
    other = tmp_path / "other-home"
    assert run_cli("keys", "generate", "--openpgp", str(other)).returncode == 0
    theirs = subprocess.run(["gpg", "--homedir", str(other), "--export"], capture_output=True,
                            check=True).stdout
    subprocess.run(["gpgconf", "--homedir", str(other), "--kill", "all"], capture_output=True)
    root = tmp_path / "root"
    (root / "etc/systemd").mkdir(parents=True)
    (root / "etc/systemd/import-pubring.gpg").write_bytes(theirs)
    proc = install_feed(feed, root, 262)
    assert proc.returncode == 0, proc.stderr
    keyring = (root / "etc/systemd/import-pubring.gpg").read_bytes()
    assert keyring == theirs + (feed / "import-pubring.gpg").read_bytes()
    for sums in (feed / "SHA256SUMS",):  # the merged keyring verifies the feed
        subprocess.run(["gpgv", "--homedir", str(tmp_path), "--keyring",
                        str(root / "etc/systemd/import-pubring.gpg"),
                        str(feed / "SHA256SUMS.gpg"), str(sums)], check=True,
                       capture_output=True)


def test_install_feed_refuses_an_altered_feed_and_old_systemd(feed, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    proc = install_feed(feed, root, 252)
    assert proc.returncode == 2 and "254" in proc.stderr, proc.stderr
    index = json.loads((feed / "index.json").read_text())
    index["url"] = "http://elsewhere.example.invalid/"
    (feed / "index.json").write_text(json.dumps(index))
    proc = install_feed(feed, root, 257)
    assert proc.returncode == 3 and "index.json: does not match the signed SHA256SUMS" in \
        proc.stderr, proc.stderr
    sums = (feed / "SHA256SUMS").read_text().splitlines()
    (feed / "SHA256SUMS").write_text("".join(
        f"{sha256(feed / 'index.json')}  index.json\n" if line.endswith("  index.json")
        else line + "\n" for line in sums))
    proc = install_feed(feed, root, 257)
    assert proc.returncode == 3 and "SHA256SUMS.gpg: does not verify" in proc.stderr, \
        proc.stderr
    assert tree(root) == {}
    proc = install_feed(feed, root, 257, "--runtime")
    assert proc.returncode == 2 and "--runtime: does not apply to install --feed" in \
        proc.stderr, proc.stderr
    (feed / "SHA256SUMS.gpg").unlink()  # published --unsigned, never signed
    proc = install_feed(feed, root, 257)
    assert proc.returncode == 2 and "SHA256SUMS.gpg: missing: the feed is not signed" in \
        proc.stderr, proc.stderr
    assert tree(root) == {}
    proc = install_feed(tmp_path / "nowhere", root, 257)
    assert proc.returncode == 2 and "nowhere/SHA256SUMS: missing" in proc.stderr, proc.stderr


# --- the real systemd-sysupdate -------------------------------------------------------------

def sysupdate(version: int, root: Path, work: Path, *args: str, use_root: bool = True):
    """systemd-sysupdate ``version`` in a private mount namespace: /usr/lib/systemd holds its
    systemd-pull, /etc/systemd is the tree's (the keyring install wrote). Without ``use_root``
    (254, see tests/test_publish.py) it runs on host paths: /var/lib is the tree's and the
    definitions are the tree's /etc/sysupdate.d."""
    if use_root:
        return run_sysupdate(version, work, root / "etc/systemd", *args, where=[f"--root={root}"],
                             lib_name=f"lib-systemd-{version}")
    return run_sysupdate(version, work, root / "etc/systemd", *args,
                         where=[f"--definitions={root / 'etc/sysupdate.d'}"],
                         var_lib=root / "var/lib", lib_name=f"lib-systemd-{version}")


@pytest.mark.root
@pytest.mark.network
@pytest.mark.parametrize("version", [254, 257, 262])
def test_install_feed_then_sysupdate_installs_1_then_2(version, images, gpg_home, tmp_path):
    with served_feed(tmp_path, gpg_home, images["1"]) as (served, server, signed, root):
        proc = install_feed(server.url, root, version)  # from the URL, as a host would
        assert proc.returncode == 0, proc.stderr
        update_to_1_then_2(version, root, tmp_path, images, lambda: publish(
            served, server.url, images["2"], extra=signed))


def update_to_1_then_2(version: int, root: Path, work: Path, images: dict[str, Path],
                       publish_2) -> None:
    """systemd-sysupdate ``version`` installs feedtool 1 into ``root`` (whose feed has it),
    then, after ``publish_2()`` put version 2 in the feed, 2 next to it (254: the link too)."""
    raw = {v: sha256(m.with_name("feedtool.raw")) for v, m in images.items()}
    legacy = version < 257
    target = root / ("var/lib/extensions.d" if legacy else "var/lib/extensions/feedtool.raw.v")
    for number in ("1", "2"):
        if number == "2":
            assert publish_2().returncode == 0
        proc = sysupdate(version, root, work, "update", use_root=not legacy)
        assert proc.returncode == 0, proc.stderr
        assert installed(target) == {f"feedtool_{n}.raw": raw[n]
                                     for n in ("1", "2") if n <= number}
        if legacy:
            link = root / "var/lib/extensions/feedtool.raw"
            assert os.readlink(link) == f"../extensions.d/feedtool_{number}.raw"


@pytest.mark.network
def test_install_feed_enable_turns_on_the_timer_and_the_merge(feed, tmp_path):
    """--enable: systemd-sysupdate.timer (fetches new versions) and systemd-sysext.service
    (merges the newest at boot), enabled in the tree by the real systemctl --root."""
    require_tool("systemctl", "systemd")
    try:
        unpacked = systemd_versions.systemd_root(257)
    except systemd_versions.Unavailable as exc:
        missing(str(exc))
    root = tmp_path / "root"
    units = root / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    for unit in ("systemd-sysupdate.timer", "systemd-sysupdate.service",
                 "systemd-sysext.service"):
        (units / unit).write_bytes((unpacked / "usr/lib/systemd/system" / unit).read_bytes())
    proc = install_feed(feed, root, 257, "--enable", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["enabled"] is True
    wants = root / "etc/systemd/system"
    assert os.readlink(wants / "timers.target.wants/systemd-sysupdate.timer") == \
        "/usr/lib/systemd/system/systemd-sysupdate.timer"
    assert os.readlink(wants / "sysinit.target.wants/systemd-sysext.service") == \
        "/usr/lib/systemd/system/systemd-sysext.service"
