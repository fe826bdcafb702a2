"""Against the real Debian 12 archive (the host's apt sources give the mirror): our closure of
strace, gdb, tcpdump and jq on a minimal base is what apt would install on that base.

The minimal base is derived on the fly, not shipped: every ``Priority: required`` package of
bookworm plus ``apt`` (what ``debootstrap --variant=minbase`` installs), closed over Depends and
Pre-Depends by the resolver under test. apt then judges the closure with a private dpkg status
file listing exactly that base (``apt-get install --simulate``, Recommends off), using its own
download of the same suites from the same mirror.

The test brings its own apt configuration: the mirror is read from the host's apt sources at run
time (a host may configure only ``bookworm``; the security archive is then the mirror's
``debian-security`` sibling), never from the host's suites or its package lists.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
from prereq import missing, require_tool
from recipes_kit import DEBIAN_12, recipe_dict, write_recipe_dict

from pipeline import recipe as recipe_mod
from pipeline.errors import InputError
from pipeline.sources import metadata
from pipeline.sources.fetch import Cache
from pipeline.sources.lock import _family, lock_recipe
from pipeline.sources.model import Atom
from pipeline.sources.solver import Base, Index, resolve

WANTED = ["strace", "gdb", "tcpdump", "jq"]
SUITES = ["bookworm", "bookworm-security"]

#: Where apt and we may legitimately differ, and why. Empty today: keep it that way, or explain.
KNOWN_DIFFERENCES: dict[str, str] = {}


KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def _archive() -> tuple[dict[str, str], str]:
    """({suite: URI}, keyring) for SUITES, from the host's apt sources read now (a host listing
    only bookworm gets bookworm-security from its debian-security sibling: metadata.host_mirror)."""
    try:
        found = {suite: metadata.host_mirror(suite) for suite in SUITES}
    except InputError as err:
        missing(str(err))
    uris = {suite: uri for suite, (uri, _) in found.items()}
    signed = found[SUITES[0]][1]
    keyring = signed or KEYRING
    if not Path(keyring).is_file():
        missing(f"{keyring} not found (apt-get install debian-archive-keyring)")
    return uris, keyring


def _recipe(directory: Path, base: str | None) -> Path:
    uris, keyring = _archive()
    spec = recipe_dict("debug", target={**DEBIAN_12, "base": base},
                       repository=[{"type": "deb", "mirror": uris[s], "suite": s,
                                    "keyring": keyring} for s in SUITES],
                       sources=[{"packages": WANTED}])
    return write_recipe_dict(directory, spec, "debug.toml")


def _apt(work: Path, *args: str) -> str:
    uris, keyring = _archive()
    for sub in ("lists/partial", "cache/archives/partial", "parts", "prefs"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    sources = work / "sources.list"
    if not sources.exists():
        sources.write_text("".join(f"deb [signed-by={keyring}] {uris[s]} {s} main\n"
                                   for s in SUITES))
    cmd = ["-o", f"Dir::Etc::sourcelist={sources}", "-o", f"Dir::Etc::sourceparts={work}/parts",
           "-o", f"Dir::Etc::preferencesparts={work}/prefs",
           "-o", f"Dir::State::Lists={work}/lists", "-o", f"Dir::Cache={work}/cache",
           "-o", f"Dir::State::status={work}/status", "-o", "Acquire::Languages=none",
           "-o", "APT::Architectures=amd64", "-o", "APT::Install-Recommends=false",
           "-o", "APT::Sandbox::User=root", "-o", "Debug::NoLocking=1"]
    proc = subprocess.run([args[0], *cmd, *args[1:]], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"{args}: {proc.stderr[-2000:]}")
    return proc.stdout


@pytest.mark.network
def test_closure_agrees_with_apt(tmp_path):
    require_tool("apt-get", "apt")
    require_tool("gpgv", "gpgv")
    _archive()
    cache = Cache(tmp_path / "cache")

    # 1. The minimal base, derived from the archive itself.
    plain = recipe_mod.load(_recipe(tmp_path, None))
    metas = [metadata.load(r, tmp_path, cache) for r in plain.repositories]
    family = _family(plain)
    index = Index(family, [p for m in metas for p in m.packages],
                  {r.name: i for i, r in enumerate(plain.repositories)})
    required = sorted({p.name for m in metas for p in m.packages
                       if p.rank == 0 and p.arch in ("amd64", "all")} | {"apt"})
    base = resolve(index, [Atom(n) for n in required], Base()).packages
    (tmp_path / "base.txt").write_text("".join(f"{p.name} {p.version}\n" for p in base))

    # 2. Our closure on that base, timed (metadata already in the cache: resolution proper).
    recipe = recipe_mod.load(_recipe(tmp_path, "base.txt"))
    start = time.monotonic()
    data, _ = lock_recipe(recipe, cache)
    seconds = time.monotonic() - start
    ours = {p["name"]: p["version"] for p in data["package"]}
    print(f"\nbase: {len(base)} packages; closure: {len(ours)} packages in {seconds:.1f}s "
          f"(warm metadata cache)")

    # 3. apt on a system whose dpkg status is exactly that base.
    work = tmp_path / "apt"
    work.mkdir()
    (work / "status").write_text("")
    _apt(work, "apt-get", "-q", "update")
    shown = _apt(work, "apt-cache", "show", *(f"{p.name}:{p.arch}={p.version}"
                                               if p.arch != "all" else f"{p.name}={p.version}"
                                               for p in base))
    stanzas, seen = [], set()
    for stanza in shown.strip().split("\n\n"):
        name = re.search(r"^Package: (\S+)", stanza, re.M).group(1)
        if name not in seen:
            seen.add(name)
            stanzas.append(stanza.replace("\nVersion:", "\nStatus: install ok installed\n"
                                          "Version:", 1))
    (work / "status").write_text("\n\n".join(stanzas) + "\n")
    sim = _apt(work, "apt-get", "-s", "-q", "install", *WANTED)
    theirs = dict(re.findall(r"^Inst (\S+) \((\S+)", sim, re.M))
    theirs = {name.split(":")[0]: version for name, version in theirs.items()}

    only_ours = sorted(set(ours) - set(theirs) - set(KNOWN_DIFFERENCES))
    only_apt = sorted(set(theirs) - set(ours) - set(KNOWN_DIFFERENCES))
    assert not only_ours and not only_apt, f"we add {only_ours}, apt adds {only_apt}"
    versions = {n: (ours[n], theirs[n]) for n in set(ours) & set(theirs) if ours[n] != theirs[n]}
    assert not versions, f"versions differ (ours, apt): {versions}"
