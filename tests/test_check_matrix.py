"""`check` must predict what the real systemd-sysext/systemd-confext do, on every version we run.

A generated matrix of cases (every rule in pipeline/systemd/rules.py a real binary can show, raw
squashfs/erofs images, directories and NAME.v/ directories, sysext and confext) is built once;
each case gets its own OS tree (--root) with the image in a search directory plus a known-good
*control* extension. Then one private mount namespace per binary runs ``merge --root`` (and
``merge --force --root``) over every case tree, and the real verdict is read back: control and
image in "Using extensions …" → merges; control only → ignored; neither (or a failed command) →
breaks the merge, whose exit status must be the ``systemd_exit`` check predicts. The binaries:
the host's 252 and 254 (bookworm-backports), 257 (trixie), 262 (sid) fetched once and cached by
tests/systemd_versions.py. The prediction comes from the same code the CLI uses
(check_cmd.check_one), with the binary's own version.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import systemd_versions
from merge import make_root
from prereq import missing, require_root, require_tool

from pipeline.commands import check as check_cmd
from pipeline.host import facts as hostmod
from pipeline.systemd import rules

HOST = "ID=debian\nVERSION_ID=12\n"
REL_DIR = {"sysext": "usr/lib/extension-release.d", "confext": "etc/extension-release.d"}
MARK = {"sysext": "usr/share/matrix/{id}", "confext": "etc/matrix-{id}"}


@dataclass
class Case:
    id: str
    kind: str  # which tool merges it
    fmt: str  # raw | dir | erofs
    release: str | None = "ID=debian\nVERSION_ID=12\n"  # extension-release.NAME content
    file_name: str | None = None  # default: NAME.raw / NAME
    release_name: str | None = None  # default: the image name
    release_kind: str | None = None  # where the release file goes (default: kind)
    extra_files: dict[str, str] = field(default_factory=dict)
    xattrs: dict[str, str] = field(default_factory=dict)  # release file xattr name → value
    host: str = HOST
    directory: str | None = None  # search dir (default /var/lib/extensions or confexts)
    initrd: bool = False
    mask_dir: str | None = None  # an empty directory of the same name here (shadowing)
    min_major: int = 0
    second_release: str | None = None  # another extension-release.* (strict=false) file
    release_symlink: str | None = None  # "relative"/"absolute": the release file is a symlink
    broken_neighbour: bool = False  # a raw image without a matching release file next to it
    v_inner: str | None = None  # with file_name NAME.v / NAME.raw.v: the entry inside it

    @property
    def name(self) -> str:
        return "t" + re.sub(r"[^a-z0-9]", "", self.id.lower())[:40]

    @property
    def image_file(self) -> str:
        if self.file_name:
            return self.file_name
        return self.name + (".raw" if self.fmt != "dir" else "")


def _field_cases(kind: str, fmt: str) -> list[Case]:
    K = kind.upper()
    c = []

    def add(cid, release, **kw):
        c.append(Case(f"{kind}-{fmt}-{cid}", kind, fmt, release, **kw))

    add("ok", "ID=debian\nVERSION_ID=12\n")
    add("version-differs", "ID=debian\nVERSION_ID=12.1\n")
    add("version-missing", "ID=debian\n")
    add("id-differs", "ID=fedora\nVERSION_ID=12\n")
    add("id-missing", "VERSION_ID=12\n")
    add("id-any", "ID=_any\n")
    add("arch-before-any", "ID=_any\nARCHITECTURE=arm64\n")
    add("arch-uname-spelling", "ID=debian\nVERSION_ID=12\nARCHITECTURE=x86_64\n")
    add("arch-ok", "ID=debian\nVERSION_ID=12\nARCHITECTURE=x86-64\n")
    add("arch-any", "ID=debian\nVERSION_ID=12\nARCHITECTURE=_any\n")
    add("scope-initrd-only", f"ID=debian\nVERSION_ID=12\n{K}_SCOPE=initrd\n")
    add("scope-empty", f"ID=debian\nVERSION_ID=12\n{K}_SCOPE=\n")
    add("scope-system", f"ID=debian\nVERSION_ID=12\n{K}_SCOPE=system portable\n")
    add("level-equal", f"ID=debian\nVERSION_ID=11\n{K}_LEVEL=2\n",
        host=f"ID=debian\nVERSION_ID=12\n{K}_LEVEL=2\n")
    add("level-differs", f"ID=debian\nVERSION_ID=12\n{K}_LEVEL=3\n",
        host=f"ID=debian\nVERSION_ID=12\n{K}_LEVEL=2\n")
    add("level-host-only", "ID=debian\nVERSION_ID=12\n",
        host=f"ID=debian\nVERSION_ID=12\n{K}_LEVEL=2\n")
    add("level-only-host-no-version", "ID=debian\n", host=f"ID=debian\n{K}_LEVEL=2\n")
    other = "CONFEXT" if kind == "sysext" else "SYSEXT"
    add("level-other-kind", f"ID=debian\nVERSION_ID=11\n{other}_LEVEL=2\n",
        host=f"ID=debian\nVERSION_ID=12\n{other}_LEVEL=2\n")
    add("rolling-host", "ID=debian\nVERSION_ID=99\n", host="ID=debian\n")
    add("id-like-host", "ID=debian\nVERSION_ID=12\n",
        host="ID=ubuntu\nID_LIKE=debian\nVERSION_ID=12\n")
    add("empty-release", "")
    add("quoted-values", 'ID="debian"\nVERSION_ID="12"\n')
    add("host-no-id", "ID=_any\n", host="VERSION_ID=12\n")
    return c


def _name_cases(kind: str, fmt: str) -> list[Case]:
    c = []
    raw = fmt != "dir"
    ext = ".raw" if raw else ""

    def add(cid, **kw):
        c.append(Case(f"{kind}-{fmt}-{cid}", kind, fmt, **kw))

    add("release-name-wrong", file_name="wrongname" + ext, release_name="other")
    add("release-name-strict-false", file_name="strictf" + ext, release_name="other",
        xattrs={"user.extension-release.strict": "false"})
    add("release-name-strict-true", file_name="strictt" + ext, release_name="other",
        xattrs={"user.extension-release.strict": "true"})
    add("two-candidates", file_name="twocand" + ext, release_name="other1",
        xattrs={"user.extension-release.strict": "false"}, second_release="other2")
    add("versioned-image", file_name="vimg_1.2" + ext, release_name="vimg")
    add("versioned-both", file_name="vboth_1.2" + ext, release_name="vboth_1.0")
    add("plus-suffix", file_name="pimg+3" + ext, release_name="pimg")
    # the exact name is followed through a symlink inside the image, the fallback scan is not
    add("release-symlink", file_name="rsym" + ext, release_symlink="relative")
    add("release-symlink-abs", file_name="rsyma" + ext, release_symlink="absolute")
    add("versioned-symlink", file_name="vsym_1.2" + ext, release_name="vsym",
        release_symlink="relative")
    add("class-suffix", file_name=f"csuf.{kind}" + ext, release_name="csuf")
    add("class-suffix-full", file_name=f"csfull.{kind}" + ext, release_name=f"csfull.{kind}")
    other = "confext" if kind == "sysext" else "sysext"
    add("wrong-kind-release", file_name="wkind" + ext, release_name="wkind",
        release_kind=other)
    add("os-release-usr-lib", file_name="osrel" + ext,
        extra_files={"usr/lib/os-release": "ID=debian\n"})
    add("os-release-etc", file_name="osetc" + ext, extra_files={"etc/os-release": "ID=x\n"})
    add("os-release-etc-wrong-name", file_name="osetcw" + ext, release_name="nomatch",
        extra_files={"etc/os-release": "ID=x\n"})
    # raw_strip_suffixes() would also drop .img; systemd looks the release file up under the
    # discovered name (schain.img), not the dissected one (schain)
    add("suffix-chain", file_name="schain.img" + ext, release_name="schain.img")
    add("suffix-chain-short", file_name="schaint.img" + ext, release_name="schaint")
    # NAME.v/ directories: 256+ pick NAME_VERSION inside, older versions see a directory image
    add("v-dir", file_name="vpick.raw.v" if raw else "vpick.v", release_name="vpick",
        v_inner="vpick_1.2" + ext)
    add("v-dir-empty", file_name="vnone.raw.v" if raw else "vnone.v", release_name="vnone")
    if raw:
        add("not-raw-suffix", file_name="notraw.img")
        add("invalid-name", file_name=".#inval.raw")
    if kind == "sysext":
        add("usr-lib-extensions", file_name="usrlibext" + ext, directory="/usr/lib/extensions")
        add("initrd-default-scope", file_name="initrddef" + ext, initrd=True)
        add("initrd-scope", file_name="initrdok" + ext, initrd=True,
            release="ID=debian\nVERSION_ID=12\nSYSEXT_SCOPE=initrd\n")
        add("extra-sysext-initrd", file_name="extra" + ext, directory="/.extra/sysext",
            initrd=True, release="ID=debian\nVERSION_ID=12\nSYSEXT_SCOPE=initrd\n")
        add("etc-extensions", file_name="etcext" + ext, directory="/etc/extensions")
        add("masked-by-empty-dir", file_name="masked" + ext, mask_dir="/etc/extensions")
    else:
        add("etc-confexts", file_name="etcconf" + ext, directory="/etc/confexts")
        add("usr-lib-confexts", file_name="usrlibconf" + ext, directory="/usr/lib/confexts")
        add("masked-by-empty-dir", file_name="masked" + ext, mask_dir="/run/confexts")
    return c


def all_cases() -> list[Case]:
    cases = []
    for kind in ("sysext", "confext"):
        for fmt in ("raw", "dir"):
            cases += _field_cases(kind, fmt) + _name_cases(kind, fmt)
        cases.append(Case(f"{kind}-erofs-ok", kind, "erofs"))
        cases.append(Case(f"{kind}-erofs-wrong-name", kind, "erofs", file_name="erofsw.raw",
                          release_name="other"))
        for fmt in ("raw", "dir"):  # a good image is taken down by a broken neighbour
            cases.append(Case(f"{kind}-{fmt}-neighbour-breaks", kind, fmt,
                              broken_neighbour=True))
        cases.append(Case(f"{kind}-raw-ignored-neighbour-breaks", kind, "raw",
                          "ID=fedora\n", broken_neighbour=True))
    names = [c.id for c in cases]
    assert len(names) == len(set(names))
    return cases


# ---- building --------------------------------------------------------------------------------

def _write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _populate(tree: Path, case: Case) -> None:
    tree.mkdir(parents=True)
    os.chmod(tree, 0o755)
    _write(tree, MARK[case.kind].format(id=case.name), "marker\n")
    if case.release is not None:
        rel_kind = case.release_kind or case.kind
        image_name = case.image_file.removesuffix(".raw")
        rname = case.release_name or image_name
        path = _write(tree, f"{REL_DIR[rel_kind]}/extension-release.{rname}", case.release)
        if case.release_symlink:  # the content moves next to the directory, a link stays
            real = _write(tree, f"{REL_DIR[rel_kind]}/../real-release", case.release)
            path.unlink()
            os.symlink("../real-release" if case.release_symlink == "relative" else
                       "/" + str(real.relative_to(tree)).replace("extension-release.d/../", ""),
                       path)
        for key, value in case.xattrs.items():
            os.setxattr(path, key, value.encode())
        if case.second_release:
            path = _write(tree, f"{REL_DIR[rel_kind]}/extension-release.{case.second_release}",
                          case.release)
            os.setxattr(path, "user.extension-release.strict", b"false")
    for rel, text in case.extra_files.items():
        _write(tree, rel, text)


def _pack(tree: Path, out: Path, fmt: str) -> None:
    if fmt == "raw":
        subprocess.run(["mksquashfs", str(tree), str(out), "-quiet", "-no-progress", "-all-root",
                        "-noappend"], check=True, capture_output=True)
    else:
        subprocess.run(["mkfs.erofs", "--all-root", str(out), str(tree)], check=True,
                       capture_output=True)


def _control(root: Path, kind: str, initrd: bool) -> None:
    directory = "var/lib/extensions" if kind == "sysext" else "var/lib/confexts"
    tree = root / directory / "control"
    scope = f"\n{kind.upper()}_SCOPE=initrd system" if initrd else ""
    _write(tree, f"{REL_DIR[kind]}/extension-release.control", f"ID=_any{scope}\n")
    _write(tree, MARK[kind].format(id="control"), "control\n")


@pytest.fixture(scope="module")
def matrix(tmp_path_factory) -> dict[str, tuple[Case, Path, Path]]:
    """case id → (case, root, image path in the root); every image built once."""
    require_root()
    require_tool("mksquashfs", "squashfs-tools")
    require_tool("mkfs.erofs", "erofs-utils")
    base = tmp_path_factory.mktemp("matrix")
    out = {}
    for case in all_cases():
        work = base / case.id
        tree = work / "tree"
        _populate(tree, case)
        root = make_root(work / "root", case.host)
        _write(root, "usr/share/matrix/.keep", "")
        directory = case.directory or ("/var/lib/extensions" if case.kind == "sysext"
                                       else "/var/lib/confexts")
        dest = root / directory.lstrip("/") / case.image_file
        dest.parent.mkdir(parents=True, exist_ok=True)
        if case.file_name and case.file_name.endswith(".v"):
            dest.mkdir()
            if case.v_inner and case.fmt == "dir":
                os.rename(tree, dest / case.v_inner)
            elif case.v_inner:
                _pack(tree, dest / case.v_inner, case.fmt)
        elif case.fmt == "dir":
            os.rename(tree, dest)
        else:
            _pack(tree, dest, case.fmt)
        if case.broken_neighbour:
            neighbour = work / "neighbour"
            _write(neighbour, f"{REL_DIR[case.kind]}/extension-release.not-zbroken",
                   "ID=debian\nVERSION_ID=12\n")
            _pack(neighbour, dest.parent / "zbroken.raw", "raw")
        if case.mask_dir:
            (root / case.mask_dir.lstrip("/") / case.image_file.removesuffix(".raw")).mkdir(
                parents=True)
        _control(root, case.kind, case.initrd)
        if case.initrd:  # 259+ read the scope from the tree, older ones from SYSTEMD_IN_INITRD
            _write(root, "etc/initrd-release", case.host)
        out[case.id] = (case, root, dest)
    return out


# ---- running the real binaries ---------------------------------------------------------------

#: Namespaces run side by side: a merge mostly waits (loop devices, mounts), it barely computes.
WORKERS = 4


def run_real(argv: list[str], cases: list[tuple[Case, Path]],
             extra: tuple[str, ...] = ()) -> dict[str, str]:
    """``merge --root`` for each case, in WORKERS private namespaces (each with its own /run,
    the cases of one namespace one after another); returns case id → raw log."""
    require_tool("unshare", "util-linux")
    binary = shlex.join(argv)
    chunks = [cases[n::WORKERS] for n in range(WORKERS)]
    procs = []
    for chunk in chunks:
        if not chunk:
            continue
        parts = ["mount --make-rshared / && mount -t tmpfs tmpfs /run"]
        for case, root in chunk:
            initrd = "SYSTEMD_IN_INITRD=1" if case.initrd else "SYSTEMD_IN_INITRD=0"
            parts.append(f"echo '@@@ {case.id}' >&2; {initrd} SYSTEMD_LOG_LEVEL=debug "
                         f"{binary} merge {shlex.join(extra)} --root={shlex.quote(str(root))} "
                         ">&2; echo \"@@rc=$?\" >&2")
        # Each namespace logs to a file, never a pipe: a merge holds the host-wide lock on
        # /dev/loop-control while it logs, so a pipe nobody reads yet (namespaces are read one
        # after another) would stop every other merge on the machine.
        log_file = tempfile.TemporaryFile(mode="w+")
        procs.append((subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", "; ".join(parts)],
            stdout=subprocess.DEVNULL, stderr=log_file, text=True), log_file))
    logs: dict[str, str] = {}
    for proc, log_file in procs:
        with log_file:
            try:
                proc.wait(timeout=600)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
            log_file.seek(0)
            stderr = log_file.read()
        current = None
        for line in stderr.splitlines():
            if line.startswith("@@@ "):
                current = line[4:].strip()
                logs[current] = ""
            elif current:
                logs[current] += line + "\n"
    return logs


def real_verdict(log: str, names: set[str]) -> str:
    """The real outcome from the log: 'Using extensions …' names the images merged (by name up
    to 256, by file name — foo.raw — from 257 on)."""
    match = re.search(r"^Using extensions '(.*)'\.$", log, re.M)
    rc = re.search(r"@@rc=(\d+)", log)
    if rc and rc.group(1) != "0" or not match:
        return rules.BREAKS
    used = match.group(1).split("', '")
    if "control" not in used:
        return rules.BREAKS
    return rules.MERGES if names & set(used) else rules.IGNORED


def predicted(case: Case, root: Path, image: Path, version: str,
              force: bool = False) -> rules.Verdict:
    host = hostmod.detect(root, systemd=version, initrd=case.initrd)
    return check_cmd.check_one(image, host, case.kind, force=force).verdict


def compare(matrix, argv: list[str], version: str, kind: str,
            force: bool = False) -> tuple[int, list[str]]:
    chosen = [(case, root, image) for case, root, image in matrix.values()
              if case.kind == kind and int(version.split(".")[0]) >= case.min_major]
    logs = run_real(argv, [(c, r) for c, r, _ in chosen], ("--force",) if force else ())
    problems = []
    for case, root, image in chosen:
        guess = predicted(case, root, image, version, force)
        log = logs.get(case.id, "")
        # a masked image never merges: its name in the log is the empty directory masking it
        names = set() if case.mask_dir else {guess.name, case.image_file, case.v_inner} - {None}
        real = real_verdict(log, names)
        rc = re.search(r"@@rc=(\d+)", log)
        if real == guess.verdict == rules.BREAKS and (
                rc is None or int(rc.group(1)) != guess.systemd_exit):
            problems.append(f"{case.id}: systemd {version}{' --force' if force else ''} exits "
                            f"{rc.group(1) if rc else '?'}, check says systemd_exit "
                            f"{guess.systemd_exit} ({guess.rule.id})")
        if real != guess.verdict:
            tail = "\n      ".join(line for line in log.splitlines()
                                   if case.name in line or "Failed" in line or "@@rc" in line
                                   or "Using" in line)[-1500:]
            problems.append(f"{case.id}: systemd {version}{' --force' if force else ''} "
                            f"{real!r}, check {guess.verdict!r} ({guess.rule.id})\n      {tail}")
    return len(chosen), problems


def real_binary(major: int, kind: str) -> tuple[list[str], str]:
    """(argv prefix, full version) of the real systemd-KIND ``major``."""
    try:
        argv = systemd_versions.systemd_binary(major, f"systemd-{kind}")
        version = systemd_versions.systemd_version(major)
    except systemd_versions.Unavailable as exc:
        missing(f"systemd {major}: {exc}")
    assert version.split(".")[0] == str(major), version
    return argv, version


#: (systemd major, kind): 252 is the host's own (no confext); the others are fetched once.
RUNS = [pytest.param(major, kind, id=f"{major}-{kind}",
                     marks=[pytest.mark.network] if major != 252 else [])
        for major in systemd_versions.VERSIONS for kind in ("sysext", "confext")
        if (major, kind) != (252, "confext")]


@pytest.mark.parametrize("force", [False, True], ids=["", "force"])
@pytest.mark.parametrize(("major", "kind"), RUNS)
def test_matrix(matrix, major, kind, force):
    argv, version = real_binary(major, kind)
    count, problems = compare(matrix, argv, version, kind, force)
    assert count >= 60
    assert not problems, f"{len(problems)}/{count} differ:\n" + "\n".join(problems)


MODELLED = ("252.38", "254.26", "257.13", "262.1")


def test_every_rule_the_binaries_can_show_is_exercised(matrix):
    """The matrix covers each rule that applies to a version it runs (some only elsewhere)."""
    seen = set()
    for case, root, image in matrix.values():
        for version in MODELLED:
            if case.kind == "confext" and version.startswith("252"):
                continue
            for force in (False, True):
                verdict = predicted(case, root, image, version, force)
                seen.add(verdict.rule.id)
                seen.update(re.findall(r"by rule (\S+)", " ".join(verdict.notes)))
    expected = {r.id for r in rules.RULES.values()
                if any(r.applies(rules.parse_version(v)) for v in MODELLED)} - set(NOT_SHOWN)
    assert expected - seen == set()


#: Rules no binary here can show, and why (docs/troubleshooting.md lists them too).
NOT_SHOWN = rules.NOT_SHOWN_HERE


def test_untested_rules_are_the_ones_no_binary_can_show():
    assert {r.id for r in rules.RULES.values() if not r.tested} == set(NOT_SHOWN)
