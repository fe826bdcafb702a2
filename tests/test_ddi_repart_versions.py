"""One DDI, the same bytes from systemd-repart 252 (host), 254, 257 and 262 (fetched, cached).

repart ≤254 randomizes verity salts, 262 makes the signature partition read-only by default and
sizes ``--size=auto`` disks 7 sectors smaller than 252–257: the DDI is byte-identical across
versions only because assemble.py leaves repart nothing to choose (every partition property
set, the disk size pinned). Needs the network once (the binaries are cached after).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import systemd_versions
from conftest import REPO, run_cli
from prereq import missing, require_tool
from test_ddi import SEED, make_tree, need_tools, new_fs_image, new_signer, sha256

from pipeline.image.ddi import Repart, assemble_ddi, inspect_image

VERSIONS = systemd_versions.VERSIONS
#: The unsigned x86-64 DDI of test_ddi's squashfs tree, as repart 252 wrote it before the
#: partition properties and the disk size were pinned: pinning them changed no byte.
UNSIGNED_SHA256 = "80fe0e5f99ac6a6cb8705bd589703a637b76ac8a5e81da7f89d99e1fc756ed85"


def repart(version: int) -> Repart:
    try:
        argv = systemd_versions.systemd_binary(version, "systemd-repart")
    except systemd_versions.Unavailable as err:
        missing(f"systemd-repart {version}: {err}")
    out = subprocess.run([*argv, "--version"], capture_output=True, text=True)
    assert out.stdout.startswith(f"systemd {version} "), out.stdout + out.stderr
    return Repart(argv[0], {}, tuple(argv[1:]))


@pytest.fixture(scope="module")
def squashfs(tmp_path_factory):
    return new_fs_image(tmp_path_factory.mktemp("fs"))


@pytest.fixture(scope="module")
def erofs(tmp_path_factory):
    """Like recipes/debug-tools-ddi.toml: erofs, lz4hc level 9, fixed times."""
    need_tools()
    require_tool("mkfs.erofs", "erofs-utils")
    d = tmp_path_factory.mktemp("erofs")
    tree = make_tree(d / "src", "debug-tools")
    out = d / "debug-tools.erofs"
    subprocess.run(["mkfs.erofs", "-zlz4hc,9", "--all-root", "-T0", "-U",
                    "00000000-0000-0000-0000-000000000001", "--quiet", str(out), str(tree)],
                   check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def signer(tmp_path_factory):
    return new_signer(tmp_path_factory.mktemp("rsa"), "test release")


@pytest.mark.network
@pytest.mark.parametrize(("fs", "arch"), [("squashfs", "x86-64"), ("erofs", "x86-64"),
                                          ("erofs", "arm64")])
def test_every_repart_writes_the_same_signed_ddi(request, signer, tmp_path, fs, arch):
    image = request.getfixturevalue(fs)
    digests, infos = {}, {}
    for version in VERSIONS:
        out = tmp_path / str(version) / "x.raw"
        out.parent.mkdir()
        infos[version] = assemble_ddi(image, out, arch=arch, fs_type=fs, seed=SEED,
                                      signer=signer, workdir=out.parent,
                                      repart=repart(version))
        digests[version] = sha256(out)
    print(f"{fs} {arch}: " + ", ".join(f"repart {v} {d}" for v, d in digests.items()))
    assert len(set(digests.values())) == 1, digests
    assert len({i.unsigned_sha256 for i in infos.values()}) == 1
    report = inspect_image(tmp_path / "262" / "x.raw")
    assert report["verity"]["verified"] is True


@pytest.mark.network
def test_unsigned_bytes_unchanged_by_pinning(squashfs, tmp_path):
    for version in (252, 262):
        out = tmp_path / str(version) / "x.raw"
        out.parent.mkdir()
        assemble_ddi(squashfs, out, arch="x86-64", fs_type="squashfs", seed=SEED, signer=None,
                     workdir=out.parent, repart=repart(version))
        assert sha256(out) == UNSIGNED_SHA256, version


@pytest.mark.network
def test_recipe_ddi_has_one_sha256_with_every_repart(tmp_path, cache_dir):
    """recipes/debug-tools-ddi.toml itself (signed, erofs), built by the CLI with each
    systemd-repart first on PATH: one sha256, and the manifest names the repart that ran."""
    need_tools()
    require_tool("mkfs.erofs", "erofs-utils")
    shutil.copytree(REPO / "recipes", tmp_path / "recipes")
    keys = run_cli("keys", "generate", cwd=tmp_path)
    assert keys.returncode == 0, keys.stderr
    digests = {}
    for version in VERSIONS:
        wrapper = tmp_path / f"bin{version}" / "systemd-repart"
        wrapper.parent.mkdir()
        argv = repart(version)
        wrapper.write_text(f"#!/bin/sh\nexec {shlex.join([argv.path, *argv.args])} \"$@\"\n")
        wrapper.chmod(0o755)
        out = tmp_path / f"out{version}"
        proc = run_cli("build", str(tmp_path / "recipes/debug-tools-ddi.toml"), "-o", str(out),
                       "--cache-dir", str(cache_dir), "--json", cwd=tmp_path,
                       env={"PATH": f"{wrapper.parent}:{os.environ['PATH']}"})
        assert proc.returncode == 0, proc.stderr[-2000:]
        [image] = json.loads(proc.stdout)["images"]
        manifest = json.loads(Path(image["manifest"]).read_text())
        assert str(version) in json.dumps(manifest).split('"systemd-repart": "')[1][:8]
        digests[version] = image["sha256"]
    print("debug-tools-ddi: " + ", ".join(f"repart {v} {d}" for v, d in digests.items()))
    assert len(set(digests.values())) == 1, digests
