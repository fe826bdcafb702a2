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
from .systemd import release as sdrelease

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

KINDS = ("auto", "sysext", "confext")
ETC_POLICIES = ("confext", "factory", "drop", "error")
VAR_POLICIES = ("tmpfiles", "drop", "error")
FORMATS = ("squashfs", "erofs", "directory")
COMPRESSIONS = {
    "squashfs": ("zstd", "xz", "gzip", "lz4", "lzo", "none"),
    "erofs": ("lz4hc", "lz4", "none"),
    "directory": ("none",),
}
DEFAULT_COMPRESSION = {"squashfs": "zstd", "erofs": "lz4hc", "directory": "none"}
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
    return None if value is None or 1 <= value <= 22 else "must be between 1 and 22"


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
        "check: use with architecture).", '"debian"', required=True, check=_field_value_check),
    Key("target", "version_id", str, "Host VERSION_ID=, compared as an exact string (`40` does not "
        "match `40.1`). Optional when a level is given.", '"12"', check=_field_value_check),
    Key("target", "sysext_level", str, "SYSEXT_LEVEL=; when host and image both have one it "
        "replaces the VERSION_ID comparison (sysext only).", '"1.0"', check=_field_value_check),
    Key("target", "confext_level", str, "CONFEXT_LEVEL= (confext only).", '"1.0"',
        check=_field_value_check),
    Key("target", "architecture", str, "ARCHITECTURE= in systemd spelling (`x86-64`, `arm64`, ...) "
        "or `_any`; `auto` derives it from the packages (none when all are arch-independent).",
        '"x86-64"', default="auto", check=_arch_check),
    Key("target", "scope", list, "SYSEXT_SCOPE= / CONFEXT_SCOPE=: any of `system`, `initrd`, "
        "`portable`. Absent: systemd's default (system portable).", '["system", "portable"]',
        check=_scope_check),
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
    Key("filter", "exclude", list, "Glob patterns (`*` within a name, `**` across directories) of "
        "image paths not to include; matched after /lib→/usr/lib canonicalization.",
        '["usr/share/doc/**", "usr/share/man/**"]', default=(), check=_globs_check),
    Key("image", "format", str, "`squashfs`, `erofs`, or `directory` (a plain tree).",
        '"squashfs"', default="squashfs", check=_one_of(FORMATS)),
    Key("image", "compression", str, "squashfs: zstd (default), xz, gzip, lz4, lzo, none; erofs: "
        "lz4hc (default), lz4, none; directory: none.", '"zstd"'),
    Key("image", "compression_level", int, "Compressor level (squashfs zstd 1-22, xz/gzip 1-9 "
        "where the tool allows; erofs lz4hc 0-12). Default: the tool's own.", "3",
        check=_level_check),
    Key("image", "source_date_epoch", int, "Time stamp for every file and the file system. "
        "Default: $SOURCE_DATE_EPOCH, else the newest mtime in the packages (never the clock).",
        "1700000000", check=_epoch_check),
    Key("image", "mtime", str, "`set`: every mtime becomes the epoch; `clamp`: only newer ones "
        "are lowered to it.", '"set"', default="set", check=_one_of(MTIME_POLICIES)),
)

SOURCE_KEYS = {
    "deb": "A .deb: a path relative to the recipe, or an http(s) URL (then `sha256` is required).",
    "rpm": "An .rpm: a path relative to the recipe, or an http(s) URL (then `sha256` is required).",
    "apt": "A Debian package name fetched through the build host's apt configuration "
           "(`apt-get download NAME=VERSION`); needs `version` and `sha256`.",
    "version": "Exact package version (apt sources).",
    "sha256": "Expected sha256 of the package file; checked before anything is extracted.",
}
FILES_KEYS = {
    "from": "File in the recipe directory to copy (exactly one of `from` or `content`).",
    "content": "Literal file content (UTF-8).",
    "mode": 'Octal permission string, default "0644".',
}
OWNERS_KEYS = {
    "users": "Table user name → numeric uid for files a package owns by a non-root name.",
    "groups": "Table group name → numeric gid.",
}


@dataclass(frozen=True)
class Source:
    type: str  # "deb" | "rpm" | "apt"
    ref: str  # URL, absolute path, or apt package name
    sha256: str | None
    version: str | None = None

    @property
    def is_url(self) -> bool:
        return self.ref.startswith(("http://", "https://"))

    @property
    def format(self) -> str:
        return "deb" if self.type in ("deb", "apt") else "rpm"


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
    etc_policy: str = "drop"
    var_policy: str = "tmpfiles"
    format: str = "squashfs"
    compression: str = "zstd"
    compression_level: int | None = None
    source_date_epoch: int | None = None
    mtime: str = "set"

    @property
    def directory(self) -> Path:
        return self.path.parent


def load(path: str | Path) -> Recipe:
    """Read and validate a recipe file; every problem is an InputError naming file and key."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(str(path), f"cannot read recipe: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(str(path), f"not valid TOML: {exc}") from None
    return _build(path.resolve(), hashlib.sha256(raw).hexdigest(), data)


def _build(path: Path, digest: str, data: dict) -> Recipe:
    where = str(path)

    def fail(key: str, what: str, hint: str | None = None):
        raise InputError(f"{where}: {key}", what, hint)

    known_sections = {k.section for k in SCHEMA} | {"source", "files", "owners"}
    for section, body in data.items():
        if section not in known_sections:
            fail(section, "unknown section", f"allowed: {', '.join(sorted(known_sections))}")
        if section != "source" and not isinstance(body, dict):
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
    compression = values["image.compression"] or DEFAULT_COMPRESSION[fmt]
    if compression not in COMPRESSIONS[fmt]:
        fail("image.compression", f"{compression!r} is not available for {fmt}",
             f"allowed: {', '.join(COMPRESSIONS[fmt])}")
    if values["image.compression_level"] is not None and compression == "none":
        fail("image.compression_level", "has no meaning without compression")

    owners = data.get("owners", {})
    for name in owners:
        if name not in OWNERS_KEYS:
            fail(f"owners.{name}", "unknown key", f"allowed: {', '.join(OWNERS_KEYS)}")
    users = _id_table(owners.get("users", {}), "owners.users", fail)
    groups = _id_table(owners.get("groups", {}), "owners.groups", fail)

    return Recipe(
        path=path,
        sha256=digest,
        name=values["extension.name"],
        kind=kind,
        version=values["extension.version"],
        target={k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("target.")},
        sources=tuple(_sources(data.get("source", []), path.parent, fail)),
        files=tuple(_files(data.get("files", {}), path.parent, fail)),
        exclude=tuple(values["filter.exclude"]),
        users=users,
        groups=groups,
        etc_policy=etc_policy,
        var_policy=values["policy.var"],
        format=fmt,
        compression=compression,
        compression_level=values["image.compression_level"],
        source_date_epoch=values["image.source_date_epoch"],
        mtime=values["image.mtime"],
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
        types = [t for t in ("deb", "rpm", "apt") if t in item]
        if len(types) != 1:
            fail(key, "needs exactly one of deb, rpm, apt")
        stype = types[0]
        ref = item[stype]
        for name in (stype, "sha256", "version"):
            if name in item and not isinstance(item[name], str):
                fail(f"{key}.{name}", "must be a string")
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
                ref = str((base / ref).resolve())
        result.append(Source(type=stype, ref=ref, sha256=sha, version=version))
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
            src = (base / spec["from"]).resolve()
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
