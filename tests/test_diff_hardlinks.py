"""Hard-link groups in the manifest (issue 11 §6): two manifests alone tell a hardlinked tree
from a copied one — different file lists and tree hashes — and diff names the difference."""

from __future__ import annotations

import json

from conftest import run_cli
from pkgfactory import build_deb, file, hardlink
from recipes_kit import EPOCH, build_recipe, recipe_dict


def _build(tmp_path, label: str, files, fmt: str = "directory") -> dict:
    deb = build_deb(tmp_path / label / "pkg", "links", "1.0", files, compression="none")
    spec = recipe_dict("links", kind="sysext", version="1", target={"id": "_any"},
                       sources=[deb], image={"format": fmt, "source_date_epoch": EPOCH})
    out = tmp_path / label / "out"
    build_recipe(tmp_path / label, spec, cache_dir=tmp_path / "cache", json_out=False)
    return json.loads((out / "links.manifest.json").read_text()) | {
        "_path": str(out / "links.manifest.json")}


def test_manifests_alone_tell_hardlinks_from_copies(tmp_path):
    data = b"same bytes\n"
    linked = _build(tmp_path, "linked", [file("/usr/bin/a", data, 0o755),
                                         hardlink("/usr/bin/b", "/usr/bin/a")])
    copied = _build(tmp_path, "copied", [file("/usr/bin/a", data, 0o755),
                                         file("/usr/bin/b", data, 0o755)])
    assert linked["schema"] == 2
    files = {f["path"]: f for f in linked["files"]}
    assert files["usr/bin/a"]["hardlink"] == files["usr/bin/b"]["hardlink"] == "usr/bin/a"
    assert not any("hardlink" in f for f in copied["files"])
    assert linked["image"]["tree_sha256"] != copied["image"]["tree_sha256"]
    # diff of the two manifests alone (the images moved away) names the hard link.
    a, b = tmp_path / "a.manifest.json", tmp_path / "b.manifest.json"
    for src, dest in ((linked, a), (copied, b)):
        manifest = {k: v for k, v in src.items() if k != "_path"}
        dest.write_text(json.dumps(manifest))
    # (The packages differ, which explains it first; --full goes on to the trees.)
    proc = run_cli("diff", str(a), str(b), "--json", "--full")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["levels"]["tree"] == "differs", report["levels"]
    changed = {c["path"]: c["attributes"] for c in report["tree"]["paths"]["changed"]}
    assert changed == {"usr/bin/a": {"hardlink": ["usr/bin/a", None]},
                       "usr/bin/b": {"hardlink": ["usr/bin/a", None]}}
    text = run_cli("diff", str(a), str(b), "--full").stdout
    assert "~ usr/bin/b: hardlink usr/bin/a → None" in text


def test_hardlinks_survive_the_squashfs_image(tmp_path):
    """The images agree with their manifests: the packed tree keeps the group (nlink 2)."""
    from pipeline.image import fsinfo

    data = b"x" * 100
    linked = _build(tmp_path, "linked", [file("/usr/bin/a", data, 0o755),
                                         hardlink("/usr/bin/b", "/usr/bin/a")], "squashfs")
    image = tmp_path / "linked" / "out" / "links.raw"
    walked = {e["path"]: e for e in fsinfo.walk_image(image)}
    assert walked["usr/bin/a"].get("nlink") == walked["usr/bin/b"].get("nlink") == 2
    assert {f["path"] for f in linked["files"] if "hardlink" in f} == {"usr/bin/a", "usr/bin/b"}
