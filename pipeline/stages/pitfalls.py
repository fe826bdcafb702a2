"""Runtime pitfalls of a payload: things that build fine and then surprise on the host.

Each check has a code, a severity, the paths that trigger it and the fix. ``build`` prints them
and records them in the manifest; ``plan`` shows the same list before anything is built.
Severities are "warning" and "severe" (the image will misbehave on most hosts) — never
"error", which the CLI reserves for failures that stop the build and exit non-zero.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from ..errors import InputError
from ..formats import entry as E
from .staging import Record

UNIT_SUFFIXES = (".service", ".socket", ".timer", ".path", ".mount", ".automount", ".target",
                 ".slice", ".scope", ".swap", ".device")
UNIT_DIRS = {"sysext": ("usr/lib/systemd/system/", "usr/lib/systemd/user/"),
             "confext": ("etc/systemd/system/", "etc/systemd/user/")}
#: Dependency directories (NAME.wants/ ...) whose links the manager reads at (re)load.
DEPENDENCY_DIRS = (".wants", ".requires", ".upholds")
#: Generators run at boot and at every daemon-reload. Only a sysext can carry working ones: a
#: confext is mounted noexec (that is its own finding).
GENERATOR_DIRS = {"sysext": ("usr/lib/systemd/system-generators/",
                             "usr/lib/systemd/user-generators/",
                             "usr/lib/systemd/system-environment-generators/",
                             "usr/lib/systemd/user-environment-generators/"),
                  "confext": ()}
SEVERE, WARNING = "severe", "warning"
#: Host files an extension must not replace: the overlay would make the host run this copy.
HOST_CRITICAL = re.compile(
    r"^usr/(lib/systemd/systemd|lib/systemd/libsystemd-shared[^/]*\.so|"
    r"lib(64|32|x32)?/(ld-linux[^/]*|ld64[^/]*)\.so[.0-9]*|"
    r"lib/[^/]+-linux-gnu[^/]*/(libc|libm|libpthread|libdl|libsystemd|libudev)\.so[.0-9]*|"
    r"lib/[^/]+-linux-gnu[^/]*/ld-linux[^/]*|bin/(sh|bash|dash|mount|umount|systemctl)|"
    r"sbin/init|lib/os-release)$")
#: Host files a confext must not replace: identity, accounts, the loader, mounts. A confext's
#: etc/os-release is the worst: systemd then matches every other extension against it.
HOST_CRITICAL_ETC = frozenset({
    "etc/os-release", "etc/passwd", "etc/shadow", "etc/group", "etc/gshadow",
    "etc/ld.so.preload", "etc/ld.so.conf", "etc/systemd/system.conf", "etc/fstab",
    "etc/machine-id"})
#: Where systemd reads extension-release files; the pipeline writes the image's own.
RELEASE_DIRS = ("usr/lib/extension-release.d", "etc/extension-release.d")
#: Where a symlink can point into the host's state and configuration, which a sysext lacks.
HOST_ONLY_TOPS = ("etc", "var", "srv")


def unit_paths(kind: str, paths) -> list[str]:
    """What an image of ``kind`` carries that the service manager reads only when it (re)loads:
    unit files, their drop-ins (``NAME.service.d/*.conf``, type drop-ins ``service.d/*.conf``),
    dependency links (``NAME.target.wants/...``) and generators."""
    dropin_dirs = tuple(f"{s}.d" for s in UNIT_SUFFIXES)
    found = []
    for path in paths:
        if path.startswith(GENERATOR_DIRS[kind]) and path.count("/") == 4:
            found.append(path)
            continue
        base = next((d for d in UNIT_DIRS[kind] if path.startswith(d)), None)
        if base is None:
            continue
        parts = path[len(base):].split("/")
        if len(parts) == 1 and parts[0].endswith(UNIT_SUFFIXES):
            found.append(path)
        elif len(parts) == 2 and parts[1] and (
                parts[0].endswith(dropin_dirs) and parts[1].endswith(".conf")
                or parts[0].endswith(DEPENDENCY_DIRS)):
            found.append(path)
    return sorted(found)


@dataclass(frozen=True)
class Finding:
    code: str
    severity: str  # WARNING | SEVERE (the image will misbehave on most hosts)
    message: str
    fix: str
    paths: tuple[str, ...] = ()

    def line(self) -> str:
        shown = ", ".join(self.paths[:3]) + (f" (+{len(self.paths) - 3} more)"
                                             if len(self.paths) > 3 else "")
        where = f" [{shown}]" if shown else ""
        return f"{self.code}: {self.message}{where} — fix: {self.fix}"

    def to_json(self) -> dict:
        return {**asdict(self), "paths": list(self.paths)}


def find(kind: str, records: Mapping[str, Record], fields: Mapping[str, str],
         target: Mapping, provided: frozenset[str] = frozenset(),
         packages_with_scripts: tuple[tuple[str, tuple[str, ...]], ...] = (),
         script_text: Mapping[str, Mapping[str, str]] | None = None,
         open_data=None) -> list[Finding]:
    """All pitfalls of one image (``kind``: sysext or confext) with its release ``fields``.

    ``provided``: absolute paths the host gets from elsewhere in this recipe — the companion
    image's files and what the recipe's tmpfiles.d lines create
    (:func:`pipeline.stages.layout.provided_paths`); a symlink pointing there does not dangle.
    ``packages_with_scripts``: (package, script names) for every input package with maintainer
    scripts (``("postinst",)``, ``("%post",)``), none of which ever runs for an extension;
    ``script_text``: package → {script: text} where the scripts could be read
    (:func:`script_texts`), so the finding says what they do; ``open_data(path)``: the content
    of a file in the image (the staging tree's; None when not written), for the sysusers.d
    files that make a script's users.
    """
    found: list[Finding] = []

    def add(code, severity, message, fix, paths):
        paths = tuple(sorted(paths))
        if paths:
            found.append(Finding(code, severity, message, fix, paths))

    files = {p: r for p, r in records.items() if r.kind == E.FILE}
    units = unit_paths(kind, records)
    if units and fields.get("EXTENSION_RELOAD_MANAGER") != "1":
        add("units-need-reload", WARNING,
            "systemd units, drop-ins or generators in the image are not seen until the service "
            "manager reloads",
            "set target.reload_manager = true (EXTENSION_RELOAD_MANAGER=1, systemd 255+), or run "
            "`systemctl daemon-reload` after every merge", units)
    if kind == "confext":
        add("confext-noexec", SEVERE,
            "confext mounts are noexec,nosuid: these executables and setuid/setgid files will "
            "not run from /etc", "ship them in a sysext (/usr) and keep only configuration here",
            [p for p, r in files.items() if r.mode & 0o7111])
    policy = getattr(records, "special_policy", "warn")
    host_special = getattr(records, "host_special", {})
    if kind != "confext" and policy != "allow":
        add("setuid", SEVERE, "setuid/setgid files: they run with their owner's or group's "
            "rights on every host that merges the image (sysext mounts keep suid)",
            "drop the bit if it is not needed; after review, policy.special_files = \"allow\" "
            "silences this and \"error\" refuses it",
            [p for p, r in files.items() if r.mode & 0o6000])
    if policy != "allow":
        add("world-writable", SEVERE, "world-writable paths without the sticky bit: any user "
            "on the host can replace or fill them", "fix the mode (or add the sticky bit to a "
            "shared directory); policy.special_files = \"error\" refuses such packages",
            [p for p, r in records.items() if world_writable(r.kind, r.mode)]
            + [p for p, what in host_special.items() if what == "world-writable"])
    add("foreign-release-file", SEVERE,
        "release files the pipeline did not write: systemd reads extension-release.NAME as the "
        "identity of any image named NAME (and this one's own file decides whether it merges)",
        "exclude them with filter.exclude; the pipeline writes the image's release file",
        [p for p, r in records.items() if p.startswith(tuple(d + "/" for d in RELEASE_DIRS))
         and r.origin != "extension-release"])
    add("kernel-modules", WARNING,
        "kernel modules are bound to one kernel version and need depmod; they break on the "
        "next kernel update", "build one image per kernel (target.sysext_level or VERSION_ID "
        "pinned to the OS release that ships that kernel) and run depmod after merging",
        [p for p in files if p.startswith("usr/lib/modules/") and ".ko" in p.rsplit("/", 1)[-1]])
    add("udev-rules", WARNING,
        "udev rules or hwdb entries take effect only after udev reloads (hwdb needs "
        "systemd-hwdb update, which cannot write into a read-only /usr)",
        "run `udevadm control --reload && udevadm trigger` after merging; for hwdb, ship the "
        "compiled hwdb.bin or use rules instead",
        [p for p in files if re.match(r"^(usr/lib|etc)/udev/(rules\.d|hwdb\.d)/", p)])
    shadowing = [p for p in records if HOST_CRITICAL.match(p) or
                 kind == "confext" and p in HOST_CRITICAL_ETC]
    identity = " etc/os-release replaces the host's identity: systemd-sysext and "\
        "systemd-confext then match every other extension against this copy." \
        if "etc/os-release" in shadowing else ""
    add("shadows-host", SEVERE, "these files replace the host's own: the host would run or "
        "read the extension's copy (and break on the next OS update)." + identity,
        "exclude them with filter.exclude; they belong to the base OS", shadowing)
    add("config-in-usr", WARNING, "the package marks these files as configuration, but "
        "under /usr they are read-only once merged", "override them from /etc (a confext or "
        "drop-in directory) instead of editing them",
        [p for p, r in files.items() if r.config and p.startswith(("usr/", "opt/"))
         and not p.startswith("usr/share/factory/")])
    if kind == "sysext":
        add("dangling-link", WARNING, "symlinks point into /etc, /var or /srv, which a sysext "
            "does not carry, and nothing in this recipe provides the target: they dangle "
            "unless the host has it",
            "ship the target with policy.etc = \"factory\" or a confext, or drop the link",
            [p for p, r in records.items() if r.kind == E.SYMLINK and
             _dangles(p, r.target or "", provided)])
    found += script_findings(packages_with_scripts, script_text or {},
                             sysusers_names(records, open_data))
    level = fields.get(f"{kind.upper()}_LEVEL")
    # A dotted VERSION_ID (RHEL 9.4, Flatcar 3815.2.0, openSUSE Leap 15.5) changes with
    # routine updates; Debian's "12" or Fedora's "40" stay for the life of the release.
    if fields.get("ID") != "_any" and "." in fields.get("VERSION_ID", "") and not level:
        found.append(Finding(
            "version-id-only", WARNING,
            f"the image matches only hosts with VERSION_ID={fields['VERSION_ID']} exactly "
            "(string compare): on OSes whose VERSION_ID changes with updates, every update "
            "stops the merge",
            f"set target.{kind}_level (compared instead when the host has one), or ID=_any "
            "with ARCHITECTURE for payloads that do not depend on the OS version"))
    # systemd merges an image without VERSION_ID (and without a level) only on hosts whose
    # os-release has neither: rolling releases. Debian, Fedora, Ubuntu ... all have one.
    if fields.get("ID") not in (None, "_any") and not fields.get("VERSION_ID") and not level:
        found.append(Finding(
            "no-version", WARNING,
            f"the image has neither VERSION_ID nor {kind.upper()}_LEVEL: only hosts without "
            f"VERSION_ID (rolling releases) merge it; a {fields['ID']} host that has one "
            "ignores it (\"does not contain VERSION_ID\")",
            f"set target.version_id or target.{kind}_level, or ID=_any with "
            "target.architecture"))
    if fields.get("ID") == "_any" and not fields.get("ARCHITECTURE") and any(
            _looks_binary(p, r) for p, r in files.items()):
        found.append(Finding(
            "any-without-arch", WARNING, "ID=_any without ARCHITECTURE: binaries would merge "
            "on hosts of any architecture and any OS version", "set target.architecture"))
    return found


def world_writable(kind: str, mode: int) -> bool:
    """Writable by others, and not a sticky directory (a symlink's own mode means nothing)."""
    if kind == E.SYMLINK or not mode & 0o002:
        return False
    return not (kind == E.DIR and mode & 0o1000)


def special_of(kind: str, mode: int) -> str | None:
    """What ``policy.special_files`` judges about an entry: setuid, setgid, world-writable."""
    if kind in (E.FILE, E.HARDLINK) and mode & 0o4000:
        return "setuid"
    if kind in (E.FILE, E.HARDLINK) and mode & 0o2000:
        return "setgid"
    if world_writable(kind, mode):
        return "world-writable"
    return None


def _dangles(path: str, target: str, provided: frozenset[str]) -> bool:
    """A link into the host's /etc, /var or /srv (absolute, or relative and resolving there)
    whose target nothing in the recipe provides."""
    if not target:
        return False
    if target.startswith("/"):
        resolved = posixpath.normpath(target)
    else:  # relative to the link's directory; ".." above / stays at / as the kernel does
        resolved = posixpath.normpath(posixpath.join("/", posixpath.dirname(path), target))
    resolved = "/" + resolved.lstrip("/")
    top = resolved.split("/")[1]
    return top in HOST_ONLY_TOPS and resolved != f"/{top}" and resolved not in provided


def _looks_binary(path: str, record: Record) -> bool:
    return bool(record.mode & 0o111) or ".so" in path.rsplit("/", 1)[-1]


def payload_paths(records: Mapping[str, Record], release_path: str) -> list[str]:
    """What an image carries besides its directories and its own extension-release file."""
    return [p for p, r in records.items() if r.kind != E.DIR and p != release_path]


def refuse_empty(recipe, staged) -> None:
    """An image whose payload ended up empty (every path dropped, excluded, or no package at
    all) is an error naming why, unless the recipe sets ``policy.empty = "allow"`` (issue 16
    §4: it used to build with exit 0 and no word)."""
    if getattr(recipe, "empty_payload", "error") == "allow":
        return
    for image in staged.images:
        if payload_paths(image.tree.records, image.release_path):
            continue
        dropped, excluded = len(staged.report.dropped), staged.report.excluded
        why = "; ".join(
            ([f"{dropped} path{'s' if dropped != 1 else ''} dropped"] if dropped else [])
            + ([f"{excluded} excluded by filter.exclude"] if excluded else [])) \
            or "no package or [files] entry gave it a file"
        raise InputError(f"{recipe.path}: policy.empty", f"the {image.kind} {image.name} would "
                         f"hold only its extension-release file ({why})",
                         "check [[source]], [files], filter.exclude and extension.kind; "
                         "`sysext-pipeline plan` lists what is dropped and why; "
                         'policy.empty = "allow" builds it anyway')


# --- maintainer scripts: what they would have done, and what of it the host then lacks ---------

#: Scripts a package manager runs when it installs a package; removal scripts (prerm, postrm,
#: %preun, %postun) only undo what these did, and nothing removes an extension through them.
INSTALL_SCRIPTS = ("preinst", "config", "postinst", "%pretrans", "%pre", "%post", "%posttrans")
MAX_SCRIPT = 1 << 20  # bytes of one script read (they are a few KiB)
#: debhelper's generated sections whose effect no extension needs: dh_installdeb's conffile
#: moves (dpkg-maintscript-helper), dh_apparmor's (re)load of a profile kept in /etc
INERT_SECTIONS = ("dh_installdeb", "dh_apparmor")
#: commands that change nothing an extension needs: the shell's own, queries, and removals
#: (a host that never had the package has no leftovers to clean)
INERT_COMMANDS = frozenset({
    "[", "[[", "test", "true", "false", ":", "echo", "printf", "set", "exit", "return",
    "shift", "local", "export", "unset", "readonly", "break", "continue", "eval", "trap", ".",
    "if", "then", "else", "elif", "fi", "case", "esac", "for", "while", "until", "do", "done",
    "in", "!", "{", "}", "getent", "id", "dpkg", "dpkg-query", "dpkg-maintscript-helper",
    "dirname", "basename", "which", "command", "grep", "sed", "cat", "rm", "rmdir",
    "userdel", "groupdel", "deluser", "delgroup", "aa-enabled", "apparmor_parser",
})
#: options of adduser/useradd/addgroup/groupadd that take a value (the name is what remains)
_VALUE_OPTIONS = frozenset({
    "--home", "--shell", "--ingroup", "--gecos", "--uid", "--gid", "--firstuid", "--lastuid",
    "--firstgid", "--lastgid", "--conf", "--comment", "--add_extra_groups", "-d", "--home-dir",
    "-s", "-g", "-G", "--groups", "-u", "-c", "-K", "--key", "-k", "--skel", "-e", "-f",
    "-p", "--password", "-R", "--root", "-P", "--prefix", "-b", "--base-dir",
})


@dataclass
class ScriptEffects:
    """What install-time scripts would make: system users (name → (group, home)), groups, and
    the other commands this module does not judge (their names)."""

    users: dict[str, tuple[str | None, str | None]]
    groups: list[str]
    other: list[str]


def _commands(text: str):
    """The simple commands of a shell script, as word lists: continuation lines joined,
    comments and debhelper's inert sections dropped, split at ; & | ( ) and backquotes."""
    import shlex

    text = re.sub(r"\\\n", " ", text)
    kept, skipping = [], False
    for line in text.splitlines():
        stripped = line.strip()
        section = re.match(r"#\s*Automatically added by (\S+?)/", stripped)
        if section:
            skipping = section[1] in INERT_SECTIONS
            continue
        if re.match(r"#\s*End automatically added section", stripped):
            skipping = False
            continue
        if not skipping:
            kept.append(line)
    for line in kept:
        lexer = shlex.shlex(line.replace("`", " ; ").replace("$(", " ; "), posix=True,
                            punctuation_chars=True)
        lexer.commenters = "#"
        lexer.whitespace_split = True
        try:
            tokens = list(lexer)
        except ValueError:  # an unbalanced quote: judge the words as they stand
            tokens = line.split()
        words: list[str] = []
        target = False  # the next word is a redirection's target (>/dev/null, 2>&1)
        for token in [*tokens, ";"]:
            if target:
                target = False
            elif token and set(token) <= set("<>&") and set(token) & set("<>"):
                target = True
                if words and words[-1].isdigit():
                    words.pop()  # the 2 of 2>&1
            elif token and set(token) <= set(";&|()"):
                if words:
                    yield words
                words = []
            elif not words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", token):
                continue  # an assignment before (or instead of) a command
            elif not words and token in ("if", "then", "else", "elif", "do", "while", "until",
                                         "!", "{", "exec", "command"):
                continue  # a keyword before a command
            else:
                words.append(token)


def _name_and_options(args: list[str]) -> tuple[list[str], dict[str, str]]:
    names, options, index = [], {}, 0
    while index < len(args):
        arg = args[index]
        if arg.startswith("-") and "=" in arg:
            key, _, value = arg.partition("=")
            options[key] = value
        elif arg in _VALUE_OPTIONS and index + 1 < len(args):
            options[arg] = args[index + 1]
            index += 1
        elif arg.startswith("-"):
            options[arg] = ""
        elif not arg.startswith(">"):
            names.append(arg)
        index += 1
    return names, options


def script_effects(texts: Mapping[str, str]) -> ScriptEffects:
    """What the install-time scripts among ``texts`` (script name → text) would make."""
    effects = ScriptEffects({}, [], [])
    for script in INSTALL_SCRIPTS:
        if script not in texts:
            continue
        for words in _commands(texts[script]):
            command = posixpath.basename(words[0])
            names, options = _name_and_options(words[1:])
            system = "--system" in options or "-r" in options
            if command in ("adduser", "useradd") and system and names:
                group = options.get("--ingroup") or options.get("-g") or options.get("--gid")
                if "--group" in options or "-U" in options or "--user-group" in options:
                    group = names[-1]
                home = options.get("--home") or options.get("-d") or options.get("--home-dir")
                effects.users[names[-1]] = (group, home)
            elif command in ("addgroup", "groupadd") and system and names:
                effects.groups.append(names[-1])
            elif command == "adduser" and "--group" in options and names:
                effects.groups.append(names[-1])
            elif command not in INERT_COMMANDS and command not in effects.other:
                effects.other.append(command)
    return effects


def script_texts(packages, fetched) -> dict[str, dict[str, str]]:
    """package name → {script: text} for the .deb packages among ``packages`` (the extract
    report's records) that have maintainer scripts, read from their control.tar as dpkg would
    run them; a package whose scripts cannot be read is left out (the finding then names its
    scripts only)."""
    from ..errors import PipelineError
    from ..formats.ar import read_ar
    from ..formats.compression import Limits, open_decompressed, read_upto
    from ..formats.tar import tar_entries

    paths = {getattr(f, "sha256", None): getattr(f, "path", None) for f in fetched}
    out: dict[str, dict[str, str]] = {}
    for package in packages:
        path = paths.get(package.get("sha256"))
        if not package.get("scripts") or package.get("format") != "deb" or path is None:
            continue
        texts: dict[str, str] = {}
        try:
            with open(path, "rb") as fh:
                for member in read_ar(fh, package["name"]):
                    if not member.name.startswith("control.tar"):
                        continue
                    where = f"{package['name']}:{member.name}"
                    stream = open_decompressed(member.data, member.name, where, Limits(),
                                               ahead=False)
                    for entry in tar_entries(stream, where):
                        base = entry.path.removeprefix("./")
                        if entry.kind == E.FILE and base in package["scripts"]:
                            texts[base] = read_upto(entry.data, min(entry.size, MAX_SCRIPT)
                                                    ).decode("utf-8", "replace")
                    break
        except (OSError, PipelineError):
            continue  # extraction read this package: a failure here only costs the detail
        out[package["name"]] = texts
    return out


def sysusers_names(records: Mapping[str, Record], open_data=None) -> set[str]:
    """Users and groups the image's sysusers.d files define (``u NAME``, ``g NAME``; a ``u``
    line makes its group of the same name too)."""
    names: set[str] = set()
    if open_data is None:
        return names
    for path, record in records.items():
        if record.kind != E.FILE or not re.fullmatch(r"usr/lib/sysusers\.d/[^/]+\.conf", path):
            continue
        try:
            handle = open_data(path)
        except OSError:
            continue
        if handle is None:
            continue
        with handle:
            text = handle.read(MAX_SCRIPT).decode("utf-8", "replace")
        for line in text.splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0] in ("u", "u!", "g"):
                names.add(fields[1])
    return names


def _sysusers_lines(effects: ScriptEffects, missing_users, missing_groups) -> list[str]:
    lines = [f"g {g} -" for g in missing_groups]
    for user in missing_users:
        group, home = effects.users[user]
        gid = f"-:{group}" if group and group != user else "-"
        lines.append(f"u {user} {gid} - {home or '-'}")
    return lines


def script_findings(packages_with_scripts, texts: Mapping[str, Mapping[str, str]],
                    defined: set[str]) -> list[Finding]:
    """The maintainer-scripts findings: for a package whose scripts could be read, what they
    would make that the image does not (system users and groups: a sysusers.d file is the fix;
    other commands: named); for one whose scripts could not be read, its script names."""
    found: list[Finding] = []
    unread, other = [], []
    for name, scripts in packages_with_scripts:
        if not scripts:
            continue
        if name not in texts:
            unread.append(f"{name} ({', '.join(scripts)})")
            continue
        effects = script_effects(texts[name])
        users = [u for u in effects.users if u not in defined]
        # a `u NAME` line makes the group NAME too; another group needs its own `g` line
        groups = [g for g in effects.groups if g not in defined and g not in effects.users]
        if users or groups:
            made = ", ".join([f"the system user {u}" + (
                f" (group {effects.users[u][0]})" if effects.users[u][0] else "")
                for u in users] + [f"the system group {g}" for g in groups])
            lines = _sysusers_lines(effects, users, groups)
            found.append(Finding(
                "maintainer-script-users", WARNING,
                f"{name}'s install scripts create {made}, which will not exist on the host (an "
                "extension runs no maintainer scripts): whatever runs as it, drops privileges "
                "to it or owns files by it fails",
                f"ship usr/lib/sysusers.d/{name}.conf ([files]) with the line"
                f"{'s' if len(lines) > 1 else ''} " + "; ".join(f"`{x}`" for x in lines)
                + " (systemd-sysusers makes what it lists: run it after merging)",
                (name,)))
        if effects.other:
            other.append(f"{name} (runs {', '.join(effects.other)})")
    if unread or other:
        found.append(Finding(
            "maintainer-scripts", WARNING,
            "these packages have maintainer scripts, which never run for an extension: the "
            "users and groups, host keys, alternatives, caches or enabled units they would make "
            "do not exist on the host",
            "check what the scripts do and ship the result instead (sysusers.d and tmpfiles.d "
            "files, [files] entries), or set it up on the host", tuple(sorted(unread + other))))
    return found
