"""Discoverable Disk Images: assemble (reproducibly), sign (also offline) and inspect.

See assemble.py for how the bytes are pinned, signature.py for the signature format and
inspect.py for reading images this project did not make.
"""

from .assemble import (
    DdiInfo,
    DetachedVerity,
    PartitionInfo,
    Repart,
    assemble_ddi,
    detached_verity,
    sign_ddi,
    sign_detached,
)
from .inspect import inspect_image

__all__ = [
    "DdiInfo", "DetachedVerity", "PartitionInfo", "Repart", "assemble_ddi", "detached_verity",
    "inspect_image", "sign_ddi", "sign_detached",
]
