"""The one door to external programs (mksquashfs, mkfs.erofs, systemd-repart, veritysetup, apt-get).

Every tool runs with the same scrubbed environment so that the locale, time zone, umask or
the caller's SOURCE_DATE_EPOCH cannot leak into an image; failures become a BuildError that
quotes the tool's last lines; versions are captured once for the manifest.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from .errors import BuildError

#: ``TOOL --version`` and the first dotted number in its answer
DEFAULT_PROBE = (("--version",), r"(\d+(?:\.\d+)+\S*)")


@dataclass(frozen=True)
class Tool:
    """One external program: where it comes from, how old it may be, how to ask its version and
    who needs it. ``uses`` names verbs (``check``), a verb with a feature of its input
    (``build:erofs``: build needs it for an erofs image; :func:`preflight` checks these before
    work starts), or a nox session (``tests``, ``fresh``: only the test suite needs it)."""

    name: str  # a command on PATH, or an absolute path a package installs (noxfile probes)
    packages: tuple[str, ...]  # Debian packages providing it; the first one the archive has wins
    uses: tuple[str, ...]
    why: str
    minimum: str | None = None  # the oldest version the project works with, when it matters
    #: (arguments, pattern whose group 1 is the version); None: not asked
    probe: tuple[tuple[str, ...], str] | None = DEFAULT_PROBE
    optional: bool = False  # used when present; its absence is no reason to refuse work


_READ = ("check", "install", "doctor", "inspect", "verify", "diff")  # verbs that read images


def _reading(feature: str) -> tuple[str, ...]:
    """The image-reading verbs, for an image with ``feature`` (squashfs, erofs, ddi)."""
    return tuple(f"{verb}:{feature}" for verb in _READ)

_SYSTEMD = (("--version",), r"systemd\s+(\d+\S*)")

#: Every external tool the program and its tests use, in one table: behind :func:`find`'s hint,
#: :func:`version` (the manifest's tool versions), :func:`preflight`, ``doctor``, the README's
#: list (:func:`markdown_table`, kept current by a test) and noxfile.py's SYSTEM_PACKAGES.
TOOLS: tuple[Tool, ...] = (
    # squashfs-tools 4.5: -root-uid/-root-gid (owners of the image root)
    Tool("mksquashfs", ("squashfs-tools",), ("build:squashfs",), "packs squashfs images",
         "4.5", (("-version",), r"version\s+(\S+)")),
    Tool("unsquashfs", ("squashfs-tools",), _reading("squashfs"),
         "reads squashfs images (never mounted)",
         probe=(("-version",), r"version\s+(\S+)")),
    # mkfs.erofs 1.5 has no --version; it prints its version before failing on a missing source.
    # 1.5: -T and --all-root as the bytes depend on them (older releases differ)
    Tool("mkfs.erofs", ("erofs-utils",), ("build:erofs",), "packs erofs images", "1.5",
         (("/nonexistent/probe.img", "/nonexistent/probe"), r"mkfs\.erofs\s+(\d\S*)")),
    Tool("fsck.erofs", ("erofs-utils",), _reading("erofs"), "reads erofs images (never mounted)",
         probe=(("-V",), r"fsck\.erofs\s+(\d\S*)")),
    # 252: the oldest systemd whose DDIs the matrix tests (tests/test_check_matrix.py)
    Tool("systemd-repart", ("systemd-repart", "systemd"), ("build:ddi",),
         "writes the GPT of a DDI", "252", _SYSTEMD),
    Tool("veritysetup", ("cryptsetup-bin",), ("build:ddi", "build:verity", *_reading("ddi")),
         "makes and checks dm-verity hash trees", probe=(("--version",),
                                                         r"veritysetup\s+(\S+)")),
    Tool("openssl", ("openssl",), _reading("ddi"),
         "checks the PKCS#7 signature of a signed image",
         probe=(("version",), r"OpenSSL\s+(\S+)")),
    Tool("apt-get", ("apt",), ("build:apt", "fetch:apt"),
         "downloads `apt = ...` sources through the host's apt configuration"),
    Tool("gpgv", ("gpgv",), ("lock:signed", "sign-feed:check"),
         "checks Release files of signed repositories and feed signatures"),
    Tool("gpg", ("gnupg",), ("publish:sign", "sign-feed:sign", "keys:openpgp"),
         "signs a feed's SHA256SUMS; keys generate --openpgp"),
    Tool("systemctl", ("systemd",), ("install:enable",),
         "install --enable on the running host; asks its systemd version (without it: the "
         "dpkg status)", None, _SYSTEMD),
    Tool("systemd-sysext", ("systemd",), ("install:refresh", "uninstall:refresh",
                                          "rollback:refresh"),
         "refreshes the merged sysexts", None, _SYSTEMD),
    Tool("unshare", ("util-linux",), (*_READ, "fresh"),
         "a private mount namespace for reading images; the fresh session's chroot; optional "
         "for reading (without it images are unpacked in this namespace)", optional=True),
    Tool("mount", ("mount",), _READ, "mounts a verified, signed image read-only, as root; "
         "optional", optional=True),
    Tool("setpriv", ("util-linux",), ("build",),
         "makes every tool die with the build (--pdeathsig); optional", optional=True),
    Tool("sfdisk", ("fdisk",), ("tests",), "tests read a DDI's partition table with it", None,
         None),
    Tool("dump.erofs", ("erofs-utils",), ("tests",), "tests read erofs superblocks", None,
         (("-V",), r"dump\.erofs\s+(\d\S*)")),
    Tool("dpkg-deb", ("dpkg",), ("tests",), "tests make .deb packages"),
    Tool("rpmbuild", ("rpm",), ("tests",), "tests make .rpm packages"),
    Tool("rpm2cpio", ("rpm2cpio", "rpm"), ("tests",), "tests compare RPM payloads", None, None),
    Tool("cpio", ("cpio",), ("tests",), "tests compare RPM payloads"),
    Tool("taskset", ("util-linux",), ("tests",), "tests pin a build to one CPU"),
    Tool("losetup", ("mount",), ("tests",), "tests attach DDIs to loop devices"),
    Tool("systemd-tmpfiles", ("systemd",), ("tests",), "tests set up --root trees", None,
         _SYSTEMD),
    Tool("systemd-sysusers", ("systemd",), ("tests",), "tests check the sysusers.d lines a "
         "maintainer-script fix suggests", None, _SYSTEMD),
    Tool("apt-ftparchive", ("apt-utils",), ("tests",), "tests serve deb repositories"),
    Tool("dpkg-scanpackages", ("dpkg-dev",), ("tests",), "tests serve deb repositories"),
    Tool("createrepo_c", ("createrepo-c",), ("tests",), "tests serve rpm-md repositories"),
    Tool("faketime", ("faketime",), ("tests",), "verify --vary time"),
    Tool("disorderfs", ("disorderfs",), ("tests",), "verify --vary the directory order"),
    Tool("fusermount", ("fuse3", "fuse"), ("tests",), "unmounts disorderfs", None, None),
    Tool("ps", ("procps",), ("tests",), "tests look for leftover processes"),
    Tool("chattr", ("e2fsprogs",), ("tests",), "tests make immutable directories"),
    Tool("xz", ("xz-utils",), ("tests",), "tests compress packages"),
    Tool("file", ("file",), ("tests",), "tests identify written files"),
    Tool("setcap", ("libcap2-bin",), ("tests",), "file capabilities on test packages", None,
         None),
    Tool("capsh", ("libcap2-bin",), ("tests",), "root without CAP_SYS_ADMIN in tests", None,
         None),
    Tool("strace", ("strace",), ("tests",), "tests count how often extraction opens a package"),
    Tool("groff", ("groff-base",), ("tests",), "tests render the man page sysext-pipeline(1)"),
    Tool("/usr/share/i18n/charmaps/UTF-8.gz", ("locales",), ("tests",),
         "verify --vary locale generates et_EE.UTF-8 from it", None, None),
    Tool("mmdebstrap", ("mmdebstrap",), ("fresh",), "the fresh session's clean Debian tree"),
    Tool("git", ("git",), ("fresh",), "the fresh session clones the repository"),
)

BY_NAME: dict[str, Tool] = {tool.name: tool for tool in TOOLS}

#: Debian package that provides each tool, for the "install it" hint.
TOOL_PACKAGES = {tool.name: tool.packages[0] for tool in TOOLS}


def install_hint(tool: str) -> str:
    row = BY_NAME.get(tool)
    packages = row.packages if row else (tool,)
    text = f"apt-get install {packages[0]}"
    if len(packages) > 1:
        text += f" (where the archive has no {packages[0]}: {packages[1]})"
    return text


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal, fixed environment: nothing from the caller but PATH (and LD_LIBRARY_PATH)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "LC_ALL": "C.UTF-8",
        "LANG": "C.UTF-8",
        "TZ": "UTC",
        "HOME": "/nonexistent",
    }
    if "LD_LIBRARY_PATH" in os.environ:
        env["LD_LIBRARY_PATH"] = os.environ["LD_LIBRARY_PATH"]
    if extra:
        env.update(extra)
    return env


def find(tool: str) -> str:
    """Absolute path of ``tool``, or a BuildError that names the package to install."""
    path = shutil.which(tool, path=clean_env()["PATH"] + ":/usr/sbin:/sbin")
    if path is None:
        raise BuildError(tool, "not found", f"install it: {install_hint(tool)}")
    return path


#: Seconds a tool may run before it is stopped, unless the call gives its own ``timeout``:
#: generous (a multi-GiB image packs in minutes), only there so that a hung tool (a stuck
#: mirror, a FUSE mount that never answers) cannot hold a build forever.
DEFAULT_TIMEOUT = 4 * 3600

#: How much of a tool's stderr (and, with ``capture=False``, stdout) is kept: the output itself
#: goes to an unlinked temporary file, so a tool printing gigabytes costs disk, not memory.
KEEP_TAIL = 1 << 20


#: Run between setpriv and the tool: a parent that died between the fork and setpriv's prctl
#: never sends the death signal (it is armed too late), so the tool is not started at all.
#: ``$1`` is the pid the parent had; ``$PPID`` is read after the signal was armed.
_PARENT_CHECK = '[ "$PPID" = "$1" ] || exit 137; shift; exec "$@"'


def die_with_parent(parent: int | None = None) -> list[str]:
    """A prefix that makes the next program die with the thread that started it
    (PR_SET_PDEATHSIG, set by util-linux ``setpriv`` between fork and exec: no preexec_fn,
    which is unsafe while other threads run). A SIGKILLed build thus leaves no mksquashfs
    writing on; tools that fork their own helpers (systemd-repart) pass the same signal on.

    With ``parent`` (the pid of the process starting it), the program is started only if that
    process is still its parent once the signal is armed: a build killed in that millisecond
    leaves nothing running either. Empty without setpriv (an optional tool)."""
    search = "/usr/bin:/bin:/usr/sbin:/sbin"
    setpriv = shutil.which("setpriv", path=search)
    if not setpriv:
        return []
    prefix = [setpriv, "--pdeathsig", "KILL", "--"]
    sh = shutil.which("sh", path=search) if parent is not None else None
    return [*prefix, sh, "-c", _PARENT_CHECK, "sh", str(parent)] if sh else prefix


def _tail(fh, limit: int = KEEP_TAIL) -> bytes:
    size = fh.seek(0, os.SEEK_END)
    fh.seek(max(0, size - limit))
    return fh.read()


def run(
    tool: str,
    args: Sequence[str | os.PathLike],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    input: bytes | None = None,
    what: str | None = None,
    tick: Callable[[float], None] | None = None,
    timeout: float | None = None,
    capture: bool = True,
) -> subprocess.CompletedProcess:
    """Run ``tool args`` with the clean environment and umask 022; raise BuildError on failure.

    ``what`` says what the run was for, so the error reads like ``mksquashfs: packing out/x.raw
    failed (exit 1): <last lines>``. ``tick(seconds)`` is called about twice a second while the
    tool runs (a progress line for people on a terminal). ``timeout`` (seconds, default
    :data:`DEFAULT_TIMEOUT`) stops a tool that runs longer, with an error naming it. Output goes
    to temporary files; ``stdout`` is read back whole only with ``capture`` (the default), else
    only its last :data:`KEEP_TAIL` bytes, like ``stderr``.
    """
    argv = [find(tool), *map(str, args)]
    limit = DEFAULT_TIMEOUT if timeout is None else timeout
    with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
        with subprocess.Popen(
            [*die_with_parent(os.getpid()), *argv],
            env=clean_env(env),
            cwd=cwd,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=out_f,
            stderr=err_f,
            umask=0o022,
        ) as child:
            start = time.monotonic()
            try:
                while True:
                    elapsed = time.monotonic() - start
                    wait = limit - elapsed
                    if tick:
                        wait = min(wait, 0.5)
                    try:
                        child.communicate(input, timeout=max(wait, 0))
                        break
                    except subprocess.TimeoutExpired:
                        input = None  # already sent by the first communicate()
                        elapsed = time.monotonic() - start
                        if elapsed >= limit:
                            child.kill()
                            child.wait()
                            raise BuildError(tool, f"{what or 'run'} stopped after {limit:g} s "
                                             "(timeout)", "the tool hung or the timeout is too "
                                             "short for this input") from None
                        if tick:
                            tick(elapsed)
            except BaseException:  # interrupted (Ctrl-C, SIGTERM): the tool must not outlive us
                child.kill()
                raise
        stdout = (out_f.seek(0), out_f.read())[1] if capture else _tail(out_f)
        stderr = _tail(err_f)
    proc = subprocess.CompletedProcess(argv, child.returncode, stdout, stderr)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout[-KEEP_TAIL:]).decode(errors="replace").strip()
        raise BuildError(
            tool,
            f"{what or 'run'} failed (exit {proc.returncode})",
            " | ".join(tail.splitlines()[-5:]) or "no output",
        )
    return proc


@functools.cache
def version(tool: str) -> str | None:
    """The installed version of ``tool`` (None when it is not installed), for the manifest."""
    try:
        path = find(tool)
    except BuildError:
        return None
    row = BY_NAME.get(tool)
    if row is not None and row.probe is None:
        return None
    args, pattern = row.probe if row is not None else DEFAULT_PROBE
    try:
        proc = subprocess.run([path, *args], env=clean_env(), capture_output=True, check=False,
                              timeout=60)
    except subprocess.TimeoutExpired:
        raise BuildError(tool, "did not answer its version probe within 60 s") from None
    text = (proc.stdout + proc.stderr).decode(errors="replace")
    match = re.search(pattern, text)
    return match.group(1) if match else text.strip().splitlines()[0] if text.strip() else None


def have(tool: str) -> bool:
    """Whether ``tool`` is installed, for callers that offer an alternative or a better hint."""
    try:
        find(tool)
    except BuildError:
        return False
    return True


def _numbers(text: str) -> tuple[int, ...] | None:
    match = re.match(r"\d+(?:\.\d+)*", text)
    return tuple(int(n) for n in match.group(0).split(".")) if match else None


def older(found: str, minimum: str) -> bool:
    """Whether version ``found`` (as a probe reports it: ``4.5.1``, ``252.38-1``, ``1.5``) is
    older than ``minimum``; a version without a leading number is not judged (False)."""
    have, need = _numbers(found), _numbers(minimum)
    if have is None or need is None:
        return False
    width = max(len(have), len(need))
    return have + (0,) * (width - len(have)) < need + (0,) * (width - len(need))


@dataclass(frozen=True)
class Status:
    tool: Tool
    path: str | None
    version: str | None

    @property
    def too_old(self) -> bool:
        return bool(self.path and self.version and self.tool.minimum
                    and older(self.version, self.tool.minimum))

    @property
    def ok(self) -> bool:
        return self.path is not None and not self.too_old


def status(name: str | Tool) -> Status:
    """Whether the tool (a name in :data:`TOOLS`, or a row) is installed, and its version when
    the row has a minimum."""
    row = name if isinstance(name, Tool) else BY_NAME[name]
    try:
        path = find(row.name)
    except BuildError:
        return Status(row, None, None)
    return Status(row, path, version(row.name) if row.minimum else None)


def needed(verb: str, features: Iterable[str] = (), table: Sequence[Tool] = TOOLS) -> list[Tool]:
    """The tools ``verb`` needs for an input with these ``features`` (``build`` of an erofs DDI:
    features ``{"ddi", "erofs"}``)."""
    wanted = {verb, *(f"{verb}:{feature}" for feature in features)}
    return [tool for tool in table if wanted & set(tool.uses) and not tool.optional]


def build_features(image_format: str, filesystem: str, verity: str) -> set[str]:
    """What of a recipe decides the tools ``build`` needs (its ``[image]`` format, file system
    and verity)."""
    if image_format == "directory":
        return {"directory"}
    return {image_format, filesystem} | ({"verity"} if verity == "detached" else set())


def preflight(verb: str, features: Iterable[str] = (), table: Sequence[Tool] = TOOLS) -> None:
    """Before any work: every tool ``verb`` needs for ``features`` is installed and new enough,
    else ONE BuildError naming all that are missing or too old and the packages to install."""
    features = sorted(set(features))
    bad = [s for s in map(status, needed(verb, features, table)) if not s.ok]
    if not bad:
        return
    missing = [s.tool for s in bad if s.path is None]
    old = [s for s in bad if s.path is not None]
    parts = []
    if missing:
        parts.append(f"not installed: {', '.join(t.name for t in missing)}")
    parts += [f"{s.tool.name} {s.version} is older than {s.tool.minimum}" for s in old]
    wanted = ", ".join(f for f in features if any(f"{verb}:{f}" in s.tool.uses for s in bad))
    packages = []
    for s in bad:
        hint = s.tool.packages[0] + (f" (>= {s.tool.minimum})" if s in old else "")
        if hint not in packages:
            packages.append(hint)
    raise BuildError(verb, f"{'; '.join(parts)}, needed by {verb}"
                     + (f" ({wanted})" if wanted else ""),
                     f"install: apt-get install {' '.join(packages)}")


def _uses_text(uses: Sequence[str]) -> str:
    """``build, check (ddi); build (verity)``: verbs grouped by the feature they need it for."""
    groups: dict[str, list[str]] = {}
    for use in uses:
        verb, _, feature = use.partition(":")
        groups.setdefault(feature, []).append(verb)
    return "; ".join(", ".join(verbs) + (f" ({feature})" if feature else "")
                     for feature, verbs in groups.items())


def markdown_table(kind: str = "program") -> str:
    """The README's list of system tools: ``program`` rows (a verb uses them) or ``tests``."""
    rows = [t for t in TOOLS if any(":" in u or u not in ("tests", "fresh") for u in t.uses)]
    if kind == "tests":
        rows = [t for t in TOOLS if t not in rows]
    lines = ["| tool | Debian package | minimum | needed by | for |", "|---|---|---|---|---|"]
    for t in rows:
        uses = _uses_text(t.uses)
        lines.append(f"| `{t.name}` | {' or '.join(t.packages)} | {t.minimum or '—'} | {uses} "
                     f"| {t.why} |")
    return "\n".join(lines)


README_BEGIN = "<!-- tools:begin (generated: TOOLS in pipeline/tools.py) -->"
README_END = "<!-- tools:end -->"


def readme_block() -> str:
    """The README's system tool section, between :data:`README_BEGIN` and :data:`README_END`."""
    return "\n".join([
        README_BEGIN,
        "System tools (one table, `TOOLS` in pipeline/tools.py; `build` checks the ones its recipe "
        "needs, and their minimum versions, before fetching anything; `doctor` reports those the "
        "host-side commands lack):",
        "", markdown_table(), "",
        "The tests also need these (`python3 noxfile.py -s tests` installs whatever is missing as "
        "root, or names the packages):",
        "", markdown_table("tests"), README_END])
