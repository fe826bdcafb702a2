"""Where each payload path goes: the sysext, the confext, a tmpfiles.d line, or nowhere.

One function, :meth:`Router.route`, decides for every entry of every package, for ``build`` and
``plan`` alike — so the plan cannot promise a layout the build does not make. systemd merges
only /usr and /opt (sysext) and /etc (confext); the recipe's [policy] says what happens to /etc
in a sysext and to /var and /srv, which systemd never merges.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import InputError
from ..formats import entry as E
from ..systemd.release import HIERARCHIES

SYSEXT, CONFEXT = "sysext", "confext"
FACTORY = "usr/share/factory"
#: State directories that every host has with its own modes (/var/tmp is 1777): never touched.
STANDARD_STATE_DIRS = frozenset({
    "var", "var/lib", "var/log", "var/cache", "var/tmp", "var/spool", "var/mail", "var/opt",
    "var/local", "var/backups", "srv",
})


@dataclass(frozen=True)
class TmpfilesLine:
    """One tmpfiles.d(5) line, kept as fields until it is written.

    Paths come from packages and may hold spaces, quotes or ``%``: formatting them only at the
    end (:meth:`text`) is what lets every field be escaped the way systemd-tmpfiles parses it,
    and lets the file be sorted by path rather than by whatever a split of the text gives.
    ``path`` is absolute; ``argument`` is None for "-".
    """

    type: str
    path: str
    mode: str = "-"
    uid: str = "-"
    gid: str = "-"
    argument: str | None = None

    def text(self) -> str:
        """The line as systemd-tmpfiles (252+) reads it: the first six fields are split on
        whitespace with "…" quotes and C escapes removed, then specifiers (``%x``) expanded;
        the argument is the rest of the line, C-unescaped (never unquoted: a ``"`` stays a
        character) and specifier-expanded, with leading and trailing whitespace dropped."""
        fields = [self.type, _quote_field(self.path), self.mode, self.uid, self.gid, "-"]
        if self.argument is not None:
            fields.append(_escape_argument(self.argument))
        return " ".join(fields)

    def sort_key(self) -> tuple:
        """Parents before children (path components compare before any sibling name), then
        the same order for every build."""
        return (tuple(self.path.split("/")), self.type, self.mode, self.uid, self.gid,
                self.argument or "")


def _escape_argument_chars(value: str) -> str:
    """C escapes for the argument, which systemd-tmpfiles C-unescapes: backslash and control
    characters; ``%`` doubled (specifier expansion). Non-ASCII UTF-8 stays as it is; bytes
    that are not UTF-8 (surrogate-escaped names) become ``\\xNN``."""
    out = []
    for ch in value:
        if ch == "%":
            out.append("%%")
        elif ch == "\\":
            out.append("\\\\")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        elif 0xDC80 <= ord(ch) <= 0xDCFF:  # os.fsdecode's stand-in for a non-UTF-8 byte
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        else:
            out.append(ch)
    return "".join(out)


def _quote_field(value: str) -> str:
    """A whitespace-separated field: bare when nothing in it needs quoting, else "…".

    Inside the quotes only ``\\`` and ``\"`` are escaped: systemd 252 takes a backslash
    there as "the next character, literally" (``\\x41`` would become ``x41``), and a version
    that C-unescapes reads those two the same way; everything else (spaces, tabs, ``'``) is
    literal between double quotes. A line break cannot be in a line at all.
    """
    if "\n" in value or "\r" in value:
        raise InputError(value, "a path with a line break cannot be written to tmpfiles.d",
                         "exclude it with filter.exclude or set the policy to drop")
    doubled = value.replace("%", "%%")
    if value and not any(c.isspace() or c in "\"'\\" or not c.isprintable() for c in value):
        return doubled
    return '"' + doubled.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _escape_argument(value: str) -> str:
    """The argument runs to the end of the line: inner spaces are literal, but leading and
    trailing spaces would be stripped, and a lone ``-`` means "no argument"."""
    escaped = _escape_argument_chars(value)
    body = escaped.strip(" ")
    head = len(escaped) - len(escaped.lstrip(" "))
    tail = len(escaped) - head - len(body)
    escaped = "\\x20" * head + body + "\\x20" * tail
    return "\\x2d" if escaped == "-" else escaped


@dataclass(frozen=True)
class Route:
    image: str | None  # SYSEXT, CONFEXT, or None (dropped, or only a tmpfiles line)
    path: str = ""
    dropped: str | None = None  # why, when dropped
    tmpfiles: TmpfilesLine | None = None  # a tmpfiles.d line this entry needs


@dataclass
class Layout:
    """What routing produced: tmpfiles lines per image kind, images that received content."""

    tmpfiles: dict[str, list[TmpfilesLine]] = field(
        default_factory=lambda: {SYSEXT: [], CONFEXT: []})
    content: set[str] = field(default_factory=set)

    def created_paths(self) -> frozenset[str]:
        """Absolute paths every tmpfiles line of this recipe creates on the host."""
        return created_paths(line for lines in self.tmpfiles.values() for line in lines)


class Router:
    def __init__(self, kind: str, etc_policy: str, var_policy: str):
        self.kind = kind
        self.etc_policy = etc_policy
        self.var_policy = var_policy
        self.layout = Layout()

    def route(self, path: str, entry: E.Entry, member: str) -> Route:
        """Where ``path`` goes. A recipe's own ``[files]`` entry (``member`` is its dotted key,
        ``files.'PATH'``, as stages/extract.py names it) that would be dropped is an error: the
        recipe asked for that file by name (issue 16 §4)."""
        route = self._route(path, entry, member)
        if route.dropped and member.startswith(RECIPE_FILES) and member.endswith("'"):
            raise InputError(member, f"the recipe names this file but the image cannot carry "
                             f"it: {route.dropped}", _files_hint(self.kind, path))
        return route

    def _route(self, path: str, entry: E.Entry, member: str) -> Route:
        top = path.split("/", 1)[0]
        if "/" + top in HIERARCHIES[SYSEXT]:
            if self.kind == CONFEXT:
                return Route(None, dropped="outside /etc (the recipe pins kind = confext)")
            return self._keep(SYSEXT, path, entry)
        if top == "etc":
            return self._etc(path, entry, member)
        if top in ("var", "srv"):
            return self._state(path, entry, member)
        where = "/usr, /opt" if self.kind == SYSEXT else "/etc" if self.kind == CONFEXT else \
            "/usr, /opt, /etc"
        return Route(None, dropped=f"outside {where}: systemd never merges /{top}")

    def _keep(self, image: str, path: str, entry: E.Entry) -> Route:
        if entry.kind != E.DIR or path.count("/") > 0:
            self.layout.content.add(image)
        return Route(image, path)

    def _etc(self, path: str, entry: E.Entry, member: str) -> Route:
        if self.kind == CONFEXT or self.etc_policy == "confext":
            return self._keep(CONFEXT, path, entry)
        policy = self.etc_policy
        if policy == "error":
            raise InputError(member, "/etc content in a sysext (policy.etc = error)",
                             'set policy.etc = "confext", "factory" or "drop"')
        if policy == "drop":
            return Route(None, dropped='/etc in a sysext (policy.etc = "drop"; "factory" or '
                                       '"confext" would keep it)')
        return self._factory(path, entry)

    def _state(self, path: str, entry: E.Entry, member: str) -> Route:
        if self.var_policy == "error":
            raise InputError(member, f"/{path.split('/')[0]} content (policy.var = error)",
                             'set policy.var = "tmpfiles" or "drop"')
        if self.var_policy == "drop":
            return Route(None, dropped=f"/{path.split('/')[0]} is never merged "
                                       '(policy.var = "drop")')
        if self.kind == CONFEXT and entry.kind == E.FILE:
            return Route(None, dropped=f"a file under /{path.split('/')[0]} needs a sysext for "
                                       "its factory copy (the recipe pins kind = confext)")
        return self._factory(path, entry)

    def _factory(self, path: str, entry: E.Entry) -> Route:
        """Directories → ``d``, symlinks → ``L``, files → factory copy + ``C`` line."""
        absolute = "/" + path
        image = CONFEXT if self.kind == CONFEXT else SYSEXT
        if entry.kind == E.DIR:
            if path in STANDARD_STATE_DIRS or path == "etc":
                return Route(None)
            line = TmpfilesLine("d", absolute, f"{entry.mode & 0o7777:04o}", str(entry.uid),
                                str(entry.gid))
            return self._line(image, line)
        if entry.kind == E.SYMLINK:
            return self._line(image, TmpfilesLine("L", absolute, argument=entry.target or ""))
        self.layout.content.add(SYSEXT)
        factory = f"{FACTORY}/{path}"
        route = Route(SYSEXT, factory, tmpfiles=TmpfilesLine("C", absolute,
                                                             argument=f"/{factory}"))
        self.layout.tmpfiles[SYSEXT].append(route.tmpfiles)
        return route

    def _line(self, image: str, line: TmpfilesLine) -> Route:
        self.layout.tmpfiles[image].append(line)
        return Route(None, tmpfiles=line)


#: How a recipe's ``[files]`` entry is named as a member: its dotted key, ``files.'usr/bin/x'``
#: (package members are ``ARCHIVE:NAME``)
RECIPE_FILES = "files.'"


def _files_hint(kind: str, path: str) -> str:
    top = path.split("/", 1)[0]
    if kind == CONFEXT and "/" + top in HIERARCHIES[SYSEXT]:
        return 'a confext carries /etc only: move it under etc/, or set extension.kind = ' \
               '"sysext" or "auto"'
    if top == "etc":
        return 'set policy.etc = "confext" or "factory" to keep /etc content, or remove the entry'
    if top in ("var", "srv") and kind == CONFEXT:
        return f'the factory copy of a /{top} file lives in /usr: set extension.kind = ' \
               '"sysext" or "auto", or remove the entry'
    if top in ("var", "srv"):
        return 'set policy.var = "tmpfiles", or remove the entry'
    return "move it to usr/ or opt/ for a sysext, etc/ for a confext, or remove the entry"


def tmpfiles_path(kind: str, name: str) -> str:
    return f"usr/lib/tmpfiles.d/{name}.conf" if kind == SYSEXT else f"etc/tmpfiles.d/{name}.conf"


def tmpfiles_content(lines: Iterable[TmpfilesLine]) -> bytes:
    """Sorted by path so that parents come before children, and the file is the same for
    every build. Encoded with surrogateescape: a path that is not UTF-8 was escaped already."""
    header = "# Generated by sysext-pipeline: state and configuration that systemd never merges.\n"
    body = "".join(f"{line.text()}\n" for line in sorted(set(lines), key=TmpfilesLine.sort_key))
    return (header + body).encode("utf-8", "surrogateescape")


def created_paths(lines: Iterable[TmpfilesLine]) -> frozenset[str]:
    """Absolute paths that ``lines`` make exist on the host, with the parents they imply
    (systemd-tmpfiles creates missing parent directories): what a symlink in the image may
    point at without dangling."""
    paths = set()
    for line in lines:
        path = posixpath.normpath(line.path)
        while path not in ("/", ""):
            paths.add(path)
            path = posixpath.dirname(path)
    return frozenset(paths)


def provided_paths(layout: Layout, companions: Iterable[Iterable[str]] = ()) -> frozenset[str]:
    """What the host gets besides one image: the recipe's tmpfiles lines (``layout``) and the
    paths of its companion images (image-relative, e.g. the confext's tree records). This is
    the ``provided`` argument of :func:`pipeline.stages.pitfalls.find`."""
    provided = set(layout.created_paths())
    for paths in companions:
        provided.update("/" + p.strip("/") for p in paths if p.strip("/"))
    return frozenset(provided)


def image_names(name: str, kinds: set[str]) -> dict[str, str]:
    """Image name per kind. Both kinds → NAME (sysext) and NAME-config (confext): the two
    images share the output directory, and systemd 252–254 does not strip a `.confext`
    suffix from image names, so a distinct plain name is the one that works everywhere."""
    if kinds == {SYSEXT, CONFEXT}:
        return {SYSEXT: name, CONFEXT: f"{name}-config"}
    return {kind: name for kind in kinds}


def decide(recipe_kind: str, layout: Layout) -> tuple[set[str], str]:
    """Which images to make, and why, in words for the plan and the build output."""
    content = layout.content | {k for k, lines in layout.tmpfiles.items() if lines}
    if recipe_kind in (SYSEXT, CONFEXT):
        kinds = {recipe_kind} | (content & {CONFEXT} if recipe_kind == SYSEXT else set())
        why = f"the recipe pins kind = {recipe_kind}"
        if len(kinds) == 2:
            why += '; policy.etc = "confext" adds a companion confext for the /etc content'
        return kinds, why
    if content == {CONFEXT}:
        return {CONFEXT}, "kind = auto and the payload has only /etc content"
    if content == {SYSEXT, CONFEXT}:
        return content, ("kind = auto and the payload has both /usr or /opt content (a sysext) "
                         "and /etc content (a confext)")
    if not content:
        return {SYSEXT}, "kind = auto and the payload is empty: a sysext with only its release file"
    return {SYSEXT}, "kind = auto and the payload has only /usr or /opt content"
