"""issue 11 §2: a foreign image never reaches the kernel unchecked, and what it carries never
reaches the host.

A squashfs image (mksquashfs pseudo definitions) and an erofs image (mkfs.erofs from a tree made
as root) carry a character and a block device, a setuid and a setgid binary with a file
capability, a FIFO and a symlink to /etc/shadow. Every command that reads images (check,
install --root, doctor --root, diff, inspect) runs on them with TMPDIR in the test's directory
and a ``mount`` in PATH that runs the real mount and then writes /proc/self/mountinfo from inside
the namespace it ran in. Afterwards no device node, set-id file or file capability exists
anywhere the commands wrote (TMPDIR, --root, the test directory), no squashfs/erofs was mounted,
and every mount that was made (the private unpacking tmpfs) is nosuid,nodev,noexec.

verify is not run: it needs a recipe and a manifest to rebuild, which a foreign image has not.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO
from merge import make_root
from prereq import require_root, require_tool

RELEASE = "ID=debian\nVERSION_ID=12\n"

#: A mount that logs: the real mount, then (from inside the namespace it ran in) the mount
#: table, between markers, into the log next to it.
_MOUNT_WRAPPER = """#!/bin/sh
/usr/bin/mount "$@"
rc=$?
{{ echo "=== mount $*"; cat /proc/self/mountinfo; echo "=== end"; }} >> {log}
exit $rc
"""


def _plain_tree(root: Path, payload: str) -> Path:
    (root / "usr/lib/extension-release.d").mkdir(parents=True)
    (root / "usr/lib/extension-release.d/extension-release.evil").write_text(RELEASE)
    (root / "usr/bin").mkdir()
    for name in ("su", "sg"):
        (root / "usr/bin" / name).write_text(f"#!/bin/sh\necho {payload}\n")
        (root / "usr/bin" / name).chmod(0o755)
    (root / "usr/share/evil").mkdir(parents=True)
    (root / "usr/share/evil/README").write_text(payload)
    return root


def _setcap(path: Path) -> None:
    subprocess.run(["setcap", "cap_net_raw+ep", str(path)], check=True, capture_output=True)


def make_squashfs(work: Path, name: str, payload: str) -> Path:
    """Devices, set-id modes, the FIFO and the symlink as mksquashfs pseudo definitions; the
    capability as a real xattr on the source file."""
    tree = _plain_tree(work / f"src-{name}", payload)
    _setcap(tree / "usr/bin/su")
    (work / name).mkdir()
    image = work / name / "evil.raw"
    pseudo = ["usr/bin/su m 4755 0 0", "usr/bin/sg m 2755 0 0",
              "usr/share/evil/null c 666 0 0 1 3", "usr/share/evil/sda b 660 0 0 8 0",
              "usr/share/evil/fifo i 644 0 0 f", "usr/share/evil/shadow s 777 0 0 /etc/shadow"]
    args = ["mksquashfs", str(tree), str(image), "-quiet", "-no-progress", "-all-root",
            "-mkfs-time", "1700000000", "-all-time", "1700000000"]
    for line in pseudo:
        args += ["-p", line]
    subprocess.run(args, check=True, capture_output=True)
    return image


def make_erofs(work: Path, name: str, payload: str) -> Path:
    """The same, made as root in a real tree: mknod, mkfifo, chmod, setcap, symlink."""
    tree = _plain_tree(work / f"src-{name}", payload)
    evil = tree / "usr/share/evil"
    os.mknod(evil / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(evil / "sda", 0o660 | stat.S_IFBLK, os.makedev(8, 0))
    os.mkfifo(evil / "fifo", 0o644)
    os.symlink("/etc/shadow", evil / "shadow")
    _setcap(tree / "usr/bin/su")
    os.chmod(tree / "usr/bin/su", 0o4755)
    os.chmod(tree / "usr/bin/sg", 0o2755)
    (work / name).mkdir()
    image = work / name / "evil.raw"
    subprocess.run(["mkfs.erofs", "-T1700000000", "--all-root", str(image), str(tree)],
                   check=True, capture_output=True)
    return image


def _watch(child: subprocess.Popen, tops: tuple[Path, ...], seen: list[str]) -> None:
    while child.poll() is None:
        for top in tops:
            try:
                seen.extend(dangerous(top))
            except FileNotFoundError:  # removed while walked
                pass
        time.sleep(0.002)


def dangerous(top: Path) -> list[str]:
    """Device nodes, set-id files and files with a capability under ``top`` (symlinks are
    not followed)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                found.append(f"device {full}")
            elif stat.S_ISLNK(st.st_mode):
                continue
            elif st.st_mode & 0o6000:
                found.append(f"set-id {full}")
            if not stat.S_ISLNK(st.st_mode) and \
                    "security.capability" in os.listxattr(full, follow_symlinks=False):
                found.append(f"capability {full}")
    return found


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    require_root()
    for tool, package in (("mksquashfs", "squashfs-tools"), ("mkfs.erofs", "erofs-utils"),
                          ("fsck.erofs", "erofs-utils"), ("setcap", "libcap2-bin"),
                          ("unshare", "util-linux")):
        require_tool(tool, package)
    work = tmp_path_factory.mktemp("hostile")
    images = {"squashfs": make_squashfs(work, "evil-sq", "one"),
              "squashfs2": make_squashfs(work, "evil-sq2", "two"),
              "erofs": make_erofs(work, "evil-ero", "one"),
              "erofs2": make_erofs(work, "evil-ero2", "two")}
    sources = sorted(work.glob("src-*"))
    # the sources really carry what the scan looks for (else the scan proves nothing) ...
    assert {line.split()[0] for line in dangerous(work)} == {"device", "set-id", "capability"}
    for tree in sources:  # ... and then go: from here on the scan must find nothing
        shutil.rmtree(tree)
    assert dangerous(work) == []
    return images


def _listing(image: Path) -> str:
    if image.read_bytes()[:4] == b"hsqs":
        return subprocess.run(["unsquashfs", "-lln", str(image)], capture_output=True,
                              text=True, check=True).stdout
    return ""


def test_hostile_images_carry_what_they_should(hostile):
    listing = _listing(hostile["squashfs"])
    for expected in ("-rwsr-xr-x 0/0", "-rwxr-sr-x 0/0", "crw-rw-rw- 0/0", "brw-rw---- 0/0",
                     "prw-r--r-- 0/0", "/usr/share/evil/shadow -> /etc/shadow"):
        assert expected in listing, expected


@pytest.mark.parametrize("fs", ["squashfs", "erofs"])
def test_every_command_reads_hostile_images_without_privileges(hostile, fs, tmp_path):
    image, other = hostile[fs], hostile[f"{fs}2"]
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    wrap = tmp_path / "wrap"
    wrap.mkdir()
    log = tmp_path / "mounts.log"
    (wrap / "mount").write_text(_MOUNT_WRAPPER.format(log=log))
    (wrap / "mount").chmod(0o755)
    root = make_root(tmp_path / "root", RELEASE)
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(REPO),
           "PATH": f"{wrap}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"}
    # squashfs/erofs the host itself had mounted already (a snap, a merged extension): a
    # namespace's copy of the mount table holds them too, and they are not the commands' doing
    host_images = _image_mounts(Path("/proc/self/mountinfo").read_text())

    seen: list[str] = []

    def cli(*args: str) -> subprocess.CompletedProcess:
        """Run the command; while it runs, watch TMPDIR and --root for what must never appear
        there, even for a moment (a temporary copy is removed before a later scan could see
        it)."""
        with subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
            watcher = threading.Thread(target=_watch, args=(child, (tmpdir, root), seen))
            watcher.start()
            out, err = child.communicate(timeout=600)
            watcher.join()
        assert "Traceback" not in err, err
        return subprocess.CompletedProcess(args, child.returncode, out, err)

    check = cli("check", str(image), "--root", str(root), "--systemd", "252", "--json")
    assert check.returncode == 0, check.stderr + check.stdout
    install = cli("install", str(image), "--root", str(root), "--systemd", "252")
    assert install.returncode == 0, install.stderr
    assert (root / "var/lib/extensions" / image.name).is_file()
    doctor = cli("doctor", "--root", str(root), "--systemd", "252", "--json")
    assert doctor.returncode in (0, 3), doctor.stderr
    report = json.loads(doctor.stdout)
    assert [i["path"] for i in report["images"]] == [f"/var/lib/extensions/{image.name}"]
    assert not [f for f in report["findings"] if f["code"] == "image.unreadable"], report
    diff = cli("diff", "--images-only", "--full", "--json", str(image), str(other))
    assert diff.returncode == 3, diff.stderr
    assert "usr/share/evil/README" in diff.stdout  # the trees were read and compared
    inspect = cli("inspect", "--json", str(image))
    assert inspect.returncode == 0, inspect.stderr
    fsreport = json.loads(inspect.stdout)["filesystem"]
    assert fsreport["trusted"] is False and fsreport["read_with"] in ("unsquashfs", "fsck.erofs")

    # nothing the images carry exists on the host, nor existed while the commands ran
    assert seen == []
    assert dangerous(tmp_path) == []
    assert list(tmpdir.iterdir()) == []  # and every temporary directory is gone

    # no image was mounted; the mounts that were made are inert
    text = log.read_text()
    calls = text.split("=== mount ")[1:]
    assert calls, "the wrapper saw no mount: the test would prove nothing"
    for call in calls:
        args, _, table = call.partition("\n")
        assert " -t tmpfs " in f" {args} ", args  # never squashfs/erofs, never a loop device
        target = args.split()[-1]
        lines = [m for m in table.splitlines() if len(m.split()) > 5 and m.split()[4] == target]
        assert lines, f"{target} not in the namespace's mountinfo"
        options = set(lines[-1].split()[5].split(","))
        assert {"nosuid", "nodev", "noexec"} <= options, lines[-1]
        assert _image_mounts(table) <= host_images, table


def _image_mounts(mountinfo: str) -> set[tuple[str, str, str]]:
    """(mount point, type, source) of every squashfs and erofs mount in ``mountinfo``."""
    found = set()
    for line in mountinfo.splitlines():
        _, sep, after = line.partition(" - ")
        fields = line.split()
        if sep and len(fields) > 4 and after.split()[:1] in (["squashfs"], ["erofs"]):
            found.add((fields[4], after.split()[0], (after.split() + [""])[1]))
    return found


def test_copying_out_drops_what_the_host_must_not_get(hostile, tmp_path):
    """fsinfo.extract (doctor's copy) of the whole tree: files and symlinks arrive, devices,
    FIFOs, set-id bits and capabilities do not."""
    from pipeline.image import fsinfo

    for fs in ("squashfs", "erofs"):
        dest = fsinfo.extract(hostile[fs], tmp_path / fs)
        assert (dest / "usr/bin/su").read_text() == "#!/bin/sh\necho one\n"
        assert stat.S_IMODE((dest / "usr/bin/su").stat().st_mode) == 0o755
        assert os.readlink(dest / "usr/share/evil/shadow") == "/etc/shadow"
        assert sorted(p.name for p in (dest / "usr/share/evil").iterdir()) == \
            ["README", "shadow"]
        # what the image says is still seen (inert, in the private namespace), not lost
        kinds = {e["path"]: e for e in fsinfo.walk_image(hostile[fs], hashes=False)}
        assert kinds["usr/share/evil/null"]["type"] == "chardev"
        assert kinds["usr/share/evil/fifo"]["type"] == "fifo"
        if fs == "squashfs":  # fsck.erofs 1.5 loses set-id bits itself (chown after chmod)
            assert kinds["usr/bin/su"]["mode"] == "4755"
    assert dangerous(tmp_path) == []


def test_erofs_metadata_reader_survives_corruption(hostile, tmp_path):
    """The pure-Python erofs reader (what describes an untrusted erofs tree) on 400 damaged
    copies of a real image: each either reads or is refused with an InputError naming the
    image — never another exception, a read outside the image or a hang."""
    import random

    from pipeline.errors import InputError
    from pipeline.image.fsinfo.erofs import Reader, _crc32c

    original = hostile["erofs"].read_bytes()
    with Reader(hostile["erofs"]) as reader:
        assert {e["path"]: e["type"] for _, e in reader.walk()}["usr/share/evil/null"] == \
            "chardev"
    rng = random.Random(11)
    bad = tmp_path / "bad.raw"
    outcomes = {"read": 0, "refused": 0}
    for _ in range(400):
        damaged = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(1024 + 128, min(len(damaged), 8192))] = rng.randrange(256)
        if rng.random() < 0.9:  # a crafted image has a matching superblock checksum
            damaged[1028:1032] = bytes(4)
            damaged[1028:1032] = _crc32c(bytes(damaged[1024:4096])).to_bytes(4, "little")
        bad.write_bytes(damaged)
        try:
            with Reader(bad) as reader:
                for _path, entry, ino in reader.walk_inodes():
                    if entry["type"] == "file":
                        reader.file_sha256(ino)
            outcomes["read"] += 1
        except InputError as err:
            assert str(bad) in err.line()
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0 and outcomes["read"] > 0, outcomes


def test_temporary_directory_behind_a_symlink_with_a_space(hostile, tmp_path, monkeypatch):
    """The mount check reads mountinfo, which names the real path (octal-escaped): a TMPDIR
    that is a symlink, with a space in its name, must not make every read fail."""
    import tempfile

    from pipeline.image import fsinfo

    real = tmp_path / "real dir"
    real.mkdir()
    (tmp_path / "link tmp").symlink_to(real)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "link tmp"))
    for fs in ("squashfs", "erofs"):
        for trusted in (False, True):
            with fsinfo.opened(hostile[fs], trusted=trusted) as view:
                assert (view.root / "usr/share/evil/README").read_text() == "one"
    assert list(real.iterdir()) == []


@pytest.mark.parametrize("options", [["-zlz4hc"], ["-zlz4", "-Eztailpacking"],
                                     ["--chunksize=4096"]])
def test_erofs_metadata_agrees_with_the_kernel(options, tmp_path):
    """The Python description of an erofs tree (untrusted) equals what the kernel shows of the
    same image mounted (trusted), for compressed, tail-packed and chunked images."""
    require_root()
    require_tool("mkfs.erofs", "erofs-utils")
    from pipeline.image import fsinfo

    tree = _plain_tree(tmp_path / "src", "x" * 9000)
    os.symlink("../share/evil/README", tree / "usr/bin/readme")
    os.link(tree / "usr/bin/su", tree / "usr/bin/su-again")
    os.chmod(tree / "usr/bin/su", 0o4755)
    os.setxattr(tree / "usr/bin/sg", "user.note", b"hello")
    image = tmp_path / "x.raw"
    subprocess.run(["mkfs.erofs", *options, str(image), str(tree)], check=True,
                   capture_output=True)
    untrusted = list(fsinfo.walk_image(image))
    assert untrusted == list(fsinfo.walk_image(image, trusted=True))
    su = next(e for e in untrusted if e["path"] == "usr/bin/su")
    assert su["mode"] == "4755" and su["nlink"] == 2


def test_root_without_cap_sys_admin_uses_a_user_namespace(hostile, tmp_path):
    """Root in a container without CAP_SYS_ADMIN (capsh drops it for real) cannot make a mount
    namespace; the unpacking then runs in a user namespace's private tmpfs, still never on the
    host."""
    require_tool("capsh", "libcap2-bin")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(REPO)}

    def capped(*args: str) -> subprocess.CompletedProcess:
        command = " ".join(shlex.quote(a) for a in (sys.executable, "-m", "pipeline", *args))
        return subprocess.run(["capsh", "--drop=cap_sys_admin", "--", "-c", command],
                              cwd=tmp_path, env=env, capture_output=True, text=True)

    probe = subprocess.run(["capsh", "--drop=cap_sys_admin", "--", "-c", "unshare -m true"],
                           capture_output=True, text=True)
    assert probe.returncode != 0  # really no mount namespace for this root
    inspect = capped("inspect", "--json", str(hostile["squashfs"]))
    assert inspect.returncode == 0, inspect.stderr
    assert json.loads(inspect.stdout)["filesystem"]["files"] == 4
    diff = capped("diff", "--images-only", "--full", "--json", str(hostile["squashfs"]),
                  str(hostile["squashfs2"]))
    assert diff.returncode == 3 and "usr/share/evil/README" in diff.stdout, diff.stderr
    # erofs: metadata and uncompressed contents are read in Python, no fsck.erofs needed
    erofs = capped("diff", "--images-only", "--full", "--json", str(hostile["erofs"]),
                   str(hostile["erofs2"]))
    assert erofs.returncode == 3 and "usr/share/evil/README" in erofs.stdout, erofs.stderr
    assert dangerous(tmp_path) == [] and list(tmpdir.iterdir()) == []
