"""Level 1: the two manifests — inputs, epoch, settings (causes); recipe and tool versions (said,
not taken as the reason: a recipe edit need not change the image, and a tool version only
*may*). Also the manifest comparison that ``verify`` uses when the rebuild is unsigned."""

from __future__ import annotations

from .report import Report, short

#: Tools whose other version may pack the same files into other bytes.
BYTE_TOOLS = ("mksquashfs", "mkfs.erofs", "libzstd", "liblzma", "liblz4", "libz")
#: Tools whose output the build pins completely (GPT, verity parameters and tree): another
#: version is no explanation (systemd-repart 252 and 254 give the same bytes, tested).
PINNED_TOOLS = ("systemd-repart", "veritysetup")
#: Manifest keys whose difference alone explains different images.
SETTINGS = ("name", "kind", "version", "mtime_policy", "policy")
IMAGE_SETTINGS = ("format", "filesystem", "compression", "compression_level")


def compare_manifests(r: Report, ma: dict, mb: dict) -> list[tuple[str, str | None, str | None]]:
    """Record the manifest level in ``r``; return the tool versions that differ as
    (tool, version A, version B): their notes are worded by :func:`tool_notes` once the
    outcome is known (the same version difference is "expected" or "harmless" depending on it)."""
    add = r.add
    tools_a, tools_b = ma.get("tools") or {}, mb.get("tools") or {}
    tools = [(t, tools_a.get(t), tools_b.get(t)) for t in sorted(set(tools_a) | set(tools_b))
             if tools_a.get(t) != tools_b.get(t)]
    for tool, va, vb in tools:
        add("manifest", f"tools.{tool}", va, vb, "", explains=False, role="note")
    if ma.get("schema") != mb.get("schema"):
        add("manifest", "schema", ma.get("schema"), mb.get("schema"),
            f"manifest schema {ma.get('schema')} → {mb.get('schema')}")
    ra, rb = ma.get("recipe") or {}, mb.get("recipe") or {}
    if ra.get("sha256") != rb.get("sha256"):
        add("manifest", "recipe.sha256", ra.get("sha256"), rb.get("sha256"),
            f"recipe {ra.get('file')} ({short(ra.get('sha256'))}) → {rb.get('file')} "
            f"({short(rb.get('sha256'))})", explains=False, role="note")
    elif ra.get("file") != rb.get("file"):
        add("manifest", "recipe.file", ra.get("file"), rb.get("file"),
            f"recipe file name {ra.get('file')} → {rb.get('file')} (same content)",
            explains=False, role="note")
    _inputs(r, ma.get("inputs") or [], mb.get("inputs") or [])
    ea, eb = ma.get("source_date_epoch"), mb.get("source_date_epoch")
    if ea != eb:
        add("manifest", "source_date_epoch", ea, eb,
            f"source_date_epoch {ea} ({ma.get('source_date_epoch_origin')}) → {eb} "
            f"({mb.get('source_date_epoch_origin')})")
    for key in SETTINGS:
        if ma.get(key) != mb.get(key):
            add("manifest", key, ma.get(key), mb.get(key),
                f"{key} {short(ma.get(key))} → {short(mb.get(key))}")
    ia, ib = ma.get("image") or {}, mb.get("image") or {}
    for key in IMAGE_SETTINGS:
        if ia.get(key) != ib.get(key):
            add("manifest", f"image.{key}", ia.get(key), ib.get(key),
                f"image {key} {ia.get(key)} → {ib.get(key)}")
    if bool(ma.get("verity")) != bool(mb.get("verity")):
        add("manifest", "verity", bool(ma.get("verity")), bool(mb.get("verity")),
            f"detached verity (NAME.verity) only {r.labels[0] if ma.get('verity') else r.labels[1]}")
    fa = (ma.get("extension_release") or {}).get("fields") or {}
    fb = (mb.get("extension_release") or {}).get("fields") or {}
    for key in sorted(set(fa) | set(fb)):
        if fa.get(key) != fb.get(key):
            add("manifest", f"extension_release.{key}", fa.get(key), fb.get(key),
                f"extension-release {key}={fa.get(key)} → {key}={fb.get(key)}")
    # Consequences, not causes: listed so that a manifest-only diff is complete.
    for key in ("dropped", "excluded_count"):
        if ma.get(key) != mb.get(key):
            add("manifest", key, None, None, f"{key} differs", explains=False)
    for key in ("sha256", "size", "tree_sha256"):
        if ia.get(key) != ib.get(key):
            add("manifest", f"image.{key}", ia.get(key), ib.get(key),
                f"image {key} {short(ia.get(key))} → {short(ib.get(key))}", explains=False)
    return tools


def tool_notes(r: Report, tools, outcome: str) -> None:
    """Word each tool-version difference for what actually happened, and say it first.

    ``outcome``: ``identical`` (the bytes are the same), ``trees-identical`` (the bytes differ,
    the trees do not), ``differs`` (something else explains it)."""
    la, lb = r.tool_labels or r.labels
    by_field = {f.field: f for f in r.at("manifest")}
    notes = []
    for tool, va, vb in tools:
        text = f"{tool} {vb or 'absent'} {lb}, {va or 'absent'} {la}"
        if tool in BYTE_TOOLS:
            text += (": the bytes are identical all the same" if outcome == "identical" else
                     ": different bytes are expected")
        elif tool in PINNED_TOOLS:
            text += " (the build pins everything it writes: no difference comes from it)"
        by_field[f"tools.{tool}"].text = text
        notes.append(text)
    r.notes[:0] = notes


def byte_tools(tools) -> list[str]:
    return [t for t, _a, _b in tools if t in BYTE_TOOLS]


def _inputs(r: Report, ia: list[dict], ib: list[dict]) -> None:
    add = r.add
    key = lambda p: (p.get("name"), p.get("architecture"))  # noqa: E731
    da, db = {key(p): p for p in ia}, {key(p): p for p in ib}
    for k in sorted(set(da) | set(db), key=lambda k: (str(k[0]), str(k[1]))):
        pa, pb = da.get(k), db.get(k)
        name = k[0] if k[1] in (None, "all") else f"{k[0]}:{k[1]}"
        if pa is None:
            add("manifest", f"inputs.{name}", None, pb.get("version"),
                f"input {name} {pb.get('version')} added")
        elif pb is None:
            add("manifest", f"inputs.{name}", pa.get("version"), None,
                f"input {name} {pa.get('version')} removed")
        elif pa.get("version") != pb.get("version"):
            add("manifest", f"inputs.{name}.version", pa.get("version"), pb.get("version"),
                f"input {name} {pa.get('version')} → {pb.get('version')}")
        elif pa.get("sha256") != pb.get("sha256"):
            add("manifest", f"inputs.{name}.sha256", pa.get("sha256"), pb.get("sha256"),
                f"input {name} {pa.get('version')}: same version, other file "
                f"(sha256 {short(pa.get('sha256'))} → {short(pb.get('sha256'))})")
        elif pa.get("source") != pb.get("source") or pa.get("file") != pb.get("file"):
            add("manifest", f"inputs.{name}.source", pa.get("source"), pb.get("source"),
                f"input {name}: same file (sha256), fetched from {pa.get('source')} → "
                f"{pb.get('source')}", explains=False, role="note")
    order_a = [key(p) for p in ia if key(p) in db]
    order_b = [key(p) for p in ib if key(p) in da]
    if order_a != order_b:  # a later source wins on overlapping paths: order matters
        add("manifest", "inputs.order", None, None, "inputs in a different order "
            "(a later package wins on overlapping paths)")


def unsigned_view(manifest: dict) -> dict:
    """The manifest as an unsigned build of the same image would write it: what ``verify``
    compares, since it rebuilds without the private key (signatures are checked separately).
    Defined once, in the model (pipeline/stages/manifest.py ``Manifest.unsigned``)."""
    from ...stages.manifest import unsigned_json

    return unsigned_json(manifest)
