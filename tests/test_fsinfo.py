"""pipeline/image/fsinfo/: every way of reading an image agrees with the manifest of a real build.

Each image (squashfs, erofs, and a DDI of each) is read by every method the module can choose —
a mount in a private namespace (root), the tools as root (mount refused), and the tools as a
real unprivileged user — and listed, read and extracted; the results must say what the manifest
says, as far as the method can know it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from prereq import require_root, require_tool
from verify_helpers import build, project

from pipeline.digest import hash_file
from pipeline.errors import InputError
from pipeline.image import fsinfo
from pipeline.reproduce import diff as diff_mod

KINDS = ("squashfs", "erofs", "ddi-squashfs", "ddi-erofs")


@pytest.fixture(scope="module")
def built(tmp_path_factory, packages, cache_dir):
    require_root()
    require_tool("mkfs.erofs", "erofs-utils")
    require_tool("systemd-repart", "systemd-repart")
    require_tool("veritysetup", "cryptsetup-bin")
    root = tmp_path_factory.mktemp("fsinfo")
    out = {}
    for kind in KINDS:
        fmt, _, fs = kind.partition("-")
        recipe = project(root / kind, packages, fmt, **({"filesystem": fs} if fs else {}))
        out[kind] = build(recipe, root / kind / "out", cache_dir)
    return out


@pytest.fixture(params=("mount", "tools"))
def method(request):
    """``mount``: a trusted image (the build's own output), mounted read-only, nodev, nosuid,
    noexec in a private namespace; ``tools``: an untrusted one (the default), unpacked by its
    own tool onto an inert private tmpfs."""
    return request.param


def manifest_tree(image) -> list[dict]:
    return sorted(image.manifest["files"], key=lambda f: fsinfo.tree_key(f["path"]))


@pytest.mark.parametrize("kind", KINDS)
def test_locate(built, kind):
    fs = fsinfo.locate(built[kind].image)
    assert fs.type == kind.rpartition("-")[2]
    assert fs.ddi == kind.startswith("ddi") and (fs.offset > 0) == fs.ddi
    assert fsinfo.superblock(fs.path, fs.offset)["type"] == fs.type
    assert fsinfo.locate(built[kind].image.parent).type == "directory"


@pytest.mark.parametrize("kind", KINDS)
def test_walk_matches_the_manifest(built, kind, method):
    image = built[kind]
    trusted = method == "mount"
    with fsinfo.opened(image.image, trusted=trusted) as view:
        assert view.method == method if trusted else \
            view.method == ("unsquashfs" if kind.endswith("squashfs") else "fsck.erofs")
    walked = list(fsinfo.walk_image(image.image, trusted=trusted))
    manifest = manifest_tree(image)  # exact either way: erofs metadata is read in Python
    tree = diff_mod.compare_trees(walked, manifest, manifest_based=True)
    assert tree.identical, tree.lines()
    assert tree.compared == len(manifest)


@pytest.mark.parametrize("kind", KINDS)
def test_listing_and_reading_agree_with_the_manifest(built, kind, method):
    image = built[kind]
    manifest = manifest_tree(image)
    trusted = method == "mount"
    listed = [e for e in fsinfo.list_image(image.image, trusted=trusted)
              if e["path"] != fsinfo.ROOT]
    keys = ("path", "type", "mode", "uid", "gid", "size", "target")
    assert [{k: e.get(k) for k in keys} for e in listed] == \
        [{k: m.get(k) for k in keys} for m in manifest]
    files = [m for m in manifest if m["type"] == "file"]
    release = next(m for m in files if "/extension-release.d/" in m["path"])
    for item in (release, files[0], files[-1]):
        data = fsinfo.read_file(image.image, item["path"], trusted=trusted)
        assert len(data) == item["size"]
        assert hashlib.sha256(data).hexdigest() == item["sha256"]


@pytest.mark.parametrize("kind", KINDS)
def test_extract_copies_contents_never_privileges(built, kind, method, tmp_path):
    """Copying out keeps contents, permission bits and symlinks, and never recreates a set-id
    bit, an xattr (file capabilities) or an owner other than ours, trusted or not."""
    image = built[kind]
    dest = fsinfo.extract(image.image, tmp_path / "x", ["usr/bin", "usr/share/rtools"],
                          trusted=method == "mount")
    by_path = {m["path"]: m for m in image.manifest["files"]}
    wanted = [p for p in by_path if p.startswith(("usr/bin/", "usr/share/rtools/"))]
    assert any(by_path[p].get("xattrs") for p in wanted)  # a capability was there to drop
    for rel in wanted:
        st = (dest / rel).lstat()
        item = by_path[rel]
        assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid()), rel
        assert st.st_mode & 0o7777 == int(item["mode"], 8) & 0o1777, rel
        assert os.listxattr(dest / rel, follow_symlinks=False) == [], rel
        if item["type"] == "file":
            assert hash_file(dest / rel) == (item["sha256"], item["size"])
        elif item["type"] == "symlink":
            assert os.readlink(dest / rel) == item["target"]
    assert not (dest / "usr/lib").exists()  # only what was asked for


def test_mount_is_private_and_gone_afterwards(built):
    image = built["ddi-erofs"].image
    with fsinfo.opened(image, trusted=True) as view:
        assert view.method == "mount" and view.owners
        assert (view.root / "usr/bin/rping").is_file()
        mounts = Path("/proc/self/mountinfo").read_text()
        where = str(view.root).split("/root/", 1)[1]
        assert where not in mounts  # not in our namespace
        holder = str(view.root).split("/")[2]
        [line] = [m for m in Path(f"/proc/{holder}/mountinfo").read_text().splitlines()
                  if m.split()[4] == "/" + where]
        assert {"ro", "nosuid", "nodev", "noexec"} <= set(line.split()[5].split(","))
    stream = fsinfo.walk_image(image, trusted=True)
    next(stream)
    stream.close()  # stopping early drops the mount too
    assert not _loop_devices(image)


@pytest.mark.parametrize("kind", ["erofs", "ddi-erofs"])
def test_untrusted_images_are_never_mounted(built, kind, tmp_path):
    """The default (an image from anyone): read by fsck.erofs in userspace, even as root, and
    it reads the same tree; only ``trusted=True`` (the project's own images) mounts."""
    image = built[kind].image
    with fsinfo.opened(image, trusted=True) as view:
        assert view.method == "mount"
    with fsinfo.opened(image) as view:
        assert view.method == "fsck.erofs"
        assert not _loop_devices(image)
    manifest = manifest_tree(built[kind])
    walked = [e for e in fsinfo.walk_image(image, trusted=False) if e["path"] != fsinfo.ROOT]
    # exact: metadata from the on-disk structs, contents unpacked
    tree = diff_mod.compare_trees(walked, manifest, manifest_based=True)
    assert tree.identical and tree.compared == len(manifest), tree.lines()
    listed = [e["path"] for e in fsinfo.list_image(image, trusted=False)]
    assert listed[1:] == [m["path"] for m in manifest]
    release = next(m for m in manifest if "/extension-release.d/" in m["path"])
    data = fsinfo.read_file(image, release["path"], trusted=False)
    assert hashlib.sha256(data).hexdigest() == release["sha256"]
    dest = fsinfo.extract(image, tmp_path / "x", ["usr/bin/rping"], trusted=False)
    assert (dest / "usr/bin/rping").is_file()


def test_corrupt_erofs_is_an_error_not_an_empty_tree(built, tmp_path):
    """fsck.erofs 1.5 exits 0 on a corrupt image: the userspace path must still fail."""
    bad = tmp_path / "bad.erofs"
    content = bytearray(built["erofs"].image.read_bytes())
    content[1024 + 128] ^= 0xFF  # inside the checksummed first block
    bad.write_bytes(content)
    with pytest.raises(InputError, match="corrupt erofs file system: .*checksum"):
        list(fsinfo.walk_image(bad, trusted=False))


def _loop_devices(image: Path) -> str:
    return subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True).stdout


def test_unknown_input_is_named(tmp_path):
    junk = tmp_path / "junk.raw"
    junk.write_bytes(b"\0" * 4096)
    with pytest.raises(InputError, match="not a squashfs, erofs or GPT"):
        fsinfo.locate(junk)


# --- a real unprivileged user ---------------------------------------------------------------

_AS_NOBODY = """
import hashlib, json, sys
from pipeline.image import fsinfo
image, release = sys.argv[1:]
with fsinfo.opened(image) as view:
    method = view.method
print(json.dumps({"method": method, "walk": list(fsinfo.walk_image(image)),
                  "list": list(fsinfo.list_image(image)),
                  "release": hashlib.sha256(fsinfo.read_file(image, release)).hexdigest()}))
"""


@pytest.mark.root
@pytest.mark.parametrize("kind", KINDS)
def test_unprivileged_user_reads_with_the_tools(built, unprivileged, kind):
    manifest = manifest_tree(built[kind])
    release = next(m for m in manifest if "/extension-release.d/" in m["path"])
    shared = unprivileged.make_workdir()  # pytest's tmp dirs are 0700
    try:
        image = Path(shutil.copy(built[kind].image, shared / "hello.raw"))
        os.chmod(image, 0o644)
        proc = unprivileged.run_python("nobody", "-c", _AS_NOBODY, str(image), release["path"],
                                       cwd=shared, env={"TMPDIR": str(shared)})
    finally:
        shutil.rmtree(shared)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["method"] == ("unsquashfs" if kind.endswith("squashfs") else "fsck.erofs")
    assert data["release"] == release["sha256"]
    walked = [e for e in data["walk"] if e["path"] != fsinfo.ROOT]
    # erofs metadata is read from its on-disk structs: owners known even to nobody
    assert all(bool(e.get("owners_unknown")) != kind.endswith("erofs") for e in walked)
    # As nobody: no owners, no privileged xattrs, and fsck.erofs applies the umask to modes.
    keys = ("path", "type", "size", "sha256", "target")
    assert [{k: e.get(k) for k in keys} for e in walked] == \
        [{k: m.get(k) for k in keys} for m in manifest]
    listed = [e["path"] for e in data["list"] if e["path"] != fsinfo.ROOT]
    assert listed == [m["path"] for m in manifest]
