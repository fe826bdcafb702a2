"""The real systemd binaries the fidelity tests run: 252 (host), 254, 257, 262 (fetched, cached)."""

from __future__ import annotations

import subprocess

import pytest
import systemd_versions
from prereq import missing


def argv(version: int, name: str) -> list[str]:
    try:
        return systemd_versions.systemd_binary(version, name)
    except systemd_versions.Unavailable as exc:
        missing(f"systemd {version}: {exc}")


@pytest.mark.network
@pytest.mark.parametrize(("version", "name"), [
    (v, n) for v in systemd_versions.VERSIONS
    for n in ("systemd-sysext", "systemd-confext", "systemd-repart", "systemd-dissect")
    if (v, n) != (252, "systemd-confext")])  # systemd-confext exists from 254 on
def test_each_version_runs(version, name):
    proc = subprocess.run([*argv(version, name), "--version"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"systemd {version} ("), proc.stdout


@pytest.mark.network
def test_confext_knows_what_it_is_when_run_through_the_loader(tmp_path):
    """--argv0 reaches the binary: systemd-confext lists confexts, not sysexts."""
    for version in (254, 257, 262):
        out = subprocess.run([*argv(version, "systemd-confext"), "--help"], capture_output=True,
                             text=True).stdout
        assert "systemd-confext [OPTION" in out and "systemd-sysext [" not in out, out[:300]


@pytest.mark.network
def test_merge_root_runs_another_version(tmp_path):
    """tests/merge.py's merge_root with an argv prefix: the real 262 merges a directory
    extension into a --root tree and its file shows under /usr."""
    from merge import make_root, merge_root

    root = make_root(tmp_path / "root", "ID=debian\nVERSION_ID=12\n")
    ext = root / "var/lib/extensions/hello"
    (ext / "usr/lib/extension-release.d").mkdir(parents=True)
    (ext / "usr/lib/extension-release.d/extension-release.hello").write_text("ID=_any\n")
    (ext / "usr/share").mkdir()
    (ext / "usr/share/hello").write_text("from 262\n")
    proc = merge_root(root, f"cat {root}/usr/share/hello",
                      argv=argv(262, "systemd-sysext"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "from 262\n"
