"""Hostile and broken packages: a clear error naming the member, exit 2, nothing written outside
the staging root and nothing in the output directory.

dpkg-deb refuses to build such packages, so these are assembled by hand (ar + tar) — the
readers and the staging writer must not trust what they did not make.
"""

from __future__ import annotations

import copy
import io
import lzma
import tarfile
from pathlib import Path

import pytest
from conftest import run_cli, write_recipe


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    out.write(b"!<arch>\n")
    for name, data in members:
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
        out.write(header + data + (b"\n" if len(data) % 2 else b""))
    return out.getvalue()


def _tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in entries:
            info.mtime = 1700000000
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def info(name: str, kind=tarfile.REGTYPE, mode=0o644, linkname="") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.linkname = kind, mode, linkname
    return ti


def make_deb(path: Path, entries, *, truncate: bool = False) -> Path:
    control = _tar([(info("./control"), b"Package: evil\nVersion: 1\nArchitecture: amd64\n"
                     b"Maintainer: x <x@example.invalid>\nDescription: x\n")])
    data = lzma.compress(_tar([(info("./", tarfile.DIRTYPE, 0o755), None), *entries]))
    if truncate:
        data = data[: len(data) // 2]
    path.write_bytes(_ar([("debian-binary", b"2.0\n"),
                          ("control.tar.xz", lzma.compress(control)),
                          ("data.tar.xz", data)]))
    return path


HOSTILE = {
    "traversal": ([(info("./usr/../../evil"), b"x")], "'..'"),
    "absolute": ([(info("/usr/bin/abs"), b"x")], "absolute path"),
    "symlink-then-write": ([(info("./usr", tarfile.DIRTYPE, 0o755), None),
                            (info("./usr/esc", tarfile.SYMTYPE, linkname="{outside}"), None),
                            (info("./usr/esc/pwned"), b"x")], "symlink usr/esc"),
    "relative-symlink-then-write": (
        [(info("./usr", tarfile.DIRTYPE, 0o755), None),
         (info("./usr/esc", tarfile.SYMTYPE, linkname="../../../../../../{outside}"), None),
         (info("./usr/esc/pwned"), b"x")], "symlink usr/esc"),
    "hardlink-escape": ([(info("./usr/bin/h", tarfile.LNKTYPE, linkname="../../etc/passwd"), None)],
                        "'..'"),
    "hardlink-absolute": ([(info("./usr/bin/h", tarfile.LNKTYPE, linkname="/etc/passwd"), None)],
                          "absolute path"),
    "hardlink-dangling": ([(info("./usr/bin/h", tarfile.LNKTYPE, linkname="./usr/bin/nothere"),
                            None)], "not a file extracted before"),
    "device-node": ([(info("./usr/dev-null", tarfile.CHRTYPE, 0o666), None)], "device node"),
    "file-over-dir": ([(info("./usr/x", tarfile.DIRTYPE, 0o755), None),
                       (info("./usr/x"), b"x")], "is a directory"),
}


def _check_clean(tmp_path: Path, out: Path, outside: Path, proc) -> None:
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert list(out.iterdir()) == [] if out.exists() else True  # no image, no leftovers
    assert sorted(p.name for p in outside.iterdir()) == ["sentinel"]
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_refused(tmp_path, cache_dir, case):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel").write_text("untouched")
    entries, expected = HOSTILE[case]
    entries = [(copy.copy(ti), data) for ti, data in entries]  # the table stays pristine
    for ti, _ in entries:
        ti.linkname = ti.linkname.replace("{outside}", str(outside).lstrip("/")
                                          if ti.linkname.startswith("../") else str(outside))
    deb = make_deb(tmp_path / "evil.deb", entries)
    recipe = write_recipe(tmp_path / "r", f'[extension]\nname = "evil"\n[target]\nid = "debian"\n'
                                          f'[[source]]\ndeb = "{deb}"\n')
    out = tmp_path / "out"
    proc = run_cli("build", str(recipe), "-o", str(out), "--cache-dir", str(cache_dir))
    _check_clean(tmp_path, out, outside, proc)
    assert "evil.deb" in proc.stderr and expected in proc.stderr, proc.stderr
    assert (outside / "sentinel").read_text() == "untouched"


def test_truncated_payload(tmp_path, cache_dir):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel").write_text("x")
    entries = [(info(f"./usr/share/f{i}"), bytes(range(256)) * 400) for i in range(20)]
    deb = make_deb(tmp_path / "cut.deb", entries, truncate=True)
    recipe = write_recipe(tmp_path / "r", f'[extension]\nname = "cut"\n[target]\nid = "debian"\n'
                                          f'[[source]]\ndeb = "{deb}"\n')
    out = tmp_path / "out"
    proc = run_cli("build", str(recipe), "-o", str(out), "--cache-dir", str(cache_dir))
    _check_clean(tmp_path, out, outside, proc)
    assert "cut.deb" in proc.stderr and "data.tar.xz" in proc.stderr


def test_wrong_sha256(tmp_path, packages, cache_dir):
    recipe = write_recipe(tmp_path / "r", f'[extension]\nname = "x"\n[target]\nid = "debian"\n'
                                          f'[[source]]\ndeb = "{packages["deb"]}"\n'
                                          f'sha256 = "{"0" * 64}"\n')
    out = tmp_path / "out"
    proc = run_cli("build", str(recipe), "-o", str(out), "--cache-dir", str(cache_dir))
    assert proc.returncode == 2
    assert "sha256 mismatch" in proc.stderr and "hello-tools_1.0-1_amd64.deb" in proc.stderr
    assert not out.exists() or list(out.iterdir()) == []


def test_failed_rebuild_keeps_previous_image(tmp_path, packages, cache_dir):
    """A failing build never replaces or half-writes an existing image."""
    good = write_recipe(tmp_path / "r", f'[extension]\nname = "keep"\n[target]\nid = "debian"\n'
                                        f'[[source]]\ndeb = "{packages["deb"]}"\n')
    out = tmp_path / "out"
    assert run_cli("build", str(good), "-o", str(out), "--cache-dir", str(cache_dir)).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    deb = make_deb(tmp_path / "evil.deb", HOSTILE["absolute"][0])
    bad = write_recipe(tmp_path / "r", f'[extension]\nname = "keep"\n[target]\nid = "debian"\n'
                                       f'[[source]]\ndeb = "{deb}"\n')
    assert run_cli("build", str(bad), "-o", str(out), "--cache-dir", str(cache_dir)).returncode == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
