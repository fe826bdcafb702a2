"""RPM packages: lead, signature header, main header, compressed cpio payload — in one pass.

The cpio payload is only half the truth: modes, owners *by name*, mtimes, symlink targets,
file capabilities, %config and %ghost flags live in the main header, and RPM itself installs
from the header. So does this reader: the payload supplies data (and numeric uid/gid), the
header supplies metadata, and a payload member the header does not list is an error.

Layout (all integers big-endian)::

    lead (96 bytes) | signature header, padded to 8 | main header | compressed cpio
    header = magic 8e ad e8 01, 4 reserved, n_index u32, store_size u32,
             n_index × (tag u32, type u32, offset u32, count u32), store
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import InputError
from .compression import DigestCheck, HashingReader, Limits, open_decompressed, read_exact
from .cpio import CpioRecord, fill_from_record, iter_records, resolve_hardlinks
from .entry import BLOCKDEV, CHARDEV, FILE, Entry, PackageInfo, shown
from .tar import kind_from_mode

LEAD_SIZE = 96
LEAD_MAGIC = b"\xed\xab\xee\xdb"
HEADER_MAGIC = b"\x8e\xad\xe8\x01"
MAX_TAGS = 0xFFFF  # rpm's own limits (HEADER_TAGS_MAX, HEADER_DATA_MAX)
MAX_STORE = 32 << 20  # rpm allows 256 MiB; the largest real headers are a few MiB
MAX_COUNT = 1 << 17  # values of one tag: files of one package at most (the largest real
#                      packages have tens of thousands); bounds the memory a header costs

# Tag numbers (rpmtag.h)
NAME, VERSION, RELEASE, EPOCH, ARCH = 1000, 1001, 1002, 1003, 1022
OLDFILENAMES, FILESIZES, FILEMODES, FILERDEVS, FILEMTIMES = 1027, 1028, 1030, 1033, 1034
FILELINKTOS, FILEFLAGS, FILEUSERNAME, FILEGROUPNAME = 1036, 1037, 1039, 1040
FILEDEVICES, FILEINODES = 1095, 1096
#: Scriptlet tags that rpm runs at install time (an extension never runs them).
SCRIPTLETS = {1023: "%pre", 1024: "%post", 1025: "%preun", 1026: "%postun", 1065: "%triggers",
              1151: "%pretrans", 1152: "%posttrans", 5066: "%filetriggers"}
DIRINDEXES, BASENAMES, DIRNAMES = 1116, 1117, 1118
PAYLOADFORMAT, PAYLOADCOMPRESSOR = 1124, 1125
LONGFILESIZES, FILECAPS = 5008, 5010
FILEDIGESTS, FILEDIGESTALGO = 1035, 5011
PAYLOADDIGEST, PAYLOADDIGESTALGO = 5092, 5093
# Signature header tags: sizes and digests of the main header and the payload.
SIG_SHA1, SIG_SHA256, SIG_SIZE, SIG_LONGSIZE, SIG_MD5 = 269, 273, 1000, 270, 1004
#: OpenPGP hash algorithm numbers, as FILEDIGESTALGO and PAYLOADDIGESTALGO store them.
DIGEST_ALGOS = {1: "md5", 2: "sha1", 8: "sha256", 9: "sha384", 10: "sha512", 11: "sha224"}

RPMFILE_CONFIG = 1 << 0
RPMFILE_GHOST = 1 << 6
S_IFMT, S_IFREG = 0o170000, 0o100000

_WANTED = frozenset({
    NAME, VERSION, RELEASE, EPOCH, ARCH, OLDFILENAMES, FILESIZES, FILEMODES, FILERDEVS,
    FILEMTIMES, FILELINKTOS, FILEFLAGS, FILEUSERNAME, FILEGROUPNAME, FILEDEVICES, FILEINODES,
    DIRINDEXES, BASENAMES, DIRNAMES, PAYLOADFORMAT, PAYLOADCOMPRESSOR, LONGFILESIZES, FILECAPS,
    FILEDIGESTS, FILEDIGESTALGO, PAYLOADDIGEST, PAYLOADDIGESTALGO, *SCRIPTLETS,
    SIG_SHA1, SIG_SHA256, SIG_SIZE, SIG_LONGSIZE, SIG_MD5,
})  # fmt: skip

#: Tags with one value per file, which file_table turns into RpmFile rows.
_PER_FILE = (OLDFILENAMES, FILESIZES, FILEMODES, FILERDEVS, FILEMTIMES, FILELINKTOS, FILEFLAGS,
             FILEUSERNAME, FILEGROUPNAME, FILEDEVICES, FILEINODES, DIRINDEXES, BASENAMES,
             LONGFILESIZES, FILECAPS, FILEDIGESTS)

#: NAME, VERSION, RELEASE, ARCH: they end up in messages, the manifest and every record's origin.
_IDENTITY = re.compile(r"^[^\s/\x00-\x1f\x7f\udc80-\udcff]{1,256}$")

# Header data types; numeric ones map to (element size, struct code).
CHAR, INT8, INT16, INT32, INT64, STRING, BIN, STRING_ARRAY, I18NSTRING = range(1, 10)
_INT_TYPES = {CHAR: (1, "B"), INT8: (1, "B"), INT16: (2, "H"), INT32: (4, "I"), INT64: (8, "Q")}


class Header(dict):
    """Tag → value: numbers and strings as tuples (STRING is a 1-tuple), BIN as bytes.

    ``where`` names the header in errors; ``size`` is how many bytes it occupied in the file.
    """

    def __init__(self, where: str, size: int):
        super().__init__()
        self.where = where
        self.size = size
        self.digests: dict[str, str] = {}  # of the header's bytes as stored
        self.md5 = hashlib.md5()  # ... and the running MD5 rpm's signature MD5 starts from

    def string(self, tag: int, default: str = "") -> str:
        value = self.get(tag)
        if isinstance(value, tuple) and value and isinstance(value[0], str):
            return value[0]
        return default

    def array(self, tag: int, count: int, default: object = None) -> tuple:
        """A per-file array; a missing tag repeats ``default``, a wrong length is an error."""
        value = self.get(tag)
        if value is None:
            return (default,) * count
        if isinstance(value, bytes) or len(value) != count:
            raise InputError(self.where, f"tag {tag} has {len(value)} values for {count} files")
        return value


def read_header(stream: BinaryIO, where: str) -> Header:
    """Parse one header structure (signature or main), validating every index entry."""
    intro = read_exact(stream, 16, where, "header")
    if intro[:4] != HEADER_MAGIC:
        raise InputError(where, f"bad header magic {intro[:4].hex()}")
    count, size = struct.unpack(">II", intro[8:16])
    if count > MAX_TAGS or size > MAX_STORE:
        raise InputError(where, f"absurd header size ({count} tags, {size} bytes)")
    index = read_exact(stream, 16 * count, where, "header index")
    store = read_exact(stream, size, where, "header store")
    header = Header(where, 16 + len(index) + size)
    header.digests = {name: hashlib.new(name, intro + index + store).hexdigest()
                      for name in ("sha1", "sha256")}
    header.md5 = hashlib.md5(intro + index + store)
    for i in range(count):
        tag, typ, offset, n = struct.unpack_from(">IIII", index, 16 * i)
        if offset > len(store):
            raise InputError(f"{where}:tag {tag}",
                             f"offset {offset} beyond the {len(store)}-byte store")
        if tag not in _WANTED:
            continue  # never decoded: memory stays proportional to what is used
        if n > MAX_COUNT:
            raise InputError(f"{where}:tag {tag}", f"absurd value count {n} (limit {MAX_COUNT})",
                             "more files than any real package has: a hostile header?")
        header[tag] = _value(store, typ, offset, n, f"{where}:tag {tag}")
    return header


def _value(store: bytes, typ: int, offset: int, n: int, where: str) -> tuple | bytes:
    if offset > len(store):
        raise InputError(where, f"offset {offset} beyond the {len(store)}-byte store")
    if typ in _INT_TYPES:
        width, code = _INT_TYPES[typ]
        if offset + width * n > len(store):
            raise InputError(where, "value runs past the header store")
        return struct.unpack_from(f">{n}{code}", store, offset)
    if typ == BIN:
        if offset + n > len(store):
            raise InputError(where, "value runs past the header store")
        return store[offset : offset + n]
    if typ in (STRING, STRING_ARRAY, I18NSTRING):
        if typ == STRING and n != 1:
            raise InputError(where, f"string with count {n}")
        strings = []
        seen: dict[bytes, str] = {}  # owners, link targets, empty digests repeat: one object
        for _ in range(n):
            end = store.find(b"\0", offset)
            if end < 0:
                raise InputError(where, "unterminated string")
            raw = store[offset:end]
            text = seen.get(raw)
            if text is None:
                text = seen.setdefault(raw, raw.decode("utf-8", "surrogateescape"))
            strings.append(text)
            offset = end + 1
        return tuple(strings)
    raise InputError(where, f"unknown tag type {typ}")


def read_headers(stream: BinaryIO, name: str) -> tuple[Header, Header]:
    """Check the lead, read the signature header and its padding, then the main header; the
    main header's SHA256HEADER/SHA1HEADER digests in the signature are checked."""
    lead = read_exact(stream, LEAD_SIZE, f"{name}:lead", "lead")
    if lead[:4] != LEAD_MAGIC:
        raise InputError(f"{name}:lead", "not an RPM package (bad lead magic)")
    if lead[4] < 3:
        raise InputError(f"{name}:lead", f"unsupported RPM format version {lead[4]}")
    if struct.unpack_from(">H", lead, 6)[0] != 0:
        raise InputError(f"{name}:lead", "source RPM, not a binary package")
    sig = read_header(stream, f"{name}:signature")
    read_exact(stream, -sig.size % 8, f"{name}:signature", "padding")
    header = read_header(stream, f"{name}:header")
    for tag, algo, label in ((SIG_SHA256, "sha256", "SHA256HEADER"),
                             (SIG_SHA1, "sha1", "SHA1HEADER")):
        stored = sig.string(tag)
        if stored and stored.lower() != header.digests[algo]:
            raise InputError(f"{name}:header", f"does not match the signature header's {label}",
                             "the package is corrupt or was tampered with")
        if stored:
            break  # the strongest one present decides
    return sig, header


@dataclass(slots=True)
class RpmFile:
    """What the header says about one file; ``path`` is absolute, as ``rpm -qlp`` prints it."""

    path: str
    mode: int
    size: int
    mtime: int
    uname: str | None
    gname: str | None
    rdev: int
    flags: int
    linkto: str
    caps: str
    link_key: tuple[int, int] | None  # (device, inode) shared with other payload files
    nlink: int
    digest: str = ""  # FILEDIGESTS (hex), "" for what has none


def file_table(header: Header) -> list[RpmFile]:
    """The header's file list: DIRNAMES[DIRINDEXES[i]] + BASENAMES[i], or legacy OLDFILENAMES."""
    if BASENAMES in header:
        dirs, bases = header.get(DIRNAMES, ()), header[BASENAMES]
        try:
            paths = [dirs[i] + b for i, b in zip(header.array(DIRINDEXES, len(bases)), bases)]
        except (IndexError, TypeError):
            raise InputError(header.where, "DIRINDEXES points outside DIRNAMES") from None
    else:
        paths = list(header.get(OLDFILENAMES, ()))
    n = len(paths)
    sizes = header.array(LONGFILESIZES if LONGFILESIZES in header else FILESIZES, n, 0)
    modes = header.array(FILEMODES, n, S_IFREG | 0o644)
    flags = header.array(FILEFLAGS, n, 0)
    # Hard link sets: regular, non-ghost files sharing (device, inode). Without FILEINODES
    # (ancient packages) the cpio records' own inode numbers are used instead.
    keys: list[tuple[int, int] | None] = [None] * n
    if FILEINODES in header:
        for i, (dev, ino) in enumerate(zip(header.array(FILEDEVICES, n, 0),
                                           header.array(FILEINODES, n))):
            if modes[i] & S_IFMT == S_IFREG and not flags[i] & RPMFILE_GHOST:
                keys[i] = (dev, ino)
    links = Counter(k for k in keys if k is not None)
    digests = header.array(FILEDIGESTS, n, "")
    columns = zip(paths, modes, sizes, header.array(FILEMTIMES, n, 0),
                  header.array(FILEUSERNAME, n), header.array(FILEGROUPNAME, n),
                  header.array(FILERDEVS, n, 0), flags, header.array(FILELINKTOS, n, ""),
                  header.array(FILECAPS, n, ""), keys)
    return [
        RpmFile(p, m, s, t, u, g, r, f, lt, c, k if links[k] > 1 else None, links[k] or 1, d)
        for (p, m, s, t, u, g, r, f, lt, c, k), d in zip(columns, digests)
    ]


def _info(header: Header, files: list[RpmFile]) -> PackageInfo:
    version = f"{header.string(VERSION)}-{header.string(RELEASE)}"
    epoch = header.get(EPOCH)
    if epoch:
        version = f"{epoch[0]}:{version}"
    if not header.string(NAME) or not header.string(VERSION):
        raise InputError(header.where, "missing NAME or VERSION")
    for tag, label in ((NAME, "NAME"), (VERSION, "VERSION"), (RELEASE, "RELEASE"),
                       (ARCH, "ARCH")):
        value = header.string(tag)
        if value and not _IDENTITY.match(value):
            raise InputError(header.where, f"{label} {shown(value)!r} has whitespace, '/', "
                             "control characters or is too long", "rpm would refuse it")
    config = tuple(
        f.path for f in files if f.flags & RPMFILE_CONFIG and not f.flags & RPMFILE_GHOST
    )
    return PackageInfo(name=header.string(NAME), version=version,
                       architecture=header.string(ARCH, "noarch"), format="rpm",
                       config_files=config,
                       scripts=tuple(name for tag, name in sorted(SCRIPTLETS.items())
                                     if header.get(tag)))


def rpm_info(path: str | os.PathLike[str]) -> PackageInfo:
    """Name, ``[epoch:]version-release``, architecture and the %config files (minus %ghost)."""
    with open(path, "rb") as f:
        return RpmReader(f, Path(path).name).info


def read_rpm(path: str | os.PathLike[str], limits: Limits | None = None) -> Iterator[Entry]:
    """Yield the payload's entries with header metadata; %ghost files are never yielded.

    Entry paths are the payload's (``./usr/bin/x``). Hard links: the first name of a set that
    carries data is a FILE, the others HARDLINKs to it (see :mod:`.cpio`).
    """
    with open(path, "rb") as f:
        yield from RpmReader(f, Path(path).name, limits).entries()


class RpmReader:
    """One pass over an RPM read from ``stream``: ``info`` once constructed, then
    :meth:`entries` (once). Checked on the way: SHA256HEADER (or SHA1HEADER) of the main header,
    FILEDIGESTS of every regular file while it streams, that every file the header lists (but
    %ghost) is in the payload, and at the end PAYLOADDIGEST and the signature header's size and
    MD5 of header plus payload."""

    def __init__(self, stream: BinaryIO, name: str, limits: Limits | None = None):
        self.name = name
        self.limits = limits if limits is not None else Limits()
        self.sig, self.header = read_headers(stream, name)
        self._stream = stream
        self.files = file_table(self.header)
        self.info = _info(self.header, self.files)
        for tag in _PER_FILE:  # now in self.files: not kept twice
            self.header.pop(tag, None)

    def _digest(self, tag: int, default: int, what: str) -> str:
        number = self.header.get(tag, (default,))
        algo = DIGEST_ALGOS.get(number[0] if isinstance(number, tuple) and number else -1)
        if algo is None:
            raise InputError(self.header.where, f"unknown {what} algorithm {number!r}")
        return algo

    def entries(self) -> Iterator[Entry]:
        header = self.header
        payload_format = header.string(PAYLOADFORMAT, "cpio")
        if payload_format != "cpio":
            raise InputError(header.where, f"unsupported payload format {shown(payload_format)!r}")
        payload_digests = header.get(PAYLOADDIGEST)
        payload_algo = self._digest(PAYLOADDIGESTALGO, 8, "payload digest") \
            if payload_digests else "sha256"
        payload_hash = hashlib.new(payload_algo)
        md5 = self.header.md5.copy()  # the signature's MD5 covers header and payload
        raw = HashingReader(self._stream, payload_hash, md5)
        # rpm's default when the tag is absent is gzip; magic bytes get the final say.
        compressor = header.string(PAYLOADCOMPRESSOR, "gzip")
        where = f"{self.name}:payload"
        payload = open_decompressed(raw, compressor, where, self.limits, ahead=True)
        seen: set[int] = set()
        yield from resolve_hardlinks(self._entries(payload, where, seen))
        raw.drain()
        missing = [f.path for i, f in enumerate(self.files)
                   if i not in seen and not f.flags & RPMFILE_GHOST]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise InputError(f"{where}:{shown(missing[0])}", f"listed in the header but missing "
                             f"from the payload{more}", "the package is corrupt or incomplete")
        if isinstance(payload_digests, tuple) and payload_digests:
            if payload_digests[0].lower() != payload_hash.hexdigest():
                raise InputError(where, f"does not match the header's PAYLOADDIGEST "
                                 f"({payload_algo})", "the package is corrupt or was tampered with")
        self._check_signature_sums(raw.size, md5)

    def _check_signature_sums(self, payload_size: int, md5) -> None:
        size = self.header.size + payload_size
        for tag in (SIG_LONGSIZE, SIG_SIZE):
            stored = self.sig.get(tag)
            if isinstance(stored, tuple) and stored:
                if stored[0] != size:
                    raise InputError(f"{self.name}:signature", f"says header and payload are "
                                     f"{stored[0]} bytes, the file has {size}",
                                     "the package is truncated or was extended")
                break
        stored = self.sig.get(SIG_MD5)
        if isinstance(stored, bytes) and len(stored) == 16 and stored != md5.digest():
            raise InputError(f"{self.name}:signature", "header and payload do not match the "
                             "signature header's MD5", "the package is corrupt or was tampered "
                             "with")

    def _entries(self, payload: BinaryIO, where: str, seen: set[int]):
        """(Entry, link key, nlink, size the data must have) for every payload record, metadata
        taken from the header; regular files are checked against FILEDIGESTS as they stream."""
        files = self.files
        by_path = {f.path: i for i, f in enumerate(files)}
        algo = self._digest(FILEDIGESTALGO, 1, "file digest") \
            if any(f.digest for f in files) else "md5"

        def stripped_size(index: int) -> int:
            if not 0 <= index < len(files):
                raise InputError(where, f"payload refers to file #{index}, header has {len(files)}")
            return files[index].size

        for rec in iter_records(payload, where, stripped_size):
            index = rec.index if rec.index is not None else by_path.get(_header_path(rec.name))
            if index is None:
                raise InputError(f"{where}:{shown(rec.name)}",
                                 "payload file not listed in the header")
            info = files[index]
            if index in seen:
                raise InputError(f"{where}:{shown(info.path)}", "appears twice in the payload")
            seen.add(index)
            if info.flags & RPMFILE_GHOST:
                continue  # rpm never packs %ghost content; tolerate a writer that did
            path = rec.name or "." + info.path
            entry = _entry(rec, info, path, f"{where}:{shown(path)}")
            key: object = info.link_key
            nlink = info.nlink
            if key is None and entry.kind == FILE and rec.nlink > 1 and rec.index is None:
                key, nlink = ("cpio", *rec.dev, rec.ino), rec.nlink  # no FILEINODES in the header
            check = None
            if entry.kind == FILE and entry.data is not None and (entry.size or key is None):
                expected = info.digest
                if not re.fullmatch(r"[0-9a-fA-F]*", expected):
                    raise InputError(entry.member, "malformed FILEDIGESTS value")
                check = DigestCheck(entry.data, entry.size, hashlib.new(algo), expected or None,
                                    entry.member, f"FILEDIGESTS ({algo})")
                entry.data = check
            yield entry, key, nlink, info.size
            if check is not None:
                check.finish()


def _entry(rec: CpioRecord, info: RpmFile, path: str, member: str) -> Entry:
    kind = kind_from_mode(info.mode, member)
    if rec.index is None and kind_from_mode(rec.mode, member) != kind:
        raise InputError(member, "payload and header disagree on the file type")
    linked = info.link_key is not None or rec.nlink > 1  # data may ride on another name
    if kind == FILE and rec.size != info.size and not (linked and rec.size == 0):
        raise InputError(member, f"payload has {rec.size} bytes, header says {info.size}")
    entry = Entry(path=path, kind=kind, mode=info.mode & 0o7777, uid=rec.uid, gid=rec.gid,
                  uname=info.uname, gname=info.gname, mtime=info.mtime, member=member)
    if info.caps:
        value = vfs_cap_from_text(info.caps, member)
        if value is not None:
            entry.xattrs["security.capability"] = value
    fill_from_record(entry, rec)
    if info.linkto:
        entry.target = info.linkto
    if kind in (CHARDEV, BLOCKDEV):  # FILERDEVS is a 16-bit old-style dev_t
        entry.rdev = (info.rdev >> 8 & 0xFF, info.rdev & 0xFF)
    return entry


def _header_path(cpio_name: str) -> str:
    """Payload names are ``./usr/bin/x`` (older rpms: ``usr/bin/x`` or ``/usr/bin/x``)."""
    if cpio_name.startswith("./"):
        return cpio_name[1:]
    return cpio_name if cpio_name.startswith("/") else "/" + cpio_name


# --- file capabilities -------------------------------------------------------------------------
# RPM stores libcap's text form ("cap_net_raw=ep"); the file system wants the binary
# security.capability xattr. Names are indexed by capability number (linux/capability.h).
CAP_NAMES = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid",
    "setpcap", "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw",
    "ipc_lock", "ipc_owner", "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct",
    "sys_admin", "sys_boot", "sys_nice", "sys_resource", "sys_time", "sys_tty_config", "mknod",
    "lease", "audit_write", "audit_control", "setfcap", "mac_override", "mac_admin", "syslog",
    "wake_alarm", "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore",
)  # fmt: skip
_CAP_BITS = {f"cap_{n}": 1 << i for i, n in enumerate(CAP_NAMES)}
_ALL_CAPS = (1 << len(CAP_NAMES)) - 1
VFS_CAP_REVISION_2 = 0x02000000
VFS_CAP_FLAGS_EFFECTIVE = 0x000001
_CLAUSE = re.compile(r"([a-z0-9_,]*)((?:[=+-][eip]*)+)")
_ACTION = re.compile(r"([=+-])([eip]*)")


def vfs_cap_from_text(text: str, where: str) -> bytes | None:
    """libcap text (``cap_a,cap_b=ep cap_c+i``) → VFS_CAP_REVISION_2 xattr, None if empty.

    Clauses apply left to right: ``=`` first clears the named capabilities from all three sets;
    an empty name list (``=ep``) or ``all`` means every capability. The file format has a single
    "effective" flag, set when any capability is effective.
    """
    sets = {"e": 0, "i": 0, "p": 0}
    for clause in text.lower().split():
        match = _CLAUSE.fullmatch(clause)
        if not match:
            raise InputError(where, f"bad capability text {shown(text)!r}")
        caps = 0
        for cap in filter(None, match[1].split(",")):
            if cap == "all":
                caps |= _ALL_CAPS
            elif cap in _CAP_BITS:
                caps |= _CAP_BITS[cap]
            else:
                raise InputError(where, f"unknown capability {shown(cap)!r} in {shown(text)!r}")
        caps = caps or _ALL_CAPS
        for op, flags in _ACTION.findall(match[2]):
            if op == "=":
                for key in sets:
                    sets[key] &= ~caps
            for flag in flags:
                sets[flag] = sets[flag] & ~caps if op == "-" else sets[flag] | caps
    if not (sets["p"] or sets["i"] or sets["e"]):
        return None
    magic = VFS_CAP_REVISION_2 | (VFS_CAP_FLAGS_EFFECTIVE if sets["e"] else 0)
    p, i = sets["p"], sets["i"]
    return struct.pack("<5I", magic, p & 0xFFFFFFFF, i & 0xFFFFFFFF, p >> 32, i >> 32)
