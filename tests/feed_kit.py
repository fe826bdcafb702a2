"""What the feed tests (test_publish.py, test_feed_*.py) share: ``publish`` a feed, serve it
on 127.0.0.1 (:class:`Server`), ``served_feed`` (root and unshare required, a signed feed
served, an empty root tree made), ``one_file_image`` (an image of one file, built by the CLI),
and ``sha256`` / ``installed`` to check what systemd-sysupdate put where."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import shlex
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import systemd_versions
from conftest import run_cli
from pkgfactory import build_deb, file
from prereq import missing, require_root, require_tool
from recipes_kit import DEBIAN_12, EPOCH, build_cli, recipe_dict, write_recipe_dict


def publish(feed: Path, url: str, *items, extra=()) -> subprocess.CompletedProcess:
    return run_cli("publish", *map(str, items), "--feed", str(feed), "--url", url, *extra)


class Server:
    """A static web server for ``directory`` on 127.0.0.1 (an ephemeral port)."""

    def __init__(self, directory: Path):
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def installed(directory: Path) -> dict[str, str]:
    """The images in ``directory``; hidden files are not (262 leaves a refused download as
    ``.sysupdate.partial.NAME_V.raw``, which neither sysupdate nor systemd-sysext takes)."""
    return {p.name: sha256(p) for p in sorted(directory.iterdir())
            if not p.name.startswith(".")} if directory.exists() else {}


@contextlib.contextmanager
def served_feed(tmp_path: Path, gpg_home: Path, first: Path,
                *extra: str) -> Iterator[tuple[Path, Server, list[str], Path]]:
    """``tmp_path/feed`` holding ``first`` (a manifest), signed (publish arguments ``extra``
    too) and served on 127.0.0.1, after root and unshare are known to be there: (feed, server,
    the publish arguments, the empty tree ``tmp_path/root``)."""
    require_root()
    require_tool("unshare", "util-linux")
    feed = tmp_path / "feed"
    feed.mkdir()
    server = Server(feed)
    try:
        signed = ["--gnupghome", str(gpg_home), *extra]
        assert publish(feed, server.url, first, extra=signed).returncode == 0
        root = tmp_path / "root"
        root.mkdir()
        yield feed, server, signed, root
    finally:
        server.close()


def one_file_image(base: Path, cache_dir: Path, name: str, *, path: str, content: bytes,
                   version: str = "1", deb_version: str = "1.0-1", kind: str = "sysext",
                   deb_arch: str = "amd64", architecture: str = "x86-64",
                   mode: int = 0o755) -> Path:
    """NAME in ``version``, a squashfs ``kind`` for Debian 12 ``architecture`` from one deb
    (``deb_version``, ``deb_arch``) of one file ``path``, built by the CLI into
    ``base/out{version}``: its manifest."""
    require_tool("mksquashfs", "squashfs-tools")
    deb = build_deb(base / "debs", name, deb_version, [file(path, content, mode)],
                    arch=deb_arch)
    spec = recipe_dict(name, kind=kind, version=version,
                       target={**DEBIAN_12, "architecture": architecture}, sources=[deb],
                       image={"format": "squashfs", "source_date_epoch": EPOCH})
    out = base / f"out{version}"
    build_cli(write_recipe_dict(base / f"r{version}", spec), out, cache_dir=cache_dir,
              json_out=False)
    return out / f"{name}.manifest.json"


def run_sysupdate(version: int, work: Path, etc_systemd: Path, *args: str,
                  where: list[str] | tuple = (), var_lib: Path | None = None,
                  lib_name: str = "lib-systemd") -> subprocess.CompletedProcess:
    """systemd-sysupdate ``version`` ``where`` ``args`` in a private mount namespace whose
    /usr/lib/systemd holds a systemd-pull of the same version (``work/lib_name``), whose
    /etc/systemd is ``etc_systemd`` and (given) whose /var/lib is ``var_lib``."""
    try:
        argv = systemd_versions.systemd_binary(version, "systemd-sysupdate")
        pull = systemd_versions.systemd_binary(version, "systemd-pull")
    except systemd_versions.Unavailable as exc:
        missing(str(exc))
    lib = work / lib_name
    lib.mkdir(exist_ok=True)
    (lib / "systemd-pull").write_text(f"#!/bin/sh\nexec {shlex.join(pull)} \"$@\"\n")
    (lib / "systemd-pull").chmod(0o755)
    mounts = [f"mount --bind {lib} /usr/lib/systemd", f"mount --bind {etc_systemd} /etc/systemd"]
    if var_lib is not None:
        mounts.append(f"mount --bind {var_lib} /var/lib")
    script = " && ".join(["mount --make-rprivate /", *mounts,
                          shlex.join([*argv, *where, "--no-pager", *args])])
    return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True,
                          text=True, timeout=300)
