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
    """One recipe key: its TOML type, default, check and the words the reference prints."""

    section: str
    name: str
    type: type | tuple[type, ...]
    doc: str
    example: str
    default: Any = None
    required: bool = False
    check: Callable[[Any], str | None] | None = None  # returns a complaint, or None when fine

    @property
    def path(self) -> str:
        return f"{self.section}.{self.name}"


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

SOURCE_KEYS = {
    "deb": "A .deb: a path relative to the recipe, or an http(s) URL (then `sha256` is required).",
    "rpm": "An .rpm: a path relative to the recipe, or an http(s) URL (then `sha256` is required).",
    "apt": "A Debian package name fetched through the build host's apt configuration "
           "(`apt-get download NAME=VERSION`); needs `version` and `sha256`.",
    "packages": "Package names resolved with their dependencies from the `[[repository]]` "
                "tables into the lock file (`sysext-pipeline lock`); build uses exactly the "
                "locked files. Debian names may carry `:arch`; rpm names may be file paths.",
    "recommends": "With `packages`: also follow Recommends (rpm: weak dependencies), for the "
                  "whole resolution. Default false.",
    "version": "Exact package version (apt sources).",
    "sha256": "Expected sha256 of the package file; checked before anything is extracted.",
}
FILES_KEYS = {
    "from": "File in the recipe's directory (or below it) to copy; a path that leads outside, "
            "also through a symlink, is an error. Exactly one of `from` or `content`.",
    "content": "Literal file content (UTF-8).",
    "mode": 'Octal permission string, default "0644".',
}
REPOSITORY_KEYS = {
    "name": "Name the lock refers to (default: the suite for deb, `rpm-md` for rpm-md); unique.",
    "type": "`deb` (a Debian/Ubuntu archive) or `rpm-md` (repomd.xml: Fedora, CentOS, openSUSE).",
    "mirror": "deb: the archive root: `host` (the build host's apt sources, matched by suite), "
              "an http(s) URL, or `$ENV_VAR` (expanded at lock/build time, never stored).",
    "suite": "deb: the suite or codename (`bookworm`, `bookworm-updates`).",
    "components": 'deb: components, default `["main"]`.',
    "architectures": 'deb: default `["amd64"]` (the first is native; `all` is implied); rpm-md: '
                     'default `["x86_64"]` (`noarch` is implied).',
    "keyring": "deb: OpenPGP keyring (binary or armored) InRelease/Release.gpg must verify "
               "against (gpgv). Default with `mirror = \"host\"`: the apt source's Signed-By.",
    "baseurl": "rpm-md: the directory holding repodata/; `$ENV_VAR` parts are expanded.",
    "gpgkey": "rpm-md: OpenPGP key; when given, repodata/repomd.xml.asc must verify against it.",
    "allow_unsigned": "deb: accept a Release without a signature check when no keyring is "
                      "known (the Packages hashes are still checked). Default false.",
}
OWNERS_KEYS = {
    "users": "Table user name → numeric uid for files a package owns by a non-root name.",
    "groups": "Table group name → numeric gid.",
}


@dataclass(frozen=True)
class Source:
    type: str  # "deb" | "rpm" | "apt" | "packages" (resolved through the lock)
    ref: str  # URL, absolute path, or apt package name ("" for packages)
    sha256: str | None
    version: str | None = None
    names: tuple[str, ...] = ()  # packages: the names to resolve
    recommends: bool = False  # packages: follow weak dependencies too
    label: str | None = None  # how the manifest names it: repository:path, or a local path
    #                           as the recipe wrote it
    architecture: str | None = None  # locked packages: the architecture the lock says

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

    known_sections = {k.section for k in SCHEMA} | {"source", "files", "owners", "repository"}
    for section, body in data.items():
        if section not in known_sections:
            fail(section, "unknown section", f"allowed: {', '.join(sorted(known_sections))}")
        if section not in ("source", "repository") and not isinstance(body, dict):
            fail(section, "must be a table")

    values: dict[str, Any] = {}
    for section in {k.section for k in SCHEMA}:
        body = data.get(section, {})
        keys = {k.name: k for k in SCHEMA if k.section == section}
        for name in body:
            if name not in keys:
                fail(f"{section}.{name}", "unknown key", f"allowed: {', '.join(keys)}")
        for name, key in keys.items():
            if name not in body:
                if key.required:
                    fail(key.path, "missing", f"example: {name} = {key.example}")
                values[key.path] = key.default
                continue
            value = body[name]
            if not isinstance(value, key.type) or (key.type is int and isinstance(value, bool)):
                fail(key.path, f"must be {_a(_type_name(key.type))}, not {_type_name(type(value))}",
                     f"example: {name} = {key.example}")
            problem = key.check(value) if key.check else None
            if problem:
                fail(key.path, f"{value!r} {problem}")
            values[key.path] = value

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

    owners = data.get("owners", {})
    for name in owners:
        if name not in OWNERS_KEYS:
            fail(f"owners.{name}", "unknown key", f"allowed: {', '.join(OWNERS_KEYS)}")
    users = _id_table(owners.get("users", {}), "owners.users", fail)
    groups = _id_table(owners.get("groups", {}), "owners.groups", fail)
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


def _id_table(table, key, fail) -> dict[str, int]:
    if not isinstance(table, dict):
        fail(key, "must be a table of name = number")
    for name, value in table.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**32:
            fail(f"{key}.{name}", "must be a numeric id between 0 and 2^32-1")
    return dict(table)


def _sources(items, base: Path, fail) -> list[Source]:
    if not isinstance(items, list):
        fail("source", "must be an array of tables", "write [[source]] for each package")
    result = []
    for index, item in enumerate(items):
        key = f"source[{index}]"
        if not isinstance(item, dict):
            fail(key, "must be a table")
        for name in item:
            if name not in SOURCE_KEYS:
                fail(f"{key}.{name}", "unknown key", f"allowed: {', '.join(SOURCE_KEYS)}")
        types = [t for t in ("deb", "rpm", "apt", "packages") if t in item]
        if len(types) != 1:
            fail(key, "needs exactly one of deb, rpm, apt, packages")
        stype = types[0]
        if stype == "packages":
            result.append(_packages_source(item, key, fail))
            continue
        if "recommends" in item:
            fail(f"{key}.recommends", "only applies to packages sources")
        ref = item[stype]
        for name in (stype, "sha256", "version"):
            if name in item and not isinstance(item[name], str):
                fail(f"{key}.{name}", "must be a string")
        label = None
        sha = item.get("sha256")
        if sha is not None and not SHA256_RE.match(sha):
            fail(f"{key}.sha256", "must be 64 lowercase hex digits")
        version = item.get("version")
        if stype == "apt":
            if not re.match(r"^[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?$", ref):
                fail(f"{key}.apt", f"{ref!r} is not a Debian package name")
            if not version or not sha:
                fail(key, f"apt source {ref!r} needs version and sha256",
                     f"apt-cache policy {ref} shows versions; the lock command pins them")
        else:
            if version is not None:
                fail(f"{key}.version", f"only applies to apt sources (the {stype} file is exact)")
            if ref.startswith(("http://", "https://")):
                if not sha:
                    fail(f"{key}.sha256", f"required for the URL {ref}")
            elif "://" in ref:
                fail(f"{key}.{stype}", "only http(s) URLs and local paths are supported")
            else:
                label = ref  # as written: the manifest must not depend on the build's path
                ref = str((base / ref).resolve())
        result.append(Source(type=stype, ref=ref, sha256=sha, version=version, label=label))
    return result


def _packages_source(item: dict, key: str, fail) -> Source:
    names = item["packages"]
    if not isinstance(names, list) or not names or not all(
            isinstance(n, str) and re.fullmatch(r"[A-Za-z0-9_/][A-Za-z0-9_+.:/()-]*", n)
            for n in names):
        fail(f"{key}.packages", "must be a non-empty list of package names",
             'e.g. packages = ["strace", "jq"]')
    for name in ("sha256", "version"):
        if name in item:
            fail(f"{key}.{name}", "does not apply to packages sources (the lock pins them)")
    recommends = item.get("recommends", False)
    if not isinstance(recommends, bool):
        fail(f"{key}.recommends", "must be a boolean")
    return Source(type="packages", ref="", sha256=None, names=tuple(names),
                  recommends=recommends)


def _repositories(items, fail) -> list[Repository]:
    if not isinstance(items, list):
        fail("repository", "must be an array of tables", "write [[repository]] for each one")
    result: list[Repository] = []
    for index, item in enumerate(items):
        key = f"repository[{index}]"
        if not isinstance(item, dict):
            fail(key, "must be a table")
        for name, value in item.items():
            if name not in REPOSITORY_KEYS:
                fail(f"{key}.{name}", "unknown key", f"allowed: {', '.join(REPOSITORY_KEYS)}")
            want = list if name in ("components", "architectures") else \
                bool if name == "allow_unsigned" else str
            if not isinstance(value, want) or (want is list and not (
                    value and all(isinstance(v, str) and v for v in value))):
                fail(f"{key}.{name}", f"must be {_a(_type_name(want))}"
                     + (" of strings" if want is list else ""))
        rtype = item.get("type")
        if rtype not in ("deb", "rpm-md"):
            fail(f"{key}.type", f"{rtype!r} must be one of 'deb', 'rpm-md'")
        allowed = {"deb": {"mirror", "suite", "components", "architectures", "keyring",
                           "allow_unsigned"},
                   "rpm-md": {"baseurl", "gpgkey", "architectures"}}[rtype] | {"name", "type"}
        for name in item:
            if name not in allowed:
                fail(f"{key}.{name}", f"does not apply to {rtype} repositories")
        url_key = "mirror" if rtype == "deb" else "baseurl"
        url = item.get(url_key)
        if not url:
            fail(f"{key}.{url_key}", "missing", 'e.g. mirror = "host"' if rtype == "deb" else
                 'e.g. baseurl = "$FEDORA_MIRROR/releases/40/Everything/x86_64/os"')
        if not (url == "host" and rtype == "deb" or url.startswith("$") or
                re.match(r"^https?://[^/\s]+", url)):
            fail(f"{key}.{url_key}", f"{url!r} is not "
                 + ("host, " if rtype == "deb" else "") + "an http(s) URL or $ENV_VAR")
        if rtype == "deb" and not item.get("suite"):
            fail(f"{key}.suite", "missing", 'e.g. suite = "bookworm"')
        name = item.get("name") or (item["suite"] if rtype == "deb" else "rpm-md")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name):
            fail(f"{key}.name", f"{name!r}: letters, digits and ._+- only")
        if any(r.name == name for r in result):
            fail(f"{key}.name", f"{name!r} is used twice", "give each repository its own name")
        default_arch = ["amd64"] if rtype == "deb" else ["x86_64"]
        result.append(Repository(
            name=name, type=rtype, url=url, suite=item.get("suite"),
            components=tuple(item.get("components", ["main"] if rtype == "deb" else [])),
            architectures=tuple(item.get("architectures", default_arch)),
            keyring=item.get("keyring") or item.get("gpgkey"),
            allow_unsigned=item.get("allow_unsigned", False)))
    return result


def _files(table, base: Path, fail) -> list[ExtraFile]:
    result = []
    for dest, spec in table.items():
        key = f"files.{dest!r}"
        if not isinstance(spec, dict):
            fail(key, "must be a table", '{ from = "files/x", mode = "0644" }')
        for name in spec:
            if name not in FILES_KEYS:
                fail(f"{key}.{name}", "unknown key", f"allowed: {', '.join(FILES_KEYS)}")
        if ("from" in spec) == ("content" in spec):
            fail(key, "needs exactly one of from, content")
        mode = spec.get("mode", "0644")
        if not isinstance(mode, str) or not MODE_RE.match(mode):
            fail(f"{key}.mode", f"{mode!r} is not an octal mode string", 'e.g. "0755"')
        path = dest.strip("/")
        if not path or any(part in ("", ".", "..") for part in path.split("/")):
            fail(key, "must be a relative path inside the image, without . or .. parts")
        if "from" in spec:
            if not isinstance(spec["from"], str):
                fail(f"{key}.from", "must be a string")
            # Only the recipe's own directory: `from = "../../../etc/shadow"` (or a symlink
            # pointing out) would put the build host's files into the image.
            src = (base / spec["from"]).resolve()
            if not src.is_relative_to(base.resolve()):
                fail(f"{key}.from", f"{spec['from']!r} is outside the recipe's directory "
                     f"{base.resolve()} (after resolving symlinks)",
                     "copy the file next to the recipe")
            if not src.is_file():
                fail(f"{key}.from", f"{src} is not a file")
            result.append(ExtraFile(path=path, mode=int(mode, 8), source=src))
        else:
            if not isinstance(spec["content"], str):
                fail(f"{key}.content", "must be a string")
            result.append(ExtraFile(path=path, mode=int(mode, 8),
                                    content=spec["content"].encode()))
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
    for section in dict.fromkeys(k.section for k in SCHEMA):
        lines += [f"## [{section}]", "", "| key | type | default | example | meaning |",
                  "|---|---|---|---|---|"]
        for k in SCHEMA:
            if k.section != section:
                continue
            default = "required" if k.required else ("—" if k.default in (None, ()) else
                                                     f"`{_toml(k.default)}`")
            lines.append(f"| `{k.name}` | {_type_name(k.type)} | {default} | `{k.example}` | "
                         f"{k.doc} |")
        lines.append("")
    for title, keys in (("[[source]] (any number, applied in order)", SOURCE_KEYS),
                        ("[[repository]] (where packages sources are resolved)",
                         REPOSITORY_KEYS),
                        ('[files] ("path/in/image" = { ... })', FILES_KEYS),
                        ("[owners]", OWNERS_KEYS)):
        lines += [f"## {title}", "", "| key | meaning |", "|---|---|"]
        lines += [f"| `{name}` | {doc} |" for name, doc in keys.items()]
        lines.append("")
    return "\n".join(lines)


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)
