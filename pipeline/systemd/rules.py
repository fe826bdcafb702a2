"""systemd's rules for discovering and matching extension images, by version (252 → 262).

One table, :data:`RULES`, says for each rule: its id, the field it reads, the systemd versions it
applies to, its verdict (``merges``, ``ignored``: skipped while others still merge, ``breaks``: the
whole merge fails or aborts), the log line systemd writes, the symptom users see and the fix.
:func:`evaluate` walks an image through systemd's own order of decisions (discovery → metadata →
forbidden content → ``extension_release_validate``) and returns the first rule that decides it.
``check``, ``doctor``, ``install`` and ``docs/troubleshooting.md`` all read this module.

Sources: ``src/shared/extension-util.c`` (``extension-release.c`` in 252/253),
``src/basic/os-util.c`` (release-file lookup), ``src/shared/discover-image.c`` (search paths,
image names), ``src/shared/dissect-image.c`` (raw image metadata), ``src/sysext/sysext.c``; every
rule marked *tested* is checked against the real systemd-sysext/-confext 252, 254, 257 and 262,
with and without ``--force``, in the test suite (tests/test_check_matrix.py); :data:`NOT_SHOWN_HERE`
says why the others cannot be.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from .release import release_path as release_file_path

MERGES = "merges"
IGNORED = "ignored"
BREAKS = "breaks the merge"
VERDICTS = (MERGES, IGNORED, BREAKS)

OLDEST, NEWEST = 252, 262
#: A systemd version: (major, point release). ``(254, LATEST_POINT)`` means "some 254.x", read as
#: the newest point release when a rule changed inside a series: what a user's ``--systemd 254``
#: means. An installed version string without a point ("254-1", "256 (256-1.fc41)") is the x.0
#: release, see :func:`parse_installed_version`.
Version = tuple[int, int]
LATEST_POINT = 999


def parse_version(text: str | int, missing_point: int = LATEST_POINT) -> Version:
    """'252', '254.5', '252.38-1~deb12u1', 'systemd 254 (254.26-1~bpo12+1)' → (major, point).

    Without a point release the version means ``missing_point``: the newest point release for a
    user's ``--systemd 254`` (the default), 0 for an installed package version (see
    :func:`parse_installed_version`)."""
    text = str(text).strip()
    match = re.search(r"\((\d+)(?:\.(\d+))?", text) or re.search(r"(\d+)(?:\.(\d+))?", text)
    if not match:
        raise ValueError(f"not a systemd version: {text!r}")
    major = int(match.group(1))
    point = int(match.group(2)) if match.group(2) else missing_point
    return (major, point)


def parse_installed_version(text: str) -> Version:
    """The version of an installed systemd ('254-1', 'systemd 256 (256-1.fc41)' → x.0): a
    package of the first release of a series carries no point, and reading it as the newest
    point release would mis-predict every rule that changed inside the series."""
    return parse_version(text, missing_point=0)


def format_version(version: Version) -> str:
    major, point = version
    return str(major) if point == LATEST_POINT else f"{major}.{point}"


@dataclass(frozen=True)
class Span:
    """Versions ``lo`` ≤ v ≤ ``hi`` (inclusive; ``hi`` None = still true in the newest we model)."""

    lo: Version
    hi: Version | None = None

    def __contains__(self, version: Version) -> bool:
        return self.lo <= version and (self.hi is None or version <= self.hi)

    def text(self) -> str:
        lo_major, lo_point = self.lo
        if self.hi is None:
            return f"{lo_major}+" if lo_point == 0 else f"{lo_major}.{lo_point}+"
        whole = lo_point == 0 and self.hi[1] == LATEST_POINT  # whole series: 252–253
        hi = format_version(self.hi) if whole or self.hi[1] != LATEST_POINT \
            else f"{self.hi[0]}.x"
        lo = str(lo_major) if whole else f"{lo_major}.{lo_point}"
        return lo if lo == hi else f"{lo}–{hi}"


def span(lo: str, hi: str | None = None) -> Span:
    """span('252', '253') = 252.0–253.x; span('254.11', '254.14'); span('258') = 258+."""
    def end(text: str, low: bool) -> Version:
        major, _, point = text.partition(".")
        return (int(major), int(point) if point else (0 if low else LATEST_POINT))
    return Span(end(lo, True), end(hi, False) if hi else None)


ALL = (span("252"),)


# ---- the version table: behaviours that change between versions ------------------------------
# A version fact lives in one place: a rule's span (RULES) or a behaviour's span (CHANGES). Code
# asks :func:`since` or ``Rule.applies``, never a literal major; a text that names the versions
# where something holds writes «ID» (the versions of rule or change ID), «not ID» (the modelled
# versions outside them) or «after ID» (from the first version past them on): :func:`vtext`
# spells them from the spans, so the words follow when a span moves.

_TOKEN = re.compile(r"«(?:(not|after) )?([a-z0-9.-]+)»")


def _next(version: Version) -> Version:
    major, point = version
    return (major + 1, 0) if point == LATEST_POINT else (major, point + 1)


def _previous(version: Version) -> Version:
    major, point = version
    return (major - 1, LATEST_POINT) if point == 0 else (major, point - 1)


def complement(spans: tuple[Span, ...]) -> tuple[Span, ...]:
    """The modelled versions (OLDEST.0 → the newest) outside ``spans``."""
    out, cursor = [], (OLDEST, 0)
    for s in sorted(spans, key=lambda s: s.lo):
        if cursor is None:
            break
        if s.lo > cursor:
            out.append(Span(cursor, _previous(s.lo)))
        if s.hi is None:
            cursor = None
        else:
            cursor = max(cursor, _next(s.hi))
    if cursor is not None and cursor <= (NEWEST, LATEST_POINT):
        out.append(Span(cursor))
    return tuple(out)


def spans_text(spans: tuple[Span, ...]) -> str:
    return ", ".join(s.text() for s in spans)


def vtext(text: str, spans_of=None) -> str:
    """``text`` with its «ID», «not ID» and «after ID» spelled from the spans (see above);
    ``spans_of`` maps an ID to its spans (default: :data:`RULES`, then :data:`CHANGES`)."""
    def lookup(item: str) -> tuple[Span, ...]:
        if spans_of is not None:
            return spans_of(item)
        return (RULES[item] if item in RULES else CHANGES[item]).versions

    def spell(match: re.Match) -> str:
        how, item = match.groups()
        spans = lookup(item)
        if how == "not":
            return spans_text(complement(spans))
        if how == "after":
            last = max(spans, key=lambda s: s.lo)
            assert last.hi is not None, f"«after {item}»: {item} holds to the newest version"
            return Span(_next(last.hi)).text()
        return spans_text(spans)

    return _TOKEN.sub(spell, text)


@dataclass(frozen=True)
class Change:
    """A behaviour (not a verdict) that depends on the version; the code asks :func:`since`."""

    id: str
    versions: tuple[Span, ...]
    summary: str

    def applies(self, version: Version) -> bool:
        return any(version in s for s in self.versions)


def _changes(*changes: Change) -> dict[str, Change]:
    table = {c.id: c for c in changes}
    return {key: replace(c, summary=vtext(c.summary, lambda item: table[item].versions))
            for key, c in table.items()}


CHANGES: dict[str, Change] = _changes(
    Change("source.extension-util", (span("254"),),
           "the matching code and its log lines live in src/shared/extension-util.c "
           "(«not source.extension-util»: src/shared/extension-release.c, other wording)"),
    Change("name.class-suffix", (span("255"),),
           "NAME.sysext.raw / NAME.confext.raw (and directories NAME.sysext/, NAME.confext/) are "
           "discovered as NAME"),
    Change("release.raw-name-from-file", (span("252", "254"),),
           "a raw image's release file is looked up under its file name without .raw/.img/.xz/"
           "… (foo.sysext.raw: extension-release.foo.sysext)"),
    Change("release.raw-name-from-discovered", (span("255", "257"),),
           "a raw image's release file is looked up under its discovered name without .img/"
           ".xz/… (foo.sysext.raw: extension-release.foo; foo.img.raw: extension-release.foo; "
           "seen on 257.13)"),
    Change("release.raw-name-discovered", (span("258"),),
           "a raw image's release file is looked up under its discovered name exactly "
           "(foo.img.raw: extension-release.foo.img; seen on 262.1, assumed from 258)"),
    Change("metadata.either-kind", (span("254"),),
           "reading a raw image's metadata accepts the release file of either kind (the image "
           "is judged in the merge child); «not metadata.either-kind» read only the kind's own"),
    Change("scope.initrd-from-root", (span("259"),),
           "with --root the initrd scope comes from /etc/initrd-release inside the root (seen "
           "on 262.1: SYSTEMD_IN_INITRD=1 alone no longer makes it the initrd); "
           "«not scope.initrd-from-root» ask the running system"),
    Change("exit.merge-failure", (span("256"),),
           "a merge that fails in the merge child exits 1; «not exit.merge-failure» exit 0 "
           "(failures reading image metadata exit 1 on every version)"),
)


#: How a merge-child failure ends, by version (the texts of rules and explain say it this way).
EXIT_TEXT = vtext("«not exit.merge-failure» still exit 0, «exit.merge-failure» exit 1",
                  lambda item: CHANGES[item].versions)


def since(change_id: str, version: Version) -> bool:
    """Whether ``version`` behaves as :data:`CHANGES` ``change_id`` says."""
    return CHANGES[change_id].applies(version)


@dataclass(frozen=True)
class Rule:
    id: str
    field: str
    verdict: str
    versions: tuple[Span, ...]
    summary: str  # what the rule says, one sentence
    log: str  # systemd's message (debug level unless the verdict breaks the merge)
    symptom: str
    fix: str
    kinds: tuple[str, ...] = ("sysext", "confext")
    formats: tuple[str, ...] = ("raw", "directory")
    tested: bool = True  # predicted == the real systemd-sysext/-confext 252, 254, 257, 262
    #: ``--force`` skips this rule (the extension-release validation, and on 252/253 the
    #: usr/lib/os-release refusal that lives there): the image merges anyway
    forced: bool = False
    #: a "breaks" rule that fails while reading image metadata, before the merge child: exit 1
    #: on every version (otherwise the merge child fails: 252–255 exit 0, 256+ exit 1)
    fatal: bool = False

    def applies(self, version: Version) -> bool:
        return any(version in s for s in self.versions)

    def versions_text(self) -> str:
        return ", ".join(s.text() for s in self.versions)

    def exit_status(self, version: Version) -> int | None:
        """systemd-sysext's exit status when this rule breaks the merge (None: it does not)."""
        if self.verdict != BREAKS:
            return None
        if self.fatal:
            return 1
        return 1 if since("exit.merge-failure", version) else 0


def _rules(*rules: Rule) -> dict[str, Rule]:
    """The table, its texts' «…» version tokens spelled from the spans (:func:`vtext`)."""
    table: dict[str, Rule] = {}
    for rule in rules:
        assert rule.id not in table, rule.id
        assert rule.verdict in VERDICTS, rule.id
        table[rule.id] = rule

    def spans_of(item: str) -> tuple[Span, ...]:
        return (table[item] if item in table else CHANGES[item]).versions

    return {key: replace(r, **{f: vtext(getattr(r, f), spans_of)
                               for f in ("summary", "log", "symptom", "fix")})
            for key, r in table.items()}


_NO_MEDIUM = "Failed to read metadata for image {name}: No medium found"
_RELEASE_FIX = ("name the release file after the image: {release_path} (the build does this), or "
                "rename the image file to match the release file")

RULES: dict[str, Rule] = _rules(
    # ---- host ------------------------------------------------------------------------------
    Rule("host.no-id", "host ID", BREAKS, ALL,
         "The host's os-release has no ID=: nothing can be validated, the merge fails.",
         "'ID' field not found or empty in 'os-release' data of OS tree '{root}'",
         f"nothing merged at all; {EXIT_TEXT}",
         "give the host (or --root tree) an os-release with ID= (/etc/os-release or "
         "/usr/lib/os-release)", tested=True),
    Rule("host.no-confext", "systemd version", IGNORED, (span("252", "253"),),
         "systemd-confext exists in systemd «not host.no-confext» only; older hosts never "
         "merge a confext.",
         "(no systemd-confext binary)",
         "the confext's files never appear in /etc",
         "upgrade systemd to «not host.no-confext» (Debian 12: bookworm-backports), or ship the "
         "files another way",
         kinds=("confext",), tested=False),
    # ---- discovery -------------------------------------------------------------------------
    Rule("discovery.not-raw", "file name", IGNORED, ALL,
         "Regular files are discovered only when their name ends in .raw.",
         "(not discovered: no log line at all)",
         "`systemd-sysext list` does not show the image",
         "rename the file to NAME.raw", formats=("raw",)),
    Rule("discovery.not-searched", "location", IGNORED, ALL,
         "The image is in a directory this systemd version (and kind) does not search.",
         "(not discovered: no log line at all)",
         "`systemd-sysext list` does not show the image; it worked on another systemd version",
         "move it to {install_dir} (searched: {search_dirs})"),
    Rule("discovery.shadowed", "image name", IGNORED, ALL,
         "Another image with the same name in an earlier search directory wins; this one is "
         "never looked at (an empty directory of that name masks it).",
         "(not discovered: no log line at all)",
         "an old version of the extension merges instead of the one you installed",
         "remove {shadow} or install under another name"),
    Rule("discovery.invalid-name", "image name", IGNORED, ALL,
         "Image names must be valid file names without control characters, not starting "
         "with '.#'.",
         "(not discovered: no log line at all)",
         "`systemd-sysext list` does not show the image",
         "rename the image (letters, digits, '._+-')"),
    Rule("discovery.v-empty", "NAME.v/ directory", IGNORED, (span("256"),),
         "A NAME.v/ directory with no NAME_VERSION[_ARCH] entry that fits is skipped.",
         "(not discovered)",
         "nothing from the .v/ directory merges",
         "put NAME_VERSION.raw (or NAME_VERSION/ for a .v/ of directories) inside it",
         ),
    Rule("discovery.v-unsupported", "NAME.v/ directory", IGNORED, (span("252", "255"),),
         "NAME.v/ and NAME.raw.v/ directories are understood on «not discovery.v-unsupported»; "
         "older versions "
         "treat NAME.v/ as a directory image of that name (without release data: ignored).",
         "Extension '{name}' carries no release data, ignoring.",
         "nothing merges from the .v/ directory",
         "install the newest NAME_VERSION.raw directly as NAME.raw on systemd "
         "«discovery.v-unsupported»",
         formats=("directory",), forced=True),
    # ---- metadata: which release file --------------------------------------------------------
    Rule("release.missing-raw", "release file", BREAKS, ALL,
         "A raw image without a release file this version accepts (and without os-release) "
         "makes reading the image metadata fail, which aborts the whole command.",
         _NO_MEDIUM,
         "`Failed to read metadata for image …: No medium found`, exit 1, no extension merged, "
         "--force does not help",
         _RELEASE_FIX, formats=("raw",), fatal=True),
    Rule("release.not-unique", "release file", BREAKS, ALL,
         "The exact release file is missing and more than one other extension-release.* file "
         "qualifies as a fallback.",
         "Failed to read metadata for image {name}: Name not unique on network",
         "`… Name not unique on network`, exit 1, no extension merged",
         "keep exactly one release file, named extension-release.{name}", formats=("raw",),
         fatal=True),
    Rule("release.missing-dir", "release file", IGNORED, ALL,
         "A directory image without a release file this version accepts is skipped.",
         "Extension '{name}' carries no release data, ignoring.",
         "`No suitable extensions found (1 ignored …)`; files missing",
         _RELEASE_FIX, formats=("directory",), forced=True),
    Rule("release.os-tree-raw", "release file", IGNORED, ALL,
         "A raw image that carries an os-release but no release file this version accepts is "
         "read as an OS image (no metadata error), then skipped.",
         "Extension '{name}' carries no release data, ignoring.",
         "files missing, nothing logged at the default level",
         _RELEASE_FIX, formats=("raw",), forced=True),
    Rule("release.wrong-kind", "release file location", IGNORED, (span("255"),),
         "The image carries only the other kind's release file (usr/lib/… is sysext, etc/… "
         "is confext): there is no release data for this kind.",
         "Extension '{name}' carries no release data, ignoring.",
         "the image is skipped by the tool you expected to merge it",
         "write the release file where the kind expects it: {release_path}", formats=("raw",),
         forced=True),
    Rule("release.wrong-kind-254", "release file location", MERGES, (span("254", "254"),),
         "systemd «release.wrong-kind-254» reads a raw image's release file from usr/lib/… or "
         "else etc/…, whatever "
         "the kind: the other kind's release data is validated as if it were this kind's and the "
         "image merges — but only this kind's hierarchies (/usr,/opt or /etc) are overlaid, so a "
         "real confext shows nothing under /usr (and a sysext nothing under /etc).",
         "Using extensions '{name}'.",
         "the extension is listed as merged but its files are missing",
         "build it as the kind it is (release file {release_path}) and install it in that "
         "kind's directory", formats=("raw",)),
    Rule("release.strict-xattr", "user.extension-release.strict", MERGES, ALL,
         "A release file named differently is accepted when its user.extension-release.strict "
         "xattr is false (the only candidate).",
         "… 'user.extension-release.strict' attribute is false…",
         "(works)", "none needed; naming the release file after the image is more robust"),
    Rule("release.name-reduced", "release file name", MERGES,
         (span("254.11", "254.14"), span("255.5", "255.8"), span("256.0", "256.0")),
         "A release file whose name, reduced like an image name (suffixes .sysext.raw/"
         ".confext.raw/.raw dropped, cut at the first '_' or '+'), equals the image's reduced "
         "name is accepted.",
         "(accepted without a log line)",
         "works on these versions only", _RELEASE_FIX, tested=False),
    Rule("release.name-versioned", "release file name", MERGES,
         (span("254.15", "254"), span("255.9", "255"), span("256.1")),
         "extension-release.NAME is accepted for a versioned image NAME_VERSION.raw (or "
         "NAME+N): the image name is cut at the first '_' or '+' and must equal the suffix.",
         "(accepted without a log line)",
         "works on these versions only", _RELEASE_FIX),
    # ---- forbidden content ---------------------------------------------------------------------
    Rule("content.os-release-252", "usr/lib/os-release", BREAKS, (span("252", "253"),),
         "A sysext that contains usr/lib/os-release aborts the whole merge.",
         "Extension image contains /usr/lib/os-release file, which is not allowed (it may "
         "carry /etc/os-release), refusing.",
         "nothing merged although systemd-sysext exits 0",
         "drop usr/lib/os-release from the image (the build refuses it)", kinds=("sysext",),
         forced=True),
    Rule("content.os-release-dir", "usr/lib/os-release", BREAKS, (span("254"),),
         "A directory sysext that contains usr/lib/os-release makes reading its metadata fail.",
         _NO_MEDIUM,
         "`Failed to read metadata for image …: No medium found`, exit 1",
         "drop usr/lib/os-release from the image (the build refuses it)", kinds=("sysext",),
         formats=("directory",), fatal=True),
    Rule("content.os-release-raw", "usr/lib/os-release", IGNORED, (span("254"),),
         "A raw image that contains usr/lib/os-release is skipped (sysext and confext alike).",
         "Extension contains '/usr/lib/os-release', which is not allowed, refusing.",
         "`No suitable extensions found (1 ignored …)`",
         "drop usr/lib/os-release from the image (the build refuses it)", formats=("raw",),
         forced=True),
    # ---- activation and the other images --------------------------------------------------------
    Rule("signature.untrusted", "signature", BREAKS, (span("252", "258"),),
         "A signed image (verity signature partition or NAME.roothash.p7s) whose signature no "
         "certificate in /etc/verity.d, /run/verity.d, /usr/local/lib/verity.d or "
         "/usr/lib/verity.d (nor the kernel keyring) verifies fails to activate, and the merge "
         "fails with it; «not signature.untrusted» falls back to unsigned verity where the "
         "image policy allows it.",
         "Failed to activate verity device … (signature not verified)",
         "`Failed to … verity …`, nothing merged (a certificate only in the kernel keyring "
         "also counts, but cannot be seen from here)",
         "install the signing certificate as /etc/verity.d/{name}.crt (or build it unsigned)",
         tested=False),
    Rule("merge.broken-by-other", "other image", BREAKS, ALL,
         "Another image in the search directories breaks the whole merge, so nothing merges — "
         "this one included, whatever its own verdict.",
         "(the other image's error)",
         "nothing merged although this image is fine; a refresh does not help",
         "fix or remove {culprit}: {culprit_fix}"),
    # ---- extension_release_validate -----------------------------------------------------------
    Rule("match.no-release-data", "release file", IGNORED, ALL,
         "The release file is empty.",
         "Extension '{name}' carries no release data, ignoring.",
         "files missing", "write ID= (and VERSION_ID= or a level) into {release_path}",
         forced=True),
    Rule("match.scope", "{KIND}_SCOPE", IGNORED, ALL,
         "{KIND}_SCOPE (default 'system portable'; present but empty = nothing) must contain "
         "the host scope: 'initrd' in the initrd, else 'system'.",
         "Extension '{name}' is not suitable for scope {host}, ignoring.",
         "extension missing in the initrd (or only there)",
         "set {KIND}_SCOPE to include '{host}' (build: target.scope)", forced=True),
    Rule("match.architecture", "ARCHITECTURE", IGNORED, ALL,
         "ARCHITECTURE, when set and not _any, must equal the host's in systemd spelling "
         "(x86-64, arm64); checked before ID, so ID=_any does not bypass it.",
         "Extension '{name}' is for architecture '{image}', but deployed on top of '{host}'.",
         "files missing; `x86_64`/`amd64`/`aarch64` never match",
         "{arch_fix}", forced=True),
    Rule("match.id-missing", "ID", IGNORED, ALL,
         "The release file has no ID=.",
         "Extension '{name}' does not contain ID in release file but requested to match "
         "'{host}' or be '_any'",
         "files missing", "set ID={host} (or ID=_any for static payloads)", forced=True),
    Rule("match.id-any", "ID", MERGES, ALL,
         "ID=_any matches every host and skips all version checks.",
         "Extension '{name}' matches '_any' OS.",
         "merges on any OS version — also where its binaries cannot run",
         "none needed; prefer ID + VERSION_ID for binaries linked against host libraries"),
    Rule("match.id", "ID", IGNORED, (span("252", "257.7"),),
         "ID must equal the host's ID (the host's ID_LIKE is consulted only on "
         "«match.id-like»).",
         "Extension '{name}' is for OS '{image}', but deployed on top of '{host}'.",
         "files missing on a derivative distribution",
         "set ID={host} (build: target.id)", forced=True),
    Rule("match.id-like", "ID", IGNORED, (span("257.8"),),
         "ID must equal the host's ID or one of the words of the host's ID_LIKE "
         "(«match.id-like»: a 258 change, backported to 257.8); the extension's own ID_LIKE is never "
         "read.",
         "Extension '{name}' is for OS '{image}', but deployed on top of '{host}'.",
         "files missing", "set ID={host} (build: target.id)", forced=True),
    Rule("match.id-like-ok", "ID", MERGES, (span("257.8"),),
         "The extension's ID is one of the host's ID_LIKE words («match.id-like-ok»: a 258 "
         "change, backported to 257.8).",
         "Version info of extension '{name}' matches host.",
         "(works; on older systemd it is ignored)",
         "for older hosts set ID to the host's own ID"),
    Rule("match.rolling", "VERSION_ID", MERGES, ALL,
         "The host has neither VERSION_ID nor a level (rolling release): any version matches.",
         "No version info on the host (rolling release?), but ID in {name} matched.",
         "(works)", "none needed"),
    Rule("match.level", "{KIND}_LEVEL", IGNORED, ALL,
         "When host and extension both have {KIND}_LEVEL, the levels must be equal and "
         "VERSION_ID is not compared.",
         "Extension '{name}' is for API level '{image}', but running on API level '{host}'",
         "files missing after an OS update that bumped the level",
         "set {KIND}_LEVEL={host} (build: target.{kind}_level)", forced=True),
    Rule("match.level-ok", "{KIND}_LEVEL", MERGES, ALL,
         "Host and extension levels are equal; VERSION_ID is not compared.",
         "Version info of extension '{name}' matches host.", "(works)", "none needed"),
    Rule("match.confext-level-bug", "CONFEXT_LEVEL", IGNORED, (span("254.0", "254.5"),),
         "systemd-confext «match.confext-level-bug» never compares CONFEXT_LEVEL (the host "
         "level is not "
         "passed on): VERSION_ID decides instead.",
         "Extension '{name}' is for OS '{image}', but deployed on top of '{host}'.",
         "a confext that matches by level merges on «after match.confext-level-bug» but not "
         "on «match.confext-level-bug»",
         "also set VERSION_ID={host}, or use systemd «after match.confext-level-bug»",
         kinds=("confext",),
         tested=False, forced=True),
    Rule("match.version-id-missing", "VERSION_ID", IGNORED, ALL,
         "The host has VERSION_ID (and no level on both sides): the extension needs one too.",
         "Extension '{name}' does not contain VERSION_ID in release file but requested to "
         "match '{host}'",
         "files missing", "set VERSION_ID={host} (build: target.version_id)", forced=True),
    Rule("match.version-id", "VERSION_ID", IGNORED, ALL,
         "VERSION_ID is compared as an exact string: '12' ≠ '12.1', '40' ≠ '40.1'.",
         "Extension '{name}' is for OS '{image}', but deployed on top of '{host}'.",
         "files missing after an OS upgrade",
         "rebuild with VERSION_ID={host}, or use a {KIND}_LEVEL on both sides", forced=True),
    Rule("match.version-id-ok", "VERSION_ID", MERGES, ALL,
         "VERSION_ID equals the host's.",
         "Version info of extension '{name}' matches host.", "(works)", "none needed"),
    Rule("match.forced", "--force", MERGES, ALL,
         "--force skips the extension-release validation (scope, architecture, ID, "
         "VERSION_ID, levels; on «content.os-release-252» also the usr/lib/os-release "
         "refusal): the image merges whatever its release file says — but not without one in "
         "a raw image, and not past the «metadata.either-kind» metadata checks.",
         "(merged without validation)",
         "merges only because of --force (a refresh without it drops the image)",
         "fix what the validation refuses, so the image merges without --force"),
    Rule("match.host-level-only", "{KIND}_LEVEL", MERGES, ALL,
         "The host has a level but no VERSION_ID, and the extension no level: it merges.",
         "Version info of extension '{name}' matches host.", "(works)", "none needed"),
)


#: Rules no binary this project runs (252.38, 254.26, 257.13, 262.1, on a kernel without
#: device-mapper) can show, with the reason; docs/troubleshooting.md lists them.
NOT_SHOWN_HERE: dict[str, str] = {rule_id: vtext(reason) for rule_id, reason in {
    "release.name-reduced": "only «release.name-reduced» accept it; the Debian archive has "
                            "254.26, 257.13 and 262.1",
    "match.confext-level-bug": "only «match.confext-level-bug»; the Debian archive has 254.26",
    "signature.untrusted": "merging a signed image needs device-mapper (dm-verity), which the "
                           "test machines' kernel lacks. What does run (test_systemd_ddi_accept"
                           ".py): systemd-dissect 252–262 reads the signed DDI (--validate on "
                           "254+), and systemd-sysext 252–262 validates its PKCS#7 in userspace "
                           "against verity.d (the signer's certificate: succeeded; another or "
                           "none: «signature.untrusted» 'can't activate' with the exit status "
                           "check predicts, "
                           "262 falls back to unsigned verity) before dm-verity activation "
                           "fails; the merge itself runs only where device-mapper exists",
    "host.no-confext": "there is no systemd-confext binary to run on «host.no-confext»",
}.items()}


def version_bounds() -> tuple[Version, ...]:
    """Every version where some rule or behaviour starts or stops holding (x.0 of each series
    from OLDEST to NEWEST too), sorted: between two of them nothing changes."""
    points = {(major, 0) for major in range(OLDEST, NEWEST + 1)}
    spans = [s for r in RULES.values() for s in r.versions]
    spans += [s for c in CHANGES.values() for s in c.versions]
    spans += [s for *_, normal, initrd in SEARCH_PATHS for s in normal + initrd]
    for s in spans:
        points.add(s.lo)
        if s.hi is not None:
            points.add((s.hi[0] + 1, 0) if s.hi[1] == LATEST_POINT else (s.hi[0], s.hi[1] + 1))
    return tuple(sorted(p for p in points if (OLDEST, 0) <= p <= (NEWEST, LATEST_POINT)))


def rule(rule_id: str) -> Rule:
    """The rule ``rule_id``, for other modules (this one indexes :data:`RULES` directly)."""
    return RULES[rule_id]


# ---- discovery: search paths and names -------------------------------------------------------

#: Where systemd-sysext/-confext look, in order: (kind, directory, versions outside the initrd,
#: versions in the initrd); discover-image.c image_search_path(_initrd).
_NEVER: tuple[Span, ...] = ()
SEARCH_PATHS: tuple[tuple[str, str, tuple[Span, ...], tuple[Span, ...]], ...] = (
    ("sysext", "/etc/extensions", ALL, ALL),
    ("sysext", "/run/extensions", ALL, ALL),
    ("sysext", "/var/lib/extensions", ALL, ALL),
    ("sysext", "/usr/local/lib/extensions", (span("252", "253"),), (span("252", "253"),)),
    ("sysext", "/usr/lib/extensions", (span("252", "253"),), (span("252", "253"),)),
    ("sysext", "/.extra/sysext", _NEVER, (span("254"),)),
    ("sysext", "/.extra/global_sysext", _NEVER, (span("258"),)),
    ("confext", "/run/confexts", (span("254"),), (span("254"),)),
    ("confext", "/var/lib/confexts", (span("254"),), (span("254"),)),
    ("confext", "/usr/local/lib/confexts", (span("254"),), (span("254"),)),
    # in the initrd /.extra/confext takes the place of /usr/lib/confexts (256+)
    ("confext", "/usr/lib/confexts", (span("254"),), (span("254", "255"),)),
    ("confext", "/.extra/confext", _NEVER, (span("256"),)),
    ("confext", "/.extra/global_confext", _NEVER, (span("258"),)),
)
#: The versions at which :func:`search_dirs` changes (each holds until the next one).
SEARCH_DIRS_CHANGE = tuple(sorted({s.lo[0] for *_, normal, initrd in SEARCH_PATHS
                                   for s in normal + initrd} | {
    s.hi[0] + 1 for *_, normal, initrd in SEARCH_PATHS for s in normal + initrd
    if s.hi is not None}))
#: Where systemd looks for certificates that verify signed images (verity.d), in its order.
VERITY_DIRS = ("/etc/verity.d", "/run/verity.d", "/usr/local/lib/verity.d", "/usr/lib/verity.d")


def search_dirs(kind: str, version: Version, initrd: bool = False) -> tuple[str, ...]:
    """Directories ``systemd-sysext``/``systemd-confext`` search, in order (first name wins)."""
    return tuple(d for k, d, normal, in_initrd in SEARCH_PATHS
                 if k == kind and any(version in s for s in (in_initrd if initrd else normal)))


def install_dir(kind: str, runtime: bool = False) -> str:
    if kind == "sysext":
        return "/run/extensions" if runtime else "/var/lib/extensions"
    return "/run/confexts" if runtime else "/var/lib/confexts"


NAME_MAX = 255  # bytes of a file name (not a systemd version)


def image_name_is_valid(name: str) -> bool:
    """os-util.c image_name_is_valid: a valid file name, no control characters, not '.#…'."""
    if not name or name in (".", "..") or "/" in name or len(name) > NAME_MAX:
        return False
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return False
    return not name.startswith(".#")


def ships_tool(kind: str, version: Version) -> bool:
    """Whether systemd ``version`` has systemd-``kind`` at all (systemd-confext: 254 on)."""
    return kind != "confext" or not RULES["host.no-confext"].applies(version)


def reads_v_directories(version: Version) -> bool:
    """Whether systemd ``version`` picks images out of ``NAME.v/`` directories (256 on)."""
    return not RULES["discovery.v-unsupported"].applies(version)


def v_directory_image_name(dir_name: str) -> str:
    """The name of the image picked out of ``NAME.v/`` or ``NAME.raw.v/``: NAME."""
    return dir_name.removesuffix(".v").removesuffix(".raw")


def discovered_name(file_name: str, is_dir: bool, kind: str, version: Version) -> str | None:
    """The name systemd gives the image it finds as ``file_name`` (None: not an image)."""
    name = file_name
    if not is_dir:
        if not name.endswith(".raw"):
            return None
        name = name[: -len(".raw")]
    if since("name.class-suffix", version):  # extract_image_basename(): optional class suffix
        suffix = "." + kind
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def raw_release_name(file_name: str, kind: str, version: Version) -> str:
    """The NAME in extension-release.NAME that systemd ``version`` looks up for the raw image
    ``file_name``: image_read_metadata() names the dissected image after the file (≤254) or
    after the discovered name (255+, which drops .sysext/.confext; ≤257 then strip
    raw_strip_suffixes() from it)."""
    if since("release.raw-name-from-file", version):
        return raw_lookup_name(file_name)
    name = discovered_name(file_name, False, kind, version) or raw_lookup_name(file_name)
    if since("release.raw-name-from-discovered", version):
        return raw_lookup_name(name)
    return name


def raw_lookup_name(file_name: str) -> str:
    """dissect-image.c raw_strip_suffixes(): the file name without .raw, .img, .xz, …"""
    name = file_name
    changed = True
    while changed:
        changed = False
        for suffix in (".xz", ".gz", ".bz2", ".raw", ".qcow2", ".img", ".bin"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                changed = True
    return name


def reduced_image_name(name: str) -> str:
    """os-util.c path_extract_image_name(): drop .sysext.raw/.confext.raw/.raw, cut at _ or +."""
    for suffix in (".sysext.raw", ".confext.raw", ".raw"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return re.split(r"[_+]", name, maxsplit=1)[0]


def _parse_bool(value: str | None) -> bool | None:
    if value is None:
        return None
    v = value.strip().lower()
    if v in ("1", "yes", "y", "true", "t", "on"):
        return True
    if v in ("0", "no", "n", "false", "f", "off"):
        return False
    return None


@dataclass(frozen=True)
class ReleaseFile:
    suffix: str  # NAME in extension-release.NAME
    fields: Mapping[str, str]
    strict: str | None = None  # value of user.extension-release.strict, None when absent
    #: a symlink (to a regular file inside the image): systemd follows it for the exact name
    #: (chase inside the image), but its fallback scan opens candidates with O_NOFOLLOW
    symlink: bool = False


@dataclass(frozen=True)
class Lookup:
    file: ReleaseFile | None
    how: str  # exact | strict-xattr | name-reduced | name-versioned | missing | not-unique


def lookup_release(files: Mapping[str, ReleaseFile], name: str, version: Version) -> Lookup:
    """os-util.c open_extension_release(): the release file systemd picks for image ``name``.

    The exact name is resolved like any path (a symlink inside the image is followed); the
    fallback scan skips symlinks (O_NOFOLLOW) — both checked against the real 252 and 254."""
    if name in files:
        return Lookup(files[name], "exact")
    found: list[tuple[ReleaseFile, str]] = []
    for suffix, release in sorted(files.items()):
        if not image_name_is_valid(suffix) or release.symlink:
            continue
        how = None
        if RULES["release.name-reduced"].applies(version):
            if reduced_image_name(suffix) == reduced_image_name(name):
                how = "name-reduced"
        elif RULES["release.name-versioned"].applies(version):
            if suffix == reduced_image_name(name):
                how = "name-versioned"
        if how is None and _parse_bool(release.strict) is False:
            how = "strict-xattr"
        if how:
            found.append((release, how))
    if len(found) > 1:
        return Lookup(None, "not-unique")
    if found:
        return Lookup(*found[0])
    return Lookup(None, "missing")


# ---- the evaluation --------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageFacts:
    """What systemd would look at in one image (see images.py for reading it)."""

    file_name: str
    is_dir: bool
    release: Mapping[str, Mapping[str, ReleaseFile]]  # kind → suffix → file
    has_usr_lib_os_release: bool = False
    has_etc_os_release: bool = False
    kind: str | None = None  # detected kind (where the release files are)
    name_override: str | None = None  # systemd's name when picked from a NAME.v/ directory
    #: the NAME.v/ or NAME.raw.v/ directory the image was picked from (what ≤255 see: a
    #: directory image of that name); ``v_empty``: nothing in it fits (256+ skip it)
    v_directory: str | None = None
    v_empty: bool = False
    #: signature.py's status (unsigned | trusted | untrusted; None: not looked at) and, for the
    #: verdict, (what carries the signature, the host's certificates as text)
    signature: str | None = None
    signature_info: tuple[str, str] = ("", "")
    #: the architectures of its ELF files (() none: an architecture-independent payload; None:
    #: not looked at), for the fix of match.architecture
    elf_architectures: tuple[str, ...] | None = None


@dataclass(frozen=True)
class HostFacts:
    os_release: Mapping[str, str]
    architecture: str
    version: Version
    initrd: bool = False
    root: str = "/"


@dataclass(frozen=True)
class Place:
    """Where the image sits relative to the search paths (None fields: not installed)."""

    directory: str | None = None  # the search directory it is in (as on the host, '/var/lib/…')
    shadowed_by: str | None = None  # the path of the earlier image of the same name


@dataclass
class Verdict:
    verdict: str
    rule: Rule
    kind: str
    name: str | None
    field: str
    image_value: str | None = None
    host_value: str | None = None
    message: str = ""
    fix: str = ""
    notes: list[str] = field(default_factory=list)
    summary: str = ""  # the rule's summary with {KIND} filled in for this kind
    expected: str | None = None  # what systemd looked for (release rules): not a host value
    #: how systemd-KIND merge ends when the verdict breaks the merge (0 or 1; None otherwise)
    systemd_exit: int | None = None

    def as_dict(self) -> dict:
        return {
            "verdict": self.verdict, "rule": self.rule.id, "kind": self.kind, "name": self.name,
            "field": self.field, "image_value": self.image_value, "host_value": self.host_value,
            "expected": self.expected, "systemd_exit": self.systemd_exit,
            "versions": self.rule.versions_text(), "systemd_log": self.message, "fix": self.fix,
            "summary": self.summary or self.rule.summary, "notes": list(self.notes),
        }

    def values_text(self) -> str:
        """'image '11', host '12'' or 'image 'none', expected 'usr/lib/…'' for messages."""
        def q(value):
            return "(absent)" if value is None else repr(value)
        if self.expected is not None:
            return f"image {q(self.image_value)}, expected {q(self.expected)}"
        return f"image {q(self.image_value)}, host {q(self.host_value)}"


def evaluate(image: ImageFacts, host: HostFacts, kind: str, place: Place | None = None,
             force: bool = False) -> Verdict:
    """What systemd ``host.version`` does with ``image`` as a ``kind`` (first deciding rule);
    ``force``: what ``systemd-KIND --force`` does (the rules marked ``forced`` are skipped).

    Activation comes last: an image that would merge is mounted, and a signed one that no
    installed certificate verifies fails there (signature.untrusted, ≤258)."""
    verdict = _evaluate_forced(image, host, kind, place, force)
    verdict.systemd_exit = verdict.rule.exit_status(host.version)
    return verdict


def _evaluate_forced(image: ImageFacts, host: HostFacts, kind: str, place: Place | None,
                     force: bool) -> Verdict:
    verdict = _evaluate(image, host, kind, place)
    if force and verdict.rule.forced:
        r = RULES["match.forced"]
        verdict = Verdict(MERGES, r, kind, verdict.name, verdict.field, verdict.image_value,
                          verdict.host_value, r.log, r.fix,
                          verdict.notes + [f"without --force: {verdict.verdict} "
                                           f"({verdict.rule.id}: {verdict.summary})"],
                          r.summary, verdict.expected)
    if verdict.verdict == MERGES and image.signature == "untrusted":
        r = RULES["signature.untrusted"]
        carrier, certs = image.signature_info
        if not r.applies(host.version):
            verdict.notes.append(vtext(f"signed ({carrier}) but no installed certificate "
                                       "verifies it: systemd «not signature.untrusted» falls "
                                       "back to unsigned verity where the image policy allows "
                                       "it («signature.untrusted» fails)"))
            return verdict
        values = {"name": verdict.name or image.file_name}
        return Verdict(BREAKS, r, kind, verdict.name, r.field, carrier, certs,
                       r.log, r.fix.format(**values),
                       verdict.notes + [f"on its own: {verdict.verdict} ({verdict.rule.id})"],
                       r.summary)
    return verdict


def broken_by_other(own: Verdict, culprit: str, other: Verdict) -> Verdict:
    """``own`` turned into merge.broken-by-other: ``culprit`` (a path) breaks the whole merge."""
    r = RULES["merge.broken-by-other"]
    values = {"kind": own.kind, "culprit": culprit, "culprit_fix": other.fix}
    return Verdict(BREAKS, r, own.kind, own.name, r.field, f"{own.verdict} ({own.rule.id})",
                   f"{culprit} ({other.verdict}: {other.rule.id})", other.message,
                   r.fix.format(**values), own.notes, r.summary.format(**values),
                   systemd_exit=other.systemd_exit)


def _evaluate(image: ImageFacts, host: HostFacts, kind: str, place: Place | None) -> Verdict:
    version = host.version
    place = place or Place()
    picked_too_old = image.v_directory is not None and not reads_v_directories(version)
    if picked_too_old:  # a directory image named like the .v/ directory
        name = discovered_name(image.v_directory, True, kind, version)
    else:
        name = discovered_name(image.file_name, image.is_dir, kind, version)
    if image.name_override and reads_v_directories(version):
        name = image.name_override
    # the one name systemd looks the release file up under: what "expected" names, too
    lookup_name = name
    if not image.is_dir and not picked_too_old and name is not None:
        lookup_name = raw_release_name(image.file_name, kind, version)
        if image.name_override and reads_v_directories(version):
            lookup_name = raw_release_name(image.name_override + ".raw", kind, version)
    release_path = release_file_path(kind, lookup_name or image.file_name)
    ctx = {"name": name or image.file_name, "release_path": release_path, "kind": kind,
           "arch_fix": architecture_fix(image.elf_architectures, host.architecture),
           "KIND": kind.upper(), "root": host.root,
           "install_dir": install_dir(kind), "search_dirs": ", ".join(search_dirs(
               kind, version, host.initrd)) or "none", "shadow": place.shadowed_by or ""}
    notes: list[str] = []

    def decide(rule_id: str, image_value=None, host_value=None, *, expected=None) -> Verdict:
        r = RULES[rule_id]
        values = dict(ctx, image=image_value if image_value is not None else "",
                      host=host_value if host_value is not None else "")
        return Verdict(r.verdict, r, kind, name, r.field.format(**values),
                       None if image_value is None else str(image_value),
                       None if host_value is None else str(host_value),
                       r.log.format(**values), r.fix.format(**values), notes,
                       r.summary.format(**values), expected)

    if not ships_tool(kind, version):
        return decide("host.no-confext", host_value=format_version(version))
    if not host.os_release.get("ID"):
        return decide("host.no-id", host_value="")
    if picked_too_old:
        return decide("discovery.v-unsupported", image.v_directory + "/", format_version(version))
    if image.v_empty:
        return decide("discovery.v-empty", image.v_directory + "/")
    if name is None:
        return decide("discovery.not-raw", image.file_name)
    if not image_name_is_valid(name):
        return decide("discovery.invalid-name", name)
    if place.directory is not None and place.directory not in search_dirs(kind, version,
                                                                          host.initrd):
        return decide("discovery.not-searched", place.directory, ctx["search_dirs"])
    if place.shadowed_by:
        return decide("discovery.shadowed", name, place.shadowed_by)

    own = image.release.get(kind, {})
    other_kind = "confext" if kind == "sysext" else "sysext"
    other = image.release.get(other_kind, {})
    forbidden = image.has_usr_lib_os_release
    os_tree = image.has_usr_lib_os_release or image.has_etc_os_release
    either_kind = since("metadata.either-kind", version)

    # -- metadata (discover-image.c image_read_metadata) --
    data: ReleaseFile | None
    if image.is_dir:
        if forbidden and _applies("content.os-release-dir", kind, "directory", version):
            return decide("content.os-release-dir", "present")
        found = lookup_release(own, name, version)
        data = found.file
    else:
        found = lookup_release(own, lookup_name, version)
        if not either_kind:
            if found.how == "not-unique":
                return decide("release.not-unique", ", ".join(sorted(own)))
            if found.file is None and not os_tree:
                return decide("release.missing-raw", _present(own, other), expected=release_path)
            data = found.file
        else:
            found_other = lookup_release(other, lookup_name, version)
            sys_found, conf_found = (found, found_other) if kind == "sysext" \
                else (found_other, found)
            if sys_found.how == "not-unique" or (sys_found.file is None
                                                 and conf_found.how == "not-unique"):
                if not os_tree:
                    return decide("release.not-unique", ", ".join(sorted(own or other)))
            if sys_found.file is None and conf_found.file is None and not os_tree:
                return decide("release.missing-raw", _present(own, other), expected=release_path)
            # merge child (VALIDATE_OS_EXT only): forbidden content, then a release file of
            # either kind must exist; a missing one only skips the image here
            if forbidden:
                return decide("content.os-release-raw", "present")
            if sys_found.how == "not-unique" or (sys_found.file is None
                                                 and conf_found.how == "not-unique"):
                return decide("release.not-unique", ", ".join(sorted(own or other)))
            if sys_found.file is None and conf_found.file is None:  # an OS tree, no release
                return decide("release.os-tree-raw", _present(own, other), expected=release_path)
            if RULES["release.wrong-kind-254"].applies(version):
                # one release file, sysext first, whatever the kind
                data = sys_found.file or conf_found.file
                if found.file is None and data is not None:
                    verdict = _validate(data, host, kind, decide)
                    if verdict.verdict == MERGES:
                        return decide("release.wrong-kind-254", other_kind)
                    return verdict
            else:
                data = found.file
                if data is None:
                    return decide("release.wrong-kind", other_kind, kind)
    if found.how in ("strict-xattr", "name-reduced", "name-versioned"):
        notes.append(f"release file extension-release.{found.file.suffix} accepted by rule "
                     f"release.{found.how} ({RULES['release.' + found.how].versions_text()})")

    if forbidden and _applies("content.os-release-252", kind, None, version):
        return decide("content.os-release-252", "present")
    if data is None:
        if image.is_dir:
            return decide("release.missing-dir", _present(own, other), expected=release_path)
        if not either_kind:
            return decide("release.os-tree-raw", _present(own, other), expected=release_path)
    if data is None or not data.fields:
        return decide("match.no-release-data")
    return _validate(data, host, kind, decide)


#: match.architecture's fix where the image's content is not known (docs, explain).
ARCH_FIX_UNKNOWN = ("rebuild it for the host's architecture (target.architecture and the "
                    "repository's architectures) when it carries binaries (ELF files); "
                    "ARCHITECTURE=_any only for an architecture-independent payload")


def architecture_fix(elf: tuple[str, ...] | None, host_arch: str) -> str:
    """The fix for an image whose ARCHITECTURE is not the host's: rebuild for the host when its
    ELF files are for another machine, ``_any`` only when it carries none (``elf``: the
    architectures of its ELF files, None when they were not looked at)."""
    if elf is None:
        return f"rebuild it for {host_arch} when it carries binaries (ELF files); " \
            "ARCHITECTURE=_any only for an architecture-independent payload"
    if not elf:
        return "set ARCHITECTURE=_any (build: target.architecture = \"_any\"): it carries no " \
            f"ELF files, nothing in it depends on the architecture (or ARCHITECTURE={host_arch})"
    if set(elf) == {host_arch}:
        return f"set ARCHITECTURE={host_arch}: its ELF files are for {host_arch}, the release " \
            "file names the wrong architecture (build: target.architecture = \"auto\")"
    return f"rebuild it for {host_arch} (build: target.architecture = \"{host_arch}\" and " \
        f"the repository's architectures for it): its ELF files are for {', '.join(elf)}, " \
        "which this host cannot run — ARCHITECTURE=_any would merge them anyway"


def _applies(rule_id: str, kind: str, fmt: str | None, version: Version) -> bool:
    """Whether rule ``rule_id`` holds for this kind, format (None: any) and version."""
    r = RULES[rule_id]
    return kind in r.kinds and (fmt is None or fmt in r.formats) and r.applies(version)


def _present(own: Mapping, other: Mapping) -> str:
    names = [f"extension-release.{s}" for s in sorted(own)]
    names += [f"extension-release.{s} (other kind)" for s in sorted(other)]
    return ", ".join(names) or "none"


def _validate(data: ReleaseFile, host: HostFacts, kind: str, decide) -> Verdict:
    """extension-util.c extension_release_validate()."""
    fields = data.fields
    version = host.version
    prefix = kind.upper()
    host_scope = "initrd" if host.initrd else "system"
    scope = fields.get(f"{prefix}_SCOPE")
    scopes = scope.split() if scope is not None else ["system", "portable"]
    if host_scope not in scopes:
        return decide("match.scope", scope if scope is not None else "(absent: system portable)",
                      host_scope)
    arch = fields.get("ARCHITECTURE")
    if arch and arch != "_any" and arch != host.architecture:
        return decide("match.architecture", arch, host.architecture)
    ext_id = fields.get("ID")
    host_id = host.os_release.get("ID", "")
    if not ext_id:
        return decide("match.id-missing", "", host_id)
    if ext_id == "_any":
        return decide("match.id-any", ext_id)
    like = host.os_release.get("ID_LIKE", "").split()
    id_like_rule = RULES["match.id-like"].applies(version)
    if ext_id != host_id:
        host_text = host_id + (f" (ID_LIKE={' '.join(like)})" if like else "")
        if not (id_like_rule and ext_id in like):
            rule_id = "match.id-like" if id_like_rule else "match.id"
            return decide(rule_id, ext_id, host_text)
        verdict = _validate_version(fields, host, kind, decide)
        if verdict.verdict != MERGES:
            return verdict
        merged = decide("match.id-like-ok", ext_id, host_text)
        merged.notes.append(f"and then {verdict.rule.id}: {verdict.values_text()}")
        return merged
    return _validate_version(fields, host, kind, decide)


def _validate_version(fields: Mapping[str, str], host: HostFacts, kind: str, decide) -> Verdict:
    """extension_release_validate() after the ID matched: VERSION_ID and levels."""
    version = host.version
    prefix = kind.upper()
    host_version = host.os_release.get("VERSION_ID", "")
    level_key = f"{prefix}_LEVEL"
    host_level = host.os_release.get(level_key, "")
    if kind == "confext" and RULES["match.confext-level-bug"].applies(version):
        host_level = ""  # 254.0–254.5: the confext host level was never passed on
    if not host_version and not host_level:
        return decide("match.rolling", fields.get("VERSION_ID", ""), "")
    ext_level = fields.get(level_key, "")
    if host_level and ext_level:
        if ext_level != host_level:
            return decide("match.level", ext_level, host_level)
        return decide("match.level-ok", ext_level, host_level)
    if host_version:
        ext_version = fields.get("VERSION_ID", "")
        bug = kind == "confext" and RULES["match.confext-level-bug"].applies(version) \
            and host.os_release.get(level_key) and ext_level
        if not ext_version:
            return decide("match.confext-level-bug" if bug else "match.version-id-missing",
                          "", host_version)
        if ext_version != host_version:
            return decide("match.confext-level-bug" if bug else "match.version-id",
                          ext_version, host_version)
        return decide("match.version-id-ok", ext_version, host_version)
    return decide("match.host-level-only", ext_level, host_level)


@dataclass(frozen=True)
class Condition:
    """A host condition ``doctor`` reports (not a per-image matching rule)."""

    id: str
    severity: str
    symptom: str
    cause: str
    fix: str


CONDITIONS: dict[str, Condition] = {c.id: c for c in (
    Condition("merge.not-merged", "warning", "nothing merged although images match",
              "no refresh since the images were installed (or the service is not enabled)",
              "systemd-{kind} refresh"),
    Condition("merge.stale", "warning", "old files after an update; a new extension is missing",
              "stale merge: images were added, removed or changed after the last merge (a merge "
              "is a snapshot; systemd does not watch the directories)", "systemd-{kind} refresh"),
    Condition("merge.read-only", "info",
              "`Read-only file system` writing to /usr, /opt (or /etc)",
              "a merged extension is a read-only overlay over the whole hierarchy",
              "keep state in /var; unmerge (systemd-{kind} unmerge) to change the host's files"),
    Condition("service.disabled", "warning", "extensions gone after a reboot",
              "systemd-{kind}.service is not enabled: nothing merges at boot",
              "systemctl enable systemd-{kind}.service (install --enable)"),
    Condition("hierarchy.immutable", "error",
              "`Failed to create hierarchy mount point '/opt': Operation not permitted` (or "
              "`Read-only file system`); the extension's /opt files are missing",
              "a hierarchy (e.g. /opt) does not exist, an extension ships files for it, and its "
              "parent is immutable or read-only, so systemd cannot create the mount point (an "
              "immutable or read-only /usr, /opt or /etc that exists merges fine: the overlay "
              "is mounted on top)",
              "create the hierarchy (mkdir /opt) while the parent is writable (chattr -i), or "
              "drop those files from the image"),
    Condition("directory.immutable", "warning", "install fails with `Operation not permitted`",
              "the search directory carries the immutable attribute",
              "chattr -i the directory"),
    Condition("conflict.extensions", "warning", "a file has the content of the other extension",
              "two extensions ship the same path: the name sorting last (version-aware, "
              "foo_10 after foo_9) is the top layer", "ship the file in one extension only"),
    Condition("conflict.host", "info", "a host file changed after merging",
              "the extension ships a path the host already has; the host's copy returns on "
              "unmerge", "intended? otherwise drop it from the image"),
    Condition("library.missing", "error",
              "`error while loading shared libraries` after a base OS update",
              "an ELF binary in the extension needs a library that neither the extension nor "
              "the host provides (ID=_any or a level hides the OS update)",
              "add the package with the library to the recipe, or rebuild for this host"),
)}


def troubleshooting_rows() -> list[dict[str, str]]:
    """The per-image rows of docs/troubleshooting.md, straight from :data:`RULES`."""
    rows = []
    for r in RULES.values():
        if r.verdict == MERGES and r.id not in ("release.wrong-kind-254", "match.id-any"):
            continue
        marks = [m for m, on in (("exit 1", r.fatal), ("forced", r.forced)) if on]
        verdict = r.verdict + (f" ({', '.join(marks)})" if marks else "")
        rows.append({"symptom": r.symptom, "rule": r.id, "field": r.field, "verdict": verdict,
                     "versions": r.versions_text(), "log": r.log, "fix": r.fix,
                     "summary": r.summary})
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def troubleshooting_markdown() -> str:
    """docs/troubleshooting.md (``sysext-pipeline troubleshooting``); a test keeps it current."""
    out = [
        "# Troubleshooting extensions",
        "",
        "<!-- Generated from pipeline/systemd/rules.py by `sysext-pipeline troubleshooting`; "
        "a test checks it is current. -->",
        "",
        "systemd skips a mismatching image with a debug-level log line only, and some mistakes "
        "abort the whole merge. `sysext-pipeline check IMAGE` names the rule below that decides "
        "an image (with the field, both values and the fix); `sysext-pipeline doctor` checks a "
        "whole host. To see systemd's own reasoning, and the rule behind each of its lines: "
        "`SYSTEMD_LOG_LEVEL=debug systemd-sysext refresh 2>&1 | sysext-pipeline explain -`.",
        "",
        "Verdicts: **merges**; **ignored** (skipped, the other extensions still merge); "
        "**breaks the merge** (nothing merges: the command fails, or aborts while still "
        + vtext("exiting 0 on «not exit.merge-failure»). How a broken merge ends: the rules "
                "marked *exit 1* fail while reading image metadata and exit 1 on every version; "
                "the others fail in the merge child, which «not exit.merge-failure» swallow "
                "(exit 0) and «exit.merge-failure» report (exit 1) — `check --json` says it as "
                "`systemd_exit`. `--force` (`check --force`) skips the rules marked *forced*."),
        "",
        "## An image does not merge",
        "",
        "| symptom | cause (rule, field) | verdict | systemd | fix |",
        "|---|---|---|---|---|",
    ]
    for row in troubleshooting_rows():
        fix = row["fix"].format(release_path="usr/lib/extension-release.d/extension-release."
                                "NAME (confext: etc/…)", name="NAME", host="HOST VALUE",
                                KIND="SYSEXT/CONFEXT", kind="sysext/confext",
                                install_dir="/var/lib/extensions (/var/lib/confexts)",
                                search_dirs="see below", shadow="the earlier image",
                                root="/", image="IMAGE VALUE", culprit="the image named",
                                culprit_fix="its own fix", arch_fix=ARCH_FIX_UNKNOWN)
        out.append(f"| {_cell(row['symptom'])} | `{row['rule']}` ({_cell(row['field'].format(KIND='SYSEXT/CONFEXT'))}): "
                   f"{_cell(row['summary'].format(KIND='SYSEXT/CONFEXT', kind='sysext'))} | "
                   f"{row['verdict']} | {row['versions']} | {_cell(fix)} |")
    out += ["", "## The host", "", "| symptom | cause (doctor finding) | fix |", "|---|---|---|"]
    for c in CONDITIONS.values():
        out.append(f"| {_cell(c.symptom)} | `{c.id}`: {_cell(c.cause.format(kind='sysext'))} | "
                   f"{_cell(c.fix.format(kind='sysext'))} (confext: likewise) |")
    out += ["", "## Works on one systemd version and not another", "",
            "Rules that hold only for some versions (`check --systemd N` judges by another "
            "version; its output lists how other versions decide):", "",
            "| rule | versions | what changes |", "|---|---|---|"]
    for r in RULES.values():
        if r.versions != ALL:
            out.append(f"| `{r.id}` | {r.versions_text()} | "
                       f"{_cell(r.summary.format(KIND='SYSEXT/CONFEXT', kind='sysext'))} |")
    for c in CHANGES.values():
        out.append(f"| ({c.id}) | {', '.join(x.text() for x in c.versions)} | "
                   f"{_cell(c.summary)} |")
    out += ["", "## Rules the test suite cannot show with a real systemd", "",
            "Every other rule is checked against the real systemd-sysext/-confext 252.38, "
            "254.26, 257.13 and 262.1 (with and without `--force`) by "
            "tests/test_check_matrix.py. These are modelled from systemd's source only:", "",
            "| rule | why not |", "|---|---|"]
    for rule_id, reason in NOT_SHOWN_HERE.items():
        out.append(f"| `{rule_id}` | {_cell(reason)} |")
    out += ["", "Search directories (first image of a name wins; `check` reports "
            "`discovery.not-searched` and `discovery.shadowed`):", "",
            "| systemd | sysext | confext |", "|---|---|---|"]
    for first, following in zip(SEARCH_DIRS_CHANGE, SEARCH_DIRS_CHANGE[1:] + (NEWEST + 1,)):
        label = f"{first}–{following - 1}"
        for initrd in (False, True):
            sysext = ", ".join(search_dirs("sysext", (first, 0), initrd))
            confext = ", ".join(search_dirs("confext", (first, 0), initrd)) or \
                "(no systemd-confext)"
            out.append(f"| {label}{' (initrd)' if initrd else ''} | {sysext} | {confext} |")
    return "\n".join(out) + "\n"
