"""``doctor``: inspect a host (or --root tree) for everything that keeps extensions from working.

Findings, each with a severity (error, warning, info), a code and a fix: systemd version; every
image in every search directory of that version (and the directories other versions search) with
its verdict from pipeline/systemd/rules.py; shadowing and masking; merged-now vs on-disk (stale
merges); whether the merge services are enabled; read-only or immutable hierarchies; signed images
and installed verity certificates; files two extensions both provide (and which wins by systemd's
layer order) and host files an extension covers; shared libraries that ELF binaries in an
extension need and that neither the extensions nor the host provide.
"""

from __future__ import annotations

import fcntl
import os
import re
import struct
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import VERDICT, PipelineError
from ..host import facts as hostmod
from ..host import images, signature
from ..systemd import rules
from ..systemd.release import HIERARCHIES
from .check import add_host_arguments, apply_breakers, evaluate_entry, host_from_args

ERROR, WARNING, INFO = "error", "warning", "info"
_FS_IOC_GETFLAGS = 0x80086601
_FS_IMMUTABLE_FL = 0x10


@dataclass
class Finding:
    severity: str
    code: str
    message: str
    fix: str = ""
    subject: str = ""


# ---- ELF: DT_NEEDED / DT_SONAME / DT_RUNPATH, pure Python -----------------------------------

def elf_dynamic(path: Path) -> dict | None:
    """{'needed': [...], 'soname': str|None, 'runpath': [...], 'class': 32|64, 'machine': int}
    for a dynamically linked ELF file; None when ``path`` is not one."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
            if len(head) < 52 or head[:4] != b"\x7fELF":
                return None
            is64 = head[4] == 2
            end = "<" if head[5] == 1 else ">"
            if is64:
                (_, machine, _, _, phoff, _, _, _, phentsize, phnum) = struct.unpack(
                    end + "HHIQQQIHHH", head[16:58])
            else:
                (_, machine, _, _, phoff, _, _, _, phentsize, phnum) = struct.unpack(
                    end + "HHIIIIIHHH", head[16:46])
            fh.seek(phoff)
            table = fh.read(phentsize * phnum)
            loads, dynamic = [], None
            for i in range(phnum):
                raw = table[i * phentsize:(i + 1) * phentsize]
                if is64:
                    ptype, _, off, vaddr, _, filesz, _, _ = struct.unpack(end + "IIQQQQQQ", raw[:56])
                else:
                    ptype, off, vaddr, _, filesz, _, _, _ = struct.unpack(end + "IIIIIIII", raw[:32])
                if ptype == 1:
                    loads.append((vaddr, off, filesz))
                elif ptype == 2:
                    dynamic = (off, filesz)
            if dynamic is None:
                return None
            fh.seek(dynamic[0])
            data = fh.read(dynamic[1])
            size = 16 if is64 else 8
            fmt = end + ("qQ" if is64 else "iI")
            entries = [struct.unpack(fmt, data[i:i + size]) for i in range(0, len(data) - size + 1,
                                                                          size)]
            strtab = next((v for t, v in entries if t == 5), None)
            if strtab is None:
                return None
            stroff = next((off + strtab - vaddr for vaddr, off, sz in loads
                           if vaddr <= strtab < vaddr + sz), strtab)

            def string(offset: int) -> str:
                fh.seek(stroff + offset)
                buf = fh.read(4096)
                return buf.split(b"\0", 1)[0].decode(errors="replace")

            result = {"needed": [], "soname": None, "runpath": [], "class": 64 if is64 else 32,
                      "machine": machine}
            for tag, value in entries:
                if tag == 0:
                    break
                if tag == 1:
                    result["needed"].append(string(value))
                elif tag == 14:
                    result["soname"] = string(value)
                elif tag in (15, 29):
                    result["runpath"] += string(value).split(":")
            return result
    except (OSError, struct.error):
        return None


def library_dirs(base: Path) -> list[Path]:
    """Where the dynamic loader of the tree looks: ld.so.conf(.d) plus the defaults."""
    dirs = ["usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu", "usr/lib64", "lib64", "usr/lib",
            "lib", "usr/lib/aarch64-linux-gnu", "usr/local/lib"]
    confs = [base / "etc/ld.so.conf"] + sorted((base / "etc/ld.so.conf.d").glob("*.conf")) \
        if (base / "etc/ld.so.conf.d").is_dir() else [base / "etc/ld.so.conf"]
    for conf in confs:
        if conf.is_file():
            for line in conf.read_text(errors="replace").splitlines():
                line = line.split("#", 1)[0].strip()
                if line.startswith("/"):
                    dirs.append(line.lstrip("/"))
    out = []
    for d in dirs:
        resolved = images.chase(base, d)
        if resolved is not None and resolved.is_dir() and resolved not in out:
            out.append(resolved)
    return out


# ---- the inspection ----------------------------------------------------------------------

def _immutable(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        buf = fcntl.ioctl(fd, _FS_IOC_GETFLAGS, b"\0" * 8)
        return bool(struct.unpack("<i", buf[:4])[0] & _FS_IMMUTABLE_FL)
    except OSError:
        return False
    finally:
        os.close(fd)


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def diagnose(host: hostmod.Host) -> tuple[list[Finding], list[dict]]:
    findings: list[Finding] = []
    inventory: list[dict] = []
    version = host.version
    findings.append(Finding(INFO, "host.systemd", f"systemd {rules.format_version(version)} "
                            f"({host.version_source}); os-release "
                            f"{host.os_release.path or 'missing'}: ID="
                            f"{host.os_release.fields.get('ID', '')} VERSION_ID="
                            f"{host.os_release.fields.get('VERSION_ID', '')}; architecture "
                            f"{host.architecture}{'; initrd' if host.initrd else ''}"))
    if not host.os_release.fields.get("ID"):
        r = rules.rule("host.no-id")
        findings.append(Finding(ERROR, r.id, r.summary, r.fix.format(root=host.base)))
    kinds = [kind for kind in ("sysext", "confext") if rules.ships_tool(kind, version)]
    merging: dict[str, list[tuple[str, images.Image]]] = {k: [] for k in kinds}
    for kind in kinds:
        entries = hostmod.installed(host, kind)
        searched = rules.search_dirs(kind, version, host.initrd)
        judged = []  # (entry, image or None, own verdict)
        for entry in entries:
            try:
                image, verdict = evaluate_entry(host, entry, with_entries=True)
            except PipelineError as exc:
                if entry.directory in searched and entry.name is not None:
                    findings.append(Finding(WARNING, "image.unreadable", exc.line(),
                                            "remove or replace it", host.host_path(entry.path)))
                continue
            judged.append((entry, image, verdict))
        # systemd reads every discovered image before merging any: one that breaks the merge
        # takes the others down with it, and refreshing does not help until it is fixed
        breakers = [(e.path, v) for e, _, v in judged if v.verdict == rules.BREAKS and
                    e.directory in searched and e.name is not None and e.shadowed_by is None]
        for entry, image, verdict in judged:
            subject = host.host_path(entry.path)
            if entry.directory in searched:
                verdict = apply_breakers(verdict, entry.path, host, breakers)
            if image is None:  # never discovered: say why
                inventory.append({"path": subject, "kind": kind, "format": None,
                                  **verdict.as_dict()})
                findings.append(Finding(WARNING, verdict.rule.id, f"{entry.path.name}: "
                                        f"{verdict.verdict} — {verdict.summary}",
                                        verdict.fix, subject))
                continue
            inventory.append({"path": subject, "kind": kind, "format": image.format,
                              **verdict.as_dict()})
            severity = {rules.MERGES: INFO, rules.IGNORED: WARNING, rules.BREAKS: ERROR}[
                verdict.verdict]
            detail = f" ({verdict.field}: {verdict.values_text()})" \
                if verdict.verdict != rules.MERGES else ""
            findings.append(Finding(severity, verdict.rule.id,
                                    f"{kind} {verdict.name or entry.path.name}: "
                                    f"{verdict.verdict} — {verdict.summary}{detail}",
                                    verdict.fix if verdict.verdict != rules.MERGES else "",
                                    subject))
            if verdict.verdict == rules.MERGES or verdict.rule.id == "merge.broken-by-other":
                merging[kind].append((verdict.name, image))  # what merges once fixed
            _signature_findings(host, entry.path, verdict, findings, subject)
        _merge_findings(host, kind, merging[kind], entries, findings,
                        [(host.host_path(p), v) for p, v in breakers])
        _conflict_findings(host, kind, merging[kind], findings)
    _library_findings(host, merging.get("sysext", []), findings)
    for finding in findings:
        finding.fix = in_tree(host, finding.fix)
    return findings, inventory


def in_tree(host: hostmod.Host, fix: str) -> str:
    """``fix`` for a --root tree: the host directories it names (search and install
    directories, /etc/verity.d, os-release) as paths inside the tree, so that every command
    doctor prints works on the tree it looked at (issue 16 §8), not on the running host."""
    if host.root is None or not fix:
        return fix
    known = {rules.install_dir(kind, runtime) for kind in ("sysext", "confext")
             for runtime in (False, True)}
    known |= {d for kind in ("sysext", "confext")
              for d in rules.search_dirs(kind, host.version, host.initrd)}
    known |= {"/etc/verity.d", "/etc/os-release", "/usr/lib/os-release"}
    pattern = "|".join(re.escape(d) for d in sorted(known, key=len, reverse=True))
    base = str(host.root).rstrip("/")
    return re.sub(rf"(?<![\w./=-])({pattern})(?=[/\s),;:'`\"]|\.(?!\w)|$)", lambda m: base + m.group(1),
                  fix)


def _merge_findings(host, kind, merging, entries, findings, breakers=()) -> None:
    states = hostmod.merge_state(host, kind)
    merged_names = {n for s in states if s.merged for n in s.extensions}
    want = {name for name, _ in merging}
    since = max((s.since for s in states if s.merged and s.since), default=None)
    # the fixes name the tree doctor looked at (issue 16 §8: doctor --root suggests --root)
    where = f" --root={host.root}" if host.root is not None else ""
    tool = f"systemd-{kind}"
    refresh = f"{tool} refresh{where}"
    if breakers:  # a refresh cannot help before the culprit is fixed: name it
        culprits = "; ".join(f"{path} ({v.rule.id}): {v.fix}" for path, v in breakers)
        findings.append(Finding(ERROR, "merge.broken-by-other",
                                f"nothing can merge: {', '.join(p for p, _ in breakers)} "
                                f"break{'s' if len(breakers) == 1 else ''} the whole merge"
                                + (f" (also keeping {', '.join(sorted(want))} out)"
                                   if want else ""),
                                f"fix or remove {culprits}; then {refresh}"))
    elif merged_names or want:
        if not merged_names:
            findings.append(Finding(WARNING, "merge.not-merged",
                                    f"{', '.join(sorted(want))} would merge but nothing is "
                                    f"merged now", refresh))
        elif merged_names != want:
            findings.append(Finding(WARNING, "merge.stale",
                                    f"merged now: {', '.join(sorted(merged_names))}; on disk "
                                    f"and matching: {', '.join(sorted(want)) or 'none'}",
                                    refresh))
        elif since is not None:
            newer = [host.host_path(e.path) for e in entries if e.name in want and
                     e.path.exists() and e.path.stat().st_mtime > since + 1]
            if newer:
                findings.append(Finding(WARNING, "merge.stale",
                                        f"changed since the last merge: {', '.join(newer)}",
                                        refresh))
    for state in states:
        if state.merged:
            findings.append(Finding(INFO, "merge.read-only",
                                    f"{state.hierarchy} is a read-only overlay of "
                                    f"{', '.join(state.extensions)}: writes there fail until "
                                    f"`{tool} unmerge{where}`", "keep state in /var"))
    enabled = hostmod.unit_enabled(host, kind)
    persistent = [e for e in entries if not e.directory.startswith("/run") and e.name in want]
    if persistent and enabled is False:
        findings.append(Finding(WARNING, "service.disabled",
                                f"{hostmod.UNITS[kind]} is not enabled: "
                                f"{', '.join(sorted({e.name for e in persistent}))} will not "
                                "be merged after a reboot",
                                f"systemctl{where} enable {hostmod.UNITS[kind]}"))
    elif enabled:
        findings.append(Finding(INFO, "service.enabled", f"{hostmod.UNITS[kind]} is enabled"))
    for hierarchy in HIERARCHIES[kind]:
        # checked with the real 252 and 254: an existing hierarchy merges even when immutable
        # or read-only (the overlay is mounted on top); only creating a missing one can fail
        rel = hierarchy.lstrip("/")
        if images.chase(host.base, rel) is not None:
            continue
        shippers = sorted({name for name, image in merging for e in image.entries
                           if e.path == rel or e.path.startswith(rel + "/")})
        parent = images.chase(host.base, rel.rpartition("/")[0])
        if not shippers or parent is None:
            continue
        why = "immutable" if _immutable(parent) else "read-only" if _read_only(parent) else None
        if why:
            findings.append(Finding(ERROR, "hierarchy.immutable",
                                    f"{hierarchy} does not exist and its parent is {why}: "
                                    f"systemd cannot create the mount point, so what "
                                    f"{', '.join(shippers)} ship{'s' if len(shippers) == 1 else ''}"
                                    f" there stays missing (the merge reports `Failed`)",
                                    f"mkdir {_tree_path(host, hierarchy)} ("
                                    + ("chattr -i" if why == "immutable" else "remount "
                                       "read-write")
                                    + f" {_tree_path(host, hierarchy.rpartition('/')[0])} "
                                    "first)", hierarchy))
    for directory in rules.search_dirs(kind, host.version, host.initrd):
        real = images.chase(host.base, directory.lstrip("/"))
        if real is not None and real.is_dir() and _immutable(real):
            findings.append(Finding(WARNING, "directory.immutable",
                                    f"{directory} is immutable: install cannot place images",
                                    f"chattr -i {directory}"))


def _tree_path(host, path: str) -> str:
    """``path`` (as the host sees it) where a command run here finds it: under --root."""
    if host.root is None:
        return path or "/"
    return str(host.root).rstrip("/") + path if path else str(host.root)


def _signature_findings(host, path: Path, verdict: rules.Verdict, findings, subject) -> None:
    """Signed images: which certificate verifies them (signature.untrusted itself is the
    image's verdict, the same rule check and install apply; 259+ only warns)."""
    state = signature.state(path, host.base)
    if state.status == signature.TRUSTED:
        findings.append(Finding(INFO, "signature.verified", f"signature ({state.where}) "
                                f"verifies with {host.host_path(state.verified_by)}", "",
                                subject))
    elif state.status == signature.UNTRUSTED and verdict.rule.id != "signature.untrusted":
        r = rules.rule("signature.untrusted")
        if not r.applies(host.version):
            findings.append(Finding(WARNING, r.id, f"signed ({state.where}) but no installed "
                                    "certificate verifies it: this systemd falls back to "
                                    "unsigned verity only where the image policy allows it",
                                    r.fix.format(name=path.name.removesuffix(".raw")),
                                    subject))
    for why in state.unusable:
        findings.append(Finding(WARNING, "certificate.unusable", f"{why}: it verifies no image",
                                "replace it with a PEM or DER X.509 certificate, or remove it",
                                subject))


def _layer_order(names: list[str]) -> list[str]:
    """systemd sorts names with strverscmp_improved; the last one is the top layer."""
    return sorted(names, key=images.version_key)


def _conflict_findings(host, kind, merging, findings) -> None:
    hier = tuple(h.lstrip("/") + "/" for h in HIERARCHIES[kind])
    owners: dict[str, list[str]] = {}
    for name, image in merging:
        for entry in image.entries:
            if entry.type != "dir" and entry.path.startswith(hier) and \
                    "/extension-release.d/" not in entry.path:
                owners.setdefault(entry.path, []).append(name)
    order = _layer_order([n for n, _ in merging])
    merged_now = {n for s in hostmod.merge_state(host, kind) if s.merged for n in s.extensions}
    for path, names in sorted(owners.items()):
        if len(names) > 1:
            winner = max(names, key=order.index)
            findings.append(Finding(WARNING, "conflict.extensions",
                                    f"/{path} is in {', '.join(sorted(names))}: {winner} wins "
                                    "(the name that sorts last is the top layer)",
                                    "ship the file in one extension only", "/" + path))
        elif not merged_now and (host.base / path).exists() and not (host.base / path).is_dir():
            findings.append(Finding(INFO, "conflict.host",
                                    f"/{path} from {names[0]} covers the host's own file",
                                    "intended? the host's copy comes back on unmerge",
                                    "/" + path))


def _is_library_name(file_name: str) -> bool:
    return ".so" in file_name


def _library_findings(host, merging, findings) -> None:
    """library.missing: DT_NEEDED names that neither an extension nor the host provides.

    An extension provides a library name by a regular file, by a symlink that resolves to a
    file (inside the image, else in the host's tree: the merged /usr shows both), and by the
    DT_SONAME of an ELF file it ships (what ldconfig links and the loader's cache maps)."""
    if not merging:
        return
    hier = ("usr/", "opt/")
    unreadable: list[str] = []  # images whose files could not be read: their names only
    with tempfile.TemporaryDirectory(prefix="sysext-doctor-") as tmp:
        trees = []
        provided: set[str] = set()
        for i, (name, image) in enumerate(merging):
            elf_paths = [e.path for e in image.entries if e.type == "file" and
                         e.path.startswith(hier) and
                         (e.mode & 0o111 or _is_library_name(e.path.rsplit("/", 1)[-1]))]
            links = [e.path for e in image.entries if e.type == "symlink" and
                     e.path.startswith(hier) and _is_library_name(e.path.rsplit("/", 1)[-1])]
            if not elf_paths and not links:
                continue
            dest = Path(tmp) / str(i)
            try:
                tree = images.extract(image.path, dest, None if image.is_dir else
                                      sorted({p.split("/", 1)[0] for p in elf_paths + links}))
            except PipelineError as exc:
                # its listing was read: the names it ships still count, its ELF files (their
                # sonames and what they need) cannot be checked, and that is said
                provided.update(rel.rsplit("/", 1)[-1] for rel in elf_paths + links)
                unreadable.append(name)
                findings.append(Finding(WARNING, "image.unreadable",
                                        f"{name}: its files cannot be read, so its libraries "
                                        f"are not checked: {exc.line()}",
                                        "free space in the temporary directory, or replace the "
                                        "image", host.host_path(image.path)))
                continue
            trees.append((name, tree, elf_paths, links))
        infos: dict[tuple[int, str], dict | None] = {}
        for i, (_, tree, paths, links) in enumerate(trees):
            for rel in paths:
                provided.add(rel.rsplit("/", 1)[-1])
                info = infos[(i, rel)] = elf_dynamic(tree / rel)
                if info and info["soname"]:
                    provided.add(info["soname"])
            for rel in links:
                target = images.chase(tree, rel) or images.chase(host.base, rel)
                if target is not None and target.is_file():
                    provided.add(rel.rsplit("/", 1)[-1])
        host_dirs = library_dirs(host.base)
        for i, (name, tree, paths, _links) in enumerate(trees):
            missing: dict[str, list[str]] = {}
            for rel in paths:
                info = infos[(i, rel)]
                if info is None:
                    continue
                origin = "/" + rel.rsplit("/", 1)[0]
                for lib in info["needed"]:
                    if lib in provided or "/" in lib:
                        continue
                    if any((d / lib).exists() for d in host_dirs):
                        continue
                    if any(_runpath_has(host, tree, rp, origin, lib) for rp in info["runpath"]):
                        continue
                    missing.setdefault(lib, []).append("/" + rel)
            unsure = f" (unless {', '.join(unreadable)} provides it under another name: " \
                "its files could not be read)" if unreadable else ""
            for lib, users in sorted(missing.items()):
                findings.append(Finding(WARNING if unreadable else ERROR, "library.missing",
                                        f"{name}: {', '.join(users[:3])}"
                                        f"{' …' if len(users) > 3 else ''} need {lib}, which "
                                        f"neither the extension nor the host provides{unsure}",
                                        f"add the package that ships {lib} to the recipe, or "
                                        "rebuild against this host's libraries", lib))


def _runpath_has(host, tree: Path, runpath: str, origin: str, lib: str) -> bool:
    path = runpath.replace("$ORIGIN", origin).replace("${ORIGIN}", origin).lstrip("/")
    return (tree / path / lib).exists() or (host.base / path / lib).exists()


#: the verbs that read and judge images on a host: doctor reports the tools they lack
HOST_VERBS = ("check", "install", "doctor", "inspect")


def tool_findings() -> list[Finding]:
    """The external tools (pipeline/tools.py ``TOOLS``) the host-side commands need and this
    machine lacks or has too old; they are of the machine running doctor, not of --root."""
    from .. import tools

    found = []
    seen = set()
    for verb in HOST_VERBS:
        for tool in tools.needed(verb, ("squashfs", "erofs", "ddi", "refresh")):
            if tool.name in seen:
                continue
            seen.add(tool.name)
            state = tools.status(tool.name)
            users = ", ".join(v for v in HOST_VERBS
                              if any(u.partition(":")[0] == v for u in tool.uses))
            if state.path is None:
                found.append(Finding(WARNING, "tool.missing", f"{tool.name} is not installed: "
                                     f"{users} cannot use it ({tool.why})",
                                     tools.install_hint(tool.name), tool.name))
            elif state.too_old:
                found.append(Finding(WARNING, "tool.too-old", f"{tool.name} {state.version} is "
                                     f"older than {tool.minimum} ({tool.why})",
                                     tools.install_hint(tool.name), tool.name))
    return found


def cmd_doctor(args) -> int:
    from . import clikit

    host = host_from_args(args)
    findings, inventory = diagnose(host)
    findings += tool_findings()
    # -- explain's hook (pipeline/commands/explain.py, H7): on a live host, the journal's last
    # systemd-sysext/confext lines explained (rule, fix); not for --root trees
    from .explain import doctor_human, doctor_report
    journal = doctor_report(host) if host.root is None else None
    # -- end of explain's hook
    errors = sum(f.severity == ERROR for f in findings)
    warnings = sum(f.severity == WARNING for f in findings)
    counts = f"{clikit.count(errors, 'error')}, {clikit.count(warnings, 'warning')}"
    if args.json:
        print(counts, file=sys.stderr)
        first = next((f for f in findings if f.severity == ERROR), None)
        return clikit.emit(args, {"host": host.as_dict(), "images": inventory,
                                  "findings": [asdict(f) for f in findings],
                                  "journal": journal}, VERDICT if errors else 0,
                           {"message": f"{clikit.count(errors, 'error')}: {first.message}" if first else "",
                            "subject": first.code if first else None, "field": None,
                            "hint": first.fix if first else None})
    else:
        for f in findings:
            line = f"{clikit.paint(f.severity, f'{f.severity:7}', sys.stdout)} {f.code}: " \
                   f"{f.message}"
            if f.fix:
                line += f"\n        fix: {f.fix}"
            print(line)
        if host.root is None:  # explain's hook
            print("\n".join(doctor_human(journal)))
    print(counts, file=sys.stderr)
    return VERDICT if errors else 0


def register(sub) -> None:
    from . import clikit

    p = sub.add_parser("doctor", help="diagnose extensions on a host (or --root tree)")
    add_host_arguments(p)
    clikit.add_json(p)
    p.set_defaults(func=cmd_doctor)
