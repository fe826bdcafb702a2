"""Level 1: the two manifests — inputs, epoch, settings (causes); recipe and tool versions (said,
not taken as the reason: a recipe edit need not change the image, and a tool version only
*may*). Also the manifest comparison that ``verify`` uses when the rebuild is unsigned."""

from __future__ import annotations

from ...stages.manifest import Input, Manifest, Section, unsigned_json
from .report import Report, short

#: Tools whose other version may pack the same files into other bytes.
BYTE_TOOLS = ("mksquashfs", "mkfs.erofs", "libzstd", "liblzma", "liblz4", "libz")
#: Tools whose output the build pins completely (GPT, verity parameters and tree): another
#: version is no explanation (systemd-repart 252 and 254 give the same bytes, tested).
PINNED_TOOLS = ("systemd-repart", "veritysetup")
#: Manifest keys whose difference alone explains different images.
SETTINGS = ("name", "kind", "version", "mtime_policy", "policy")
IMAGE_SETTINGS = ("format", "filesystem", "compression", "compression_level")


def compare_manifests(r: Report, ma: dict | Manifest, mb: dict | Manifest,
                      ) -> list[tuple[str, str | None, str | None]]:
    """Record the manifest level in ``r``; return the tool versions that differ as
    (tool, version A, version B): their notes are worded by :func:`tool_notes` once the
    outcome is known (the same version difference is "expected" or "harmless" depending on it).
    The manifests are read through the model (pipeline/stages/manifest.py)."""
    add = r.add
    a, b = _model(ma), _model(mb)
    tools = [(t, a.tools.get(t), b.tools.get(t)) for t in sorted(set(a.tools) | set(b.tools))
             if a.tools.get(t) != b.tools.get(t)]
    for tool, va, vb in tools:
        add("manifest", f"tools.{tool}", va, vb, "", explains=False, role="note")
    if a.schema != b.schema:
        add("manifest", "schema", a.schema, b.schema, f"manifest schema {a.schema} → {b.schema}")
    ra, rb = a.recipe, b.recipe
    if ra.sha256 != rb.sha256:
        add("manifest", "recipe.sha256", ra.sha256, rb.sha256,
            f"recipe {ra.file} ({short(ra.sha256)}) → {rb.file} ({short(rb.sha256)})",
            explains=False, role="note")
    elif ra.file != rb.file:
        add("manifest", "recipe.file", ra.file, rb.file,
            f"recipe file name {ra.file} → {rb.file} (same content)", explains=False,
            role="note")
    _inputs(r, a.inputs, b.inputs)
    ea, eb = a.source_date_epoch, b.source_date_epoch
    if ea != eb:
        add("manifest", "source_date_epoch", ea, eb,
            f"source_date_epoch {ea} ({a.source_date_epoch_origin}) → {eb} "
            f"({b.source_date_epoch_origin})")
    for key in SETTINGS:
        va, vb = _json(getattr(a, key)), _json(getattr(b, key))
        if va != vb:
            add("manifest", key, va, vb, f"{key} {short(va)} → {short(vb)}")
    ia, ib = a.image, b.image
    for key in IMAGE_SETTINGS:
        va, vb = getattr(ia, key), getattr(ib, key)
        if va != vb:
            add("manifest", f"image.{key}", va, vb, f"image {key} {va} → {vb}")
    if bool(a.verity) != bool(b.verity):
        add("manifest", "verity", bool(a.verity), bool(b.verity),
            f"detached verity (NAME.verity) only {r.labels[0] if a.verity else r.labels[1]}")
    fa, fb = a.extension_release.fields, b.extension_release.fields
    for key in sorted(set(fa) | set(fb)):
        if fa.get(key) != fb.get(key):
            add("manifest", f"extension_release.{key}", fa.get(key), fb.get(key),
                f"extension-release {key}={fa.get(key)} → {key}={fb.get(key)}")
    # Consequences, not causes: listed so that a manifest-only diff is complete.
    for key in ("dropped", "excluded_count"):
        if getattr(a, key) != getattr(b, key):
            add("manifest", key, None, None, f"{key} differs", explains=False)
    for key in ("sha256", "size", "tree_sha256"):
        va, vb = getattr(ia, key), getattr(ib, key)
        if va != vb:
            add("manifest", f"image.{key}", va, vb, f"image {key} {short(va)} → {short(vb)}",
                explains=False)
    return tools


def _model(manifest: dict | Manifest) -> Manifest:
    """A side's manifest through the model (diff's sides read and check it by file name
    first, so a dict here is a manifest already read)."""
    return manifest if isinstance(manifest, Manifest) else Manifest.from_json(manifest)


def _json(value):
    return value.to_json() if isinstance(value, Section) else value


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


def _inputs(r: Report, ia: list[Input], ib: list[Input]) -> None:
    add = r.add
    key = lambda p: (p.name, p.architecture)  # noqa: E731
    da, db = {key(p): p for p in ia}, {key(p): p for p in ib}
    for k in sorted(set(da) | set(db), key=lambda k: (str(k[0]), str(k[1]))):
        pa, pb = da.get(k), db.get(k)
        name = k[0] if k[1] in (None, "all") else f"{k[0]}:{k[1]}"
        if pa is None:
            add("manifest", f"inputs.{name}", None, pb.version, f"input {name} {pb.version} added")
        elif pb is None:
            add("manifest", f"inputs.{name}", pa.version, None,
                f"input {name} {pa.version} removed")
        elif pa.version != pb.version:
            add("manifest", f"inputs.{name}.version", pa.version, pb.version,
                f"input {name} {pa.version} → {pb.version}")
        elif pa.sha256 != pb.sha256:
            add("manifest", f"inputs.{name}.sha256", pa.sha256, pb.sha256,
                f"input {name} {pa.version}: same version, other file "
                f"(sha256 {short(pa.sha256)} → {short(pb.sha256)})")
        elif pa.source != pb.source or pa.file != pb.file:
            add("manifest", f"inputs.{name}.source", pa.source, pb.source,
                f"input {name}: same file (sha256), fetched from {pa.source} → "
                f"{pb.source}", explains=False, role="note")
    order_a = [key(p) for p in ia if key(p) in db]
    order_b = [key(p) for p in ib if key(p) in da]
    if order_a != order_b:  # a later source wins on overlapping paths: order matters
        add("manifest", "inputs.order", None, None, "inputs in a different order "
            "(a later package wins on overlapping paths)")


def unsigned_view(manifest: dict) -> dict:
    """The manifest as an unsigned build of the same image would write it: what ``verify``
    compares, since it rebuilds without the private key (signatures are checked separately).
    Defined once, in the model (pipeline/stages/manifest.py ``Manifest.unsigned``)."""
    return unsigned_json(manifest)
