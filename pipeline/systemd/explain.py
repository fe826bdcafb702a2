"""``explain``: from systemd-sysext/systemd-confext's own words to the rule, the field and the fix.

The catalogue :data:`MESSAGES` holds, per rule of :data:`pipeline.systemd.rules.RULES`, the lines
systemd prints when that rule decides an image, each with the versions that print it and where
the text comes from: a captured real ``merge`` run (252.38, 254.26, 257.13, 262.1 — the binaries
of the test matrix, see tests/test_explain_matrix.py, which re-captures them) or systemd's source.
Several rules share one text (systemd prints the same line for an ID and a VERSION_ID mismatch):
then every rule that prints it is named, and ``--root`` (the files) tells which one it was.
Lines that are not in the catalogue are reported as unknown, never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from . import rules
from .release import release_path
from .rules import BREAKS, IGNORED, MERGES, RULES, Span, span

#: The real systemd runs the catalogue was captured from (tests/test_explain_matrix.py).
CAPTURED = ("252.38", "254.26", "257.13", "262.1")


def _cap(*versions: str) -> str:
    return "captured: real `merge` runs of systemd " + ", ".join(versions)


#: systemd's source as read for the catalogue (the main branch at these commits: extension-util.c
#: already matches ID_LIKE, i.e. 258-era; sysext.c is 256-era). The captured runs are what tie a
#: text to a version; the source is a second witness for the same words.
_EXT_UTIL = "source: src/shared/extension-util.c extension_release_validate() at systemd " \
    "commit 009abdc (258-era; " + rules.vtext("extension-release.c in «not source.extension-util»)")
_SYSEXT_C = "source: src/sysext/sysext.c merge_subprocess() at systemd commit 0021720 (256-era)"


@dataclass(frozen=True)
class Text:
    """One line systemd prints: ``template`` with ``{name}`` (the image), ``{image}``/``{host}``
    (the two values compared), ``{root}``, ``{path}``, ``{scope}`` placeholders."""

    template: str
    versions: tuple[Span, ...]
    source: str
    #: the line names no image: it belongs to the image systemd was mounting just before
    nameless: bool = False

    def versions_text(self) -> str:
        return ", ".join(s.text() for s in self.versions)

    def applies(self, version: rules.Version) -> bool:
        return any(version in s for s in self.versions)


_ALL = (span("252"),)
_NEW = rules.CHANGES["source.extension-util"].versions  # extension-util.c
_OLD = rules.complement(_NEW)  # extension-release.c

T_NO_DATA_OLD = Text("Extension '{name}' carries no extension-release data, ignoring extension.",
                     _OLD, _cap("252.38") + "; " + _EXT_UTIL)
T_NO_DATA = Text("Extension '{name}' carries no release data, ignoring.", _NEW,
                 _cap("254.26", "257.13", "262.1") + "; " + _EXT_UTIL)
T_SCOPE_OLD = Text("Extension '{name}' is not suitable for scope {host}, ignoring extension.", _OLD,
                   _cap("252.38"))
T_SCOPE = Text("Extension '{name}' is not suitable for scope {host}, ignoring.", _NEW,
               _cap("254.26", "257.13", "262.1") + "; " + _EXT_UTIL)
T_ARCH = Text("Extension '{name}' is for architecture '{image}', but deployed on top of '{host}'.",
              _ALL, _cap(*CAPTURED) + "; " + _EXT_UTIL)
T_NO_ID_OLD = Text("Extension '{name}' does not contain ID in extension-release but requested to "
                   "match '{host}' or be '_any'", _OLD, _cap("252.38"))
T_NO_ID = Text("Extension '{name}' does not contain ID in release file but requested to match "
               "'{host}' or be '_any'", _NEW, _cap("254.26", "257.13", "262.1") + "; " + _EXT_UTIL)
T_ANY = Text("Extension '{name}' matches '_any' OS.", _ALL, _cap(*CAPTURED) + "; " + _EXT_UTIL)
T_OS = Text("Extension '{name}' is for OS '{image}', but deployed on top of '{host}'.", _ALL,
            _cap(*CAPTURED) + "; " + _EXT_UTIL)
T_ROLLING = Text("No version info on the host (rolling release?), but ID in {name} matched.", _ALL,
                 _cap(*CAPTURED) + "; " + _EXT_UTIL)
T_LEVEL_OLD = Text("Extension '{name}' is for sysext API level '{image}', but running on sysext "
                   "API level '{host}'", _OLD, _cap("252.38"))
T_LEVEL = Text("Extension '{name}' is for API level '{image}', but running on API level '{host}'",
               _NEW, _cap("254.26", "257.13", "262.1") + "; " + _EXT_UTIL)
T_NO_VERSION_OLD = Text("Extension '{name}' does not contain VERSION_ID in extension-release but "
                        "requested to match '{host}'", _OLD, _cap("252.38"))
T_NO_VERSION = Text("Extension '{name}' does not contain VERSION_ID in release file but requested "
                    "to match '{host}'", _NEW,
                    _cap("254.26", "257.13", "262.1") + "; " + _EXT_UTIL)
T_OK = Text("Version info of extension '{name}' matches host.", _ALL,
            _cap(*CAPTURED) + "; " + _EXT_UTIL)
T_OS_RELEASE_OLD = Text("Extension image contains /usr/lib/os-release file, which is not allowed "
                        "(it may carry /etc/os-release), refusing.", _OLD, _cap("252.38"),
                        nameless=True)
T_OS_RELEASE = Text("Extension contains '/usr/lib/os-release', which is not allowed, refusing.",
                    _NEW, _cap("254.26", "257.13", "262.1") + "; source: src/shared/"
                    "extension-util.c extension_has_forbidden_content() at commit 009abdc", nameless=True)
T_CONFLICT = Text("Conflicting content found in image {name}, refusing.", _NEW,
                  _cap("254.26", "257.13", "262.1"))
T_MOUNT_NO_MEDIUM = Text("Failed to mount image: No medium found", _NEW,
                         _cap("254.26", "257.13", "262.1"), nameless=True)
T_META_NO_MEDIUM = Text("Failed to read metadata for image {name}: No medium found", _ALL,
                        _cap(*CAPTURED))
T_DISSECT_NO_MEDIUM = Text("Failed to mount dissected image: No medium found", _ALL,
                           _cap(*CAPTURED), nameless=True)
T_ACQUIRE_NO_MEDIUM = Text("Failed to acquire metadata from image '{path}': No medium found",
                           (span("262"),), _cap("262.1") + " (not printed by 257.13; 258–261 "
                           "not captured)")
T_META_NOT_UNIQUE = Text("Failed to read metadata for image {name}: Name not unique on network",
                         _ALL, _cap(*CAPTURED))
T_DISSECT_NOT_UNIQUE = Text("Failed to mount dissected image: Name not unique on network", _ALL,
                            _cap(*CAPTURED), nameless=True)
T_ACQUIRE_NOT_UNIQUE = Text("Failed to acquire metadata from image '{path}': Name not unique on "
                            "network", (span("262"),), _cap("262.1") + " (not printed by 257.13; "
                            "258–261 not captured)")
T_STRICT_FALSE = Text("{path}: 'user.extension-release.strict' attribute is false…", _ALL,
                      _cap(*CAPTURED), nameless=True)
T_HOST_NO_ID_OLD = Text("'ID' field not found or empty in 'os-release' data of OS tree '{root}': "
                        "Invalid argument", (span("252", "257"),),
                        _cap("252.38", "254.26", "257.13") + "; " + _SYSEXT_C)
T_HOST_NO_ID = Text("'ID' field not found or empty in 'os-release' data of OS tree '{root}'.",
                    (span("262"),), _cap("262.1") + " (258–261 not captured)")
T_FORCE = Text("Force mode enabled, skipping version validation.", _ALL, _cap(*CAPTURED) +
              " (merge --force); " + _SYSEXT_C, nameless=True)
T_NOT_AN_IMAGE = Text("Skipping directory entry '{path}', which doesn't look like an image.",
                      (span("257"),), _cap("257.13", "262.1") + " (254.26 prints nothing; 255/256 "
                      "not captured)")

#: Per rule: the lines systemd prints when the rule decides an image, for the versions it applies
#: to. A rule that is not here prints nothing (see :data:`SILENT`). One text may serve several
#: rules: systemd says the same thing for different causes.
MESSAGES: dict[str, tuple[Text, ...]] = {
    "host.no-id": (T_HOST_NO_ID_OLD, T_HOST_NO_ID),
    "discovery.not-raw": (T_NOT_AN_IMAGE,),
    # an empty directory (or other image) of the same name is what systemd looks at instead
    "discovery.shadowed": (T_NO_DATA_OLD, T_NO_DATA),
    "discovery.v-unsupported": (T_NO_DATA_OLD, T_NO_DATA),
    "release.missing-raw": (T_META_NO_MEDIUM, T_DISSECT_NO_MEDIUM, T_ACQUIRE_NO_MEDIUM),
    "release.not-unique": (T_META_NOT_UNIQUE, T_DISSECT_NOT_UNIQUE, T_ACQUIRE_NOT_UNIQUE,
                           T_STRICT_FALSE),
    "release.missing-dir": (T_NO_DATA_OLD, T_NO_DATA),
    "release.os-tree-raw": (T_NO_DATA_OLD, T_MOUNT_NO_MEDIUM),
    "release.wrong-kind": (T_NO_DATA,),
    "release.wrong-kind-254": (T_OK,),
    "release.strict-xattr": (T_STRICT_FALSE,),
    "content.os-release-252": (T_OS_RELEASE_OLD,),
    "content.os-release-dir": (T_OS_RELEASE, T_CONFLICT, T_META_NO_MEDIUM),
    "content.os-release-raw": (T_OS_RELEASE, T_MOUNT_NO_MEDIUM),
    "match.no-release-data": (T_NO_DATA_OLD, T_NO_DATA),
    "match.scope": (T_SCOPE_OLD, T_SCOPE),
    "match.architecture": (T_ARCH,),
    "match.id-missing": (T_NO_ID_OLD, T_NO_ID),
    "match.id-any": (T_ANY,),
    "match.id": (T_OS,),
    "match.id-like": (T_OS,),
    "match.id-like-ok": (T_OK,),
    "match.rolling": (T_ROLLING,),
    "match.level": (T_LEVEL_OLD, T_LEVEL),
    "match.level-ok": (T_OK,),
    "match.confext-level-bug": (T_OS, T_NO_VERSION),
    "match.version-id-missing": (T_NO_VERSION_OLD, T_NO_VERSION),
    "match.version-id": (T_OS,),
    "match.version-id-ok": (T_OK,),
    "match.host-level-only": (T_OK,),
    "match.forced": (T_FORCE,),
}

#: Rules that print nothing of their own on some versions: rule id → (those versions, why). A
#: test checks that every rule has a text for each captured version it applies to, or is here.
SILENT: dict[str, tuple[tuple[Span, ...], str]] = {
    "host.no-confext": (_ALL, "there is no systemd-confext binary to print anything"),
    "discovery.not-raw": (rules.complement(T_NOT_AN_IMAGE.versions), "the file is never looked "
                          "at (254.26 prints nothing; "
                          f"{T_NOT_AN_IMAGE.versions_text()} says it skips the entry)"),
    "discovery.not-searched": (_ALL, "systemd never looks into that directory"),
    "discovery.invalid-name": (_ALL, "the entry is never discovered"),
    "discovery.v-empty": (_ALL, "nothing in the .v/ directory is discovered"),
    "release.name-reduced": (_ALL, "the release file is accepted without a log line"),
    "release.name-versioned": (_ALL, "the release file is accepted without a log line"),
    "merge.broken-by-other": (_ALL, "the other image's error is the only line (explained as "
                                    "that image's rule)"),
    "signature.untrusted": (_ALL, "activating a signed image needs device-mapper, which the "
                                  "test machines lack: its text is not captured, so such a line "
                                  "is reported as unknown rather than guessed"),
}


def silent(rule_id: str, version: rules.Version) -> bool:
    spans = SILENT.get(rule_id, ((), ""))[0]
    return any(version in s for s in spans)


def texts_for(rule_id: str, version: rules.Version) -> list[Text]:
    """The catalogued lines ``rule_id`` makes systemd ``version`` print."""
    return [t for t in MESSAGES.get(rule_id, ()) if t.applies(version)]


def captured_versions(text: Text) -> list[str]:
    """The real runs a text was captured from (its source says so)."""
    head = text.source.split("; source")[0]
    return re.findall(r"\b(\d{3}\.\d+)\b", head.split(" (")[0]) if head.startswith(
        "captured") else []


@dataclass(frozen=True)
class Outcome:
    """A line about the merge as a whole (no rule): what merged, that it failed, status rows."""

    pattern: str  # a regular expression over the whole (prefix-stripped) line
    meaning: str
    source: str


OUTCOMES: tuple[Outcome, ...] = (
    Outcome(r"Using extensions '(?P<names>.*)'\.", "these images merge (the others were skipped "
            "or broke the merge)", _cap(*CAPTURED) + "; " + _SYSEXT_C),
    Outcome(r"No suitable extensions found \((?P<count>\d+) ignored due to incompatible "
            r"(?:version|image\(s\))\)\.", "nothing merged: every image was skipped; run "
            "with SYSTEMD_LOG_LEVEL=debug to see why each one was",
            "captured: real `merge` runs of systemd 252.38 ('…incompatible version'), 254.26, "
            "257.13, 262.1 ('…incompatible image(s)')"),
    Outcome(r"No extensions found\.", "nothing merged: no image was discovered in the search "
            "directories (see `check` for where this systemd looks)", _cap(*CAPTURED)),
    Outcome(r"Merged extensions into '(?P<path>.*)'\.", "the merge of this hierarchy succeeded",
            _cap(*CAPTURED)),
    Outcome(r"'?\((?P<child>sd-merge|sd-sysext)\)'? failed with exit status (?P<status>\d+)\.",
            "the merge child failed: nothing merged (systemd-sysext/confext itself "
            + rules.vtext("exits 0 on «not exit.merge-failure», 1 on «exit.merge-failure»)"),
            _cap(*CAPTURED)),
    Outcome(r"'?\((?P<child>sd-dissect)\)'? failed with exit status (?P<status>\d+)\.",
            "reading an image's metadata failed: the whole command fails (exit 1)",
            _cap(*CAPTURED)),
    Outcome(r"Failed to merge hierarchies", "the merge failed: nothing merged, exit status 1",
            _cap("257.13", "262.1")),
    Outcome(r"Unmerged '(?P<path>.*)'\.", "the previous merge of this hierarchy was removed "
            "(refresh and unmerge do this first)", _cap(*CAPTURED) + " (refresh, unmerge)"),
    Outcome(r"Skipping extension refresh because no change was found, use --always-refresh=yes "
            r"to always do a refresh\.", "refresh did nothing: the images did not change since "
            "the last merge, which stays as it is", _cap("262.1") + " (refresh; 257.13 always "
            "refreshes)"),
    Outcome(r"Hierarchy '(?P<path>.*)' is already merged\.", "`merge` does nothing while merged: "
            "use `refresh`", "captured: systemd-sysext 252.38 merge"),
    Outcome(r"HIERARCHY\s+EXTENSIONS\s+SINCE", "`status` header",
            "captured: `status` of systemd-sysext " + ", ".join(CAPTURED)),
    Outcome(r"(?P<path>/\S*)\s+(?:none|-)\s+-", "`status`: nothing is merged into this "
            "hierarchy (not merged yet, or every image was skipped: run `refresh` with "
            "SYSTEMD_LOG_LEVEL=debug and explain its output)", "captured: `status` of "
            "systemd-sysext 252.38, 254.26, 257.13 ('none'), 262.1 ('-')"),
    Outcome(r"(?P<path>/\S*)\s+(?P<merged>\S.*?)\s+\w{3} \d{4}-\d\d-\d\d [\d:]+ \S+",
            "`status`: these extensions are merged into this hierarchy, since then",
            "captured: `status` of systemd-sysext 257.13, 262.1"),
    Outcome(r"Failed to open '(?P<path>/\S*)/\.systemd-(?:sysext|confext)/extensions': No such "
            r"file or directory", "`status` cannot read what is merged there (seen with --root "
            "on 252 and 254; the merge itself is fine)",
            "captured: `status --root` of systemd-sysext 252.38, 254.26"),
    Outcome(r"NAME\s+TYPE\s+PATH\s+TIME", "`list` header",
            "captured: `list` of systemd-sysext " + ", ".join(CAPTURED)),
    Outcome(r"(?P<name>\S+)\s+(?P<type>raw|directory|subvolume|block)\s+(?P<path>/\S+)(\s.*)?",
            "`list`: systemd discovered this image (whether it merges is decided at merge "
            "time: `check` it)", "captured: `list` of systemd-sysext " + ", ".join(CAPTURED)),
)

#: Journal and syslog prefixes: 'Dec 04 18:00:00 host systemd-sysext[12]: ', ISO timestamps,
#: '-o short-monotonic' ('[   12.3] host …').
_PREFIX = re.compile(
    r"^(?:(?:\w{3} [ \d]\d \d\d:\d\d:\d\d(?:\.\d+)?|\d{4}-\d\d-\d\d[T ][\d:.]+(?:[+-]\d\d:?\d\d|Z)?"
    r"|\[\s*\d+\.\d+\])\s+\S+\s+)?(?P<ident>[\w().@-]+?)(?:\[\d+\])?:\s(?P<rest>.*)$")
_IDENTS = ("systemd-sysext", "systemd-confext", "(sd-merge)", "(sd-dissect)", "(sd-sysext)")
_CONTEXT = (re.compile(r" on /run/systemd/sysext/(?P<dir>extensions|confexts)/(?P<name>[^ /]+) \("),
            re.compile(r"Checking if '/run/systemd/sysext/(?P<dir>extensions|confexts)/"
                       r"(?P<name>[^'/]+)' is an"))


def _compile(template: str) -> re.Pattern:
    out = ""
    previous = ""
    for part in re.split(r"(\{\w+\})", template):
        m = re.fullmatch(r"\{(\w+)\}", part)
        if m:
            key = m.group(1)
            # a quoted value stops at the quote: no backtracking across a line of quotes
            out += r"(?P<host>\S+)" if key == "scope" else f"(?P<{key}>[^']*)" \
                if previous.endswith("'") else f"(?P<{key}>.*?)"
        else:
            out += re.escape(part).replace("…", "(?:…|\\.\\.\\.)")
            previous = part
    return re.compile(out)


def _texts() -> list[tuple[Text, tuple[str, ...], re.Pattern]]:
    seen: dict[Text, list[str]] = {}
    for rule_id, texts in MESSAGES.items():
        if rule_id not in RULES:  # a rule the table does not (yet) have
            continue
        for text in texts:
            seen.setdefault(text, []).append(rule_id)
    return [(t, tuple(ids), _compile(t.template)) for t, ids in seen.items()]


_INDEX = _texts()
_OUTCOMES = [(o, re.compile(o.pattern)) for o in OUTCOMES]


def rules_for_line(text: Text, rule_ids: Iterable[str]) -> list[str]:
    """The rules of ``rule_ids`` that can print ``text`` on some version where both hold."""
    out = []
    for rule_id in rule_ids:
        r = RULES[rule_id]
        if any(_overlap(s, t) for s in r.versions for t in text.versions):
            out.append(rule_id)
    return out


def _overlap(a: Span, b: Span) -> bool:
    lo = max(a.lo, b.lo)
    his = [h for h in (a.hi, b.hi) if h is not None]
    return not his or lo <= min(his)


@dataclass
class Line:
    """One input line, explained."""

    number: int
    raw: str
    text: str  # without journal prefix
    status: str  # rule | outcome | unknown | blank
    kind: str | None = None
    rules: list[str] = field(default_factory=list)
    image: str | None = None
    image_from: str | None = None  # "line" or "context" (the image being mounted before it)
    values: dict[str, str] = field(default_factory=dict)
    versions: str = ""
    source: str = ""
    meaning: str = ""
    #: --root/--systemd: what the files say (check's rule), and whether it agrees
    files_rule: str | None = None
    agrees: bool | None = None
    note: str = ""
    version: rules.Version | None = None  # the systemd version the lines were read for

    def as_dict(self) -> dict:
        data = {"line": self.number, "text": self.text, "status": self.status, "kind": self.kind,
                "image": self.image, "image_from": self.image_from, "values": self.values,
                "versions": self.versions, "source": self.source, "meaning": self.meaning,
                "rules": [rule_info(r, self) for r in self.rules]}
        if self.files_rule is not None or self.note:
            data.update(files_rule=self.files_rule, agrees=self.agrees, note=self.note)
        return data


def effect(rule: rules.Rule, version: rules.Version | None = None) -> str:
    """What the rule's verdict means for the rest of the merge (exit status from the rule
    table: ``fatal`` rules fail while reading metadata, the others in the merge child)."""
    if rule.verdict == MERGES:
        return "this image merges"
    if rule.verdict == IGNORED:
        return "this image is ignored; the other images still merge"
    if rule.fatal:
        return "nothing merges: reading the image's metadata fails and the command exits 1 " \
            "(every version)"
    if version is not None:
        return f"nothing merges: the merge fails; systemd {rules.format_version(version)} " \
            f"exits {rule.exit_status(version)}"
    return "nothing merges: the merge fails; systemd-sysext/confext " + rules.vtext(
        "still exits 0 on «not exit.merge-failure», 1 on «exit.merge-failure»")


class _Fill(dict):
    def __missing__(self, key):
        return {"name": "NAME", "KIND": "SYSEXT/CONFEXT", "kind": "sysext/confext",
                "host": "the host's value", "image": "the image's value",
                "release_path": "usr/lib/extension-release.d/extension-release.NAME (confext: "
                                "etc/extension-release.d/…)",
                "install_dir": "/var/lib/extensions (/var/lib/confexts)",
                "search_dirs": "see `check`", "shadow": "the earlier image of that name",
                "root": "/", "culprit": "the image named", "culprit_fix": "its own fix",
                "arch_fix": rules.ARCH_FIX_UNKNOWN}.get(
                    key, key.upper())


def rule_info(rule_id: str, line: Line | None = None) -> dict:
    r = RULES[rule_id]
    values = _Fill()
    kind = line.kind if line else None
    if kind:
        values.update(kind=kind, KIND=kind.upper())
    if line:
        for key in ("name", "image", "host", "root"):
            if line.values.get(key):
                values[key] = line.values[key]
        if rule_id == "match.architecture" and line.values.get("host"):
            values["arch_fix"] = rules.architecture_fix(None, line.values["host"])
        if line.image:
            values["name"] = line.image
            if kind:
                values["release_path"] = release_path(kind, line.image)
    return {"rule": r.id, "verdict": r.verdict, "field": r.field.format_map(values),
            "summary": r.summary.format_map(values), "rule_versions": r.versions_text(),
            "effect": effect(r, line.version if line else None),
            "fix": r.fix.format_map(values)}


def _strip(raw: str) -> tuple[str, str | None]:
    text = raw.rstrip("\r\n")
    if len(text) > MAX_LINE:  # not a systemd message: not parsed at all
        return text, None
    m = _PREFIX.match(text)
    kind = None
    if m and (m.group("ident") in _IDENTS):
        text = m.group("rest")
        if m.group("ident") == "systemd-confext":
            kind = "confext"
        elif m.group("ident") == "systemd-sysext":
            kind = "sysext"
    return text.strip(), kind


#: Longer lines are unknown without being matched (systemd's messages are far shorter, and the
#: patterns' lazy groups must not meet a megabyte of quotes).
MAX_LINE = 4096


def explain_lines(lines: Iterable[str], version: rules.Version | None = None,
                  kind: str | None = None) -> list[Line]:
    """Each line matched against the catalogue (of ``version`` only, when given). Without
    ``kind``, a log whose journal prefixes and mount lines all name one tool is that tool's."""
    lines = list(lines)
    if kind is None:
        seen = {_strip(raw)[1] for raw in lines} - {None}
        seen |= {"confext" if m.group("dir") == "confexts" else "sysext"
                 for raw in lines if len(raw) <= MAX_LINE for rx in _CONTEXT
                 if (m := rx.search(raw))}
        kind = seen.pop() if len(seen) == 1 else None
    out: list[Line] = []
    context: str | None = None
    for number, raw in enumerate(lines, 1):
        text, line_kind = _strip(raw)
        line = Line(number, raw.rstrip("\n"), text, "blank" if not text else "unknown",
                    kind=line_kind or kind, version=version)
        for rx in _CONTEXT if len(text) <= MAX_LINE else ():
            m = rx.search(text)
            if m:
                context = m.group("name")
                line.kind = line.kind or ("confext" if m.group("dir") == "confexts" else "sysext")
        if text and len(text) <= MAX_LINE:
            _match(line, version, context)
        out.append(line)
    return out


def _image_name(file_name: str) -> str:
    """systemd's image name for a file name it printed: without .raw and .sysext/.confext."""
    name = file_name.removesuffix(".raw")
    for suffix in (".sysext", ".confext"):
        name = name.removesuffix(suffix)
    return name


def _match(line: Line, version: rules.Version | None, context: str | None) -> None:
    found: list[tuple[Text, list[str], dict]] = []
    other_version: list[Text] = []
    for text, rule_ids, rx in _INDEX:
        m = rx.fullmatch(line.text)
        if not m:
            continue
        if version is not None and not text.applies(version):
            other_version.append(text)
            continue
        ids = [i for i in rules_for_line(text, rule_ids)
               if version is None or RULES[i].applies(version)]
        if line.kind:
            ids = [i for i in ids if line.kind in RULES[i].kinds] or ids
        found.append((text, ids, m.groupdict()))
    if found:
        text, ids, values = found[0]
        line.status = "rule"
        line.rules = ids
        line.values = {k: v for k, v in values.items() if v is not None}
        line.versions = text.versions_text()
        line.source = text.source
        if "name" in line.values:
            line.image, line.image_from = line.values["name"], "line"
        elif "path" in line.values and text in (T_ACQUIRE_NO_MEDIUM, T_ACQUIRE_NOT_UNIQUE):
            base = line.values["path"].rstrip("/").rsplit("/", 1)[-1]
            line.image, line.image_from = _image_name(base), "line"
        elif text.nameless and context:
            line.image, line.image_from = context, "context"
        line.meaning = "; ".join(sorted({effect(RULES[i], version) for i in ids}))
        return
    if other_version:
        text = other_version[0]
        line.status = "other-version"
        line.versions = text.versions_text()
        line.source = text.source
        line.meaning = (f"systemd {text.versions_text()} prints this, not "
                        f"{rules.format_version(version)}")
        return
    for outcome, rx in _OUTCOMES:
        m = rx.fullmatch(line.text)
        if m:
            line.status = "outcome"
            line.values = {k: v for k, v in m.groupdict().items() if v is not None}
            line.meaning = outcome.meaning
            line.source = outcome.source
            return


@dataclass
class ImageSummary:
    name: str
    rules: list[str]  # candidates left after every line about it
    merged: bool | None = None  # named in "Using extensions"
    lines: list[int] = field(default_factory=list)
    conflict: bool = False  # its lines name rules that exclude each other

    def as_dict(self) -> dict:
        return {"image": self.name, "rules": self.rules, "merged": self.merged,
                "lines": self.lines, "conflict": self.conflict}


def summarize(lines: list[Line]) -> dict[str, ImageSummary]:
    """Per image named (or being mounted): the rules every one of its lines allows."""
    out: dict[str, ImageSummary] = {}
    for line in lines:
        if line.status == "rule" and line.image and "release.strict-xattr" not in line.rules:
            # (a fallback release file accepted: a note on the image, not its verdict)
            s = out.setdefault(line.image, ImageSummary(line.image, list(line.rules)))
            s.lines.append(line.number)
            if len(s.lines) > 1:
                both = [r for r in s.rules if r in line.rules]
                if both:
                    s.rules = both
                else:
                    s.conflict = True
                    s.rules += [r for r in line.rules if r not in s.rules]
        elif line.status == "outcome" and "names" in line.values:
            for printed in line.values["names"].split("', '"):
                # 262 names them by file name ('foo.sysext.raw'), ≤254 keep '.sysext' in names
                # and 257+ print the file picked from a NAME.v/ directory ('foo_1.2.raw')
                variants = dict.fromkeys((printed.removesuffix(".raw"), _image_name(printed),
                                          rules.reduced_image_name(printed)))
                known = [n for n in variants if n in out] or list(variants)[:1]
                for name in known:
                    s = out.setdefault(name, ImageSummary(name, []))
                    s.merged = True
                    s.lines.append(line.number)
    # lines saying the merge broke: the other images fall with it
    breakers = {n for n, s in out.items() if s.rules and all(RULES[r].verdict == BREAKS
                                                             for r in s.rules)}
    if breakers:
        for name, s in out.items():
            if name not in breakers and not s.merged:
                s.rules = s.rules + ["merge.broken-by-other"] if s.rules else \
                    ["merge.broken-by-other"]
    return out


def merge_outcome(lines: list[Line], summary: dict[str, ImageSummary]) -> str:
    breakers = sorted(n for n, s in summary.items()
                      if s.rules and all(RULES[r].verdict == BREAKS for r in s.rules
                                         if r != "merge.broken-by-other")
                      and "merge.broken-by-other" not in s.rules)
    host_broken = any(line.status == "rule" and line.rules == ["host.no-id"] for line in lines)
    merged = [n for n, s in summary.items() if s.merged]
    if host_broken:
        return "nothing merged: the host's os-release has no ID (host.no-id)"
    if breakers:
        return f"nothing merged: {', '.join(breakers)} broke the merge"
    if merged:
        ignored = [n for n, s in summary.items() if not s.merged and s.rules
                   and all(RULES[r].verdict == IGNORED for r in s.rules)]
        return f"merged: {', '.join(merged)}" + (f"; ignored: {', '.join(ignored)}"
                                                  if ignored else "")
    if any(line.status == "outcome" and "count" in line.values for line in lines):
        return "nothing merged: every image was ignored"
    return "not said by these lines"


def explain_text(lines: list[str], version: rules.Version | None = None,
                 kind: str | None = None) -> dict:
    explained = explain_lines(lines, version, kind)
    summary = summarize(explained)
    return {"lines": explained, "images": summary,
            "merge": merge_outcome(explained, summary)}
