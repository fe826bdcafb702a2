"""extension-release / os-release: names, architectures, field values, and the file itself.

The build writes release files with this module and ``check``/``doctor`` read them with it, so the
spelling rules (systemd's architecture names, image names, value syntax) exist once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: systemd's architecture names (src/basic/architecture.c), the only ones ARCHITECTURE= matches.
ARCHITECTURES = (
    "alpha", "arc", "arc-be", "arm", "arm64", "arm-be", "arm64-be", "cris", "ia64",
    "loongarch64", "m68k", "mips", "mips-le", "mips64", "mips64-le", "parisc", "parisc64",
    "ppc", "ppc-le", "ppc64", "ppc64-le", "riscv32", "riscv64", "s390", "s390x", "sh", "sh64",
    "sparc", "sparc64", "tilegx", "x86", "x86-64",
)

#: Package-manager and kernel spellings → systemd's. None: architecture-independent.
FOREIGN_ARCHITECTURES = {
    # Debian
    "amd64": "x86-64", "i386": "x86", "armhf": "arm", "armel": "arm", "ppc64el": "ppc64-le",
    "mips64el": "mips64-le", "mipsel": "mips-le", "loong64": "loongarch64", "all": None,
    # RPM / uname -m
    "x86_64": "x86-64", "aarch64": "arm64", "i686": "x86", "i586": "x86", "i486": "x86",
    "ppc64le": "ppc64-le", "armv7hl": "arm", "armv7l": "arm", "noarch": None,
}
for _name in ARCHITECTURES:
    FOREIGN_ARCHITECTURES.setdefault(_name, _name)

SCOPES = ("system", "initrd", "portable")
#: The hierarchies each kind overlays when merged (systemd never merges anything else).
HIERARCHIES = {"sysext": ("/usr", "/opt"), "confext": ("/etc",)}
#: Where each kind's release files live inside an image.
RELEASE_DIRS = {"sysext": "usr/lib/extension-release.d", "confext": "etc/extension-release.d"}
_VALUE_RE = re.compile(r"^[A-Za-z0-9._~+:-]+$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def architecture_problem(value: str) -> str | None:
    """Why ``value`` is not an ARCHITECTURE= that systemd can ever match (None when fine)."""
    if value == "_any" or value in ARCHITECTURES:
        return None
    fix = FOREIGN_ARCHITECTURES.get(value)
    if fix:
        return f"is not systemd's spelling: use {fix!r} (systemd never matches {value!r})"
    return "is not a systemd architecture (e.g. 'x86-64', 'arm64', or '_any')"


def systemd_architecture(package_arch: str) -> str | None:
    """Map a .deb/.rpm architecture to systemd's name (None for all/noarch or unknown)."""
    return FOREIGN_ARCHITECTURES.get(package_arch)


def image_name_problem(name: str) -> str | None:
    """Why ``name`` is not a good extension image name (None when fine)."""
    if name.endswith(".raw"):
        return "must not end in .raw (the image file gets that suffix)"
    if not _NAME_RE.match(name):
        return "must start with a letter or digit and use only letters, digits and ._+- (max 128)"
    return None


def field_value_problem(value: str) -> str | None:
    if not _VALUE_RE.match(value):
        return "must be non-empty and use only letters, digits and ._~+:-"
    return None


def release_path(kind: str, name: str) -> str:
    """Where the release file of extension ``name`` lives inside the image."""
    return f"{RELEASE_DIRS[kind]}/extension-release.{name}"


def release_fields(kind: str, name: str, version: str | None, target: Mapping) -> dict[str, str]:
    """The extension-release fields in the order they are written (insertion order)."""
    prefix = kind.upper()  # SYSEXT or CONFEXT
    fields: dict[str, str] = {"ID": target["id"]}
    if target.get("version_id"):
        fields["VERSION_ID"] = target["version_id"]
    level = target.get(f"{kind}_level")
    if level:
        fields[f"{prefix}_LEVEL"] = level
    if target.get("architecture"):
        fields["ARCHITECTURE"] = target["architecture"]
    if target.get("scope"):
        fields[f"{prefix}_SCOPE"] = " ".join(target["scope"])
    fields[f"{prefix}_ID"] = name
    if version:
        fields[f"{prefix}_VERSION_ID"] = version
    if target.get("reload_manager"):
        fields["EXTENSION_RELOAD_MANAGER"] = "1"
    return fields


def format_release(fields: Mapping[str, str]) -> bytes:
    return "".join(f"{k}={v}\n" for k, v in fields.items()).encode()


def parse_env_file(text: str) -> dict[str, str]:
    """Parse os-release/extension-release like systemd: quotes removed, last duplicate wins."""
    result: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            quote, value = value[0], value[1:-1]
            if quote == '"':  # backslash escapes count only inside double quotes
                value = re.sub(r'\\(["\\`$])', r"\1", value)
        result[key] = value
    return result
