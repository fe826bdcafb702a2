"""``install`` / ``uninstall`` / ``rollback``: activate an extension image and make it persist.

install: ``check`` first (refuses an image that would not merge, with the reason, unless
--force), then places the image atomically in the directory for its kind and persistence
(/var/lib/extensions, /run/extensions with --runtime; /var/lib/confexts, /run/confexts), keeps the
previously installed version under /var/lib/sysext-pipeline/rollback (/run/… for --runtime),
runs ``systemd-sysext refresh`` / ``systemd-confext refresh``, enables the merge service with
--enable (in a --root tree: the [Install] symlink), and confirms the files are visible.

With --root the tree is not refreshed unless --refresh is given (merging mounts overlays on the
tree in the current mount namespace). ``$SYSEXT_PIPELINE_SYSTEMD_DIR`` names a directory holding
other systemd-sysext/systemd-confext binaries (tests use systemd 254 that way).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from .. import tools
from ..errors import BuildError, InputError, VerdictError
from ..host import facts as hostmod
from ..host import images
from ..systemd import rules
from ..systemd.release import HIERARCHIES
from . import clikit

READ_ONLY_WARNING = ("a merged extension is a read-only overlay: {hier} stay read-only while "
                     "it is merged, and its files disappear on unmerge — keep state in /var "
                     "(or /etc for a sysext), never in the image")
ROLLBACK = {False: "var/lib/sysext-pipeline/rollback", True: "run/sysext-pipeline/rollback"}
#: Seconds ``systemd-KIND refresh`` may take before it is stopped.
REFRESH_TIMEOUT = 300
#: Prefix of install's staging entries in an extension directory ('.#' names are never
#: discovered by systemd); a killed install leaves one behind, the next install sweeps it.
STAGING_PREFIX = ".#sysext-pipeline-"


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def merge_tool(kind: str) -> str:
    """systemd-sysext/systemd-confext: from $SYSEXT_PIPELINE_SYSTEMD_DIR when it has one."""
    name = f"systemd-{kind}"
    override = os.environ.get("SYSEXT_PIPELINE_SYSTEMD_DIR")
    if override and (Path(override) / name).exists():
        return str(Path(override) / name)
    if kind == "confext" and not tools.have(name):
        raise BuildError(name, "not found", "systemd-confext needs systemd 254+")
    return tools.find(name)


def refresh(kind: str, root: Path | None, timeout: float | None = None) -> str:
    """``systemd-KIND refresh``, not through tools.run: it must see the caller's SYSTEMD_*
    variables that ``check`` modelled, and 252–255 exit 0 on an aborted merge (only the
    output says ``Failed``). It runs in its own process group, stopped (all of it) after
    ``timeout`` seconds (default :data:`REFRESH_TIMEOUT`) with an error that says so."""
    argv = [merge_tool(kind), "refresh"] + ([f"--root={root}"] if root else [])
    limit = REFRESH_TIMEOUT if timeout is None else timeout
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, start_new_session=True) as proc:
        try:
            out, _ = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise BuildError(argv[0], f"refresh did not finish within {limit:g} s: stopped",
                             "the merge hangs (a stuck mount or overlay?); see journalctl, then "
                             "run the refresh again") from None
        except BaseException:  # interrupted: the merge must not go on without us
            _kill_group(proc)
            raise
    output = out.decode(errors="replace").strip()
    last = " | ".join(output.splitlines()[-3:]) or "no output"
    if proc.returncode != 0:
        raise BuildError(argv[0], f"refresh failed (exit {proc.returncode})", last)
    if "Failed" in output:  # issue 16 §8: not "refresh failed (exit 0)"
        raise BuildError(argv[0], "refresh failed: the merge was aborted (systemd 252-255 "
                         "still exit 0 then; its output says Failed)", last)
    return output


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()


def enable(host: hostmod.Host, kind: str) -> str:
    unit = hostmod.UNITS[kind]
    if host.root is None:
        tools.run("systemctl", ["enable", unit], what=f"enable {unit}")
        return f"enabled {unit}"
    target = hostmod.unit_wanted_by(host, kind)
    wants = host.base / "etc/systemd/system" / f"{target}.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / unit
    if not link.is_symlink():
        os.symlink(hostmod.unit_file_path(host, kind), link)
    return f"enabled {unit} ({link.relative_to(host.base)} in the tree)"


def base_name(name: str) -> str:
    """The extension a (discovered) image name belongs to: systemd's NAME_VERSION convention
    (``.v/`` entries, path_extract_image_name) cuts at the first '_' (and a '+N' boot counter),
    so hello_1.raw and hello_2.raw are two versions of ``hello``."""
    return rules.reduced_image_name(name)


def _entries_named(host: hostmod.Host, kind: str, name: str) -> list[hostmod.Installed]:
    return [e for e in hostmod.installed(host, kind, include_unsearched=False) if e.name == name]


def _versions_of(host: hostmod.Host, kind: str, name: str) -> list[hostmod.Installed]:
    """Installed images that are ``name`` or another version of the same extension."""
    return [e for e in hostmod.installed(host, kind, include_unsearched=False)
            if e.name is not None and (e.name == name or base_name(e.name) == base_name(name))]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _keep_previous(path: Path, rollback_dir: Path) -> Path:
    """Keep ``path`` in ``rollback_dir`` as the one previous version of its extension (an older
    kept version of the same extension, under any file name, goes)."""
    rollback_dir.mkdir(parents=True, exist_ok=True)
    base = base_name(path.name)
    for old in list(rollback_dir.iterdir()):
        if old.name != path.name and not old.name.startswith(".") and base_name(old.name) == base:
            _remove(old)
    dest = rollback_dir / path.name
    if dest.is_dir() and not dest.is_symlink():
        shutil.rmtree(dest)
    elif dest.exists() or dest.is_symlink():
        dest.unlink()
    if path.is_dir() and not path.is_symlink():
        os.rename(path, dest) if _same_fs(path, rollback_dir) else shutil.move(path, dest)
    else:
        try:
            os.link(path, dest, follow_symlinks=False)
        except OSError:
            shutil.copy2(path, dest, follow_symlinks=False)
    return dest


def _same_fs(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def place(source: Path, dest_dir: Path, file_name: str, rollback_dir: Path,
          replace: list[Path]) -> tuple[Path, list[Path]]:
    """Copy ``source`` into ``dest_dir/file_name`` atomically; earlier versions → rollback."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    lock = os.open(dest_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # one install at a time per directory: under the lock, every staging entry is a dead
        # install's (the kernel drops a killed process's lock)
        fcntl.flock(lock, fcntl.LOCK_EX)
        sweep_staging(dest_dir)
        return _place_locked(source, dest_dir, file_name, rollback_dir, replace)
    finally:
        os.close(lock)


def sweep_staging(directory: Path) -> list[str]:
    """Remove ``STAGING_PREFIX*`` entries (killed installs' leftovers) from ``directory``: only
    entries with that prefix, a symlink as itself (never followed). Call with the lock held."""
    removed = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if not entry.name.startswith(STAGING_PREFIX):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(entry.name)
    if removed:
        _say(f"removed {len(removed)} leftover(s) of an interrupted install from {directory}: "
             + ", ".join(sorted(removed)[:3]) + (" …" if len(removed) > 3 else ""))
    return removed


def _place_locked(source: Path, dest_dir: Path, file_name: str, rollback_dir: Path,
                  replace: list[Path]) -> tuple[Path, list[Path]]:
    dest = dest_dir / file_name
    kept = []
    # '.#' names are never discovered by systemd (image_name_is_valid), so the copy is invisible
    tmp = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=dest_dir))
    try:
        staged = tmp / file_name
        if source.is_dir():
            shutil.copytree(source, staged, symlinks=True)
        else:
            shutil.copy2(source, staged)
            with open(staged, "rb") as fh:
                os.fsync(fh.fileno())
            os.chmod(staged, 0o644)
        for old in replace:
            kept.append(_keep_previous(old, rollback_dir))  # directories are moved away
            if (old.is_file() or old.is_symlink()) and (old != dest or staged.is_dir()):
                old.unlink()
        os.rename(staged, dest)  # atomic for files (replaces the old one in one step)
        dir_fd = os.open(dest_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest, kept


def visible_files(image: images.Image, kind: str, host: hostmod.Host) -> list[str]:
    """Paths of the image that are now visible in the host hierarchies (a few, to say so)."""
    hier = tuple(h.lstrip("/") + "/" for h in HIERARCHIES[kind])
    candidates = [e.path for e in image.entries if e.type == "file" and e.path.startswith(hier)]
    candidates.sort(key=lambda p: ("extension-release.d" in p, p))
    found = []
    for rel in candidates[:50]:
        if (host.base / rel).exists():
            found.append("/" + rel)
        if len(found) >= 3:
            break
    return found


def _host(args) -> tuple[Path | None, hostmod.Host]:
    """(--root or None, the host it describes) for install, uninstall and rollback."""
    root = Path(args.root) if args.root else None
    return root, hostmod.detect(root, systemd=args.systemd)


def _features(args, root: Path | None) -> set[str]:
    """What of this run decides the tools it needs (pipeline/tools.py TOOLS)."""
    return ({"refresh"} if _refreshes(args, root) else set()) | \
        ({"enable"} if getattr(args, "enable", False) and root is None else set())


def _refreshes(args, root: Path | None) -> bool:
    """Refresh after a change: on the running host unless --no-refresh; a --root tree only with
    --refresh (merging mounts overlays on the tree in this mount namespace)."""
    return not args.no_refresh and (root is None or args.refresh)


def _refusal(verdict: rules.Verdict, version: rules.Version) -> str:
    would = "would break the merge" if verdict.verdict == rules.BREAKS else \
        f"would be {verdict.verdict}"
    return (f"{would} under systemd {rules.format_version(version)}: "
            f"{verdict.summary} [{verdict.rule.id}; {verdict.field}: {verdict.values_text()}]")


def cmd_install(args) -> int:
    if args.feed:  # set the host up for a feed instead (pipeline/commands/publish.py)
        from .publish import cmd_install_feed

        return cmd_install_feed(args)
    if args.timeout is not None:  # an image is read from disk: nothing waits on the network
        raise InputError("--timeout", "applies only to install --feed URL",
                         "an image file is installed without downloading anything")
    from .check import merge_breakers, with_host_facts

    root, host = _host(args)
    source = Path(args.image)
    clikit.preflight("install", [source], _features(args, root))
    image = images.read(source, with_entries=True, architecture=host.architecture)
    kind = args.kind or image.kind or image.guessed_kind or "sysext"
    file_name = source.name
    name = rules.discovered_name(file_name, source.is_dir(), kind, host.version)
    if name is None:
        raise InputError(str(source), "systemd never discovers this file name",
                         "a raw image's file name must end in .raw")
    directory = rules.install_dir(kind, args.runtime)
    others = _entries_named(host, kind, name)
    searched = rules.search_dirs(kind, host.version, host.initrd)
    earlier = [e for e in others if searched.index(e.directory) < searched.index(directory)]
    place_info = rules.Place(directory, host.host_path(earlier[0].path) if earlier else None)
    verdict = rules.evaluate(with_host_facts(image, host), host.facts(), kind, place_info)
    warnings: list[str] = []
    if verdict.verdict != rules.MERGES:
        text = _refusal(verdict, host.version)
        if not args.force:  # the same verdict as check's: exit 3
            raise VerdictError(str(source), text, f"fix: {verdict.fix}; or --force")
        warnings.append(f"--force: {text}")
    dest_dir = host.base / directory.lstrip("/")
    # every version of this extension in the target directory is replaced (and one kept)
    same_dir = [e.path for e in _versions_of(host, kind, name) if e.directory == directory]
    breakers = [(p, v) for p, v in merge_breakers(host, kind) if p not in same_dir]
    if breakers:
        culprits = "; ".join(f"{host.host_path(p)} ({v.rule.id}: {v.fix})" for p, v in breakers)
        text = (f"another image breaks the whole merge, so nothing (this one included) would "
                f"merge: {culprits}")
        if not args.force:
            raise VerdictError(str(source), text, "fix or remove it first; or --force")
        warnings.append(f"--force: {text.upper()[:1] + text[1:]}")
    rollback_dir = host.base / ROLLBACK[args.runtime] / kind
    dest, kept = place(source, dest_dir, file_name, rollback_dir, same_dir)
    _say(f"installed {dest}" + (f" (previous kept: {', '.join(map(str, kept))})" if kept
                                else ""))
    enabled = hostmod.unit_enabled(host, kind)
    if args.enable:  # before the refresh: a merged confext makes /etc read-only
        try:
            _say(enable(host, kind))
            enabled = True
        except OSError as exc:
            warnings.append(f"could not enable {hostmod.UNITS[kind]}: {exc.strerror} "
                            f"({exc.filename}); /etc is read-only while a confext is merged: "
                            "`systemd-confext unmerge`, enable, then refresh")
    elif not args.runtime and not enabled:
        warnings.append(f"{hostmod.UNITS[kind]} is not enabled: the extension is not merged "
                        "again after a reboot (pass --enable)")
    refreshed = _refreshes(args, root)
    if refreshed:
        try:
            refresh(kind, root)
        except BuildError as exc:
            raise BuildError(exc.where, exc.what, f"{exc.hint}; "
                             f"{_undo(dest, dest_dir, kept, kind, root)}") from None
        _say(f"refreshed: systemd-{kind} refresh{f' --root={root}' if root else ''}")
    elif not args.no_refresh:
        _say(f"not refreshing the offline tree {root} (pass --refresh to merge into it now)")
    visible = []
    if refreshed:
        state = {n for s in hostmod.merge_state(host, kind) for n in s.extensions}
        visible = visible_files(image, kind, host)
        if name in state and visible:
            _say(f"merged: {', '.join(visible)} visible")
        else:
            warnings.append(f"after refresh '{name}' is not merged (merged: "
                            f"{', '.join(sorted(state)) or 'nothing'}); run `sysext-pipeline "
                            "doctor` to see why")
    hier = " and ".join(HIERARCHIES[kind])
    warnings.append(READ_ONLY_WARNING.format(hier=hier))
    for warning in warnings:
        _say(f"{clikit.label('warning')} {warning}")
    if args.json:
        return clikit.emit(args, {"installed": str(dest), "kind": kind, "name": name,
                                  "previous": [str(k) for k in kept], "refreshed": refreshed,
                                  "enabled": enabled, "visible": visible, "warnings": warnings,
                                  "check": verdict.as_dict()})
    return 0


def _undo(dest: Path, dest_dir: Path, kept: list[Path], kind: str, root: Path | None) -> str:
    """After a failed refresh: take the new image out again and put back what it replaced (the
    kept copies stay in the rollback directory too), then refresh once more; say what happened."""
    try:
        _remove(dest)
        for previous in kept:
            target = dest_dir / previous.name
            if previous.is_dir() and not previous.is_symlink():
                shutil.copytree(previous, target, symlinks=True)
            else:
                shutil.copy2(previous, target, follow_symlinks=False)
    except OSError as exc:
        return f"could not undo the install ({exc.strerror}: {exc.filename}): check {dest_dir}"
    done = (f"restored the previous version ({', '.join(p.name for p in kept)})" if kept
            else f"removed the new image {dest.name} again (nothing was installed before)")
    try:
        refresh(kind, root)
        return f"{done}, refreshed again"
    except BuildError:
        return f"{done}; the refresh fails without it too: run `sysext-pipeline doctor`"


def cmd_uninstall(args) -> int:
    root, host = _host(args)
    clikit.preflight("uninstall", features=_features(args, root))
    removed, left = [], []
    kinds = [args.kind] if args.kind else ["sysext", "confext"]
    for kind in kinds:
        for entry in hostmod.installed(host, kind, include_unsearched=False):
            if entry.name is None or (entry.name != args.name and
                                      base_name(entry.name) != args.name):
                continue
            if entry.directory not in (rules.install_dir(kind), rules.install_dir(kind, True)):
                left.append(entry.path)
                continue
            runtime = entry.directory == rules.install_dir(kind, runtime=True)
            kept = _keep_previous(entry.path, host.base / ROLLBACK[runtime] / kind)
            if entry.path.is_file() or entry.path.is_symlink():
                entry.path.unlink()  # a directory was moved into the rollback directory
            removed.append((kind, entry.path))
            _say(f"removed {entry.path} (kept as {kept})")
    if not removed:
        raise InputError(args.name, "no installed extension of that name",
                         "see `sysext-pipeline doctor` for what is installed")
    for path in left:
        _say(f"{clikit.label('warning')} {path} has the same name and was not installed by this tool: left alone")
    refreshed = []
    if _refreshes(args, root):
        for kind in sorted({k for k, _ in removed}):
            refresh(kind, root)
            refreshed.append(kind)
            _say(f"refreshed: systemd-{kind} refresh")
    if args.json:
        return clikit.emit(args, {"removed": [str(p) for _, p in removed],
                                  "left": [str(p) for p in left], "refreshed": refreshed})
    return 0


def cmd_rollback(args) -> int:
    """Put the previously installed version of NAME back (and keep the current one instead)."""
    root, host = _host(args)
    clikit.preflight("rollback", features=_features(args, root))
    for runtime in (False, True):
        for kind in ("sysext", "confext"):
            rollback_dir = host.base / ROLLBACK[runtime] / kind
            if not rollback_dir.is_dir():
                continue
            for prev in sorted(rollback_dir.iterdir()):
                pname = rules.discovered_name(prev.name, prev.is_dir(), kind, host.version)
                if pname is None or (pname != args.name and base_name(pname) != args.name):
                    continue
                directory = host.base / rules.install_dir(kind, runtime).lstrip("/")
                current = [e.path for e in _versions_of(host, kind, pname)
                           if e.path.parent == directory]
                with tempfile.TemporaryDirectory(dir=host.base / ROLLBACK[runtime]) as tmp:
                    held = Path(tmp) / prev.name
                    os.rename(prev, held)
                    dest, kept = place(held, directory, prev.name, rollback_dir, current)
                _say(f"rolled back: {dest}" + (f" (current kept: {kept[0]})" if kept else ""))
                refreshed = _refreshes(args, root)
                if refreshed:
                    refresh(kind, root)
                if args.json:
                    return clikit.emit(args, {"restored": str(dest), "kind": kind,
                                              "name": pname, "kept": [str(k) for k in kept],
                                              "refreshed": bool(refreshed)})
                return 0
    raise InputError(args.name, "no previous version kept", "install keeps one on replacement")


def register(sub) -> None:
    p = sub.add_parser("install", help="check, place, refresh and enable an extension image")
    p.add_argument("image", help="raw image or directory (NAME.raw / NAME)")
    clikit.add_root(p)
    p.add_argument("--runtime", action="store_true",
                   help="until reboot only: /run/extensions (/run/confexts)")
    p.add_argument("--enable", action="store_true",
                   help="enable systemd-sysext.service/systemd-confext.service (with --feed: "
                   "also systemd-sysupdate.timer, which downloads and installs new versions from the "
                   "feed)")
    clikit.add_refresh(p)
    p.add_argument("--force", action="store_true", help="install even if it would not merge")
    clikit.add_kind(p, "install as this kind (default: from the image's extension-release "
                       "file, else its contents)")
    p.add_argument("--feed", action="store_true", help="IMAGE is a feed (a directory made by "
                   "publish, or its URL): install its transfer files and release key so that "
                   "systemd-sysupdate keeps the host updated from it")
    clikit.add_timeout(p)  # the waits of install --feed URL
    clikit.add_systemd(p)
    clikit.add_json(p)
    p.set_defaults(func=cmd_install)

    p = sub.add_parser("uninstall", help="remove an installed extension (kept for rollback)")
    p.add_argument("name", help="extension name: NAME of NAME.raw, or of NAME_VERSION.raw "
                   "(every version of it goes)")
    clikit.add_root(p)
    clikit.add_kind(p, "only this kind (default: both)")
    clikit.add_refresh(p)
    clikit.add_systemd(p)
    clikit.add_json(p)
    p.set_defaults(func=cmd_uninstall)

    p = sub.add_parser("rollback", help="put back the version an install replaced")
    p.add_argument("name", help="extension name: NAME of NAME.raw, or of NAME_VERSION.raw")
    clikit.add_root(p)
    clikit.add_refresh(p)
    clikit.add_systemd(p)
    clikit.add_json(p)
    p.set_defaults(func=cmd_rollback)

