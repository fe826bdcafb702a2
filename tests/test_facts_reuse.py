"""The SBOM's facts of a deb come from the control text extraction already read (issue 14): the
same facts as the bounded re-read of the file (sbom.package_facts), with no second read."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

from conftest import package_dir
from pkgfactory import build_deb, build_rpm, file

from pipeline.formats.package import Package
from pipeline.release import provenance, sbom
from pipeline.stages.extract import ExtractReport

COPYRIGHT = b"""Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
Copyright: 2024 Someone
License: GPL-2+ or Expat-like
 Some text.

License: Expat-like
 Permission is granted.
"""


def _packages(tmp_path_factory):
    out = package_dir(tmp_path_factory, "facts")
    return [
        build_deb(out, "withfields", "1.0-1", [file("/usr/bin/a", b"a\n", 0o755)],
                  fields={"Homepage": "https://example.invalid/a"}),
        build_deb(out, "plain", "2:3.0-1", [file("/usr/bin/b", b"b\n", 0o755)],
                  compression="zstd"),
        build_rpm(out, "rtool", "2.0", [file("/usr/bin/rtool", b"#!/bin/sh\n", 0o755)],
                  tags=[("Vendor", "Example Corp")]),
    ]


def _extracted(paths):
    """(fetched, report) as the build has them after extraction (infos read by Package)."""
    fetched, report = [], ExtractReport()
    for path in paths:
        fmt = "rpm" if path.suffix == ".rpm" else "deb"
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        with Package(path, fmt, sha256=sha) as package:
            for _ in package.entries():
                pass
            info = package.info
        fetched.append(SimpleNamespace(path=path, sha256=sha, filename=path.name,
                                       source=SimpleNamespace(format=fmt)))
        report.packages.append({"name": info.name})
        report.infos.append(info)
        report.copyrights[info.name] = COPYRIGHT if info.name == "withfields" else None
    return fetched, report


def test_deb_facts_equal_the_reread_and_need_no_second_read(tmp_path_factory):
    paths = _packages(tmp_path_factory)
    fetched, report = _extracted(paths)
    reread = [sbom.package_facts(f.path, f.source.format, f.sha256, f.filename,
                                 report.copyrights.get(p["name"]))
              for f, p in zip(fetched, report.packages)]
    assert reread[0].supplier.startswith("Organization: ")  # pkgfactory's Maintainer
    assert reread[0].homepage == "https://example.invalid/a" and reread[0].license
    assert provenance.read_facts(fetched, report) == reread
    # the debs are not opened again: gone, their facts still come; the rpm is re-read
    for f in fetched[:2]:
        f.path.unlink()
    assert provenance.read_facts(fetched, report) == reread
    fetched[2].path.unlink()
    try:
        provenance.read_facts(fetched, report)
    except FileNotFoundError:
        pass
    else:
        raise AssertionError("the rpm's facts were not read from its file")


def test_a_control_text_over_the_limit_gives_no_facts_as_before():
    big = "Package: x\nMaintainer: A <a@b>\nDescription: " + "y" * sbom.MAX_TEXT + "\n"
    assert sbom.deb_facts(big, None) == sbom.deb_facts("", None)
    assert sbom.deb_facts("Package: x\nMaintainer: A <a@b>\n", None).supplier == \
        "Organization: A (a@b)"
    # bytes that are not UTF-8 (kept by the reader as surrogates) read as "replace" did
    odd = b"Package: x\nMaintainer: J\xf6rg <j@x>\n".decode("utf-8", "surrogateescape")
    assert sbom.deb_facts(odd, None).supplier == "Organization: J\ufffdrg (j@x)"
