"""Developer and CI entry points.

Run as ``python3 noxfile.py -s SESSION`` on a fresh machine: when nox itself is missing, this
file makes a private virtual environment with nox in ``.nox/_bootstrap`` and re-runs itself there
(so the README's two commands need nothing installed first). ``nox -s SESSION`` works as usual.

System tools (mksquashfs, mkfs.erofs, rpmbuild, ...) are installed with apt-get when running as
root; otherwise the session stops with the exact apt-get command to run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _bootstrap() -> None:
    """Re-exec under a venv that has nox (only when nox is not importable)."""
    venv = HERE / ".nox" / "_bootstrap"
    python = venv / "bin" / "python"
    if not python.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        except subprocess.CalledProcessError:
            shutil.rmtree(venv, ignore_errors=True)
            package = f"python3.{sys.version_info.minor}-venv"
            if os.geteuid() == 0 and shutil.which("apt-get"):
                _apt_install([package, "python3-venv"])
                subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            else:
                sys.exit(f"error: python venv support is missing (apt-get install {package})")
        subprocess.run([str(python), "-m", "pip", "install", "-q", "nox>=2024.4"], check=True)
    os.execv(str(python), [str(python), __file__, *sys.argv[1:]])


def _apt_install(packages: list[str]) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=False, env=env, stdout=subprocess.DEVNULL)
    available = [p for p in packages if subprocess.run(
        ["apt-cache", "show", p], capture_output=True, env=env).returncode == 0]
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *available],
                   check=True, env=env)


try:
    import nox
except ImportError:  # pragma: no cover - exercised on fresh machines only
    if __name__ == "__main__":
        _bootstrap()
    raise

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

DEFAULT_RECIPE = "recipes/debug-tools.toml"

#: tool → Debian package(s) (first available wins: names differ between releases).
BUILD_TOOLS = {"mksquashfs": ["squashfs-tools"], "mkfs.erofs": ["erofs-utils"],
               "systemd-repart": ["systemd-repart", "systemd"],
               "veritysetup": ["cryptsetup-bin"], "sfdisk": ["fdisk"]}
TEST_TOOLS = {
    **BUILD_TOOLS,
    "unsquashfs": ["squashfs-tools"], "fsck.erofs": ["erofs-utils"], "dpkg-deb": ["dpkg"],
    "rpmbuild": ["rpm"], "rpm2cpio": ["rpm"], "cpio": ["cpio"], "openssl": ["openssl"],
    "unshare": ["util-linux"], "systemd-sysext": ["systemd"], "apt-ftparchive": ["apt-utils"],
    "dpkg-scanpackages": ["dpkg-dev"], "createrepo_c": ["createrepo-c"], "faketime": ["faketime"],
    "disorderfs": ["disorderfs"], "dump.erofs": ["erofs-utils"],
    "gpg": ["gnupg"], "gpgv": ["gpgv"], "ps": ["procps"], "chattr": ["e2fsprogs"],
    "xz": ["xz-utils"], "file": ["file"], "losetup": ["mount"], "setpriv": ["util-linux"],
    "systemd-tmpfiles": ["systemd"],
}


def ensure_tools(session: nox.Session, tools: dict[str, list[str]]) -> None:
    """Install missing system tools with apt-get as root; otherwise name the command to run."""
    search = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = {t: pkgs for t, pkgs in tools.items() if shutil.which(t, path=search) is None}
    if not missing:
        return
    packages = sorted({p for pkgs in missing.values() for p in pkgs})
    if os.geteuid() == 0 and shutil.which("apt-get"):
        session.log(f"installing {', '.join(packages)} for {', '.join(sorted(missing))}")
        _apt_install(packages)
        still = [t for t in missing if shutil.which(t, path=search) is None]
        if still:
            session.error(f"still missing after apt-get: {', '.join(still)}")
        return
    first = sorted({pkgs[0] for pkgs in missing.values()})
    session.error(f"missing tools {', '.join(sorted(missing))}: run "
                  f"`sudo apt-get install {' '.join(first)}` and try again")


def ensure_apt_lists(session: nox.Session) -> None:
    """`apt` sources need package lists; a fresh machine has none until `apt-get update`."""
    lists = Path("/var/lib/apt/lists")
    if any(lists.glob("*_Packages*")):
        return
    if os.geteuid() == 0:
        session.log("no apt package lists yet: running apt-get update")
        subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL)
    else:
        session.warn("no apt package lists: apt sources will fail until `sudo apt-get update`")


@nox.session
def build(session: nox.Session) -> None:
    """Build a recipe (default: the example) into ./out: nox -s build [-- RECIPE [ARGS]]."""
    ensure_tools(session, BUILD_TOOLS)
    ensure_apt_lists(session)
    session.install("-e", ".")
    args = session.posargs or [DEFAULT_RECIPE]
    session.run("sysext-pipeline", "build", *args)


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, with real tools (nox -s tests [-- PYTEST ARGS])."""
    ensure_tools(session, TEST_TOOLS)
    session.install("-e", ".[test]")
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "pipeline", "tests", "noxfile.py")


@nox.session
def reprotest(session: nox.Session) -> None:
    """Rebuild under varied environments (TZ, locale, umask, user, clock, file order, ...) and
    print the table per format: the variation tests, then `verify --vary all` of each recipe
    given (nox -s reprotest [-- RECIPE ...]; default: the offline confext example)."""
    import json

    ensure_tools(session, TEST_TOOLS)
    session.install("-e", ".[test]")
    session.run("pytest", "-q", "-rsx", "tests/test_vary.py")
    out = Path(session.create_tmp()) / "reprotest"
    for recipe in session.posargs or ["recipes/debug-config.toml"]:
        built = session.run("sysext-pipeline", "build", recipe, "-o", str(out), "--json", "-q",
                            silent=True)
        for image in json.loads(built)["images"]:
            session.run("sysext-pipeline", "verify", image["manifest"], "--recipe", recipe,
                        "--vary", "all", "-q")


@nox.session
def bench(session: nox.Session) -> None:
    """Example recipe vs. the plain tools (times, ratio, peak memory), then diff's memory on
    500 MB images against 50 MB ones, all in the same run."""
    ensure_tools(session, BUILD_TOOLS)
    session.install("-e", ".")
    session.run("python", "tests/bench.py", *session.posargs)
    session.run("python", "tests/bench_diff.py", "--mb", "500")


if __name__ == "__main__":
    sys.exit(nox.main())
