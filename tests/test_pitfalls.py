"""Each runtime pitfall: a payload that triggers it and a near one that does not."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from pkgfactory import build_deb, config, file, symlink
from recipes_kit import (
    DEBIAN_12,
    CliResult,
    build_cli,
    build_recipe,
    recipe_dict,
    write_recipe_dict,
)

from pipeline.formats import entry as E
from pipeline.stages.pitfalls import find
from pipeline.stages.staging import Record

DEBIAN = {"ID": "debian", "VERSION_ID": "12", "ARCHITECTURE": "x86-64"}


def f(mode=0o644, **kw) -> Record:
    return Record(E.FILE, mode, **kw)


CASES = [
    # code, kind, records that trigger, records that do not, release fields
    ("units-need-reload", "sysext", {"usr/lib/systemd/system/a.service": f()},
     {"usr/lib/systemd/system/a.service.d/x.txt": f(), "usr/share/a.service.txt": f()}, DEBIAN),
    ("units-need-reload", "sysext", {"usr/lib/systemd/system/a.service.d/10-x.conf": f(),
                                     "usr/lib/systemd/system/service.d/10-all.conf": f(),
                                     "usr/lib/systemd/system-generators/x-generator": f(0o755),
                                     "usr/lib/systemd/system/multi-user.target.wants/a.service":
                                     Record(E.SYMLINK, 0o777, target="../a.service")},
     {"usr/lib/systemd/system-generators.txt": f(), "usr/lib/systemd/a.service.d/x.conf": f()},
     DEBIAN),
    ("units-need-reload", "confext", {"etc/systemd/system/getty@.service.d/autologin.conf": f()},
     {"etc/systemd/system.conf.d/x.conf": f(), "etc/systemd/system-generators/x": f()}, DEBIAN),
    ("confext-noexec", "confext", {"etc/a/run.sh": f(0o755)}, {"etc/a/a.conf": f()}, DEBIAN),
    ("setuid", "sysext", {"usr/bin/s": f(0o4755)}, {"usr/bin/s": f(0o755)}, DEBIAN),
    ("foreign-release-file", "sysext",
     {"usr/lib/extension-release.d/extension-release.other": f()},
     {"usr/lib/extension-release.d/extension-release.x": f(origin="extension-release")}, DEBIAN),
    ("foreign-release-file", "confext", {"etc/extension-release.d/extension-release.o": f()},
     {"etc/extension-release.d/extension-release.x": f(origin="extension-release")}, DEBIAN),
    ("kernel-modules", "sysext", {"usr/lib/modules/6.1.0/extra/x.ko.xz": f()},
     {"usr/lib/modules-load.d/x.conf": f()}, DEBIAN),
    ("udev-rules", "sysext", {"usr/lib/udev/rules.d/90-x.rules": f()},
     {"usr/lib/udev/x-helper": f(0o755)}, DEBIAN),
    ("shadows-host", "sysext", {"usr/lib/x86_64-linux-gnu/libc.so.6": f(),
                                "usr/lib/systemd/systemd": f(0o755)},
     {"usr/lib/x86_64-linux-gnu/libcurl.so.4": f(), "usr/lib/systemd/systemd-x": f()}, DEBIAN),
    *[("shadows-host", "confext", {p: f()}, {"etc/x/os-release": f(), "etc/passwd.d/x": f(),
                                             "etc/systemd/system.conf.d/x.conf": f()}, DEBIAN)
      for p in ("etc/os-release", "etc/passwd", "etc/shadow", "etc/group", "etc/gshadow",
                "etc/ld.so.preload", "etc/ld.so.conf", "etc/systemd/system.conf", "etc/fstab",
                "etc/machine-id")],
    ("config-in-usr", "sysext", {"usr/share/x/defaults.conf": f(config=True),
                                 "opt/x/x.conf": f(config=True)},
     {"usr/share/x/defaults.conf": f(),
      "usr/share/factory/etc/x/x.conf": f(config=True)}, DEBIAN),
    ("config-in-usr", "confext", {}, {"etc/x/x.conf": f(config=True)}, DEBIAN),
    ("dangling-link", "sysext", {"usr/lib/python3/sitecustomize.py": Record(
        E.SYMLINK, 0o777, target="/etc/python3/sitecustomize.py")},
     {"usr/lib/x.so": Record(E.SYMLINK, 0o777, target="x.so.1")}, DEBIAN),
    ("dangling-link", "sysext", {"usr/share/x/config": Record(
        E.SYMLINK, 0o777, target="../../../etc/x/config"), "usr/share/x/state": Record(
        E.SYMLINK, 0o777, target="../../../../../var/lib/x")},
     {"usr/share/x/doc": Record(E.SYMLINK, 0o777, target="../../doc/x"),
      "usr/share/x/etc": Record(E.SYMLINK, 0o777, target="../../../etc")}, DEBIAN),
    ("version-id-only", "sysext", {}, {}, {"ID": "rhel", "VERSION_ID": "9.4"}),
    ("no-version", "sysext", {}, {}, {"ID": "debian", "ARCHITECTURE": "x86-64"}),
    ("any-without-arch", "sysext", {"usr/bin/tool": f(0o755)}, {"usr/share/x.txt": f()},
     {"ID": "_any"}),
]


@pytest.mark.parametrize("code, kind, bad, good, fields", CASES,
                         ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_pitfall_triggers_and_does_not(code, kind, bad, good, fields):
    if bad or code in ("version-id-only", "no-version"):
        assert code in {x.code for x in find(kind, bad, fields, {})}
    if code == "no-version":
        for ok in ({"ID": "debian", "VERSION_ID": "12"}, {"ID": "debian", "SYSEXT_LEVEL": "1"},
                   {"ID": "_any", "ARCHITECTURE": "x86-64"}):
            assert code not in {x.code for x in find(kind, good, ok, {})}
        return
    if code == "version-id-only":  # the "good" variants are other release fields
        for ok in ({"ID": "debian", "VERSION_ID": "12"},
                   {"ID": "rhel", "VERSION_ID": "9.4", "SYSEXT_LEVEL": "1"},
                   {"ID": "_any", "ARCHITECTURE": "x86-64"}):
            assert code not in {x.code for x in find(kind, good, ok, {})}
        return
    if code == "any-without-arch":
        assert code not in {x.code for x in find(kind, bad, {**fields, "ARCHITECTURE": "x86-64"},
                                                  {})}
    if code == "units-need-reload":
        assert code not in {x.code for x in find(kind, bad, {**fields,
                                                             "EXTENSION_RELOAD_MANAGER": "1"}, {})}
    assert code not in {x.code for x in find(kind, good, fields, {})}


def test_severities_are_warning_or_severe():
    """"error" is what the CLI prints for failures that exit non-zero; a finding never is."""
    everything = {p: r for _, _, bad, _, _ in CASES for p, r in bad.items()}
    for kind in ("sysext", "confext"):
        findings = find(kind, everything, {"ID": "debian"}, {},
                        packages_with_scripts=(("x", ("postinst",)),))
        assert {x.severity for x in findings} == {"warning", "severe"}


def test_dangling_link_provided_by_companion_or_tmpfiles():
    link = {"usr/lib/python3/sitecustomize.py": Record(
        E.SYMLINK, 0o777, target="/etc/python3/sitecustomize.py"),
        "usr/share/x/state": Record(E.SYMLINK, 0o777, target="../../../var/lib/x/state")}
    assert find("sysext", link, DEBIAN, {})[0].paths == tuple(sorted(link))
    provided = frozenset({"/etc/python3/sitecustomize.py", "/var/lib/x/state"})
    assert "dangling-link" not in {x.code for x in find("sysext", link, DEBIAN, {},
                                                          provided=provided)}


def test_maintainer_scripts():
    scripts = (("adduser-pkg", ("postinst", "postrm")), ("plain", ()), ("rpmpkg", ("%post",)))
    [finding] = [x for x in find("sysext", {}, DEBIAN, {}, packages_with_scripts=scripts)
                 if x.code == "maintainer-scripts"]
    assert finding.severity == "warning"
    assert finding.paths == ("adduser-pkg (postinst, postrm)", "rpmpkg (%post)")
    assert "never run" in finding.message
    assert "maintainer-scripts" not in {x.code for x in find(
        "sysext", {}, DEBIAN, {}, packages_with_scripts=(("plain", ()),))}


def test_confext_os_release_says_it_replaces_the_identity():
    [finding] = [x for x in find("confext", {"etc/os-release": f()}, DEBIAN, {})
                 if x.code == "shadows-host"]
    assert finding.severity == "severe" and "every other extension" in finding.message


def both_ways(tmp_path, cache_dir, name: str, deb) -> Iterator[CliResult]:
    """Builds of ``deb`` as kind auto (a companion confext), then as a sysext with
    policy.etc = factory, into the same output directory (each is looked at before the next)."""
    for kind, policy in ((None, None), ("sysext", {"etc": "factory"})):
        spec = recipe_dict(name, kind=kind, sources=[deb], policy=policy)
        yield build_cli(write_recipe_dict(tmp_path, spec), tmp_path / "out", cache_dir=cache_dir)


def test_real_package_conffiles_do_not_trigger_config_in_usr(tmp_path, cache_dir):
    """A Debian conffile lands in the confext (auto) or in usr/share/factory (policy factory):
    neither is configuration stuck under a read-only /usr."""
    deb = build_deb(tmp_path / "pkg", "cfg", "1.0", [
        file("/usr/bin/cfg", b"#!/bin/sh\n", 0o755), config("/etc/cfg/cfg.conf", b"a=1\n")])
    for proc in both_ways(tmp_path, cache_dir, "cfg", deb):
        assert "config-in-usr" not in proc.stderr
        for image in proc.images:
            assert "config-in-usr" not in [w["code"] for w in
                                           json.loads(open(image["manifest"]).read())["warnings"]]


def test_real_package_link_into_companion_confext_does_not_dangle(tmp_path, cache_dir):
    """The link's target ships in the companion confext (kind auto) or is copied to /etc by
    a factory `C` line (policy.etc = factory): only the link to a file nobody ships dangles."""
    deb = build_deb(tmp_path / "pkg", "py", "1.0", [
        config("/etc/py/sitecustomize.py", b"# site\n"),
        symlink("/usr/lib/py/sitecustomize.py", "/etc/py/sitecustomize.py"),
        symlink("/usr/lib/py/relative.py", "../../../etc/py/sitecustomize.py"),
        symlink("/usr/lib/py/missing.py", "/etc/py/nothere.py")])
    for proc in both_ways(tmp_path, cache_dir, "py", deb):
        sysext = next(i for i in proc.images if i["kind"] == "sysext")
        [dangling] = [w for w in json.loads(open(sysext["manifest"]).read())["warnings"]
                      if w["code"] == "dangling-link"]
        assert dangling["paths"] == ["usr/lib/py/missing.py"]


def test_findings_reach_the_build_output_and_manifest(tmp_path, cache_dir):
    deb = build_deb(tmp_path / "pkg", "svc", "1.0", [
        file("/usr/lib/systemd/system/svc.service", b"[Service]\nExecStart=/bin/true\n")])
    proc = build_recipe(tmp_path, recipe_dict("svc", sources=[deb]), cache_dir=cache_dir)
    assert "warning: units-need-reload" in proc.stderr
    assert [w["code"] for w in proc.image["warnings"]] == ["units-need-reload"]
    fixed = recipe_dict("svc", target={**DEBIAN_12, "reload_manager": True}, sources=[deb])
    proc = build_recipe(tmp_path, fixed, cache_dir=cache_dir)
    assert "units-need-reload" not in proc.stderr
    assert proc.json["images"][0]["extension_release"][
        "EXTENSION_RELOAD_MANAGER"] == "1"
