"""``publish`` reads the output directory the way every command does (pipeline/outdir.py): a
symlink planted as the SBOM (pointing at a secret) or a FIFO as the image is refused in one line,
and nothing of it reaches the feed, which is served to the world."""

from __future__ import annotations

import os
import shutil
import threading

import test_publish
from test_publish import publish

#: the images of versions 1-3 (a module fixture of tests/test_publish.py)
images = test_publish.images


def copy_out(images, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(images["1"].parent, out)
    return out


def test_a_symlinked_sbom_is_not_published(images, tmp_path):
    out = copy_out(images, tmp_path)
    secret = tmp_path / "secret"
    secret.write_text("root:x:0:0\n")
    (out / "feedtool.spdx.json").unlink()
    os.symlink(secret, out / "feedtool.spdx.json")
    feed = tmp_path / "feed"
    proc = publish(feed, "http://updates.example.invalid/", out / "feedtool.raw",
                   extra=["--unsigned"])
    assert proc.returncode == 2, proc.stderr
    assert "feedtool.spdx.json: not a regular file" in proc.stderr, proc.stderr
    assert not feed.exists()  # refused before anything was written


def test_a_fifo_image_is_refused_without_blocking(images, tmp_path):
    out = copy_out(images, tmp_path)
    (out / "feedtool.raw").unlink()
    os.mkfifo(out / "feedtool.raw")
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("proc", publish(
        tmp_path / "feed", "http://updates.example.invalid/", out / "feedtool.manifest.json",
        extra=["--unsigned"])), daemon=True)
    thread.start()
    thread.join(60)
    assert "proc" in result, "publish blocked on a FIFO"
    proc = result["proc"]
    assert proc.returncode == 2 and "feedtool.raw: not a regular file" in proc.stderr, \
        proc.stderr
    assert not (tmp_path / "feed").exists()
