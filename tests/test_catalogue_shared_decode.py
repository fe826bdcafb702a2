"""A catalogue decodes each package its recipes share once (issue 14 target 7): the parent
decodes the shared .debs' data.tar into a private directory in the output directory, each
build reads those bytes through the same tar parser, md5sums checks, limits and writer, and the
directory is gone when the catalogue ends. Images are byte-identical to separate builds; a
corrupt shared package fails every recipe using it with the error a separate build gives."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import hostile_corpus as H
import pytest
from conftest import REPO, run_cli, write_recipe
from pkgfactory import build_deb, file, hardlink
from prereq import require_root, require_tool
from recipes_kit import cli_env

from pipeline.commands.build import DECODED_PREFIX, decode_shared
from pipeline.errors import InputError
from pipeline.formats.compression import Limits
from pipeline.formats.package import Package, decode_payload
from pipeline.recipe import Source
from pipeline.sources.fetch import Fetched
from pipeline.stages.extract import DECODED_ENV, open_package, stored_payload


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _recipe(directory: Path, name: str, debs: list[Path], extra: str = "") -> Path:
    sources = "".join(f'[[source]]\ndeb = "{d}"\nsha256 = "{_sha(d)}"\n' for d in debs)
    return write_recipe(directory, f'[extension]\nname = "{name}"\nkind = "sysext"\n'
                        f'[target]\nid = "debian"\nversion_id = "12"\n'
                        f'[image]\nsource_date_epoch = 1700000000\n{extra}{sources}',
                        name=f"{name}.toml")


def _tool(pkgs: Path, name: str) -> Path:
    return build_deb(pkgs, f"tool-{name}", "1.0", [file(f"/usr/bin/{name}", f"#!/bin/sh\necho "
                                                        f"{name}\n".encode(), 0o755)])


@pytest.fixture
def shared(tmp_path) -> list[Path]:
    """Two shared packages (xz and gzip payloads, hard links among them) and one zstd."""
    pkgs = tmp_path / "pkgs"
    return [
        build_deb(pkgs, "libshared", "1.0", [
            *[file(f"/usr/lib/shared/lib{i}.so", bytes([i]) * 3000, 0o644) for i in range(4)],
            hardlink("/usr/lib/shared/again.so", "/usr/lib/shared/lib1.so")]),
        build_deb(pkgs, "gzshared", "2.0", [file("/usr/share/gz/data", b"gz" * 5000)],
                  compression="gzip"),
        build_deb(pkgs, "zstshared", "3.0", [file("/usr/share/zst/data", b"zs" * 5000)],
                  compression="zstd"),
    ]


def _catalogue(tmp_path: Path, *extra: str, recipes: list[Path], out: Path):
    return run_cli("build", *map(str, recipes), "-o", str(out), "--cache-dir",
                   str(tmp_path / "cache"), "-j", "2", "--json=short", *extra)


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob(DECODED_PREFIX + "*")) if out.exists() else []


def test_shared_payloads_decode_once_and_images_match_separate_builds(tmp_path, shared):
    pkgs = tmp_path / "pkgs"
    # gamma leaves out a hard link's target: the link's data comes from a second read of the
    # package, which reads the catalogue's decoded payload again
    recipes = [_recipe(tmp_path / "recipes", name, [*shared, _tool(pkgs, name)], extra)
               for name, extra in (("alpha", ""), ("beta", ""), (
                   "gamma", '[filter]\nexclude = ["usr/lib/shared/lib1.so"]\n'))]
    out = tmp_path / "out"
    proc = _catalogue(tmp_path, recipes=recipes, out=out)
    assert proc.returncode == 0, proc.stderr
    # the three shared packages, decoded by the catalogue once; each tool by its one build
    assert "decode    3 of 3 shared packages once" in proc.stderr
    assert _leftovers(out) == []  # the store is gone
    rows = json.loads(proc.stdout)["recipes"]
    assert [r["status"] for r in rows] == ["built"] * 3
    for recipe, row in zip(recipes, rows):
        alone = tmp_path / f"alone-{recipe.stem}"
        single = run_cli("build", str(recipe), "-o", str(alone), "--cache-dir",
                         str(tmp_path / "cache"), "-q")
        assert single.returncode == 0, single.stderr
        assert "decode" not in single.stderr
        assert row["images"][0]["sha256"] == _sha(alone / f"{recipe.stem}.raw") == \
            _sha(out / f"{recipe.stem}.raw")


def _broken_md5sums(pkgs: Path) -> Path:
    """A well-compressed payload whose file does not match its md5sums: the catalogue stores
    the decoded bytes; each build's md5sums check fails on them."""
    members = [H.f("./usr/lib/broken/data", b"right\n")]
    path = pkgs / "broken.deb"
    path.write_bytes(H.deb(members, sums=H.md5sums([H.f("./usr/lib/broken/data",
                                                        b"wrong\n")])))
    return path


def _broken_xz(pkgs: Path) -> Path:
    """A payload whose xz stream is damaged: the catalogue cannot decode it, and each build
    decodes it itself and fails as alone."""
    body = H.tar([H.d("./"), H.f("./usr/lib/broken/data", os.urandom(4000))])
    member = bytearray(H.compress(body, "xz"))
    member[len(member) // 2] ^= 0xFF
    path = pkgs / "broken.deb"
    path.write_bytes(H.deb([], data_member=bytes(member), sums=None))
    return path


@pytest.mark.parametrize("broken, stored", [(_broken_md5sums, 1), (_broken_xz, 0)],
                         ids=["md5sums", "xz"])
def test_a_corrupt_shared_package_fails_each_recipe_as_alone(tmp_path, shared, broken, stored):
    pkgs = tmp_path / "pkgs"
    bad = broken(pkgs)
    users = [_recipe(tmp_path / "recipes", name, [shared[0], bad, _tool(pkgs, name)])
             for name in ("alpha", "beta")]
    fine = _recipe(tmp_path / "recipes", "gamma", [shared[0], _tool(pkgs, "gamma")])
    alone = run_cli("build", str(users[0]), "-o", str(tmp_path / "alone"), "--cache-dir",
                    str(tmp_path / "cache"), "--json=short")
    assert alone.returncode == 2, alone.stderr
    error = json.loads(alone.stdout)["error"]
    assert "broken.deb:data.tar.xz" in error["subject"]  # the member, named

    out = tmp_path / "out"
    proc = _catalogue(tmp_path, "--keep-going", recipes=[*users, fine], out=out)
    assert proc.returncode == 2, proc.stderr
    assert f"decode    {stored + 1} of 2 shared packages once" in proc.stderr
    rows = json.loads(proc.stdout)["recipes"]
    assert [r["status"] for r in rows] == ["failed", "failed", "built"]
    assert rows[0]["error"] == rows[1]["error"] == error
    assert _leftovers(out) == []  # gone after a failure too

    proc = _catalogue(tmp_path, recipes=[*users, fine], out=tmp_path / "out2")
    assert proc.returncode == 2 and _leftovers(tmp_path / "out2") == []


def _fetched(path: Path) -> Fetched:
    source = Source(type="deb", ref=str(path), sha256=_sha(path))
    return Fetched(source=source, path=path, sha256=_sha(path), size=path.stat().st_size,
                   origin="local", filename=path.name)


def _tree(package: Package) -> list[tuple]:
    return [(e.path, e.kind, e.mode, e.size, e.data.read() if e.data is not None else None)
            for e in package.entries()]


def test_a_stored_payload_is_read_instead_of_decoded(tmp_path, shared, monkeypatch):
    items = [_fetched(p) for p in shared]
    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    done = decode_shared(items, {i.sha256: Limits() for i in items}, store, 2)
    assert sorted(done) == sorted(i.sha256 for i in items)
    assert sorted(p.name for p in store.iterdir()) == sorted(done)  # no .part left

    with open_package(items[0]) as package:  # no catalogue: decoded as alone
        assert package.decoded is None
        expected = _tree(package)
    monkeypatch.setenv(DECODED_ENV, str(store))
    with open_package(items[0]) as package:
        assert package.decoded is not None  # the catalogue's bytes, not a decoder
        assert _tree(package) == expected
        assert package.sha256 == items[0].sha256  # the .deb itself is still read and hashed

    # only a private directory of this user's counts (not one others may write to)
    store.chmod(0o770)
    assert stored_payload(items[0]) is None
    store.chmod(0o700)
    (store / items[1].sha256).unlink()
    assert stored_payload(items[1]) is None  # not there: decoded as alone


def test_the_stored_bytes_are_those_of_the_verified_file(tmp_path, shared):
    item = _fetched(shared[0])
    other = _fetched(shared[1])
    lying = Fetched(source=item.source, path=item.path, sha256=other.sha256, size=item.size,
                    origin="local", filename=item.filename)
    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    assert decode_shared([lying], {other.sha256: Limits()}, store, 1) == {}
    assert list(store.iterdir()) == []
    with open(tmp_path / "x", "wb") as out, pytest.raises(InputError, match="not the verified"):
        decode_payload(item.path, other.sha256, out)


@pytest.mark.root
def test_without_room_to_spare_each_build_decodes_its_own(tmp_path, shared):
    """The output directory's file system has less than DECODED_RESERVE free (a 64 MiB tmpfs
    in a private mount namespace): nothing is stored, and the builds decode as alone."""
    require_root()
    require_tool("unshare", "util-linux")
    pkgs = tmp_path / "pkgs"
    recipes = [_recipe(tmp_path / "recipes", name, [*shared, _tool(pkgs, name)])
               for name in ("alpha", "beta")]
    mnt = tmp_path / "small"
    mnt.mkdir()
    out = mnt / "out"
    script = ('mount -t tmpfs -o size=64m tmpfs "$1" && shift && "$@"; rc=$?; '
              'echo "left:$(ls -A "$OUT" | grep -c decoded)" >&2; exit $rc')
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", str(mnt),
         sys.executable, "-m", "pipeline", "build", *map(str, recipes), "-o", str(out),
         "--cache-dir", str(tmp_path / "cache"), "-j", "2"], capture_output=True, text=True,
        env=cli_env({"OUT": str(out)}), cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "decode    0 of 3 shared packages once" in proc.stderr
    assert "2 recipes, -j 2: 2 built" in proc.stderr
    assert "left:0" in proc.stderr
