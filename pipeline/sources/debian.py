"""Debian archives: version comparison, dependency fields, Release/InRelease and Packages indices.

Nothing here needs dpkg or apt on the build host: versions compare as dpkg does
(``dpkg --compare-versions``, checked by the tests), relations are parsed as in Debian policy §7,
and a Release file's signature is checked with ``gpgv`` against the repository's keyring only —
the caller's own GnuPG keys never take part (a throw-away home directory per run).
"""

from __future__ import annotations

import base64
import datetime
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .. import tools
from ..errors import BuildError, InputError
from .model import Atom, Package, order_satisfies, split_epoch

# --- versions ------------------------------------------------------------------------------------


def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isdigit():
        return 0
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _verrevcmp(a: str, b: str) -> int:
    """dpkg's verrevcmp: alternating non-digit (lexical, ``~`` first) and digit runs."""
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) else 0
            bc = _order(b[j]) if j < len(b) else 0
            if ac != bc:
                return ac - bc
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def split_version(v: str) -> tuple[int, str, str]:
    epoch, rest = split_epoch(v)
    upstream, _, revision = rest.rpartition("-") if "-" in rest else (rest, "", "0")
    return epoch, upstream, revision


def compare_versions(a: str, b: str) -> int:
    """<0, 0, >0 as ``dpkg --compare-versions a lt/eq/gt b``."""
    if a == b:
        return 0
    ea, ua, ra = split_version(a)
    eb, ub, rb = split_version(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _verrevcmp(ua, ub) or _verrevcmp(ra, rb)


_OPS = {"<<": "<", "<=": "<=", "=": "=", ">=": ">=", ">>": ">", "<": "<=", ">": ">="}


def relation_holds(have: str, op: str, want: str) -> bool:
    return order_satisfies(compare_versions(have, want), op)


# --- relationship fields -------------------------------------------------------------------------

_ATOM = re.compile(r"^\s*([a-z0-9][a-z0-9+.\-]*)(?::([a-z0-9\-]+))?\s*"
                   r"(?:\(\s*(<<|<=|=|>=|>>|<|>)\s*([^)\s<>=][^)\s]*)\s*\))?\s*"
                   r"(?:\[[^\]]*\])?\s*(?:<[^>]*>\s*)*$")


_ATOMS: dict[str, Atom | None] = {}  # the same relations recur thousands of times in an index


def parse_atom(text: str, where: str = "") -> Atom:
    atom = _ATOMS.get(text)
    if atom is None:
        m = _ATOM.match(text)
        if not m:
            raise InputError(where or "dependency", f"cannot parse relation {text.strip()!r}")
        name, archq, op, version = m.groups()
        atom = _ATOMS[text] = Atom(name, _OPS[op] if op else None, version, archq)
    return atom


def parse_relations(text: str | None, where: str = "") -> tuple[tuple[Atom, ...], ...]:
    """``a (>= 1) | b, c:any`` → ((a>=1, b), (c:any,)): an AND of OR-groups."""
    if not text:
        return ()
    groups = []
    for group in text.replace("\n", " ").split(","):
        if group.strip():
            groups.append(tuple(parse_atom(alt, where) for alt in group.split("|")))
    return tuple(groups)


def parse_provides(text: str | None, where: str = "") -> tuple[tuple[str, str | None], ...]:
    result = []
    for group in parse_relations(text, where):
        for atom in group:
            result.append((atom.name, atom.version if atom.op == "=" else None))
    return tuple(result)


# --- deb822 stanzas ------------------------------------------------------------------------------

_WANTED = frozenset({
    "Package", "Version", "Architecture", "Depends", "Pre-Depends", "Recommends", "Provides",
    "Conflicts", "Breaks", "Multi-Arch", "Filename", "Size", "SHA256", "Priority", "Essential",
    "Status",
})


def stanzas(text: str, wanted: frozenset[str] | None = _WANTED) -> Iterator[dict[str, str]]:
    """deb822 paragraphs as dicts (only ``wanted`` fields; continuation lines joined)."""
    for para in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in para.split("\n"):
            if not line or line[0] == "#":
                continue
            if line[0] in " \t":
                if key is not None:
                    fields[key] += "\n" + line.strip()
                continue
            k, sep, v = line.partition(":")
            if not sep:
                continue
            if wanted is None or k in wanted:
                key = k
                fields[k] = v.strip()
            else:
                key = None
        if fields:
            yield fields


PRIORITIES = {"required": 0, "important": 1, "standard": 2, "optional": 3, "extra": 4}


def package_from_stanza(f: dict[str, str], repo: str, where: str) -> Package:
    name = f["Package"]
    here = f"{where}: {name}"
    return Package(
        name=name,
        version=f["Version"],
        arch=f.get("Architecture", "all"),
        repo=repo,
        path=f.get("Filename", ""),
        size=int(f.get("Size", 0) or 0),
        sha256=f.get("SHA256", ""),
        depends=parse_relations(f.get("Pre-Depends"), here) + parse_relations(f.get("Depends"),
                                                                               here),
        recommends=parse_relations(f.get("Recommends"), here),
        conflicts=tuple(a for g in parse_relations(f.get("Conflicts"), here) +
                        parse_relations(f.get("Breaks"), here) for a in g),
        provides=parse_provides(f.get("Provides"), here),
        multi_arch=f.get("Multi-Arch", "no"),
        rank=PRIORITIES.get(f.get("Priority", "optional"), 3),
        essential=f.get("Essential") == "yes",
    )


def parse_packages(text: str, repo: str, where: str) -> list[Package]:
    result = []
    for f in stanzas(text):
        if "Package" not in f or "Version" not in f:
            continue
        if not f.get("Filename") or not re.fullmatch(r"[0-9a-f]{64}", f.get("SHA256", "")):
            raise InputError(f"{where}: {f['Package']}", "index entry without Filename/SHA256")
        result.append(package_from_stanza(f, repo, where))
    return result


def parse_dpkg_status(text: str, where: str) -> list[Package]:
    """Installed packages of a dpkg status file (an OS tree used as the base)."""
    result = []
    for f in stanzas(text):
        if "Package" in f and "Version" in f and f.get("Status", "").endswith(" installed"):
            result.append(package_from_stanza(f, "base", where))
    return result


# --- Release files -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    fields: dict[str, str]
    sha256: dict[str, tuple[str, int]]  # index path → (sha256, size)

    @property
    def date(self) -> str:
        return self.fields.get("Date", "")

    @property
    def by_hash(self) -> bool:
        return self.fields.get("Acquire-By-Hash", "no").lower() == "yes"


def parse_release(text: str, where: str) -> Release:
    fields = next(stanzas(text, None), {})
    hashes = {}
    for line in fields.get("SHA256", "").splitlines():
        parts = line.split()
        if len(parts) == 3:
            hashes[parts[2]] = (parts[0], int(parts[1]))
    if not hashes:
        raise InputError(where, "Release file lists no SHA256 hashes",
                         "the repository is broken or not a Debian archive")
    return Release(fields, hashes)


def check_release_identity(release: Release, suite: str, where: str,
                           now: datetime.datetime | None = None, *,
                           snapshot: bool = False) -> None:
    """Refuse a Release that is expired or is another suite's, as apt does.

    ``snapshot``: the repository is a snapshot archive (the recipe says ``snapshot = true``):
    its Release is a fixed past state whose Valid-Until has passed by design, so expiry is not
    checked (apt's ``Check-Valid-Until=no``); the suite still is.

    A signature only says the archive made the file, not when or for which suite: a mirror (or
    an attacker in between) could serve an old signed Release to hold back security updates
    (replay: ``Valid-Until`` bounds it) or a signed Release of another suite under the requested
    path (mix-up: its Suite/Codename says so)."""
    fields = release.fields
    names = list(dict.fromkeys(fields[k] for k in ("Suite", "Codename") if fields.get(k)))
    if names and suite not in names and suite.rsplit("/", 1)[0] not in names:
        raise InputError(where, f"is for {' / '.join(names)}, not the requested suite {suite}",
                         "the mirror serves another suite under this name (replay or mix-up); "
                         "check the mirror, or set suite to what it really is")
    valid_until = fields.get("Valid-Until")
    if valid_until and not snapshot:
        import email.utils  # here, not at the top: a build from a fresh lock never needs it

        try:
            until = email.utils.parsedate_to_datetime(valid_until)
        except (TypeError, ValueError):
            raise InputError(where, f"Valid-Until {valid_until!r} is not a date",
                             "the archive is broken") from None
        if until.tzinfo is None:
            until = until.replace(tzinfo=datetime.timezone.utc)
        now = now or datetime.datetime.now(datetime.timezone.utc)
        if until < now:
            raise InputError(where, f"expired: Valid-Until {valid_until} has passed",
                             "the mirror serves outdated metadata (a replay, or a stale "
                             "mirror): use another mirror or wait for it to sync; for a "
                             "snapshot archive set snapshot = true on its [[repository]]")


def dearmor(data: bytes) -> bytes:
    """ASCII-armored OpenPGP key(s) → binary (gpgv --keyring wants binary)."""
    if not data.lstrip().startswith(b"-----BEGIN"):
        return data
    out = b""
    for block in re.findall(rb"-----BEGIN PGP [A-Z ]+-----\r?\n(.*?)-----END PGP", data, re.S):
        body = block.split(b"\n\n", 1)[-1] if b"\n\n" in block else block
        lines = [ln.strip() for ln in body.splitlines()
                 if ln.strip() and not ln.startswith(b"=") and b":" not in ln]
        out += base64.b64decode(b"".join(lines))
    return out


def gpg_verify(keyring: Path | list[Path], signed: bytes, signature: bytes | None,
               where: str) -> bytes:
    """Verify with ``gpgv`` against ``keyring`` only (one file, or several whose keys are all
    trusted, as apt's trusted.gpg.d); return the signed text gpgv vouches for.

    ``signature=None``: ``signed`` is clear-signed (InRelease) and gpgv's ``--output`` is the
    content (never our own parse of the clear-signed text). Otherwise a detached signature.
    """
    rings = keyring if isinstance(keyring, list) else [keyring]
    key_bytes = b""
    for ring_file in rings:
        try:
            key_bytes += dearmor(Path(ring_file).read_bytes())
        except OSError as exc:
            raise InputError(str(ring_file), f"cannot read keyring: {exc.strerror}") from None
    label = str(rings[0]) if len(rings) == 1 else \
        f"{rings[0].parent}/{{{','.join(r.name for r in rings)}}}"
    with tempfile.TemporaryDirectory(prefix="sysext-gpgv-") as tmp:
        home = Path(tmp)
        home.chmod(0o700)
        ring = home / "keyring.gpg"
        ring.write_bytes(key_bytes)
        data = home / "data"
        data.write_bytes(signed)
        args = ["--homedir", home, "--keyring", ring, "--status-fd", "1"]
        if signature is None:
            out = home / "out"
            args += ["--output", out, data]
        else:
            sig = home / "data.sig"
            sig.write_bytes(signature)
            args += [sig, data]
        try:
            proc = tools.run("gpgv", args, what="verifying the signature")
        except BuildError as exc:
            raise InputError(where, "signature verification failed",
                             f"not signed by a key in {label}: {exc.hint}") from None
        if b"[GNUPG:] VALIDSIG" not in proc.stdout:
            raise InputError(where, "no valid signature", f"gpgv did not vouch for it ({label})")
        return (home / "out").read_bytes() if signature is None else signed
