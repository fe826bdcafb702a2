"""A private apt configuration for tests that run the real apt-get: its own sources, keyrings,
lists, cache and status, named through ``APT_CONFIG`` (which the pipeline passes on to apt-get).
The host's apt state is neither read for packages nor written, so a test never depends on which
suites the host happens to list."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from pipeline.sources import metadata


def private_apt(directory: Path, sources: list[str], *, trusted_parts: Path | None = None,
                local: bool = False) -> dict:
    """Write the configuration under ``directory`` with these ``deb …`` lines, run ``apt-get
    update`` in it; the environment (``APT_CONFIG``) that makes apt-get use it. ``local``: the
    sources are on 127.0.0.1 (no proxy)."""
    apt = directory
    for sub in ("lists/partial", "archives/partial", "sources.list.d", "trusted.gpg.d",
                "preferences.d", "apt.conf.d"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / "status").write_text("")
    (apt / "sources.list").write_text("".join(f"{line}\n" for line in sources))
    parts = trusted_parts or apt / "trusted.gpg.d"
    config = apt / "apt.conf"
    config.write_text("\n".join([
        'APT::Architecture "amd64";', 'APT::Architectures { "amd64"; };',
        f'Dir::Etc::sourcelist "{apt}/sources.list";',
        f'Dir::Etc::sourceparts "{apt}/sources.list.d";',
        f'Dir::Etc::trusted "{apt}/trusted.gpg";', f'Dir::Etc::trustedparts "{parts}";',
        f'Dir::Etc::preferences "{apt}/preferences";',
        f'Dir::Etc::preferencesparts "{apt}/preferences.d";',
        f'Dir::Etc::parts "{apt}/apt.conf.d";',
        f'Dir::State "{apt}";', f'Dir::State::lists "{apt}/lists";',
        f'Dir::State::status "{apt}/status";', f'Dir::Cache "{apt}";',
        f'Dir::Cache::archives "{apt}/archives";', 'Acquire::Languages "none";',
        *(['Acquire::http::Proxy "DIRECT";'] if local else []), ""]))
    env = {"APT_CONFIG": str(config)}
    subprocess.run(["apt-get", "update", "-qq"], env={**os.environ, **env}, check=True,
                   capture_output=True)
    return env


def host_suites_apt(directory: Path, suites: list[str]) -> dict:
    """:func:`private_apt` for these Debian ``suites`` (main) on the host's own mirror, read from
    its apt sources now (a host listing only its release suite gets the others derived, as
    ``mirror = "host"`` does)."""
    lines = []
    for suite in suites:
        uri, signed = metadata.host_mirror(suite)
        option = f"[signed-by={signed}] " if signed else ""
        lines.append(f"deb {option}{uri} {suite} main")
    return private_apt(directory, lines, trusted_parts=Path("/etc/apt/trusted.gpg.d"))
