"""A directory image built without root is refused before any work (left over in the closing
note of issues 14-16: it was refused only at packing, after every package had been fetched and
extracted). The build, run for real as ``nobody`` (setpriv, tests/unprivileged.py), gets the
packing stage's one line and exit 2, and the package server sees no request: nothing fetched,
the cache and the output directory stay empty; verify's rebuild of a directory image as nobody
is refused before its fetch too. Packing keeps the check as the last guard
(tests/test_vary_select.py)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pytest
from pkgfactory import build_deb, file
from prereq import require_tool
from recipes_kit import EPOCH, recipe_dict, write_recipe_dict

from pipeline.errors import INPUT


class _Counting(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.server.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


def _deb(directory: Path) -> Path:
    require_tool("dpkg-deb", "dpkg")
    return build_deb(directory, "tool", "1.0",
                     [file("/usr/bin/tool", b"#!/bin/sh\necho tool\n", 0o755)],
                     compression="gzip")


@pytest.mark.root
def test_a_directory_build_without_root_is_refused_before_anything_is_fetched(
        tmp_path, unprivileged):
    deb = _deb(tmp_path)
    served = tmp_path / "served"
    served.mkdir()
    deb.rename(served / deb.name)
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Counting, directory=str(served)))
    httpd.requests = []
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/{deb.name}"
        work = unprivileged.make_workdir(mode=0o755)
        recipe = write_recipe_dict(work / "recipe", recipe_dict(
            "tool", kind="sysext", sources=[{
                "deb": url, "sha256": hashlib.sha256((served / deb.name).read_bytes()
                                                     ).hexdigest()}],
            image={"format": "directory", "source_date_epoch": EPOCH}))
        recipe.parent.chmod(0o755)
        recipe.chmod(0o644)
        cache = unprivileged.make_workdir(owner="nobody", mode=0o755)  # nobody's, empty
        out = unprivileged.make_workdir(owner="nobody", mode=0o755) / "out"
        proc = unprivileged.run_cli("nobody", "build", str(recipe), "-o", str(out),
                                    "--cache-dir", str(cache), cwd=work)
        # the same build as root fetches it (the server works and counts)
        assert proc.returncode == INPUT, proc.stderr
        assert proc.stderr.strip() == (
            "error: image.format: a directory image built without root holds uid 65534's "
            "owners, not the ones its manifest records (build it as root, or use squashfs "
            "(which records the owners))"), proc.stderr
        assert httpd.requests == []
        assert list(cache.iterdir()) == []
        assert not out.exists()
        root_out = work / "root-out"
        ok = unprivileged.run_cli("root", "build", str(recipe), "-o", str(root_out),
                                  "--cache-dir", str(tmp_path / "root-cache"), "-q", cwd=work)
        assert ok.returncode == 0, ok.stderr
        assert httpd.requests == [f"/{deb.name}"]
        # verify rebuilds what the manifest records: as nobody, refused before its fetch too
        for path in (root_out, *root_out.iterdir()):
            path.chmod(path.stat().st_mode | 0o005)
        again = unprivileged.run_cli("nobody", "verify", str(root_out / "tool.manifest.json"),
                                     "--recipe", str(recipe), "--cache-dir", str(cache),
                                     cwd=work)
        assert again.returncode == INPUT, again.stderr
        assert "error: image.format: a directory image built without root" in again.stderr
        assert httpd.requests == [f"/{deb.name}"]
        assert list(cache.iterdir()) == []
    finally:
        httpd.shutdown()
        httpd.server_close()
