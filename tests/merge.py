"""Run the real systemd-sysext/systemd-confext in a private mount namespace.

Recipe from the developers' brief: a private namespace, / re-shared inside it (systemd wants
shared propagation) and a fresh /run, so nothing leaks to the host.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from prereq import require_root, require_tool


def in_namespace(script: str, env: dict | None = None) -> subprocess.CompletedProcess:
    require_root()
    require_tool("unshare", "util-linux")
    inner = "mount --make-rshared / && mount -t tmpfs tmpfs /run && " + script
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", inner],
                          capture_output=True, text=True, env=env)


def merge_root(root: Path, then: str = "true", tool: str = "systemd-sysext",
               env: dict | None = None, argv: list[str] | None = None
               ) -> subprocess.CompletedProcess:
    """``tool merge --root=ROOT`` followed by ``then`` (a shell snippet) in the same namespace.

    ``argv``: run that instead of the host's ``tool``, e.g.
    ``systemd_versions.systemd_binary(262, "systemd-confext")``."""
    if argv is None:
        require_tool(tool, "systemd")
        argv = [tool]
    cmd = f"{shlex.join(argv)} merge --root={shlex.quote(str(root))} && {then}"
    return in_namespace(cmd, env=env)


def make_root(root: Path, os_release: str) -> Path:
    """A minimal OS tree for --root: os-release plus the hierarchies that get overlaid."""
    for d in ("etc", "usr/bin", "usr/lib", "opt", "var/lib/extensions", "var/lib/confexts"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc/os-release").write_text(os_release)
    return root
