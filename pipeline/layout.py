"""Where each payload path goes: the sysext, the confext, a tmpfiles.d line, or nowhere.

One function, :meth:`Router.route`, decides for every entry of every package, for ``build`` and
``plan`` alike — so the plan cannot promise a layout the build does not make. systemd merges
only /usr and /opt (sysext) and /etc (confext); the recipe's [policy] says what happens to /etc
in a sysext and to /var and /srv, which systemd never merges.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import InputError
from .formats import entry as E
from .systemd.release import HIERARCHIES

SYSEXT, CONFEXT = "sysext", "confext"
FACTORY = "usr/share/factory"
#: State directories that every host has with its own modes (/var/tmp is 1777): never touched.
STANDARD_STATE_DIRS = frozenset({
    "var", "var/lib", "var/log", "var/cache", "var/tmp", "var/spool", "var/mail", "var/opt",
    "var/local", "var/backups", "srv",
})


@dataclass(frozen=True)
class Route:
    image: str | None  # SYSEXT, CONFEXT, or None (dropped, or only a tmpfiles line)
    path: str = ""
    dropped: str | None = None  # why, when dropped
    tmpfiles: str | None = None  # a tmpfiles.d line this entry needs


@dataclass
class Layout:
    """What routing produced: tmpfiles lines per image kind, images that received content."""

    tmpfiles: dict[str, list[str]] = field(default_factory=lambda: {SYSEXT: [], CONFEXT: []})
    content: set[str] = field(default_factory=set)


class Router:
    def __init__(self, kind: str, etc_policy: str, var_policy: str):
        self.kind = kind
        self.etc_policy = etc_policy
        self.var_policy = var_policy
        self.layout = Layout()

    def route(self, path: str, entry: E.Entry, member: str) -> Route:
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
            return Route(None, dropped="a file under /var needs a sysext for its factory copy")
        return self._factory(path, entry)

    def _factory(self, path: str, entry: E.Entry) -> Route:
        """Directories → ``d``, symlinks → ``L``, files → factory copy + ``C`` line."""
        absolute = "/" + path
        image = CONFEXT if self.kind == CONFEXT else SYSEXT
        if entry.kind == E.DIR:
            if path in STANDARD_STATE_DIRS or path == "etc":
                return Route(None)
            line = f"d {absolute} {entry.mode & 0o7777:04o} {entry.uid} {entry.gid} -"
            return self._line(image, line)
        if entry.kind == E.SYMLINK:
            return self._line(image, f"L {absolute} - - - - {entry.target}")
        self.layout.content.add(SYSEXT)
        factory = f"{FACTORY}/{path}"
        route = Route(SYSEXT, factory, tmpfiles=f"C {absolute} - - - - /{factory}")
        self.layout.tmpfiles[SYSEXT].append(route.tmpfiles)
        return route

    def _line(self, image: str, line: str) -> Route:
        self.layout.tmpfiles[image].append(line)
        return Route(None, tmpfiles=line)


def tmpfiles_path(kind: str, name: str) -> str:
    return f"usr/lib/tmpfiles.d/{name}.conf" if kind == SYSEXT else f"etc/tmpfiles.d/{name}.conf"


def tmpfiles_content(lines: list[str]) -> bytes:
    """Sorted so that parents come before children, and the file is the same for every build."""
    header = "# Generated by sysext-pipeline: state and configuration that systemd never merges.\n"
    return (header + "".join(f"{line}\n" for line in sorted(set(lines), key=_line_key))).encode()


def _line_key(line: str) -> tuple[str, str]:
    return (line.split()[1], line)


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
