"""Issue 14 target 5: erofs gets its sorted tree without a copy of the data (correctness only).

As root, mkfs.erofs reads the staging tree through an overlay whose only visible layer is a
skeleton on tmpfs (pipeline.stages.sorted_tree.run_sorted); the image must be byte for byte the
one the tmpfs copy gives, for hard links, symlinks, set-id files, file capabilities, empty and
large files, and names whose byte order differs from their order as text.
"""

from __future__ import annotations

import hashlib
import io
import os
import random

import pytest
from prereq import require_root, require_tool

from pipeline.formats import entry as E
from pipeline.stages.normalize import apply_times
from pipeline.stages.sorted_tree import run_sorted
from pipeline.stages.staging import StagingTree

CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_raw+ep


def _tree(root) -> StagingTree:
    tree = StagingTree(root, owner_ids=True)
    rng = random.Random(4)

    def add(path, kind=E.FILE, data=b"", mode=0o644, **kw):
        entry = E.Entry(path=path, kind=kind, mode=mode, size=len(data),
                        data=io.BytesIO(data) if kind == E.FILE else None, member=path, **kw)
        tree.add(entry, path, kw.pop("uid", 0), 0, "test")

    add("usr", E.DIR, mode=0o755)
    for name in ("zeta", "Alpha", "alpha", "a-b", "a.b", "a_b", "é", "z"):  # byte order ≠ text
        add(f"usr/share/{name}", data=name.encode() * 100)
    add("usr/bin/big", data=rng.randbytes(3 << 20), mode=0o755)
    add("usr/bin/empty", mode=0o755)
    add("usr/bin/setuid", data=b"#!/bin/sh\n", mode=0o4755)
    add("usr/bin/ping", data=b"ELF", mode=0o755, xattrs={"security.capability": CAPABILITY})
    add("usr/bin/hard", E.HARDLINK, target="usr/bin/big")
    add("usr/bin/link", E.SYMLINK, target="big")
    add("usr/lib/deep/er/still", data=b"x")
    add("usr/lib/ro", E.DIR, mode=0o555)
    add("usr/lib/ro/f", data=b"in a read-only directory", mode=0o400)
    apply_times(tree, 1700000000, "set")
    return tree


@pytest.mark.root
def test_the_overlay_gives_the_copys_bytes_and_copies_no_data(tmp_path, monkeypatch):
    require_root()
    require_tool("mkfs.erofs", "erofs-utils")
    require_tool("unshare", "util-linux")
    tree = _tree(tmp_path / "staging")
    args = ["--quiet", "-T", "1700000000", "-U", "6e1b4b2a-3c2d-4e5f-8a9b-0c1d2e3f4a5b",
            "-zlz4hc"]
    before = _overlay_dirs()  # another build running meanwhile may hold its own
    images = {}
    for how in ("overlay", "copy"):
        if how == "copy":
            monkeypatch.setenv("SYSEXT_PIPELINE_EROFS_COPY", "1")  # the documented fallback
        out = tmp_path / f"{how}.erofs"
        used = run_sorted(tree, "mkfs.erofs", [*args, out], what="test", size_hint=4 << 20)
        assert used == how
        images[how] = hashlib.sha256(out.read_bytes()).hexdigest()
    tree.close()
    assert images["overlay"] == images["copy"]
    assert _overlay_dirs() <= before  # nothing of ours left behind


def _overlay_dirs() -> set[str]:
    return {p for p in os.listdir("/dev/shm") if p.startswith(".sysext-pipeline-")
            and os.path.exists(f"/dev/shm/{p}/mnt")}


@pytest.mark.root
def test_the_overlay_image_holds_the_staging_data(tmp_path):
    require_root()
    require_tool("mkfs.erofs", "erofs-utils")
    require_tool("fsck.erofs", "erofs-utils")
    tree = _tree(tmp_path / "staging")
    out = tmp_path / "x.erofs"
    assert run_sorted(tree, "mkfs.erofs", ["--quiet", "-T", "1700000000", out], what="test",
                      size_hint=4 << 20) == "overlay"
    tree.close()
    unpacked = tmp_path / "unpacked"
    from pipeline import tools

    tools.run("fsck.erofs", [f"--extract={unpacked}", out])
    staging = tmp_path / "staging"
    for path in ("usr/bin/big", "usr/share/é", "usr/lib/ro/f", "usr/bin/empty"):
        assert (unpacked / path).read_bytes() == (staging / path).read_bytes(), path
    assert (unpacked / "usr/bin/hard").read_bytes() == (staging / "usr/bin/big").read_bytes()
    assert os.readlink(unpacked / "usr/bin/link") == "big"


@pytest.mark.root
def test_a_failing_tool_behind_the_overlay_is_named_itself(tmp_path):
    require_root()
    require_tool("mkfs.erofs", "erofs-utils")
    from pipeline.errors import BuildError

    tree = _tree(tmp_path / "staging")
    with pytest.raises(BuildError) as caught:  # an unknown compressor: mkfs.erofs refuses
        run_sorted(tree, "mkfs.erofs", ["-zbogus", tmp_path / "x.erofs"], what="packing x",
                   size_hint=4 << 20)
    tree.close()
    assert caught.value.where == "mkfs.erofs"
    assert "packing x failed" in caught.value.what
