"""``verify --vary``: rebuild under varied environments and compare each result with the reference.

Each variation is a real rebuild in a child process (``python -m pipeline.reproduce.vary child``, which runs
the same pinned rebuild as ``verify``) started under the changed environment: another build and
recipe path, TZ, locale, umask, HOME, host and domain name (``unshare -u``), user (``setpriv`` to
nobody), CPU set (``taskset``), a clock in 2045 (``faketime``), shuffled directory order on disk
(``disorderfs`` under the output directory, where the staging tree lives), and the mksquashfs
thread count (a wrapper first on PATH adding ``-processors N``). A variation whose prerequisite is
missing is *skipped* with the reason — never run in a weaker form and reported as passing — and so
is one that cannot apply by design (``user`` for an image only a root build may make:
:func:`non_root_refusal`). Which variations run is reprotest's syntax (:func:`select`).

Programs run here with subprocess, not tools.run: the point is the varied environment, which
tools.run's clean one would erase, and the exit code of a probe is the answer.

A variation reproduces when the image (a directory image: its tree, read from disk) and the
manifest are byte-identical to the reference — verify's own rebuild, which is unsigned like every
variation (no rebuild reads the private key, so no variation can fail on who may read it);
otherwise its row carries diff's explanation.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import tools
from ..errors import BuildError, InputError, PipelineError
from ..stages import manifest as manifest_mod
from ..stages.manifest import Manifest
from . import diff as diff_mod

REPO = Path(__file__).resolve().parents[2]  # the checkout, above pipeline/reproduce/
FUTURE = "2045-06-01 12:00:00"  # past 2038: 32-bit time_t in a tool would show
LOCALE = "et_EE.UTF-8"  # Estonian collation sorts z between s and t
TIMEOUT = 900
#: Seconds for a probe or set-up command (localedef, disorderfs, a readability test).
PROBE_TIMEOUT = 120


@dataclass
class Plan:
    """How to run one varied rebuild."""

    prefix: list[str] = field(default_factory=list)  # wrapper commands before the interpreter
    env: dict[str, str] = field(default_factory=dict)
    umask: int | None = None
    cwd: Path | None = None
    out: Path | None = None
    recipe: Path | None = None
    cleanup: list[Callable[[], None]] = field(default_factory=list)


@dataclass
class Context:
    workdir: Path  # this variation's own directory
    recipe: Path
    filesystem: str  # squashfs | erofs | directory
    cache_dir: Path
    manifest_path: Path
    manifest: Manifest  # the reference's, through the model


@dataclass
class Variation:
    name: str
    what: str
    prepare: Callable[[Context], Plan | str]  # a str is the reason to skip


@dataclass
class VariationResult:
    name: str
    what: str
    status: str  # reproduced | differs | failed | skipped
    detail: str = ""
    seconds: float = 0.0
    report: dict | None = None

    def to_json(self) -> dict:
        return {"name": self.name, "what": self.what, "status": self.status,
                "detail": self.detail, "seconds": round(self.seconds, 1), "diff": self.report}


# --- the variations ---------------------------------------------------------------------------

def _build_path(ctx: Context) -> Plan:
    deep = ctx.workdir / "build path with spaces" / "ünïcödé" / "deep" / "deeper"
    deep.mkdir(parents=True)
    return Plan(cwd=deep, out=deep / "out")


def _recipe_path(ctx: Context) -> Plan | str:
    """Copy the directory holding the recipe and every local file it names (packages, [files],
    keys) elsewhere, keeping their relative places, and build from the copy."""
    from .. import recipe as recipe_mod
    from ..sources import kinds

    recipe = recipe_mod.load(ctx.recipe)
    used = [ctx.recipe.resolve()]
    used += [path for s in recipe.sources for path in kinds.of(s).recipe_files(s)]
    used += [Path(f.source) for f in recipe.files if f.source is not None]
    used += [Path(v) for k, v in (getattr(recipe, "signing", None) or {}).items()
             if k in ("key", "cert", "passphrase_file") and v]
    source = Path(os.path.commonpath([str(p) for p in used]))
    if source == ctx.recipe.resolve():
        source = source.parent
    if source == Path("/") or ctx.workdir.resolve().is_relative_to(source):
        return f"the recipe's files share no directory that can be copied ({source})"
    size = 0
    for p in source.rglob("*"):
        if p.is_file() and not p.is_symlink():
            size += p.stat().st_size
            if size > 256 << 20:
                return f"{source} (the recipe and the files it names) is over 256 MiB: not copied"
    dest = ctx.workdir / "moved recipe dir"
    shutil.copytree(source, dest, symlinks=True)
    return Plan(recipe=dest / ctx.recipe.resolve().relative_to(source), cwd=dest)


def _tz(ctx: Context) -> Plan:
    return Plan(env={"TZ": "Pacific/Kiritimati"})


def _locale(ctx: Context) -> Plan | str:
    env = {"LANG": LOCALE, "LC_ALL": LOCALE, "LANGUAGE": "et"}
    if _locale_available(LOCALE, {}):
        return Plan(env=env)
    if not shutil.which("localedef"):
        return f"{LOCALE} is not installed and localedef is missing (apt-get install locales)"
    locpath = ctx.workdir / "locales"
    locpath.mkdir()
    proc = subprocess.run(["localedef", "-i", "et_EE", "-f", "UTF-8", str(locpath / LOCALE)],
                          capture_output=True, text=True, timeout=PROBE_TIMEOUT)
    if proc.returncode not in (0, 1) or not _locale_available(LOCALE, {"LOCPATH": str(locpath)}):
        return f"{LOCALE} could not be generated: {(proc.stderr or proc.stdout).strip()[-200:]}"
    return Plan(env={**env, "LOCPATH": str(locpath)})


def _locale_available(name: str, extra: dict) -> bool:
    probe = "import locale, sys; locale.setlocale(locale.LC_ALL, sys.argv[1])"
    return subprocess.run([sys.executable, "-c", probe, name], env={**os.environ, **extra},
                          capture_output=True, timeout=PROBE_TIMEOUT).returncode == 0


def _umask(mask: int) -> Callable[[Context], Plan]:
    return lambda ctx: Plan(umask=mask)


def _home(ctx: Context) -> Plan:
    home = ctx.workdir / "another home"
    home.mkdir()
    return Plan(env={"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"),
                     "XDG_CONFIG_HOME": str(home / ".config"), "USER": "varied"})


def _hostname(ctx: Context) -> Plan | str:
    if os.geteuid() != 0:
        return "needs root for unshare -u"
    if not shutil.which("unshare"):
        return "unshare not found (apt-get install util-linux)"
    script = ('hostname vary-host.example.org && (domainname vary.example 2>/dev/null || true) '
              '&& exec "$@"')
    return Plan(prefix=["unshare", "-u", "sh", "-c", script, "sh"])


def _user(ctx: Context) -> Plan | str:
    refused = non_root_refusal(ctx.manifest)
    if refused:
        return f"a build as nobody is refused by design: {refused}"
    if os.geteuid() != 0:
        return "needs root to switch to nobody"
    if not shutil.which("setpriv"):
        return "setpriv not found (apt-get install util-linux)"
    prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]

    def readable(path) -> bool:
        return subprocess.run([*prefix, "test", "-r", str(path)],
                              timeout=PROBE_TIMEOUT).returncode == 0

    if not readable(sys.executable) or subprocess.run(
            [*prefix, sys.executable, "-c", "pass"], capture_output=True,
            timeout=PROBE_TIMEOUT).returncode != 0:
        return f"interpreter not readable by nobody ({os.path.realpath(sys.executable)})"
    probe = subprocess.run([*prefix, sys.executable, "-c", "import pipeline.stages.build"],
                           env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                           timeout=PROBE_TIMEOUT)
    if probe.returncode != 0:
        return f"the repository or its dependencies are not readable by nobody ({REPO})"
    for path in (ctx.recipe, ctx.manifest_path, ctx.cache_dir):
        if path.exists() and not readable(path):
            return f"{path} is not readable by nobody"
    out = ctx.workdir / "nobody"
    out.mkdir()
    os.chown(out, 65534, 65534)
    return Plan(prefix=prefix, out=out / "out", cwd=out,
                env={"HOME": str(out), "USER": "nobody", "LOGNAME": "nobody"})


def non_root_refusal(manifest: Manifest) -> str | None:
    """Why a build without root refuses to make this image (None: it does not): what only root
    can write — a file capability, a directory image's owners, an erofs image's non-root
    owners (pipeline/stages/staging.py and package.py refuse these, naming the fix)."""
    caps = [f.path for f in manifest.files if f.xattrs and "security.capability" in f.xattrs]
    if caps:
        return (f"the image carries a file capability ({caps[0]}), which only a root build "
                "can write")
    fmt = manifest.image.format
    if fmt == "directory":
        return ("a directory image holds its owners on disk, which only a root build can set "
                "to the ones the manifest records")
    owned = [f.path for f in manifest.files if (f.uid, f.gid) != (0, 0)]
    if owned and manifest.image.filesystem == "erofs":
        return f"an erofs image with non-root owners ({owned[0]}) needs a root build"
    return None


def _cpus(ctx: Context) -> Plan | str:
    if not shutil.which("taskset"):
        return "taskset not found (apt-get install util-linux)"
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return "only one CPU available: nothing to vary"
    return Plan(prefix=["taskset", "-c", str(cpus[-1])])


def _clock(ctx: Context) -> Plan | str:
    if not shutil.which("faketime"):
        return "faketime not installed (apt-get install faketime)"
    return Plan(prefix=["faketime", FUTURE])


def _file_order(ctx: Context) -> Plan | str:
    if not shutil.which("disorderfs"):
        return "disorderfs not installed (apt-get install disorderfs; a FUSE tool)"
    if not Path("/dev/fuse").exists():
        return "no /dev/fuse (FUSE unavailable here, e.g. an unprivileged container)"
    backing, mnt = ctx.workdir / "backing", ctx.workdir / "disordered"
    backing.mkdir()
    mnt.mkdir()
    # use_ino and no attribute cache: otherwise FUSE shows a file's stale link count right after
    # os.link() and mksquashfs stores the hard link as two files: a FUSE artefact, not the
    # directory order under test (the hard-link dependence is in the README).
    proc = subprocess.run(["disorderfs", "-q", "--shuffle-dirents=yes", "--multi-user=yes",
                           "-o", "use_ino,attr_timeout=0,entry_timeout=0", str(backing),
                           str(mnt)], capture_output=True, text=True, timeout=PROBE_TIMEOUT)
    if proc.returncode != 0:
        return f"disorderfs could not mount: {(proc.stderr or proc.stdout).strip()[-200:]}"

    def unmount():
        for cmd in (["fusermount", "-u", str(mnt)], ["umount", str(mnt)]):
            if shutil.which(cmd[0]) and subprocess.run(cmd, capture_output=True,
                                                          timeout=PROBE_TIMEOUT).returncode == 0:
                return

    return Plan(out=mnt / "out", cleanup=[unmount])


def _threads(count: int) -> Callable[[Context], Plan | str]:
    def prepare(ctx: Context) -> Plan | str:
        if ctx.filesystem == "directory":
            return "a directory image runs no packing tool"
        tool = "mkfs.erofs" if ctx.filesystem == "erofs" else "mksquashfs"
        try:
            real = tools.find(tool)
        except BuildError:
            return f"{tool} not found"
        if tool == "mkfs.erofs":
            helptext = subprocess.run([real, "--help"], capture_output=True, text=True,
                                      timeout=PROBE_TIMEOUT).stdout
            if "--workers" not in helptext:
                return "this mkfs.erofs has no thread-count option (it compresses on one thread)"
            flag = [f"--workers={count}"]
        else:
            flag = ["-processors", str(count)]
        bindir = ctx.workdir / "bin"
        bindir.mkdir()
        wrapper = bindir / tool
        if tool == "mksquashfs":  # options follow SOURCE DEST
            wrapper.write_text(f'#!/bin/sh\nexec {real} "$@" {" ".join(flag)}\n')
        else:  # options precede DEST SOURCE
            wrapper.write_text(f'#!/bin/sh\nexec {real} {" ".join(flag)} "$@"\n')
        wrapper.chmod(0o755)
        return Plan(env={"PATH": f"{bindir}:{os.environ.get('PATH', '')}"})

    return prepare


VARIATIONS: tuple[Variation, ...] = (
    Variation("build-path", "output and working directory under a deep path with spaces and "
              "non-ASCII names", _build_path),
    Variation("recipe-path", "the recipe's directory copied elsewhere", _recipe_path),
    Variation("tz", "TZ=Pacific/Kiritimati (UTC+14)", _tz),
    Variation("locale", f"LANG/LC_ALL={LOCALE}", _locale),
    Variation("umask", "umask 0002", _umask(0o002)),
    Variation("umask-0077", "umask 0077", _umask(0o077)),
    Variation("home", "another HOME (and XDG dirs, USER)", _home),
    Variation("hostname", "host vary-host.example.org, domain vary.example (unshare -u)",
              _hostname),
    Variation("user", "user nobody, group nogroup (setpriv)", _user),
    Variation("cpus", "one CPU (taskset)", _cpus),
    Variation("clock", f"clock at {FUTURE} (faketime)", _clock),
    Variation("file-order", "shuffled directory order under the build (disorderfs)", _file_order),
    Variation("threads-1", "packing tool on 1 thread", _threads(1)),
    Variation("threads-8", "packing tool on 8 threads", _threads(8)),
)
NAMES = tuple(v.name for v in VARIATIONS)


def select(spec: list[str]) -> list[Variation]:
    """``--vary`` values → the variations, in table order. reprotest's syntax: a comma-separated
    list (the option repeats), read left to right; ``NAME`` or ``+NAME`` adds a variation,
    ``-NAME`` removes it, ``all`` stands for every one (``all,-user``, ``+all,-user``); a list
    that starts with a removal starts from all (``--vary=-user``). Every name is checked: one
    that is not a variation is bad input, and so is a selection left empty."""
    items = [n.strip() for item in spec for n in item.split(",") if n.strip()]
    unknown = [n for n in items if _bare(n) not in (*NAMES, "all")]
    if unknown:
        raise InputError("--vary", f"unknown variation {', '.join(dict.fromkeys(unknown))}",
                         f"choose from all, {', '.join(NAMES)}; +NAME adds, -NAME removes")
    chosen: set[str] = set(NAMES) if items and items[0].startswith("-") else set()
    for item in items:
        names = set(NAMES) if _bare(item) == "all" else {_bare(item)}
        chosen = chosen - names if item.startswith("-") else chosen | names
    if not chosen:
        raise InputError("--vary", f"{','.join(items) or '(empty)'} selects no variation",
                         f"name at least one: all, {', '.join(NAMES)}")
    return [v for v in VARIATIONS if v.name in chosen]


def _bare(item: str) -> str:
    return item[1:] if item[:1] in ("+", "-") else item


def run(spec: list[str], *, target, recipe: Path, reference: diff_mod.Side,
        cache_dir: str | None, offline: bool, workdir: Path, log=None) -> list[VariationResult]:
    from ..sources.fetch import default_cache_dir

    variations = select(spec)
    model = target.model
    filesystem = model.image.filesystem or model.image.format
    if filesystem == "ddi":
        filesystem = _ddi_filesystem(reference) or "erofs"
    cache = default_cache_dir(cache_dir).resolve()  # the child runs in another directory
    results = []
    for variation in variations:
        vdir = workdir / f"vary-{variation.name}"
        vdir.mkdir(parents=True)
        os.chmod(vdir, 0o755)
        ctx = Context(vdir, Path(recipe), filesystem, cache, target.manifest_path, model)
        started = time.monotonic()
        result = _run_one(variation, ctx, reference, offline)
        result.seconds = time.monotonic() - started
        if log is not None and getattr(log, "write", None):
            log.write(f"vary      {variation.name}: {result.status} ({result.seconds:.1f}s)")
        results.append(result)
    return results


def _ddi_filesystem(reference: diff_mod.Side) -> str | None:
    if reference.is_file:
        from ..image import fsinfo
        from ..image.ddi.reader import open_image

        found = open_image(reference.image).verity_set
        if found is not None:
            return fsinfo.sniff(reference.image, found.data.offset)
    return None


def _run_one(variation: Variation, ctx: Context, reference: diff_mod.Side,
             offline: bool) -> VariationResult:
    row = VariationResult(variation.name, variation.what, "skipped")
    try:
        plan = variation.prepare(ctx)
    except OSError as err:
        plan = f"could not be set up: {err}"
    except subprocess.TimeoutExpired as err:  # a hung set-up command is a failure, not a skip
        row.status, row.detail = "failed", f"set-up timed out: {err}"
        return row
    if isinstance(plan, str):
        row.detail = plan
        return row
    try:
        out = plan.out or ctx.workdir / "out"
        argv = [*plan.prefix, sys.executable, "-m", "pipeline.reproduce.vary", "child",
                "--manifest", str(ctx.manifest_path), "--recipe", str(plan.recipe or ctx.recipe),
                "--out", str(out), "--cache-dir", str(ctx.cache_dir)]
        if offline:
            argv.append("--offline")
        env = {**os.environ, "PYTHONPATH": str(REPO), **plan.env}
        mask = plan.umask
        proc = subprocess.run(argv, cwd=plan.cwd or ctx.workdir, env=env, capture_output=True,
                              text=True, timeout=TIMEOUT, umask=-1 if mask is None else mask)
        if proc.returncode != 0:
            row.status = "failed"
            row.detail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            return row
        built = json.loads(proc.stdout)
        varied = diff_mod.Side(built["image"], manifest_mod.read(built["manifest"]),
                               Path(built["manifest"]), Path(built["image"]))
        report = diff_mod.diff(reference, varied, labels=("in the reference", "in the varied build"))
        manifest_same = reference.manifest_path is not None and \
            reference.manifest_path.read_bytes() == Path(built["manifest"]).read_bytes()
        if report.identical and manifest_same:
            row.status = "reproduced"
        else:
            row.status = "differs"
            row.detail = report.summary if not report.identical else \
                "same image, the manifest differs: " + (
                    ", ".join(sorted(report.fields("manifest"))) or "formatting")
            row.report = report.to_json()
        return row
    except subprocess.TimeoutExpired:
        row.status, row.detail = "failed", f"timed out after {TIMEOUT}s"
        return row
    finally:
        for step in plan.cleanup:
            step()


def table_lines(rows: list[VariationResult]) -> list[str]:
    width = max([len(r.name) for r in rows] + [9])
    lines = [f"{'variation':<{width}}  {'result':<10}  detail"]
    for r in rows:
        detail = r.detail or r.what
        lines.append(f"{r.name:<{width}}  {r.status:<10}  {detail}")
    counts = {s: sum(r.status == s for r in rows) for s in ("reproduced", "differs", "failed",
                                                             "skipped")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return lines


def _child(argv: list[str]) -> int:
    """One varied rebuild: ``python -m pipeline.reproduce.vary child --manifest M --recipe R --out DIR``;
    prints {"image", "manifest"} as JSON."""
    import argparse

    from .rebuild import rebuild

    parser = argparse.ArgumentParser(prog="python -m pipeline.reproduce.vary child")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--cache-dir")
    parser.add_argument("--offline", action="store_true")
    args = parser.parse_args(argv)
    try:
        manifest = manifest_mod.read(args.manifest)
        built = rebuild(manifest, Path(args.recipe), Path(args.out), args.cache_dir,
                        offline=args.offline)
    except PipelineError as err:
        print(f"error: {err.line()}", file=sys.stderr)
        return err.exit_code
    print(json.dumps({"image": str(built.image), "manifest": str(built.manifest_path)}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        sys.exit(_child(sys.argv[2:]))
    sys.exit("usage: python -m pipeline.reproduce.vary child --manifest M --recipe R --out DIR")
