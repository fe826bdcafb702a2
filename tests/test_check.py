"""`check` CLI and the rule model for versions no binary here can run (255–262)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, run_cli
from prereq import require_tool
from recipes_kit import DEBIAN_12, EPOCH, build_cli, recipe_dict, write_recipe_dict

from pipeline.systemd import rules
from pipeline.systemd.rules import HostFacts, ImageFacts, ReleaseFile, evaluate


def squashfs(tmp: Path, file_name: str, release: str, release_name: str | None = None,
             kind: str = "sysext") -> Path:
    require_tool("mksquashfs", "squashfs-tools")
    tree = tmp / f"tree-{file_name}"
    rel_dir = "usr/lib" if kind == "sysext" else "etc"
    name = release_name or file_name.removesuffix(".raw")
    path = tree / rel_dir / "extension-release.d" / f"extension-release.{name}"
    path.parent.mkdir(parents=True)
    path.write_text(release)
    out = tmp / file_name
    subprocess.run(["mksquashfs", str(tree), str(out), "-quiet", "-no-progress", "-all-root",
                    "-noappend"], check=True)
    return out


def test_troubleshooting_doc_is_current():
    proc = run_cli("troubleshooting")
    assert proc.returncode == 0
    assert (REPO / "docs/troubleshooting.md").read_text() == proc.stdout, \
        "run: python -m pipeline troubleshooting > docs/troubleshooting.md"


def test_doc_covers_the_required_topics_and_every_rule():
    doc = rules.troubleshooting_markdown()
    for needle in ("No medium found", "stale merge", "immutable", "signature",
                   "Works on one systemd version and not another", "nothing merged",
                   "files missing", "error while loading shared libraries"):
        assert needle in doc, needle
    for rule_id in list(rules.RULES) + list(rules.CONDITIONS):
        r = rules.RULES.get(rule_id)
        if r and r.verdict == rules.MERGES and r.versions == rules.ALL:
            continue
        assert f"`{rule_id}`" in doc, rule_id


def test_json_verdict_fields_and_exit_code(tmp_path):
    good = squashfs(tmp_path, "good.raw", "ID=debian\nVERSION_ID=12\n")
    bad = squashfs(tmp_path, "bad.raw", "ID=debian\nVERSION_ID=11\n")
    osr = tmp_path / "os-release"
    osr.write_text('ID=debian\nVERSION_ID="12"\n')
    proc = run_cli("check", str(good), str(bad), "--os-release", str(osr), "--arch", "x86-64",
                   "--systemd", "254", "--json")
    assert proc.returncode == 3, proc.stderr
    data = json.loads(proc.stdout)
    assert data["host"]["systemd"] == "254" and data["host"]["architecture"] == "x86-64"
    g, b = data["images"]
    assert g["verdict"] == "merges" and g["rule"] == "match.version-id-ok"
    assert b == {**b, "verdict": "ignored", "rule": "match.version-id", "field": "VERSION_ID",
                 "image_value": "11", "host_value": "12", "versions": "252+",
                 "kind": "sysext", "format": "squashfs"}
    assert "VERSION_ID=12" in b["fix"] and "deployed on top of '12'" in b["systemd_log"]
    human = run_cli("check", str(good), "--os-release", str(osr), "--systemd", "252")
    assert human.returncode == 0 and ": merges" in human.stdout


def test_arch_initrd_and_root(tmp_path):
    image = squashfs(tmp_path, "a.raw", "ID=debian\nVERSION_ID=12\nARCHITECTURE=x86-64\n")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/os-release").write_text("ID=debian\nVERSION_ID=12\n")
    os.symlink("../usr/lib/os-release", root / "etc/os-release")
    arm = json.loads(run_cli("check", str(image), "--root", str(root), "--systemd", "252",
                             "--arch", "aarch64", "--json").stdout)["images"][0]
    assert (arm["rule"], arm["image_value"], arm["host_value"]) == \
        ("match.architecture", "x86-64", "arm64")
    initrd = json.loads(run_cli("check", str(image), "--root", str(root), "--systemd", "252",
                                "--initrd", "--json").stdout)["images"][0]
    assert initrd["rule"] == "match.scope" and initrd["host_value"] == "initrd"
    # installed into the tree: placement rules apply (/usr/lib/extensions is 252/253 only)
    (root / "usr/lib/extensions").mkdir()
    placed = root / "usr/lib/extensions/a.raw"
    placed.write_bytes(image.read_bytes())
    on252 = json.loads(run_cli("check", str(placed), "--root", str(root), "--systemd", "252",
                               "--json").stdout)["images"][0]
    on254 = json.loads(run_cli("check", str(placed), "--root", str(root), "--systemd", "254",
                               "--json").stdout)["images"][0]
    assert on252["verdict"] == "merges" and on252["installed_in"] == "/usr/lib/extensions"
    assert on254["rule"] == "discovery.not-searched"
    assert {"from": "252.0", "to": "253.x", "verdict": "merges", "rule": "match.version-id-ok",
            "systemd_exit": None} in on254["other_versions"]


def test_v_directory_picks_newest(tmp_path):
    vdir = tmp_path / "tool.v"
    vdir.mkdir()
    squashfs(vdir, "tool_1.raw", "ID=debian\nVERSION_ID=11\n", release_name="tool")
    squashfs(vdir, "tool_10.raw", "ID=debian\nVERSION_ID=12\n", release_name="tool")
    squashfs(vdir, "tool_9.raw", "ID=debian\nVERSION_ID=11\n", release_name="tool")
    osr = tmp_path / "osr"
    osr.write_text("ID=debian\nVERSION_ID=12\n")
    out = json.loads(run_cli("check", str(vdir), "--os-release", str(osr), "--systemd", "257",
                             "--json").stdout)["images"][0]
    assert out["verdict"] == "merges" and out["picked_from"] == str(vdir)
    assert out["image"] == str(vdir) and out["name"] == "tool"
    assert out["picked"] == str(vdir / "tool_10.raw")
    human = run_cli("check", str(vdir), "--os-release", str(osr), "--systemd", "257").stdout
    assert f"picked:  {vdir / 'tool_10.raw'}" in human
    old = json.loads(run_cli("check", str(vdir), "--os-release", str(osr), "--systemd", "255",
                             "--json").stdout)["images"][0]
    assert old["rule"] == "discovery.v-unsupported"


def test_bad_inputs_are_errors(tmp_path):
    assert run_cli("check", str(tmp_path / "nope.raw"), "--systemd", "252").returncode == 2
    junk = tmp_path / "junk.raw"
    junk.write_bytes(b"\0" * 4096)
    proc = run_cli("check", str(junk), "--systemd", "252")
    assert proc.returncode == 2 and "not a squashfs" in proc.stderr
    proc = run_cli("check", str(junk), "--systemd", "200")
    assert proc.returncode == 2 and "outside" in proc.stderr


# ---- the model for versions without a binary here (from systemd's source) -------------------

HOST = {"ID": "debian", "VERSION_ID": "12"}


def judge(file_name, release, version, *, kind="sysext", is_dir=False, host=HOST,
          release_name=None, initrd=False, rel_kind=None):
    name = release_name or file_name.removesuffix(".raw")
    facts = ImageFacts(file_name, is_dir, {rel_kind or kind: {name: ReleaseFile(
        name, dict(release))}})
    return evaluate(facts, HostFacts(host, "x86-64", rules.parse_version(version), initrd),
                    kind)


@pytest.mark.parametrize("version,verdict", [
    ("254.14", rules.MERGES), ("254.15", rules.BREAKS), ("255.8", rules.MERGES),
    ("255.9", rules.BREAKS), ("256.0", rules.MERGES), ("256.1", rules.BREAKS)])
def test_reduced_release_name_window(version, verdict):
    """foo_1.2.raw carrying extension-release.foo_1.0: only the 254.11/255.5/256.0 logic."""
    v = judge("foo_1.2.raw", HOST, version, release_name="foo_1.0")
    assert v.verdict == verdict


def test_class_suffix_names_by_version():
    """A raw image's release file is looked up under the name systemd gives the image: on 254
    foo.sysext.raw is 'foo.sysext'; from 255 it is discovered as 'foo', and the release file
    must be extension-release.foo (extension-release.foo.sysext aborts the whole merge) — as
    the real 257 and 262 do (test_check_matrix.py)."""
    for version in ("254", "255", "257", "262"):
        own = judge("foo.sysext.raw", HOST, version, release_name="foo")
        full = judge("foo.sysext.raw", HOST, version, release_name="foo.sysext")
        if version == "254":
            assert (own.verdict, full.verdict) == (rules.BREAKS, rules.MERGES)
            assert full.name == "foo.sysext"
        else:
            assert (own.verdict, full.verdict) == (rules.MERGES, rules.BREAKS), version
            assert own.name == "foo"
            # one name feeds both: the path named as expected is the one looked up
            assert full.rule.id == "release.missing-raw"
            assert full.expected == "usr/lib/extension-release.d/extension-release.foo"
    # foo.img.raw: ≤257 strip .img as well, 262 looks up the discovered name foo.img
    assert judge("foo.img.raw", HOST, "257", release_name="foo").verdict == rules.MERGES
    assert judge("foo.img.raw", HOST, "262", release_name="foo.img").verdict == rules.MERGES
    assert judge("foo.img.raw", HOST, "262", release_name="foo").verdict == rules.BREAKS
    # directories: the discovered name (255+ drops .sysext)
    assert judge("foo.sysext", HOST, "255", is_dir=True, release_name="foo").verdict == \
        rules.MERGES
    assert judge("foo.sysext", HOST, "254", is_dir=True, release_name="foo").verdict == \
        rules.IGNORED


def test_confext_level_bug_254_0_to_5():
    host = {**HOST, "CONFEXT_LEVEL": "2"}
    release = {"ID": "debian", "VERSION_ID": "11", "CONFEXT_LEVEL": "2"}
    assert judge("c.raw", release, "254.5", kind="confext", host=host).rule.id == \
        "match.confext-level-bug"
    assert judge("c.raw", release, "254.6", kind="confext", host=host).verdict == rules.MERGES


def test_id_like_from_257_8():
    host = {"ID": "ubuntu", "ID_LIKE": "debian", "VERSION_ID": "12"}
    assert judge("x.raw", HOST, "257.7", host=host).rule.id == "match.id"
    assert judge("x.raw", HOST, "258", host=host).verdict == rules.MERGES


def test_wrong_kind_release_by_version():
    assert judge("w.raw", HOST, "252", rel_kind="confext").rule.id == "release.missing-raw"
    assert judge("w.raw", HOST, "254", rel_kind="confext").rule.id == "release.wrong-kind-254"
    assert judge("w.raw", HOST, "255", rel_kind="confext").rule.id == "release.wrong-kind"


def test_search_dirs():
    assert "/usr/lib/extensions" in rules.search_dirs("sysext", (253, 0))
    assert "/usr/lib/extensions" not in rules.search_dirs("sysext", (254, 0))
    assert rules.search_dirs("confext", (253, 0)) == ()
    assert "/etc/confexts" not in rules.search_dirs("confext", (262, 0))
    assert "/usr/lib/confexts" not in rules.search_dirs("confext", (256, 0), initrd=True)
    assert rules.search_dirs("sysext", (258, 0), initrd=True)[-1] == "/.extra/global_sysext"


def test_versions_parse_and_spans():
    assert rules.parse_version("systemd 252 (252.38-1~deb12u1)") == (252, 38)
    assert rules.parse_version("254") == (254, 999)
    assert rules.parse_version("254-1") == (254, 999)  # a user's --systemd: the newest 254.x
    assert rules.rule("release.name-reduced").versions_text() == \
        "254.11–254.14, 255.5–255.8, 256.0"
    assert rules.rule("match.confext-level-bug").versions_text() == "254.0–254.5"


def test_ddi_is_read_through_its_root_partition(tmp_path):
    spec = recipe_dict("dditool", target={**DEBIAN_12, "architecture": "x86-64"},
                       files={"usr/bin/dditool": {"content": "x\n"}},
                       image={"format": "ddi", "filesystem": "erofs", "source_date_epoch": EPOCH})
    build_cli(write_recipe_dict(tmp_path, spec, "r.toml"), tmp_path / "out", json_out=False)
    image = tmp_path / "out/dditool.raw"
    osr = tmp_path / "osr"
    osr.write_text("ID=debian\nVERSION_ID=13\n")
    out = json.loads(run_cli("check", str(image), "--os-release", str(osr), "--systemd", "254",
                             "--json").stdout)["images"][0]
    assert (out["format"], out["rule"], out["image_value"]) == ("ddi", "match.version-id", "12")


def test_signed_image_needs_a_trusted_certificate(tmp_path):
    """A signed image (detached NAME.roothash.p7s) that no verity.d certificate verifies fails
    to activate on ≤258 and takes the merge down (sysext.c returns the verity error): check,
    install and doctor say so with the same rule; a certificate in /etc/verity.d settles it."""
    keys = tmp_path / "keys"
    proc = run_cli("keys", "generate", "--key", str(keys / "k.key"), "--cert",
                   str(keys / "k.crt"), "--subject", "CN=test release")
    assert proc.returncode == 0, proc.stderr
    spec = recipe_dict("signedtool", files={"usr/bin/signedtool": {"content": "x\n"}},
                       image={"format": "squashfs", "verity": "detached",
                              "source_date_epoch": EPOCH},
                       sign={"key": keys / "k.key", "cert": keys / "k.crt"})
    build_cli(write_recipe_dict(tmp_path / "r", spec), tmp_path / "out", json_out=False)
    out = tmp_path / "out"
    assert (out / "signedtool.roothash.p7s").is_file()
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text("ID=debian\nVERSION_ID=12\n")

    def judge(*extra):
        proc = run_cli("check", str(out / "signedtool.raw"), "--root", str(root), "--json",
                       *extra)
        return json.loads(proc.stdout)["images"][0]

    bad = judge("--systemd", "252")
    assert (bad["verdict"], bad["rule"]) == ("breaks the merge", "signature.untrusted")
    assert bad["image_value"] == "signedtool.roothash.p7s"
    assert "/etc/verity.d/signedtool.crt" in bad["fix"]
    later = judge("--systemd", "259")
    assert later["verdict"] == "merges" and "259+ falls back" in " ".join(later["notes"])
    refused = run_cli("install", str(out / "signedtool.raw"), "--root", str(root),
                      "--systemd", "252")
    assert refused.returncode == 3 and "signature.untrusted" in refused.stderr
    (root / "etc/verity.d").mkdir()
    (root / "etc/verity.d/release.crt").write_bytes((keys / "k.crt").read_bytes())
    good = judge("--systemd", "252")
    assert good["verdict"] == "merges", good
    # doctor: the same rule for the installed image, and which certificate verifies it
    (root / "var/lib/extensions").mkdir(parents=True)
    for f in out.glob("signedtool.*"):
        if not f.name.endswith(".json"):
            (root / "var/lib/extensions" / f.name).write_bytes(f.read_bytes())
    proc = run_cli("doctor", "--root", str(root), "--systemd", "252", "--json")
    codes = {f["code"] for f in json.loads(proc.stdout)["findings"]}
    assert "signature.verified" in codes and "signature.untrusted" not in codes
    (root / "etc/verity.d/release.crt").unlink()
    proc = run_cli("doctor", "--root", str(root), "--systemd", "252", "--json")
    assert proc.returncode == 3
    [untrusted] = [f for f in json.loads(proc.stdout)["findings"]
                   if f["code"] == "signature.untrusted"]
    assert untrusted["severity"] == "error" and "verity.d" in untrusted["fix"]


def test_a_broken_neighbour_breaks_every_verdict(tmp_path):
    """good.raw next to a raw image without a matching release file: the real systemd-sysext
    aborts the whole merge, so check says good breaks the merge because of that image (with its
    rule and fix) and doctor's fix names it instead of suggesting a refresh."""
    from merge import in_namespace, make_root

    root = make_root(tmp_path / "root", "ID=debian\nVERSION_ID=12\n")
    ext = root / "var/lib/extensions"
    squashfs(ext, "good.raw", "ID=debian\nVERSION_ID=12\n")
    squashfs(ext, "broken.raw", "ID=debian\nVERSION_ID=12\n", release_name="other")
    for p in list(ext.iterdir()):
        if p.name.startswith("tree-"):
            subprocess.run(["rm", "-rf", str(p)], check=True)
    real = in_namespace(f"systemd-sysext merge --root={root}; "
                        f"test -e {root}/usr/lib/extension-release.d/extension-release.good "
                        "&& echo MERGED || echo NOTHING")
    assert "NOTHING" in real.stdout and "No medium found" in real.stderr, real.stderr
    out = json.loads(run_cli("check", str(ext / "good.raw"), "--root", str(root),
                             "--systemd", "252", "--json").stdout)["images"][0]
    assert (out["verdict"], out["rule"]) == ("breaks the merge", "merge.broken-by-other")
    assert out["host_value"] == \
        "/var/lib/extensions/broken.raw (breaks the merge: release.missing-raw)"
    assert out["fix"].startswith("fix or remove /var/lib/extensions/broken.raw: name the "
                                 "release file")
    assert out["image_value"] == "merges (match.version-id-ok)"
    human = run_cli("check", str(ext / "good.raw"), "--root", str(root), "--systemd", "252")
    assert human.returncode == 3 and "because" not in human.stdout.split("\n")[1] and \
        "merge.broken-by-other" in human.stdout
    doctor = json.loads(run_cli("doctor", "--root", str(root), "--systemd", "252",
                                "--json").stdout)
    fixes = [f["fix"] for f in doctor["findings"] if f["code"].startswith("merge.")]
    assert fixes and all("broken.raw" in fix for fix in fixes), fixes
    assert not any(f["fix"] == "systemd-sysext refresh" for f in doctor["findings"])


def test_placeholders_are_filled_and_release_paths_are_expected_values(tmp_path):
    """No '{KIND}' reaches a message; the release path a raw image lacks is what systemd
    expected, not a host value."""
    for rule_id, r in rules.RULES.items():
        for kind in r.kinds:
            facts = ImageFacts("x.raw", False, {kind: {"x": ReleaseFile("x", {
                "ID": "debian", "VERSION_ID": "12", f"{kind.upper()}_SCOPE": "initrd"})}})
            v = evaluate(facts, HostFacts(HOST, "x86-64", (254, 26)), kind)
            for text in (v.summary, v.field, v.fix, v.message):
                assert "{" not in text, (rule_id, text)
    image = squashfs(tmp_path, "scoped.raw", "ID=debian\nVERSION_ID=12\nSYSEXT_SCOPE=initrd\n")
    osr = tmp_path / "osr"
    osr.write_text("ID=debian\nVERSION_ID=12\n")
    proc = run_cli("check", str(image), "--os-release", str(osr), "--systemd", "254")
    assert "SYSEXT_SCOPE (default" in proc.stdout and "{KIND}" not in proc.stdout
    data = json.loads(run_cli("check", str(image), "--os-release", str(osr), "--systemd", "254",
                              "--json").stdout)["images"][0]
    assert data["summary"].startswith("SYSEXT_SCOPE") and data["field"] == "SYSEXT_SCOPE"
    wrong = squashfs(tmp_path, "wrong.raw", "ID=debian\n", release_name="other")
    data = json.loads(run_cli("check", str(wrong), "--os-release", str(osr), "--systemd", "254",
                              "--json").stdout)["images"][0]
    assert data["rule"] == "release.missing-raw" and data["host_value"] is None
    assert data["expected"] == "usr/lib/extension-release.d/extension-release.wrong"
    human = run_cli("check", str(wrong), "--os-release", str(osr), "--systemd", "254").stdout
    assert "expected 'usr/lib/extension-release.d/extension-release.wrong'" in human


def test_installed_versions_without_a_point_are_x0():
    assert rules.parse_installed_version("254-1") == (254, 0)
    assert rules.parse_installed_version("systemd 256 (256-1.fc41)") == (256, 0)
    assert rules.parse_installed_version("systemd 252 (252.38-1~deb12u1)") == (252, 38)
    assert rules.parse_version("254") == (254, rules.LATEST_POINT)  # --systemd 254: newest


def test_installed_254_0_is_judged_as_254_0(tmp_path):
    """A tree whose dpkg status says systemd 254-1 is 254.0: the 254.0–254.5 confext bug
    applies (read as the newest 254.x it would not)."""
    root = tmp_path / "root"
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc/os-release").write_text("ID=debian\nVERSION_ID=12\nCONFEXT_LEVEL=2\n")
    (root / "var/lib/dpkg/status").write_text(
        "Package: systemd\nStatus: install ok installed\nVersion: 254-1\n\n")
    image = squashfs(tmp_path, "c.raw", "ID=debian\nVERSION_ID=11\nCONFEXT_LEVEL=2\n",
                     kind="confext")
    out = json.loads(run_cli("check", str(image), "--root", str(root), "--kind", "confext",
                             "--json").stdout)
    assert out["host"]["systemd"] == "254.0"
    assert out["images"][0]["rule"] == "match.confext-level-bug"
