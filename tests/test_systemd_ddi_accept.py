"""A DDI and a signature that systemd itself accepts: systemd-dissect 252/254/257/262 read our
signed DDI and find detached verity files, and systemd-sysext checks the PKCS#7 signature of
both the way it does before activating it.

The kernel here has loop devices but no device-mapper: systemd-dissect works on a loop device
(partition table, designators, verity "signed", the extension-release it mounts and reads), and
systemd-sysext gets as far as validating the signature in userspace (kernel keyring first, then
the certificates in verity.d) before dm-verity activation fails. What is run and what is not is
listed in docs/troubleshooting.md's note on signatures and in the README. Merging the signed
DDI needs device-mapper: test_signed_ddi_merges runs only where it exists.
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
from merge import make_root
from prereq import missing, require_root, require_tool
from test_ddi import SEED, need_tools, new_fs_image, new_signer

from pipeline import keys
from pipeline.commands import check as check_cmd
from pipeline.host import facts as hostmod
from pipeline.image.ddi import assemble_ddi, detached_verity
from pipeline.systemd import rules

VERSIONS = [pytest.param(v, marks=[pytest.mark.network] if v != 252 else [], id=str(v))
            for v in systemd_versions.VERSIONS]


def binary(version: int, name: str) -> list[str]:
    try:
        return systemd_versions.systemd_binary(version, name)
    except systemd_versions.Unavailable as exc:
        missing(f"systemd {version}: {exc}")


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """(DDI path, info, its signer's certificate, another signer's certificate)."""
    need_tools()
    d = tmp_path_factory.mktemp("accept")
    signer = new_signer(d / "keys", "test release")
    new_signer(d / "other", "someone else")
    image = d / "demo.raw"
    info = assemble_ddi(new_fs_image(d / "fs"), image, arch="x86-64", fs_type="squashfs",
                        seed=SEED, signer=signer, workdir=d)
    return image, info, d / "keys/release.crt", d / "other/release.crt"


@pytest.fixture(scope="module")
def detached(tmp_path_factory, signed):
    """A plain squashfs demo.raw with demo.verity, demo.roothash and demo.roothash.p7s."""
    _, _, cert, other = signed
    d = tmp_path_factory.mktemp("detached")
    image = d / "demo.raw"
    shutil.copyfile(new_fs_image(d / "fs"), image)
    signer = keys.load_signer(cert.with_name("release.key"), cert)
    info = detached_verity(image, seed=SEED, signer=signer, workdir=d)
    return image, info, cert, other


@pytest.fixture(params=["ddi", "detached"])
def carrier(request):
    """The signed image either way systemd takes one: a DDI, or detached verity files."""
    return request.getfixturevalue("signed" if request.param == "ddi" else "detached")


@pytest.mark.parametrize("version", VERSIONS)
def test_dissect_finds_detached_verity(detached, version):
    require_root()
    image, _, _, _ = detached
    proc = subprocess.run([*binary(version, "systemd-dissect"), "--json=short", str(image)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [m["verity"] for m in data["mounts"]] == ["external"]
    assert (data.get("sysextRelease") or data.get("extensionRelease")) == [
        "ID=debian", "VERSION_ID=12"]


@pytest.mark.parametrize("version", VERSIONS)
def test_dissect_reads_our_ddi(signed, version):
    require_root()  # systemd-dissect attaches a loop device
    image, info, _, _ = signed
    argv = binary(version, "systemd-dissect")
    proc = subprocess.run([*argv, "--json=short", str(image)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    mounts = {m["designator"]: m for m in data["mounts"]}
    assert set(mounts) == {"root", "root-verity", "root-verity-sig"}
    ours = {p.designator: p for p in info.partitions}
    for designator, m in mounts.items():
        assert m["partition_uuid"] == ours[designator].uuid
        assert m["partition_label"] == ours[designator].label
        assert m["architecture"] == "x86-64"
    assert mounts["root"]["verity"] == "signed" and mounts["root"]["fstype"] == "squashfs"
    assert mounts["root"]["rw"] == "ro" and mounts["root-verity-sig"]["rw"] == "ro"
    release = data.get("sysextRelease") or data.get("extensionRelease")
    assert release == ["ID=debian", "VERSION_ID=12"]
    assert data["useSystemExtension"] is True
    if version >= 254:  # --validate exists from 254 on
        checked = subprocess.run([*argv, "--validate", str(image)], capture_output=True,
                                 text=True)
        assert checked.returncode == 0 and checked.stdout.strip() == "OK", checked.stderr


def merge_log(version: int, root: Path, cert: Path | None) -> tuple[int, str]:
    """``systemd-sysext merge --root`` in a private namespace, ``cert`` installed where that
    version reads verity.d: 262 inside --root, 252–257 on the running system (/run/verity.d,
    a fresh tmpfs in the namespace)."""
    require_root()
    require_tool("unshare", "util-linux")
    argv = shlex.join(binary(version, "systemd-sysext"))
    setup = "mount --make-rshared / && mount -t tmpfs tmpfs /run"
    if cert is not None and version < 258:
        setup += f" && mkdir /run/verity.d && cp {shlex.quote(str(cert))} /run/verity.d/demo.crt"
    script = (f"{setup} && SYSTEMD_LOG_LEVEL=debug {argv} merge --root={shlex.quote(str(root))}"
              "; echo \"@@rc=$?\" >&2")
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=120)
    rc = int(proc.stderr.rsplit("@@rc=", 1)[1].split()[0])
    return rc, proc.stderr


def _root(tmp_path: Path, image: Path, cert: Path | None, version: int) -> Path:
    root = make_root(tmp_path / "root", "ID=debian\nVERSION_ID=12\n")
    for path in image.parent.glob("demo.*"):  # the image and any detached verity files
        (root / "var/lib/extensions" / path.name).write_bytes(path.read_bytes())
    if cert is not None and version >= 258:
        (root / "etc/verity.d").mkdir()
        (root / "etc/verity.d/demo.crt").write_bytes(cert.read_bytes())
    return root


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("who", ["signer", "someone-else", "nobody"])
def test_signature_checked_as_systemd_sysext_does(carrier, tmp_path, version, who):
    image, _, cert, other = carrier
    given = {"signer": cert, "someone-else": other, "nobody": None}[who]
    root = _root(tmp_path, image, given, version)
    rc, log = merge_log(version, root, given)
    assert "trying userspace validation instead" in log, log[-3000:]
    if who == "signer":
        assert "Userspace PKCS#7 validation succeeded." in log, log[-3000:]
        return
    assert "worked neither via the kernel nor in userspace" in log, log[-3000:]
    if who == "someone-else":
        assert "Userspace PKCS#7 validation failed" in log
    else:
        assert "No userspace dm-verity certificates found." in log
    falls_back = "without validating signature is permitted by policy" in log
    assert falls_back == (not rules.RULES["signature.untrusted"].applies((version, 0)))
    if version < 258:
        # check predicts the failure and how the merge ends (its certificate lookup is the
        # --root's, which holds no certificate here either)
        host = hostmod.detect(root, systemd=systemd_versions.systemd_version(version))
        verdict = check_cmd.check_one(root / "var/lib/extensions/demo.raw", host).verdict
        assert verdict.rule.id == "signature.untrusted"
        assert rc == verdict.systemd_exit


def _device_mapper() -> bool:
    try:
        os.close(os.open("/dev/mapper/control", os.O_RDWR))
    except OSError:
        return False
    return True


@pytest.mark.device_mapper
def test_signed_ddi_merges(signed, tmp_path):
    """Where the kernel has device-mapper: the host's systemd-sysext merges the signed DDI once
    the certificate is installed, and its files appear under /usr."""
    require_root()
    if not _device_mapper():
        missing("no device-mapper in this kernel (/dev/mapper/control): dm-verity cannot be "
                "activated, so a signed DDI cannot be merged here")
    image, _, cert, _ = signed
    root = _root(tmp_path, image, None, 252)
    script = (f"mount --make-rshared / && mount -t tmpfs tmpfs /run && mkdir /run/verity.d && "
              f"cp {shlex.quote(str(cert))} /run/verity.d/demo.crt && "
              f"systemd-sysext merge --root={shlex.quote(str(root))} && "
              f"cat {shlex.quote(str(root))}/usr/bin/hello")
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == "hello\n", proc.stderr[-3000:]
