"""``diff``: each injected difference is reported at the right level with the right field/path.

Differences are made by building real variants (another recipe, epoch, package) or by editing
image bytes — never by mocking.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from conftest import run_cli
from pkgfactory import build_deb
from prereq import require_root, require_tool
from verify_helpers import (
    build,
    causes,
    diff_json,
    extra_file,
    flip_byte,
    project,
    repack_squashfs,
    two_signer_ddi,
)

from pipeline.digest import hash_file
from pipeline.image import fsinfo
from pipeline.image.ddi.gpt import read_gpt
from pipeline.image.ddi.reader import find_verity_set
from pipeline.reproduce import diff as diff_mod


def variant(tmp_path, packages, cache_dir, fmt, label, **kw):
    recipe = project(tmp_path / label, packages, fmt, **kw)
    return build(recipe, tmp_path / label / "out", cache_dir)


@pytest.fixture(scope="module")
def base(tmp_path_factory, packages, cache_dir):
    """One build per format of the same recipe."""
    root = tmp_path_factory.mktemp("diff-base")
    return {fmt: variant(root, packages, cache_dir, fmt, fmt)
            for fmt in ("squashfs", "erofs", "directory")}


@pytest.mark.parametrize("fmt", ("squashfs", "erofs", "directory"))
def test_identical_rebuild_is_identical(tmp_path, packages, cache_dir, base, fmt):
    again = variant(tmp_path, packages, cache_dir, fmt, "again")
    report = diff_json(base[fmt].image, again.image)
    assert report["identical"]
    # The project moved, and the manifest records local package paths (see test_vary's
    # recipe-path): that, and only that, may differ.
    assert {f["field"].rsplit(".", 1)[-1] for f in report["findings"]} <= {"source"}


@pytest.mark.parametrize("fmt", ("squashfs", "erofs", "directory"))
def test_extra_file_is_a_tree_difference(tmp_path, packages, cache_dir, base, fmt):
    other = variant(tmp_path, packages, cache_dir, fmt, "extra", extra=extra_file())
    report = diff_json(base[fmt].image, other.image)
    assert report["explained_at"] == "tree"
    assert report["tree"]["paths"]["added"] == ["usr/share/hello", "usr/share/hello/extra.txt"]
    assert report["tree"]["removed"] == report["tree"]["changed"] == 0
    # the recipe changed: said, but not taken as the explanation
    assert {f["field"]: f["role"] for f in report["findings"]}["recipe.sha256"] == "note"


@pytest.mark.parametrize("fmt", ("squashfs", "erofs"))
def test_changed_mode_names_path_and_attribute(tmp_path, packages, cache_dir, fmt):
    a = variant(tmp_path, packages, cache_dir, fmt, "a", extra=extra_file())
    b = variant(tmp_path, packages, cache_dir, fmt, "b", extra=extra_file(mode="0600"))
    report = diff_json(a.image, b.image)
    assert report["explained_at"] == "tree"
    assert report["tree"]["paths"]["changed"] == [
        {"path": "usr/share/hello/extra.txt", "attributes": {"mode": ["0644", "0600"]}}]
    assert report["tree"]["attributes"] == {"mode": 1}
    text = run_cli("diff", str(a.image), str(b.image)).stdout
    assert "usr/share/hello/extra.txt: mode 0644 → 0600" in text


@pytest.mark.parametrize("fmt,field", (("squashfs", "mkfs_time"), ("erofs", "build_time")))
def test_different_epoch(tmp_path, packages, cache_dir, base, fmt, field):
    other = variant(tmp_path, packages, cache_dir, fmt, "epoch", epoch=1700000001)
    report = diff_json(base[fmt].image, other.image)
    assert report["explained_at"] == "manifest"
    epoch = causes(report, "manifest")["source_date_epoch"]
    assert (epoch["a"], epoch["b"]) == (1700000000, 1700000001)
    assert "superblock" not in report["levels"]  # stopped at the first level that explains
    # Without the manifests the file system says it: the superblock's time stamp.
    bare = diff_json(base[fmt].image, other.image, "--images-only")
    assert bare["explained_at"] == "superblock"
    assert (causes(bare, "superblock")[field]["a"], causes(bare, "superblock")[field]["b"]) == \
        (1700000000, 1700000001)


def test_different_package_version(tmp_path, packages, cache_dir, base):
    from conftest import DEB_FILES
    from pkgfactory import file

    files = [file("/usr/bin/hello", b"#!/bin/sh\necho hello 2\n", 0o755)
             if f.path == "/usr/bin/hello" else f for f in DEB_FILES]
    deb = build_deb(tmp_path / "pkg2", "hello-tools", "1.0-2", files, compression="xz")
    root = tmp_path / "v2"
    (root / "pkgs").mkdir(parents=True)
    shutil.copy(deb, root / "pkgs" / "hello-tools-2.deb")
    other = build(project(root, packages, "squashfs", deb="hello-tools-2.deb"), root / "out",
                  cache_dir)
    report = diff_json(base["squashfs"].image, other.image)
    assert report["explained_at"] == "manifest"
    version = causes(report, "manifest")["inputs.hello-tools:amd64.version"]
    assert (version["a"], version["b"]) == ("1.0-1", "1.0-2")
    assert "1.0-1 → 1.0-2" in report["summary"]


def test_manifests_alone_explain_across_machines(tmp_path, packages, cache_dir, base):
    """Two manifests without their images: epoch at the manifest level, files from the lists."""
    other = variant(tmp_path, packages, cache_dir, "squashfs", "extra", extra=extra_file())
    a, b = tmp_path / "a.manifest.json", tmp_path / "b.manifest.json"
    shutil.copy(base["squashfs"].manifest_path, a)
    shutil.copy(other.manifest_path, b)
    report = diff_json(a, b)
    assert report["explained_at"] == "tree"
    assert "usr/share/hello/extra.txt" in report["tree"]["paths"]["added"]


def test_other_tool_version_with_same_tree(tmp_path, base):
    """Another mksquashfs (here: other block size) → 'different bytes are expected; the file
    trees are identical', said first, with exit 1."""
    require_root()
    require_tool("unsquashfs", "squashfs-tools")
    orig = base["squashfs"]
    other = tmp_path / "other"
    other.mkdir()
    repack_squashfs(orig.image, other / "hello.raw", "-b", "64K", "-xattrs")
    manifest = json.loads(orig.manifest_path.read_text())
    manifest["tools"]["mksquashfs"] = "4.6.1"
    manifest["image"]["sha256"] = hash_file(other / "hello.raw")[0]  # as that build records
    (other / "hello.manifest.json").write_text(json.dumps(manifest))
    report = diff_json(orig.image, other / "hello.raw")
    assert report["notes"][0].startswith("mksquashfs 4.6.1 in B, 4.5.1 in A")
    assert report["explained_at"] == "manifest"
    assert "the file trees are identical" in report["summary"]
    # One thing said once: the note expects different bytes, the summary says why they are.
    assert report["notes"][0] == "mksquashfs 4.6.1 in B, 4.5.1 in A: different bytes are expected"
    assert "expected" not in report["summary"]
    # The superblock is read, but another mksquashfs's block size is no explanation.
    assert report["levels"]["superblock"].startswith("differs only in what follows")
    assert not causes(report, "superblock")
    assert report["tree"]["compared"] > 10 and report["tree"]["added"] == 0


def test_same_tree_different_layout_is_a_bytes_difference(tmp_path, base):
    """Identical trees and superblock settings but other bytes: the bytes level, with a region."""
    require_root()
    orig = base["squashfs"].image
    repacked = repack_squashfs(orig, tmp_path / "a.raw", "-xattrs")
    nopad = repack_squashfs(orig, tmp_path / "b.raw", "-xattrs", "-nopad")
    report = diff_json(repacked, nopad)
    assert report["explained_at"] == "bytes"
    assert "padding after the file system" in report["summary"]


# --- DDIs: container level --------------------------------------------------------------------

@pytest.fixture(scope="module")
def ddis(tmp_path_factory, packages, cache_dir):
    """One unsigned DDI, and copies signed offline by two different keys."""
    root, recipe = two_signer_ddi(tmp_path_factory, "diff-ddi", packages, "squashfs")
    unsigned = build(recipe, root / "unsigned", cache_dir, unsigned=True)
    signed = {}
    for who in ("a", "b"):
        (root / who).mkdir()
        for f in unsigned.image.parent.iterdir():
            shutil.copy(f, root / who / f.name)
        proc = run_cli("sign", str(root / who / "hello.raw"), "--key", str(root / "p" /
                       f"{who}.key"), "--cert", str(root / "p" / f"{who}.crt"))
        assert proc.returncode == 0, proc.stderr
        signed[who] = root / who / "hello.raw"
    return {"unsigned": unsigned.image, **signed}


def test_different_signer(ddis):
    report = diff_json(ddis["a"], ddis["b"])
    assert report["explained_at"] == "container"
    fp = causes(report, "container")["signature.certificate_fingerprint"]
    assert fp["a"] != fp["b"] and "different signer" in report["summary"]
    assert not any(f["field"].startswith("verity.") for f in report["findings"])


def test_unsigned_vs_signed(ddis):
    report = diff_json(ddis["unsigned"], ddis["a"])
    assert causes(report, "container")["signature.present"]["b"] is True


def test_changed_verity_salt(ddis, tmp_path):
    image = tmp_path / "hello.raw"
    shutil.copy(ddis["a"], image)
    found = find_verity_set(read_gpt(image))
    flip_byte(image, found.hash.offset + 88)  # struct verity_sb: the salt starts at byte 88
    report = diff_json(ddis["a"], image)
    assert report["explained_at"] == "container"
    salt = causes(report, "container")["verity.salt"]
    assert salt["a"][:2] != salt["b"][:2] and salt["a"][2:] == salt["b"][2:]


def test_flipped_byte_in_the_data_partition(ddis, tmp_path):
    image = tmp_path / "hello.raw"
    shutil.copy(ddis["a"], image)
    found = find_verity_set(read_gpt(image))
    flip_byte(image, found.data.offset + 300)
    report = diff_json(ddis["a"], image)
    assert report["explained_at"] == "container"
    data = causes(report, "container")["partitions.root.data"]
    assert data["b"] == 300
    assert "root hash is the same" in report["summary"]
    assert "squashfs" in report["summary"]  # the region inside the file system


def test_ddi_tree_is_read_from_the_data_partition(tmp_path, packages, cache_dir, ddis):
    """Two DDIs with different payloads: the tree level reads inside the root partitions."""
    recipe = project(tmp_path / "p", packages, "ddi", filesystem="squashfs",
                     extra=extra_file())
    other = build(recipe, tmp_path / "out", cache_dir)
    report = diff_json(ddis["unsigned"], other.image, "--images-only")
    assert report["explained_at"] == "tree"
    assert "usr/share/hello/extra.txt" in report["tree"]["paths"]["added"]


# --- readers ----------------------------------------------------------------------------------

def test_superblock_readers_agree_with_the_tools(base):
    sq = fsinfo.superblock(base["squashfs"].image)
    text = subprocess.run(["unsquashfs", "-s", str(base["squashfs"].image)], capture_output=True,
                          text=True, check=True).stdout
    assert f"Compression {sq['compression']}" in text
    assert f"Block size {sq['block_size']}" in text
    assert f"Number of inodes {sq['inodes']}" in text
    assert f"Filesystem size {sq['bytes_used']} bytes" in text
    assert sq["mkfs_time"] == 1700000000
    require_tool("dump.erofs", "erofs-utils")
    ero = fsinfo.superblock(base["erofs"].image)
    text = subprocess.run(["dump.erofs", "-s", str(base["erofs"].image)], capture_output=True,
                          text=True, check=True).stdout
    assert f"Filesystem UUID:                              {ero['uuid']}" in text
    assert f"Filesystem inode count:                       {ero['inodes']}" in text
    assert f"Filesystem blocks:                            {ero['blocks']}" in text
    assert ero["build_time"] == 1700000000


@pytest.mark.parametrize("fmt", ("squashfs", "erofs", "directory"))
def test_image_tree_matches_its_manifest(base, fmt):
    """The streamed tree of an image (kernel mount or extraction) has the manifest's shape."""
    image = base[fmt]
    walked = fsinfo.walk_dir(image.image) if fmt == "directory" else \
        fsinfo.walk_image(image.image)
    manifest = sorted(image.manifest["files"], key=lambda f: fsinfo.tree_key(f["path"]))
    tree = diff_mod.compare_trees(walked, manifest, manifest_based=True)
    assert tree.identical, tree.lines()
    assert tree.compared == len(manifest)


def test_tree_order_is_depth_first(tmp_path):
    """'a-b' sorts before 'a/c' as strings but after it depth first: both sides agree."""
    for path in ("a/c", "a-b", "a.d/e"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(path)
    paths = [e["path"] for e in fsinfo.walk_dir(tmp_path)]
    assert paths == sorted(paths, key=fsinfo.tree_key)
    assert paths == [".", "a", "a/c", "a-b", "a.d", "a.d/e"]


def test_bad_input_is_exit_2(tmp_path):
    proc = run_cli("diff", str(tmp_path / "nope.raw"), str(tmp_path / "nope2.raw"))
    assert proc.returncode == 2 and "no such file" in proc.stderr
