"""Recipe parsing and validation.

Every key is declared once, in ``SCHEMA``: that table drives parsing, validation, the defaults
and the generated reference (``docs/recipes.md``, checked by a test), so the three cannot drift.
Errors name the file, the key path and what is allowed.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError
from .formats.compression import DEFAULT_ENTRIES, DEFAULT_RATIO, DEFAULT_UNPACKED, RATIO_FLOOR
from .systemd import release as sdrelease

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

KINDS = ("auto", "sysext", "confext")
ETC_POLICIES = ("confext", "factory", "drop", "error")
VAR_POLICIES = ("tmpfiles", "drop", "error")
SPECIAL_POLICIES = ("warn", "error", "allow")
EMPTY_POLICIES = ("error", "allow")
_SIZE_RE = re.compile(r"^([0-9]+)([KMGT]?)$")
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: int | str) -> int | None:
    """Bytes from ``123``, ``"512M"`` or ``"16G"``; None when it is not a size."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value > 0 else None
    match = _SIZE_RE.match(str(value))
    if not match or int(match[1]) == 0:
        return None
    return int(match[1]) * _SIZE_UNITS[match[2]]


def _size_check(value) -> str | None:
    return None if parse_size(value) is not None else \
        "is not a size (bytes, or a number with K, M, G or T)"


def _ratio_check(value: int) -> str | None:
    return None if value >= 10 else "must be at least 10"
FORMATS = ("squashfs", "erofs", "directory", "ddi")
FILESYSTEMS = ("erofs", "squashfs")  # what a DDI's root partition may hold
VERITY_MODES = ("none", "detached")
COMPRESSIONS = {
    "squashfs": ("zstd", "xz", "gzip", "lz4", "lzo", "none"),
    "erofs": ("lz4hc", "lz4", "none"),
    "directory": ("none",),
}
DEFAULT_COMPRESSION = {"squashfs": "zstd", "erofs": "lz4hc", "directory": "none"}
#: Levels each tool accepts, per (file system, compressor), as mksquashfs 4.5 and mkfs.erofs
#: 1.5 check them (their -help, and tried: gzip 10 and lz4hc 13 fail inside the tool).
COMPRESSION_LEVELS = {
    ("squashfs", "zstd"): (1, 22),
    ("squashfs", "gzip"): (1, 9),
    ("squashfs", "lzo"): (1, 9),  # -Xcompression-level, for lzo1x_999 (mksquashfs's default)
    ("erofs", "lz4hc"): (0, 12),
}
#: Why a compressor takes no level: said in the error, so nobody has to look it up.
NO_LEVEL = {
    ("squashfs", "xz"): "mksquashfs's xz has -Xbcj and -Xdict-size, no level; remove the key",
    ("squashfs", "lz4"): "mksquashfs's lz4 has -Xhc, no level; remove the key",
    ("erofs", "lz4"): "mkfs.erofs refuses a level for lz4; lz4hc takes 0-12",
}
#: os-release(5): ID=, VERSION_ID= and the *_LEVEL fields are "lower-case string (no spaces or
#: other characters outside of 0–9, a–z, '.', '_' and '-')". systemd compares them as strings,
#: so "Debian" never matches a real host's "debian".
OS_RELEASE_ID_RE = re.compile(r"^[a-z0-9._-]+$")
MTIME_POLICIES = ("set", "clamp")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MODE_RE = re.compile(r"^0?[0-7]{3,4}$")


@dataclass(frozen=True)
class Key:
    """One recipe key: its TOML type, default, check and the words the reference prints.

    In an array-of-tables section (``[[source]]``, ``[[repository]]``) or a table of tables
    (``[files]``) each entry has a *kind*, chosen by its ``selects`` key(s): ``deb = "x.deb"``
    makes a ``file`` or ``url`` source, ``type = "rpm-md"`` an rpm-md repository. ``applies``
    names the kinds a key may appear in (empty: all but ``not_for``), ``required_for`` those that
    need it."""

    section: str
    name: str
    type: type | tuple[type, ...]
    doc: str
    example: str
    default: Any = None
    required: bool = False
    check: Callable[[Any], str | None] | None = None  # returns a complaint, or None when fine
    applies: tuple[str, ...] = ()
    not_for: tuple[str, ...] = ()  # kinds it does not apply to (when ``applies`` is empty)
    required_for: tuple[str, ...] = ()
    misapplied: str | None = None  # the complaint when in a kind it does not apply to
    items: Callable[[Any], str | None] | None = None  # a table's values: a complaint per entry
    selects: Callable[[Any], str] | None = None  # value → the entry's kind
    #: selecting keys: value, recipe directory → Source fields (ref, label, names)
    to_source: Callable[[Any, Path], dict] | None = None
    #: selecting keys: (kind, value) → how a message names the entry, and the hint for a key
    #: the kind needs
    words: Callable[[str, Any], tuple[str, str | None]] | None = None

    @property
    def path(self) -> str:
        return f"{self.section}.{self.name}"


@dataclass(frozen=True)
class Section:
    """A top-level table of a recipe: ``table`` (``[image]``), ``array`` (``[[source]]``, any
    number of entries) or ``map`` (``[files]``: entries keyed by a name the recipe chooses)."""

    name: str
    shape: str
    title: str
    doc: str = ""
    hint: str | None = None  # for an entry that is not a table


def _one_of(choices):
    def check(value):
        return None if value in choices else f"must be one of {', '.join(map(repr, choices))}"

    return check


def _name_check(value: str) -> str | None:
    return sdrelease.image_name_problem(value)


def _arch_check(value: str) -> str | None:
    return None if value == "auto" else sdrelease.architecture_problem(value)


def _field_value_check(value: str) -> str | None:
    return sdrelease.field_value_problem(value)


def _scope_check(value: list) -> str | None:
    bad = [s for s in value if s not in sdrelease.SCOPES]
    if bad or not value:
        return f"must be a non-empty list of {', '.join(map(repr, sdrelease.SCOPES))}"
    return None


def _epoch_check(value: int) -> str | None:
    return None if 0 <= value < 2**32 else "must be a Unix time between 0 and 2^32-1"


def _level_check(value: int) -> str | None:
    """The range per compressor is checked once the compressor is known (see _build)."""
    return None if 0 <= value <= 22 else "must be between 0 and 22 (see compression_level)"


def _os_release_word(field: str):
    """A check for a value written to ``field=`` that systemd compares with the host's
    os-release, where the value is a lowercase word; the hint names the lowercase form."""

    def check(value: str) -> str | None:
        if OS_RELEASE_ID_RE.match(value):
            return None
        lower = value.lower()
        hint = f"use {lower!r}" if OS_RELEASE_ID_RE.match(lower) else \
            "e.g. " + {"ID": "'debian'", "VERSION_ID": "'12'"}.get(field, "'1'")
        return (f"is not a valid os-release {field}=: only lowercase a-z, 0-9, '.', '_' and '-' "
                f"(host values are lowercase, and systemd compares them exactly; {hint})")

    return check


def _globs_check(value: list) -> str | None:
    return None if all(isinstance(v, str) and v for v in value) else "must be a list of glob strings"


SCHEMA: tuple[Key, ...] = (
    Key("extension", "name", str, "Image name; the image is NAME.raw (or directory NAME) and the "
        "release file extension-release.NAME. Letters, digits and `._+-`, not ending in `.raw`.",
        '"debug-tools"', required=True, check=_name_check),
    Key("extension", "kind", str, "`auto`: the payload decides — /usr and /opt only → a sysext, "
        "/etc only → a confext, both → a sysext NAME and a confext NAME-config built together. "
        "`sysext` (merges /usr, /opt) or `confext` (merges /etc) pins the kind; what does not fit "
        "is handled by [policy] and reported.", '"sysext"', default="auto", check=_one_of(KINDS)),
    Key("extension", "version", str, "The extension's own version: SYSEXT_VERSION_ID= / "
        "CONFEXT_VERSION_ID= and the manifest.", '"1.0.0"', check=_field_value_check),
    Key("target", "id", str, "Host ID= the image merges on, or `_any` (skips every version "
        "check: use with architecture). Lowercase a-z, 0-9, `._-`, as in os-release.",
        '"debian"', required=True, check=_os_release_word("ID")),
    Key("target", "version_id", str, "Host VERSION_ID=, compared as an exact string (`40` does not "
        "match `40.1`); lowercase a-z, 0-9, `._-`. Without it (and without a level) only hosts "
        "without VERSION_ID — rolling releases — merge the image.", '"12"',
        check=_os_release_word("VERSION_ID")),
    Key("target", "sysext_level", str, "SYSEXT_LEVEL=; when host and image both have one it "
        "replaces the VERSION_ID comparison (sysext only). Lowercase a-z, 0-9, `._-`.", '"1.0"',
        check=_os_release_word("SYSEXT_LEVEL")),
    Key("target", "confext_level", str, "CONFEXT_LEVEL= (confext only). Lowercase a-z, 0-9, "
        "`._-`.", '"1.0"', check=_os_release_word("CONFEXT_LEVEL")),
    Key("target", "architecture", str, "ARCHITECTURE= in systemd spelling (`x86-64`, `arm64`, ...) "
        "or `_any`; `auto` derives it from the packages (none when all are arch-independent).",
        '"x86-64"', default="auto", check=_arch_check),
    Key("target", "scope", list, "SYSEXT_SCOPE= / CONFEXT_SCOPE=: any of `system`, `initrd`, "
        "`portable`. Absent: systemd's default (system portable).", '["system", "portable"]',
        check=_scope_check),
    Key("target", "base", str, "Packages the host already has, which resolution never adds: a "
        "list file (one `name` or `name version` a line, `#` comments) or an OS tree whose "
        "`var/lib/dpkg/status` is read; relative to the recipe. Only for `packages` sources.",
        '"base/debian-12-minimal.txt"'),
    Key("target", "reload_manager", bool, "Write EXTENSION_RELOAD_MANAGER=1 (systemd 255+ reloads "
        "the service manager after merging, so units in the image are seen).", "true",
        default=False),
    Key("policy", "etc", str, "/etc content when the image is a sysext: `confext` (a companion "
        "confext NAME-config), `factory` (moved to usr/share/factory/etc plus tmpfiles.d `C` lines "
        "that copy it into /etc at boot when missing), `drop` (reported), `error`. Default: "
        "`confext` for kind auto, `drop` when the kind is pinned.", '"factory"',
        check=_one_of(ETC_POLICIES)),
    Key("policy", "var", str, "/var and /srv content (never merged): `tmpfiles` (directories "
        "become tmpfiles.d `d` lines, files go to usr/share/factory with `C` lines), `drop`, "
        "`error`.", '"tmpfiles"', default="tmpfiles", check=_one_of(VAR_POLICIES)),
    Key("sign", "key", str, "PEM private key (relative to the recipe), not readable by group or "
        "others; `sysext-pipeline keys generate` makes one. Signs the DDI's signature partition "
        "or the detached NAME.roothash.p7s.", '"../keys/release.key"'),
    Key("sign", "cert", str, "PEM certificate of that key (relative to the recipe).",
        '"../keys/release.crt"'),
    Key("sign", "passphrase_env", str, "Environment variable holding the key's passphrase.",
        '"RELEASE_KEY_PASSPHRASE"'),
    Key("sign", "passphrase_file", str, "File holding the key's passphrase (relative to the "
        "recipe).", '"/run/secrets/release-key-pass"'),
    Key("filter", "exclude", list, "Glob patterns (`*` within a name, `**` across directories) of "
        "image paths not to include; matched after /lib→/usr/lib canonicalization.",
        '["usr/share/doc/**", "usr/share/man/**"]', default=(), check=_globs_check),
    Key("image", "format", str, "`squashfs`, `erofs`, `directory` (a plain tree), or `ddi` (a "
        "GPT disk image with the file system in a root partition, a dm-verity hash partition "
        "and a signature partition, as systemd-repart --make-ddi makes them).", '"squashfs"',
        default="squashfs", check=_one_of(FORMATS)),
    Key("image", "filesystem", str, "ddi only: the root partition's file system, `erofs` or "
        "`squashfs`.", '"erofs"', default="erofs", check=_one_of(FILESYSTEMS)),
    Key("image", "verity", str, "squashfs/erofs only: `detached` also writes NAME.verity, "
        "NAME.roothash (and NAME.roothash.p7s when signed) next to NAME.raw, which systemd "
        "uses for non-GPT images.", '"detached"', default="none", check=_one_of(VERITY_MODES)),
    Key("image", "compression", str, "squashfs: zstd (default), xz, gzip, lz4, lzo, none; erofs: "
        "lz4hc (default), lz4, none; ddi: that of its filesystem; directory: none.", '"zstd"'),
    Key("image", "compression_level", int, "Compressor level, as the tools accept it: squashfs "
        "zstd 1-22, gzip 1-9, lzo 1-9; erofs lz4hc 0-12. xz, lz4 and none take no level. "
        "Default: the tool's own (mksquashfs: zstd 15, gzip 9, lzo 8).", "3",
        check=_level_check),
    Key("image", "source_date_epoch", int, "Time stamp for every file and the file system. "
        "Default: $SOURCE_DATE_EPOCH, else the newest mtime in the packages (never the clock).",
        "1700000000", check=_epoch_check),
    Key("image", "mtime", str, "`set`: every mtime becomes the epoch; `clamp`: only newer ones "
        "are lowered to it.", '"set"', default="set", check=_one_of(MTIME_POLICIES)),
    Key("policy", "special_files", str, "setuid/setgid files and world-writable paths without "
        "the sticky bit in the packages: `warn` (a severe finding, the default), `error` "
        "(refused, naming each path), `allow` (no finding). Device nodes are always refused.",
        '"error"', default="warn", check=_one_of(SPECIAL_POLICIES)),
    Key("policy", "empty", str, "an image that would hold nothing but its extension-release file "
        "(every path dropped, excluded or absent): `error` (the default: the build stops and "
        "says so) or `allow` (build it, e.g. a placeholder).", '"allow"', default="error",
        check=_one_of(EMPTY_POLICIES)),
    Key("limits", "unpacked", (int, str), "Budget of bytes all packages of a build may "
        f"decompress to (a bomb is stopped there): bytes or `\"16G\"`. Default "
        f"`\"{DEFAULT_UNPACKED >> 30}G\"`.", '"16G"', default=DEFAULT_UNPACKED,
        check=_size_check),
    Key("limits", "compression_ratio", int, "How many times a compressed package member may "
        f"expand once it produced {RATIO_FLOOR >> 20} MiB. Default {DEFAULT_RATIO}.", "5000",
        default=DEFAULT_RATIO, check=_ratio_check),
    Key("limits", "entries", int, "How many archive entries (files, directories, links) all "
        f"packages of a build may hold together. Default {DEFAULT_ENTRIES}.", "2000000",
        default=DEFAULT_ENTRIES, check=_ratio_check),
)

# --- [[source]], [[repository]], [files], [owners] --------------------------------------------


def _source_ref_check(value: str) -> str | None:
    if "://" in value and not value.startswith(("http://", "https://")):
        return "is not supported: only http(s) URLs and local paths are"
    return None if value else "is empty: a path relative to the recipe, or an http(s) URL"


def _file_or_url(value: str) -> str:
    return "url" if value.startswith(("http://", "https://")) else "file"


def _file_or_url_source(value: str, base: Path) -> dict:
    if _file_or_url(value) == "url":
        return {"ref": value}
    # the label is the path as written: the manifest must not depend on the build's path
    return {"ref": str((base / value).resolve()), "label": value}


def _file_or_url_words(kind: str, value: str) -> tuple[str, str | None]:
    if kind == "url":
        return f"the URL {value}", "sha256sum the file once; every build checks it"
    return f"the file {value}", None


def _debian_name_check(value: str) -> str | None:
    return None if re.match(r"^[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?$", value) else \
        "is not a Debian package name"


def _apt_words(kind: str, value: str) -> tuple[str, str | None]:
    return (f"apt source {value!r}",
            f"apt-cache policy {value} shows versions; the lock command pins them")


def _package_names_check(value: list) -> str | None:
    if value and all(isinstance(n, str) and re.fullmatch(r"[A-Za-z0-9_/][A-Za-z0-9_+.:/()-]*", n)
                     for n in value):
        return None
    return 'is not a non-empty list of package names (e.g. packages = ["strace", "jq"])'


def _sha256_check(value: str) -> str | None:
    return None if SHA256_RE.match(value) else "must be 64 lowercase hex digits"


def _strings_check(value: list) -> str | None:
    return None if value and all(isinstance(v, str) and v for v in value) else \
        "must be a non-empty list of strings"


def _url_check(host: bool):
    def check(value: str) -> str | None:
        if (host and value == "host") or value.startswith("$") or \
                re.match(r"^https?://[^/\s]+", value):
            return None
        return "is not " + ("host, " if host else "") + "an http(s) URL or $ENV_VAR"

    return check


REPOSITORY_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
REPOSITORY_TYPES = ("deb", "rpm-md")


def _repository_name_check(value: str) -> str | None:
    return None if REPOSITORY_NAME_RE.fullmatch(value) else \
        "must be letters, digits and ._+- only, starting with a letter or digit"


def _mode_check(value: str) -> str | None:
    return None if MODE_RE.match(value) else 'is not an octal mode string (e.g. "0755")'


def _id_check(value) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32:
        return None
    return "must be a numeric id between 0 and 2^32-1"


_PINNED = "does not apply to {shown} sources (the lock pins them)"

SCHEMA += (
    Key("source", "deb", str, "A .deb: a path relative to the recipe (a `file` source), or an "
        "http(s) URL (a `url` source; then `sha256` is required).",
        '"pkgs/jq_1.6-2.1_amd64.deb"', check=_source_ref_check, selects=_file_or_url,
        to_source=_file_or_url_source, words=_file_or_url_words),
    Key("source", "rpm", str, "An .rpm: a path relative to the recipe, or an http(s) URL (then "
        "`sha256` is required).", '"https://example.org/jq-1.7.1-8.fc40.x86_64.rpm"',
        check=_source_ref_check, selects=_file_or_url, to_source=_file_or_url_source,
        words=_file_or_url_words),
    Key("source", "apt", str, "A Debian package name fetched through the build host's apt "
        "configuration (`apt-get download NAME=VERSION`); needs `version` and `sha256`.",
        '"jq"', check=_debian_name_check, selects=lambda value: "apt",
        to_source=lambda value, base: {"ref": value}, words=_apt_words),
    Key("source", "packages", list, "Package names resolved with their dependencies from the "
        "`[[repository]]` tables into the lock file (`sysext-pipeline lock`); build uses "
        "exactly the locked files. Debian names may carry `:arch`; rpm names may be file "
        "paths.", '["strace", "jq"]', check=_package_names_check,
        selects=lambda value: "packages",
        to_source=lambda value, base: {"ref": "", "names": tuple(value)}),
    Key("source", "recommends", bool, "With `packages`: also follow Recommends (rpm: weak "
        "dependencies), for the whole resolution.", "true", default=False,
        applies=("packages",), misapplied="only applies to packages sources"),
    Key("source", "version", str, "Exact package version (apt sources).", '"1.6-2.1+deb12u1"',
        applies=("apt",), required_for=("apt",),
        misapplied="only applies to apt sources (the {shown} file is exact)"),
    Key("source", "sha256", str, "Expected sha256 of the package file; checked before anything "
        "is extracted. Required for `url` and `apt` sources.",
        '"' + "0123456789abcdef" * 4 + '"', check=_sha256_check,
        not_for=("packages",), required_for=("url", "apt"), misapplied=_PINNED),
    Key("repository", "type", str, "`deb` (a Debian/Ubuntu archive) or `rpm-md` (repomd.xml: "
        "Fedora, CentOS, openSUSE).", '"deb"', required=True,
        check=_one_of(REPOSITORY_TYPES), selects=lambda value: value),
    Key("repository", "name", str, "Name the lock refers to (default: the suite for deb, "
        "`rpm-md` for rpm-md); unique.", '"bookworm"', check=_repository_name_check),
    Key("repository", "mirror", str, "deb: the archive root: `host` (the build host's apt "
        "sources, matched by suite), an http(s) URL, or `$ENV_VAR` (expanded at lock/build "
        "time, never stored).", '"host"', applies=("deb",), required_for=("deb",),
        check=_url_check(host=True)),
    Key("repository", "suite", str, "deb: the suite or codename (`bookworm`, "
        "`bookworm-updates`).", '"bookworm"', applies=("deb",), required_for=("deb",)),
    Key("repository", "components", list, "deb: the archive components to read.",
        '["main", "contrib"]', default=("main",), applies=("deb",), check=_strings_check),
    Key("repository", "architectures", list, 'deb: default `["amd64"]` (the first is native; '
        '`all` is implied); rpm-md: default `["x86_64"]` (`noarch` is implied).',
        '["amd64", "i386"]', check=_strings_check),
    Key("repository", "keyring", str, "deb: OpenPGP keyring (binary or armored) "
        "InRelease/Release.gpg must verify against (gpgv). Default with `mirror = \"host\"`: "
        "the apt source's Signed-By.", '"keys/debian-archive.gpg"', applies=("deb",)),
    Key("repository", "baseurl", str, "rpm-md: the directory holding repodata/; `$ENV_VAR` parts "
        "are expanded.", '"$FEDORA_MIRROR/releases/40/Everything/x86_64/os"',
        applies=("rpm-md",), required_for=("rpm-md",), check=_url_check(host=False)),
    Key("repository", "gpgkey", str, "rpm-md: OpenPGP key; when given, repodata/repomd.xml.asc "
        "must verify against it.", '"keys/fedora-40.asc"', applies=("rpm-md",)),
    Key("repository", "allow_unsigned", bool, "deb: accept a Release without a signature check "
        "when no keyring is known (the Packages hashes are still checked).", "true",
        default=False, applies=("deb",)),
    Key("repository", "snapshot", bool, "deb: the mirror is a snapshot archive (a fixed past "
        "state, e.g. `$DEBIAN_SNAPSHOT/archive/debian/20261124T000000Z`): an expired "
        "`Valid-Until` in its Release file is accepted, as apt's `Check-Valid-Until=no`. Only "
        "this repository; the signature and the suite are still checked.", "true",
        default=False, applies=("deb",)),
    Key("files", "from", str, "File in the recipe's directory (or below it) to copy; a path that "
        "leads outside, also through a symlink, is an error. Exactly one of `from` or "
        "`content`.", '"files/agent.conf"', selects=lambda value: "from"),
    Key("files", "content", str, "Literal file content (UTF-8).", '"key = value\\n"',
        selects=lambda value: "content"),
    Key("files", "mode", str, "Octal permission string.", '"0755"', default="0644",
        check=_mode_check),
    Key("owners", "users", dict, "Table user name → numeric uid for files a package owns by a "
        "non-root name.", "{ _apt = 42 }", default={}, items=_id_check),
    Key("owners", "groups", dict, "Table group name → numeric gid.", "{ systemd-journal = 101 }",
        default={}, items=_id_check),
)

SECTIONS: tuple[Section, ...] = (
    Section("extension", "table", "[extension]"),
    Section("target", "table", "[target]"),
    Section("policy", "table", "[policy]"),
    Section("sign", "table", "[sign]"),
    Section("filter", "table", "[filter]"),
    Section("image", "table", "[image]"),
    Section("limits", "table", "[limits]"),
    Section("source", "array", "[[source]] (any number, applied in order)",
            "Each source is exactly one of `deb`, `rpm`, `apt` or `packages`; that key decides "
            "its kind (`file`, `url`, `apt`, `packages`) and which other keys apply.",
            "write [[source]] for each package"),
    Section("repository", "array", "[[repository]] (where packages sources are resolved)",
            "`type` decides which keys apply (those marked deb: or rpm-md:).",
            "write [[repository]] for each one"),
    Section("files", "map", '[files] ("path/in/image" = { ... })',
            "Each entry is a table with exactly one of `from` or `content`.",
            '{ from = "files/x", mode = "0644" }'),
    Section("owners", "table", "[owners]"),
)
_EXTRA_KEYS: list[Key] = []  # source kinds registered at run time (sources/kinds.py)


def add_key(key: Key) -> None:
    """Declare one more key (a selecting ``[[source]]`` key of a source kind registered at run
    time: ``sources.kinds.register``)."""
    if any(k.path == key.path for k in keys()):
        raise ValueError(f"{key.path} is already declared")
    _EXTRA_KEYS.append(key)


def remove_key(key: Key) -> None:
    _EXTRA_KEYS.remove(key)


def keys(section: str | None = None) -> list[Key]:
    """The schema's keys (all, or one section's), in declaration order."""
    return [k for k in (*SCHEMA, *_EXTRA_KEYS) if section is None or k.section == section]


@dataclass(frozen=True)
class Source:
    type: str  # the recipe key: "deb" | "rpm" | "apt" | "packages" (resolved through the lock)
    ref: str  # URL, absolute path, or apt package name ("" for packages)
    sha256: str | None
    version: str | None = None
    names: tuple[str, ...] = ()  # packages: the names to resolve
    recommends: bool = False  # packages: follow weak dependencies too
    label: str | None = None  # how the manifest names it: repository:path, or a local path
    #                           as the recipe wrote it
    architecture: str | None = None  # locked packages: the architecture the lock says
    #: how it is fetched, locked, named and read: a name in sources/kinds.py's registry
    #: ("file", "url", "apt", "packages", "locked"); derived from type and ref when not given
    kind: str = ""

    def __post_init__(self):
        if not self.kind:
            derived = self.type if self.type in ("apt", "packages") else _file_or_url(self.ref)
            object.__setattr__(self, "kind", derived)

    @property
    def is_url(self) -> bool:
        return self.ref.startswith(("http://", "https://"))

    @property
    def format(self) -> str:
        return "deb" if self.type in ("deb", "apt") else "rpm"


@dataclass(frozen=True)
class Repository:
    """A ``[[repository]]`` table as written (URLs and paths unexpanded: the lock hashes these)."""

    name: str
    type: str  # "deb" | "rpm-md"
    url: str  # deb mirror ("host", URL, "$VAR") or rpm-md baseurl
    suite: str | None = None
    components: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()
    keyring: str | None = None  # deb keyring / rpm-md gpgkey, relative to the recipe
    allow_unsigned: bool = False
    snapshot: bool = False  # deb: a snapshot archive, whose Valid-Until may have passed


@dataclass(frozen=True)
class ExtraFile:
    path: str
    mode: int
    source: Path | None = None
    content: bytes | None = None


@dataclass(frozen=True)
class Recipe:
    path: Path
    sha256: str
    name: str
    kind: str
    version: str | None
    target: dict[str, Any]
    sources: tuple[Source, ...]
    files: tuple[ExtraFile, ...]
    exclude: tuple[str, ...]
    users: dict[str, int] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)
    filesystem: str = "squashfs"  # the file system inside (= format, except for ddi)
    verity: str = "none"
    signing: dict[str, Any] = field(default_factory=dict)  # key, cert, passphrase_env/_file
    etc_policy: str = "drop"
    var_policy: str = "tmpfiles"
    format: str = "squashfs"
    compression: str = "zstd"
    compression_level: int | None = None
    source_date_epoch: int | None = None
    mtime: str = "set"
    repositories: tuple[Repository, ...] = ()
    special_files: str = "warn"
    empty_payload: str = "error"  # policy.empty
    unpacked_limit: int = DEFAULT_UNPACKED
    ratio_limit: int = DEFAULT_RATIO
    entries_limit: int = DEFAULT_ENTRIES

    @property
    def directory(self) -> Path:
        return self.path.parent


def load(path: str | Path) -> Recipe:
    """Read and validate a recipe file; every problem is an InputError naming file and key."""
    path = Path(path)
    data, digests = _read(path, ())
    digest = digests[0] if len(digests) == 1 else \
        hashlib.sha256("\n".join(digests).encode()).hexdigest()
    return _build(path.resolve(), digest, data)


def _read(path: Path, including: tuple[Path, ...]) -> tuple[dict, list[str]]:
    """TOML of ``path`` with its ``include`` merged in, and the sha256 of every file read.

    ``include = "base.toml"`` (a recipe in the same directory, so relative paths mean the same
    in both) supplies defaults: this file's tables override it key by key, and its [[source]]
    list, when present, replaces the included one.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(str(path), f"cannot read recipe: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(str(path), f"not valid TOML: {exc}") from None
    own = [hashlib.sha256(raw).hexdigest()]
    include = data.pop("include", None)
    if include is None:
        return data, own
    if not isinstance(include, str) or "/" in include or not include.endswith(".toml"):
        raise InputError(f"{path}: include", "must name a .toml recipe in the same directory",
                         'e.g. include = "debug-tools.toml"')
    base_path = path.parent / include
    if base_path.resolve() in including or base_path.resolve() == path.resolve():
        raise InputError(f"{path}: include", f"{include} includes itself (a cycle)")
    base, digests = _read(base_path, (*including, path.resolve()))
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return base, digests + own


def _build(path: Path, digest: str, data: dict) -> Recipe:
    where = str(path)

    def fail(key: str, what: str, hint: str | None = None):
        raise InputError(f"{where}: {key}", what, hint)

    shapes = {section.name: section for section in SECTIONS}
    for name, body in data.items():
        if name not in shapes:
            fail(name, "unknown section", f"allowed: {', '.join(sorted(shapes))}")
        if shapes[name].shape == "array":
            if not isinstance(body, list):
                fail(name, "must be an array of tables", shapes[name].hint)
        elif not isinstance(body, dict):
            fail(name, "must be a table")

    values: dict[str, Any] = {}
    for section in SECTIONS:
        if section.shape == "table":
            table = _table(data.get(section.name, {}), section.name, fail)
            values.update({f"{section.name}.{name}": v for name, v in table.values.items()})

    kind = values["extension.kind"]
    etc_policy = values["policy.etc"] or ("confext" if kind == "auto" else "drop")
    if kind == "confext" and values["policy.etc"] is not None:
        fail("policy.etc", "applies to sysext and auto recipes only (a confext is all /etc)")
    can_make = {"sysext": kind != "confext",
                "confext": kind == "confext" or etc_policy == "confext"}
    for other in ("sysext", "confext"):
        level_key = f"target.{other}_level"
        if values[level_key] is not None and not can_make[other]:
            fail(level_key, f"this recipe never makes a {other}",
                 "systemd never reads the other kind's level")
    if values["target.scope"] is not None:
        values["target.scope"] = tuple(values["target.scope"])

    fmt = values["image.format"]
    fs = values["image.filesystem"] if fmt == "ddi" else fmt
    if "filesystem" in data.get("image", {}) and fmt != "ddi":
        fail("image.filesystem", "applies to format = \"ddi\" only")
    compression = values["image.compression"] or DEFAULT_COMPRESSION[fs]
    if compression not in COMPRESSIONS[fs]:
        fail("image.compression", f"{compression!r} is not available for {fs}",
             f"allowed: {', '.join(COMPRESSIONS[fs])}")
    if values["image.verity"] != "none" and fmt not in ("squashfs", "erofs"):
        fail("image.verity", f"detached verity applies to squashfs and erofs, not {fmt}",
             "a ddi carries its verity in a partition")
    signing = {k: values[f"sign.{k}"] for k in ("key", "cert", "passphrase_env",
                                                  "passphrase_file")}
    if (signing["key"] is None) != (signing["cert"] is None):
        fail("sign", "needs both key and cert")
    if signing["key"] and fmt not in ("ddi",) and values["image.verity"] != "detached":
        fail("sign", f"nothing to sign in a {fmt} image without verity",
             'use format = "ddi", or verity = "detached"')
    for k in ("key", "cert", "passphrase_file"):
        if signing[k]:
            signing[k] = (path.parent / signing[k]).resolve()
    level = values["image.compression_level"]
    if level is not None and compression == "none":
        fail("image.compression_level", "has no meaning without compression")
    if level is not None and (fs, compression) in NO_LEVEL:
        fail("image.compression_level", f"{fs} {compression} takes no level",
             NO_LEVEL[(fs, compression)])
    if level is not None and (fs, compression) in COMPRESSION_LEVELS:
        low, high = COMPRESSION_LEVELS[(fs, compression)]
        if not low <= level <= high:
            fail("image.compression_level", f"{level} is out of range for {fs} {compression}",
                 f"allowed: {low}-{high}")

    users = dict(values["owners.users"])
    groups = dict(values["owners.groups"])
    sources = tuple(_sources(data.get("source", []), path.parent, fail))
    repositories = tuple(_repositories(data.get("repository", []), fail))
    if any(s.type == "packages" for s in sources) and not repositories:
        fail("source", "packages sources need at least one [[repository]]")
    if values["target.base"] is not None and not any(s.type == "packages" for s in sources):
        fail("target.base", "only applies to packages sources")

    return Recipe(
        path=path,
        sha256=digest,
        name=values["extension.name"],
        kind=kind,
        version=values["extension.version"],
        target={k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("target.")},
        sources=sources,
        repositories=repositories,
        files=tuple(_files(data.get("files", {}), path.parent, fail)),
        exclude=tuple(values["filter.exclude"]),
        users=users,
        groups=groups,
        etc_policy=etc_policy,
        var_policy=values["policy.var"],
        format=fmt,
        filesystem=fs,
        verity=values["image.verity"],
        signing=signing if signing["key"] else {},
        compression=compression,
        compression_level=values["image.compression_level"],
        source_date_epoch=values["image.source_date_epoch"],
        mtime=values["image.mtime"],
        special_files=values["policy.special_files"],
        empty_payload=values["policy.empty"],
        unpacked_limit=parse_size(values["limits.unpacked"]) or DEFAULT_UNPACKED,
        ratio_limit=values["limits.compression_ratio"],
        entries_limit=values["limits.entries"],
    )


def _type_name(t) -> str:
    names = {str: "string", int: "integer", bool: "boolean", list: "list", dict: "table",
             float: "float"}
    if isinstance(t, tuple):
        return " or ".join(names.get(x, x.__name__) for x in t)
    return names.get(t, t.__name__)


def _a(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


@dataclass
class _Entry:
    """One table checked against its section's keys: the values (defaults filled in for the
    keys that apply), its kind and the selecting key."""

    values: dict[str, Any]
    kind: str | None = None
    selector: Key | None = None


def _table(body: dict, section: str, fail, where: str | None = None) -> _Entry:
    """Check ``body`` against the section's keys, in this order: unknown keys; the kind (the
    one selecting key); then each key: applies to the kind, type, value, each table entry;
    then the keys the kind needs. ``where`` names ``body`` (``source #1 (apt = "jq")``)."""
    where = where or section
    declared = {k.name: k for k in keys(section)}
    for name in body:
        if name not in declared:
            fail(f"{where}.{name}", "unknown key", f"allowed: {', '.join(declared)}")
    selecting = [k for k in declared.values() if k.selects]
    entry = _Entry({})
    if selecting:
        present = [k for k in selecting if k.name in body]
        if len(selecting) > 1 and len(present) != 1:
            fail(where, f"needs exactly one of {', '.join(k.name for k in selecting)}")
        if not present:
            key = selecting[0]
            fail(f"{where}.{key.name}", "missing", f"example: {key.name} = {key.example}")
        entry.selector = present[0]
        entry.values[entry.selector.name] = _value(body, entry.selector, where, fail)
        entry.kind = entry.selector.selects(entry.values[entry.selector.name])
    shown = entry.selector.name if entry.selector and len(selecting) > 1 else entry.kind
    for key in declared.values():
        if key is entry.selector or key.selects:
            continue
        applies = entry.kind in key.applies if key.applies else entry.kind not in key.not_for
        if key.name not in body:
            if key.required:
                fail(f"{where}.{key.name}", "missing", f"example: {key.name} = {key.example}")
            entry.values[key.name] = key.default if applies else None
            continue
        if not applies:
            fail(f"{where}.{key.name}", (key.misapplied or "does not apply to {shown} "
                                        + _noun(section)).format(shown=shown, kind=entry.kind))
        entry.values[key.name] = _value(body, key, where, fail)
    needed = [k.name for k in declared.values()
              if entry.kind in k.required_for and k.name not in body]
    if needed:
        value = entry.values[entry.selector.name]
        words, hint = entry.selector.words(entry.kind, value) if entry.selector.words else \
            (f"{_a(str(shown))} {_noun(section, 1)}", None)
        if len(needed) == 1:
            key = declared[needed[0]]
            fail(f"{where}.{key.name}", f"required for {words}" if entry.selector.words else
                 "missing", hint or f"example: {key.name} = {key.example}")
        fail(where, f"{words} needs {' and '.join(needed)}", hint)
    return entry


def _noun(section: str, count: int = 2) -> str:
    singular, plural = {"source": ("source", "sources"),
                        "repository": ("repository", "repositories")}.get(section,
                                                                          ("entry", "entries"))
    return singular if count == 1 else plural


def _value(body: dict, key: Key, where: str, fail):
    value = body[key.name]
    path = f"{where}.{key.name}"
    if not isinstance(value, key.type) or (key.type is int and isinstance(value, bool)):
        fail(path, f"must be {_a(_type_name(key.type))}, not {_type_name(type(value))}",
             f"example: {key.name} = {key.example}")
    problem = key.check(value) if key.check else None
    if problem:
        fail(path, f"{value!r} {problem}")
    if key.items:
        for name, item in value.items():
            problem = key.items(item)
            if problem:
                fail(f"{path}.{name}", f"{item!r} {problem}")
    return value


#: the keys that name an array entry in messages, after its 1-based number
_NAMING_KEYS = {"repository": ("name", "suite", "baseurl")}


def _item_where(section: str, index: int, item) -> str:
    """How a message names entry ``index`` of an array section: 1-based, with the key that
    says which one it is (``source #3 (apt = "jq")``, ``repository #2 (suite =
    "bookworm-updates")``), as the recipe's author would find it."""
    where = f"{section} #{index + 1}"
    if not isinstance(item, dict):
        return where
    naming = list(_NAMING_KEYS.get(section, ())) + [k.name for k in keys(section) if k.selects]
    for name in naming:
        value = item.get(name)
        if isinstance(value, str) or (isinstance(value, list) and
                                      all(isinstance(v, str) for v in value)):
            text = _toml(value)
            if len(text) > 60:
                text = text[:57] + "…" + text[-1]
            return f"{where} ({name} = {text})"
    return where


def _sources(items: list, base: Path, fail) -> list[Source]:
    result = []
    for index, item in enumerate(items):
        where = _item_where("source", index, item)
        if not isinstance(item, dict):
            fail(where, "must be a table")
        entry = _table(item, "source", fail, where)
        fields = entry.selector.to_source(entry.values[entry.selector.name], base)
        result.append(Source(type=entry.selector.name, kind=entry.kind,
                             sha256=entry.values.get("sha256"),
                             version=entry.values.get("version"),
                             recommends=bool(entry.values.get("recommends")), **fields))
    return result


def _repositories(items: list, fail) -> list[Repository]:
    result: list[Repository] = []
    for index, item in enumerate(items):
        where = _item_where("repository", index, item)
        if not isinstance(item, dict):
            fail(where, "must be a table")
        entry = _table(item, "repository", fail, where)
        v, rtype = entry.values, entry.kind
        name = v["name"] or (v["suite"] if rtype == "deb" else "rpm-md")
        problem = _repository_name_check(name)
        if problem:  # a default name from the suite
            fail(f"{where}.name", f"{name!r} {problem}", "set name explicitly")
        if any(r.name == name for r in result):
            fail(f"{where}.name", f"{name!r} is used twice", "give each repository its own name")
        default_arch = ("amd64",) if rtype == "deb" else ("x86_64",)
        result.append(Repository(
            name=name, type=rtype, url=v["mirror"] or v["baseurl"], suite=v["suite"],
            components=tuple(v["components"] or ()),
            architectures=tuple(v["architectures"] or default_arch),
            keyring=v["keyring"] or v["gpgkey"], allow_unsigned=bool(v["allow_unsigned"]),
            snapshot=bool(v["snapshot"])))
    return result


def _files(table: dict, base: Path, fail) -> list[ExtraFile]:
    result = []
    for dest, spec in table.items():
        where = f"files.{dest!r}"
        if not isinstance(spec, dict):
            fail(where, "must be a table", '{ from = "files/x", mode = "0644" }')
        entry = _table(spec, "files", fail, where)
        mode = int(entry.values["mode"], 8)
        path = dest.strip("/")
        if not path or any(part in ("", ".", "..") for part in path.split("/")):
            fail(where, "must be a relative path inside the image, without . or .. parts")
        if entry.kind == "content":
            result.append(ExtraFile(path=path, mode=mode,
                                    content=entry.values["content"].encode()))
            continue
        # Only the recipe's own directory: `from = "../../../etc/shadow"` (or a symlink
        # pointing out) would put the build host's files into the image.
        written = entry.values["from"]
        src = (base / written).resolve()
        if not src.is_relative_to(base.resolve()):
            fail(f"{where}.from", f"{written!r} is outside the recipe's directory "
                 f"{base.resolve()} (after resolving symlinks)", "copy the file next to the recipe")
        if not src.is_file():
            fail(f"{where}.from", f"{src} is not a file")
        result.append(ExtraFile(path=path, mode=mode, source=src))
    return result


def reference_markdown() -> str:
    """The recipe reference, generated from SCHEMA (docs/recipes.md is this text)."""
    lines = [
        "# Recipe reference",
        "",
        "<!-- Generated from pipeline/recipe.py SCHEMA by `sysext-pipeline recipe-reference`; "
        "a test checks it is current. -->",
        "",
        "A recipe is a TOML file. Unknown sections or keys, wrong types and bad values are "
        "errors that name the file and the key.",
        "",
        "A top-level `include = \"base.toml\"` (a recipe in the same directory) supplies "
        "defaults: the including file's tables override it key by key, and its `[[source]]` "
        "list, when present, replaces the included one. The recipe hash (manifest, lock) covers "
        "both files.",
        "",
    ]
    for section in SECTIONS:
        lines += [f"## {section.title}", ""]
        if section.doc:
            lines += [section.doc, ""]
        lines += ["| key | type | default | example | meaning |", "|---|---|---|---|---|"]
        for k in keys(section.name):
            lines.append(f"| `{k.name}` | {_type_name(k.type)} | {_default_text(k)} | "
                         f"`{k.example}` | {k.doc} |")
        lines.append("")
    return "\n".join(lines)


def _default_text(key: Key) -> str:
    if key.required:
        return "required"
    if key.required_for:
        return "required for " + ", ".join(key.required_for)
    if key.selects and len([k for k in keys(key.section) if k.selects]) > 1:
        return "one of " + ", ".join(f"`{k.name}`" for k in keys(key.section) if k.selects)
    if key.default in (None, (), {}):
        return "—"
    return f"`{_toml(key.default)}`"


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)
