"""A corpus of hostile .deb and .rpm archives, written byte by byte in Python.

dpkg-deb and rpmbuild refuse to write most of these, so every structure is assembled here by
hand: ar headers, ustar/pax/GNU tar headers, SVR4 newc cpio records, RPM lead, signature and
main headers. :func:`generate` returns :class:`Case` objects; each declares what the pipeline
must do with it:

- ``refused``: exit 2 with ONE ``error:`` line naming the package file and ``member``;
- ``warned``: built, with a warning line containing every string of ``expect``;
- ``accepted``: built without findings; ``expect`` paths must be in the manifest's file list
  (``!path``: must not be).

The corpus is deterministic for a given ``outside`` directory (the place symlink and traversal
cases aim at, which the test watches) and fast: the largest piece of work is compressing the
decompression bombs, streamed in 1 MiB chunks (about 3 s in all on one core).

Run ``python tests/hostile_corpus.py DIR`` to write the whole corpus into DIR for inspection.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import struct
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyzstd

EPOCH = 1_700_000_000
MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class Case:
    name: str  # unique id, also the file name's stem
    fmt: str  # "deb" | "rpm"
    source: bytes | Callable[[], bytes]  # the archive, or a function making it (bombs)
    verdict: str  # "refused" | "warned" | "accepted"
    member: str = ""  # refused: a string the error line must contain besides the file name
    expect: tuple[str, ...] = ()  # refused: in the error; warned: in a warning; accepted: paths
    note: str = ""

    @property
    def filename(self) -> str:
        return f"{self.name}.{self.fmt}"

    @property
    def data(self) -> bytes:
        return self.source if isinstance(self.source, bytes) else self.source()


# --- tar ---------------------------------------------------------------------------------------

REG, LNK, SYM, CHR, BLK, DIR, FIFO, CONT = b"0", b"1", b"2", b"3", b"4", b"5", b"6", b"7"


def _enc(name: str | bytes) -> bytes:
    return name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")


def octal(value: int, width: int) -> bytes:
    """A NUL-terminated octal field, as GNU tar writes them."""
    return f"{value:0{width - 1}o}".encode() + b"\0"


def base256(value: int, width: int) -> bytes:
    """GNU's binary number field (first byte 0x80, or 0xff for a negative number)."""
    raw = value.to_bytes(width, "big", signed=True)
    return bytes([raw[0] | 0x80 if value >= 0 else raw[0]]) + raw[1:]


def tar_header(name: str | bytes, *, size: int = 0, typ: bytes = REG, mode: int = 0o644,
               uid: int = 0, gid: int = 0, mtime: int = EPOCH, linkname: str | bytes = "",
               uname: str = "root", gname: str = "root", major: int = 0, minor: int = 0,
               raw: dict[str, bytes] | None = None, chksum_delta: int = 0) -> bytes:
    """One 512-byte ustar header; ``raw`` replaces whole fields (``size``, ``mtime``, ``uid``…)
    with exact bytes, ``chksum_delta`` makes the checksum lie."""
    name, linkname = _enc(name), _enc(linkname)
    fields = {
        "name": name[:100].ljust(100, b"\0"),
        "mode": octal(mode, 8),
        "uid": octal(uid, 8) if uid < 8**7 else base256(uid, 8),
        "gid": octal(gid, 8) if gid < 8**7 else base256(gid, 8),
        "size": octal(size, 12) if 0 <= size < 8**11 else base256(size, 12),
        "mtime": octal(mtime, 12) if 0 <= mtime < 8**11 else base256(mtime, 12),
        "chksum": b" " * 8,
        "type": typ,
        "linkname": linkname[:100].ljust(100, b"\0"),
        "magic": b"ustar\x00",
        "version": b"00",
        "uname": uname.encode().ljust(32, b"\0"),
        "gname": gname.encode().ljust(32, b"\0"),
        "major": octal(major, 8),
        "minor": octal(minor, 8),
        "prefix": b"\0" * 155,
    }
    fields.update(raw or {})
    block = b"".join(fields.values()).ljust(512, b"\0")
    assert len(block) == 512, {k: len(v) for k, v in fields.items()}
    chksum = sum(block) + chksum_delta
    return block[:148] + f"{chksum:06o}".encode() + b"\0 " + block[156:]


def pad512(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 512)


def pax_records(records: dict[str, str | bytes]) -> bytes:
    out = b""
    for key, value in records.items():
        body = b" " + key.encode() + b"=" + _enc(value) + b"\n"
        n = len(body) + 1
        while len(str(n)) + len(body) != n:
            n += 1
        out += str(n).encode() + body
    return out


@dataclass
class T:
    """One tar member: a header plus its data (``data`` is written even for non-files when
    ``size`` says so; ``pre`` are raw blocks written before the header: pax, GNU long names)."""

    name: str | bytes
    typ: bytes = REG
    data: bytes = b""
    mode: int = 0o644
    linkname: str | bytes = ""
    pax: dict[str, str | bytes] | None = None
    kw: dict = field(default_factory=dict)

    def encode(self) -> bytes:
        out = b""
        pax = dict(self.pax or {})
        if len(_enc(self.name)) > 100 and "path" not in pax:  # as tar --format=pax writes it
            pax["path"] = self.name
        if len(_enc(self.linkname)) > 100 and "linkpath" not in pax:
            pax["linkpath"] = self.linkname
        if pax:
            body = pax_records(pax)
            out += tar_header("./PaxHeaders/x", size=len(body), typ=b"x") + pad512(body)
        size = self.kw.pop("size", len(self.data))
        out += tar_header(self.name, size=size, typ=self.typ, mode=self.mode,
                          linkname=self.linkname, **self.kw)
        return out + pad512(self.data)


def f(name, data: bytes = b"x\n", mode: int = 0o644, pax=None, **kw) -> T:
    return T(name, REG, data, mode, pax=pax, kw=kw)


def d(name, mode: int = 0o755, pax=None, **kw) -> T:
    return T(name, DIR, b"", mode, pax=pax, kw=kw)


def sl(name, target, pax=None, **kw) -> T:
    return T(name, SYM, b"", 0o777, target, pax=pax, kw=kw)


def hl(name, target, pax=None, **kw) -> T:
    return T(name, LNK, b"", 0o644, target, pax=pax, kw=kw)


def tar(members: Iterable[T | bytes], *, end: bool = True) -> bytes:
    body = b"".join(m if isinstance(m, bytes) else replace(m, kw=dict(m.kw)).encode()
                    for m in members)
    return body + (b"\0" * 1024 if end else b"")


# --- compression -------------------------------------------------------------------------------

def compress(data: bytes, codec: str) -> bytes:
    if codec == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ, preset=0)
    if codec == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if codec == "zstd":
        return pyzstd.compress(data, 3)
    if codec == "bzip2":
        return bz2.compress(data, 9)
    if codec == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_ALONE, preset=0)
    assert codec == "none"
    return data


SUFFIX = {"xz": ".xz", "gzip": ".gz", "zstd": ".zst", "bzip2": ".bz2", "lzma": ".lzma",
          "none": ""}


def _compressor(codec: str):
    return {"xz": lambda: lzma.LZMACompressor(lzma.FORMAT_XZ, preset=0),
            "zstd": lambda: pyzstd.ZstdCompressor(3),
            "bzip2": lambda: bz2.BZ2Compressor(9)}[codec]()


def zeros_stream(head: bytes, size: int, tail: bytes, codec: str) -> bytes:
    """Compress head + ``size`` zero bytes + tail in 1 MiB steps (never ``size`` in memory)."""
    c = _compressor(codec)
    out = [c.compress(head)]
    chunk = bytes(MiB)
    left = size
    while left:
        n = min(left, MiB)
        out.append(c.compress(chunk if n == MiB else bytes(n)))
        left -= n
    out.append(c.compress(tail))
    out.append(c.flush())
    return b"".join(out)


# --- ar / deb ----------------------------------------------------------------------------------

def ar_header(name: str, size: int, *, raw: dict[str, bytes] | None = None) -> bytes:
    fields = {"name": name.encode().ljust(16), "mtime": b"0".ljust(12), "uid": b"0".ljust(6),
              "gid": b"0".ljust(6), "mode": b"100644".ljust(8),
              "size": str(size).encode().ljust(10),
              "end": b"`\n"}
    fields.update(raw or {})
    return b"".join(fields.values())


def ar(members: Iterable[tuple[str, bytes] | bytes]) -> bytes:
    out = b"!<arch>\n"
    for m in members:
        if isinstance(m, bytes):
            out += m
            continue
        name, data = m
        out += ar_header(name, len(data)) + data + (b"\n" if len(data) % 2 else b"")
    return out


def ar_split(path) -> list[tuple[str, bytes]]:
    """An ar archive's (name, data) members, read independently of the code under test."""
    data = Path(path).read_bytes()
    assert data[:8] == b"!<arch>\n"
    pos, out = 8, []
    while pos < len(data):
        head = data[pos : pos + 60]
        size = int(head[48:58])
        out.append((head[:16].decode().strip().rstrip("/"), data[pos + 60 : pos + 60 + size]))
        pos += 60 + size + size % 2
    return out


CONTROL = (b"Package: hostile\nVersion: 1.0\nArchitecture: amd64\n"
           b"Maintainer: Corpus <corpus@example.invalid>\nDescription: hostile test package\n")


def md5sums(members: Iterable[T]) -> bytes:
    lines = []
    for m in members:
        if isinstance(m, T) and m.typ == REG and "size" not in m.kw:
            name = _enc(m.name)
            if b"\n" in name:
                continue
            name = name[2:] if name.startswith(b"./") else name.lstrip(b"/")
            lines.append(hashlib.md5(m.data).hexdigest().encode() + b"  " + name + b"\n")
    return b"".join(lines)


def control_tar(control: bytes = CONTROL, sums: bytes | None = None,
                extra: Iterable[T] = ()) -> bytes:
    members = [d("./"), f("./control", control)]
    if sums is not None:
        members.append(f("./md5sums", sums))
    return tar([*members, *extra])


def deb(members: Iterable[T | bytes], *, codec: str = "xz", sums: bytes | None | bool = True,
        control: bytes = CONTROL, data_tar: bytes | None = None,
        data_member: bytes | None = None, control_codec: str = "xz",
        ar_members: list | None = None) -> bytes:
    """A .deb: debian-binary, control.tar.xz (control + md5sums), data.tar.<codec>.

    ``sums=True`` computes md5sums from ``members``; bytes give it verbatim; None leaves it out.
    ``data_tar`` replaces the tar stream, ``data_member`` the compressed member bytes,
    ``ar_members`` the whole member list."""
    members = list(members)
    if sums is True:
        sums = md5sums(members)
    if ar_members is None:
        if data_member is None:
            body = data_tar if data_tar is not None else tar([d("./"), *members])
            data_member = compress(body, codec)
        ar_members = [("debian-binary", b"2.0\n"),
                      ("control.tar" + SUFFIX[control_codec],
                       compress(control_tar(control, sums or None), control_codec)),
                      ("data.tar" + SUFFIX[codec], data_member)]
    return ar(ar_members)


# --- cpio (newc) -------------------------------------------------------------------------------

def cpio_record(name: str | bytes, *, mode: int, data: bytes = b"", ino: int = 1, uid: int = 0,
                gid: int = 0, nlink: int = 1, mtime: int = EPOCH, rdev: tuple = (0, 0),
                size: int | None = None, namesize: int | None = None, magic: bytes = b"070701",
                raw: dict[int, bytes] | None = None) -> bytes:
    """One newc record with its padded name and data; ``raw`` replaces fields by index
    (0 ino, 1 mode, …, 6 filesize, 11 namesize) with exact 8-byte values."""
    name = _enc(name) + b"\0"
    values = [ino, mode, uid, gid, nlink, mtime, len(data) if size is None else size, 0, 0,
              rdev[0], rdev[1], len(name) if namesize is None else namesize, 0]
    fields = [f"{v & 0xFFFFFFFF:08x}".encode() for v in values]
    for i, v in (raw or {}).items():
        fields[i] = v
    head = magic + b"".join(fields) + name
    head += b"\0" * (-len(head) % 4)
    return head + data + b"\0" * (-len(data) % 4)


CPIO_TRAILER = cpio_record("TRAILER!!!", mode=0, ino=0, nlink=1, mtime=0)


# --- rpm ---------------------------------------------------------------------------------------

# header data types
CHAR, INT8, INT16, INT32, INT64, STRING, BIN, STRING_ARRAY, I18NSTRING = range(1, 10)
_WIDTH = {CHAR: 1, INT8: 1, INT16: 2, INT32: 4, INT64: 8}
_CODE = {CHAR: "B", INT8: "B", INT16: "H", INT32: "I", INT64: "Q"}

# tags
NAME, VERSION, RELEASE, EPOCHTAG, OS, ARCH = 1000, 1001, 1002, 1003, 1021, 1022
FILESIZES, FILEMODES, FILERDEVS, FILEMTIMES, FILEDIGESTS = 1028, 1030, 1033, 1034, 1035
FILELINKTOS, FILEFLAGS, FILEUSERNAME, FILEGROUPNAME = 1036, 1037, 1039, 1040
FILEDEVICES, FILEINODES, DIRINDEXES, BASENAMES, DIRNAMES = 1095, 1096, 1116, 1117, 1118
PAYLOADFORMAT, PAYLOADCOMPRESSOR, PAYLOADFLAGS = 1124, 1125, 1126
FILECAPS, FILEDIGESTALGO, PAYLOADDIGEST, PAYLOADDIGESTALGO = 5010, 5011, 5092, 5093
LONGFILESIZES = 5008
SIG_SIZE, SIG_SHA256 = 1000, 273
POSTIN = 1024

S_IFREG, S_IFDIR, S_IFLNK, S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK = (
    0o100000, 0o040000, 0o120000, 0o020000, 0o060000, 0o010000, 0o140000)


def rpm_header(tags: dict[int, tuple[int, object]], *, lies: dict | None = None) -> bytes:
    """Header structure from tag → (type, value); values are tuples (numbers, strings) or
    bytes (BIN). ``lies``: "count"/"size" override the intro, {"offset": {tag: n}} and
    {"n": {tag: n}} override index entries, "magic" the magic."""
    lies = lies or {}
    store = b""
    index = []
    for tag in sorted(tags):
        typ, value = tags[tag]
        if typ in _WIDTH:
            store += b"\0" * (-len(store) % _WIDTH[typ])
            offset, n = len(store), len(value)
            store += struct.pack(f">{n}{_CODE[typ]}", *value)
        elif typ == BIN:
            offset, n = len(store), len(value)
            store += value
        else:
            offset = len(store)
            strings = (value,) if isinstance(value, (str, bytes)) else tuple(value)
            n = len(strings)
            store += b"".join(_enc(s) + b"\0" for s in strings)
        offset = lies.get("offset", {}).get(tag, offset)
        n = lies.get("n", {}).get(tag, n)
        index.append(struct.pack(">IIII", tag, lies.get("type", {}).get(tag, typ), offset, n))
    count = lies.get("count", len(index))
    size = lies.get("size", len(store))
    return (lies.get("magic", b"\x8e\xad\xe8\x01") + b"\0" * 4 + struct.pack(">II", count, size)
            + b"".join(index) + store)


def rpm_lead(name: str = "hostile-1.0-1", *, magic: bytes = b"\xed\xab\xee\xdb", major: int = 3,
             typ: int = 0) -> bytes:
    return (magic + bytes([major, 0]) + struct.pack(">HH", typ, 1)
            + name.encode()[:65].ljust(66, b"\0")
            + struct.pack(">HH", 1, 5) + b"\0" * 16)


@dataclass
class R:
    """One file of an RPM: the header's view and (unless ``in_payload`` is False) the payload's."""

    path: str  # absolute, as in the header
    kind: int = S_IFREG
    data: bytes = b"x\n"
    mode: int = 0o644
    linkto: str = ""
    user: str = "root"
    group: str = "root"
    mtime: int = EPOCH
    flags: int = 0
    caps: str = ""
    inode: int = 0  # 0: one of its own
    rdev: int = 0
    in_payload: bool = True
    cpio_name: str | bytes | None = None  # default "./" + path
    cpio_kw: dict = field(default_factory=dict)


def rpm(files: list[R], *, codec: str = "zstd", compressor: str | None = None,
        digests: bool = True, digest_algo: int = 8, payload_digest: bool = True,
        sha256_header: bool = True, header_edit: Callable[[dict], None] | None = None,
        header_lies: dict | None = None, payload: bytes | None = None,
        cpio: bytes | None = None, lead: bytes | None = None, parts: bool = False,
        sig_tags: dict | None = None, sig_lies: dict | None = None, name: str = "hostile"):
    """A binary RPM whose header describes ``files`` and whose cpio payload carries them.

    Every table can lie through ``header_edit`` (mutates the tag dict) or ``header_lies``
    (index/intro fields); ``cpio`` replaces the uncompressed payload, ``payload`` the compressed
    one. With ``parts=True`` returns (lead, signature+padding, header, payload) to cut."""
    dirs: list[str] = []
    dirindex, bases = [], []
    for r in files:
        head, _, base = r.path.rpartition("/")
        head += "/"
        if head not in dirs:
            dirs.append(head)
        dirindex.append(dirs.index(head))
        bases.append(base)
    inodes = [r.inode or 1000 + i for i, r in enumerate(files)]
    algo = {1: "md5", 2: "sha1", 8: "sha256", 10: "sha512"}.get(digest_algo, "sha256")
    tags: dict[int, tuple[int, object]] = {
        NAME: (STRING, name), VERSION: (STRING, "1.0"), RELEASE: (STRING, "1"),
        OS: (STRING, "linux"), ARCH: (STRING, "x86_64"),
        PAYLOADFORMAT: (STRING, "cpio"), PAYLOADCOMPRESSOR: (STRING, compressor or codec),
        PAYLOADFLAGS: (STRING, "3"),
    }
    if files:
        tags.update({
            DIRNAMES: (STRING_ARRAY, tuple(dirs)), DIRINDEXES: (INT32, tuple(dirindex)),
            BASENAMES: (STRING_ARRAY, tuple(bases)),
            FILESIZES: (INT32, tuple(len(r.data) if r.kind == S_IFREG else
                                     len(r.linkto.encode()) if r.kind == S_IFLNK else 4096
                                     if r.kind == S_IFDIR else 0 for r in files)),
            FILEMODES: (INT16, tuple((r.kind | r.mode) & 0xFFFF for r in files)),
            FILERDEVS: (INT16, tuple(r.rdev for r in files)),
            FILEMTIMES: (INT32, tuple(r.mtime & 0xFFFFFFFF for r in files)),
            FILELINKTOS: (STRING_ARRAY, tuple(r.linkto for r in files)),
            FILEFLAGS: (INT32, tuple(r.flags for r in files)),
            FILEUSERNAME: (STRING_ARRAY, tuple(r.user for r in files)),
            FILEGROUPNAME: (STRING_ARRAY, tuple(r.group for r in files)),
            FILEDEVICES: (INT32, (1,) * len(files)), FILEINODES: (INT32, tuple(inodes)),
        })
        if digests:
            tags[FILEDIGESTS] = (STRING_ARRAY, tuple(
                hashlib.new(algo, r.data).hexdigest() if r.kind == S_IFREG else ""
                for r in files))
            tags[FILEDIGESTALGO] = (INT32, (digest_algo,))
        if any(r.caps for r in files):
            tags[FILECAPS] = (STRING_ARRAY, tuple(r.caps for r in files))
    if cpio is None:
        cpio = rpm_cpio(files, inodes)
    if payload is None:
        payload = compress(cpio, codec)
    if payload_digest:
        tags[PAYLOADDIGEST] = (STRING_ARRAY, (hashlib.sha256(payload).hexdigest(),))
        tags[PAYLOADDIGESTALGO] = (INT32, (8,))
    if header_edit:
        header_edit(tags)
    header = rpm_header(tags, lies=header_lies)
    sig = {SIG_SIZE: (INT32, (len(header) + len(payload),))}
    if sha256_header:
        sig[SIG_SHA256] = (STRING, hashlib.sha256(header).hexdigest())
    sig.update(sig_tags or {})
    sig_bytes = rpm_header(sig, lies=sig_lies)
    sig_bytes += b"\0" * (-len(sig_bytes) % 8)
    lead = rpm_lead(f"{name}-1.0-1") if lead is None else lead
    if parts:
        return lead, sig_bytes, header, payload
    return lead + sig_bytes + header + payload


def rpm_cpio(files: list[R], inodes: list[int]) -> bytes:
    """The newc payload: data of a hard link set rides on its last name, as rpm writes it."""
    groups: dict[int, list[int]] = {}
    for i in range(len(files)):
        groups.setdefault(inodes[i], []).append(i)
    out = b""
    for i, r in enumerate(files):
        if not r.in_payload:
            continue
        group = groups[inodes[i]]
        data = (r.data if r.kind == S_IFREG else r.linkto.encode() if r.kind == S_IFLNK else b"")
        if r.kind == S_IFREG and len(group) > 1 and i != group[-1]:
            data = b""
        name = r.cpio_name if r.cpio_name is not None else "." + r.path
        kw = {"mode": r.kind | r.mode, "ino": inodes[i], "nlink": len(group), "mtime": r.mtime,
              "data": data, **r.cpio_kw}
        out += cpio_record(name, **kw)
    return out + CPIO_TRAILER


def rpm_bomb(size: int, codec: str) -> bytes:
    """One file of ``size`` zero bytes; the payload is compressed in steps."""
    name = b"./usr/share/bomb/zeros\0"
    head = (b"070701" + b"".join(f"{v:08x}".encode() for v in
                                 (1000, S_IFREG | 0o644, 0, 0, 1, EPOCH, size, 0, 0, 0, 0,
                                  len(name), 0)) + name)
    head += b"\0" * (-len(head) % 4)
    tail = b"\0" * (-size % 4) + CPIO_TRAILER
    payload = zeros_stream(head, size, tail, codec)
    big = size >= 1 << 32

    def edit(tags):
        tags[LONGFILESIZES if big else FILESIZES] = (INT64 if big else INT32, (size,))
        if big:
            del tags[FILESIZES]

    # no FILEDIGESTS: only the size may stop it, not a digest
    return rpm([R("/usr/share/bomb/zeros", data=b"")], payload=payload, header_edit=edit,
               codec=codec, digests=False)


def deb_bomb(size: int, codec: str) -> bytes:
    head = tar_header("./", typ=DIR, mode=0o755) + tar_header("./usr/share/bomb/zeros", size=size)
    tail = b"\0" * (-size % 512) + b"\0" * 1024
    member = zeros_stream(head, size, tail, codec)
    return deb([], codec=codec, data_member=member, sums=None)  # no md5sums: size alone


# --- the corpus --------------------------------------------------------------------------------

def generate(outside: str) -> list[Case]:
    """Every case; ``outside`` is an absolute directory that no case may write into."""
    cases: list[Case] = []
    seen: set[str] = set()
    out = outside.rstrip("/")
    up = "../" * 24 + out.lstrip("/")  # reaches ``outside`` from any depth

    def add(name, fmt, data, verdict, member="", *expect, note=""):
        assert name not in seen, name
        seen.add(name)
        cases.append(Case(name, fmt, data, verdict, member, tuple(expect), note))

    def D(name, members, verdict, member="", *expect, note="", **kw):
        add("deb-" + name, "deb", deb(members, **kw), verdict, member, *expect, note=note)

    def P(name, files, verdict, member="", *expect, note="", **kw):
        add("rpm-" + name, "rpm", rpm(files, **kw), verdict, member, *expect, note=note)

    # ---- baselines: the same corpus machinery makes packages the pipeline accepts -----------
    for codec in ("xz", "gzip", "zstd", "bzip2", "lzma", "none"):
        D(f"ok-{codec}", [d("./usr"), d("./usr/bin"), f("./usr/bin/ok", b"#!/bin/sh\n", 0o755)],
          "accepted", "", "usr/bin/ok", codec=codec)
    for codec in ("xz", "gzip", "zstd", "bzip2", "lzma", "none"):
        P(f"ok-{codec}", [R("/usr/bin/ok", data=b"#!/bin/sh\n", mode=0o755)], "accepted", "",
          "usr/bin/ok", codec=codec)
    P("ok-digest-md5", [R("/usr/bin/ok")], "accepted", "", "usr/bin/ok", digest_algo=1)
    P("ok-digest-sha1", [R("/usr/bin/ok")], "accepted", "", "usr/bin/ok", digest_algo=2)
    P("ok-digest-sha512", [R("/usr/bin/ok")], "accepted", "", "usr/bin/ok", digest_algo=10)
    P("ok-no-digests", [R("/usr/bin/ok")], "accepted", "", "usr/bin/ok", digests=False,
      payload_digest=False, sha256_header=False)
    D("ok-no-md5sums", [f("./usr/bin/ok")], "accepted", "", "usr/bin/ok", sums=None)
    D("ok-claims-xz-is-gzip", [f("./usr/bin/ok")], "accepted", "", "usr/bin/ok",
      ar_members=[("debian-binary", b"2.0\n"), ("control.tar.xz", compress(control_tar(), "xz")),
                  ("data.tar.xz", compress(tar([f("./usr/bin/ok")]), "gzip"))])
    P("ok-compressor-claims-gzip-is-xz", [R("/usr/bin/ok")], "accepted", "", "usr/bin/ok",
      codec="xz", compressor="gzip")

    # ---- traversal and absolute paths ---------------------------------------------------------
    for name, path in [("dotdot", "./usr/../../pwned"), ("dotdot-deep", up + "/pwned"),
                       ("dotdot-bare", "../pwned"), ("dotdot-middle", "./usr/bin/../../../pwned"),
                       ("dotdot-only", "..")]:
        D(f"traversal-{name}", [f(path)], "refused", "'..'")
    D("traversal-dir", [d("./usr/../../pwned-dir")], "refused", "'..'")
    D("absolute-file", [f(out + "/pwned")], "refused", "absolute path")
    D("absolute-dir", [d(out + "/pwned-dir")], "refused", "absolute path")
    D("absolute-symlink-entry", [sl(out + "/pwned", "x")], "refused", "absolute path")
    D("absolute-root", [f("/pwned")], "refused", "absolute path")
    D("traversal-pax-path", [f("./usr/bin/innocent", pax={"path": up + "/pwned"})], "refused",
      "'..'")
    D("absolute-pax-path", [f("./usr/bin/innocent", pax={"path": out + "/pwned"})], "refused",
      "absolute path")
    D("traversal-gnu-longname", [tar_header("././@LongLink", size=len(up) + 8, typ=b"L")
                                 + pad512(up.encode() + b"/pwned\0\0"), f("./usr/bin/short")],
      "refused", "'..'")
    D("traversal-ustar-prefix", [f("pwned", raw={"prefix": up[-150:].encode().ljust(155, b"\0")})],
      "refused", "'..'")
    P("traversal-cpio-name", [R("/usr/bin/x", cpio_name="./usr/../../../pwned")], "refused",
      "payload")
    P("traversal-header-path", [R("/usr/../../pwned", cpio_name="./usr/../../pwned")], "refused",
      "'..'")
    P("absolute-cpio-name", [R(out + "/pwned", cpio_name=out + "/pwned")], "refused",
      "absolute path")
    P("traversal-dirname", [R("/usr/bin/x")], "refused", "'..'",
      header_edit=lambda t: t.update({DIRNAMES: (STRING_ARRAY, ("/../../",))}),
      cpio=cpio_record("./../../x", mode=S_IFREG | 0o644, data=b"x\n", ino=1000) + CPIO_TRAILER)

    # ---- symlinks: pointing anywhere is fine, writing through one is not ----------------------
    D("symlink-to-outside-abs", [d("./usr"), sl("./usr/link", out)], "accepted", "",
      "usr/link")
    D("symlink-to-outside-rel", [d("./usr"), sl("./usr/link", up)], "accepted", "", "usr/link")
    D("symlink-to-etc-shadow", [d("./usr"), sl("./usr/shadow", "/etc/shadow")], "warned", "",
      "dangling-link", "usr/shadow")
    D("symlink-loop", [d("./usr"), sl("./usr/a", "b"), sl("./usr/b", "a")], "accepted", "",
      "usr/a", "usr/b")
    for name, target in [("abs", out), ("rel", up)]:
        D(f"write-through-symlink-{name}", [d("./usr"), sl("./usr/esc", target),
                                             f("./usr/esc/pwned")], "refused", "usr/esc")
        D(f"mkdir-through-symlink-{name}", [d("./usr"), sl("./usr/esc", target),
                                             d("./usr/esc/pwned-dir")], "refused", "usr/esc")
        D(f"symlink-through-symlink-{name}", [d("./usr"), sl("./usr/esc", target),
                                               sl("./usr/esc/pwned", "x")], "refused", "usr/esc")
        D(f"hardlink-through-symlink-{name}", [d("./usr"), f("./usr/real"),
                                                sl("./usr/esc", target),
                                                hl("./usr/esc/pwned", "./usr/real")],
          "refused", "usr/esc")
    D("write-through-toplevel-symlink", [sl("./usr", out), f("./usr/bin/pwned")], "refused",
      "usr")
    D("write-through-nested-symlink", [d("./usr"), d("./usr/a"), sl("./usr/a/b", "../../.."),
                                       f("./usr/a/b/pwned")], "refused", "usr/a/b")
    D("symlink-replaces-dir-then-write", [d("./usr"), d("./usr/dir"), sl("./usr/dir", out),
                                          f("./usr/dir/pwned")], "refused", "usr/dir")
    D("symlink-empty-target", [d("./usr"), sl("./usr/empty", "")], "refused", "usr/empty")
    D("hardlink-target-via-symlink", [d("./usr"), sl("./usr/esc", out),
                                      hl("./usr/h", "./usr/esc/sentinel")], "refused", "usr/h")
    P("write-through-symlink-abs", [R("/usr/esc", S_IFLNK, b"", 0o777, out),
                                    R("/usr/esc/pwned")], "refused", "usr/esc")
    P("write-through-symlink-rel", [R("/usr/esc", S_IFLNK, b"", 0o777, up),
                                    R("/usr/esc/pwned")], "refused", "usr/esc")
    P("symlink-to-outside", [R("/usr/link", S_IFLNK, b"", 0o777, out)], "accepted", "",
      "usr/link")
    P("symlink-header-target-differs", [R("/usr/link", S_IFLNK, b"", 0o777, "harmless",
                                          cpio_kw={"data": up.encode()})], "accepted", "",
      "usr/link", note="the header's FILELINKTOS is what rpm installs")

    # ---- hard links ---------------------------------------------------------------------------
    for name, target, why in [("dotdot", "../../etc/passwd", "'..'"),
                              ("absolute", "/etc/passwd", "absolute path"),
                              ("outside", up + "/sentinel", "'..'"),
                              ("dangling", "./usr/bin/nothere", "not a file"),
                              ("to-later", "./usr/bin/later", "not a file"),
                              ("to-dir", "./usr", "not a file"),
                              ("to-self", "./usr/bin/h", "not a file"),
                              ("empty", "", "not a file")]:
        members = [d("./usr"), d("./usr/bin"), hl("./usr/bin/h", target)]
        if name == "to-later":
            members.append(f("./usr/bin/later"))
        D(f"hardlink-{name}", members, "refused", why)
    D("hardlink-to-symlink", [d("./usr"), sl("./usr/s", out + "/sentinel"),
                              hl("./usr/h", "./usr/s")],
      "refused", "not a file")
    D("hardlink-to-device", [d("./usr"),
                             T("./usr/null", CHR, mode=0o666, kw={"major": 1, "minor": 3}),
                             hl("./usr/h", "./usr/null")], "refused", "device")
    P("hardlink-data-lost", [R("/usr/bin/a", inode=7, data=b""), R("/usr/bin/b", inode=7, data=b"",
                                                                   in_payload=False)],
      "refused", "usr/bin/b", note="the header lists a second name the payload never brings")
    P("hardlink-group-ok", [R("/usr/bin/a", inode=7, data=b"shared\n"),
                            R("/usr/bin/b", inode=7, data=b"shared\n")], "accepted", "",
      "usr/bin/a", "usr/bin/b")

    # ---- device nodes, FIFOs, sockets ---------------------------------------------------------
    D("chardev", [d("./usr"), T("./usr/null", CHR, mode=0o666, kw={"major": 1, "minor": 3})],
      "refused", "usr/null", "device")
    D("blockdev", [d("./usr"), T("./usr/sda", BLK, mode=0o660, kw={"major": 8, "minor": 0})],
      "refused", "usr/sda", "device")
    D("chardev-kmem", [d("./usr"), T("./usr/kmem", CHR, mode=0o666, kw={"major": 1, "minor": 2})],
      "refused", "usr/kmem", "device")
    D("fifo", [d("./usr"), T("./usr/fifo", FIFO, mode=0o644)], "refused", "usr/fifo", "fifo")
    D("contiguous-file", [d("./usr"), T("./usr/cont", CONT, b"contiguous\n")], "accepted", "",
      "usr/cont", note="tar's type 7 is a regular file")
    P("chardev", [R("/usr/null", S_IFCHR, b"", 0o666, rdev=0x0103)], "refused", "usr/null",
      "device")
    P("blockdev", [R("/usr/sda", S_IFBLK, b"", 0o660, rdev=0x0800)], "refused", "usr/sda",
      "device")
    P("fifo", [R("/usr/fifo", S_IFIFO, b"", 0o644)], "refused", "usr/fifo", "fifo")
    P("socket", [R("/usr/sock", S_IFSOCK, b"", 0o644)], "refused", "usr/sock", "socket")
    P("unknown-file-type", [R("/usr/odd", 0o170000, b"", 0o644)], "refused", "usr/odd",
      "unknown file type")
    D("unknown-tar-type", [d("./usr"), T("./usr/odd", b"Z")], "refused", "usr/odd",
      "unsupported tar member type")
    D("gnu-sparse", [d("./usr"), T("./usr/sparse", b"S", b"x" * 512)], "refused", "usr/sparse")

    # ---- setuid / setgid / world-writable / capabilities --------------------------------------
    D("setuid", [d("./usr"), d("./usr/bin"), f("./usr/bin/su", b"\x7fELF", 0o4755)], "warned",
      "", "setuid", "usr/bin/su")
    D("setgid", [d("./usr"), d("./usr/bin"), f("./usr/bin/sg", b"\x7fELF", 0o2755)], "warned",
      "", "setgid", "usr/bin/sg")
    D("setuid-world-writable", [d("./usr"), d("./usr/bin"), f("./usr/bin/ww", b"x", 0o4777)],
      "warned", "", "usr/bin/ww")
    D("world-writable-dir", [d("./usr"), d("./usr/share"), d("./usr/share/open", 0o777)],
      "warned", "", "world-writable", "usr/share/open")
    D("world-writable-var-dir", [d("./var"), d("./var/lib"), d("./var/lib/open", 0o777)],
      "warned", "", "world-writable", "var/lib/open")
    D("sticky-world-writable-dir", [d("./usr"), d("./usr/share"), d("./usr/share/tmp", 0o1777)],
      "accepted", "", "usr/share/tmp")
    D("world-writable-file", [d("./usr"), f("./usr/open", b"x", 0o666)], "warned", "",
      "world-writable", "usr/open")
    P("setuid", [R("/usr/bin/su", data=b"\x7fELF", mode=0o4755)], "warned", "", "setuid",
      "usr/bin/su")
    P("setgid", [R("/usr/bin/sg", data=b"\x7fELF", mode=0o2755)], "warned", "", "setgid",
      "usr/bin/sg")
    P("world-writable-dir", [R("/usr/share/open", S_IFDIR, b"", 0o777)], "warned", "",
      "world-writable", "usr/share/open")
    P("caps-net-raw", [R("/usr/bin/ping", data=b"\x7fELF", mode=0o755, caps="cap_net_raw=ep")],
      "accepted", "", "usr/bin/ping")
    P("caps-all", [R("/usr/bin/god", data=b"\x7fELF", mode=0o755, caps="=ep")], "accepted", "",
      "usr/bin/god")
    P("caps-bad-text", [R("/usr/bin/x", caps="cap_rule_the_world=ep")], "refused", "usr/bin/x",
      "capability")
    P("caps-garbage", [R("/usr/bin/x", caps="\x01\x02;rm -rf /")], "refused", "usr/bin/x",
      "capability")
    D("pax-caps-xattr", [d("./usr"), f("./usr/ping", pax={
        "SCHILY.xattr.security.capability":
            b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"})],
      "accepted", "", "usr/ping")
    P("caps-on-symlink", [R("/usr/bin/l", S_IFLNK, b"", 0o777, "target", caps="cap_sys_admin=ep")],
      "refused", "usr/bin/l")
    P("caps-on-dir", [R("/usr/lib/d", S_IFDIR, b"", 0o755, caps="cap_sys_admin=ep")],
      "accepted", "", "usr/lib/d", note="a capability on a directory is inert")
    D("pax-caps-on-dir", [d("./usr"), d("./usr/d", pax={
        "SCHILY.xattr.security.capability":
            b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"})],
      "accepted", "", "usr/d", note="a capability on a directory is inert")
    P("owner-name-control-chars", [R("/usr/x", user="ro\not\x1b[0m")], "refused", "usr/x")
    P("ghost-in-payload", [R("/usr/x"), R("/usr/ghost", flags=64)], "accepted", "", "usr/x",
      "!usr/ghost",
      note="rpm never packs %ghost content; a payload that does is tolerated, not extracted")
    P("symlink-escape-target", [R("/usr/link", S_IFLNK, b"", 0o777, up + "/sentinel")],
      "accepted", "", "usr/link")
    P("hardlink-through-symlink", [R("/usr/esc", S_IFLNK, b"", 0o777, out),
                                   R("/usr/a", inode=9, data=b"a\n"),
                                   R("/usr/esc/pwned", inode=9, data=b"a\n")], "refused",
      "usr/esc")
    D("pax-caps-garbage", [d("./usr"), f("./usr/ping", pax={
        "SCHILY.xattr.security.capability": b"garbage"})], "refused", "usr/ping")
    D("xattr-overlay-opaque", [d("./usr"), d("./usr/lib", pax={
        "SCHILY.xattr.trusted.overlay.opaque": "y"})], "refused", "usr/lib",
      "trusted.overlay.opaque")
    D("xattr-overlay-redirect", [d("./usr"), d("./usr/x", pax={
        "SCHILY.xattr.trusted.overlay.redirect": "/etc"})], "refused", "usr/x", "trusted.")
    D("xattr-selinux", [d("./usr"), f("./usr/x", pax={"SCHILY.xattr.security.selinux":
                                                      "system_u:object_r:shadow_t:s0"})],
      "refused", "usr/x", "security.selinux")
    D("xattr-ima", [d("./usr"), f("./usr/x", pax={"SCHILY.xattr.security.ima": "\x03\x02"})],
      "refused", "usr/x", "security.ima")
    D("xattr-libarchive-trusted", [d("./usr"), f("./usr/x", pax={
        "LIBARCHIVE.xattr.trusted.overlay.opaque": "eQ=="})], "refused", "usr/x", "trusted.")
    D("xattr-user", [d("./usr"), f("./usr/x", pax={"SCHILY.xattr.user.origin": "web"})],
      "warned", "", "user.origin")
    D("unmapped-owner-name", [d("./usr"), f("./usr/x", mode=0o2755, gid=8, gname="mail")],
      "warned", "", "mail")
    P("unmapped-owner-name", [R("/usr/x", user="evil", group="root")], "refused", "usr/x",
      "evil")
    D("huge-uid-named", [d("./usr"), f("./usr/x", uid=1 << 40)], "accepted", "", "usr/x",
      note="the owner's name (root) decides, not the number")
    D("huge-uid", [d("./usr"), f("./usr/x", uid=1 << 40, uname="", gname="")], "refused",
      "usr/x")
    D("huge-gid", [d("./usr"), f("./usr/x", gid=1 << 33, uname="", gname="")], "refused",
      "usr/x")
    D("negative-uid", [d("./usr"), f("./usr/x", raw={"uid": base256(-5, 8)})], "refused",
      "usr/x")

    # ---- duplicate and conflicting entries ----------------------------------------------------
    D("duplicate-file", [d("./usr"), f("./usr/x", b"first\n"), f("./usr/x", b"second\n")],
      "warned", "", "usr/x", sums=None)
    D("duplicate-dir", [d("./usr"), d("./usr/x"), d("./usr/x", 0o700)], "accepted", "", "usr/x")
    D("file-then-dir", [d("./usr"), f("./usr/x"), d("./usr/x")], "refused", "usr/x", "file")
    D("dir-then-file", [d("./usr"), d("./usr/x"), f("./usr/x")], "refused", "usr/x",
      "directory")
    D("dir-with-child-then-symlink", [d("./usr"), d("./usr/x"), f("./usr/x/child"),
                                      sl("./usr/x", out)], "refused", "usr/x")
    D("file-then-symlink", [d("./usr"), f("./usr/x"), sl("./usr/x", out)], "warned", "", "usr/x")
    D("symlink-then-file", [d("./usr"), sl("./usr/x", out + "/sentinel"), f("./usr/x")],
      "warned", "", "usr/x")
    D("hardlinked-then-replaced", [d("./usr"), f("./usr/a", b"a\n"), hl("./usr/b", "./usr/a"),
                                   f("./usr/a", b"replaced\n")], "warned", "", "usr/a",
      sums=None)
    D("lib-and-usr-lib", [d("./lib"), f("./lib/libx.so", b"one\n"), d("./usr"), d("./usr/lib"),
                          f("./usr/lib/libx.so", b"two\n")], "warned", "", "usr/lib/libx.so",
      note="merged /usr: two names for one path")
    P("duplicate-in-header", [R("/usr/x", data=b"a\n"), R("/usr/x", data=b"a\n")], "refused",
      "usr/x")
    P("payload-record-twice", [R("/usr/x")], "refused", "usr/x",
      cpio=(cpio_record("./usr/x", mode=S_IFREG | 0o644, data=b"x\n", ino=1000) * 2
            + CPIO_TRAILER))
    P("file-then-dir", [R("/usr/x"), R("/usr/x/y")], "refused", "usr/x")

    # ---- case-only collisions (Linux is case-sensitive: both stay) ----------------------------
    D("case-collision", [d("./usr"), d("./usr/bin"), f("./usr/bin/Tool", b"A\n"),
                         f("./usr/bin/tool", b"a\n")], "accepted", "", "usr/bin/Tool",
      "usr/bin/tool")
    D("case-collision-dirs", [d("./usr"), d("./usr/Share"), f("./usr/Share/x"), d("./usr/share"),
                              f("./usr/share/x")], "accepted", "", "usr/Share/x", "usr/share/x")
    P("case-collision", [R("/usr/bin/Tool", data=b"A\n"), R("/usr/bin/tool", data=b"a\n")],
      "accepted", "", "usr/bin/Tool", "usr/bin/tool")
    D("unicode-normalization-collision", [d("./usr"), f("./usr/caf\u00e9", b"nfc\n"),
                                          f("./usr/cafe\u0301", b"nfd\n")], "accepted", "",
      "usr/caf\u00e9", "usr/cafe\u0301")

    # ---- huge and negative sizes, header lies -------------------------------------------------
    D("tar-size-huge", [d("./usr"), f("./usr/big", b"tiny", size=1 << 40)], "refused", "usr/big")
    D("tar-size-huge-base256", [d("./usr"), f("./usr/big", b"tiny", size=1 << 62)], "refused",
      "usr/big")
    D("tar-size-negative", [d("./usr"), f("./usr/neg", b"", size=-1)], "refused", "data.tar")
    D("tar-size-garbage", [d("./usr"), f("./usr/g", raw={"size": b"12a45678901\0"})], "refused",
      "data.tar")
    D("tar-size-larger-than-data", [d("./usr"), f("./usr/short", b"abc", size=4096)], "refused",
      "usr/short")
    D("tar-checksum-bad-first", [f("./usr/x", chksum_delta=1)], "refused", "data.tar",
      data_tar=tar([f("./usr/x", chksum_delta=1)]))
    D("tar-checksum-bad-middle", [d("./usr"), f("./usr/a"), f("./usr/b", chksum_delta=7),
                                  f("./usr/c")], "refused", "data.tar")
    D("tar-mtime-huge", [d("./usr"), f("./usr/x", mtime=1 << 62)], "refused", "usr/x")
    D("tar-mtime-negative", [d("./usr"), f("./usr/x", mtime=-(1 << 40))], "refused", "usr/x")
    D("tar-mtime-far-future", [d("./usr"), f("./usr/x", mtime=1 << 40)], "refused", "usr/x")
    D("tar-mode-garbage", [d("./usr"), f("./usr/x", raw={"mode": b"99999999"})], "refused",
      "data.tar")
    D("tar-name-empty", [d("./usr"), f("")], "refused", "data.tar", sums=None)
    D("tar-linkname-on-file", [d("./usr"), T("./usr/x", REG, b"x\n", linkname="/etc/shadow")],
      "accepted", "",
      "usr/x")
    D("tar-nul-in-name", [d("./usr"), f(b"./usr/a\0/etc/shadow")], "accepted", "", "usr/a",
      sums=None, note="a ustar name ends at its first NUL")
    D("tar-no-end-blocks", [], "refused", "data.tar",
      data_tar=tar([d("./"), d("./usr"), f("./usr/x")], end=False))
    D("ar-size-huge", [], "refused", "data.tar",
      ar_members=[("debian-binary", b"2.0\n"), ("control.tar.xz", compress(control_tar(), "xz")),
                  ar_header("data.tar.xz", 1 << 33)
                  + compress(tar([d("./"), f("./usr/x")]), "xz")])
    D("ar-size-negative", [], "refused", "data.tar",
      ar_members=[("debian-binary", b"2.0\n"), ("control.tar.xz", compress(control_tar(), "xz")),
                  ar_header("data.tar.xz", 0, raw={"size": b"-100".ljust(10)})])
    D("ar-size-garbage", [], "refused", "data.tar",
      ar_members=[("debian-binary", b"2.0\n"), ("control.tar.xz", compress(control_tar(), "xz")),
                  ar_header("data.tar.xz", 0, raw={"size": b"0x10".ljust(10)})])
    D("ar-size-smaller-than-data", [], "refused", "data.tar",
      ar_members=[("debian-binary", b"2.0\n"), ("control.tar.xz", compress(control_tar(), "xz")),
                  (lambda m: ar_header("data.tar.xz", len(m) // 2) + m)(
                      compress(tar([d("./"), f("./usr/x", bytes(range(256)) * 64)]), "xz"))])
    D("ar-bad-terminator", [], "refused", "ar member header",
      ar_members=[ar_header("debian-binary", 4, raw={"end": b"XX"}) + b"2.0\n"])
    D("ar-bad-magic", [], "refused", "ar archive",
      ar_members=[])
    cases[-1] = replace(cases[-1], source=b"!<arch>X" + cases[-1].data[8:])
    D("debian-binary-3", [], "refused", "debian-binary",
      ar_members=[("debian-binary", b"3.0\n"), ("control.tar.xz", compress(control_tar(), "xz")),
                  ("data.tar.xz", compress(tar([f("./usr/x")]), "xz"))])
    D("first-member-not-debian-binary", [], "refused", "debian-binary",
      ar_members=[("control.tar.xz", compress(control_tar(), "xz")),
                  ("debian-binary", b"2.0\n"),
                  ("data.tar.xz", compress(tar([f("./usr/x")]), "xz"))])
    D("no-data-member", [], "refused", "data.tar",
      ar_members=[("debian-binary", b"2.0\n"), ("control.tar.xz", compress(control_tar(), "xz"))])
    D("no-control-member", [], "refused", "control",
      ar_members=[("debian-binary", b"2.0\n"),
                  ("data.tar.xz", compress(tar([f("./usr/x")]), "xz"))])
    D("data-before-control", [], "refused", "data.tar",
      ar_members=[("debian-binary", b"2.0\n"), ("data.tar.xz", compress(tar([f("./usr/x")]), "xz")),
                  ("control.tar.xz", compress(control_tar(), "xz"))])
    D("two-data-members", [], "refused", "data.tar",
      ar_members=[("debian-binary", b"2.0\n"), ("control.tar.xz", compress(control_tar(), "xz")),
                  ("data.tar.xz", compress(tar([f("./usr/a")]), "xz")),
                  ("data.tar.gz", compress(tar([f("./usr/b")]), "gzip"))])
    D("data-unknown-compression", [], "refused", "data.tar.rar",
      ar_members=[("debian-binary", b"2.0\n"), ("control.tar.xz", compress(control_tar(), "xz")),
                  ("data.tar.rar", compress(tar([f("./usr/x")]), "xz"))])
    D("data-not-compressed-as-claimed", [], "refused", "data.tar.xz",
      ar_members=[("debian-binary", b"2.0\n"), ("control.tar.xz", compress(control_tar(), "xz")),
                  ("data.tar.xz", b"\x00garbage" * 100)])
    D("data-not-a-tar", [], "refused", "data.tar",
      ar_members=[("debian-binary", b"2.0\n"), ("control.tar.xz", compress(control_tar(), "xz")),
                  ("data.tar", b"this is not a tar archive at all\n" * 40)])
    D("control-missing-fields", [f("./usr/x")], "refused", "control", control=b"Package: x\n")
    D("control-huge-file", [f("./usr/x")], "refused", "control",
      ar_members=[("debian-binary", b"2.0\n"),
                  ("control.tar.xz", zeros_stream(tar_header("./control", size=64 * MiB), 64 * MiB,
                                                  b"\0" * 1024, "xz")),
                  ("data.tar.xz", compress(tar([f("./usr/x")]), "xz"))])
    # rpm header lies
    P("filesize-lie-larger", [R("/usr/x")], "refused", "usr/x",
      header_edit=lambda t: t.update({FILESIZES: (INT32, (99,))}))
    P("filesize-lie-smaller", [R("/usr/x", data=b"0123456789")], "refused", "usr/x",
      header_edit=lambda t: t.update({FILESIZES: (INT32, (1,))}))
    P("cpio-size-huge", [R("/usr/x", cpio_kw={"size": 0xFFFFFFFF})], "refused", "usr/x")
    P("type-lie", [R("/usr/x")], "refused", "usr/x",
      header_edit=lambda t: t.update({FILEMODES: (INT16, (S_IFDIR | 0o755,))}))
    P("type-lie-symlink", [R("/usr/x", S_IFLNK, b"", 0o777, "target")], "refused", "usr/x",
      header_edit=lambda t: t.update({FILEMODES: (INT16, (S_IFREG | 0o644,)),
                                      FILESIZES: (INT32, (6,))}))
    P("payload-file-not-in-header", [R("/usr/x")], "refused", "usr/evil",
      cpio=(cpio_record("./usr/x", mode=S_IFREG | 0o644, data=b"x\n", ino=1000)
            + cpio_record("./usr/evil", mode=S_IFREG | 0o644, data=b"evil\n", ino=1001)
            + CPIO_TRAILER))
    P("header-file-not-in-payload", [R("/usr/x"), R("/usr/lost", in_payload=False)], "refused",
      "usr/lost")
    P("dirindex-out-of-range", [R("/usr/x")], "refused", "DIRINDEXES",
      header_edit=lambda t: t.update({DIRINDEXES: (INT32, (5,))}))
    P("array-length-mismatch", [R("/usr/x"), R("/usr/y")], "refused", "header",
      header_edit=lambda t: t.update({FILEMODES: (INT16, (S_IFREG | 0o644,))}))
    P("payload-format-xar", [R("/usr/x")], "refused", "payload format",
      header_edit=lambda t: t.update({PAYLOADFORMAT: (STRING, "xar")}))
    P("payload-compressor-unknown", [R("/usr/x")], "refused", "payload", "compression",
      header_edit=lambda t: t.update({PAYLOADCOMPRESSOR: (STRING, "lolz")}))
    P("header-count-absurd", [R("/usr/x")], "refused", "header", header_lies={"count": 0x10000})
    P("header-store-absurd", [R("/usr/x")], "refused", "header",
      header_lies={"size": 0x10000000})
    P("header-count-lies-short", [R("/usr/x")], "refused", "header", header_lies={"count": 3})
    P("header-offset-beyond-store", [R("/usr/x")], "refused", "header",
      header_lies={"offset": {BASENAMES: 1 << 30}})
    P("header-int-past-store", [R("/usr/x")], "refused", "header",
      header_lies={"n": {FILEMTIMES: 1 << 20}})
    P("header-unknown-type", [R("/usr/x")], "refused", "header",
      header_lies={"type": {FILEFLAGS: 42}})
    P("header-string-count-2", [R("/usr/x")], "refused", "header",
      header_lies={"n": {NAME: 2}})
    P("header-count-lies-short-unsigned", [R("/usr/x")], "refused", "", header_lies={"count": 3},
      sha256_header=False, payload_digest=False)
    P("header-bad-magic", [R("/usr/x")], "refused", "header",
      header_lies={"magic": b"\x8e\xad\xe8\x02"})
    P("signature-bad-magic", [R("/usr/x")], "refused", "signature",
      sig_lies={"magic": b"\x00\xad\xe8\x01"})
    P("signature-count-absurd", [R("/usr/x")], "refused", "signature",
      sig_lies={"count": 0xFFFFFFFF})
    P("lead-bad-magic", [R("/usr/x")], "refused", "lead", lead=rpm_lead(magic=b"\xed\xab\xee\xdc"))
    P("lead-version-2", [R("/usr/x")], "refused", "lead", lead=rpm_lead(major=2))
    P("lead-source-rpm", [R("/usr/x")], "refused", "lead", lead=rpm_lead(typ=1))
    P("cpio-bad-magic", [R("/usr/x")], "refused", "payload",
      cpio=cpio_record("./usr/x", mode=S_IFREG | 0o644, data=b"x\n", ino=1000, magic=b"070707")
      + CPIO_TRAILER)
    P("cpio-hex-signed", [R("/usr/x")], "refused", "payload",
      cpio=cpio_record("./usr/x", mode=S_IFREG | 0o644, data=b"x\n", ino=1000,
                       raw={6: b"+0000002"}) + CPIO_TRAILER)
    P("cpio-namesize-zero", [R("/usr/x")], "refused", "payload",
      cpio=cpio_record("./usr/x", mode=S_IFREG | 0o644, data=b"x\n", ino=1000, namesize=0))
    P("cpio-namesize-huge", [R("/usr/x")], "refused", "payload",
      cpio=cpio_record("./usr/x", mode=S_IFREG | 0o644, data=b"x\n", ino=1000,
                       namesize=0x7FFFFFFF))
    P("cpio-no-trailer", [R("/usr/x")], "refused", "payload",
      cpio=cpio_record("./usr/x", mode=S_IFREG | 0o644, data=b"x\n", ino=1000))
    P("cpio-stripped-index-out-of-range", [R("/usr/x")], "refused", "payload",
      cpio=b"07070X" + b"00000063" + b"\0\0" + b"x\n\0\0" + CPIO_TRAILER)
    P("mtime-2106", [R("/usr/x", mtime=0xFFFFFFFF)], "accepted", "", "usr/x",
      note="RPM times are unsigned 32-bit: 2106 is the latest squashfs can store")

    # ---- truncation at every structure --------------------------------------------------------
    good_deb = deb([d("./usr"), f("./usr/x", bytes(range(256)) * 40)], codec="none")
    # offsets: magic 8 | hdr 60 | debian-binary 4 | hdr 60 | control | hdr 60 | data
    control_len = len(compress(control_tar(control=CONTROL, sums=md5sums(
        [f("./usr/x", bytes(range(256)) * 40)])), "xz"))
    ctl_at = 8 + 60 + 4
    data_hdr = ctl_at + 60 + control_len + control_len % 2
    data_at = data_hdr + 60
    for name, cut, member in [("ar-magic", 4, "ar"), ("ar-first-header", 8 + 30, "ar member"),
                              ("ar-debian-binary", 8 + 60 + 2, "debian-binary"),
                              ("ar-control-header", ctl_at + 20, "ar member"),
                              ("ar-control-member", ctl_at + 60 + control_len // 2, "control"),
                              ("ar-data-header", data_hdr + 59, "ar member"),
                              ("tar-header", data_at + 512 + 100, "data.tar"),
                              ("tar-data", data_at + 1024 + 5000, "data.tar"),
                              ("tar-before-end", data_at + 1024 + 10240 + 10, "data.tar")]:
        add(f"deb-truncated-{name}", "deb", good_deb[:cut], "refused", member)
    xz_deb = deb([d("./usr")] + [f(f"./usr/f{i}", bytes(range(256)) * 64) for i in range(8)])
    add("deb-truncated-xz-stream", "deb", xz_deb[:len(xz_deb) - 200], "refused", "data.tar.xz")
    for codec in ("gzip", "zstd", "bzip2"):
        data = compress(tar([d("./"), d("./usr")] + [f(f"./usr/f{i}", bytes(range(256)) * 64)
                                                      for i in range(8)]), codec)
        cut = data[: len(data) * 2 // 3]
        D(f"truncated-{codec}-stream", [], "refused", "data.tar",
          ar_members=[("debian-binary", b"2.0\n"),
                      ("control.tar.xz", compress(control_tar(), "xz")),
                      ("data.tar" + SUFFIX[codec], cut)])
    # cut inside the tar/cpio stream, the compressed framing around it intact
    body = tar([d("./"), d("./usr"), f("./usr/x", bytes(range(256)) * 40)], end=False)
    for name, cut, member in [("tar-cut-in-header", 1024 + 200, "data.tar"),
                              ("tar-cut-in-data", 1536 + 3000, "usr/x"),
                              ("tar-cut-after-member", len(body), "data.tar")]:
        D(name, [], "refused", member, data_member=compress(body[:cut], "xz"), sums=None)
    rec = cpio_record("./usr/x", mode=S_IFREG | 0o644, data=bytes(range(256)) * 40, ino=1000)
    for name, cut, member in [("cpio-cut-in-header", 60, "payload"),
                              ("cpio-cut-in-name", 112, "payload"),
                              ("cpio-cut-in-data", 2000, "usr/x"),
                              ("cpio-cut-before-trailer", len(rec), "payload")]:
        P(name, [R("/usr/x", data=bytes(range(256)) * 40)], "refused", member, cpio=rec[:cut])
    P("longfilesize-huge", [R("/usr/x")], "refused", "usr/x",
      header_edit=lambda t: (t.pop(FILESIZES), t.update({LONGFILESIZES: (INT64, (1 << 62,))})))
    lead, sig, hdr, payload = rpm([R("/usr/x", data=bytes(range(256)) * 40)], codec="none",
                                  parts=True, payload_digest=False)
    whole = lead + sig + hdr + payload
    s, h, p = len(lead), len(lead) + len(sig), len(lead) + len(sig) + len(hdr)
    rpm_cuts = [("lead", 50, "lead"), ("signature-intro", s + 10, "signature"),
                ("signature-index", s + 16 + 8, "signature"),
                ("signature-store", s + len(sig) - 12, "signature"),
                ("header-intro", h + 8, "header"), ("header-index", h + 16 + 40, "header"),
                ("header-store", p - 10, "header"), ("payload-empty", p, "payload"),
                ("cpio-header", p + 50, "payload"), ("cpio-name", p + 110 + 5, "payload"),
                ("cpio-data", p + 120 + 5000, "usr/x"), ("cpio-trailer", len(whole) - 30,
                                                         "payload")]
    for name, cut, member in rpm_cuts:
        add(f"rpm-truncated-{name}", "rpm", whole[:cut], "refused", member)
    xz_rpm = rpm([R(f"/usr/f{i}", data=bytes(range(256)) * 64) for i in range(8)], codec="xz")
    add("rpm-truncated-xz-payload", "rpm", xz_rpm[:-100], "refused", "payload")
    zst_rpm = rpm([R(f"/usr/f{i}", data=bytes(range(256)) * 64) for i in range(8)], codec="zstd")
    add("rpm-truncated-zstd-payload", "rpm", zst_rpm[:-20], "refused", "payload")

    # ---- decompression bombs (small archives, huge output) ------------------------------------
    add("deb-bomb-zstd-1g", "deb", lambda: deb_bomb(GiB, "zstd"), "refused", "data.tar")
    add("deb-bomb-xz-128m", "deb", lambda: deb_bomb(128 * MiB, "xz"), "refused", "data.tar")
    add("deb-bomb-bzip2-32m", "deb", lambda: deb_bomb(32 * MiB, "bzip2"), "refused", "data.tar")
    add("rpm-bomb-zstd-1g", "rpm", lambda: rpm_bomb(GiB, "zstd"), "refused", "payload")
    add("rpm-bomb-bzip2-32m", "rpm", lambda: rpm_bomb(32 * MiB, "bzip2"), "refused", "payload")

    # ---- digests ------------------------------------------------------------------------------
    D("md5sums-wrong", [d("./usr"), f("./usr/x", b"real\n")], "refused", "usr/x", "md5",
      sums=b"0" * 32 + b"  usr/x\n")
    D("md5sums-lists-missing-file", [d("./usr"), f("./usr/x")], "refused", "usr/ghost",
      sums=md5sums([f("./usr/x")]) + hashlib.md5(b"x").hexdigest().encode() + b"  usr/ghost\n")
    D("md5sums-one-of-many-wrong", [d("./usr")] + [f(f"./usr/f{i}", b"%d\n" % i)
                                                   for i in range(10)], "refused", "usr/f7",
      sums=b"".join(hashlib.md5(b"%d\n" % (i if i != 7 else 70)).hexdigest().encode()
                    + b"  usr/f%d\n" % i for i in range(10)))
    D("md5sums-flipped-byte", [d("./usr"), f("./usr/lib", bytes(range(256)) * 10)], "refused",
      "usr/lib", sums=md5sums([f("./usr/lib", bytes([1]) + bytes(range(1, 256))
                                 + bytes(range(256)) * 9)]))
    P("filedigest-wrong", [R("/usr/x", data=b"real\n")], "refused", "usr/x", "digest",
      header_edit=lambda t: t.update({FILEDIGESTS: (STRING_ARRAY, ("0" * 64,))}))
    P("filedigest-wrong-md5", [R("/usr/x", data=b"real\n")], "refused", "usr/x", "digest",
      digest_algo=1, header_edit=lambda t: t.update({FILEDIGESTS: (STRING_ARRAY, ("0" * 32,))}))
    P("filedigest-wrong-sha512", [R("/usr/x", data=b"real\n")], "refused", "usr/x", "digest",
      digest_algo=10,
      header_edit=lambda t: t.update({FILEDIGESTS: (STRING_ARRAY, ("a" * 128,))}))
    P("filedigest-not-hex", [R("/usr/x")], "refused", "usr/x",
      header_edit=lambda t: t.update({FILEDIGESTS: (STRING_ARRAY, ("zz" * 32,))}))
    P("filedigest-algo-unknown", [R("/usr/x")], "refused", "",
      header_edit=lambda t: t.update({FILEDIGESTALGO: (INT32, (99,))}))
    P("filedigest-second-file", [R("/usr/a", data=b"a\n"), R("/usr/b", data=b"b\n")], "refused",
      "usr/b", header_edit=lambda t: t.update({FILEDIGESTS: (STRING_ARRAY, (
          hashlib.sha256(b"a\n").hexdigest(), hashlib.sha256(b"B\n").hexdigest()))}))
    P("payload-byte-flipped", [R("/usr/x", data=b"A" * 64)], "refused", "usr/x",
      codec="none", payload_digest=False, sha256_header=False,
      cpio=(cpio_record("./usr/x", mode=S_IFREG | 0o644, data=b"A" * 63 + b"B", ino=1000)
            + CPIO_TRAILER))
    P("payloaddigest-wrong", [R("/usr/x")], "refused", "payload",
      header_edit=lambda t: t.update({PAYLOADDIGEST: (STRING_ARRAY, ("0" * 64,))}))
    P("sha256header-wrong", [R("/usr/x")], "refused", "header",
      sig_tags={SIG_SHA256: (STRING, "0" * 64)})

    # ---- odd names ----------------------------------------------------------------------------
    for name, path in [("newline", "./usr/a\nb"), ("carriage-return", "./usr/a\rb"),
                       ("tab", "./usr/a\tb"), ("escape", "./usr/\x1b[31mred"),
                       ("del", "./usr/a\x7fb"), ("bell", "./usr/\x07"),
                       ("newline-dir", "./usr/evil\ndir/x"),
                       ("fake-error-line", "./usr/x\nerror: everything is fine")]:
        D(f"name-{name}", [d("./usr"), f(path)], "refused", "control characters", sums=None)
    for name, raw in [("latin1", b"./usr/caf\xe9"), ("overlong-utf8", b"./usr/\xc0\xaf"),
                      ("lone-surrogate", b"./usr/\xed\xa0\x80"), ("invalid-byte", b"./usr/\xff")]:
        D(f"name-{name}", [d("./usr"), f(raw)], "refused", "UTF-8", sums=None)
    P("name-newline", [R("/usr/a\nb")], "refused", "control characters")
    P("name-latin1", [R("/usr/caf\udce9")], "refused", "UTF-8")
    P("name-escape", [R("/usr/\x1b]0;pwned\x07")], "refused", "control characters")
    for name, path in [("space", "./usr/share/with space"), ("unicode", "./usr/share/\u00fcber"),
                       ("emoji", "./usr/share/\U0001f600"), ("dash", "./usr/share/-rf"),
                       ("three-dots", "./usr/share/..."), ("dot-hidden", "./usr/share/.hidden"),
                       ("backslash", "./usr/share/a\\b"), ("percent", "./usr/share/100%"),
                       ("quotes", "./usr/share/a'b\"c"), ("glob", "./usr/share/*?[x]"),
                       ("double-slash", ".//usr//share///x"), ("rtl-override",
                                                              "./usr/share/\u202eexe.txt")]:
        D(f"name-ok-{name}", [f(path)], "accepted", "", path.replace("//", "/")
          .replace("//", "/").removeprefix("./").removeprefix("/"))
    D("name-component-255", [d("./usr"), f("./usr/" + "n" * 255,
                                           pax={"path": "./usr/" + "n" * 255})],
      "accepted", "", "usr/" + "n" * 255)
    D("name-component-256", [d("./usr"), f("./usr/" + "n" * 256,
                                           pax={"path": "./usr/" + "n" * 256})],
      "refused", "usr/nnnn")
    D("name-path-5000", [f("./usr/x", pax={"path": "./usr/" + "/".join(["d" * 200] * 25)})],
      "refused", "usr/dddd")
    P("name-component-256", [R("/usr/" + "n" * 256)], "refused", "usr/nnnn")
    D("name-dot", [d("./usr"), f(".")], "refused", "data.tar", sums=None)
    D("name-dot-slash-file", [d("./usr"), f("./")], "refused", "data.tar", sums=None)

    # ---- pax / GNU headers declaring huge sizes ----------------------------------------------
    def pax_header_declaring(size: int, typ: bytes = b"x", body: bytes = b"") -> bytes:
        return tar_header("./PaxHeaders/big", size=size, typ=typ) + pad512(body)

    for name, size in [("2g", 2 * GiB), ("256m", 256 * MiB), ("8e", 1 << 62)]:
        D(f"pax-size-{name}", [d("./usr"), pax_header_declaring(size, body=b"30 path=./usr/x\n"),
                               f("./usr/x")], "refused", "data.tar")
        D(f"gnu-longname-size-{name}", [d("./usr"), pax_header_declaring(size, b"L", b"x" * 100),
                                        f("./usr/x")], "refused", "data.tar")
    D("gnu-longlink-size-2g", [d("./usr"), pax_header_declaring(2 * GiB, b"K", b"x" * 100),
                               sl("./usr/x", "y")], "refused", "data.tar")
    D("pax-global-size-2g", [pax_header_declaring(2 * GiB, b"g", b"x" * 100), f("./usr/x")],
      "refused", "data.tar")
    def chain(keys):
        return b"".join(tar_header("./PaxHeaders/x", size=len(body), typ=b"x") + pad512(body)
                        for body in [pax_records({k: "c" * (600 << 10)}) for k in keys])

    D("pax-headers-chained", [d("./usr"), chain(["c1", "c2", "c3"]), f("./usr/x")], "refused",
      "data.tar", note="three 600 KiB pax headers before one member: each under the cap, "
      "together over")
    D("pax-headers-chained-same-key", [d("./usr"), chain(["comment"] * 3), f("./usr/x")],
      "accepted", "", "usr/x", note="a repeated record replaces the earlier one: still bounded")
    D("pax-size-negative", [d("./usr"), pax_header_declaring(-1 << 40, body=b"x" * 10),
                            f("./usr/x")], "refused", "data.tar")
    D("pax-record-length-lies", [d("./usr"), f("./usr/x", pax={})], "refused", "data.tar",
      data_tar=tar([d("./"), tar_header("./PaxHeaders/x", size=30, typ=b"x")
                    + pad512(b"99999999999 path=./usr/y\n\0\0\0\0\0"), f("./usr/x")]))
    D("pax-path-1m-real", [d("./usr"), tar_header("./PaxHeaders/x", size=MiB + 16, typ=b"x")
                           + pad512(pax_records({"path": "./usr/" + "a" * MiB})[: MiB + 16]),
                           f("./usr/x")], "refused", "data.tar")
    D("pax-size-record-lies", [d("./usr"), f("./usr/x", b"abc", pax={"size": str(1 << 40)})],
      "refused", "usr/x")
    D("pax-linkpath-escape", [d("./usr"), f("./usr/a"), hl("./usr/h", "./usr/a",
                                                           pax={"linkpath": up + "/sentinel"})],
      "refused", "'..'")
    D("pax-mtime-huge", [d("./usr"), f("./usr/x", pax={"mtime": "1e30"})], "refused", "usr/x")
    D("pax-uid-garbage", [d("./usr"), f("./usr/x", pax={"uid": "-7"})], "refused", "usr/x")

    # ---- what an extension may not carry ------------------------------------------------------
    D("os-release", [d("./usr"), d("./usr/lib"), f("./usr/lib/os-release", b"ID=evil\n")],
      "refused", "os-release")
    P("os-release", [R("/usr/lib/os-release", data=b"ID=evil\n")], "refused", "os-release")
    D("usr-lib-symlink", [d("./usr"), sl("./usr/lib", out)], "accepted", "",
      note="dropped: it would hide the host's /usr/lib")
    D("lib-symlink-to-outside", [sl("./lib", out), f("./lib/pwned")], "accepted", "",
      "usr/lib/pwned", note="the /lib link is dropped, lib/ content goes to usr/lib")
    # ---- odd link targets, odd shapes --------------------------------------------------------
    D("symlink-target-5000", [d("./usr"), sl("./usr/l", "x", pax={"linkpath": "a/" * 2500})],
      "refused", "usr/l")
    D("symlink-target-newline", [d("./usr"), sl("./usr/l", "/etc/x\nsevere: fake finding")],
      "refused", "usr/l")
    D("symlink-target-not-utf8", [d("./usr"), sl("./usr/l", b"caf\xe9")], "refused", "usr/l")
    D("mode-07777", [d("./usr"), f("./usr/x", b"x", 0o7777)], "warned", "", "setuid", "usr/x")
    D("deep-nesting", [f("./usr/" + "d/" * 1000 + "x")], "accepted", "",
      "usr/" + "d/" * 1000 + "x")
    D("hardlink-with-data", [d("./usr"), f("./usr/a", b"a\n"),
                             T("./usr/h", LNK, b"smuggled data\n", linkname="./usr/a")],
      "refused", "usr/h")
    D("symlink-with-data", [d("./usr"), T("./usr/l", SYM, b"smuggled data\n", 0o777, "a")],
      "refused", "usr/l")
    D("dir-with-data", [d("./usr"), T("./usr/d", DIR, b"smuggled data\n", 0o755),
                        f("./usr/d/x")], "refused", "usr/d")

    # ---- memory: sizes declared by headers, before any data --------------------------------
    P("header-store-256m-declared", [R("/usr/x")], "refused", "header",
      header_lies={"size": 0x0FFFFFF0})
    P("signature-store-256m-declared", [R("/usr/x")], "refused", "signature",
      sig_lies={"size": 0x0FFFFFF0})
    P("header-index-1m-declared", [R("/usr/x")], "refused", "header",
      header_lies={"count": 0xFFFF})
    D("control-huge-md5sums", [f("./usr/x")], "refused", "md5sums",
      ar_members=[("debian-binary", b"2.0\n"),
                  ("control.tar.xz", zeros_stream(
                      tar_header("./", typ=DIR, mode=0o755) + tar_header("./control",
                                                                         size=len(CONTROL))
                      + pad512(CONTROL) + tar_header("./md5sums", size=64 * MiB), 64 * MiB,
                      b"\0" * 1024, "xz")),
                  ("data.tar.xz", compress(tar([f("./usr/x")]), "xz"))])
    D("control-traversal-member", [f("./usr/x")], "accepted", "", "usr/x",
      ar_members=[("debian-binary", b"2.0\n"),
                  ("control.tar.xz", compress(control_tar(extra=[f("../../pwned-control")]),
                                              "xz")),
                  ("data.tar.xz", compress(tar([d("./"), f("./usr/x")]), "xz"))],
      note="control.tar is read, never extracted")
    D("control-field-escape", [f("./usr/x")], "refused", "control",
      control=CONTROL.replace(b"Version: 1.0", b"Version: 1.0\x1b]0;pwned\x07"))

    # ---- files an extension could use to take over the host or the merge ---------------------
    D("release-file-spoofed", [d("./usr"), d("./usr/lib"), d("./usr/lib/extension-release.d"),
                               f("./usr/lib/extension-release.d/extension-release.hostile",
                                 b"ID=_any\n")], "warned", "",
      "usr/lib/extension-release.d/extension-release.hostile",
      note="the pipeline writes its own release file last; the replacement is said")
    D("release-dir-symlink", [d("./usr"), d("./usr/lib"),
                              sl("./usr/lib/extension-release.d", out)], "refused",
      "extension-release")
    D("other-release-file", [d("./usr"), d("./usr/lib"), d("./usr/lib/extension-release.d"),
                             f("./usr/lib/extension-release.d/extension-release.other",
                               b"ID=_any\n")], "warned", "", "extension-release.other",
      note="systemd reads it if the image is ever named 'other': at least say so")
    D("confext-ld-so-preload", [d("./etc"), f("./etc/ld.so.preload", b"/tmp/evil.so\n")],
      "warned", "", "shadows-host", "etc/ld.so.preload")
    D("confext-shadow", [d("./etc"), f("./etc/shadow", b"root::0:0:::::\n", 0o640)], "warned",
      "", "shadows-host", "etc/shadow")
    D("confext-setuid", [d("./etc"), f("./etc/evil", b"\x7fELF", 0o4755)], "warned", "",
      "confext-noexec", "etc/evil")
    D("loader-shadowed", [d("./usr"), d("./usr/lib64"), f("./usr/lib64/ld-linux-x86-64.so.2",
                                                            b"\x7fELF", 0o755)], "warned", "",
      "shadows-host", "ld-linux")
    return cases


def write_all(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for case in generate(str(directory.resolve() / "outside")):
        path = directory / case.filename
        path.write_bytes(case.data)
        paths.append(path)
    return paths


if __name__ == "__main__":
    written = write_all(sys.argv[1] if len(sys.argv) > 1 else "hostile-corpus")
    print(f"{len(written)} archives written")
