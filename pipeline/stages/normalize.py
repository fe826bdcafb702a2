"""Normalize stage: time stamps and the root directory, the things that differ between machines.

Owners and modes were already decided when entries were written; what is left is time: every
mtime becomes SOURCE_DATE_EPOCH (or is clamped to it), including directories, whose mtimes the
writes themselves changed.
"""

from __future__ import annotations

import os

from ..errors import InputError
from ..formats import entry as E
from .staging import StagingTree


def choose_epoch(recipe_epoch: int | None, environ: dict, newest_input: int | None) -> tuple[int, str]:
    """SOURCE_DATE_EPOCH and where it came from: recipe, environment, or the inputs (never now)."""
    if recipe_epoch is not None:
        return recipe_epoch, "recipe"
    if environ.get("SOURCE_DATE_EPOCH"):
        value = environ["SOURCE_DATE_EPOCH"]
        if not value.isdigit() or int(value) >= 2**32:
            raise InputError("SOURCE_DATE_EPOCH", f"{value!r} is not a Unix time")
        return int(value), "environment"
    if newest_input is None:  # issue 16 §8: not "epoch 0 (newest input)" when there is none
        return 0, "no input has a time stamp: 1970-01-01"
    return newest_input, "newest input"


def apply_times(tree: StagingTree, epoch: int, policy: str) -> None:
    """Set every record's mtime and write it to disk (children before parents do not matter:
    utime on a child does not touch its directory)."""
    for record in tree.records.values():
        if policy == "clamp" and record.kind != E.DIR and record.mtime:
            record.mtime = min(record.mtime, epoch)
        else:
            record.mtime = epoch
    if tree.root is None:  # a recording tree (plan): nothing on disk
        return
    tree.finish_modes()
    for path, record in tree.records.items():
        tree.set_mtime(path, record.mtime)
    os.chmod(tree.root, 0o755)
    os.utime(tree.root, (epoch, epoch))
