"""doctor against a temporary --root: verdicts, stale merges, conflicts, services, libraries."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import run_cli, write_recipe
from merge import in_namespace, make_root
from pkgfactory import build_deb, file
from prereq import require_tool
from test_install import build, cli

from pipeline.doctor_cmd import elf_dynamic


def doctor_json(root: Path, *extra: str) -> dict:
    proc = run_cli("doctor", "--root", str(root), "--systemd", "252", "--json", *extra)
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)


def codes(report: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for f in report["findings"]:
        out.setdefault(f["code"], []).append(f)
    return out


def test_verdicts_shadowing_and_disabled_service(tmp_path):
    root = make_root(tmp_path / "root", "ID=debian\nVERSION_ID=12\n")
    (root / "usr/lib/systemd/system").mkdir(parents=True)
    (root / "usr/lib/systemd/system/systemd-sysext.service").write_text("[Install]\n")
    good = build(tmp_path, "good")
    old = build(tmp_path, "old", version_id="11")
    shutil.copy(good, root / "var/lib/extensions")
    shutil.copy(old, root / "var/lib/extensions")
    (root / "etc/extensions/old").mkdir(parents=True)  # masks old.raw
    (root / "var/lib/extensions/notes.txt").write_text("not an image\n")
    report = doctor_json(root)
    found = codes(report)
    by_path = {i["path"]: i for i in report["images"]}
    assert by_path["/var/lib/extensions/good.raw"]["verdict"] == "merges"
    assert by_path["/var/lib/extensions/old.raw"]["rule"] == "discovery.shadowed"
    assert by_path["/etc/extensions/old"]["rule"] == "release.missing-dir"
    assert by_path["/var/lib/extensions/notes.txt"]["rule"] == "discovery.not-raw"
    assert "service.disabled" in found and "good" in found["service.disabled"][0]["message"]
    assert found["merge.not-merged"][0]["fix"] == "systemd-sysext refresh"
    assert all(f["fix"] for f in report["findings"] if f["severity"] != "info")


def test_stale_merge_and_conflict_between_two_extensions(tmp_path):
    require_tool("systemd-sysext", "systemd")
    root = make_root(tmp_path / "root", "ID=debian\nVERSION_ID=12\n")
    (root / "usr/bin/shared-tool").write_text("host copy\n")
    images = []
    for name, payload in (("alpha", "from-alpha"), ("beta", "from-beta")):
        rdir = tmp_path / name
        text = f"""
[extension]
name = "{name}"
[target]
id = "debian"
version_id = "12"
[files]
"usr/bin/shared-tool" = {{ content = "{payload}\\n" }}
"usr/bin/{name}-only" = {{ content = "x\\n" }}
[image]
source_date_epoch = 1700000000
"""
        proc = run_cli("build", str(write_recipe(rdir, text)), "-o", str(rdir / "out"), "--json")
        assert proc.returncode == 0, proc.stderr
        images.append(rdir / "out" / f"{name}.raw")
    shutil.copy(images[0], root / "var/lib/extensions")
    # merge alpha, then add beta: the merge is stale; beta wins the shared file once merged
    proc = in_namespace(
        f"systemd-sysext merge --root={root} && cp {images[1]} {root}/var/lib/extensions/ && "
        + cli("doctor", "--root", str(root), "--systemd", "252", "--json")
        + f"; systemd-sysext refresh --root={root} && cat {root}/usr/bin/shared-tool")
    assert "from-beta" in proc.stdout, proc.stderr  # the real layer order
    report = json.loads(proc.stdout[:proc.stdout.rindex("}") + 1])
    found = codes(report)
    assert "merged now: alpha; on disk and matching: alpha, beta" in \
        found["merge.stale"][0]["message"]
    [conflict] = found["conflict.extensions"]
    assert conflict["subject"] == "/usr/bin/shared-tool" and "beta wins" in conflict["message"]
    assert "merge.read-only" in found


def test_host_file_covered_when_not_merged(tmp_path):
    root = make_root(tmp_path / "root", "ID=debian\nVERSION_ID=12\n")
    (root / "usr/bin/hello-tool").write_text("host\n")
    shutil.copy(build(tmp_path, "hello"), root / "var/lib/extensions")
    found = codes(doctor_json(root))
    assert found["conflict.host"][0]["subject"] == "/usr/bin/hello-tool"


def test_missing_library_of_a_real_binary(tmp_path):
    """A real ELF (the host's ls, packed in a .deb) needs libselinux.so.1: the tree lacks it."""
    ls = Path(shutil.which("ls")).resolve()
    needed = elf_dynamic(ls)["needed"]
    assert "libc.so.6" in needed and len(needed) >= 2
    deb = build_deb(tmp_path / "debs", "lstool", "1.0", [
        file("/usr/bin/lstool", ls.read_bytes(), 0o755)])
    rdir = tmp_path / "r"
    text = f"""
[extension]
name = "lstool"
[target]
id = "debian"
version_id = "12"
[[source]]
deb = "{deb}"
[image]
source_date_epoch = 1700000000
"""
    proc = run_cli("build", str(write_recipe(rdir, text)), "-o", str(rdir / "out"), "--json")
    assert proc.returncode == 0, proc.stderr
    root = make_root(tmp_path / "root", "ID=debian\nVERSION_ID=12\n")
    libdir = root / "usr/lib/x86_64-linux-gnu"
    libdir.mkdir(parents=True)
    (libdir / "libc.so.6").write_bytes(b"stand-in")  # the host provides libc, nothing else
    shutil.copy(rdir / "out/lstool.raw", root / "var/lib/extensions")
    report = doctor_json(root)
    missing = {f["subject"]: f for f in report["findings"] if f["code"] == "library.missing"}
    assert set(missing) == set(needed) - {"libc.so.6"}
    assert "/usr/bin/lstool" in missing[needed[0] if needed[0] != "libc.so.6" else needed[1]][
        "message"]
    assert all(f["severity"] == "error" for f in missing.values())
    human = run_cli("doctor", "--root", str(root), "--systemd", "252")
    assert human.returncode == 1 and "library.missing" in human.stdout
