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


def require_root() -> None:
    if os.geteuid() != 0:
        missing("needs root (mount namespaces, loop devices)")
