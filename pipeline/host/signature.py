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

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..image.ddi import reader
from ..systemd import rules

UNSIGNED, TRUSTED, UNTRUSTED = "unsigned", "trusted", "untrusted"


@dataclass(frozen=True)
class SignatureState:
    status: str  # unsigned | trusted | untrusted
    certificates: tuple[Path, ...] = ()  # installed verity.d certificates (real paths)
    verified_by: Path | None = None  # the one that verifies it (trusted)
    where: str = ""  # what carries the signature: 'NAME.roothash.p7s' or 'root-verity-sig'
    unusable: tuple[str, ...] = ()  # installed certificates that cannot be read, with why
    verity: tuple[bool, str] | None = None  # the verity tree's check (None: no verity)


def signature_carrier(path: Path) -> str | None:
    """What carries ``path``'s signature (None: the image is not signed). A partition table or
    file that cannot be read is an error (a PipelineError naming the file), not "unsigned"."""
    path = Path(path)
    p7s = Path(str(path).removesuffix(".raw") + ".roothash.p7s")
    if p7s.is_file() and p7s.stat().st_size:
        return p7s.name
    if not path.is_file():
        return None
    image = reader.open_image(path)
    if image.table is None:
        return None
    carried = image.signature
    return carried.where if carried is not None and carried.present else None


def certificates(base: Path) -> tuple[Path, ...]:
    """The ``*.crt`` files systemd reads from verity.d inside ``base``, in its order."""
    return tuple(c for d in rules.VERITY_DIRS for c in sorted((Path(base) / d.lstrip("/"))
                                                               .glob("*.crt")))


def state(path: Path, base: Path) -> SignatureState:
    """Whether ``path`` is signed and whether a certificate installed in ``base`` verifies it.
    The image is read, its verity tree checked and its signature checked against each
    certificate once for the run (image/ddi/reader.py remembers them per file version and
    certificate): doctor and check ask more than once.

    A certificate that cannot be read or parsed cannot verify anything (systemd skips it too):
    it is named in ``unusable``. Anything wrong with the image itself is raised."""
    from ..keys import load_certificate

    path = Path(path)
    where = signature_carrier(path)
    if where is None:
        return SignatureState(UNSIGNED)
    certs = certificates(base)
    usable, unusable = [], []
    for cert in certs:
        try:
            usable.append((cert, load_certificate(cert)))
        except InputError as err:
            unusable.append(err.line())
    if not path.is_file():
        raise InputError(str(path), "not a regular file", "inspect takes an image file")
    verdict = reader.verify(path, [c for _, c in usable])
    by = None if verdict.verified_by is None else usable[verdict.verified_by][0]
    return SignatureState(TRUSTED if by is not None else UNTRUSTED, certs, by, where,
                          tuple(unusable), verdict.verity)
