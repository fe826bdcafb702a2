"""``doctor --root DIR`` suggests fixes that work on DIR (issue 16 §8): every path a fix names
is inside the tree, and the commands it prints, run literally, fix the tree doctor looked at
(real chattr, mkdir, systemctl --root and systemd-sysext refresh --root in a private mount
namespace), not the running host."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess

import pytest
from merge import in_namespace, make_root
from prereq import missing, require_tool
from recipes_kit import cli_argv, cli_env
from test_doctor import codes, doctor_json, image

UNIT = "[Unit]\nDescription=Merge System Extension Images\n[Service]\nType=oneshot\n" \
       "ExecStart=/bin/true\n[Install]\nWantedBy=sysinit.target\n"
#: the findings whose fixes this tree provokes, each fixed by running its command
PROBLEMS = {"service.disabled", "directory.immutable", "hierarchy.immutable", "merge.not-merged"}
COMMANDS = ("chattr", "mkdir", "systemctl", "systemd-sysext")


def _paths(text: str) -> list[str]:
    """Absolute paths in a fix (after a space, '(', '=' or at the start)."""
    return re.findall(r"(?:^|(?<=[\s(=]))(/[\w.+-][\w./+-]*)", text)


def _commands(fix: str) -> list[list[str]]:
    """The shell commands in a fix: 'mkdir R/opt (chattr -i R first)' → chattr, then mkdir."""
    inner = re.findall(r"\(([^()]*)\)", fix)
    outer = re.sub(r"\s*\([^()]*\)", "", fix)
    found = []
    for text in (*inner, outer):  # what the parentheses say to do first comes first
        text = text.strip().removesuffix(" first")
        argv = shlex.split(text)
        if argv and argv[0] in COMMANDS:
            found.append(argv)
    return found


@pytest.mark.root
def test_every_command_doctor_prints_for_a_root_tree_fixes_that_tree(tmp_path):
    require_tool("chattr", "e2fsprogs")
    require_tool("systemctl", "systemd")
    require_tool("systemd-sysext", "systemd")
    root = make_root(tmp_path / "root", "ID=debian\nVERSION_ID=12\n")
    units = root / "usr/lib/systemd/system"
    units.mkdir(parents=True)
    (units / "systemd-sysext.service").write_text(UNIT)
    (root / "opt").rmdir()  # an extension ships /opt files: the mount point must be created
    shutil.copy(image(tmp_path / "img", "withopt", files={"opt/withopt/mark": "y"}),
                root / "var/lib/extensions")
    (root / "etc/extensions").mkdir(parents=True)
    if subprocess.run(["chattr", "+i", str(root / "etc/extensions")]).returncode != 0:
        missing("chattr +i is not supported on this file system")
    try:
        subprocess.run(["chattr", "+i", str(root)], check=True)
        found = codes(doctor_json(root))
        assert PROBLEMS <= set(found), sorted(found)
        fixes = [f["fix"] for code in sorted(PROBLEMS) for f in found[code]]
        for finding in (f for group in found.values() for f in group):
            for path in _paths(finding["fix"]):  # nothing on the running host
                assert path.startswith(f"{root}/") or path == str(root), finding
        assert f"mkdir {root}/opt (chattr -i {root} first)" in fixes
        assert f"chattr -i {root}/etc/extensions" in fixes
        assert f"systemctl --root={root} enable systemd-sysext.service" in fixes
        assert f"systemd-sysext refresh --root={root}" in fixes
        later = []
        for fix in fixes:
            for argv in _commands(fix):
                if argv[0] == "systemd-sysext":  # mounts: in a private namespace, below
                    later.append(argv)
                    continue
                proc = subprocess.run(argv, capture_output=True, text=True)
                assert proc.returncode == 0, (argv, proc.stderr)
        assert later == [["systemd-sysext", "refresh", f"--root={root}"]]
        # the refresh and a doctor that sees its mounts, in one private mount namespace
        doctor = shlex.join([*cli_argv("doctor", "--root", root, "--systemd", "252", "--json")])
        proc = in_namespace(f"{shlex.join(later[0])} && {doctor}", env=cli_env())
        assert proc.returncode in (0, 3), proc.stderr
        after = codes(json.loads(proc.stdout))
        assert not PROBLEMS & set(after), {c: after[c] for c in PROBLEMS & set(after)}
        assert (root / "opt").is_dir() and (root / "etc/systemd/system/sysinit.target.wants/"
                                             "systemd-sysext.service").is_symlink()
    finally:
        subprocess.run(["chattr", "-i", str(root), str(root / "etc/extensions")])


def test_host_paths_in_rule_fixes_are_named_inside_the_tree(tmp_path):
    """A rule's fix naming a host directory ('move it to /var/lib/extensions', the
    certificate's /etc/verity.d) names it under --root, once; without --root it stays."""
    from pipeline.commands.doctor import in_tree
    from pipeline.host import facts as hostmod

    root = make_root(tmp_path / "root", "ID=debian\nVERSION_ID=12\n")
    fix = ("move it to /var/lib/extensions (searched: /etc/extensions, /run/extensions); "
           "install the signing certificate as /etc/verity.d/x.crt; mkdir /opt")
    tree = hostmod.detect(root, systemd="252")
    inside = in_tree(tree, fix)
    assert inside == (f"move it to {root}/var/lib/extensions (searched: {root}/etc/extensions, "
                      f"{root}/run/extensions); install the signing certificate as "
                      f"{root}/etc/verity.d/x.crt; mkdir /opt")
    assert in_tree(tree, inside) == inside  # a path already in the tree stays
    assert in_tree(tree, "put it in `/run/extensions`.") == \
        f"put it in `{root}/run/extensions`."
    assert in_tree(tree, "/var/lib/extensions-old, /etc/extensions.d") == \
        "/var/lib/extensions-old, /etc/extensions.d"  # other names: not a search directory
    assert in_tree(hostmod.detect(None, systemd="252"), fix) == fix
