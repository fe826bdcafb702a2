"""Signed images and the certificates systemd verifies them with (``verity.d``).

An image is signed when it is a DDI with a non-empty ``*-verity-sig`` partition, or a plain image
with a detached ``NAME.roothash.p7s`` next to it. systemd ≤258 refuses to activate a signed image
whose signature neither the kernel keyring nor a certificate in ``verity.d`` (/etc, /run,
/usr/local/lib, /usr/lib) verifies — and since sysext.c's merge child returns that error, the whole
merge fails (rule ``signature.untrusted``); 259+ falls back to unsigned verity where the image
policy allows it. ``check``, ``install`` and ``doctor`` all ask :func:`state`, so they agree.

The kernel keyring cannot be read from here: a certificate only there is not seen, which the
rule's text says.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..systemd import rules

UNSIGNED, TRUSTED, UNTRUSTED = "unsigned", "trusted", "untrusted"


@dataclass(frozen=True)
class SignatureState:
    status: str  # unsigned | trusted | untrusted
    certificates: tuple[Path, ...] = ()  # installed verity.d certificates (real paths)
    verified_by: Path | None = None  # the one that verifies it (trusted)
    where: str = ""  # what carries the signature: 'NAME.roothash.p7s' or 'root-verity-sig'
    unusable: tuple[str, ...] = ()  # installed certificates that cannot be read, with why


def signature_carrier(path: Path) -> str | None:
    """What carries ``path``'s signature (None: the image is not signed). A partition table or
    file that cannot be read is an error (a PipelineError naming the file), not "unsigned"."""
    from ..image.ddi.gpt import has_gpt, read_gpt
    from ..systemd import partitions

    path = Path(path)
    p7s = Path(str(path).removesuffix(".raw") + ".roothash.p7s")
    if p7s.is_file() and p7s.stat().st_size:
        return p7s.name
    if not path.is_file() or not has_gpt(path):
        return None
    for part in read_gpt(path).partitions:
        found = partitions.lookup(part.type_uuid)
        if found and found[0].endswith("-verity-sig") and _has_content(path, part):
            return found[0]
    return None


def _has_content(path: Path, part) -> bool:
    """An unsigned build reserves the signature partition and leaves it zero-filled."""
    try:
        with open(path, "rb") as fh:
            fh.seek(part.offset)
            return fh.read(min(part.size, 4096)).strip(b"\0") != b""
    except OSError as err:
        raise InputError(str(path), f"cannot read the signature partition: "
                         f"{(err.strerror or str(err)).lower()}") from None


def certificates(base: Path) -> tuple[Path, ...]:
    """The ``*.crt`` files systemd reads from verity.d inside ``base``, in its order."""
    return tuple(c for d in rules.VERITY_DIRS for c in sorted((Path(base) / d.lstrip("/"))
                                                               .glob("*.crt")))


def state(path: Path, base: Path) -> SignatureState:
    """Whether ``path`` is signed and whether a certificate installed in ``base`` verifies it
    (remembered per file version and certificate set: doctor and check ask more than once)."""
    path = Path(path)
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        stamp = None
    certs = certificates(base)
    return _state(path, stamp, certs)


@functools.lru_cache(maxsize=256)
def _state(path: Path, _stamp: int | None, certs: tuple[Path, ...]) -> SignatureState:
    """A certificate that cannot be read or parsed cannot verify anything (systemd skips it
    too): it is named in ``unusable``. Anything wrong with the image itself is raised."""
    from ..image.ddi.inspect import inspect_image
    from ..keys import load_certificate

    where = signature_carrier(path)
    if where is None:
        return SignatureState(UNSIGNED)
    unusable = []
    for cert in certs:
        try:
            load_certificate(cert)
        except InputError as err:
            unusable.append(err.line())
            continue
        report = inspect_image(Path(path), cert=cert)
        if (report.get("signature") or {}).get("verified"):
            return SignatureState(TRUSTED, certs, cert, where, tuple(unusable))
    return SignatureState(UNTRUSTED, certs, None, where, tuple(unusable))
