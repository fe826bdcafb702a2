"""The manifest: the machine contract of a build (schema-versioned JSON), as one typed model.

It holds everything a second machine needs to rebuild and two machines need to compare — and
nothing that differs between two honest builds (no build paths, durations or host names), so a
reproduced build reproduces its manifest byte for byte too.

Every section is a dataclass below; the field's JSON name, whether it may be absent, and its
bounds are declared once, on the field. From that one declaration come :meth:`Section.to_json`,
the validating :meth:`Section.from_json` (a manifest is hostile input: a wrong type, a missing
field or a huge value is one :class:`~pipeline.errors.InputError` naming the file and the dotted
field) and :func:`json_schema`, published as ``docs/manifest.schema.json`` (a test keeps it
current). Adding a field is one edit here and a regenerated schema.

The signed/unsigned projection (:meth:`Manifest.unsigned`: what an unsigned build of the same
image writes, which ``verify`` and ``diff`` compare) and the changes ``sign`` makes
(:meth:`Manifest.signed_ddi`, :meth:`Manifest.signed_verity`) are defined here too, once.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__, jsonout
from ..errors import InputError
from ..formats import entry as E
from .staging import Record

#: 2: files that are hard links of each other carry ``hardlink`` (the group's first path), so
#: a hardlinked tree and a copied one differ in the file list and the tree hash.
SCHEMA = 2
#: The schema versions this model reads (1 is 2 without ``hardlink``).
READABLE = (1, 2)

#: Bounds of every integer and string (a manifest is hostile input; the file itself is capped
#: by pipeline.outdir.MAX_MANIFEST).
MAX_INT = (1 << 63) - 1
MAX_NAME = 4096       # paths, names, versions, identifiers
MAX_TEXT = 1 << 16    # sentences (warnings, reasons, decisions)
SHA256 = "^[0-9a-f]{64}$"
UUID = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
HEX = "^([0-9a-f]{2})*$"


def _f(key: str | None = None, *, optional: bool = False, pattern: str | None = None,
       enum: tuple | None = None, minimum: int | None = 0, maximum: int | None = MAX_INT,
       max_length: int = MAX_NAME, doc: str = "", default=dataclasses.MISSING,
       default_factory=dataclasses.MISSING):
    """A manifest field: ``key`` its JSON name (default: the attribute's), ``optional``: absent
    from the JSON when None (else always written, null included); the bounds apply to the
    field's strings and integers (in lists and maps too)."""
    meta = {"key": key, "optional": optional, "pattern": pattern, "enum": enum,
            "minimum": minimum, "maximum": maximum, "max_length": max_length, "doc": doc}
    if optional and default is dataclasses.MISSING and default_factory is dataclasses.MISSING:
        default = None
    return field(default=default, default_factory=default_factory, metadata=meta)


class _Spec(typing.NamedTuple):
    attr: str
    key: str
    type: object
    optional: bool
    meta: dict


class Section:
    """A JSON object of the manifest: a dataclass whose fields are declared with :func:`_f`."""

    __slots__ = ()

    @classmethod
    def specs(cls) -> tuple[_Spec, ...]:
        return _specs(cls)

    def to_json(self) -> dict:
        out = {}
        for spec in self.specs():
            value = getattr(self, spec.attr)
            if value is None and spec.optional:
                continue
            out[spec.key] = _dump(value)
        return out

    @classmethod
    def from_json(cls, data, where: str = "manifest", path: str = ""):
        """Read and check ``data``; ``where`` names the file, ``path`` the field (dotted)."""
        return _load(cls, data, where, path)


@functools.cache
def _specs(cls) -> tuple[_Spec, ...]:
    hints = typing.get_type_hints(cls)
    return tuple(_Spec(f.name, f.metadata.get("key") or f.name, hints[f.name],
                       f.metadata.get("optional", False), dict(f.metadata))
                 for f in dataclasses.fields(cls))


def _dump(value):
    if isinstance(value, Section):
        return value.to_json()
    if isinstance(value, list):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


def _bad(where: str, path: str, what: str) -> InputError:
    return InputError(f"{where}: {path or '(top level)'}", what,
                      "not a manifest this sysext-pipeline wrote, or edited by hand")


def _kind(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(value),
                                                                          type(value).__name__)


def _key_path(path: str, key: str) -> str:
    plain = key and all(c.isalnum() or c in "-_.+@:" for c in key) and len(key) <= 80
    return f"{path}.{key}" if plain and path else key if plain else f"{path}[{key[:80]!r}]"


_UNIONS = (typing.Union, types.UnionType)


def _load(tp, value, where: str, path: str, meta: dict | None = None):
    """``value`` checked against the type ``tp`` (and the field's bounds in ``meta``)."""
    meta = meta or {}
    origin = typing.get_origin(tp)
    if origin in _UNIONS:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _load(args[0], value, where, path, meta)
    if isinstance(tp, type) and issubclass(tp, Section):
        if type(value) is not dict:
            raise _bad(where, path, f"is {_kind(value)}, not an object")
        specs = tp.specs()
        known = {s.key for s in specs}
        extra = sorted(k for k in value if k not in known)
        if extra:
            raise _bad(where, _key_path(path, str(extra[0])), "is not a field of the manifest "
                       f"schema {SCHEMA}")
        args = {}
        for spec in specs:
            sub = _key_path(path, spec.key)
            if spec.key not in value:
                if spec.optional:
                    args[spec.attr] = None
                    continue
                raise _bad(where, sub, "is missing")
            item = value[spec.key]
            if item is None and spec.optional:
                raise _bad(where, sub, "is null (leave the field out instead)")
            args[spec.attr] = _load(spec.type, item, where, sub, spec.meta)
        return tp(**args)
    if origin is list:
        if type(value) is not list:
            raise _bad(where, path, f"is {_kind(value)}, not an array")
        (item_tp,) = typing.get_args(tp)
        if item_tp is FileEntry:  # the bulk of a large manifest: checked in one expression
            fast = _file_entry_fast
            return [fast(v) or _load(item_tp, v, where, f"{path}[{n}]", meta)
                    for n, v in enumerate(value)]
        return [_load(item_tp, v, where, f"{path}[{n}]", meta) for n, v in enumerate(value)]
    if origin is dict:
        if type(value) is not dict:
            raise _bad(where, path, f"is {_kind(value)}, not an object")
        _key_tp, item_tp = typing.get_args(tp)
        out = {}
        for k, v in value.items():
            if len(k) > MAX_NAME:
                raise _bad(where, f"{path}[{k[:40]!r}…]", f"key longer than {MAX_NAME}")
            out[k] = _load(item_tp, v, where, _key_path(path, k), meta)
        return out
    if tp is str:
        if type(value) is not str:
            raise _bad(where, path, f"is {_kind(value)}, not a string")
        limit = meta.get("max_length", MAX_NAME)
        if len(value) > limit:
            raise _bad(where, path, f"is a string of {len(value)} characters (at most {limit})")
        if meta.get("enum") and value not in meta["enum"]:
            raise _bad(where, path, f"{value[:80]!r} is not one of {', '.join(meta['enum'])}")
        if meta.get("pattern") and not _matches(meta["pattern"], value):
            raise _bad(where, path, f"{value[:80]!r} does not match {meta['pattern']}")
        return value
    if tp is int:
        if type(value) is not int:
            raise _bad(where, path, f"is {_kind(value)}, not an integer")
        low, high = _bounds(meta)
        if not low <= value <= high:
            shown = str(value) if abs(value) < 10**30 else f"a {len(str(value))}-digit number"
            raise _bad(where, path, f"{shown} is out of range ({low}…{high})")
        return value
    if tp is bool:
        if type(value) is not bool:
            raise _bad(where, path, f"is {_kind(value)}, not a boolean")
        return value
    raise TypeError(f"manifest model: no reader for {tp!r}")  # a bug in this module


def _bounds(meta: dict) -> tuple[int, int]:
    """An integer field's range: 0…2⁶³-1 unless the field says otherwise (None: -2⁶³ or
    2⁶³-1, what any 64-bit reader holds)."""
    low, high = meta.get("minimum", 0), meta.get("maximum", MAX_INT)
    return (-MAX_INT - 1 if low is None else low), (MAX_INT if high is None else high)


@functools.cache
def _regex(pattern: str):
    import re

    return re.compile(pattern)


def _matches(pattern: str, value: str) -> bool:
    return _regex(pattern).search(value) is not None


# --- the sections ---------------------------------------------------------------------------

@dataclass
class RecipeRef(Section):
    file: str = _f(doc="the recipe's file name (no directory: paths differ between machines)")
    sha256: str = _f(pattern=SHA256, doc="sha256 of the recipe, its include included")


@dataclass
class Input(Section):
    """One package the image was made from, in the recipe's order (a later one wins)."""

    name: str = _f()
    version: str = _f()
    architecture: str | None = _f()
    format: str = _f()
    file: str = _f()
    sha256: str = _f(pattern=SHA256)
    size: int = _f()
    source: str = _f(max_length=MAX_TEXT, doc="where it came from, machine-independent")
    scripts: list[str] = _f(doc="maintainer scripts the package has (they never run)")


@dataclass
class Policy(Section):
    etc: str = _f()
    var: str = _f()


@dataclass
class ExtensionRelease(Section):
    path: str = _f()
    fields: dict[str, str] = _f(max_length=MAX_TEXT)
    sha256: str = _f(pattern=SHA256)


@dataclass
class Pitfall(Section):
    """A pitfall found in the image (pipeline/stages/pitfalls.py Finding)."""

    code: str = _f()
    severity: str = _f()
    message: str = _f(max_length=MAX_TEXT)
    fix: str = _f(max_length=MAX_TEXT)
    paths: list[str] = _f(max_length=MAX_TEXT)


@dataclass
class Image(Section):
    file: str = _f(doc="the image's file (or directory) name in the output directory")
    format: str = _f(enum=("squashfs", "erofs", "ddi", "directory"))
    filesystem: str | None = _f(doc="null for a directory image")
    verity: str = _f()
    compression: str = _f()
    compression_level: int | None = _f()
    size: int | None = _f(doc="null for a directory image")
    sha256: str | None = _f(pattern=SHA256, doc="null for a directory image")
    tree_sha256: str = _f(pattern=SHA256, doc="hash of the file list (canonical JSON)")


@dataclass(slots=True)
class FileEntry(Section):
    """One path in the image, as ``unsquashfs -lln`` and friends would show it."""

    path: str = _f()
    type: str = _f(enum=E.KINDS)
    mode: str = _f(pattern="^[0-7]{4}$")
    uid: int = _f(maximum=(1 << 32) - 1)
    gid: int = _f(maximum=(1 << 32) - 1)
    mtime: int = _f(minimum=None)
    size: int | None = _f(optional=True, doc="regular files")
    sha256: str | None = _f(optional=True, pattern=SHA256, doc="regular files")
    hardlink: str | None = _f(optional=True, doc="the first path of its hard-link group "
                              "(schema 2)")
    target: str | None = _f(optional=True, doc="symbolic links")
    xattrs: dict[str, str] | None = _f(optional=True, pattern=HEX, max_length=MAX_TEXT,
                                       doc="name → hex value")

    def to_json(self) -> dict:  # the hot path of a large tree: written out, same result
        out = {"path": self.path, "type": self.type, "mode": self.mode, "uid": self.uid,
               "gid": self.gid, "mtime": self.mtime}
        if self.size is not None:
            out["size"] = self.size
        if self.sha256 is not None:
            out["sha256"] = self.sha256
        if self.hardlink is not None:
            out["hardlink"] = self.hardlink
        if self.target is not None:
            out["target"] = self.target
        if self.xattrs is not None:
            out["xattrs"] = dict(self.xattrs)
        return out


_FILE_KEYS = frozenset(("path", "type", "mode", "uid", "gid", "mtime", "size", "sha256",
                        "hardlink", "target", "xattrs"))
_FILE_KINDS = frozenset(E.KINDS)


def _file_entry_fast(v) -> FileEntry | None:
    """The FileEntry of ``v`` when it is plainly valid (the same checks as :func:`_load`,
    written out for speed: 100,000 files in well under a second), else None (then
    :func:`_load` says what is wrong)."""
    if type(v) is not dict or not v.keys() <= _FILE_KEYS:
        return None
    g = v.get
    path, kind, mode, uid, gid, mtime = g("path"), g("type"), g("mode"), g("uid"), g("gid"), \
        g("mtime")
    size, sha, link, target, xattrs = g("size"), g("sha256"), g("hardlink"), g("target"), \
        g("xattrs")
    if not (type(path) is str and len(path) <= MAX_NAME and kind in _FILE_KINDS
            and type(mode) is str and len(mode) == 4 and _is_mode(mode)
            and type(uid) is int and 0 <= uid < 1 << 32 and type(gid) is int
            and 0 <= gid < 1 << 32 and type(mtime) is int and -MAX_INT - 1 <= mtime <= MAX_INT
            and (size is None and "size" not in v or type(size) is int and 0 <= size <= MAX_INT)
            and (sha is None and "sha256" not in v or type(sha) is str and _is_sha256(sha))
            and (link is None and "hardlink" not in v or type(link) is str
                 and len(link) <= MAX_NAME)
            and (target is None and "target" not in v or type(target) is str
                 and len(target) <= MAX_NAME)
            and (xattrs is None and "xattrs" not in v)):
        return None
    return FileEntry(path, kind, mode, uid, gid, mtime, size, sha, link, target, None)


def _is_mode(text: str) -> bool:
    return all("0" <= c <= "7" for c in text)


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and _regex(SHA256).match(text) is not None


@dataclass
class VerityParams(Section):
    hash_algorithm: str = _f("hashAlgorithm")
    data_block_size: int = _f("dataBlockSize")
    hash_block_size: int = _f("hashBlockSize")
    salt: str = _f(pattern=HEX)
    superblock_uuid: str = _f("superblockUuid", pattern=UUID)

    @classmethod
    def of(cls, params) -> VerityParams:
        """From pipeline.image.ddi.verity.VerityParams."""
        return cls(params.algorithm, params.data_block_size, params.hash_block_size,
                   params.salt.hex(), params.uuid)


@dataclass
class Partition(Section):
    designator: str | None = _f()
    type_uuid: str = _f("typeUuid", pattern=UUID)
    uuid: str = _f(pattern=UUID)
    label: str = _f()
    offset: int = _f()
    size: int = _f()
    flags: list[str] = _f()
    sha256: str | None = _f(pattern=SHA256, doc="null in the unsigned view of the signature "
                            "partition")


@dataclass
class Ddi(Section):
    """A DDI's partitions, verity and signature (pipeline/image/ddi/assemble.py DdiInfo)."""

    disk_uuid: str = _f("diskUuid", pattern=UUID)
    partitions: list[Partition] = _f()
    verity: VerityParams = _f()
    root_hash: str = _f("rootHash", pattern=HEX)
    certificate_fingerprint: str | None = _f("certificateFingerprint", pattern=SHA256)
    signature_algorithm: str | None = _f("signatureAlgorithm")
    unsigned_sha256: str = _f("unsignedSha256", pattern=SHA256,
                              doc="the image with its signature partition zeroed")
    sha256: str = _f(pattern=SHA256)
    size: int = _f()

    @classmethod
    def of(cls, info) -> Ddi:
        """From pipeline.image.ddi.assemble.DdiInfo."""
        return cls(info.disk_uuid,
                   [Partition(p.designator, p.type_uuid, p.uuid, p.label, p.offset, p.size,
                              list(p.flags), p.sha256) for p in info.partitions],
                   VerityParams.of(info.verity), info.root_hash, info.certificate_fingerprint,
                   info.signature_algorithm, info.unsigned_sha256, info.sha256, info.size)


@dataclass
class DetachedVerity(Section):
    """``NAME.verity``/``NAME.roothash``/``NAME.roothash.p7s`` next to a plain ``NAME.raw``."""

    root_hash: str = _f("rootHash", pattern=HEX)
    verity: VerityParams = _f()
    verity_file: str = _f("verityFile")
    verity_sha256: str = _f("veritySha256", pattern=SHA256)
    roothash_file: str = _f("roothashFile")
    signature_file: str | None = _f("signatureFile")
    certificate_fingerprint: str | None = _f("certificateFingerprint", pattern=SHA256)
    signature_algorithm: str | None = _f("signatureAlgorithm")

    @classmethod
    def of(cls, found) -> DetachedVerity:
        """From pipeline.image.ddi.assemble.DetachedVerity."""
        return cls(found.root_hash, VerityParams.of(found.verity), found.verity_path.name,
                   found.verity_sha256, found.roothash_path.name,
                   found.signature_path.name if found.signature_path else None,
                   found.certificate_fingerprint, found.signature_algorithm)


@dataclass
class Sbom(Section):
    file: str = _f()
    sha256: str | None = _f(pattern=SHA256, doc="null only in the unsigned view of a DDI")
    format: str = _f()


@dataclass
class Provenance(Section):
    file: str = _f()
    format: str = _f()
    statement_sha256: str | None = _f(pattern=SHA256, doc="null only in the unsigned view of "
                                      "a DDI")
    certificate_fingerprint: str | None = _f("certificateFingerprint", pattern=SHA256)


@dataclass(kw_only=True)
class Manifest(Section):
    """``NAME.manifest.json``."""

    schema: int = _f(minimum=READABLE[0], maximum=READABLE[-1],
                     doc=f"the contract's version ({SCHEMA}); see docs/manifest.md")
    name: str = _f()
    kind: str = _f(enum=("sysext", "confext"))
    version: str | None = _f()
    companions: list[str] = _f(doc="the other images this build made")
    decision: str = _f(max_length=MAX_TEXT, doc="why these images")
    recipe: RecipeRef = _f()
    inputs: list[Input] = _f()
    source_date_epoch: int = _f()
    source_date_epoch_origin: str = _f()
    mtime_policy: str = _f()
    policy: Policy = _f()
    tools: dict[str, str | None] = _f(doc="tool and library versions (null: not found)")
    input_digest: str | None = _f(optional=True, pattern=SHA256,
                                  doc="what the up-to-date check compares "
                                  "(pipeline/stages/uptodate.py)")
    extension_release: ExtensionRelease = _f()
    dropped: dict[str, str] = _f(max_length=MAX_TEXT, doc="path → why it is not in the image")
    excluded_count: int = _f()
    warnings: list[Pitfall] = _f(doc="pitfalls found in the image (pipeline/stages/pitfalls.py)")
    image: Image = _f()
    files: list[FileEntry] = _f()
    ddi: Ddi | None = _f(optional=True)
    verity: DetachedVerity | None = _f(optional=True)
    sbom: Sbom | None = _f(optional=True)
    provenance: Provenance | None = _f(optional=True)

    @classmethod
    def from_json(cls, data, where: str = "manifest", path: str = "") -> Manifest:
        if type(data) is dict and "schema" in data and type(data["schema"]) is int and \
                data["schema"] not in READABLE:
            raise InputError(f"{where}: schema", f"manifest schema {data['schema']}; this "
                             f"sysext-pipeline reads {', '.join(map(str, READABLE))}",
                             "read it with the sysext-pipeline that wrote it")
        return _load(cls, data, where, path)

    def dumps(self) -> bytes:
        return dumps(self.to_json())

    # -- views and changes, defined once --------------------------------------------------------

    @property
    def signed_section(self) -> Ddi | DetachedVerity | None:
        """What carries the signature: the DDI, or the detached verity files (None: neither)."""
        return self.ddi or self.verity

    @property
    def root_hash(self) -> str | None:
        section = self.signed_section
        return section.root_hash if section else None

    @property
    def signed(self) -> bool:
        """Whether the manifest says its image is signed."""
        section = self.signed_section
        if section is None:
            return False
        return bool(section.certificate_fingerprint or
                    getattr(section, "signature_file", None))

    @property
    def unsigned_sha256(self) -> str | None:
        """The sha256 of the image as an unsigned build makes it (None: a directory image)."""
        return (self.ddi.unsigned_sha256 if self.ddi else None) or self.image.sha256

    def unsigned(self) -> Manifest:
        """The manifest as an unsigned build of the same image would write it: what ``verify``
        compares, since it rebuilds without the private key (signatures are checked
        separately). A copy; this one is unchanged."""
        m = copy_of(self)
        if m.ddi:
            m.ddi.certificate_fingerprint = m.ddi.signature_algorithm = None
            m.ddi.sha256 = m.ddi.unsigned_sha256
            for part in m.ddi.partitions:
                if str(part.designator or "").endswith("-verity-sig"):
                    part.sha256 = None
            m.image.sha256 = m.ddi.unsigned_sha256
            if m.sbom:  # they name the signed image's sha256
                m.sbom.sha256 = None
            if m.provenance:
                m.provenance.statement_sha256 = None
        if m.provenance:  # who signed NAME.provenance.json
            m.provenance.certificate_fingerprint = None
        if m.verity:
            m.verity.signature_file = None
            m.verity.certificate_fingerprint = m.verity.signature_algorithm = None
        return m

    def signed_ddi(self, info) -> None:
        """``sign`` filled the DDI's signature partition (``info``: its DdiInfo read back):
        the manifest becomes what a signed build writes."""
        self.ddi = Ddi.of(info)
        self.image.sha256 = info.sha256

    def signed_verity(self, found) -> None:
        """``sign`` wrote ``NAME.roothash.p7s`` (``found``: assemble.DetachedVerity)."""
        self.verity.certificate_fingerprint = found.certificate_fingerprint
        self.verity.signature_algorithm = found.signature_algorithm
        self.verity.signature_file = found.signature_path.name


def copy_of(manifest: Manifest) -> Manifest:
    """A deep copy that shares the (never changed) file list."""
    import copy

    files, manifest.files = manifest.files, []
    try:
        clone = copy.deepcopy(manifest)
    finally:
        manifest.files = files
    clone.files = files
    return clone


def read(path: Path | str, data: bytes | None = None) -> Manifest:
    """``NAME.manifest.json`` (or its ``data`` already read), checked: an InputError naming
    the file (and the field) for anything that is not a manifest this model reads. Read like
    every file of an output directory (pipeline/outdir.py: a regular file, not a symlink or a
    FIFO, size-capped)."""
    from ..outdir import MAX_MANIFEST, read_entry

    path = Path(path)
    if data is None:
        try:
            data = read_entry(path.parent, path.name, MAX_MANIFEST)
        except OSError as err:
            raise InputError(str(path), f"cannot read the manifest: {err.strerror}") from None
        if data is None:
            raise InputError(str(path), f"not a regular file of at most {MAX_MANIFEST} bytes "
                             "(a symlink, a FIFO, a directory, missing or too large)")
    return Manifest.from_json(parse(data, str(path)), str(path))


def parse(data: bytes | str, where: str):
    """JSON text → data, every failure (bad syntax, a 5,000-digit number, nesting deeper than
    the interpreter's stack) one InputError naming ``where``."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as err:
        return _not_json(where, err)


def _not_json(where: str, err: Exception):
    text = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
    raise InputError(where, f"not a JSON manifest: {text}") from None


def unsigned_json(data: dict, where: str = "manifest") -> dict:
    """:meth:`Manifest.unsigned` of manifest JSON, as JSON."""
    return Manifest.from_json(data, where).unsigned().to_json()


# --- the published schema -------------------------------------------------------------------

SCHEMA_ID = "https://sysext-pipeline.invalid/manifest.schema.json"


def json_schema() -> dict:
    """The JSON Schema (2020-12) of ``NAME.manifest.json``, derived from the model."""
    defs: dict[str, dict] = {}
    root = _object_schema(Manifest, defs)
    root.pop("description", None)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            "title": "sysext-pipeline manifest (NAME.manifest.json)",
            "description": f"Written by sysext-pipeline, schema {SCHEMA} (reads "
                           f"{', '.join(map(str, READABLE))}); generated from "
                           "pipeline/stages/manifest.py.",
            **root, "$defs": dict(sorted(defs.items()))}


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def _object_schema(cls, defs: dict) -> dict:
    props, required = {}, []
    for spec in cls.specs():
        props[spec.key] = _type_schema(spec.type, spec.meta, defs)
        if spec.meta.get("doc"):
            props[spec.key] = {"description": spec.meta["doc"], **props[spec.key]}
        if not spec.optional:
            required.append(spec.key)
    out = {"type": "object", "properties": props, "required": required,
           "additionalProperties": False}
    doc = (cls.__doc__ or "").strip().splitlines()
    if doc and not doc[0].startswith(cls.__name__ + "("):
        out = {"description": doc[0], **out}
    return out


def _type_schema(tp, meta: dict, defs: dict) -> dict:
    origin = typing.get_origin(tp)
    if origin in _UNIONS:
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        schema = _type_schema(inner, meta, defs)
        if meta.get("optional"):
            return schema
        if "$ref" in schema:
            return {"anyOf": [schema, {"type": "null"}]}
        if "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
        return {**schema, "type": [schema["type"], "null"]}
    if isinstance(tp, type) and issubclass(tp, Section):
        if tp.__name__ not in defs:
            defs[tp.__name__] = {}  # a placeholder first: no section refers to itself
            defs[tp.__name__] = _object_schema(tp, defs)
        return {"$ref": f"#/$defs/{tp.__name__}"}
    if origin is list:
        return {"type": "array", "items": _type_schema(typing.get_args(tp)[0], meta, defs)}
    if origin is dict:
        return {"type": "object", "propertyNames": {"maxLength": MAX_NAME},
                "additionalProperties": _type_schema(typing.get_args(tp)[1],
                                                     {**meta, "optional": False}, defs)}
    if tp is str:
        out: dict = {"type": "string", "maxLength": meta.get("max_length", MAX_NAME)}
        if meta.get("pattern"):
            out["pattern"] = meta["pattern"]
        if meta.get("enum"):
            out["enum"] = list(meta["enum"])
        return out
    if tp is int:
        out = {"type": "integer"}
        out["minimum"], out["maximum"] = _bounds(meta)
        return out
    if tp is bool:
        return {"type": "boolean"}
    raise TypeError(f"manifest model: no schema for {tp!r}")


# --- making the parts of a manifest ---------------------------------------------------------

def hardlink_groups(records: dict[str, Record], root: Path | None = None) -> dict[str, str]:
    """Path → the first path (sorted) of its group, for every regular file that shares its
    inode with another. From the tree on disk when ``root`` is given (what is packed), else
    from the records (a hard link shares its target's record)."""
    groups: dict[object, list[str]] = {}
    for path in sorted(records):
        record = records[path]
        if record.kind != E.FILE:
            continue
        if root is not None:
            st = os.lstat(Path(root) / path)
            if st.st_nlink < 2:
                continue
            key = (st.st_dev, st.st_ino)
        else:
            key = id(record)
        groups.setdefault(key, []).append(path)
    return {path: members[0] for members in groups.values() if len(members) > 1
            for path in members}


def file_entries(records: dict[str, Record], root: Path | None = None) -> list[FileEntry]:
    """Every path in the image, sorted, with what `unsquashfs -lln` and friends would show;
    members of a hard-link group name its first path in ``hardlink`` (see hardlink_groups)."""
    links = hardlink_groups(records, root)
    entries = []
    for path in sorted(records):
        r = records[path]
        is_file = r.kind == E.FILE
        entries.append(FileEntry(
            path, r.kind, f"{r.mode:04o}", r.uid, r.gid, r.mtime,
            size=r.size if is_file else None, sha256=r.sha256 if is_file else None,
            hardlink=links.get(path) if is_file else None,
            target=r.target if r.kind == E.SYMLINK else None,
            xattrs={k: v.hex() for k, v in sorted(r.xattrs.items())} if r.xattrs else None))
    return entries


def tree_digest(files: list) -> str:
    """One hash for the file tree, comparable across tool versions that change image bytes."""
    return hashlib.sha256(canonical_json([f.to_json() if isinstance(f, FileEntry) else f
                                          for f in files])).hexdigest()


def canonical_json(data) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def dumps(manifest: dict) -> bytes:
    return jsonout.pretty(manifest)


@functools.cache
def library_versions() -> dict[str, str]:
    """Compression library versions: same mksquashfs + different libzstd = different bytes.

    Each library is the one ``ctypes.util.find_library`` finds; its first way (``ldconfig
    -p``) is run once for all four here instead of once per library (~8 ms each)."""
    import ctypes
    import ctypes.util

    probes = {"zstd": "ZSTD_versionString", "lzma": "lzma_version_string",
              "lz4": "LZ4_versionString", "z": "zlibVersion"}
    sonames = _ldconfig_sonames(list(probes))
    found = {}
    for lib, symbol in probes.items():
        name = sonames.get(lib) or ctypes.util.find_library(lib)
        if not name:
            continue
        try:
            fn = getattr(ctypes.CDLL(name), symbol)
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_char_p
        found[f"lib{lib}"] = fn().decode()
    return found


def _ldconfig_sonames(names: list[str]) -> dict[str, str]:
    """What ``ctypes.util.find_library(name)`` finds through ``ldconfig -p`` on Linux (the
    same command and pattern), for every name at once; a name not found there is left out
    (find_library then tries its other ways)."""
    if not sys.platform.startswith("linux"):
        return {}
    import re
    import struct
    import subprocess

    machine = os.uname().machine + ("-32" if struct.calcsize("l") == 4 else "-64")
    abi_type = {"x86_64-64": "libc6,x86-64", "ppc64-64": "libc6,64bit",
                "sparc64-64": "libc6,64bit", "s390x-64": "libc6,64bit",
                "ia64-64": "libc6,IA-64"}.get(machine, "libc6")
    try:
        with subprocess.Popen(["/sbin/ldconfig", "-p"], stdin=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              env={"LC_ALL": "C", "LANG": "C"}) as proc:
            listing = proc.stdout.read()
    except OSError:
        return {}
    found = {}
    for name in names:
        pattern = r"\s+(lib" + re.escape(name) + r"\.[^\s]+)\s+\(" + abi_type
        match = re.search(os.fsencode(pattern), listing)
        if match:
            found[name] = os.fsdecode(match.group(1))
    return found


def tool_versions(image_tools: dict[str, str | None]) -> dict[str, str | None]:
    import platform

    versions = {"sysext-pipeline": __version__, "python": platform.python_version()}
    versions.update(image_tools)
    versions.update(library_versions())
    return versions
