"""doctor against a temporary --root: verdicts, stale merges, conflicts, services, libraries."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO, run_cli
from merge import in_namespace, make_root
from pkgfactory import build_deb, file
from prereq import missing, require_tool
from recipes_kit import EPOCH, build_recipe, cli_env, recipe_dict
from test_install import cli, tool_image

from pipeline.commands.doctor import elf_dynamic


def doctor_json(root: Path, *extra: str) -> dict:
    proc = run_cli("doctor", "--root", str(root), "--systemd", "252", "--json", *extra)
    assert proc.returncode in (0, 3), proc.stderr
    return json.loads(proc.stdout)


def image(directory: Path, name: str, *, files: dict[str, str] | None = None,
          deb: Path | None = None) -> Path:
    """An image of ``files`` (path: one line of text) or of ``deb``, built with the real CLI."""
    spec = recipe_dict(name, sources=[deb] if deb else (), image={"source_date_epoch": EPOCH},
                  files={p: {"content": f"{t}\n"} for p, t in files.items()} if files else None)
    return build_recipe(directory, spec).image_path


def codes(report: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for f in report["findings"]:
        out.setdefault(f["code"], []).append(f)
    return out


def test_verdicts_shadowing_and_disabled_service(tmp_path):
    root = make_root(tmp_path / "root", "ID=debian\nVERSION_ID=12\n")
    (root / "usr/lib/systemd/system").mkdir(parents=True)
    (root / "usr/lib/systemd/system/systemd-sysext.service").write_text("[Install]\n")
    good = tool_image(tmp_path, "good")
    old = tool_image(tmp_path, "old", version_id="11")
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
    # the fixes name the tree doctor looked at (issue 16 §8)
    assert found["merge.not-merged"][0]["fix"] == f"systemd-sysext refresh --root={root}"
    assert found["service.disabled"][0]["fix"] == \
        f"systemctl --root={root} enable systemd-sysext.service"
    assert all(f["fix"] for f in report["findings"] if f["severity"] != "info")


def test_stale_merge_and_conflict_between_two_extensions(tmp_path):
    require_tool("systemd-sysext", "systemd")
    root = make_root(tmp_path / "root", "ID=debian\nVERSION_ID=12\n")
    (root / "usr/bin/shared-tool").write_text("host copy\n")
    images = []
    for name, payload in (("alpha", "from-alpha"), ("beta", "from-beta")):
        images.append(image(tmp_path / name, name, files={"usr/bin/shared-tool": payload,
                                                          f"usr/bin/{name}-only": "x"}))
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
    shutil.copy(tool_image(tmp_path, "hello"), root / "var/lib/extensions")
    found = codes(doctor_json(root))
    assert found["conflict.host"][0]["subject"] == "/usr/bin/hello-tool"


def test_missing_library_of_a_real_binary(tmp_path):
    """A real ELF (the host's ls, packed in a .deb) needs libselinux.so.1: the tree lacks it."""
    ls = Path(shutil.which("ls")).resolve()
    needed = elf_dynamic(ls)["needed"]
    assert "libc.so.6" in needed and len(needed) >= 2
    deb = build_deb(tmp_path / "debs", "lstool", "1.0", [
        file("/usr/bin/lstool", ls.read_bytes(), 0o755)])
    lstool = image(tmp_path / "r", "lstool", deb=deb)
    root = make_root(tmp_path / "root", "ID=debian\nVERSION_ID=12\n")
    libdir = root / "usr/lib/x86_64-linux-gnu"
    libdir.mkdir(parents=True)
    (libdir / "libc.so.6").write_bytes(b"stand-in")  # the host provides libc, nothing else
    shutil.copy(lstool, root / "var/lib/extensions")
    report = doctor_json(root)
    missing = {f["subject"]: f for f in report["findings"] if f["code"] == "library.missing"}
    assert set(missing) == set(needed) - {"libc.so.6"}
    assert "/usr/bin/lstool" in missing[needed[0] if needed[0] != "libc.so.6" else needed[1]][
        "message"]
    assert all(f["severity"] == "error" for f in missing.values())
    human = run_cli("doctor", "--root", str(root), "--systemd", "252")
    assert human.returncode == 3 and "library.missing" in human.stdout


def test_libraries_shipped_as_symlinks_and_sonames_count(tmp_path):
    """The example recipe's case: tcpdump needs libpcap.so.0.8, which libpcap0.8 ships as a
    symlink to libpcap.so.1.10.3. Here: ls needs libselinux.so.1 (a symlink in the image, to the
    real file under another name) and libselinux needs libpcre2-8.so.0 (only the DT_SONAME of
    a file named libpcre2-8.so.0.real); xz's liblzma.so.5 is a symlink that dangles: missing."""
    from pkgfactory import symlink

    libdir = "/usr/lib/x86_64-linux-gnu"
    ls = Path(shutil.which("ls")).resolve()
    selinux = Path(f"{libdir}/libselinux.so.1").resolve()
    pcre = Path(f"{libdir}/libpcre2-8.so.0").resolve()
    assert elf_dynamic(pcre)["soname"] == "libpcre2-8.so.0"
    deb = build_deb(tmp_path / "debs", "lstool", "1.0", [
        file("/usr/bin/lstool", ls.read_bytes(), 0o755),
        file(f"{libdir}/libselinux-real.so", selinux.read_bytes(), 0o644),
        symlink(f"{libdir}/libselinux.so.1", "libselinux-real.so"),
        file(f"{libdir}/libpcre2-8.so.0.real", pcre.read_bytes(), 0o644),
        file("/usr/bin/xztool", Path(shutil.which("xz")).resolve().read_bytes(), 0o755),
        symlink(f"{libdir}/liblzma.so.5", "liblzma.so.5.not-shipped")])
    lstool = image(tmp_path / "r", "lstool", deb=deb)
    root = make_root(tmp_path / "root", "ID=debian\nVERSION_ID=12\n")
    (root / libdir.lstrip("/")).mkdir(parents=True)
    for lib in ("libc.so.6", "ld-linux-x86-64.so.2"):
        (root / libdir.lstrip("/") / lib).write_bytes(b"stand-in")
    shutil.copy(lstool, root / "var/lib/extensions")
    report = doctor_json(root)
    missing = {f["subject"] for f in report["findings"] if f["code"] == "library.missing"}
    assert missing == {"liblzma.so.5"}



def test_immutable_hierarchies_only_matter_when_one_must_be_created(tmp_path):
    """Real 252: an immutable /usr (and /) merges fine; only a missing /opt that an extension
    ships files for, under an immutable parent, fails (`Failed to create hierarchy mount
    point`), and only that is reported."""
    import subprocess

    require_tool("systemd-sysext", "systemd")
    require_tool("chattr", "e2fsprogs")
    root = make_root(tmp_path / "root", "ID=debian\nVERSION_ID=12\n")
    shutil.copy(image(tmp_path / "img-usronly", "usronly", files= {"usr/share/usronly/mark": "x"}),
                root / "var/lib/extensions")
    if subprocess.run(["chattr", "+i", str(root / "usr")]).returncode != 0:
        missing("chattr +i is not supported on this file system")
    try:
        proc = in_namespace(f"systemd-sysext merge --root={root} && "
                            f"cat {root}/usr/share/usronly/mark")
        assert proc.returncode == 0 and "x" in proc.stdout, proc.stderr
        assert "hierarchy.immutable" not in codes(doctor_json(root))
        subprocess.run(["chattr", "-i", str(root / "usr")], check=True)
        (root / "opt").rmdir()
        shutil.copy(image(tmp_path / "img-withopt", "withopt", files= {"opt/withopt/mark": "y"}),
                    root / "var/lib/extensions")
        subprocess.run(["chattr", "+i", str(root)], check=True)
        proc = in_namespace(f"systemd-sysext merge --root={root}")
        assert "Failed to create hierarchy mount point" in proc.stderr, proc.stderr
        [finding] = codes(doctor_json(root))["hierarchy.immutable"]
        assert finding["subject"] == "/opt" and "withopt" in finding["message"]
        assert finding["fix"].startswith(f"mkdir {root}/opt")  # in the tree (issue 16 §8)
    finally:
        subprocess.run(["chattr", "-i", str(root), str(root / "usr")])


def test_an_image_whose_files_cannot_be_copied_is_named_not_dropped(tmp_path):
    """issue 11 §9: the temporary directory fills up while doctor copies one image's libraries
    out (a real ENOSPC on a 1 MiB tmpfs): that image is named, the library names its listing
    shows still count, and nobody else gets a false library.missing."""
    from prereq import require_root

    require_root()
    require_tool("unshare", "util-linux")
    libdir = "/usr/lib/x86_64-linux-gnu"
    ls = Path(shutil.which("ls")).resolve()
    assert "libselinux.so.1" in elf_dynamic(ls)["needed"]
    selinux = Path(f"{libdir}/libselinux.so.1").resolve()
    debs = tmp_path / "debs"
    tool = build_deb(debs, "lstool", "1.0", [file("/usr/bin/lstool", ls.read_bytes(), 0o755)])
    libs = build_deb(debs, "zlibs", "1.0", [
        file(f"{libdir}/libselinux.so.1", selinux.read_bytes(), 0o644),
        file(f"{libdir}/libfiller.so", b"\0" * (4 << 20), 0o644)])
    root = make_root(tmp_path / "root", "ID=debian\nVERSION_ID=12\n")
    (root / libdir.lstrip("/")).mkdir(parents=True)
    for lib in ("libc.so.6", "libpcre2-8.so.0", "ld-linux-x86-64.so.2"):
        (root / libdir.lstrip("/") / lib).write_bytes(b"stand-in")
    for name, deb in (("lstool", tool), ("zlibs", libs)):
        shutil.copy(image(tmp_path / name, name, deb=deb), root / "var/lib/extensions")
    assert not codes(doctor_json(root)).get("library.missing")  # with room: all provided

    small = tmp_path / "small-tmp"
    small.mkdir()
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs -o size=1m tmpfs "$TMPDIR" && exec "$@"', "sh", sys.executable, "-m",
         "pipeline", "doctor", "--root", str(root), "--systemd", "252", "--json"],
        capture_output=True, text=True, cwd=REPO,
        env=cli_env({"TMPDIR": str(small)}))
    assert proc.returncode in (0, 3) and "Traceback" not in proc.stderr, proc.stderr
    found = codes(json.loads(proc.stdout))
    [unreadable] = found["image.unreadable"]
    assert unreadable["severity"] == "warning" and unreadable["message"].startswith("zlibs")
    assert "no space left on device" in unreadable["message"]
    assert not found.get("library.missing"), found.get("library.missing")
