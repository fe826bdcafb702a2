"""read_rpm on RPMs nobody here wrote: go-rpmutils' test data, one per payload compressor.

Debian trixie's ``golang-github-sassoftware-go-rpmutils-dev`` ships them. The host may only know
bookworm, so a private apt configuration points at the host's *own* Debian mirror (read from
its sources at run time: the repository never names a mirror) with suite trixie. The .deb is
cached under the tests' own cache (tests/testcache.py), so only the first run touches the network.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pkgfactory import diff_snapshots, snapshot_dir, snapshot_entries, unpack_deb, unpack_rpm
from prereq import missing, require_tool
from testcache import TEST_CACHE

from pipeline.formats.rpm import read_rpm, rpm_info
from pipeline.sources import metadata

PACKAGE = "golang-github-sassoftware-go-rpmutils-dev"
SUITE = "trixie"


def host_debian_mirror(apt_etc: Path = metadata.APT_ETC) -> tuple[str, str | None]:
    """(URI, Signed-By) of the host's main Debian archive (not -security/-updates suites), from
    the apt sources as the pipeline's ``mirror = "host"`` reads them."""
    for source in metadata.host_sources(apt_etc):
        if any("-" not in suite for suite in source["suites"]):
            return source["uri"], source["signed_by"]
    raise LookupError("no Debian archive in the host's apt sources")


def apt_download(dest: Path, work: Path) -> Path:
    """Download PACKAGE from SUITE into ``dest`` with a throw-away apt configuration."""
    uri, signed_by = host_debian_mirror()
    options = f"[signed-by={signed_by}] " if signed_by else ""
    for sub in ("lists/partial", "cache/archives/partial", "parts"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    (work / "sources.list").write_text(f"deb {options}{uri} {SUITE} main\n")
    apt = ["apt-get", "-q", "-o", f"Dir::Etc::sourcelist={work / 'sources.list'}",
           "-o", f"Dir::Etc::sourceparts={work / 'parts'}",
           "-o", f"Dir::State::Lists={work / 'lists'}", "-o", f"Dir::Cache={work / 'cache'}",
           "-o", "Acquire::Languages=none", "-o", "APT::Sandbox::User=root"]
    for args, cwd in (([*apt, "update"], work), ([*apt, "download", f"{PACKAGE}/{SUITE}"], dest)):
        proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0 or "Err:" in proc.stdout:
            raise ConnectionError(f"{' '.join(args[-2:])} failed: {proc.stdout}{proc.stderr}")
    return next(dest.glob(f"{PACKAGE}_*.deb"))


@pytest.fixture(scope="module")
def thirdparty_rpms(tmp_path_factory) -> list[Path]:
    require_tool("apt-get", "apt")
    require_tool("dpkg-deb", "dpkg")
    cache = TEST_CACHE / "go-rpmutils"
    cache.mkdir(parents=True, exist_ok=True)
    debs = sorted(cache.glob(f"{PACKAGE}_*.deb"))
    if not debs:
        try:
            debs = [apt_download(cache, tmp_path_factory.mktemp("apt"))]
        except (ConnectionError, LookupError, subprocess.TimeoutExpired) as exc:
            missing(f"cannot download {PACKAGE} from {SUITE}: {exc}")
    tree = unpack_deb(debs[-1], tmp_path_factory.mktemp("go-rpmutils"))
    rpms = sorted(tree.glob("usr/share/gocode/src/**/testdata/*.rpm"))
    assert rpms, f"no test RPMs in {debs[-1].name}"
    return rpms


@pytest.mark.network
def test_thirdparty_rpms_match_rpm2cpio(thirdparty_rpms, tmp_path):
    require_tool("rpm2cpio", "rpm2cpio")
    compressors = set()
    for i, rpm in enumerate(thirdparty_rpms):
        compressors.add(subprocess.run(["rpm", "-qp", "--qf", "%{PAYLOADCOMPRESSOR}", str(rpm)],
                                       capture_output=True, text=True, check=True).stdout)
        tool = snapshot_dir(unpack_rpm(rpm, tmp_path / str(i)))
        got = snapshot_entries(read_rpm(rpm))
        assert diff_snapshots(got, tool, implicit_dirs=True, symlink_mtimes=False) == [], rpm.name
        listed = subprocess.run(["rpm", "-qpl", str(rpm)], capture_output=True, text=True,
                                check=True).stdout.split("\n")
        assert sorted("/" + p for p in got.nodes if p) == sorted(p for p in listed if
                                                                 p.startswith("/")), rpm.name
    # every payload compressor really was exercised ("(none)" is the uncompressed one)
    assert {"gzip", "bzip2", "lzma", "xz", "zstd", "(none)"} <= compressors


@pytest.mark.network
def test_thirdparty_rpm_info(thirdparty_rpms):
    for rpm in thirdparty_rpms:
        expected = subprocess.run(["rpm", "-qp", "--qf", "%{NAME} %{EVR} %{ARCH}", str(rpm)],
                                  capture_output=True, text=True, check=True).stdout
        info = rpm_info(rpm)
        assert f"{info.name} {info.version} {info.architecture}" == expected


def test_host_mirror_parsing(tmp_path):
    # deb822 with a security stanza first must yield the main archive; one-line form too.
    deb822, one_line = tmp_path / "deb822", tmp_path / "one-line"
    (deb822 / "sources.list.d").mkdir(parents=True)
    (deb822 / "sources.list.d" / "a.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\nTypes: deb deb-src\nURIs: http://mirror.invalid/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\nSigned-By: /k.gpg\n")
    assert host_debian_mirror(deb822) == ("http://mirror.invalid/debian", "/k.gpg")
    one_line.mkdir()
    (one_line / "sources.list").write_text(
        "# comment\ndeb [arch=amd64 signed-by=/x.gpg] http://m.invalid/debian bookworm main\n")
    assert host_debian_mirror(one_line) == ("http://m.invalid/debian", "/x.gpg")
