"""Every ELF file of an image checked against the image's ARCHITECTURE=.

A package of the wrong architecture is an error already (build._architecture, from its control
field or RPM header); this catches what the package metadata does not say: an ``Architecture:
all`` package shipping compiled code, a prebuilt binary in a recipe's [[files]], a foreign
library inside a package. Only the first 20 bytes of each regular file are read (e_ident and
e_machine), through a descriptor opened without following symlinks.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

#: systemd's ARCHITECTURE= → (ELF class: 1 = 32-bit, 2 = 64-bit; data: 1 = LE, 2 = BE; e_machine)
ELF_MACHINES: dict[str, tuple[int, int, int]] = {
    "x86-64": (2, 1, 62), "x86": (1, 1, 3), "arm64": (2, 1, 183), "arm64-be": (2, 2, 183),
    "arm": (1, 1, 40), "arm-be": (1, 2, 40), "riscv64": (2, 1, 243), "riscv32": (1, 1, 243),
    "ppc64-le": (2, 1, 21), "ppc64": (2, 2, 21), "ppc": (1, 2, 20), "s390x": (2, 2, 22),
    "s390": (1, 2, 22), "loongarch64": (2, 1, 258), "mips64-le": (2, 1, 8),
    "mips-le": (1, 1, 8), "alpha": (2, 1, 0x9026), "ia64": (2, 1, 50), "parisc": (1, 2, 15),
}
_MACHINE_NAMES = {62: "x86-64", 3: "x86", 183: "aarch64", 40: "arm", 243: "riscv", 21: "ppc64",
                  20: "ppc", 22: "s390", 258: "loongarch", 8: "mips", 50: "ia64", 15: "parisc"}
#: Files listed by name in a warning; the rest are counted.
SHOWN = 5


def identify(header: bytes) -> tuple[int, int, int] | None:
    """(class, data, e_machine) of an ELF header, None when it is not one."""
    if len(header) < 20 or header[:4] != b"\x7fELF" or header[4] not in (1, 2) or \
            header[5] not in (1, 2):
        return None
    machine = struct.unpack("<H" if header[5] == 1 else ">H", header[18:20])[0]
    return header[4], header[5], machine


def describe(ident: tuple[int, int, int]) -> str:
    cls, data, machine = ident
    name = _MACHINE_NAMES.get(machine, f"machine {machine}")
    return f"{name} {'64' if cls == 2 else '32'}-bit {'LE' if data == 1 else 'BE'}"


def mismatches(records, root: Path, architecture: str | None) -> list[tuple[str, str, str]]:
    """(path, what it is, origin) of every ELF file under ``root`` that is not for
    ``architecture`` (nothing when the architecture is unset, ``_any`` or unknown here)."""
    wanted = ELF_MACHINES.get(architecture or "")
    if wanted is None:
        return []
    found = []
    for path in sorted(records):
        record = records[path]
        if record.kind != "file" or record.size < 20:
            continue
        try:
            fd = os.open(Path(root) / path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK |
                         os.O_CLOEXEC)
        except OSError:
            continue
        try:
            header = os.pread(fd, 20, 0)
        finally:
            os.close(fd)
        ident = identify(header)
        if ident is not None and ident != wanted:
            found.append((path, describe(ident), record.origin))
    return found


def warning(found: list[tuple[str, str, str]], architecture: str) -> str | None:
    """One warning line naming the files (the first few) that are not for ``architecture``."""
    if not found:
        return None
    shown = ", ".join(f"/{path} ({what}, from {origin})" for path, what, origin in found[:SHOWN])
    more = f", … (+{len(found) - SHOWN})" if len(found) > SHOWN else ""
    return f"{len(found)} ELF file(s) not built for {architecture}: {shown}{more}"
