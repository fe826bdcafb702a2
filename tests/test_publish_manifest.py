"""``publish`` reads each manifest through the manifest model (pipeline/commands/publish.py hands
release/feed.py what it needs): a manifest the model refuses — a field out of range, one a build
never writes — is one line naming the file and the dotted field, exit 2, before the feed is made;
and the feed entry's ``manifest_sha256`` is the hash of the bytes that were read and checked."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import test_publish
from test_publish import publish

#: the images of versions 1-3 (a module fixture of tests/test_publish.py)
images = test_publish.images


@pytest.mark.parametrize("edit, words", [
    (lambda m: m["files"][0].update(uid=-1), "files[0].uid: -1 is out of range"),
    (lambda m: m.update(surprise=True), "surprise: is not a field of the manifest schema"),
    (lambda m: m["image"].update(sha256="not-a-hash"), "image.sha256: 'not-a-hash' does not "
                                                       "match"),
])
def test_a_manifest_the_model_refuses_is_not_published(images, tmp_path, edit, words):
    out = tmp_path / "out"
    shutil.copytree(images["1"].parent, out)
    path = out / "feedtool.manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))  # not the pipeline's form: the schema plugin skips it
    feed = tmp_path / "feed"
    proc = publish(feed, "http://updates.example.invalid/", out / "feedtool.raw",
                   extra=["--unsigned"])
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()[-1:]
    assert line.startswith(f"error: {path}: ") and words in line, line
    assert not feed.exists()


def test_the_index_names_the_manifest_read(images, tmp_path):
    feed = tmp_path / "feed"
    proc = publish(feed, "http://updates.example.invalid/", images["1"], extra=["--unsigned"])
    assert proc.returncode == 0, proc.stderr
    [entry] = json.loads((feed / "index.json").read_text())["images"]
    manifest = images["1"].with_name("feedtool.manifest.json")
    assert entry["manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert (entry["name"], entry["kind"]) == ("feedtool", "sysext")
