"""What `check` says about versions: --force, how a broken merge ends, exact version ranges,
.v/ directories as older systemd sees them (the predictions themselves are checked against the
real binaries in test_check_matrix.py)."""

from __future__ import annotations

import json

from conftest import run_cli
from test_check import squashfs

from pipeline.commands import check as check_cmd
from pipeline.systemd import rules


def _osr(tmp_path, text="ID=debian\nVERSION_ID=12\n"):
    path = tmp_path / "os-release"
    path.write_text(text)
    return path


def check(*args) -> tuple[int, dict]:
    proc = run_cli("check", *args, "--arch", "x86-64", "--json")
    data = json.loads(proc.stdout)
    return proc.returncode, data["images"][0]


def test_force_skips_validation_but_not_the_release_lookup(tmp_path):
    osr = _osr(tmp_path)
    old = squashfs(tmp_path, "old.raw", "ID=debian\nVERSION_ID=11\n")
    rc, plain = check(str(old), "--os-release", str(osr), "--systemd", "262")
    assert rc == 3 and plain["rule"] == "match.version-id" and plain["force"] is False
    rc, forced = check(str(old), "--os-release", str(osr), "--systemd", "262", "--force")
    assert rc == 0 and forced["verdict"] == "merges" and forced["rule"] == "match.forced"
    assert forced["force"] is True and forced["field"] == "VERSION_ID"
    assert any("without --force: ignored (match.version-id" in n for n in forced["notes"])
    # a raw image whose release file systemd cannot find still aborts everything
    wrong = squashfs(tmp_path, "wrong.raw", "ID=debian\nVERSION_ID=12\n", release_name="other")
    rc, out = check(str(wrong), "--os-release", str(osr), "--systemd", "262", "--force")
    assert rc == 3 and out["rule"] == "release.missing-raw" and out["systemd_exit"] == 1
    human = run_cli("check", str(old), "--os-release", str(osr), "--systemd", "257", "--force")
    assert human.returncode == 0 and ": merges with --force" in human.stdout


def test_breaking_says_how_systemd_ends(tmp_path):
    """The merge child's failure: 252–255 exit 0, 256+ exit 1; metadata errors: exit 1."""
    osr = _osr(tmp_path)
    tree = tmp_path / "osrel"
    (tree / "usr/lib/extension-release.d").mkdir(parents=True)
    (tree / "usr/lib/extension-release.d/extension-release.osrel").write_text(
        "ID=debian\nVERSION_ID=12\n")
    (tree / "usr/lib/os-release").write_text("ID=debian\n")
    _, on252 = check(str(tree), "--os-release", str(osr), "--systemd", "252")
    assert on252["rule"] == "content.os-release-252" and on252["systemd_exit"] == 0
    human = run_cli("check", str(tree), "--os-release", str(osr), "--systemd", "252").stdout
    assert "breaks the merge (systemd-sysext exits 0" in human
    _, on254 = check(str(tree), "--os-release", str(osr), "--systemd", "254")
    assert on254["rule"] == "content.os-release-dir" and on254["systemd_exit"] == 1
    # the 252/253 refusal lives in the validation: --force skips it
    _, forced = check(str(tree), "--os-release", str(osr), "--systemd", "252", "--force")
    assert forced["verdict"] == "merges"
    assert rules.RULES["host.no-id"].exit_status((255, 0)) == 0
    assert rules.RULES["host.no-id"].exit_status((256, 0)) == 1


def test_version_ranges_have_exact_bounds(tmp_path):
    osr = _osr(tmp_path, "ID=debian\nVERSION_ID=12\nCONFEXT_LEVEL=2\n")
    image = squashfs(tmp_path, "c.raw", "ID=debian\nVERSION_ID=11\nCONFEXT_LEVEL=2\n",
                     kind="confext")
    _, out = check(str(image), "--os-release", str(osr), "--systemd", "254.5", "--kind",
                   "confext")
    ranges = out["other_versions"]
    assert ranges[0] == {"from": "252.0", "to": "253.x", "verdict": "ignored",
                         "rule": "host.no-confext", "systemd_exit": None}
    assert ranges[1] == {"from": "254.0", "to": "254.5", "verdict": "ignored",
                         "rule": "match.confext-level-bug", "systemd_exit": None}
    assert ranges[2]["from"] == "254.6" and ranges[2]["verdict"] == "merges"
    assert ranges[-1]["to"] == f"{rules.NEWEST}.x"
    human = run_cli("check", str(image), "--os-release", str(osr), "--systemd", "254.5",
                    "--kind", "confext").stdout
    assert "254.0–254.5: ignored (match.confext-level-bug)" in human
    # every point release where a rule changes is a bound
    bounds = check_cmd.VERSION_POINTS
    for point in ((254, 6), (254, 11), (254, 15), (255, 5), (255, 9), (256, 1), (257, 8)):
        assert point in bounds


def test_v_directory_on_old_systemd_is_a_directory_named_like_it(tmp_path):
    osr = _osr(tmp_path)
    vdir = tmp_path / "tool.raw.v"
    vdir.mkdir()
    squashfs(vdir, "tool_1.raw", "ID=debian\nVERSION_ID=12\n", release_name="tool")
    _, old = check(str(vdir), "--os-release", str(osr), "--systemd", "255")
    assert old["rule"] == "discovery.v-unsupported" and old["name"] == "tool.raw.v"
    assert "picked" not in old and not any("256+" in n for n in old["notes"])
    human = run_cli("check", str(vdir), "--os-release", str(osr), "--systemd", "255").stdout
    assert "picked:" not in human
    _, new = check(str(vdir), "--os-release", str(osr), "--systemd", "256")
    assert new["verdict"] == "merges" and new["name"] == "tool"
    empty = tmp_path / "none.raw.v"
    empty.mkdir()
    rc, out = check(str(empty), "--os-release", str(osr), "--systemd", "257")
    assert rc == 3 and out["rule"] == "discovery.v-empty"
