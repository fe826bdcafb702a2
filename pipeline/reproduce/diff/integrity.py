"""Whether each image is still what it claims to be, on its own: a DDI's data partition against
its verity tree and root hash, a detached ``NAME.verity`` against ``NAME.raw`` and
``NAME.roothash``, a signature against the root hash (and the certificate it carries).

These run whenever two images differ, before anything is excused: a tampered image must be
called tampered even when the manifests also differ in a tool version or an epoch. They say
which side is broken, which a comparison of the two cannot.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import PipelineError
from .sides import Side


def problems(side: Side, *, signatures: bool = True) -> list[tuple[str, str]]:
    """(field, sentence) for each way ``side``'s image contradicts itself; [] without an image
    file or without verity."""
    if not side.is_file:
        return []
    try:
        if side.is_ddi:
            return _ddi(side.image, signatures)
        return _detached(side, signatures)
    except PipelineError as err:
        return [("integrity.unreadable", f"cannot be checked: {err.line()}")]


def _ddi(image: Path, signatures: bool) -> list[tuple[str, str]]:
    from ...image.ddi import reader

    read = reader.open_ddi(image)
    found = read.verity_set
    if found is None:
        return []
    root_hash = read.uuid_root_hash
    out = []
    ok, reason = read.check_verity(root_hash)
    if not ok:
        out.append(("integrity.verity", f"its {found.family} partition does not match the root "
                    f"hash its partition UUIDs give ({root_hash[:12]}…): {_first_line(reason)} — "
                    "the data or the hash tree was modified after the build"))
    carried = read.signature
    if signatures and carried is not None:
        if carried.error is not None:
            return out + [("integrity.signature", f"its signature partition is unreadable: "
                           f"{carried.error.what}")]
        if carried.blob is not None:
            out += _signature(read, carried.blob.root_hash, carried.blob.fingerprint, root_hash,
                              "its signature partition")
    return out


def _detached(side: Side, signatures: bool) -> list[tuple[str, str]]:
    from ...image.ddi import reader

    read = reader.open_image(side.image)
    detached = read.detached
    if detached is None or detached.verity is None or detached.roothash is None:
        return []
    verity_file, roothash_file = detached.verity, detached.roothash
    root_hash = read.root_hash or ""
    out = []
    ok, reason = read.check_verity(root_hash)
    if not ok:
        out.append(("integrity.verity", f"{verity_file.name} does not verify {side.image.name} "
                    f"against {roothash_file.name} ({root_hash[:12]}…): {_first_line(reason)} — "
                    "the image or its hash tree was modified after the build"))
    carried = read.signature
    if signatures and carried is not None:
        if carried.error is not None:
            return out + [("integrity.signature", f"{carried.where} is unreadable: "
                           f"{carried.error.what}")]
        out += _signature(read, root_hash, None, root_hash, carried.where)
    return out


def _signature(read, signed_hash: str, claimed: str | None, root_hash: str,
               what: str) -> list[tuple[str, str]]:
    """A signature against the root hash and the certificate it carries (its own consistency:
    whether that certificate is trusted is for the host's verity.d, not for diff)."""
    from ...keys import fingerprint

    if signed_hash != root_hash:
        return [("integrity.signature", f"{what} is for root hash {signed_hash[:12]}…, the "
                 f"image's is {root_hash[:12]}…: it belongs to another image")]
    certs = read.signature.blob.embedded_certificates()
    if not certs:
        return []  # made with -nocerts: only a certificate from outside could check it
    if claimed and claimed not in {fingerprint(c) for c in certs}:
        return [("integrity.signature", f"{what} names certificate {claimed[:12]}…, but the "
                 f"signature carries {fingerprint(certs[0])[:12]}…")]
    ok, reason = read.check_signature(certs[0], root_hash)
    if not ok:
        return [("integrity.signature", f"{what} does not verify over root hash "
                 f"{root_hash[:12]}… with the certificate it carries: {reason}")]
    return []


def _first_line(text: str) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else "verification failed"


