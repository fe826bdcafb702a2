"""No package mirror's host name is written into the repository: the mirror comes from the build
host's apt configuration or the recipe at run time (``mirror = "host"``, ``$VAR``). A name that
slips into a recipe, a doc or a default would pin every user to that mirror (and its outages)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: Host names under the distributions' own domains (their archives, mirrors, snapshots, security
#: archives; their web sites, www.…, are documents, not mirrors); example.invalid and 127.0.0.1
#: are what tests and docs use instead.
MIRROR = re.compile(r"\b(?!www\.)(?:[a-z0-9-]+\.)+(?:debian\.org|debian\.net|ubuntu\.com|fedoraproject\.org"
                    r"|centos\.org|opensuse\.org|archlinux\.org|rockylinux\.org|almalinux\.org)\b")


def test_no_mirror_host_name_in_tracked_files():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    found = []
    for name in filter(None, files):
        path = REPO / name
        if not path.is_file() or path.is_symlink() or path.stat().st_size > 4 << 20:
            continue
        text = path.read_bytes().decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            found += [f"{name}:{number}: {m[0]}" for m in MIRROR.finditer(line)]
    assert not found, "mirror host names in the repository:\n" + "\n".join(found)


def test_the_pattern_sees_a_mirror_name():
    assert MIRROR.search("see http://" + "snapshot." + "debian.org/archive/")
    assert not MIRROR.search("deb [signed-by=...] $MIRROR bookworm main")
    assert not MIRROR.search("Format: https://www." + "debian.org/doc/packaging-manuals/")
