"""Run the CLI (or any Python code of the project) as an unprivileged user, for real.

The checkout may live anywhere (``/root/...`` is 0700), the interpreter too (a pyenv build under
``/root``), and pytest's temporary directories are 0700: none of that is readable by ``nobody``.
So this module makes a world-readable copy of what a run needs, once per session, under a
world-readable temporary directory:

- ``src/pipeline``: a copy of the project's package (the code under test, as it is now);
- ``venv/``: a virtual environment whose ``bin/python`` is a base interpreter the user can run
  (this interpreter's base if the user can read it, else the system's ``/usr/bin/python3.X`` of
  the same version) and whose site-packages is a copy of this interpreter's (the project's
  dependencies: cryptography, pyzstd, ...), without the editable install that points back into
  the checkout.

The user is switched with ``setpriv --reuid --regid --clear-groups`` (util-linux), which needs
root. Nothing here fakes a uid: the child really is that user.

API::

    env = UnprivilegedEnv.create()            # or the ``unprivileged`` session fixture
    env.run_cli("nobody", "build", "r.toml", cwd=work)   # python -m pipeline build r.toml
    env.run_python("nobody", "-c", "import pipeline")
    work = env.make_workdir()                 # a fresh world-writable directory under env.root
    run_cli_as("nobody", "plan", "r.toml", cwd=work)     # module-level, one shared env

Prerequisites that are missing (not root, no setpriv, no interpreter the user can run) go
through ``prereq.missing``: a skip locally, a failure under ``CI=true``.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from prereq import missing, require_tool

REPO = Path(__file__).resolve().parent.parent

#: Distributions of the test venv that the CLI never needs (saves copying ~20 MB each session).
_SKIP_TOP = {"pip", "setuptools", "_distutils_hack", "pygments", "__pycache__", "wheel"}


def _user_ids(user: str | int) -> tuple[int, int]:
    entry = pwd.getpwuid(user) if isinstance(user, int) else pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _setpriv(user: str | int) -> list[str]:
    uid, gid = _user_ids(user)
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]


def _world_traversable(path: Path) -> bool:
    """Every directory from / to ``path`` can be entered by others."""
    for p in (path, *path.parents):
        try:
            if not p.stat().st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


def _open_up(root: Path) -> None:
    """a+rX on everything under root (directories enterable, files readable)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                mode = os.stat(path).st_mode
                os.chmod(path, (mode | 0o444 | (0o111 if mode & 0o100 else 0)) & 0o7777)


_IDENTITY = "import sys; print(sys.prefix, sys.version)"


def _runs_as(user: str | int, python: str) -> bool:
    """``user`` can read ``python`` and runs the very same interpreter (prefix and version) as
    we do: a binary under an unreadable directory may still start but then find another
    interpreter's library and standard library."""
    env = {"PATH": "/usr/bin:/bin"}
    ours = subprocess.run([python, "-c", _IDENTITY], capture_output=True, text=True, env=env,
                          cwd="/")
    theirs = subprocess.run([*_setpriv(user), python, "-c", _IDENTITY], capture_output=True,
                            text=True, env=env, cwd="/")
    readable = subprocess.run([*_setpriv(user), "test", "-r", python], env=env, cwd="/")
    return (ours.returncode == theirs.returncode == readable.returncode == 0
            and ours.stdout == theirs.stdout)


def _base_interpreter(user: str | int) -> str | None:
    """A CPython of this version that ``user`` can execute (compiled extensions stay valid)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    base = getattr(sys, "_base_executable", None) or sys.executable
    candidates = [os.path.realpath(base), os.path.realpath(sys.executable),
                  f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]
    for candidate in candidates:
        if os.path.isfile(candidate) and _runs_as(user, candidate):
            probe = subprocess.run(
                [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True, text=True)
            if probe.stdout.strip() == version:
                return candidate
    return None


class UnprivilegedEnv:
    """A world-readable interpreter + project copy, and runners that switch user."""

    def __init__(self, root: Path, python: Path, src: Path):
        self.root, self.python, self.src = root, python, src

    @classmethod
    def create(cls, user: str | int = "nobody") -> UnprivilegedEnv:
        if os.geteuid() != 0:
            missing("running as another user needs root (setpriv)")
        require_tool("setpriv", "util-linux")
        base = _base_interpreter(user)
        if base is None:
            missing(f"no python{sys.version_info.major}.{sys.version_info.minor} that "
                    f"{user} can run (this one: {os.path.realpath(sys.executable)}; "
                    "apt-get install python3)")
        parent = Path(tempfile.gettempdir())
        if not _world_traversable(parent):
            parent = Path("/tmp")
        root = Path(tempfile.mkdtemp(prefix="sysext-unprivileged-", dir=parent))
        try:
            src = root / "src"
            shutil.copytree(REPO / "pipeline", src / "pipeline",
                            ignore=shutil.ignore_patterns("__pycache__"))
            python = cls._make_venv(root / "venv", Path(base))
            _open_up(root)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        env = cls(root, python, src)
        probe = env.run_python(user, "-c", "import pipeline.commands.cli, cryptography, pyzstd")
        if probe.returncode != 0:
            env.cleanup()
            missing(f"{user} cannot import the project from {root}: {probe.stderr.strip()}")
        return env

    @staticmethod
    def _make_venv(venv: Path, base: Path) -> Path:
        """A venv by hand (no ensurepip/python3-venv needed): pyvenv.cfg, bin/python, and a copy
        of this interpreter's site-packages minus the editable install of the checkout."""
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        (venv / "bin").mkdir(parents=True)
        full = subprocess.run([str(base), "-c", "import platform; print(platform.python_version())"],
                              capture_output=True, text=True, check=True).stdout.strip()
        (venv / "pyvenv.cfg").write_text(
            f"home = {base.parent}\ninclude-system-site-packages = false\nversion = {full}\n")
        python = venv / "bin" / "python"
        python.symlink_to(base)
        (venv / "bin" / f"python{version}").symlink_to("python")
        (venv / "bin" / "python3").symlink_to("python")
        site = venv / "lib" / f"python{version}" / "site-packages"
        site.mkdir(parents=True)
        seen: set[str] = set()
        for key in ("purelib", "platlib"):
            source = Path(sysconfig.get_paths()[key])
            if str(source) in seen or not source.is_dir():
                continue
            seen.add(str(source))
            for entry in source.iterdir():
                name = entry.name
                if (name in _SKIP_TOP or name.startswith("__editable__")
                        or name.endswith(".pth") or name.startswith(("pip-", "setuptools-"))
                        or name.startswith("sysext_pipeline")):
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.copytree(entry, site / name, dirs_exist_ok=True,
                                    ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(entry, site / name, follow_symlinks=False)
        return python

    def environment(self, env: dict | None = None) -> dict[str, str]:
        """The child's environment: minimal, with the copy first on PYTHONPATH."""
        path = os.environ.get("PATH", "/usr/bin:/bin")
        if "/usr/sbin" not in path.split(":"):
            path += ":/usr/sbin:/sbin"
        full = {"PATH": path, "PYTHONPATH": str(self.src), "LANG": "C.UTF-8",
                "HOME": str(self.root), "TMPDIR": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"}
        for key in ("CI", "TERM"):
            if key in os.environ:
                full[key] = os.environ[key]
        full.update(env or {})
        return full

    def run_python(self, user: str | int | None, *args: str, cwd: Path | str | None = None,
                   env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
        """``python ARGS`` as ``user`` (a name or a uid; None: this process's user, for a run
        whose children switch user themselves) with the world-readable interpreter."""
        prefix = _setpriv(user) if user is not None else []
        return subprocess.run([*prefix, str(self.python), *args],
                              cwd=str(cwd or self.root), env=self.environment(env),
                              capture_output=True, text=True, timeout=timeout)

    def run_cli(self, user: str | int | None, *args: str, cwd: Path | str | None = None,
                env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
        """``python -m pipeline ARGS`` as ``user``: a separate process, real exit code."""
        return self.run_python(user, "-m", "pipeline", *args, cwd=cwd, env=env, timeout=timeout)

    def make_workdir(self, owner: str | int | None = None, mode: int = 0o777) -> Path:
        """A fresh directory under the world-readable root (pytest's tmp dirs are 0700); given
        ``owner``, it belongs to that user. Removed with the environment."""
        work = Path(tempfile.mkdtemp(prefix="work-", dir=self.root))
        os.chmod(work, mode)
        if owner is not None:
            os.chown(work, *_user_ids(owner))
        return work

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


_SHARED: UnprivilegedEnv | None = None


def shared_env() -> UnprivilegedEnv:
    """One environment per process (what the ``unprivileged`` fixture returns too)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = UnprivilegedEnv.create()
        atexit.register(_SHARED.cleanup)
    return _SHARED


def run_cli_as(user: str | int, *args: str, cwd: Path | str | None = None,
               env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """``python -m pipeline ARGS`` as ``user`` with the shared world-readable environment."""
    return shared_env().run_cli(user, *args, cwd=cwd, env=env, timeout=timeout)
