"""``plan``: what a build will make and what will happen on hosts, before anything is built.

It runs the build's own :func:`pipeline.stages.build.stage` against recording-only trees, from the
recipe and the package cache (never the network), so the decision, layout, release files and
warnings it prints are the ones the build then produces. Host consequences come from the same
systemd rule model that ``check`` uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import stat
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from ..errors import BuildError
from ..formats import entry as E
from ..formats.compression import DEFAULT_RATIO, RATIO_FLOOR, Limits, read_upto
from ..sources import kinds
from ..sources.fetch import Cache, Fetched, default_cache_dir, fetch_one
from ..stages import layout, pitfalls
from ..stages.build import image_filename, stage
from ..stages.staging import RecordingTree
from ..systemd import rules
from ..systemd.release import HIERARCHIES
from . import clikit

CAUTION = ("An extension is a read-only overlay: everything in it vanishes on unmerge or when "
           "the image is removed. Keep state in /var and host configuration in /etc, never in "
           "the image.")


def make_plan(recipe, cache: Cache) -> dict:
    available, missing = [], []
    from ..sources.lock import expand_sources

    for source in expand_sources(recipe, offline=True):
        try:
            fetched = fetch_one(source, cache, offline=True)
        except BuildError:  # not cached: the plan says what it would fetch
            missing.append(source)
            continue
        available.append(listed(fetched, cache))
    staged = stage(recipe, available, lambda kind: _PlanTree(), dict(os.environ))
    images = [_image(recipe, img) for img in staged.images]
    undecided = _undecided(recipe, missing)
    return {
        "recipe": str(recipe.path),
        "decision": None if undecided else staged.decision,
        "undecided": undecided,
        "complete": not missing,
        "would_fetch": [kinds.describe(s) for s in missing],
        "packages": staged.report.packages,
        "dropped": dict(sorted(staged.report.dropped.items())),
        "excluded_count": staged.report.excluded,
        "source_date_epoch": staged.epoch,
        "images": images,
        "matching": {img["name"]: _matching(img) for img in images},
        "commands": _commands(recipe, images),
        "cautions": [CAUTION],
    }


class _PlanTree(RecordingTree):
    """The recording tree, also keeping what the pitfalls read of a file's content: a
    sysusers.d file the recipe writes ([files]) or a package ships (read and kept in the
    package's list, :data:`SYSUSERS`), so that plan judges maintainer scripts' users as build
    does (a package's other files are listed, never read: their content is unknown)."""

    KEEP = re.compile(r"usr/lib/sysusers\.d/[^/]+\.conf")

    def __init__(self):
        super().__init__()
        self._kept: dict[str, bytes] = {}

    def add(self, entry: E.Entry, path: str, uid: int, gid: int, origin: str) -> None:
        super().add(entry, path, uid, gid, origin)
        if entry.kind == E.FILE and isinstance(entry.data, io.BytesIO) and \
                self.KEEP.fullmatch(path) and entry.size <= pitfalls.MAX_SCRIPT:
            self._kept[path] = entry.data.getvalue()
        else:
            self._kept.pop(path, None)

    def open_data(self, path: str):
        data = self._kept.get(path)
        return io.BytesIO(data) if data is not None else None


# --- the file-list cache (issue 14 target 4: plan in 0.5 s on a cached recipe) -----------------
#
# ``plan`` needs what a package's archive *says* (names, kinds, modes, owners, sizes, link
# targets), never its data. Listing that means decompressing the payload (2.3 s of xz for the
# bench payload), so the first plan of a package writes its list next to the package in the
# cache, keyed by the package's sha256, and later plans replay it. A list is hostile input:
# bounded, validated field by field, and on any problem the package is decompressed as before
# (and the list written anew). The entries replayed are the ones the archive reader yielded, so
# the build's own extract code judges them exactly as on a real read.

#: Bump when what a list holds, or how the readers report entries, changes (2: ``kept``).
LISTING_VERSION = 2
LISTING_FORMAT = "sysext-pipeline file list"
#: Largest list written or read: 32 MiB, about 200,000 entries (Debian's largest packages hold
#: about 50,000) and a few hundred MiB of Python objects at most; a package whose list would be
#: larger is decompressed each time instead.
MAX_LISTING = 32 << 20
_ENTRY_FIELDS = 13
#: The files of a package whose content a list keeps (``kept``: entry index → hex, each at most
#: pitfalls.MAX_SCRIPT bytes): sysusers.d files, which decide whether the maintainer scripts'
#: users are made (pitfalls.sysusers_names; build reads them from its staging tree). Matched
#: loosely on the archive's path; _PlanTree keeps only what lands at its exact path.
SYSUSERS = re.compile(r"(?:^|/)(?:usr/)?lib/sysusers\.d/[^/]+\.conf$")


def listing_path(cache: Cache, sha256: str) -> Path:
    return cache.root / "lists" / sha256[:2] / f"{sha256}.v{LISTING_VERSION}.json"


def listed(fetched, cache: Cache):
    """``fetched``, opened by extract through the file-list cache."""
    if fetched.sha256 is None or not re.fullmatch(r"[0-9a-f]{64}", fetched.sha256):
        return fetched
    return _Listed(**{f.name: getattr(fetched, f.name) for f in dataclasses.fields(fetched)},
                   listing=listing_path(cache, fetched.sha256))


@dataclasses.dataclass(frozen=True)
class _Listed(Fetched):
    listing: Path | None = None

    def open_package(self, limits: Limits | None):
        data = read_listing(self.listing, self) if self.listing is not None else None
        if data is not None and (limits is None or (
                limits.ratio >= data["ratio"] and limits.ratio_floor >= data["ratio_floor"])):
            return _Replay(self, data, limits)
        return _Recording(self, limits)


class _Replay:
    """A package's entries from its list: data streams are zeros of the recorded size (plan's
    trees record sizes only); the budget is spent as the real read spent it."""

    def __init__(self, item, data: dict, limits: Limits | None):
        self.item, self._data, self._limits = item, data, limits
        self.info = data["info"]

    def entries(self):
        if self._limits is not None:
            self._limits.spend(self._data["spent"], self.item.filename)
        kept = self._data["kept"]
        for index, (path, kind, mode, uid, gid, uname, gname, mtime, size, target, xattrs,
                    member, rdev) in enumerate(self._data["entries"]):
            data = None
            if kind == E.FILE:
                content = kept.get(str(index))
                data = _Zeros(size) if content is None else io.BytesIO(bytes.fromhex(content))
            yield E.Entry(path=path, kind=kind, mode=mode, uid=uid, gid=gid, uname=uname,
                          gname=gname, mtime=mtime, size=size, target=target,
                          xattrs={k: bytes.fromhex(v) for k, v in xattrs.items()},
                          data=data, member=member,
                          rdev=tuple(rdev) if rdev is not None else None)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Zeros(io.RawIOBase):
    def __init__(self, size: int):
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        n = min(len(b), self._left)
        b[:n] = bytes(n)
        self._left -= n
        return n


class _Recording:
    """The real package, read as the build reads it (its sha256 checked at the end), its
    entries noted on the way; once all are through, the list is written into the cache."""

    def __init__(self, item, limits: Limits | None):
        from ..formats.package import Package

        self.item, self._limits = item, limits
        # The package's own budget, so that what it spends can be recorded (the next package
        # decompresses meanwhile on the shared one); charged to the shared budget at the end.
        self._own = None if limits is None else Limits(
            unpacked=limits.unpacked, ratio=limits.ratio, ratio_floor=limits.ratio_floor,
            entries=limits.entries)
        self._package = Package(item.path, item.source.format, sha256=item.sha256,
                                limits=self._own, name=item.filename)
        self.info = self._package.info

    def entries(self):
        noted, kept = [], {}
        for entry in self._package.entries():
            if entry.kind == E.FILE and entry.size <= pitfalls.MAX_SCRIPT and \
                    SYSUSERS.search(entry.path):  # read as extract reads a copyright file
                content = read_upto(entry.data, entry.size)
                entry.data = io.BytesIO(content)
                kept[str(len(noted))] = content.hex()
            noted.append([entry.path, entry.kind, entry.mode, entry.uid, entry.gid, entry.uname,
                          entry.gname, entry.mtime, entry.size, entry.target,
                          {k: bytes(v).hex() for k, v in entry.xattrs.items()}, entry.member,
                          list(entry.rdev) if entry.rdev is not None else None])
            yield entry
        spent = 0
        if self._own is not None:
            spent = self._own.used
            self._limits.spend(spent, self.item.filename)
        info = self.info
        write_listing(self.item.listing, {
            "format": LISTING_FORMAT, "version": LISTING_VERSION, "sha256": self.item.sha256,
            "size": self.item.size, "spent": spent,
            "ratio": self._own.ratio if self._own else DEFAULT_RATIO,
            "ratio_floor": self._own.ratio_floor if self._own else RATIO_FLOOR,
            "info": {"name": info.name, "version": info.version,
                     "architecture": info.architecture, "format": info.format,
                     "config_files": list(info.config_files), "scripts": list(info.scripts)},
            "entries": noted, "kept": kept})

    def close(self) -> None:
        self._package.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_listing(path: Path, data: dict) -> None:
    """Atomically (a temporary file renamed over it); a cache we cannot write to only costs
    the next plan its speed."""
    text = json.dumps(data, separators=(",", ":")).encode()
    if len(text) > MAX_LISTING:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".new-", dir=path.parent)
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def read_listing(path: Path, item) -> dict | None:
    """The list at ``path`` for the package ``item``, validated, or None (absent, too large,
    not a regular file, or wrong in any way)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_LISTING:
            return None
        with os.fdopen(os.dup(fd), "rb") as fh:
            raw = fh.read(MAX_LISTING + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        data = json.loads(raw)
        return _valid_listing(data, item)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def _valid_listing(data, item) -> dict | None:
    def text(v, limit=E.MAX_NAME * 4):
        return isinstance(v, str) and len(v) <= limit

    def opt_text(v):
        return v is None or text(v)

    def count(v):
        return type(v) is int and 0 <= v < 1 << 63

    if not isinstance(data, dict) or data.get("format") != LISTING_FORMAT or \
            data.get("version") != LISTING_VERSION or data.get("sha256") != item.sha256 or \
            data.get("size") != item.size:
        return None
    if not all(count(data.get(k)) for k in ("spent", "ratio", "ratio_floor")):
        return None
    info = data["info"]
    if not isinstance(info, dict) or set(info) != {"name", "version", "architecture", "format",
                                                   "config_files", "scripts"}:
        return None
    if not all(text(info[k]) for k in ("name", "version", "architecture", "format")) or \
            info["format"] != item.source.format:
        return None
    for key in ("config_files", "scripts"):
        if not isinstance(info[key], list) or len(info[key]) > 1_000_000 or \
                not all(text(v) for v in info[key]):
            return None
    entries = data["entries"]
    if not isinstance(entries, list):
        return None
    for row in entries:
        if not isinstance(row, list) or len(row) != _ENTRY_FIELDS:
            return None
        path, kind, mode, uid, gid, uname, gname, mtime, size, target, xattrs, member, rdev = row
        if not (text(path) and kind in E.KINDS and count(mode) and mode <= 0o7777 and
                count(uid) and count(gid) and opt_text(uname) and opt_text(gname) and
                type(mtime) is int and count(size) and opt_text(target) and
                text(member, 1 << 16) and isinstance(xattrs, dict) and len(xattrs) <= 256 and
                all(text(k, 256) and text(v, 1 << 17) and re.fullmatch(r"(?:[0-9a-f]{2})*", v)
                    for k, v in xattrs.items()) and
                (rdev is None or (isinstance(rdev, list) and len(rdev) == 2 and
                                  all(count(n) for n in rdev)))):
            return None
    kept = data["kept"]
    if not isinstance(kept, dict):
        return None
    for key, content in kept.items():
        if not (key.isascii() and key.isdigit() and int(key) < len(entries)):
            return None
        row = entries[int(key)]
        if not (row[1] == E.FILE and row[8] <= pitfalls.MAX_SCRIPT and isinstance(content, str)
                and len(content) == 2 * row[8] and SYSUSERS.search(row[0]) and
                re.fullmatch(r"(?:[0-9a-f]{2})*", content)):
            return None
    data["info"] = E.PackageInfo(info["name"], info["version"], info["architecture"],
                                 info["format"], tuple(info["config_files"]),
                                 tuple(info["scripts"]))
    return data


def _undecided(recipe, missing: list) -> str | None:
    """Why the images cannot be decided yet, or None.

    With packages missing from the cache the payload is partly unknown: ``kind = auto`` (and a
    pinned sysext with ``policy.etc = "confext"``, which may gain a companion confext) decides
    from that payload, so the plan must not claim what the cached part alone suggests — an
    "empty payload" may well be two images once the packages are there. A pinned kind without
    a companion is decided whatever the packages hold.
    """
    if not missing:
        return None
    if recipe.kind == "confext" or (recipe.kind == "sysext" and recipe.etc_policy != "confext"):
        return None
    return (f"undecided until {len(missing)} package(s) not in the cache are fetched "
            f"(kind = {recipe.kind}: which images are made depends on their content); the "
            "images below show only the cached packages")


def _image(recipe, img) -> dict:
    tops: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    seen = set()
    for path, record in img.tree.records.items():
        if record.kind != E.FILE or id(record) in seen:
            continue
        seen.add(id(record))
        top = "/".join(path.split("/")[:-1][:3])
        tops[top][0] += 1
        tops[top][1] += record.size
    tmpfiles = layout.tmpfiles_path(img.kind, recipe.name)
    return {
        "kind": img.kind,
        "name": img.name,
        "file": image_filename(recipe.format, img.name),
        "format": recipe.format,
        "merge_targets": list(HIERARCHIES[img.kind]),
        "layout": [{"dir": d, "files": n, "bytes": b} for d, (n, b) in sorted(tops.items())],
        "extension_release": {"path": img.release_path, "content": img.release_bytes.decode(),
                              "fields": img.fields},
        "tmpfiles": tmpfiles if tmpfiles in img.tree.records else None,
        "units": pitfalls.unit_paths(img.kind, img.tree.records),
        "warnings": [f.to_json() for f in img.findings],
    }


def _hosts(fields: dict, kind: str) -> list[tuple[str, dict, str, rules.Version, bool]]:
    """Hosts worth showing: the intended one and the near misses people actually hit."""
    v252, v254, v257, v258 = map(rules.parse_version, ("252", "254", "257", "258"))
    ident = fields.get("ID", "debian")
    ident = "debian" if ident == "_any" else ident
    vid = fields.get("VERSION_ID")
    arch = fields.get("ARCHITECTURE") or "x86-64"
    arch = "x86-64" if arch == "_any" else arch
    level_key = f"{kind.upper()}_LEVEL"
    base = {"ID": ident, **({"VERSION_ID": vid} if vid else {})}
    other_arch = "arm64" if arch != "arm64" else "x86-64"
    first = f"{ident} {vid} {arch}" if vid else f"{ident} {arch}" if fields.get("ID") == "_any" \
        else f"{ident} {arch} without VERSION_ID (a rolling release)"
    # The intended host as it ships (systemd 252, Debian 12's) — for a confext that has no
    # systemd-confext at all, so the next row is the way to make it merge (issue 16 §4).
    hosts = [(first, base, arch, v252, False)]
    if not rules.ships_tool(kind, v252):
        backport = " from bookworm-backports" if (ident, vid) == ("debian", "12") else ""
        hosts.append((f"{first} with systemd 254+{backport} (the first with systemd-{kind})",
                      base, arch, v254, False))
    if vid:
        hosts.append((f"{ident} {vid}.x point release whose os-release keeps VERSION_ID={vid} "
                       "(as Debian's does)", base, arch, v252 if ident == "debian" else v254,
                       False))
        hosts.append((f"{ident} with VERSION_ID={vid}.1 (minor versions in VERSION_ID)",
                      {**base, "VERSION_ID": f"{vid}.1"}, arch, v254, False))
        try:
            nxt = str(int(vid.split(".")[0]) + 1)
            hosts.append((f"{ident} {nxt} (next release)", {**base, "VERSION_ID": nxt}, arch,
                          v257, False))
        except ValueError:
            pass
    elif fields.get("ID") != "_any":
        # No VERSION_ID in the image: systemd merges it only where the host has none either
        # (a rolling release); show a versioned host, which is what most hosts are.
        hosts.append((f"{ident} with VERSION_ID=1 (a versioned release)",
                      {**base, "VERSION_ID": "1"}, arch, v254, False))
    if fields.get(level_key):
        hosts.append((f"{ident} with {level_key}={fields[level_key]}",
                      {**base, "VERSION_ID": "999", level_key: fields[level_key]}, arch,
                      v257, False))
    hosts.append((f"{ident} {vid or ''} {other_arch}".replace("  ", " "), base, other_arch,
                  v257, False))
    derived = {"ID": f"{ident}-derivative", "ID_LIKE": ident, **({"VERSION_ID": vid} if vid
                                                                 else {})}
    hosts.append((f"a derivative with ID_LIKE={ident}, systemd 257", derived, arch, (257, 0),
                  False))
    hosts.append((f"a derivative with ID_LIKE={ident}, systemd 258", derived, arch, v258,
                  False))
    hosts.append((f"{ident} {vid or ''} initrd".replace("  ", " "), base, arch, v257, True))
    return hosts


def _matching(img: dict) -> list[dict]:
    kind, name, fields = img["kind"], img["name"], img["extension_release"]["fields"]
    facts = rules.ImageFacts(file_name=img["file"] if img["format"] != "directory" else name,
                             is_dir=img["format"] == "directory",
                             release={kind: {name: rules.ReleaseFile(name, fields)}}, kind=kind)
    result = []
    for label, os_release, arch, version, initrd in _hosts(fields, kind):
        host = rules.HostFacts(os_release=os_release, architecture=arch, version=version,
                               initrd=initrd)
        verdict = rules.evaluate(facts, host, kind)
        result.append({"host": label, "systemd": rules.format_version(version),
                       "verdict": verdict.verdict, "rule": verdict.rule.id,
                       "why": "" if verdict.verdict == rules.MERGES else
                       f"{verdict.field}: {verdict.values_text()} ({verdict.summary})",
                       "fix": verdict.fix if verdict.verdict != rules.MERGES else ""})
    return result


def _commands(recipe, images: list[dict]) -> list[str]:
    out = recipe.path.parent.parent / "out" if recipe.path.parent.name == "recipes" else \
        Path("out")
    commands = [f"sysext-pipeline build {recipe.path}"]
    for img in images:
        tool = f"systemd-{img['kind']}"
        directory = rules.install_dir(img["kind"])
        fields = img["extension_release"]["fields"]
        if not rules.ships_tool(img["kind"], rules.parse_version("252")) and \
                (fields.get("ID"), fields.get("VERSION_ID")) == ("debian", "12"):
            commands.append(f"apt-get install -t bookworm-backports systemd   # Debian 12 ships "
                            f"systemd 252, which has no {tool} (254+ has)")
        commands.append(f"sysext-pipeline install {out / img['file']} --enable   # or: cp "
                        f"{out / img['file']} {directory}/ && {tool} refresh && "
                        f"systemctl enable {tool}.service")
        if img["tmpfiles"]:
            commands.append(f"systemd-tmpfiles --create /{img['tmpfiles']}   # at boot this "
                            "runs by itself")
        if img["units"]:
            commands.append("systemctl daemon-reload   # units in the image")
        commands.append(f"{tool} status && cat /{img['extension_release']['path']}   # confirm")
    return commands


def render(plan: dict) -> str:
    lines = [f"plan for {plan['recipe']}", "",
             f"decision: {plan['decision'] or plan['undecided']}"]
    if plan["would_fetch"]:
        lines.append("not in the cache (layout below is incomplete; build would fetch):")
        lines += [f"  {s}" for s in plan["would_fetch"]]
    for img in plan["images"]:
        lines += ["", f"{img['kind']} {img['name']} → {img['file']} ({img['format']}), merges "
                  f"into {' and '.join(img['merge_targets'])}"]
        for row in img["layout"]:
            files = "file " if row["files"] == 1 else "files"
            lines.append(f"  {row['dir'] + '/':<44}{row['files']:>6} {files} {row['bytes']:>12} B")
        lines.append(f"  /{img['extension_release']['path']}:")
        lines += [f"    {line}" for line in img["extension_release"]["content"].splitlines()]
        if img["tmpfiles"]:
            lines.append(f"  /{img['tmpfiles']}: state and factory files for the host")
        lines.append("  on hosts:")
        for n, row in enumerate(plan["matching"][img["name"]]):
            why = f" — {row['why']}" if row["why"] else ""
            if n == 0 and row["fix"]:  # the intended host: how to make it merge there
                why += f"; fix: {row['fix']}"
            lines.append(f"    {row['host']} (systemd {row['systemd']}): {row['verdict']}{why}")
        for warning in img["warnings"]:
            lines.append(f"  {warning['severity']}: {warning['code']}: {warning['message']} — "
                         f"fix: {warning['fix']}")
    if plan["dropped"]:
        lines += ["", f"not in any image ({clikit.count(len(plan['dropped']), 'path')}):"]
        lines += [f"  /{p}: {why}" for p, why in list(plan["dropped"].items())[:15]]
        if len(plan["dropped"]) > 15:
            lines.append(f"  … and {len(plan['dropped']) - 15} more (--json lists all)")
    lines += ["", "commands:"] + [f"  {c}" for c in plan["commands"]]
    lines += ["", f"caution: {plan['cautions'][0]}"]
    return "\n".join(lines)


def cmd_plan(args) -> int:
    from .. import recipe as recipe_mod

    recipe = recipe_mod.load(args.recipe)
    cache = Cache(default_cache_dir(args.cache_dir))
    plan = make_plan(recipe, cache)
    if args.json:
        return clikit.emit(args, plan)
    print(render(plan), file=sys.stdout)
    return 0


def register(sub) -> None:
    p = sub.add_parser("plan", help="what build will make and where it will merge, from the "
                       "recipe and the package cache (no network; writes nothing but file "
                       "lists into the cache)")
    p.add_argument("recipe", help="the recipe file (TOML); see `sysext-pipeline "
                   "recipe-reference`")
    clikit.add_json(p)
    clikit.add_cache_dir(p)
    p.set_defaults(func=cmd_plan)
