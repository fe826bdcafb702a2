"""Each runtime pitfall: a payload that triggers it and a near one that does not."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli, write_recipe
from pkgfactory import build_deb, file

from pipeline.formats import entry as E
from pipeline.pitfalls import find
from pipeline.staging import Record

DEBIAN = {"ID": "debian", "VERSION_ID": "12", "ARCHITECTURE": "x86-64"}


def f(mode=0o644, **kw) -> Record:
    return Record(E.FILE, mode, **kw)


CASES = [
    # code, kind, records that trigger, records that do not, release fields
    ("units-need-reload", "sysext", {"usr/lib/systemd/system/a.service": f()},
     {"usr/lib/systemd/system/a.service.d/x.txt": f(), "usr/share/a.service.txt": f()}, DEBIAN),
    ("confext-noexec", "confext", {"etc/a/run.sh": f(0o755)}, {"etc/a/a.conf": f()}, DEBIAN),
    ("setuid", "sysext", {"usr/bin/s": f(0o4755)}, {"usr/bin/s": f(0o755)}, DEBIAN),
    ("kernel-modules", "sysext", {"usr/lib/modules/6.1.0/extra/x.ko.xz": f()},
     {"usr/lib/modules-load.d/x.conf": f()}, DEBIAN),
    ("udev-rules", "sysext", {"usr/lib/udev/rules.d/90-x.rules": f()},
     {"usr/lib/udev/x-helper": f(0o755)}, DEBIAN),
    ("shadows-host", "sysext", {"usr/lib/x86_64-linux-gnu/libc.so.6": f(),
                                "usr/lib/systemd/systemd": f(0o755)},
     {"usr/lib/x86_64-linux-gnu/libcurl.so.4": f(), "usr/lib/systemd/systemd-x": f()}, DEBIAN),
    ("config-in-usr", "sysext", {"usr/share/x/defaults.conf": f(config=True)},
     {"usr/share/x/defaults.conf": f()}, DEBIAN),
    ("dangling-link", "sysext", {"usr/lib/python3/sitecustomize.py": Record(
        E.SYMLINK, 0o777, target="/etc/python3/sitecustomize.py")},
     {"usr/lib/x.so": Record(E.SYMLINK, 0o777, target="x.so.1")}, DEBIAN),
    ("version-id-only", "sysext", {}, {}, {"ID": "rhel", "VERSION_ID": "9.4"}),
    ("any-without-arch", "sysext", {"usr/bin/tool": f(0o755)}, {"usr/share/x.txt": f()},
     {"ID": "_any"}),
]


@pytest.mark.parametrize("code, kind, bad, good, fields", CASES, ids=[c[0] for c in CASES])
def test_pitfall_triggers_and_does_not(code, kind, bad, good, fields):
    assert code in {x.code for x in find(kind, bad, fields, {})}
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


def test_findings_reach_the_build_output_and_manifest(tmp_path, cache_dir):
    deb = build_deb(tmp_path / "pkg", "svc", "1.0", [
        file("/usr/lib/systemd/system/svc.service", b"[Service]\nExecStart=/bin/true\n")])
    text = (f'[extension]\nname = "svc"\n[target]\nid = "debian"\nversion_id = "12"\n'
            f'[[source]]\ndeb = "{deb}"\n')
    proc = run_cli("build", str(write_recipe(tmp_path, text)), "-o", str(tmp_path / "out"),
                   "--cache-dir", str(cache_dir), "--json")
    assert proc.returncode == 0
    assert "warning: units-need-reload" in proc.stderr
    [image] = json.loads(proc.stdout)["images"]
    assert [w["code"] for w in image["warnings"]] == ["units-need-reload"]
    fixed = text.replace('version_id = "12"\n', 'version_id = "12"\nreload_manager = true\n')
    proc = run_cli("build", str(write_recipe(tmp_path, fixed)), "-o", str(tmp_path / "out"),
                   "--cache-dir", str(cache_dir), "--json")
    assert "units-need-reload" not in proc.stderr
    assert json.loads(proc.stdout)["images"][0]["extension_release"][
        "EXTENSION_RELOAD_MANAGER"] == "1"
