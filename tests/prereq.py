"""Prerequisite checks: skip locally, fail under CI=true (CI must never silently skip)."""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str) -> None:
    """Skip the test, or fail it when running in CI."""
    if in_ci():
        pytest.fail(f"prerequisite missing under CI: {reason}")
    pytest.skip(reason)


def require_tool(tool: str, package: str) -> str:
    """Return the path of ``tool`` or skip/fail naming the Debian package that provides it."""
    path = shutil.which(tool)
    if path is None:
        missing(f"{tool} not found (apt-get install {package})")
    return path


#: The test being run (set by conftest), so that require_root can check its marker.
CURRENT_ITEM = None


def require_root() -> None:
    item = CURRENT_ITEM
    if item is not None and item.get_closest_marker("root") is None:
        pytest.fail(f"{item.nodeid} needs root but has no root marker: add @pytest.mark.root "
                    "(tests/conftest.py marks what it can see calling require_root)")
    if os.geteuid() != 0:
        missing("needs root (mount namespaces, loop devices)")
