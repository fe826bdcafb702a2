"""End-to-end builds from real packages: image contents vs manifest, reproducibility, merging."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import HELLO
from merge import make_root, merge_root
from prereq import require_root, require_tool
from recipes_kit import build_cli, build_recipe, hello_recipe, recipe_dict, write_recipe_dict

FORMATS = ("squashfs", "erofs", "directory")


def hello_spec(packages, fmt: str, **kw) -> dict:
    """The session's deb and rpm as one sysext (recipes_kit.hello_recipe's keywords apply)."""
    return hello_recipe(fmt, sources=[packages["deb"], packages["rpm"]], **kw)


def hello_image(tmp_path: Path, packages, cache_dir, fmt: str, **kw) -> tuple[Path, dict]:
    """The image and manifest of :func:`hello_spec`, built under ``tmp_path``."""
    result = build_recipe(tmp_path, hello_spec(packages, fmt, **kw), cache_dir=cache_dir)
    return result.image_path, result.manifest()


def walk(root: Path) -> dict[str, dict]:
    """The tree as the manifest describes it, read back from a real directory."""
    found, inodes = {}, {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            st = full.lstat()
            rel = str(full.relative_to(root))
            item = {"path": rel, "mode": f"{stat.S_IMODE(st.st_mode):04o}", "uid": st.st_uid,
                    "gid": st.st_gid, "mtime": int(st.st_mtime)}
            if stat.S_ISLNK(st.st_mode):
                item.update(type="symlink", target=os.readlink(full), mode="0777")
            elif stat.S_ISDIR(st.st_mode):
                item["type"] = "dir"
            else:
                item.update(type="file", size=st.st_size,
                            sha256=hashlib.sha256(full.read_bytes()).hexdigest())
            try:
                cap = os.getxattr(full, "security.capability", follow_symlinks=False)
                item["xattrs"] = {"security.capability": cap.hex()}
            except OSError:
                pass
            found[rel] = item
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
    for members in inodes.values():  # hard-link groups, as the manifest names them
        for rel in members:
            found[rel]["hardlink"] = min(members)
    return found


def image_tree(image: Path, fmt: str, tmp_path: Path) -> dict[str, dict]:
    """Read an image back with the real tools: unsquashfs, the kernel's erofs, or the dir."""
    if fmt == "directory":
        return walk(image)
    require_root()
    dest = tmp_path / "readback"
    if fmt == "squashfs":
        require_tool("unsquashfs", "squashfs-tools")
        subprocess.run(["unsquashfs", "-q", "-n", "-d", str(dest), str(image)], check=True,
                       capture_output=True)
        return walk(dest)
    dest.mkdir()
    subprocess.run(["mount", "-o", "loop,ro", "-t", "erofs", str(image), str(dest)], check=True)
    try:
        return walk(dest)
    finally:
        subprocess.run(["umount", str(dest)], check=True)


@pytest.mark.parametrize("fmt", FORMATS)
def test_image_matches_manifest(tmp_path, packages, cache_dir, fmt):
    image, manifest = hello_image(tmp_path, packages, cache_dir, fmt)
    listed = {f["path"]: f for f in manifest["files"]}
    assert image_tree(image, fmt, tmp_path) == listed
    if fmt != "directory":
        assert manifest["image"]["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()


def test_unsquashfs_listing_matches_manifest(tmp_path, packages, cache_dir):
    require_tool("unsquashfs", "squashfs-tools")
    image, manifest = hello_image(tmp_path, packages, cache_dir, "squashfs")
    out = subprocess.run(["unsquashfs", "-lln", "-d", "", str(image)], capture_output=True,
                         text=True, check=True, env={**os.environ, "TZ": "UTC"}).stdout
    listed = {}
    for line in out.splitlines():
        perms, owner, size, _date, _time, path, *rest = line.split(None, 6) + [""]
        path = path.split(" -> ")[0].lstrip("/")
        if path:
            listed[path] = (perms, owner, int(size) if perms[0] == "-" else None)
    expected = {}
    for f in manifest["files"]:
        kind = {"dir": "d", "file": "-", "symlink": "l"}[f["type"]]
        perms = kind + stat.filemode(int(f["mode"], 8))[1:]
        expected[f["path"]] = (perms, f"{f['uid']}/{f['gid']}", f.get("size"))
    assert listed == expected


def test_payload_rules(tmp_path, packages, cache_dir):
    """Merged-/usr canonicalization, drops, excludes, owners, setuid, capabilities, hardlinks."""
    _, manifest = hello_image(tmp_path, packages, cache_dir, "directory")
    files = {f["path"]: f for f in manifest["files"]}
    assert "usr/lib/x86_64-linux-gnu/libhello.so.1" in files  # shipped under /lib
    assert not any(p.startswith(("lib/", "etc", "var")) for p in files)
    assert "etc/hello.conf" in manifest["dropped"] and "hello-tools" in \
        manifest["dropped"]["etc/hello.conf"]
    assert not any(p.startswith("usr/share/doc") for p in files)
    assert manifest["excluded_count"] >= 1
    assert "var/log/rtools.log" not in files and "var/log/rtools.log" not in manifest["dropped"]
    assert files["usr/bin/suid-tool"]["mode"] == "4755"
    assert files["usr/share/rtools/owned"]["uid"] == 1 and files["usr/share/rtools/owned"][
        "mode"] == "0640"
    assert files["usr/bin/rping"]["xattrs"]["security.capability"].startswith("01000002")
    assert files["usr/bin/hello-hard"]["sha256"] == files["usr/bin/hello"]["sha256"] == \
        hashlib.sha256(HELLO).hexdigest()
    assert files["usr/bin/hello-link"]["target"] == "hello"
    assert {f["mtime"] for f in files.values()} == {1700000000}
    assert manifest["extension_release"]["fields"] == {
        "ID": "debian", "VERSION_ID": "12", "ARCHITECTURE": "x86-64", "SYSEXT_ID": "hello",
        "SYSEXT_VERSION_ID": "1.0"}
    names = {p["name"]: p for p in manifest["inputs"]}
    assert names["hello-tools"]["version"] == "1.0-1" and names["rtools"]["format"] == "rpm"
    release = files["usr/lib/extension-release.d/extension-release.hello"]
    assert release["mode"] == "0644" and release["uid"] == 0


def test_hardlinks_stay_hardlinks(tmp_path, packages, cache_dir):
    image, _ = hello_image(tmp_path, packages, cache_dir, "directory")
    a, b = (image / "usr/bin/hello").stat(), (image / "usr/bin/hello-hard").stat()
    assert (a.st_ino, a.st_nlink) == (b.st_ino, 2)


@pytest.mark.parametrize("fmt", FORMATS)
def test_rebuild_in_other_environment_is_identical(tmp_path, packages, cache_dir, fmt):
    """Other build and output dirs, umask, TZ, LANG, cwd, no recipe epoch → same bytes."""
    spec = hello_spec(packages, fmt, epoch=None)
    results = []
    for n, (umask, tz, lang) in enumerate(((0o022, "UTC", "C.UTF-8"),
                                           (0o002, "Pacific/Chatham", "et_EE.UTF-8"))):
        recipe = write_recipe_dict(tmp_path / f"r{n}" / "deep" / "dir", spec)
        results.append(build_cli(recipe, tmp_path / f"o{n}", cache_dir=cache_dir / f"c{n}",
                                 cwd=tmp_path / f"r{n}", umask=umask,
                                 env={"TZ": tz, "LANG": lang, "LC_ALL": lang}).image)
    manifests = [Path(r["manifest"]).read_bytes() for r in results]
    assert manifests[0] == manifests[1]
    assert results[0]["sha256"] == results[1]["sha256"]
    assert results[0]["tree_sha256"] == results[1]["tree_sha256"]
    epoch = json.loads(manifests[0])["source_date_epoch"]
    assert epoch == 1700000000  # derived from the packages' newest mtime, not the clock


def test_environment_epoch_is_used(tmp_path, packages, cache_dir):
    recipe = write_recipe_dict(tmp_path, hello_spec(packages, "directory", epoch=None))
    manifest = build_cli(recipe, tmp_path / "o", cache_dir=cache_dir,
                         env={"SOURCE_DATE_EPOCH": "1600000000"}).manifest()
    assert manifest["source_date_epoch"] == 1600000000
    assert manifest["source_date_epoch_origin"] == "environment"


def test_sysext_merges_and_mismatch_does_not(tmp_path, packages, cache_dir):
    good, _ = hello_image(tmp_path / "good", packages, cache_dir, "squashfs")
    bad, _ = hello_image(tmp_path / "bad", packages, cache_dir, "squashfs", name="other",
                         target={"id": "fedora"})
    root = make_root(tmp_path / "root", "ID=debian\nVERSION_ID=12\n")
    for image in (good, bad):
        (root / "var/lib/extensions" / image.name).write_bytes(image.read_bytes())
    proc = merge_root(root, then=f"sh {root}/usr/bin/hello && ls {root}/usr/bin "
                                 f"{root}/usr/lib/extension-release.d")
    assert proc.returncode == 0, proc.stderr
    assert "hello from the extension" in proc.stdout
    assert "rping" in proc.stdout
    assert "extension-release.hello" in proc.stdout
    assert "extension-release.other" not in proc.stdout  # ID=fedora: skipped
    assert "Using extensions 'hello'." in proc.stderr


def test_json_and_human_output(tmp_path, packages, cache_dir):
    recipe = write_recipe_dict(tmp_path, hello_spec(packages, "squashfs"))
    proc = build_cli(recipe, tmp_path / "o", cache_dir=cache_dir, json_out=False)
    stages = [line.split()[0] for line in proc.stderr.splitlines() if line[:1] != " "]
    assert [s for s in stages if s != "dropped"][:5] == \
        ["fetch", "extract", "layout", "normalize", "package"]
    assert "dropped   /etc in a sysext" in proc.stderr  # each drop reason, with paths
    assert proc.stdout == ""


def _world_readable_copy(work: Path, *packages: Path) -> list[Path]:
    """Copies of ``packages`` that another user can read (pytest's tmp dirs are 0700)."""
    copies = []
    for package in packages:
        copy = work / package.name
        copy.write_bytes(package.read_bytes())
        copy.chmod(0o644)
        copies.append(copy)
    return copies


@pytest.mark.root
@pytest.mark.parametrize("fmt", ("squashfs",))
def test_non_root_build_gives_same_bytes(packages, unprivileged, fmt):
    """A real build as ``nobody`` (setpriv; the world-readable venv and project copy of
    tests/unprivileged.py): owners come from the records, not from disk, so it gives the root
    build's bytes. Packages without file capabilities (those are refused, below); a directory
    image is refused too (tests/test_vary_select.py)."""
    work = unprivileged.make_workdir()
    deb, zstd_deb = _world_readable_copy(work, packages["deb"], packages["deb-zstd"])
    recipe = write_recipe_dict(work / "recipe", hello_recipe(fmt, sources=[zstd_deb, deb]))
    recipe.parent.chmod(0o755)
    recipe.chmod(0o644)
    # the same interpreter and project copy for both (the manifest records python's version)
    as_root = unprivileged.run_cli("root", "build", str(recipe), "-o", str(work / "root-out"),
                                   "--cache-dir", str(work / "root-cache"), "--json", cwd=work)
    assert as_root.returncode == 0, as_root.stderr
    as_user = unprivileged.run_cli("nobody", "build", str(recipe), "-o", str(work / "user-out"),
                                   "--cache-dir", str(work / "cache"), "--json", cwd=work)
    assert as_user.returncode == 0, as_user.stderr
    [root_image], [user_image] = (json.loads(p.stdout)["images"] for p in (as_root, as_user))
    root_bytes, user_bytes = (Path(i["manifest"]).read_bytes() for i in (root_image, user_image))
    assert user_bytes == root_bytes
    root_manifest = json.loads(root_bytes)
    assert Path(user_image["manifest"]).stat().st_uid == 65534  # really built by nobody
    files = {f["path"] for f in root_manifest["files"]}
    assert {"usr/bin/suid-tool", "usr/bin/z"} <= files
    assert user_image["sha256"] == root_image["sha256"] == \
        hashlib.sha256(Path(user_image["image"]).read_bytes()).hexdigest()
    assert Path(user_image["image"]).read_bytes() == Path(root_image["image"]).read_bytes()


@pytest.mark.root
def test_non_root_build_with_file_capabilities_is_refused(packages, unprivileged):
    """A capability cannot be recorded without root: refused, naming the package and what to
    do, and nothing is left in the output directory."""
    work = unprivileged.make_workdir()
    [rpm] = _world_readable_copy(work, packages["rpm"])
    recipe = write_recipe_dict(work / "recipe", hello_recipe("squashfs", sources=[rpm]))
    recipe.parent.chmod(0o755)
    recipe.chmod(0o644)
    out = work / "out"
    proc = unprivileged.run_cli("nobody", "build", str(recipe), "-o", str(out), "--cache-dir",
                                str(work / "cache"), cwd=work)
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: ") and rpm.name in line and "usr/bin/rping" in line
    assert "security.capability" in line and "build as root" in line
    assert list(out.iterdir()) == []


def one_package(package: Path, **sections) -> dict:
    return recipe_dict("t", kind="auto", sources=[package], image={"format": "directory"},
                       **sections)


def test_hardlinks_follow_their_targets_wherever_they_went(tmp_path, cache_dir, make_recipe):
    """A link whose target was excluded, routed to the other image, or moved to the factory
    becomes a copy (or a link to the new place) instead of failing the build."""
    from pkgfactory import build_deb, directory, file, hardlink

    deb = build_deb(tmp_path / "pkg", "links", "1.0", [
        file("/usr/share/doc/links/orig", b"doc-data\n"),
        hardlink("/usr/bin/from-doc", "/usr/share/doc/links/orig"),
        file("/usr/share/links/shared.conf", b"conf\n"),
        hardlink("/etc/links/shared.conf", "/usr/share/links/shared.conf"),
        file("/var/lib/links/a", b"state\n"),
        hardlink("/var/lib/links/b", "/var/lib/links/a"),
        directory("/usr/share/links/ro", 0o555),
        file("/usr/share/links/ro/inside", b"in a read-only directory\n"),
    ])
    recipe = make_recipe(one_package(deb, filter={"exclude": ["usr/share/doc/**"]}))
    build_cli(recipe, tmp_path / "out", cache_dir=cache_dir)
    out = tmp_path / "out"
    assert (out / "t/usr/bin/from-doc").read_bytes() == b"doc-data\n"
    assert (out / "t-config/etc/links/shared.conf").read_bytes() == b"conf\n"
    a = out / "t/usr/share/factory/var/lib/links/a"
    b = out / "t/usr/share/factory/var/lib/links/b"
    assert a.stat().st_ino == b.stat().st_ino
    manifest = json.loads((out / "t.manifest.json").read_text())
    modes = {f["path"]: f["mode"] for f in manifest["files"]}
    assert modes["usr/share/links/ro"] == "0555"
    assert stat.S_IMODE((out / "t/usr/share/links/ro").stat().st_mode) == 0o555


def test_rpm_owner_names_need_a_mapping(tmp_path, cache_dir, make_recipe):
    """RPM payloads carry owner names only: an unmapped group must not become root."""
    from pkgfactory import build_rpm, file

    rpm = build_rpm(tmp_path / "pkg", "mailer", "1.0", [
        file("/usr/bin/lockmail", b"#!/bin/sh\n", 0o2755, owner=("root", "mail"))])
    proc = build_cli(make_recipe(one_package(rpm)), tmp_path / "out", cache_dir=cache_dir,
                     expect=2)
    assert "owned by group 'mail', which [owners] does not map" in proc.stderr
    mapped = make_recipe(one_package(rpm, owners={"groups": {"mail": 8}}))
    build_cli(mapped, tmp_path / "out", cache_dir=cache_dir)
    manifest = json.loads((tmp_path / "out" / "t.manifest.json").read_text())
    lockmail = next(f for f in manifest["files"] if f["path"] == "usr/bin/lockmail")
    assert (lockmail["gid"], lockmail["mode"]) == (8, "2755")
