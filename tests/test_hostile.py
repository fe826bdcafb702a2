"""Hostile and broken packages: a clear error naming the member, exit 2, nothing written outside
the staging root and nothing in the output directory.

dpkg-deb refuses to build such packages, so these are assembled by hand (ar + tar) — the
readers and the staging writer must not trust what they did not make.
"""

from __future__ import annotations

import copy
import io
import lzma
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from conftest import run_cli
from recipes_kit import CliResult, build_cli, cli_argv, cli_env, recipe_dict, write_recipe_dict
from test_tools import processes_with


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    out.write(b"!<arch>\n")
    for name, data in members:
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
        out.write(header + data + (b"\n" if len(data) % 2 else b""))
    return out.getvalue()


def _tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            info.mtime = 1700000000
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def info(name: str, kind=tarfile.REGTYPE, mode=0o644, linkname="", xattrs=None
         ) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.linkname = kind, mode, linkname
    ti.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in (xattrs or {}).items()}
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
    # trusted.overlay.opaque on usr/lib would hide the host's /usr/lib once merged
    "overlay-opaque-xattr": ([(info("./usr", tarfile.DIRTYPE, 0o755), None),
                              (info("./usr/lib", tarfile.DIRTYPE, 0o755,
                                    xattrs={"trusted.overlay.opaque": "y"}), None)],
                             "trusted.overlay.opaque"),
    "selinux-label": ([(info("./usr/bin/x", xattrs={"security.selinux": "system_u:x"}), b"x")],
                      "security.selinux"),
    "newline-in-name": ([(info("./usr/bin/a\nb"), b"x")], "control characters"),
    "not-utf8-name": ([(info("./usr/bin/caf\udce9"), b"x")], "not UTF-8"),
}


def _check_clean(tmp_path: Path, out: Path, outside: Path, proc) -> None:
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert list(out.iterdir()) == [] if out.exists() else True  # no image, no leftovers
    assert sorted(p.name for p in outside.iterdir()) == ["sentinel"]
    assert not (tmp_path / "evil").exists()


def one_deb(tmp_path: Path, name: str, deb: Path, **source) -> Path:
    """``tmp_path/r/recipe.toml``: the image ``name`` of ``deb`` alone (``source``: more keys
    of its [[source]]) for any Debian."""
    return write_recipe_dict(tmp_path / "r", recipe_dict(name, target={"id": "debian"},
                                                         sources=[{"deb": deb, **source}]))


def try_build(recipe: Path, out: Path, cache_dir: Path, *args: str) -> CliResult:
    """``build RECIPE -o OUT`` whatever its exit code."""
    return build_cli(recipe, out, *args, cache_dir=cache_dir, json_out=False, expect=None)


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
    recipe = one_deb(tmp_path, "evil", deb)
    out = tmp_path / "out"
    proc = try_build(recipe, out, cache_dir)
    _check_clean(tmp_path, out, outside, proc)
    assert "evil.deb" in proc.stderr and expected in proc.stderr, proc.stderr
    assert (outside / "sentinel").read_text() == "untouched"


def test_truncated_payload(tmp_path, cache_dir):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel").write_text("x")
    entries = [(info(f"./usr/share/f{i}"), bytes(range(256)) * 400) for i in range(20)]
    deb = make_deb(tmp_path / "cut.deb", entries, truncate=True)
    recipe = one_deb(tmp_path, "cut", deb)
    out = tmp_path / "out"
    proc = try_build(recipe, out, cache_dir)
    _check_clean(tmp_path, out, outside, proc)
    assert "cut.deb" in proc.stderr and "data.tar.xz" in proc.stderr


def test_wrong_sha256(tmp_path, packages, cache_dir):
    recipe = one_deb(tmp_path, "x", packages["deb"], sha256="0" * 64)
    out = tmp_path / "out"
    proc = try_build(recipe, out, cache_dir)
    assert proc.returncode == 2
    assert "sha256 mismatch" in proc.stderr and "hello-tools_1.0-1_amd64.deb" in proc.stderr
    assert not out.exists() or list(out.iterdir()) == []


def test_failed_rebuild_keeps_previous_image(tmp_path, packages, cache_dir):
    """A failing build never replaces or half-writes an existing image."""
    good = one_deb(tmp_path, "keep", packages["deb"])
    out = tmp_path / "out"
    assert try_build(good, out, cache_dir).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    deb = make_deb(tmp_path / "evil.deb", HOSTILE["absolute"][0])
    bad = one_deb(tmp_path, "keep", deb)
    assert try_build(bad, out, cache_dir).returncode == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("case", ["symlink-then-write", "device-node", "file-over-dir",
                                  "overlay-opaque-xattr", "hardlink-dangling"])
def test_plan_refuses_what_build_refuses(tmp_path, cache_dir, case):
    """plan runs the same judgement on recording trees: no "plan OK, build fails"."""
    outside = tmp_path / "outside"
    outside.mkdir()
    entries = [(copy.copy(ti), data) for ti, data in HOSTILE[case][0]]
    for ti, _ in entries:
        ti.linkname = ti.linkname.replace("{outside}", str(outside))
    deb = make_deb(tmp_path / "evil.deb", entries)
    recipe = one_deb(tmp_path, "evil", deb)
    plan = run_cli("plan", str(recipe), "--cache-dir", str(cache_dir))
    built = try_build(recipe, tmp_path / "out", cache_dir)
    assert plan.returncode == built.returncode == 2
    assert plan.stderr.splitlines()[-1] == built.stderr.splitlines()[-1]


def test_user_xattrs_are_dropped_and_said(tmp_path, cache_dir):
    deb = make_deb(tmp_path / "x.deb", [(info("./usr/bin/x", xattrs={"user.origin": "web"}),
                                         b"x")])
    recipe = one_deb(tmp_path, "x", deb)
    proc = build_cli(recipe, tmp_path / "out", cache_dir=cache_dir)
    assert "usr/bin/x: user.origin" in proc.stderr
    manifest = (tmp_path / "out" / "x.manifest.json").read_text()
    assert "user.origin" not in manifest


def _slow_recipe(tmp_path: Path) -> Path:
    """A payload mksquashfs needs a few seconds for: random bytes compressed with xz."""
    from pkgfactory import build_deb, file

    deb = build_deb(tmp_path / "pkg", "slow", "1.0",
                    [file(f"/usr/share/slow/blob{i}", os.urandom(24 << 20)) for i in range(3)],
                    compression="none")
    return write_recipe_dict(tmp_path / "r", recipe_dict("slow", sources=[deb],
                                                         image={"compression": "xz"}))


def _packers(out: Path) -> list[int]:
    """Pids of running mksquashfs processes (exec'd: not the wrapper before it) whose command
    line names ``out``."""
    return processes_with(str(out), "mksquashfs")


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except (OSError, IndexError):
        return None


def test_sigterm_cleans_up_and_stops_the_packer(tmp_path, cache_dir):
    """The packer is stopped (SIGSTOP) before the build gets SIGTERM: it cannot finish by
    itself then, so its end can only be the build's doing, and the wait for it may be long."""
    recipe = _slow_recipe(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.Popen(cli_argv("build", recipe, "-o", out, "--cache-dir", cache_dir),
                            env=cli_env(), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (packers := _packers(out)):
        assert time.monotonic() < deadline and proc.poll() is None, "mksquashfs never started"
        time.sleep(0.05)
    try:
        for pid in packers:
            os.kill(pid, signal.SIGSTOP)
        while not all(_state(pid) in ("T", "Z", None) for pid in packers):
            assert time.monotonic() < deadline, "mksquashfs did not stop"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 143
        assert "error: terminated" in proc.stderr.read()
        assert list(out.iterdir()) == []  # no image, no work tree
        deadline = time.monotonic() + 60
        while [pid for pid in packers if _state(pid) not in ("Z", None)]:
            assert time.monotonic() < deadline, "mksquashfs outlived the terminated build"
            time.sleep(0.02)
    finally:  # a packer the test stopped never stays behind, whatever failed
        for pid in packers:
            try:
                if str(out).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_work_tree_of_a_killed_build_is_removed_next_time(tmp_path, packages, cache_dir):
    out = tmp_path / "out"
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    abandoned = out / f".keep.build-{dead.pid}-xyz"
    (abandoned / "root" / "ro").mkdir(parents=True)
    (abandoned / "root" / "ro" / "f").write_text("x")
    (abandoned / "root" / "ro").chmod(0o555)
    alive = out / ".keep.build-abc"  # a build still running holds its tree's flock: left alone
    alive.mkdir()
    recipe = one_deb(tmp_path, "keep", packages["deb"])
    from pipeline.outdir import locked
    with locked(alive):
        assert try_build(recipe, out, cache_dir).returncode == 0
    assert not abandoned.exists() and alive.exists()
