"""Maintainer scripts (issue 16 §6): the warning says what a package's install scripts would
have made — tcpdump's postinst creates the system user tcpdump, which tcpdump drops privileges
to — and the fix (a sysusers.d line); an image that ships a sysusers.d file defining that user
gets no warning for it. Scripts are read from the package's control.tar, as dpkg would run
them; what this module does not judge is still named."""

from __future__ import annotations

import subprocess
from pathlib import Path

from prereq import require_tool
from recipes_kit import EPOCH, build_recipe, recipe_dict

from pipeline.stages.pitfalls import script_effects, script_findings

#: tcpdump 4.99.3-1's (Debian 12) postinst and preinst, as its package ships them (tabs as spaces)
TCPDUMP_POSTINST = r"""#!/bin/sh -e

if ! getent group tcpdump >/dev/null 2>&1; then
    addgroup --system --quiet tcpdump
fi
if ! getent passwd tcpdump >/dev/null 2>&1; then
    adduser --system --quiet --ingroup tcpdump          \
            --no-create-home --home /nonexistent        \
            tcpdump
fi

# Only remove it if it's empty, meaning that the system doesn't have
# local configuration.
if dpkg --compare-versions "$2" lt-nl "4.99.1-3~"; then
    OLD_LOCAL_APP_PROFILE="/etc/apparmor.d/local/usr.sbin.tcpdump"
    if [ -e "$OLD_LOCAL_APP_PROFILE" ]; then
        if [ ! -s "$OLD_LOCAL_APP_PROFILE" ]; then
            rm -f "$OLD_LOCAL_APP_PROFILE"
        fi
    fi
fi

# Automatically added by dh_apparmor/3.0.8-1
if [ "$1" = "configure" ]; then
    APP_PROFILE="/etc/apparmor.d/usr.bin.tcpdump"
    if [ -f "$APP_PROFILE" ]; then
        LOCAL_APP_PROFILE="/etc/apparmor.d/local/usr.bin.tcpdump"
        test -e "$LOCAL_APP_PROFILE" || {
            mkdir -p `dirname "$LOCAL_APP_PROFILE"`
            install --mode 644 /dev/null "$LOCAL_APP_PROFILE"
        }
        if aa-enabled --quiet 2>/dev/null; then
            apparmor_parser -r -T -W "$APP_PROFILE" || true
        fi
    fi
fi
# End automatically added section
# Automatically added by dh_installdeb/13.11.4
dpkg-maintscript-helper mv_conffile /etc/apparmor.d/usr.sbin.tcpdump /etc/apparmor.d/usr.bin.tcpdump 4.99.0\~ -- "$@"
# End automatically added section
"""
TCPDUMP_PREINST = """#!/bin/sh
set -e
# Automatically added by dh_installdeb/13.11.4
dpkg-maintscript-helper mv_conffile /etc/apparmor.d/usr.sbin.tcpdump /etc/apparmor.d/usr.bin.tcpdump 4.99.0\\~ -- "$@"
# End automatically added section
"""
TCPDUMP_POSTRM = """#!/bin/sh -e
case "$1" in
    purge)
        userdel tcpdump >/dev/null 2>&1 || true
        groupdel tcpdump >/dev/null 2>&1 || true
        ;;
esac
"""
TCPDUMP = {"postinst": TCPDUMP_POSTINST, "preinst": TCPDUMP_PREINST, "postrm": TCPDUMP_POSTRM}


def test_tcpdumps_scripts_make_one_user_and_nothing_else_an_extension_needs():
    effects = script_effects(TCPDUMP)
    assert effects.users == {"tcpdump": ("tcpdump", "/nonexistent")}
    assert effects.groups == ["tcpdump"]
    assert effects.other == []  # apparmor's and dpkg's sections, the cleanup: nothing to ship


def test_the_warning_says_what_and_how_and_goes_with_a_sysusers_file():
    packages = (("tcpdump", ("postinst", "postrm", "preinst", "prerm")),)
    [finding] = script_findings(packages, {"tcpdump": TCPDUMP}, set())
    assert finding.code == "maintainer-script-users" and finding.severity == "warning"
    assert finding.paths == ("tcpdump",)
    assert "tcpdump's install scripts create the system user tcpdump (group tcpdump)" \
        in finding.message
    assert "drops privileges to it" in finding.message
    assert finding.fix.startswith("ship usr/lib/sysusers.d/tcpdump.conf ([files]) with the "
                                  "line `u tcpdump - - /nonexistent`")
    assert script_findings(packages, {"tcpdump": TCPDUMP}, {"tcpdump"}) == []
    # scripts that could not be read (an rpm's, or an unreadable control.tar): named as before
    [unread] = script_findings(packages, {}, set())
    assert unread.code == "maintainer-scripts"
    assert unread.paths == ("tcpdump (postinst, postrm, preinst, prerm)",)


def test_other_groups_and_commands_are_named():
    texts = {"postinst": "#!/bin/sh\nset -e\ngroupadd -r pcap\n"
             "useradd --system -g pcap -d /var/lib/cap capd >/dev/null\n"
             "update-alternatives --install /usr/bin/cap cap /usr/bin/cap.real 10\n"
             "mkdir -p /var/lib/cap; chown capd /var/lib/cap\n"}
    findings = {f.code: f for f in script_findings((("cap", ("postinst",)),), {"cap": texts},
                                                   set())}
    users = findings["maintainer-script-users"]
    assert "the system user capd (group pcap), the system group pcap" in users.message
    assert "`g pcap -`; `u capd -:pcap - /var/lib/cap`" in users.fix
    assert findings["maintainer-scripts"].paths == ("cap (runs update-alternatives, mkdir, "
                                                    "chown)",)


def _deb(directory: Path, name: str, scripts: dict[str, str]) -> Path:
    require_tool("dpkg-deb", "dpkg")
    root = directory / f"{name}-pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / f"usr/bin/{name}").write_text("#!/bin/sh\necho hi\n")
    (root / f"usr/bin/{name}").chmod(0o755)
    (root / "DEBIAN/control").write_text(f"Package: {name}\nVersion: 1.0\nArchitecture: amd64\n"
                                         "Maintainer: t <t@example.org>\nDescription: t\n")
    for script, text in scripts.items():
        (root / "DEBIAN" / script).write_text(text)
        (root / "DEBIAN" / script).chmod(0o755)
    deb = directory / f"{name}_1.0_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)],
                   check=True, capture_output=True)
    return deb


def _codes(result) -> dict[str, dict]:
    import json

    body = json.loads(result.stdout)
    return {w["code"]: w for image in body["images"] for w in image["warnings"]}


def test_a_build_reads_the_scripts_and_a_sysusers_file_silences_them(tmp_path):
    deb = _deb(tmp_path, "tcpdump", TCPDUMP)
    spec = recipe_dict("pcap", kind="sysext", sources=[deb],
                       image={"format": "directory", "source_date_epoch": EPOCH})
    warned = _codes(build_recipe(tmp_path / "a", spec))
    assert "maintainer-scripts" not in warned
    assert warned["maintainer-script-users"]["fix"].startswith(
        "ship usr/lib/sysusers.d/tcpdump.conf ([files]) with the line `u tcpdump - - "
        "/nonexistent`")
    spec["files"] = {"usr/lib/sysusers.d/tcpdump.conf": {
        "content": "# tcpdump drops privileges to this user\nu tcpdump - - /nonexistent\n"}}
    clean = _codes(build_recipe(tmp_path / "b", spec))
    assert not {"maintainer-scripts", "maintainer-script-users"} & set(clean), clean


def test_the_suggested_lines_make_the_users_with_the_real_systemd_sysusers(tmp_path):
    """The fix's lines, given to the real systemd-sysusers for a tree: the users exist, in the
    groups the scripts put them in."""
    import re

    require_tool("systemd-sysusers", "systemd")
    texts = {"postinst": "groupadd -r pcap\nuseradd --system -g pcap -d /var/lib/cap capd\n",
             "preinst": TCPDUMP_POSTINST}
    [finding] = script_findings((("cap", ("postinst", "preinst")),), {"cap": texts}, set())
    lines = re.findall(r"`([^`]+)`", finding.fix)
    assert lines == ["g pcap -", "u tcpdump - - /nonexistent", "u capd -:pcap - /var/lib/cap"]
    (tmp_path / "etc").mkdir()
    for name in ("passwd", "group", "shadow", "gshadow"):
        (tmp_path / "etc" / name).touch()
    subprocess.run(["systemd-sysusers", f"--root={tmp_path}", "--inline", *lines], check=True,
                   capture_output=True)
    passwd = {line.split(":")[0]: line.split(":") for line in
              (tmp_path / "etc/passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":")[2] for line in
              (tmp_path / "etc/group").read_text().splitlines()}
    assert passwd["capd"][3] == groups["pcap"] and passwd["capd"][5] == "/var/lib/cap"
    assert passwd["tcpdump"][3] == groups["tcpdump"] and passwd["tcpdump"][5] == "/nonexistent"


def test_plan_says_what_build_says(tmp_path):
    """plan lists packages without reading their data, but a sysusers.d file the recipe writes
    ([files]) is read as build reads it: the same warning, and none with the file."""
    import json

    from conftest import run_cli
    from recipes_kit import write_recipe_dict

    deb = _deb(tmp_path, "tcpdump", TCPDUMP)
    spec = recipe_dict("pcap", kind="sysext", sources=[deb],
                       image={"format": "directory", "source_date_epoch": EPOCH})

    def plan_codes(directory: Path) -> set[str]:
        recipe = write_recipe_dict(directory, spec)
        proc = run_cli("plan", str(recipe), "--json", "--cache-dir", str(tmp_path / "cache"))
        assert proc.code == 0, proc.stderr
        return {w["code"] for image in json.loads(proc.stdout)["images"]
                for w in image["warnings"]}

    assert "maintainer-script-users" in plan_codes(tmp_path / "a")
    spec["files"] = {"usr/lib/sysusers.d/tcpdump.conf": {
        "content": "u tcpdump - - /nonexistent\n"}}
    assert not {"maintainer-scripts", "maintainer-script-users"} & plan_codes(tmp_path / "b")
