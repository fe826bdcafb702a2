"""``plan`` models the stock host (issue 16 §4): a confext for Debian 12 does not merge on the
systemd 252 Debian 12 ships (no systemd-confext), and the plan names the backport as the way to
make it merge; ``check`` agrees, and its "systemd looks in" note is never empty."""

from __future__ import annotations

import json

from conftest import run_cli, write_recipe

CONFEXT = """
[extension]
name = "cfg"
kind = "confext"
[target]
id = "debian"
version_id = "12"
[files]
"etc/cfg.d/10-cfg.conf" = { content = "x=1\\n" }
"""


def test_a_confext_on_stock_debian_12_is_ignored_and_the_backport_named(tmp_path):
    recipe = write_recipe(tmp_path, CONFEXT)
    cache = tmp_path / "cache"
    proc = run_cli("plan", str(recipe), "--json", "--cache-dir", str(cache))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["matching"]["cfg"]
    stock, backport = rows[0], rows[1]
    assert (stock["host"], stock["systemd"], stock["verdict"], stock["rule"]) == (
        "debian 12 x86-64", "252", "ignored", "host.no-confext")
    assert "bookworm-backports" in stock["fix"]
    assert "bookworm-backports" in backport["host"]
    assert (backport["systemd"], backport["verdict"]) == ("254", "merges")
    point = next(r for r in rows if "point release" in r["host"])
    assert point["systemd"] == "252" and point["verdict"] == "ignored"
    assert not any(r["systemd"] == "254" and r["host"] == "debian 12 x86-64" for r in rows)

    text = run_cli("plan", str(recipe), "--cache-dir", str(cache)).stdout
    assert "debian 12 x86-64 (systemd 252): ignored" in text
    assert "fix: upgrade systemd to 254+ (Debian 12: bookworm-backports)" in text
    assert "apt-get install -t bookworm-backports systemd" in text

    # check says the same of the built image, and says where systemd would look
    out = tmp_path / "out"
    proc = run_cli("build", str(recipe), "-o", str(out), "--cache-dir", str(cache), "-q")
    assert proc.returncode == 0, proc.stderr
    os_release = tmp_path / "os-release"
    os_release.write_text("ID=debian\nVERSION_ID=12\n")
    for version, code in (("252", 3), ("254", 0)):
        proc = run_cli("check", str(out / "cfg.raw"), "--os-release", str(os_release), "--arch",
                       "x86-64", "--systemd", version)
        assert proc.returncode == code, proc.stdout + proc.stderr
        assert "systemd looks in  " not in proc.stdout
        assert "looks in /run/confexts, /var/lib/confexts" in proc.stdout, proc.stdout
    assert "systemd 252 has no systemd-confext and looks nowhere" in run_cli(
        "check", str(out / "cfg.raw"), "--os-release", str(os_release), "--arch", "x86-64",
        "--systemd", "252").stdout


def test_a_sysext_keeps_its_rows(tmp_path):
    recipe = write_recipe(tmp_path, CONFEXT.replace('"confext"', '"sysext"').replace(
        '"etc/cfg.d/10-cfg.conf"', '"usr/share/cfg/x"'))
    proc = run_cli("plan", str(recipe), "--json", "--cache-dir", str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["matching"]["cfg"]
    assert (rows[0]["systemd"], rows[0]["verdict"]) == ("252", "merges")
    assert not any("backports" in r["host"] for r in rows)
    assert "apt-get install" not in run_cli("plan", str(recipe), "--cache-dir",
                                            str(tmp_path / "cache")).stdout
