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
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,
                           capture_output=True)  # Debian without python3-venv: install below
        except subprocess.CalledProcessError:
            shutil.rmtree(venv, ignore_errors=True)
            package = f"python3.{sys.version_info.minor}-venv"
            if os.geteuid() == 0 and shutil.which("apt-get"):
                print(f"noxfile: installing {package} with apt-get (python venv support)")
                _apt_install([], [[package, "python3-venv"]])
                subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            else:
                sys.exit(f"error: python venv support is missing (apt-get install {package})")
        subprocess.run([str(python), "-m", "pip", "install", "-q", "nox>=2024.4"], check=True)
    os.execv(str(python), [str(python), __file__, *sys.argv[1:]])


def _apt_env() -> dict[str, str]:
    return dict(os.environ, DEBIAN_FRONTEND="noninteractive")


def _candidate(package: str) -> bool:
    proc = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True,
                          env=_apt_env())
    return "Candidate:" in proc.stdout and "Candidate: (none)" not in proc.stdout


def _apt_install(packages: list[str], alternatives: list[list[str]] | None = None) -> None:
    """Install ``packages`` (and, of each list in ``alternatives``, the first one the archive
    has) quietly, never upgrading what is installed; ``apt-get update`` only when needed."""
    env = _apt_env()
    quiet = ["-qq", "-o", "Dpkg::Use-Pty=0"]
    groups = [[p] for p in packages] + list(alternatives or [])
    if not all(any(_candidate(p) for p in group) for group in groups):
        subprocess.run(["apt-get", "update", *quiet], check=False, env=env,
                       stdout=subprocess.DEVNULL)
    chosen = [next((p for p in group if _candidate(p)), group[0]) for group in groups]
    proc = subprocess.run(["apt-get", "install", "-y", *quiet, "--no-install-recommends",
                           "--no-upgrade", *chosen], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:  # quiet unless it fails: then everything apt and dpkg said
        sys.stderr.write(proc.stdout)
        raise subprocess.CalledProcessError(proc.returncode, proc.args)


try:
    import nox
except ImportError:  # pragma: no cover - exercised on fresh machines only
    if __name__ == "__main__":
        _bootstrap()
    raise

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

DEFAULT_RECIPE = "recipes/debug-tools.toml"

def _system_packages() -> list[tuple[str, list[str], set[str]]]:
    """Every system package the project and its tests need, read from the one table of external
    tools (``TOOLS`` in pipeline/tools.py, which only needs the standard library): a probe (a
    command on PATH, or an absolute path the package installs), the Debian package(s) providing
    it (the first one the archive has wins: names differ between releases) and the sessions that
    need it (build: a ``build`` verb uses it; tests: anything but the fresh session; fresh)."""
    sys.path.insert(0, str(HERE))
    try:
        from pipeline.tools import TOOLS
    finally:
        sys.path.remove(str(HERE))
    rows = []
    for tool in TOOLS:
        sessions = {"tests"} if any(use != "fresh" for use in tool.uses) else set()
        if any(use.partition(":")[0] == "build" for use in tool.uses):
            sessions.add("build")
        if "fresh" in tool.uses:
            sessions.add("fresh")
        rows.append((tool.name, list(tool.packages), sessions))
    return rows


SYSTEM_PACKAGES: list[tuple[str, list[str], set[str]]] = _system_packages()


def _present(probe: str) -> bool:
    if probe.startswith("/"):
        return os.path.exists(probe)
    return shutil.which(probe, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is not None


def ensure_system_packages(session: nox.Session, use: str) -> None:
    """Install what ``use`` needs and is missing (apt-get as root; otherwise name the command)."""
    rows = [(probe, pkgs) for probe, pkgs, uses in SYSTEM_PACKAGES if use in uses]
    missing = [(probe, pkgs) for probe, pkgs in rows if not _present(probe)]
    if not missing:
        return
    probes = ", ".join(probe for probe, _ in missing)
    if os.geteuid() == 0 and shutil.which("apt-get"):
        groups: list[list[str]] = []
        for _, pkgs in missing:
            if pkgs not in groups:
                groups.append(pkgs)
        names = ", ".join(g[0] for g in groups)
        session.log(f"installing system packages with apt-get: {names} (for {probes})")
        _apt_install([], groups)
        still = [probe for probe, _ in missing if not _present(probe)]
        if still:
            session.error(f"still missing after apt-get: {', '.join(still)}")
        return
    first = sorted({pkgs[0] for _, pkgs in missing})
    session.error(f"missing {probes}: run `sudo apt-get install {' '.join(first)}` and try again")


def ensure_apt_lists(session: nox.Session) -> None:
    """`apt` sources need package lists; a fresh machine has none until `apt-get update`."""
    lists = Path("/var/lib/apt/lists")
    if any(lists.glob("*_Packages*")):
        return
    if os.geteuid() == 0:
        session.log("no apt package lists yet: running apt-get update")
        subprocess.run(["apt-get", "update", "-qq"], check=True, stdout=subprocess.DEVNULL)
    else:
        session.warn("no apt package lists: apt sources will fail until `sudo apt-get update`")


@nox.session
def build(session: nox.Session) -> None:
    """Build a recipe (default: the example) into ./out: nox -s build [-- RECIPE [ARGS]]."""
    ensure_system_packages(session, "build")
    ensure_apt_lists(session)
    session.install("-e", ".")
    args = session.posargs or [DEFAULT_RECIPE]
    session.run("sysext-pipeline", "build", *args)


def _kernel_deselection(session: nox.Session) -> list[str]:
    """Tests marked ``device_mapper`` merge a signed DDI through dm-verity: a kernel without
    device-mapper cannot run them at all (no package installs it), so they are deselected there,
    said in one line, rather than failed; everywhere else they run."""
    try:
        os.close(os.open("/dev/mapper/control", os.O_RDWR))
    except OSError:
        session.log("this kernel has no device-mapper (/dev/mapper/control): deselecting the "
                    "tests marked device_mapper (merging a signed DDI through dm-verity)")
        return ["-m", "not device_mapper"]
    return []


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, with real tools (nox -s tests [-- PYTEST ARGS])."""
    ensure_system_packages(session, "tests")
    session.install("-e", ".[test]")
    from nox.command import CommandFailed

    try:
        session.run("pytest", *(session.posargs or ["-q", *_kernel_deselection(session)]))
    except CommandFailed as exc:
        if getattr(exc, "return_code", None) == 5:  # pytest: nothing collected
            session.error("pytest collected no tests (exit 5): the selection matched nothing")
        raise


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

    ensure_system_packages(session, "tests")
    session.install("-e", ".[test]")
    session.run("pytest", "-q", "-rsx", "tests/test_vary.py", "tests/test_vary_select.py")
    out = Path(session.create_tmp()) / "reprotest"
    for recipe in session.posargs or ["recipes/debug-config.toml"]:
        built = session.run("sysext-pipeline", "build", recipe, "-o", str(out), "--json", "-q",
                            silent=True)
        for image in json.loads(built)["images"]:
            session.run("sysext-pipeline", "verify", image["manifest"], "--recipe", recipe,
                        "--vary", "all", "-q")


@nox.session
def bench(session: nox.Session) -> None:
    """Issue 14's benchmark: the payload51 recipe vs. the plain tools (interleaved rounds),
    every target: the image kinds, up to date, plan, startup, memory, the catalogue and the
    100/500/1,000 MB scaling, with each side's time per phase (bench/results.json and
    results.md, one line per target); then diff's memory on 500 MB images against 50 MB ones.
    About 11 min on 2 cores: ``-- --skip scale`` leaves the scaling out (and ``--skip
    catalogue`` the catalogue); ``-- --quick``: the 9-package example recipe only."""
    ensure_system_packages(session, "build")
    session.install("-e", ".")
    session.run("python", "tests/bench.py", *session.posargs)
    session.run("python", "tests/bench_diff.py", "--mb", "500")


# --- fresh: the README's two commands on a fresh minimal Debian 12 ----------------------------

FRESH_SUITE = "bookworm"
FRESH_INCLUDE = "git,python3,ca-certificates"


def _host_mirror(suite: str) -> str:
    """The URI the host's apt configuration uses for ``suite`` (deb822 or one-line format)."""
    etc = Path("/etc/apt")
    files = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list")),
             *sorted((etc / "sources.list.d").glob("*.sources"))]
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in text.split("\n\n"):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if ":" in line and not line.startswith(("#", " ")):
                        key, _, value = line.partition(":")
                        fields[key.strip().lower()] = value.strip()
                if ("deb" in fields.get("types", "").split()
                        and fields.get("enabled", "yes").lower() != "no"
                        and suite in fields.get("suites", "").split() and fields.get("uris")):
                    return fields["uris"].split()[0]
        else:
            for line in text.splitlines():
                words = line.split("#", 1)[0].split()
                if words[:1] == ["deb"]:
                    words = [w for w in words[1:] if not w.startswith("[")]
                    if len(words) >= 2 and words[1] == suite:
                        return words[0]
    raise RuntimeError(f"no deb source for {suite} in /etc/apt/sources.list(.d)")


def _quick_start_commands() -> list[str]:
    """The README's Quick start commands, exactly as written (comments dropped)."""
    text = (HERE / "README.md").read_text()
    section = text.split("## Quick start", 1)[1]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split(" #", 1)[0].strip() for line in block.splitlines()]
    return [c for c in commands if c and not c.startswith("#")]


def _try_it_commands() -> list[str]:
    """What shows that the built tool answers, from the README's "Try it" block: its
    ``. …/activate`` line before ``sysext-pipeline --version`` and before each of the block's
    ``sysext-pipeline`` commands up to the first that changes the machine (``install``)."""
    text = (HERE / "README.md").read_text()
    section = text.split("Try it on this machine", 1)
    if len(section) != 2 or "```sh" not in section[1]:
        raise RuntimeError('README: no "Try it on this machine" block')
    block = section[1].split("```sh", 1)[1].split("```", 1)[0]
    lines = [line.split(" #", 1)[0].strip() for line in block.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    activate = [line for line in lines if line.startswith(". ")]
    reads = []
    for line in lines:
        if line.startswith("sysext-pipeline install") or " install " in f" {line} ":
            break
        if line.startswith("sysext-pipeline "):
            reads.append(line)
    if len(activate) != 1 or not reads:
        raise RuntimeError(f"README Try it: expected one activate line and a sysext-pipeline "
                           f"command before install, found {lines}")
    return [f"{activate[0]} && {command}" for command in ["sysext-pipeline --version", *reads]]


def _fresh_tarball(session: nox.Session, mirror: str) -> Path:
    """A minbase tarball, cached per day (reruns the same day start in seconds)."""
    import datetime

    root_cache = Path("/var/cache/sysext-pipeline") if os.geteuid() == 0 else \
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sysext-pipeline"
    cache = root_cache / "fresh"
    cache.mkdir(parents=True, exist_ok=True)
    day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d")
    tarball = cache / f"{FRESH_SUITE}-minbase-{day}.tar"
    if tarball.exists():
        session.log(f"fresh: cached tree {tarball}")
        return tarball
    for old in cache.glob(f"{FRESH_SUITE}-minbase-*.tar*"):
        old.unlink()
    partial = cache / f".{tarball.name}.{os.getpid()}"
    session.log(f"fresh: mmdebstrap --variant=minbase {FRESH_SUITE} (with {FRESH_INCLUDE})")
    try:
        session.run("mmdebstrap", "--quiet", "--variant=minbase", f"--include={FRESH_INCLUDE}",
                    "--format=tar", FRESH_SUITE, str(partial),
                    f"deb {mirror} {FRESH_SUITE} main", external=True)
        partial.rename(tarball)
    finally:
        partial.unlink(missing_ok=True)
    return tarball


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line.split()[4] for line in lines if (line.split()[4] + "/").startswith(prefix)]


#: Host apt settings the fresh tree inherits: those that describe the archive the host reaches.
_APT_SETTINGS = ("Acquire::Check-Valid-Until", "Acquire::Check-Date")


def _copy_apt_settings(tree: Path) -> None:
    lines = []
    for key in _APT_SETTINGS:
        proc = subprocess.run(["apt-config", "shell", "V", key], capture_output=True, text=True)
        value = proc.stdout.strip().partition("=")[2].strip("'\"")
        if proc.returncode == 0 and value in ("true", "false"):
            lines.append(f'{key} "{value}";\n')
    if lines:
        (tree / "etc/apt/apt.conf.d/90host-archive").write_text("".join(lines))


_FRESH_SCRIPT = r"""
set -eu
tree=$1; shift
mount --make-rprivate /
mount --bind "$tree" "$tree"  # the chroot's / is a mount point, as on a machine (unshare -m)
mount -t proc proc "$tree/proc"
mount --rbind /sys "$tree/sys"
mount --rbind /dev "$tree/dev"
mount -t tmpfs -o mode=0755 tmpfs "$tree/run"
mount -t tmpfs -o mode=1777 tmpfs "$tree/tmp"
exec chroot "$tree" /usr/bin/env -i HOME=/root USER=root LOGNAME=root SHELL=/bin/sh \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin TERM=dumb CI=true \
    /bin/sh -c "$@"
"""


@nox.session(venv_backend="none")
def fresh(session: nox.Session) -> None:
    """The README's two Quick start commands, exactly as written, as a newcomer meets them: in a
    fresh minimal Debian 12 (mmdebstrap minbase + git, python3, ca-certificates; mirror from the
    host's apt configuration), on a git clone of HEAD, with CI=true, in a private mount namespace
    (chroot). After the build, the installed tool must answer: `sysext-pipeline --version` and
    the README's "Try it" commands that change nothing (`check out/debug-tools.raw`). Fails when
    any of these fails or any test is skipped. [-- --keep] keeps the tree; [-- --no-tests] stops
    after the build and the tool's answers (to check this session itself quickly)."""
    import re
    import tempfile
    import time

    if os.geteuid() != 0:
        session.error("fresh needs root (mmdebstrap, mount namespace, chroot)")
    ensure_system_packages(session, "fresh")
    commands = _quick_start_commands()
    if len(commands) != 2:
        session.error(f"README Quick start: expected 2 commands, found {commands}")
    try:
        answers = _try_it_commands()
    except RuntimeError as err:
        session.error(str(err))
    no_tests = "--no-tests" in session.posargs
    planned = [commands[0], *answers] + ([] if no_tests else commands[1:])
    dirty = subprocess.run(["git", "-C", str(HERE), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout
    if dirty.strip():
        session.warn("fresh tests HEAD: uncommitted changes in the working tree are not in it")
    mirror = _host_mirror(FRESH_SUITE)
    tarball = _fresh_tarball(session, mirror)
    work = Path(tempfile.mkdtemp(prefix="fresh-", dir="/var/tmp"))
    tree = work / "tree"
    tree.mkdir()
    results: list[tuple[str, int, float]] = []
    summary = ""
    try:
        session.run("tar", "-xf", str(tarball), "-C", str(tree), external=True, silent=True)
        shutil.copy("/etc/resolv.conf", tree / "etc" / "resolv.conf")
        # The network this host is on: its local CA certificates (a TLS-inspecting proxy's, for
        # example), as a machine on this network would have them. No other host state goes in.
        # And the host's apt settings for an archive snapshot (a frozen mirror's Release files
        # are past their Valid-Until): only these keys, read with apt-config.
        _copy_apt_settings(tree)
        local_cas = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
        for cert in local_cas:
            shutil.copy(cert, tree / "usr/local/share/ca-certificates" / cert.name)
        clone = "/root/sysext-pipeline"
        session.run("git", "clone", "--quiet", "--no-hardlinks", str(HERE), f"{tree}{clone}",
                    external=True)
        head = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        if local_cas:
            setup = "update-ca-certificates >/dev/null"
            session.run("unshare", "-m", "--propagation", "private", "sh", "-c", _FRESH_SCRIPT,
                        "fresh", str(tree), setup, external=True, silent=True)
        for number, command in enumerate(planned):
            session.log(f"fresh [{head}]: {command}")
            log = work / f"{number}.log"
            started = time.monotonic()
            with open(log, "w") as out:
                proc = subprocess.Popen(
                    ["unshare", "-m", "--propagation", "private", "sh", "-c", _FRESH_SCRIPT,
                     "fresh", str(tree), f"cd {clone} && {command}"],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                assert proc.stdout is not None
                for line in proc.stdout:
                    out.write(line)
                    print(line, end="", flush=True)
                code = proc.wait()
            results.append((command, code, time.monotonic() - started))
            text = log.read_text()
            found = re.findall(r"^=* ?(\d+ (?:passed|failed|skipped|error)[^\n]* in [\d.]+s[^\n=]*)",
                               text, re.M)
            if found:
                summary = found[-1].strip()
            if code != 0:
                break
    finally:
        leftover = _mounts_under(tree)
        if leftover:
            session.warn(f"fresh: mounts left under {tree}: {leftover}; not removing {work}")
        elif "--keep" in session.posargs:
            session.log(f"fresh: tree kept in {tree}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    for command, code, seconds in results:
        session.log(f"fresh: {'ok' if code == 0 else f'FAILED (exit {code})'} in "
                    f"{seconds:.0f}s: {command}")
    if len(results) != len(planned) or any(code for _, code, _ in results):
        session.error("fresh: a Quick start command, or the built tool, failed")
    if no_tests:
        session.log("fresh: --no-tests: the tests were not run")
        return
    session.log(f"fresh: tests: {summary or 'no pytest summary line'}")
    if not summary or re.search(r"\b(skipped|failed|errors?)\b", summary):
        session.error(f"fresh: the tests must pass with nothing skipped: {summary}")


if __name__ == "__main__":
    sys.exit(nox.main())
