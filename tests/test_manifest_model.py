"""The manifest model (pipeline/stages/manifest.py): real manifests round-trip byte for byte,
hostile ones are one-line errors naming the file and the field, the unsigned view, ``sign``
rewriting through the model, and the published schema listing exactly the model's fields."""

from __future__ import annotations

import copy
import json
import typing
from pathlib import Path

import jsonschema
import manifest_plugin
import pytest
import verify_helpers as vh
from recipes_kit import REPO, build_cli, run_cli

from pipeline.errors import InputError
from pipeline.stages import manifest as mf

SCHEMA_FILE = REPO / "docs" / "manifest.schema.json"


@pytest.fixture(scope="module")
def built(tmp_path_factory, packages, cache_dir) -> dict[str, Path]:
    """Real manifests of every shape: squashfs with detached verity signed (ECDSA), a DDI
    built unsigned and then signed with ``sign``, and a directory image."""
    root = tmp_path_factory.mktemp("manifest-model")
    vh.ecdsa_signer_files(root, "release", "manifest model test")
    out = {}
    for name, fmt, kw in (("verity", "squashfs", {"verity": "detached", "sign": "release"}),
                          ("ddi", "ddi", {"filesystem": "erofs"}),
                          ("directory", "directory", {})):
        recipe = vh.project(root, packages, fmt, name=f"{name}.toml", **kw)
        if fmt == "directory":  # a directory image takes no compression
            recipe.write_text(recipe.read_text() + 'compression = "none"\n')
        result = build_cli(recipe, root / name, "-q", "--unsigned" if fmt == "ddi" else "-q",
                           cache_dir=cache_dir, in_process=True)
        out[name] = Path(result.image["manifest"])
    unsigned = root / "ddi-unsigned.manifest.json"
    unsigned.write_bytes(out["ddi"].read_bytes())  # before sign rewrites it
    out["ddi-unsigned"] = unsigned
    signed = run_cli("sign", str(out["ddi"].with_name("hello.raw")), "--key",
                     str(root / "release.key"), "--cert", str(root / "release.crt"),
                     in_process=True)
    assert signed.code == 0, signed.stderr
    return out


def test_real_manifests_round_trip_byte_for_byte_and_validate(built):
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    for name, path in built.items():
        data = path.read_bytes()
        model = mf.read(path)
        assert model.dumps() == data, name
        assert mf.Manifest.from_json(json.loads(data)).to_json() == json.loads(data), name
        errors = [e.message for e in validator.iter_errors(json.loads(data))]
        assert errors == [], (name, errors)


def test_the_sections_each_shape_has(built):
    verity, ddi, directory = (mf.read(built[n]) for n in ("verity", "ddi", "directory"))
    assert verity.verity is not None and verity.ddi is None and verity.signed
    assert verity.verity.signature_file == "hello.roothash.p7s"
    assert ddi.ddi is not None and ddi.signed and ddi.image.sha256 == ddi.ddi.sha256
    assert directory.image.sha256 is None and directory.image.filesystem is None
    assert not directory.signed and directory.unsigned_sha256 is None
    assert all(isinstance(f, mf.FileEntry) for f in directory.files)


def test_unsigned_view_of_a_signed_ddi_is_the_unsigned_build(built):
    signed, unsigned = mf.read(built["ddi"]), mf.read(built["ddi-unsigned"])
    assert signed.to_json() != unsigned.to_json()
    before = signed.to_json()
    view = signed.unsigned()
    assert signed.to_json() == before  # a copy: the manifest itself is unchanged
    assert view.ddi.certificate_fingerprint is None and view.ddi.signature_algorithm is None
    assert view.image.sha256 == view.ddi.sha256 == signed.ddi.unsigned_sha256
    sig = [p for p in view.ddi.partitions if p.designator.endswith("-verity-sig")]
    assert [p.sha256 for p in sig] == [None]
    assert view.provenance.certificate_fingerprint is None
    assert view.to_json() == unsigned.unsigned().to_json()
    # and what diff uses is this very view
    from pipeline.reproduce.diff.manifest import unsigned_view

    assert unsigned_view(signed.to_json()) == view.to_json()


def test_unsigned_view_of_detached_verity_drops_the_signature(built):
    view = mf.read(built["verity"]).unsigned()
    assert (view.verity.signature_file, view.verity.certificate_fingerprint,
            view.verity.signature_algorithm) == (None, None, None)
    assert view.image.sha256 == mf.read(built["verity"]).image.sha256  # bytes unchanged


def test_sign_rewrote_the_manifest_through_the_model(built):
    """Only the signature's fields changed, as Manifest.signed_ddi says."""
    signed, unsigned = mf.read(built["ddi"]), mf.read(built["ddi-unsigned"])
    assert unsigned.ddi.certificate_fingerprint is None
    assert signed.ddi.certificate_fingerprint is not None
    assert signed.ddi.signature_algorithm.startswith("ecdsa")
    assert signed.ddi.unsigned_sha256 == unsigned.ddi.unsigned_sha256
    assert signed.ddi.root_hash == unsigned.ddi.root_hash
    assert signed.files == unsigned.files and signed.inputs == unsigned.inputs


# --- hostile manifests ------------------------------------------------------------------------

def _set(path: str, value):
    def change(m):
        *parents, last = path.split(".")
        for key in parents:
            m = m[int(key)] if isinstance(m, list) else m[key]
        if value is _DELETE:
            del m[last]
        elif isinstance(m, list):
            m[int(last)] = value
        else:
            m[last] = value
    return change


_DELETE = object()

HOSTILE = [
    ("name", 5, "name", "is an integer, not a string"),
    ("name", "n" * 100_000, "name", "is a string of 100000 characters"),
    ("image.tree_sha256", _DELETE, "image.tree_sha256", "is missing"),
    ("image.size", 1 << 70, "image.size", "out of range"),
    ("image.size", -1, "image.size", "out of range"),
    ("excluded_count", True, "excluded_count", "is a boolean, not an integer"),
    ("image.sha256", "0" * 63, "image.sha256", "does not match"),
    ("image.format", "zip", "image.format", "is not one of"),
    ("kind", "portable", "kind", "is not one of"),
    ("inputs", {}, "inputs", "is an object, not an array"),
    ("inputs.0.sha256", None, "inputs[0].sha256", "is null, not a string"),
    ("files.0.uid", -1, "files[0].uid", "out of range"),
    ("files.0.mode", "rwxr-xr-x", "files[0].mode", "does not match"),
    ("files.0.extra", 1, "files[0].extra", "is not a field of the manifest"),
    ("tools.mksquashfs", 4.6, "tools.mksquashfs", "is a number, not a string"),
    ("ddi.partitions.0.offset", "0", "ddi.partitions[0].offset", "is a string"),
    ("ddi.verity", [], "ddi.verity", "is an array, not an object"),
    ("input_digest", None, "input_digest", "is null (leave the field out instead)"),
    ("surprise", {}, "surprise", "is not a field of the manifest"),
    ("schema", 3, "schema", "manifest schema 3; this sysext-pipeline reads 1, 2"),
]


@pytest.mark.parametrize("change,value,field,message", HOSTILE,
                         ids=[f"{c}={str(v)[:12]}" for c, v, _f, _m in HOSTILE])
def test_hostile_manifest_is_one_line_naming_file_and_field(built, tmp_path, change, value,
                                                            field, message):
    data = json.loads(built["ddi"].read_text())
    _set(change, value)(data)
    path = tmp_path / "hostile.manifest.json"
    path.write_text(json.dumps(data))  # a test's own file: the plugin leaves it alone
    with pytest.raises(InputError) as caught:
        mf.read(path)
    err = caught.value
    assert err.subject_field() == (str(path), field)
    assert message in err.what
    assert "\n" not in err.line() and len(err.line()) < 400
    # the schema says no to the same manifest
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    assert not validator.is_valid(data)


@pytest.mark.parametrize("text", [b"[1, 2]", b"not json", b"{" * 100_000,
                                  b'{"schema": 2, "name": ' + b"9" * 5000 + b"}"],
                         ids=["array", "not-json", "deep", "huge-number"])
def test_not_a_manifest_at_all(tmp_path, text):
    path = tmp_path / "x.manifest.json"
    path.write_bytes(text)
    with pytest.raises(InputError) as caught:
        mf.read(path)
    assert caught.value.where.startswith(str(path))
    assert "\n" not in caught.value.line()


def test_schema_1_manifest_is_still_read(built):
    """Schema 1 is schema 2 without ``hardlink``: verify and diff read old manifests."""
    data = json.loads(built["verity"].read_text())
    data["schema"] = 1
    for entry in data["files"]:
        entry.pop("hardlink", None)
    model = mf.Manifest.from_json(data, "old.manifest.json")
    assert model.schema == 1 and model.to_json() == data


def test_uptodate_rebuilds_over_an_invalid_manifest(built, tmp_path):
    from pipeline.stages import uptodate

    out = tmp_path / "out"
    out.mkdir()
    data = json.loads(built["verity"].read_text())
    data["image"]["size"] = "big"
    (out / "hello.manifest.json").write_bytes(mf.dumps(data))
    assert uptodate.check(out, "hello", {}, None) is None
    (out / "hello.manifest.json").unlink()  # not left for the plugin: it is hostile on purpose


# --- the schema is the model's ----------------------------------------------------------------

def test_published_schema_is_generated_from_the_model():
    """Regenerate with: python -c 'from pipeline.stages import manifest as mf;
    open("docs/manifest.schema.json", "w").write(mf.schema_text())'."""
    assert SCHEMA_FILE.read_text() == mf.schema_text()
    jsonschema.Draft202012Validator.check_schema(json.loads(SCHEMA_FILE.read_text()))


def _sections() -> list[type]:
    seen, todo = [], [mf.Manifest]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.append(cls)
        for spec in cls.specs():
            for tp in _leaves(spec.type):
                if isinstance(tp, type) and issubclass(tp, mf.Section):
                    todo.append(tp)
    return seen


def _leaves(tp):
    args = typing.get_args(tp)
    return [leaf for arg in args for leaf in _leaves(arg)] if args else [tp]


def test_schema_and_model_list_the_same_fields():
    """Adding a field is one edit in the model (and the regenerated schema): every section's
    JSON keys and required keys in the published schema are the model's."""
    schema = json.loads(SCHEMA_FILE.read_text())
    sections = _sections()
    assert {c.__name__ for c in sections} - {"Manifest"} == set(schema["$defs"])
    for cls in sections:
        part = schema if cls is mf.Manifest else schema["$defs"][cls.__name__]
        keys = [s.key for s in cls.specs()]
        assert sorted(part["properties"]) == sorted(keys), cls.__name__
        assert part["required"] == [s.key for s in cls.specs() if not s.optional]
        assert part["additionalProperties"] is False


def test_a_new_field_reaches_json_schema_and_reader():
    """What "one edit" buys: a field declared on a section is written, read, checked and in
    the schema, with nothing else to change."""
    from dataclasses import dataclass

    @dataclass
    class Extra(mf.Section):
        note: str = mf._f(max_length=8)

    assert Extra("hi").to_json() == {"note": "hi"}
    assert Extra.from_json({"note": "hi"}) == Extra("hi")
    with pytest.raises(InputError, match="note: is a string of 9 characters"):
        Extra.from_json({"note": "x" * 9}, "f.json")
    defs: dict = {}
    assert mf._object_schema(Extra, defs)["properties"]["note"] == {"type": "string",
                                                                    "maxLength": 8}


# --- the plugin -------------------------------------------------------------------------------

def test_plugin_fails_a_written_manifest_that_breaks_the_schema(built, tmp_path):
    good = json.loads(built["verity"].read_text())
    bad = copy.deepcopy(good)
    bad["files"][1]["uid"] = "root"
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "good.manifest.json").write_bytes(mf.dumps(good))
    (tmp_path / "a" / "bad.manifest.json").write_bytes(mf.dumps(bad))
    (tmp_path / "a" / "handmade.manifest.json").write_text(json.dumps({"companions": []}))
    problems = manifest_plugin.check_tree(tmp_path)
    assert problems == [f"{tmp_path / 'a' / 'bad.manifest.json'}: files[1].uid: 'root' is "
                        "not of type 'integer'"]
    (tmp_path / "a" / "bad.manifest.json").unlink()  # the session's own check passes then


def test_verify_refuses_a_hostile_manifest_naming_the_field(built, tmp_path):
    """verify reads the manifest through the model before any rebuild: exit 2, one line."""
    data = json.loads(built["verity"].read_text())
    data["inputs"][0]["size"] = "12 MB"
    path = tmp_path / "hello.manifest.json"
    path.write_text(json.dumps(data))
    result = run_cli("verify", str(path), "--json", in_process=True)
    assert result.code == 2, result.stderr
    error = result.json["error"]
    assert (error["subject"], error["field"]) == (str(path), "inputs[0].size")
    assert error["message"] == "is a string, not an integer"


def test_sign_refuses_a_hostile_manifest_before_touching_the_image(built, tmp_path):
    import shutil

    keys = built["ddi"].parent.parent
    image = tmp_path / "hello.raw"
    shutil.copy(built["ddi"].with_name("hello.raw"), image)
    before = image.read_bytes()
    data = json.loads(built["ddi"].read_text())
    data["ddi"]["rootHash"] = 7
    (tmp_path / "hello.manifest.json").write_text(json.dumps(data))
    result = run_cli("sign", str(image), "--key", str(keys / "release.key"), "--cert",
                     str(keys / "release.crt"), "--force", "--json", in_process=True)
    assert result.code == 2, result.stderr
    assert result.json["error"]["field"] == "ddi.rootHash"
    assert image.read_bytes() == before


def test_a_fifo_is_not_read_as_a_manifest(tmp_path):
    import os

    fifo = tmp_path / "x.manifest.json"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        mf.read(fifo)  # returns at once: no open() that waits for a writer


def test_diff_refuses_a_hostile_manifest_naming_the_field(built, tmp_path):
    data = json.loads(built["verity"].read_text())
    data["extension_release"]["fields"]["ID"] = ["debian"]
    path = tmp_path / "a.manifest.json"
    path.write_text(json.dumps(data))
    result = run_cli("diff", str(path), str(built["verity"]), "--json", in_process=True)
    assert result.code == 2, result.stderr
    error = result.json["error"]
    assert (error["subject"], error["field"]) == (str(path), "extension_release.fields.ID")


def test_the_fast_file_reader_and_the_generic_one_agree(built):
    """Files are read by a fast path; every value it refuses, the generic reader refuses with
    its message, and the bounds are the schema's (an mtime below -2⁶³ too)."""
    data = json.loads(built["verity"].read_text())
    for value, ok in ((-(1 << 63), True), (-(1 << 63) - 1, False), ((1 << 63) - 1, True),
                      (1 << 63, False)):
        data["files"][0]["mtime"] = value
        if ok:
            assert mf.Manifest.from_json(data).files[0].mtime == value
        else:
            with pytest.raises(InputError, match="files\\[0\\].mtime: .* out of range"):
                mf.Manifest.from_json(data, "m.json")
