"""What the formats carry is checked, what the recipe says is what the file is, and nothing is
lost silently (issue 11 §4, §5, §7, §8).

Packages come from the real tools (dpkg-deb, rpmbuild; tests/pkgfactory.py) with one byte
flipped after building, or are assembled by hand where the tools refuse (test_hostile.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from pkgfactory import build_deb, build_rpm, directory, file, flip_byte, hardlink
from prereq import require_tool
from recipes_kit import CliResult, build_cli, recipe_dict, write_recipe_dict
from test_archive_bounds import deb_with_data
from test_hostile import _tar, info

from pipeline.errors import InputError
from pipeline.formats.package import Package

MARKER = b"integrity-marker-0123456789"


def build_one(tmp_path: Path, cache_dir: Path, source: dict, *args: str,
              **sections) -> CliResult:
    """A build of one ``source`` (any exit code): ``tmp_path/r/recipe.toml`` into
    ``tmp_path/out``; ``sections``: more of the recipe (``policy={...}``)."""
    spec = recipe_dict(target={"id": "debian"}, sources=[source], **sections)
    return build_cli(write_recipe_dict(tmp_path / "r", spec), tmp_path / "out", *args,
                     cache_dir=cache_dir, json_out=False, expect=None)


def refused(proc, *words: str) -> str:
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def nothing_published(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert not out.exists() or list(out.iterdir()) == []


# --- §5: digests the formats carry ------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_rpm(tmp_path_factory) -> Path:
    require_tool("rpmbuild", "rpm")
    return build_rpm(tmp_path_factory.mktemp("rpm"), "digests", "1.0",
                     [directory("/usr/share/d"), file("/usr/share/d/data", MARKER + b"\n")],
                     compression="none")


@pytest.fixture(scope="module")
def plain_deb(tmp_path_factory) -> Path:
    require_tool("dpkg-deb", "dpkg")
    return build_deb(tmp_path_factory.mktemp("deb"), "digests", "1.0",
                     [directory("/usr/share/d"), file("/usr/share/d/data", MARKER + b"\n"),
                      hardlink("/usr/share/d/link", "/usr/share/d/data")], compression="none")


def rpm_k_fails(path: Path) -> bool:
    proc = subprocess.run(["rpm", "-K", "--nosignature", str(path)], capture_output=True,
                          text=True)
    return proc.returncode != 0


def test_rpm_flipped_file_byte_fails_filedigests(tmp_path, cache_dir, plain_rpm):
    bad = flip_byte(plain_rpm, MARKER, tmp_path / "flip.rpm", offset=3)
    assert rpm_k_fails(bad)  # rpm agrees the package is damaged
    proc = build_one(tmp_path, cache_dir, {"rpm": bad})
    refused(proc, "flip.rpm:payload:./usr/share/d/data", "FILEDIGESTS (sha256)")
    nothing_published(tmp_path)


def test_rpm_changed_payload_outside_files_fails_payloaddigest(tmp_path, cache_dir, plain_rpm):
    """A cpio header's mtime changed: no file content differs, the payload does."""
    data = bytearray(plain_rpm.read_bytes())
    name = data.index(b"./usr/share/d/data\0")
    mtime = name - 110 + 6 + 5 * 8  # newc header: magic, ino mode uid gid nlink, mtime
    data[mtime + 7] = ord("0") if data[mtime + 7] != ord("0") else ord("1")
    bad = tmp_path / "payload.rpm"
    bad.write_bytes(bytes(data))
    assert rpm_k_fails(bad)
    proc = build_one(tmp_path, cache_dir, {"rpm": bad})
    refused(proc, "payload.rpm:payload", "PAYLOADDIGEST")
    nothing_published(tmp_path)


def test_rpm_changed_header_fails_sha256header(tmp_path, cache_dir, plain_rpm):
    bad = flip_byte(plain_rpm, b"pkgfactory", tmp_path / "hdr.rpm")  # the build host tag
    assert rpm_k_fails(bad)
    proc = build_one(tmp_path, cache_dir, {"rpm": bad})
    refused(proc, "hdr.rpm:header", "SHA256HEADER")


def test_rpm_unchanged_passes_every_check(tmp_path, cache_dir, plain_rpm):
    proc = build_one(tmp_path, cache_dir, {"rpm": plain_rpm})
    assert proc.returncode == 0, proc.stderr


def test_deb_flipped_byte_fails_md5sums(tmp_path, cache_dir, plain_deb):
    bad = flip_byte(plain_deb, MARKER, tmp_path / "flip.deb", offset=3)
    proc = build_one(tmp_path, cache_dir, {"deb": bad})
    refused(proc, "flip.deb:data.tar:./usr/share/d/data", "md5sums")
    nothing_published(tmp_path)
    ok = build_one(tmp_path, cache_dir, {"deb": plain_deb})
    assert ok.returncode == 0, ok.stderr


def test_deb_md5sums_listing_a_missing_file(tmp_path, cache_dir):
    control = _tar([(info("./control"), b"Package: evil\nVersion: 1\nArchitecture: amd64\n"),
                    (info("./md5sums"), hashlib.md5(b"x").hexdigest().encode()
                     + b"  usr/share/x\n" + b"0" * 32 + b"  usr/bin/gone\n")])
    data = _tar([(info("./usr/share/x"), b"x")])
    deb = deb_with_data(tmp_path / "md5.deb", lzma.compress(data))
    parts = deb.read_bytes()
    # swap in this control.tar (deb_with_data writes a fixed one)
    from test_hostile import _ar
    deb.write_bytes(_ar([("debian-binary", b"2.0\n"), ("control.tar.xz", lzma.compress(control)),
                         ("data.tar.xz", lzma.compress(data))]))
    assert parts != deb.read_bytes()
    proc = build_one(tmp_path, cache_dir, {"deb": deb})
    refused(proc, "md5.deb:md5sums", "usr/bin/gone", "data.tar.xz lacks")


# --- §4: the bytes parsed are the bytes hashed ----------------------------------------------


def test_package_changed_after_verification_is_refused(tmp_path, plain_deb):
    """The sha256 fetch verified is compared with the bytes the reader really parsed."""
    good = hashlib.sha256(plain_deb.read_bytes()).hexdigest()
    with Package(plain_deb, "deb", sha256=good) as package:
        assert len(list(package.entries())) > 1
        assert package.sha256 == good
    with Package(plain_deb, "deb", sha256="0" * 64) as package, \
            pytest.raises(InputError, match="the bytes read have sha256 " + good):
        list(package.entries())


def test_extract_opens_each_package_once(tmp_path, plain_deb):
    """Python's audit hook sees every open(): extract opens the package file once, plus once
    more only for a hard link to an excluded file (streamed, checked against the first read)."""
    from pipeline import recipe as recipe_mod
    from pipeline.sources.fetch import Fetched
    from pipeline.stages.extract import extract
    from pipeline.stages.layout import Router
    from pipeline.stages.staging import StagingTree

    copy = tmp_path / "once.deb"
    shutil.copy(plain_deb, copy)
    opened: list[str] = []
    sys.addaudithook(lambda event, args: opened.append(str(args[0]))
                     if event == "open" and str(args[0]) == str(copy) else None)
    sha = hashlib.sha256(copy.read_bytes()).hexdigest()
    for exclude, expected in (([], 1), (["usr/share/d/data"], 2)):
        recipe = recipe_mod.load(write_recipe_dict(tmp_path / "r", recipe_dict(
            target={"id": "debian"}, sources=[{"deb": copy}], filter={"exclude": exclude})))
        item = Fetched(recipe.sources[0], copy, sha, copy.stat().st_size, "local", copy.name)
        root = tmp_path / f"stage{expected}"
        root.mkdir()
        trees: dict[str, StagingTree] = {}

        def tree_for(kind: str, trees=trees, root=root) -> StagingTree:
            if kind not in trees:
                trees[kind] = StagingTree(root / kind, owner_ids=False)
            return trees[kind]

        opened.clear()
        extract(recipe, [item], tree_for, Router("auto", "drop", "tmpfiles"))
        for tree in trees.values():
            tree.close()
        assert len(opened) == expected, (exclude, opened)
        assert (root / "sysext/usr/share/d/link").read_bytes() == MARKER + b"\n"


# --- §7: a cache never changes what a recipe means ------------------------------------------


def _cached_apt(tmp_path: Path, cache_dir: Path, deb: Path) -> str:
    sha = hashlib.sha256(deb.read_bytes()).hexdigest()
    dest = cache_dir / "sha256" / sha[:2] / sha
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(deb, dest)
    return sha


def test_apt_name_typo_with_a_cached_sha256_is_refused(tmp_path, cache_dir, packages):
    sha = _cached_apt(tmp_path, cache_dir, packages["deb"])
    apt = {"apt": "hello-tools", "version": "1.0-1", "sha256": sha}
    proc = build_one(tmp_path, cache_dir, {**apt, "apt": "hello-toolz"}, "--offline")
    line = refused(proc, "source apt:hello-toolz=1.0-1", "the file is hello-tools 1.0-1 (amd64)",
                   "not name hello-toolz")
    assert "version" not in line.split("not name", 1)[1]
    nothing_published(tmp_path)
    wrong_version = build_one(tmp_path, cache_dir, {**apt, "version": "1.0-2"}, "--offline")
    refused(wrong_version, "not version 1.0-2")
    right = build_one(tmp_path, cache_dir, apt, "--offline")
    assert right.returncode == 0, right.stderr


# --- §8: nothing lost silently ---------------------------------------------------------------


def hand_deb(tmp_path: Path, name: str, entries) -> Path:
    return deb_with_data(tmp_path / name, lzma.compress(_tar(entries)))


def test_bad_tar_checksum_mid_archive_is_refused(tmp_path, cache_dir):
    data = bytearray(_tar([(info("./usr/share/a"), b"a"), (info("./usr/share/b"), b"b"),
                           (info("./usr/share/c"), b"c")]))
    second = data.index(b"./usr/share/b")
    data[second + 5] ^= 0x20  # the header now says ./usr/Share/b with the old checksum
    deb = deb_with_data(tmp_path / "sum.deb", lzma.compress(bytes(data)))
    refused(build_one(tmp_path, cache_dir, {"deb": deb}), "sum.deb:data.tar.xz", "bad checksum")
    nothing_published(tmp_path)


def test_rpm_file_listed_but_absent_from_payload(tmp_path, cache_dir, plain_rpm):
    """The cpio record of a file renamed to the trailer's name: the payload ends before it."""
    data = bytearray(plain_rpm.read_bytes())
    at = data.index(b"./usr/share/d/data\0")
    header = at - 110
    namesize = int(data[header + 94 : header + 102], 16)
    assert namesize == len(b"./usr/share/d/data\0")
    data[header + 94 : header + 102] = b"%08x" % 11
    data[at : at + 11] = b"TRAILER!!!\0"
    bad = tmp_path / "gone.rpm"
    bad.write_bytes(bytes(data))
    refused(build_one(tmp_path, cache_dir, {"rpm": bad}), "gone.rpm:payload:/usr/share/d/data",
            "listed in the header but missing from the payload")
    nothing_published(tmp_path)


def test_hardlink_to_absent_target_is_refused(tmp_path, cache_dir):
    deb = hand_deb(tmp_path, "hl.deb", [(info("./usr/share/h", tarfile.LNKTYPE,
                                              linkname="./usr/share/none"), None)])
    refused(build_one(tmp_path, cache_dir, {"deb": deb}), "hl.deb:data.tar.xz:./usr/share/h",
            "not a file extracted before")


@pytest.mark.parametrize("name", [".", "./", ""])
def test_file_named_like_the_root_is_refused(tmp_path, cache_dir, name):
    deb = hand_deb(tmp_path, "dot.deb", [(info("./usr/share/ok"), b"x")])
    data = _tar([(info("./usr/share/ok"), b"x")])
    raw = bytearray(data)
    # a second member "X" renamed to the name under test, checksum recomputed
    extra = bytearray(_tar([(info("X"), b"y")])[:1024])
    extra[0:100] = name.encode().ljust(100, b"\0")
    extra[148:156] = b" " * 8
    extra[148:156] = b"%06o\0 " % sum(extra[:512])
    deb = deb_with_data(tmp_path / "dot.deb", lzma.compress(bytes(extra) + bytes(raw)))
    proc = build_one(tmp_path, cache_dir, {"deb": deb})
    if name == "":
        refused(proc, "dot.deb:data.tar.xz", "empty name")
    else:
        refused(proc, "dot.deb:data.tar.xz", "the image's root directory")


@pytest.mark.parametrize("mtime", [2**62, -5])
def test_absurd_mtime_is_refused_naming_the_package(tmp_path, cache_dir, mtime):
    ti = info("./usr/share/t")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        ti.mtime, ti.size = mtime, 1
        tf.addfile(ti, io.BytesIO(b"t"))
    deb = deb_with_data(tmp_path / "time.deb", lzma.compress(buf.getvalue()))
    refused(build_one(tmp_path, cache_dir, {"deb": deb}), "time.deb:data.tar.xz:./usr/share/t",
            f"mtime {mtime} is outside 1970-2106")


def _findings(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith(("severe:", "warning:"))]


SPECIAL = [(info("./usr/bin/su", mode=0o4755), b"s"),
           (info("./usr/share/open", tarfile.DIRTYPE, 0o777), None),
           (info("./usr/share/tmp", tarfile.DIRTYPE, 0o1777), None),
           (info("./var/lib/open", tarfile.DIRTYPE, 0o777), None)]


def test_special_modes_are_severe_findings(tmp_path, cache_dir):
    deb = hand_deb(tmp_path, "special.deb", SPECIAL)
    proc = build_one(tmp_path, cache_dir, {"deb": deb}, "--json")
    assert proc.returncode == 0, proc.stderr
    lines = _findings(proc)
    setuid = [line for line in lines if line.startswith("severe: setuid:")]
    world = [line for line in lines if line.startswith("severe: world-writable:")]
    assert setuid and "usr/bin/su" in setuid[0], lines
    assert world and "usr/share/open" in world[0] and "var/lib/open" in world[0], lines
    assert "usr/share/tmp" not in world[0]  # sticky: /tmp-like, fine
    codes = {w["code"]: w["severity"] for w in json.loads(proc.stdout)["images"][0]["warnings"]}
    assert codes["setuid"] == codes["world-writable"] == "severe"


def test_special_files_policy_error_and_allow(tmp_path, cache_dir):
    deb = hand_deb(tmp_path, "special.deb", SPECIAL)
    proc = build_one(tmp_path, cache_dir, {"deb": deb}, policy={"special_files": "error"})
    refused(proc, "special.deb:data.tar.xz:./usr/bin/su", "setuid (mode 4755")
    nothing_published(tmp_path)
    allowed = build_one(tmp_path, cache_dir, {"deb": deb},
                        policy={"special_files": "allow"})
    assert allowed.returncode == 0, allowed.stderr
    assert not [x for x in _findings(allowed) if re.search(r"setuid:|world-writable:", x)]


def test_second_data_member_is_refused(tmp_path, cache_dir):
    from test_archive_bounds import control_xz
    from test_hostile import _ar
    data = lzma.compress(_tar([(info("./usr/share/a"), b"a")]))
    deb = tmp_path / "two.deb"
    deb.write_bytes(_ar([("debian-binary", b"2.0\n"), ("control.tar.xz", control_xz()),
                         ("data.tar.xz", data), ("data.tar.gz", b"x")]))
    refused(build_one(tmp_path, cache_dir, {"deb": deb}), "two.deb:data.tar.gz",
            "a second data.tar member")


@pytest.mark.parametrize("entry, words", [
    ((info("./usr/share/" + "n" * 256), b"x"), ("a path component of 256 bytes",)),
    ((info("./usr/share/c", xattrs={"security.capability": "garbage"}), b"x"),
     ("malformed security.capability",)),
    ((info("./usr/share/l", tarfile.SYMTYPE, linkname="x\ny\x1b"), None),
     ("symlink target 'x\\\\ny\\\\x1b' has control characters",)),
    ((info("./usr/share/o\u202e/../x"), b"x"), ("./usr/share/o\\u202e/../x", "'..'")),
])
def test_names_and_capabilities_the_kernel_refuses_are_named(tmp_path, cache_dir, entry, words):
    deb = hand_deb(tmp_path, "k.deb", [entry])
    refused(build_one(tmp_path, cache_dir, {"deb": deb}), "k.deb:data.tar.xz:./usr/share/", *words)


def test_owner_id_out_of_range_is_named(tmp_path, cache_dir):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        ti = tarfile.TarInfo("./usr/share/u")
        ti.uid, ti.size, ti.mtime = 1 << 40, 1, 1700000000
        tf.addfile(ti, io.BytesIO(b"u"))
    deb = deb_with_data(tmp_path / "uid.deb", lzma.compress(buf.getvalue()))
    refused(build_one(tmp_path, cache_dir, {"deb": deb}), "uid.deb:data.tar.xz:./usr/share/u",
            f"uid {1 << 40} is out of range")


@pytest.mark.parametrize("control, words", [
    (b"Package: ev\x1bil\nVersion: 1\nArchitecture: amd64\n", "Package 'ev\\\\x1bil'"),
    (b"Package: evil\nVersion: " + b"1" * 5000 + b"\nArchitecture: amd64\n", "Version '111"),
    (b"Package: evil\nVersion: 1\nArchitecture: am d64\n", "Architecture 'am d64'"),
])
def test_deb_identity_fields_are_what_dpkg_accepts(tmp_path, control, words):
    from test_hostile import _ar
    deb = tmp_path / "id.deb"
    deb.write_bytes(_ar([("debian-binary", b"2.0\n"),
                         ("control.tar.xz", lzma.compress(_tar([(info("./control"), control)]))),
                         ("data.tar.xz", lzma.compress(_tar([])))]))
    with pytest.raises(InputError, match=re.escape(words)) as err:
        Package(deb, "deb")
    assert err.value.where == "id.deb:control" and len(err.value.line()) < 400


def test_file_name_in_the_archive_convention_is_a_claim(tmp_path, cache_dir, packages):
    """jq_1.6_amd64.deb names a package: a file so named that is another one is refused; a
    name outside the convention claims nothing."""
    lying = tmp_path / "files" / "other-tool_1.0-1_amd64.deb"
    lying.parent.mkdir()
    shutil.copy(packages["deb"], lying)
    refused(build_one(tmp_path, cache_dir, {"deb": lying}),
            "the file is hello-tools 1.0-1 (amd64), not name other-tool", "fix the file name")
    plain = tmp_path / "files" / "anything.deb"
    shutil.copy(packages["deb"], plain)
    assert build_one(tmp_path, cache_dir, {"deb": plain}).returncode == 0
    rpm = tmp_path / "files" / "rtools-2.0-2.x86_64.rpm"  # the real one is release 1
    shutil.copy(packages["rpm"], rpm)
    refused(build_one(tmp_path, cache_dir, {"rpm": rpm}), "not version 2.0-2")
