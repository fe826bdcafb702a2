"""Repository metadata: where a repository is, and its verified package index.

Every index file is checked against the hash its signed root (InRelease/Release, repomd.xml)
lists before it is parsed, and kept in the content-addressed cache under that hash, so a second
``lock`` downloads only the small root file. Mirror URLs are expanded here, at run time, and never
written anywhere: ``mirror = "host"`` reads the build host's apt sources, ``$VAR`` the environment.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..formats.compression import open_decompressed
from ..recipe import Repository
from . import debian, rpmmd
from .fetch import Cache, DownloadError, http_download
from .model import Package

APT_ETC = Path("/etc/apt")


@dataclass(frozen=True)
class Metadata:
    repository: Repository
    packages: list[Package]
    root_file: str  # "InRelease" | "Release" | "repomd.xml"
    root_sha256: str
    date: str


# --- where -------------------------------------------------------------------------------------


def host_sources(apt_etc: Path = APT_ETC) -> list[dict]:
    """The host's ``deb`` sources: [{"uri", "suites", "components", "signed_by"}] in apt order."""
    result = []
    files = [apt_etc / "sources.list"] + sorted((apt_etc / "sources.list.d").glob("*"))
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in debian.stanzas(text, None):
                if "deb" not in stanza.get("Types", "").split():
                    continue
                if stanza.get("Enabled", "yes").lower() == "no":
                    continue
                for uri in stanza.get("URIs", "").split():
                    result.append({"uri": uri, "suites": stanza.get("Suites", "").split(),
                                   "components": stanza.get("Components", "").split(),
                                   "signed_by": stanza.get("Signed-By")})
        elif path.suffix == ".list" or path.name == "sources.list":
            for line in text.splitlines():
                m = re.match(r"^\s*deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
                if m:
                    signed = re.search(r"signed-by=(\S+)", m[1] or "")
                    result.append({"uri": m[2], "suites": [m[3]], "components": m[4].split(),
                                   "signed_by": signed[1] if signed else None})
    return result


def host_mirror(suite: str, apt_etc: Path = APT_ETC) -> tuple[str, str | None]:
    """(URI, Signed-By path or None) of the host's apt source carrying ``suite``.

    A minimal Debian (debootstrap, mmdebstrap, many containers) lists only its release suite. Its
    companion suites live where Debian's archive layout puts them, so they are derived from the
    host's source of the release suite: ``S-updates``, ``S-backports`` and
    ``S-proposed-updates`` in the same archive, ``S-security`` in the sibling archive
    ``…/debian-security`` when the release suite's archive is a ``…/debian`` one. The Release file
    of the derived source is verified like any other (with the same keys)."""
    sources = host_sources(apt_etc)
    for source in sources:
        if suite in source["suites"]:
            return source["uri"], _signed_by(source)
    base, _, companion = suite.partition("-")
    for source in sources if companion else ():
        if base not in source["suites"]:
            continue
        uri = source["uri"].rstrip("/")
        if companion in ("updates", "backports", "proposed-updates"):
            return uri, _signed_by(source)
        if companion == "security" and uri.endswith("/debian"):
            return uri + "-security", _signed_by(source)
    raise InputError(f"mirror = \"host\" (suite {suite})",
                     f"no deb source for suite {suite} in {apt_etc}/sources.list(.d)",
                     "add one, or give the mirror's URL or $ENV_VAR in the recipe")


def _signed_by(source: dict) -> str | None:
    signed = source["signed_by"]
    return None if signed and "\n" in signed else signed  # an inline key block: not a path


def expand(value: str, where: str) -> str:
    def env(m):
        name = m.group(1) or m.group(2)
        if not os.environ.get(name):
            raise InputError(where, f"${name} is not set", f"export {name}=URL")
        return os.environ[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", env, value)


def base_url(repo: Repository) -> str:
    """The repository's root URL on this machine, without a trailing slash."""
    where = f"repository {repo.name}"
    if repo.type == "deb" and repo.url == "host":
        return host_mirror(repo.suite)[0].rstrip("/")
    return expand(repo.url, where).rstrip("/")


def _keyring(repo: Repository, recipe_dir: Path, apt_etc: Path = APT_ETC
             ) -> Path | list[Path] | None:
    if repo.keyring:
        return (recipe_dir / expand(repo.keyring, f"repository {repo.name}.keyring")).resolve()
    if repo.type == "deb" and repo.url == "host":
        signed = host_mirror(repo.suite, apt_etc)[1]
        if signed:
            return Path(signed)
        return apt_trusted_keyrings(apt_etc) or None
    return None


def apt_trusted_keyrings(apt_etc: Path = APT_ETC) -> list[Path]:
    """What apt trusts for a source without Signed-By: trusted.gpg and trusted.gpg.d/*.gpg|*.asc
    (a minimal or container Debian has its archive keys only there)."""
    rings = [apt_etc / "trusted.gpg"] + sorted(
        p for p in (apt_etc / "trusted.gpg.d").glob("*") if p.suffix in (".gpg", ".asc"))
    return [p for p in rings if p.is_file()]


# --- fetching ----------------------------------------------------------------------------------


#: Root files (InRelease, Release, its signature, repomd.xml) are read into memory: a server
#: that sends more is cut off (Debian's largest InRelease is well under 1 MiB).
MAX_ROOT_FILE = 64 << 20


def _get(url: str, cache: Cache) -> bytes:
    with cache.tmpdir() as tmp:
        http_download(url, tmp / "file", max_size=MAX_ROOT_FILE,
                      recorded_by="a repository root file may have")
        return (tmp / "file").read_bytes()


def _get_if_present(url: str, cache: Cache) -> bytes | None:
    """The file at ``url``, or None when the server has none (404): for optional files."""
    try:
        return _get(url, cache)
    except DownloadError as exc:
        if exc.status != 404:
            raise
        return None


def _indexed(cache: Cache, urls: list[str], sha256: str, where: str,
             size: int | None = None) -> Path:
    """A metadata file by its expected hash (and size, which bounds the download): from the
    cache, else the first URL that works."""
    cached = cache.lookup(sha256)
    if cached is not None:
        return cached[0]
    error = None
    for url in urls:
        with cache.tmpdir() as tmp:
            try:
                http_download(url, tmp / "file", max_size=size,
                              recorded_by="the root file records")
                return cache.store(tmp / "file", sha256, where)[0]
            except DownloadError as exc:
                error = exc
                if exc.status != 404:
                    raise
    raise error


def _decompressed_text(path: Path, name: str) -> str:
    with open(path, "rb") as raw:
        head = raw.read(6)
        raw.seek(0)
        if name.endswith((".xz", ".gz", ".zst", ".bz2", ".lzma")) or head.startswith(
                (b"\xfd7zXZ", b"\x1f\x8b", b"\x28\xb5\x2f\xfd")):
            stream = open_decompressed(raw, name.rsplit(".", 1)[-1], name)
            data = b"".join(iter(lambda: stream.read(1 << 20), b""))
            return data.decode("utf-8", errors="replace")
        return raw.read().decode("utf-8", errors="replace")


def load_deb(repo: Repository, recipe_dir: Path, cache: Cache) -> Metadata:
    root = base_url(repo)
    dists = f"{root}/dists/{repo.suite}"
    where = f"repository {repo.name} ({repo.suite})"
    keyring = _keyring(repo, recipe_dir)
    if keyring is None and not repo.allow_unsigned:
        raise InputError(f"repository {repo.name}", "no keyring to verify the Release file with",
                         "set keyring = PATH (or allow_unsigned = true for a test archive)")
    if keyring is None:
        raw = _get(f"{dists}/Release", cache)
        text, root_file = raw.decode("utf-8", errors="replace"), "Release"
    elif (raw := _get_if_present(f"{dists}/InRelease", cache)) is not None:
        text = debian.gpg_verify(keyring, raw, None, f"{where}: InRelease").decode(
            "utf-8", errors="replace")
        root_file = "InRelease"
    else:
        raw = _get(f"{dists}/Release", cache)
        sig = _get_if_present(f"{dists}/Release.gpg", cache)
        if sig is None:
            raise InputError(f"{where}", "the Release file is not signed (no InRelease, no "
                             "Release.gpg)", f"a keyring is given: {keyring}")
        debian.gpg_verify(keyring, raw, sig, f"{where}: Release.gpg")
        text, root_file = raw.decode("utf-8", errors="replace"), "Release"
    release = debian.parse_release(text, f"{where}: {root_file}")
    debian.check_release_identity(release, repo.suite, f"{where}: {root_file}",
                                  snapshot=repo.snapshot)
    arches = list(repo.architectures)
    # binary-all/Packages only when the archive does not also list arch:all packages in every
    # architecture's index (Debian says so with "No-Support-for-Architecture-all: Packages").
    if "all" in release.fields.get("Architectures", "").split() and \
            release.fields.get("No-Support-for-Architecture-all", "") != "Packages":
        arches.append("all")
    packages: dict[tuple[str, str, str], Package] = {}
    for component in repo.components:
        for arch in arches:
            base = f"{component}/binary-{arch}/Packages"
            choice = next((base + ext for ext in (".xz", ".gz", "") if base + ext in
                           release.sha256), None)
            if choice is None:
                raise InputError(where, f"the Release file lists no {base}(.xz|.gz)",
                                 "check suite, components and architectures")
            sha, size = release.sha256[choice]
            urls = [f"{dists}/{choice}"]
            if release.by_hash:
                urls.insert(0, f"{dists}/{component}/binary-{arch}/by-hash/SHA256/{sha}")
            path = _indexed(cache, urls, sha, f"{where}: {choice}", size)
            for pkg in debian.parse_packages(_decompressed_text(path, choice), repo.name,
                                             f"{where}: {choice}"):
                packages.setdefault((pkg.name, pkg.version, pkg.arch), pkg)
    return Metadata(repo, list(packages.values()), root_file,
                    hashlib.sha256(raw).hexdigest(), release.date)


def load_rpmmd(repo: Repository, recipe_dir: Path, cache: Cache) -> Metadata:
    root = base_url(repo)
    where = f"repository {repo.name}"
    raw = _get(f"{root}/repodata/repomd.xml", cache)
    keyring = _keyring(repo, recipe_dir)
    if keyring is not None:
        sig = _get_if_present(f"{root}/repodata/repomd.xml.asc", cache)
        if sig is None:
            raise InputError(where, "repomd.xml is not signed (no repomd.xml.asc)",
                             f"gpgkey is given: {keyring}")
        debian.gpg_verify(keyring, raw, sig, f"{where}: repomd.xml")
    repomd = rpmmd.parse_repomd(raw, f"{where}: repomd.xml")
    primary = repomd["primary"]
    if primary["checksum_type"] != "sha256":
        raise InputError(where, f"primary metadata checksum is {primary['checksum_type']}",
                         "only sha256 repositories are supported")
    path = _indexed(cache, [f"{root}/{primary['href']}"], primary["checksum"],
                    f"{where}: {primary['href']}")
    name = primary["href"]
    with open(path, "rb") as raw_stream:
        head = raw_stream.read(6)
        raw_stream.seek(0)
        if head.startswith(b"<?xml") or head.startswith(b"<"):
            packages = rpmmd.parse_primary(raw_stream, repo.name, f"{where}: {name}")
        else:
            stream = open_decompressed(raw_stream, name.rsplit(".", 1)[-1], name)
            packages = rpmmd.parse_primary(stream, repo.name, f"{where}: {name}")
    return Metadata(repo, packages, "repomd.xml", hashlib.sha256(raw).hexdigest(),
                    repomd[""]["revision"])


def load(repo: Repository, recipe_dir: Path, cache: Cache) -> Metadata:
    return (load_deb if repo.type == "deb" else load_rpmmd)(repo, recipe_dir, cache)
