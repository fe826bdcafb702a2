"""Unit tests of the package stage (pipeline/stages/package.py): a staging tree packed into a
real squashfs/erofs image or a directory, owners and modes taken from the records (never from
disk), the same bytes from the same records, and the refusals before a tool runs."""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
from pathlib import Path

import pytest
from prereq import require_root, require_tool
from recipes_kit import EPOCH, recipe_dict

from pipeline import recipe as recipe_mod
from pipeline.errors import BuildError, InputError
from pipeline.formats import entry as E
from pipeline.stages.normalize import apply_times
from pipeline.stages.package import _pseudo_quote, _squashfs_compression, pack
from pipeline.stages.staging import StagingTree

ODD = 'usr/share/odd/a b"c\\d'  # a name the pseudo file must quote


def loaded(make_recipe, directory: Path, **image) -> recipe_mod.Recipe:
    target = {"id": "debian", "version_id": "12", "architecture": image.pop("arch", None)}
    spec = recipe_dict("pk", kind="sysext", target=target,
                       files={"usr/bin/pk": {"content": "x\n"}},  # a recipe needs a payload
                       image={"source_date_epoch": EPOCH, **image})
    return recipe_mod.load(make_recipe(spec, directory))


def staged(root: Path, owner: int = 0, owner_ids: bool = False) -> StagingTree:
    """A small tree: a tool owned by ``owner`` in the records (on disk too with
    ``owner_ids``), a setuid file, a symlink, a read-only directory, an awkward name."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tree = StagingTree(root, owner_ids=owner_ids)
    for entry, uid in (
            (E.Entry(path="usr/bin/tool", kind=E.FILE, mode=0o750, size=5,
                     data=io.BytesIO(b"tool\n")), owner),
            (E.Entry(path="usr/bin/suid", kind=E.FILE, mode=0o4755, size=2,
                     data=io.BytesIO(b"s\n")), 0),
            (E.Entry(path="usr/bin/alias", kind=E.SYMLINK, mode=0o777, target="tool"), 0),
            (E.Entry(path="usr/share/ro", kind=E.DIR, mode=0o555), 0),
            (E.Entry(path=ODD, kind=E.FILE, mode=0o600, size=3, data=io.BytesIO(b"odd")), 0)):
        tree.add(entry, entry.path, uid, uid, "pkg")
    apply_times(tree, EPOCH, "set")
    return tree


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def squashfs_listing(image: Path) -> dict[str, tuple[str, str]]:
    """path → (mode string, uid/gid) as unsquashfs reads the image."""
    out = subprocess.run(["unsquashfs", "-lln", str(image)], capture_output=True, text=True,
                         check=True, env={**os.environ, "TZ": "UTC"}).stdout
    found = {}
    for line in out.splitlines():
        match = re.match(r"(\S+) (\d+/\d+) +\S+ \S+ \S+ squashfs-root/?(.*?)( -> .*)?$", line)
        if match:
            found[match[3]] = (match[1], match[2])
    return found


def test_squashfs_owners_and_modes_come_from_the_records(tmp_path, make_recipe):
    require_tool("mksquashfs", "squashfs-tools")
    recipe = loaded(make_recipe, tmp_path / "r", format="squashfs")
    with staged(tmp_path / "root", owner=4242) as tree:
        assert (tree.root / "usr/bin/tool").stat().st_uid == 0  # disk says root ...
        packed = pack(recipe, tree, tmp_path / "pk.raw", EPOCH, b"seed")
    listing = squashfs_listing(packed.path)
    assert listing["usr/bin/tool"] == ("-rwxr-x---", "4242/4242")  # ... the image says 4242
    assert listing["usr/bin/suid"][0] == "-rwsr-xr-x"
    assert listing["usr/share/ro"][0] == "dr-xr-xr-x"
    assert listing[ODD] == ("-rw-------", "0/0")
    assert listing[""] == ("drwxr-xr-x", "0/0")
    assert set(packed.tools) == {"mksquashfs"} and packed.tools["mksquashfs"]
    assert not (tmp_path / "root.pseudo").exists()  # the pseudo file is cleaned up


def test_squashfs_same_records_same_bytes(tmp_path, make_recipe):
    require_tool("mksquashfs", "squashfs-tools")
    recipe = loaded(make_recipe, tmp_path / "r", format="squashfs", compression="gzip")
    images = []
    for name, umask in (("a", 0o022), ("b", 0o077)):
        old = os.umask(umask)
        try:
            with staged(tmp_path / name / "root") as tree:
                images.append(pack(recipe, tree, tmp_path / name / "pk.raw", EPOCH, b"x").path)
        finally:
            os.umask(old)
    assert sha(images[0]) == sha(images[1])
    with staged(tmp_path / "c" / "root", owner=7) as tree:
        other = pack(recipe, tree, tmp_path / "c" / "pk.raw", EPOCH, b"x").path
    assert sha(other) != sha(images[0])  # one owner differs: the bytes do


@pytest.mark.parametrize("image, args", [
    ({"compression": "none"}, ["-noI", "-noId", "-noD", "-noF", "-noX"]),
    ({"compression": "xz"}, ["-comp", "xz"]),
    ({"compression": "zstd", "compression_level": 19}, ["-comp", "zstd", "-Xcompression-level",
                                                         "19"]),
])
def test_squashfs_compression_flags(tmp_path, make_recipe, image, args):
    assert _squashfs_compression(loaded(make_recipe, tmp_path, format="squashfs", **image)) \
        == args


@pytest.mark.parametrize("path, quoted", [
    ("usr/bin/x", "usr/bin/x"),
    ("usr/a b", '"usr/a b"'),
    ('usr/a"b', '"usr/a\\"b"'),
    ("usr/a\\b", '"usr/a\\\\b"'),
])
def test_pseudo_quote(path, quoted):
    assert _pseudo_quote(path) == quoted


def test_erofs_uuid_follows_the_seed(tmp_path, make_recipe):
    require_tool("mkfs.erofs", "erofs-utils")
    recipe = loaded(make_recipe, tmp_path / "r", format="erofs", compression="none")
    digests = []
    for name, seed in (("a", b"one"), ("b", b"one"), ("c", b"two")):
        with staged(tmp_path / name / "root") as tree:
            digests.append(sha(pack(recipe, tree, tmp_path / name / "pk.raw", EPOCH, seed).path))
    assert digests[0] == digests[1] != digests[2]


def test_erofs_refuses_non_root_owners_without_root_ids_and_clamp(tmp_path, make_recipe):
    recipe = loaded(make_recipe, tmp_path / "r", format="erofs")
    with staged(tmp_path / "a" / "root", owner=5) as tree, pytest.raises(BuildError) as info:
        pack(recipe, tree, tmp_path / "a" / "pk.raw", EPOCH, b"s")
    assert info.value.where == "owners"
    clamp = loaded(make_recipe, tmp_path / "r2", format="erofs", mtime="clamp")
    with staged(tmp_path / "b" / "root") as tree, pytest.raises(BuildError) as info:
        pack(clamp, tree, tmp_path / "b" / "pk.raw", EPOCH, b"s")
    assert info.value.where == "image.mtime"
    assert not (tmp_path / "a" / "pk.raw").exists() and not (tmp_path / "b" / "pk.raw").exists()


def test_directory_format_is_the_staging_tree_itself(tmp_path, make_recipe):
    """The tree on disk is the image, so it carries the recorded owners (a root build)."""
    require_root()
    recipe = loaded(make_recipe, tmp_path / "r", format="directory")
    tree = staged(tmp_path / "root", owner=4242, owner_ids=True)
    packed = pack(recipe, tree, tmp_path / "pk", EPOCH, b"s")
    assert packed.path == tmp_path / "pk" and packed.tools == {}
    assert (packed.path / "usr/bin/tool").read_bytes() == b"tool\n"
    assert (packed.path / "usr/bin/tool").stat().st_uid == 4242
    assert not (tmp_path / "root").exists()
    os.chmod(packed.path / "usr/share/ro", 0o755)


def test_a_ddi_needs_one_architecture(tmp_path, make_recipe):
    require_tool("mksquashfs", "squashfs-tools")
    recipe = loaded(make_recipe, tmp_path / "r", format="ddi", filesystem="squashfs")
    with staged(tmp_path / "root") as tree, pytest.raises(InputError) as info:
        pack(recipe, tree, tmp_path / "pk.raw", EPOCH, b"s", arch=None)
    assert info.value.where == "target.architecture"
    assert not (tmp_path / "pk.raw").exists()
