"""Level 2: what wraps the file system — a DDI's GPT, partitions, verity superblock, root hash and
signature partition; a plain image's detached ``NAME.verity``/``.roothash``/``.roothash.p7s``.
From the image files when both sides have them, else from the manifests' ``ddi``/``verity``.

What is a cause here: a different target architecture (partition types), other partition labels
or flags, other verity parameters, a different signer, a data partition that differs under the
same root hash, a hash tree that differs over the same data. What only follows: partition
contents (explained by the file system levels below), and everything derived from the seed or
from sizes (disk and partition UUIDs, verity salt and UUID, root hash, LBAs), which any other
difference changes too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...digest import hash_file
from ...errors import InputError
from ...image import fsinfo
from ...image.ddi.signature import signer_of
from ...stages.manifest import Ddi
from .report import short

#: A verity superblock's fields: derived ones follow from the seed or the data's size.
VERITY_FIELDS = ("salt", "uuid", "algorithm", "data_block_size", "hash_block_size", "data_blocks",
                 "version", "hash_type")
VERITY_DERIVED = ("salt", "uuid", "data_blocks")
#: The manifest model's VerityParams attribute → the superblock field it records (in the
#: order of their JSON names).
VERITY_MANIFEST = {"data_block_size": "data_block_size", "hash_algorithm": "algorithm",
                   "hash_block_size": "hash_block_size", "salt": "salt",
                   "superblock_uuid": "uuid"}
#: Causes that account for the signature alone, not for a data partition that differs too.
SIGNATURE_FIELDS = ("signature.present", "signature.certificate_fingerprint", "signature.bytes")


def compare(d):
    """Compare the containers; returns ((image, offset, size) of A's file system, same for B)
    when both file systems can be read from image files and differ, else (None, None)."""
    a, b, r = d.a, d.b, d.r
    if a.is_file and b.is_file:
        ga, gb = a.is_ddi, b.is_ddi
        if ga and gb:
            return _ddi_images(d)
        if ga != gb:
            r.levels["container"] = "differs"
            r.add("container", "format", "ddi" if ga else "plain", "ddi" if gb else "plain",
                  "one image is a DDI, the other a plain file system")
            return None, None
        fs = (a.image, 0, None), (b.image, 0, None)
        if not compare_detached(d):
            r.levels.setdefault("container", "differs")
        else:
            r.levels["container"] = "n/a: plain file system images"
        return fs
    da = a.manifest.ddi if a.manifest is not None else None
    db = b.manifest.ddi if b.manifest is not None else None
    if da is not None and db is not None:
        _ddi_manifests(d, da, db)
    elif not compare_detached(d):
        r.levels.setdefault("container", "differs")
    else:
        r.levels["container"] = "n/a"
    return None, None


# -- detached verity ----------------------------------------------------------------------------

@dataclass
class _Detached:
    """One side's detached verity, from its files (the truth when present) or its manifest."""

    source: str  # "files" | "manifest"
    verity_path: Path | None
    verity_sha: str | None
    root_hash: str | None
    signed: bool
    signer: str | None
    signature: bytes | None
    params: dict


def _detached_view(side) -> _Detached | None:
    from ...image.ddi.reader import open_image

    if side.is_ddi:
        return None  # its verity is inside; a NAME.roothash next to it is for offline signing
    if side.is_file:
        read = open_image(side.image)
        files = read.detached
        if files is None or (files.verity, files.roothash, files.p7s) == (None, None, None):
            return None
        vf, pf = files.verity, files.p7s
        params = {}
        sb = read.superblock()
        if sb is not None:
            params = {f: getattr(sb, f) for f in VERITY_FIELDS}
            params["salt"] = sb.salt.hex()
        der = pf.read_bytes() if pf else None  # as it is (a PEM one names no signer here)
        return _Detached("files", vf, hash_file(vf)[0] if vf else None,
                         read.root_hash if files.roothash else None,
                         pf is not None, signer_of(der) if der else None, der, params)
    m = side.manifest.verity if side.manifest is not None else None
    if m is None:
        return None
    params = {ours: getattr(m.verity, theirs) for theirs, ours in VERITY_MANIFEST.items()}
    return _Detached("manifest", None, m.verity_sha256, m.root_hash,
                     bool(m.signature_file or m.certificate_fingerprint),
                     m.certificate_fingerprint, None, params)


def detached_same(d) -> bool:
    """Whether both sides' detached verity agree (for two plain images whose bytes are equal):
    image bytes alone do not make two builds identical when their .verity or .p7s differ."""
    return compare_detached(d, record=False)


def compare_detached(d, *, record: bool = True) -> bool:
    """Compare NAME.verity/.roothash/.roothash.p7s (or the manifests' ``verity``); record the
    differences when ``record``; return whether they are the same."""
    r = d.r
    la, lb = r.labels
    va, vb = _detached_view(d.a), _detached_view(d.b)
    findings: list[tuple] = []

    def add(*args, **kw):
        findings.append((args, kw))

    if va is None and vb is None:
        return True
    if va is None or vb is None:
        add("container", "verity.file", va is not None, vb is not None,
            f"detached verity (NAME.verity) only {la if vb is None else lb}")
    else:
        if not d.unsigned:
            _compare_signers(add, r.labels, (va.signed, va.signer, va.signature, va.root_hash),
                             (vb.signed, vb.signer, vb.signature, vb.root_hash))
        keys = [k for k in VERITY_FIELDS if k in va.params and k in vb.params]
        params_differ = False
        for key in keys:
            x, y = va.params[key], vb.params[key]
            if x != y:
                params_differ = True
                add("container", f"verity.{key}", x, y,
                    f"detached verity superblock {key} {short(x)} → {short(y)}",
                    derived=key in VERITY_DERIVED)
        if va.root_hash != vb.root_hash:
            add("container", "root_hash", va.root_hash, vb.root_hash,
                f"root hash {short(va.root_hash)} → {short(vb.root_hash)}", derived=True)
        if va.verity_sha != vb.verity_sha:
            if va.verity_path and vb.verity_path and not params_differ and d.same_bytes:
                off = fsinfo.first_difference(va.verity_path, vb.verity_path)
                add("container", "verity.tree", None, off,
                    f"{vb.verity_path.name} differs at byte {off} with the same image and "
                    "verity parameters: one hash tree was modified")
            else:
                add("container", "verity.tree", va.verity_sha, vb.verity_sha,
                    "the verity hash trees differ", derived=True)
    if record:
        for args, kw in findings:
            r.add(*args, **kw)
        if findings:
            r.levels["container"] = "differs (detached verity)"
    return not findings


# -- DDIs from the image files ------------------------------------------------------------------

def _ddi_images(d):
    from ...image.ddi.reader import open_ddi

    r, add = d.r, d.r.add
    la, lb = r.labels
    ia, ib = d.a.image, d.b.image
    ra, rb = open_ddi(ia), open_ddi(ib)
    ta, tb = ra.table, rb.table
    va, vb = ra.verity_set, rb.verity_set
    ha, hb = ra.hashes()[0], rb.hashes()[0]
    before = len(r.findings)
    for fld in ("disk_uuid", "sector_size", "first_usable_lba", "last_usable_lba"):
        x, y = getattr(ta, fld), getattr(tb, fld)
        if x != y:
            add("container", f"gpt.{fld}", x, y, f"GPT {fld} {x} → {y}",
                derived=fld != "sector_size")

    pa = {_name(p): p for p in ta.partitions}
    pb = {_name(p): p for p in tb.partitions}
    data_differs = hash_differs = False
    for n in list(pa) + [n for n in pb if n not in pa]:
        x, y = pa.get(n), pb.get(n)
        if x is None or y is None:
            add("container", f"partitions.{n}", x and x.index, y and y.index,
                f"partition {n} only {la if y is None else lb}")
            continue
        is_sig = va is not None and x == va.signature
        if x.type_uuid != y.type_uuid:
            _type_finding(r, n, x.type_uuid, y.type_uuid)
        for fld in ("uuid", "name", "first_lba", "last_lba", "attributes"):
            if getattr(x, fld) != getattr(y, fld):
                add("container", f"partitions.{n}.{fld}", getattr(x, fld), getattr(y, fld),
                    f"partition {n} {fld} {short(getattr(x, fld))} → {short(getattr(y, fld))}",
                    derived=fld in ("uuid", "first_lba", "last_lba"))
        if ha[x.index] != hb[y.index] and not (is_sig and d.unsigned):
            add("container", f"partitions.{n}.sha256", ha[x.index], hb[y.index],
                f"partition {n} content differs (sha256 {short(ha[x.index])} → "
                f"{short(hb[y.index])})", explains=False)
            if va and vb and x == va.data:
                data_differs = True
            if va and vb and x == va.hash:
                hash_differs = True
    if va is None or vb is None:
        if len(r.findings) > before:
            r.levels["container"] = "differs"
            for f in r.findings[before:]:
                f.explains, f.derived = True, False  # no verity to reason with: say what is
        else:
            r.levels["container"] = "same"
        return None, None

    rha, rhb = va.root_hash_from_uuids(), vb.root_hash_from_uuids()
    if rha != rhb:
        add("container", "root_hash", rha, rhb, f"root hash {short(rha)} → {short(rhb)}",
            derived=True)
    sba, sbb = ra.superblock(), rb.superblock()
    params_differ = False
    if sba and sbb:
        for fld in VERITY_FIELDS:
            x, y = getattr(sba, fld), getattr(sbb, fld)
            if x != y:
                x, y = (x.hex(), y.hex()) if isinstance(x, bytes) else (x, y)
                params_differ = True
                add("container", f"verity.{fld}", x, y,
                    f"verity superblock {fld} {short(x)} → {short(y)}",
                    derived=fld in VERITY_DERIVED)
    elif bool(sba) != bool(sbb):
        add("container", "verity.superblock", bool(sba), bool(sbb),
            "verity superblock present in one image only")
    if not d.unsigned:
        _ddi_signatures(d, ra, rb)

    if data_differs:
        x, y = va.data, vb.data
        if rha == rhb:
            off = fsinfo.first_difference(ia, ib, x.offset, y.offset, min(x.size, y.size))
            where = ""
            try:
                sb = fsinfo.superblock(ia, x.offset)
                where = f", in the {fsinfo.region(sb, off)}" if off is not None else ""
            except InputError:
                pass
            add("container", f"partitions.{_name(x)}.data", None, off,
                f"data partition {_name(x)} differs at byte {off}{where} but the root hash is "
                "the same: one image's data no longer matches its verity tree (corrupted or "
                "modified after the build)")
        r.levels["container"] = "differs"
        return (ia, x.offset, x.size), (ib, y.offset, y.size)
    if hash_differs and not params_differ and va.hash.size == vb.hash.size:
        hash_name = _name(va.hash)
        off = fsinfo.first_difference(ia, ib, va.hash.offset, vb.hash.offset, va.hash.size)
        add("container", f"partitions.{hash_name}.tree", None, off,
            f"the verity hash tree differs at byte {off} of partition {hash_name} with the "
            "same data and verity parameters: one image's hash tree is corrupted or modified"
            + (" (the root hash differs too)" if rha != rhb else ""))
    r.levels["container"] = "differs" if len(r.findings) > before else "same"
    return None, None


def _ddi_signatures(d, ra, rb) -> None:
    """The two images' signature partitions (as image/ddi/reader.py read them)."""
    r = d.r
    la, lb = r.labels
    sa, sb = ra.signature, rb.signature
    raw_a, raw_b = sa and sa.raw, sb and sb.raw
    if raw_a == raw_b and (raw_a is not None or not ((sa and sa.error) or (sb and sb.error))):
        return
    for carried, label in ((sa, la), (sb, lb)):
        if carried is not None and carried.error is not None:
            r.add("container", "signature", None, None,
                  f"signature unreadable: {carried.error_line(f'{label} signature')}")
            return
    ba, bb = sa and sa.blob, sb and sb.blob
    _compare_signers(r.add, r.labels,
                     (ba is not None, ba and ba.fingerprint, ba and ba.der, ba and ba.root_hash),
                     (bb is not None, bb and bb.fingerprint, bb and bb.der, bb and bb.root_hash))


def _compare_signers(add, labels, a, b) -> None:
    """Two signatures as (signed, signer fingerprint, DER or None, signed root hash): who
    signed is a cause; what is signed follows from the root hash."""
    (sa, fa, da, ha), (sb, fb, db, hb) = a, b
    la, lb = labels
    if sa != sb:
        add("container", "signature.present", sa, sb,
            f"signed only {la if sa else lb} (the other is unsigned, e.g. built for offline "
            "signing)")
    elif sa and fa != fb:
        add("container", "signature.certificate_fingerprint", fa, fb,
            f"different signer: certificate {short(fa)} → {short(fb)}")
    elif sa and da is not None and db is not None and da != db:
        if ha == hb:
            add("container", "signature.bytes", None, None,
                "same signer and root hash, different signature bytes (ECDSA signatures differ "
                "on every signing; compare the unsigned image sha256)")
        else:
            add("container", "signature.root_hash", ha, hb,
                f"the same signer signs another root hash {short(ha)} → {short(hb)}",
                derived=True)


def _type_finding(r, n: str, xa: str, xb: str) -> None:
    from ...systemd import partitions as parts

    fa, fb = parts.lookup(xa), parts.lookup(xb)
    if fa and fb and fa[0] == fb[0] and fa[1] != fb[1]:
        r.add("container", f"partitions.{n}.type_uuid", xa, xb,
              f"different target architecture: {fa[1]} → {fb[1]} (partition {n} type)")
    else:
        r.add("container", f"partitions.{n}.type_uuid", xa, xb,
              f"partition {n} type {short(xa)} → {short(xb)}")


def _name(p) -> str:
    from ...systemd import partitions as parts

    found = parts.lookup(p.type_uuid)
    return found[0] if found else f"partition{p.index}"


# -- DDIs from the manifests --------------------------------------------------------------------

def _ddi_manifests(d, da: Ddi, db: Ddi) -> None:
    """Two DDIs as their manifests record them (the model's ``ddi`` sections)."""
    r, add = d.r, d.r.add
    la, lb = r.labels
    before = len(r.findings)
    if da.disk_uuid != db.disk_uuid:
        add("container", "gpt.disk_uuid", da.disk_uuid, db.disk_uuid,
            f"GPT disk_uuid {da.disk_uuid} → {db.disk_uuid}", derived=True)
    key = lambda p: p.designator or p.label  # noqa: E731
    pa = {key(p): p for p in da.partitions}
    pb = {key(p): p for p in db.partitions}
    for n in list(pa) + [n for n in pb if n not in pa]:
        x, y = pa.get(n), pb.get(n)
        if x is None or y is None:
            add("container", f"partitions.{n}", bool(x), bool(y),
                f"partition {n} only {la if y is None else lb}")
            continue
        if x.type_uuid != y.type_uuid:
            _type_finding(r, n, x.type_uuid, y.type_uuid)
        for fld in ("uuid", "label", "offset", "size", "flags"):
            vx, vy = getattr(x, fld), getattr(y, fld)
            if vx != vy:
                add("container", f"partitions.{n}.{fld}", vx, vy,
                    f"partition {n} {fld} {short(vx)} → {short(vy)}",
                    derived=fld in ("uuid", "offset", "size"))
        is_sig = str(n).endswith("-verity-sig")
        if x.sha256 != y.sha256 and not (is_sig and d.unsigned):
            add("container", f"partitions.{n}.sha256", x.sha256, y.sha256,
                f"partition {n} content differs", explains=False)
    for theirs, ours in VERITY_MANIFEST.items():
        vx, vy = getattr(da.verity, theirs), getattr(db.verity, theirs)
        if vx != vy:
            add("container", f"verity.{ours}", vx, vy, f"verity {ours} {short(vx)} → {short(vy)}",
                derived=ours in VERITY_DERIVED)
    if da.root_hash != db.root_hash:
        add("container", "root_hash", da.root_hash, db.root_hash,
            f"root hash {short(da.root_hash)} → {short(db.root_hash)}", derived=True)
    if not d.unsigned:
        fa, fb = da.certificate_fingerprint, db.certificate_fingerprint
        same_unsigned = da.unsigned_sha256 == db.unsigned_sha256
        _compare_signers(add, r.labels,
                         (bool(fa), fa, da.sha256 if same_unsigned else None, da.root_hash),
                         (bool(fb), fb, db.sha256 if same_unsigned else None, db.root_hash))
    r.levels["container"] = "differs" if len(r.findings) > before else "same"


def data_differs(r) -> bool:
    """Whether the container level found the data (root/usr) partitions or the plain file
    systems different: then the levels below explain them."""
    return any(f.field in ("partitions.root.sha256", "partitions.usr.sha256")
               for f in r.at("container"))
