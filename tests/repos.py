"""Package repositories made by the real tools, served over loopback HTTP with injectable faults.

- :func:`deb_packages` builds .debs with real relations (dpkg-deb); :class:`DebArchive` indexes
  them per suite with ``apt-ftparchive`` and signs Release (InRelease + Release.gpg) with a
  throw-away gpg key — or not, or with the wrong key, or tampers an index after signing.
- :func:`rpm_packages` builds .rpms (rpmbuild) and :func:`make_rpmmd` indexes them with
  ``createrepo_c`` (optionally signing repomd.xml).
- :class:`Server` serves a directory on 127.0.0.1 (Range requests honoured) and can answer a
  path with 404, 500, a connection reset mid-file, or wrong bytes; it logs every request and
  the highest number of concurrent ones.
"""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pkgfactory import build_deb, build_rpm, file

# --- gpg ---------------------------------------------------------------------------------------


class Key:
    """A throw-away signing key in its own GnuPG home."""

    def __init__(self, home: Path, uid: str):
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        home.chmod(0o700)
        self.gpg("--quick-gen-key", uid, "ed25519", "sign", "0")
        self.keyring = home / "keyring.gpg"
        self.keyring.write_bytes(self.gpg("--export"))
        self.armored = home / "key.asc"
        self.armored.write_bytes(self.gpg("--armor", "--export"))

    def gpg(self, *args: str) -> bytes:
        """Run gpg in this key's home; its stdout (an export, when asked for one)."""
        proc = subprocess.run(["gpg", "--homedir", str(self.home), "--batch", "--quiet",
                               "--pinentry-mode", "loopback", "--passphrase", "", *args],
                              capture_output=True)
        if proc.returncode != 0:
            raise RuntimeError(f"gpg {args}: {proc.stderr.decode()}")
        return proc.stdout

    def clearsign(self, src: Path, dest: Path) -> None:
        self.gpg("--yes", "--clearsign", "-o", str(dest), str(src))

    def detach(self, src: Path, dest: Path, armor: bool = True) -> None:
        self.gpg("--yes", *(["--armor"] if armor else []), "--detach-sign", "-o", str(dest),
                 str(src))

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"],
                       capture_output=True)


# --- Debian ------------------------------------------------------------------------------------


def _deb(out, name, version, arch="amd64", **fields):
    import hashlib

    depends = fields.pop("Depends", None)
    content = f"{name} {version}\n".encode()
    if name == "big":  # incompressible, so that a reset mid-file leaves a real partial file
        content = b"".join(hashlib.sha256(b"%d" % i).digest() for i in range(16384))
    return build_deb(out, name, version, [file(f"/usr/share/test/{name}", content)], arch=arch,
                     depends=depends, fields=fields or None, compression="none")


def deb_packages(out: Path) -> dict[str, list[Path]]:
    """Pools of .debs: "main" (the relations under test) and "next" (newer versions)."""
    main, nxt = out / "main", out / "next"
    pkgs = [
        _deb(main, "app", "1.0", Depends="libfoo (>= 2.0), missing-pkg | less-alt | more-alt, "
             "awk-virt, data-all, libbar-abi (>= 2), py-t:any",
             **{"Pre-Depends": "prelib", "Recommends": "app-doc"}),
        _deb(main, "libfoo", "1.0"), _deb(main, "libfoo", "2.1"),
        _deb(main, "old-user", "1.0", Depends="libfoo (<< 2)"),
        _deb(main, "less-alt", "1.0"), _deb(main, "more-alt", "1.0"),
        _deb(main, "gawk-t", "1.0", Provides="awk-virt"),
        _deb(main, "mawk-t", "1.0", Provides="awk-virt", Priority="required"),
        _deb(main, "data-all", "1.0", arch="all"),
        _deb(main, "libbar3", "3.0", Provides="libbar-abi (= 3)"),
        _deb(main, "libbar1", "1.0", Provides="libbar-abi (= 1)"),
        _deb(main, "py-t", "1.0", **{"Multi-Arch": "allowed"}),
        _deb(main, "prelib", "1.0"),
        _deb(main, "app-doc", "1.0", arch="all"),
        _deb(main, "cyc-a", "1.0", Depends="cyc-b"), _deb(main, "cyc-b", "1.0", Depends="cyc-a"),
        _deb(main, "broken", "1.0", Depends="libfoo (>= 9)"),
        _deb(main, "wrapper", "1.0", Depends="broken"),
        _deb(main, "conflictor", "1.0", Conflicts="less-alt"),
        _deb(main, "ep-t", "1:0.5"), _deb(main, "ep-t", "2.0"),
        _deb(main, "tl-t", "1.0~rc1"), _deb(main, "tl-t", "1.0"),
        _deb(main, "tool", "1.0", Depends="libtool1 (>= 1.0)"), _deb(main, "libtool1", "1.0"),
        _deb(main, "big", "1.0"),
        # a virtual package with two providers of the same priority: resolved by name, warned
        _deb(main, "tie-user", "1.0", Depends="tie-virt"),
        _deb(main, "tie-b", "1.0", Provides="tie-virt"), _deb(main, "tie-a", "1.0",
                                                             Provides="tie-virt"),
    ]
    newer = [
        _deb(nxt, "tool", "1.1", Depends="libtool1 (>= 1.0)"), _deb(nxt, "libtool1", "1.1"),
        _deb(nxt, "app", "1.1", Depends="libfoo (>= 2.0), less-alt, awk-virt, data-all, "
             "libbar-abi (>= 2), py-t:any", **{"Pre-Depends": "prelib"}),
    ]
    return {"main": pkgs, "next": newer}


class DebArchive:
    """A Debian archive under ``root``: ``pool/`` plus one ``dists/SUITE`` per publish()."""

    def __init__(self, root: Path, key: Key):
        self.root = root
        self.key = key
        (root / "pool").mkdir(parents=True, exist_ok=True)

    def publish(self, suite: str, debs: list[Path], *, sign: str = "both",
                key: Key | None = None, tamper: bool = False,
                valid_until: str | None = None) -> Path:
        """Index ``debs`` as ``dists/SUITE``; sign: "both" | "inline" | "detached" | "none";
        ``valid_until``: a Valid-Until field (RFC 2822 date) in the signed Release."""
        pool = self.root / "pool" / suite
        shutil.rmtree(pool, ignore_errors=True)
        pool.mkdir(parents=True)
        for deb in debs:
            os.link(deb, pool / deb.name)
        dist = self.root / "dists" / suite
        shutil.rmtree(dist, ignore_errors=True)
        binary = dist / "main" / "binary-amd64"
        binary.mkdir(parents=True)
        text = subprocess.run(["apt-ftparchive", "packages", f"pool/{suite}"], cwd=self.root,
                              capture_output=True, check=True).stdout
        _write_packages(binary, text)
        release = subprocess.run(
            ["apt-ftparchive", "-o", f"APT::FTPArchive::Release::Suite={suite}",
             "-o", f"APT::FTPArchive::Release::Codename={suite}",
             "-o", "APT::FTPArchive::Release::Architectures=amd64",
             "-o", "APT::FTPArchive::Release::Components=main", "release", "."],
            cwd=dist, capture_output=True, check=True).stdout
        if valid_until:
            release = release.replace(b"\nDate: ", f"\nValid-Until: {valid_until}\nDate: "
                                      .encode(), 1)
        (dist / "Release").write_bytes(release)
        signer = key or self.key
        if sign in ("both", "inline"):
            signer.clearsign(dist / "Release", dist / "InRelease")
        if sign in ("both", "detached"):
            signer.detach(dist / "Release", dist / "Release.gpg")
        if tamper:
            _write_packages(binary, text.replace(b"Package: libfoo",
                                                 b"Package: libfoo\nX-Evil: yes", 1))
        return dist


def _write_packages(binary: Path, text: bytes) -> None:
    """A Packages index and its .xz and .gz forms (the forms a Release file lists)."""
    (binary / "Packages").write_bytes(text)
    (binary / "Packages.xz").write_bytes(lzma.compress(text))
    (binary / "Packages.gz").write_bytes(gzip.compress(text, mtime=0))


# --- rpm-md ------------------------------------------------------------------------------------


def _rpm(out, name, version, *, epoch=None, tags=(), files=None):
    files = files or [file(f"/usr/share/test/{name}", f"{name} {version}\n".encode())]
    return build_rpm(out, name, version, files, compression="gzip", epoch=epoch,
                     tags=tuple(tags))


def rpm_packages(out: Path) -> list[Path]:
    return [
        _rpm(out, "rapp", "1.0", tags=[("Requires", "rlib >= 2.0"), ("Requires", "/usr/bin/rsh-t"),
                                       ("Requires", "(rless or rmore)"),
                                       ("Requires", "(rextra if rtrigger)"),
                                       ("Requires", "rvirt"), ("Recommends", "rdoc")]),
        _rpm(out, "rlib", "2.0"), _rpm(out, "rlib", "1.0", epoch=1), _rpm(out, "rlib", "1.9"),
        _rpm(out, "rshell", "1.0", files=[file("/usr/bin/rsh-t", b"#!/bin/sh\n", 0o755)]),
        _rpm(out, "rless", "1.0"), _rpm(out, "rmore", "1.0"),
        _rpm(out, "rvirtprov", "1.0", tags=[("Provides", "rvirt = 5")]),
        _rpm(out, "rextra", "1.0"), _rpm(out, "rtrigger", "1.0"), _rpm(out, "rdoc", "1.0"),
        _rpm(out, "rbroken", "1.0", tags=[("Requires", "rlib >= 2:1.0")]),
        _rpm(out, "rtl", "1.0~rc1"), _rpm(out, "rtl", "1.0"),
    ]


def make_rpmmd(root: Path, rpms: list[Path], *, key: Key | None = None,
               compress: str = "gz") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Packages").mkdir(exist_ok=True)
    for rpm in rpms:
        os.link(rpm, root / "Packages" / rpm.name)
    subprocess.run(["createrepo_c", "--quiet", "--no-database", "--general-compress-type",
                    "gz" if compress == "zstd" else compress, str(root)], check=True,
                   capture_output=True)
    if compress == "zstd":  # Debian's createrepo_c 0.17 cannot; Fedora ships primary.xml.zst
        _recompress_primary_zstd(root / "repodata")
    if key is not None:
        key.detach(root / "repodata" / "repomd.xml", root / "repodata" / "repomd.xml.asc")
    return root


def _recompress_primary_zstd(repodata: Path) -> None:
    import hashlib
    import re

    import pyzstd

    repomd = (repodata / "repomd.xml").read_text()
    block = re.search(r'<data type="primary">.*?</data>', repomd, re.S).group(0)
    href = re.search(r'<location href="repodata/([^"]+)"', block).group(1)
    data = pyzstd.compress(gzip.decompress((repodata / href).read_bytes()))
    (repodata / href).unlink()
    new = href.replace(".xml.gz", ".xml.zst")
    (repodata / new).write_bytes(data)
    fixed = re.sub(r'(<checksum type="sha256">)[0-9a-f]+', rf"\g<1>{hashlib.sha256(data).hexdigest()}",
                   block, count=1)
    fixed = fixed.replace(href, new)
    fixed = re.sub(r"<size>\d+</size>", f"<size>{len(data)}</size>", fixed, count=1)
    (repodata / "repomd.xml").write_text(repomd.replace(block, fixed))


# --- HTTP --------------------------------------------------------------------------------------


#: Faults that send without end (see Server._endless).
ENDLESS_FAULTS = ("endless", "overlong", "huge-length")


class Server:
    """Serve ``root`` on 127.0.0.1. ``faults[path]`` is a list consumed one per request:
    "404", "500", "reset" (half the body, then the connection dies), "wrong" (other bytes),
    "stall" (half the body, a pause of ``stall`` seconds or until ``release`` is set, the rest),
    and the ENDLESS_FAULTS, which send the file and then zeros until the client hangs up."""

    def __init__(self, root: Path):
        self.root = root
        self.faults: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.active = 0
        self.max_active = 0
        self.delay = 0.0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.split("?", 1)[0]
                with server.lock:
                    server.requests.append((path, self.headers.get("Range")))
                    fault = server.faults.get(path, [None]).pop(0) if server.faults.get(path) \
                        else None
                self._serve(path, fault)

            def _serve(self, path, fault):
                import urllib.parse

                if server.delay:
                    # requests counted while they wait, before anything is sent: once the
                    # response is on its way the client may start its next request before this
                    # thread runs again, and counting until then would see one too many
                    with server.lock:
                        server.active += 1
                        server.max_active = max(server.max_active, server.active)
                    server.release.wait(server.delay)  # cut short when the server closes
                    with server.lock:
                        server.active -= 1
                local = server.root / urllib.parse.unquote(path).lstrip("/")
                if fault in ("404", "500") or not local.is_file():
                    code = 500 if fault == "500" else 404
                    self.send_response(code)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = local.read_bytes()
                if fault in ENDLESS_FAULTS:
                    self._endless(data, fault)
                    return
                if fault == "wrong":
                    data = bytes(b ^ 0xFF for b in data)
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes=") and fault is None:
                    start = int(rng[6:].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if fault == "stall":  # half, a pause (server.stall seconds), the rest
                    self.wfile.write(data[start:start + (len(data) - start) // 2])
                    self.wfile.flush()
                    with server.lock:
                        server.stalled += 1
                    server.release.wait(server.stall)
                    self.wfile.write(data[start + (len(data) - start) // 2:])
                    return
                if fault == "reset":
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.connection.close()
                    self.close_connection = True
                    return
                self.wfile.write(data[start:])

            def _endless(self, data, fault):
                """The file's bytes, then zeros until the client hangs up: with no
                Content-Length ("endless"), the true one ("overlong": more than it announced)
                or an absurd one ("huge-length": 1 TiB announced)."""
                self.send_response(200)
                if fault == "overlong":
                    self.send_header("Content-Length", str(len(data)))
                elif fault == "huge-length":
                    self.send_header("Content-Length", str(1 << 40))
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                chunk = bytes(64 << 10)
                try:
                    self.wfile.write(data)
                    with server.lock:
                        server.sent += len(data)
                    while True:
                        self.wfile.write(chunk)
                        with server.lock:
                            server.sent += len(chunk)
                except OSError:
                    pass  # the client cut it off

        self.sent = 0  # bytes written by the endless faults, for the tests to bound
        self.stall = 5.0  # seconds the "stall" fault waits mid-body (at most: see release)
        # set: stalled and delayed answers go on now; close() sets it, so that no handler
        # thread sleeps on into later tests (a thread ending in the middle of another test
        # changes what threading.active_count() says there)
        self.release = threading.Event()
        self.stalled = 0  # how many responses have reached that pause
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def paths(self) -> list[str]:
        return [p for p, _ in self.requests]

    def close(self) -> None:
        self.release.set()  # no handler thread stays in a stall past its test
        self.httpd.shutdown()
        self.httpd.server_close()


# --- fixtures (import them into a test module by name) -----------------------------------------

import pytest  # noqa: E402
from prereq import require_tool  # noqa: E402
from recipes_kit import recipe_dict, write_recipe_dict  # noqa: E402


@pytest.fixture(scope="session")
def gpg_keys(tmp_path_factory):
    require_tool("gpg", "gnupg")
    require_tool("gpgv", "gpgv")
    base = tmp_path_factory.mktemp("gpg")
    keys = {"good": Key(base / "good", "Test Archive <archive@example.invalid>"),
            "evil": Key(base / "evil", "Someone Else <evil@example.invalid>")}
    yield keys
    for key in keys.values():
        key.close()


@pytest.fixture(scope="session")
def debs(tmp_path_factory):
    require_tool("dpkg-deb", "dpkg")
    return deb_packages(tmp_path_factory.mktemp("debs"))


@pytest.fixture
def deb_archive(tmp_path, gpg_keys, debs):
    """A signed archive with suite "stable" (the main pool) on a loopback server."""
    require_tool("apt-ftparchive", "apt-utils")
    archive = DebArchive(tmp_path / "archive", gpg_keys["good"])
    archive.publish("stable", debs["main"])
    server = Server(archive.root)
    archive.server = server
    yield archive
    server.close()


def _write_recipe(directory: Path, target: dict, repository: dict, packages: list[str],
                  extra: dict | None, fmt: str) -> Path:
    """``directory/r.toml``: image "resolved" from a packages source (``extra``: more keys of
    it) over one repository."""
    spec = recipe_dict("resolved", target=target, repository=[repository],
                       sources=[{"packages": packages, **(extra or {})}], image={"format": fmt})
    return write_recipe_dict(directory, spec, "r.toml")


def make_deb_recipe(directory: Path, archive: DebArchive, packages: list[str], *,
                    suite: str = "stable", keyring: str | None = None, base: str | None = None,
                    extra: dict | None = None, repo_extra: dict | None = None,
                    fmt: str = "directory") -> Path:
    """A recipe resolving ``packages`` from ``archive``; the keyring is the archive's key."""
    target = {"id": "debian", "version_id": "12", "architecture": "x86-64", "base": base}
    repository = {"type": "deb", "mirror": archive.server.url, "suite": suite,
                  "keyring": keyring or str(archive.key.keyring), **(repo_extra or {})}
    return _write_recipe(directory, target, repository, packages, extra, fmt)


@pytest.fixture(scope="session")
def rpms(tmp_path_factory):
    require_tool("rpmbuild", "rpm")
    return rpm_packages(tmp_path_factory.mktemp("rpms"))


@pytest.fixture(scope="session")
def rpm_server(tmp_path_factory, rpms, gpg_keys):
    """rpm-md repositories under one server: /gz (signed), /zst and /xz (unsigned), /evil
    (signed by the wrong key)."""
    require_tool("createrepo_c", "createrepo-c")
    root = tmp_path_factory.mktemp("rpmmd")
    make_rpmmd(root / "gz", rpms, key=gpg_keys["good"], compress="gz")
    make_rpmmd(root / "zst", rpms, compress="zstd")
    make_rpmmd(root / "xz", rpms, compress="xz")
    make_rpmmd(root / "evil", rpms, key=gpg_keys["evil"])
    server = Server(root)
    yield server
    server.close()


def make_rpm_recipe(directory: Path, server: Server, packages: list[str], *, repo: str = "gz",
                    gpgkey: str | None = None, extra: dict | None = None) -> Path:
    repository = {"type": "rpm-md", "baseurl": f"{server.url}/{repo}", "gpgkey": gpgkey}
    return _write_recipe(directory, {"id": "fedora", "version_id": "40"}, repository, packages,
                         extra, "directory")


@pytest.fixture
def deb_recipe():
    """make_deb_recipe, as a fixture (test modules then need not import this plugin)."""
    return make_deb_recipe


@pytest.fixture
def rpm_recipe():
    return make_rpm_recipe
