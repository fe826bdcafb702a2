"""pipeline/jsonout.py writes exactly the bytes of json.dumps(..., indent=2, sort_keys=True):
on the manifest, SBOMs and provenance of a real build, and on awkward values."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import pytest
from recipes_kit import build_cli, hello_recipe, write_recipe_dict

from pipeline import jsonout

AWKWARD = [
    {},
    [],
    "",
    0,
    -1.5e300,
    None,
    True,
    {"a": {}, "b": [], "c": [{}], "d": [[]], "e": {"f": {}}},
    {"é": "ü", "snow ☃": "\U0001f600 astral", "ctl": "\x00\x01\x1f\x7f", "nl": "a\nb\r\t"},
    {"quote\"key": "back\\slash", "sep": "},\n    {", "brace": "}", "open": "{"},
    [{"a": 1}, {"b": "}, {"}, {"c": None, "d": False}],
    [{"a": 1}, {}, {"b": 2}],          # an empty dict among flat ones
    [{"a": 1}, [1, 2], "x", {"b": [3]}],
    [[1, [2, [3, [4, {"deep": [5]}]]]]],
    {"z": 1, "a": 2, "m": {"y": [1, 2.5, "three", None, True], "b": {"c": {"d": "e"}}}},
    {"int_key_free": [0.1, 1e-7, 10**30, -0.0, float("inf"), float("nan")]},
    {"t": (1, 2, (3, {"k": (4,)}))},   # tuples are lists to json
    OrderedDict([("b", 1), ("a", [OrderedDict([("y", 2), ("x", 3)])])]),
    {"nested": [{"a": 1, "b": {"c": 2}}, {"a": 3, "b": {}}]},
    {str(i): {"i": i, "s": "x" * i} for i in range(30)},
    {"int keys": {10: "ten", 2: "two"}},        # not str keys in a flat dict: json's rules
    {"outer": {2.5: ["x"], 1: "one", 0.5: [{}]}},   # ... and in a nested one: json.dumps's
]


@pytest.mark.parametrize("value", AWKWARD, ids=range(len(AWKWARD)))
@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_same_text_as_json(value, ensure_ascii):
    expected = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=ensure_ascii)
    assert jsonout.dumps(value, ensure_ascii=ensure_ascii) == expected
    assert jsonout.pretty(value, ensure_ascii=ensure_ascii) == (expected + "\n").encode()


def test_deep_nesting_and_errors_are_jsons():
    deep: list = []
    for _ in range(200):  # past the fast path's depth: json.dumps writes it
        deep = [1, {"k": deep}]
    assert jsonout.dumps(deep) == json.dumps(deep, indent=2, sort_keys=True)
    for bad in ({"p": Path("/x")}, [1, {2, 3}], {"k": [object()]}):
        with pytest.raises(TypeError) as mine:
            jsonout.dumps(bad)
        with pytest.raises(TypeError) as theirs:
            json.dumps(bad, indent=2, sort_keys=True)
        assert str(mine.value) == str(theirs.value)
    with pytest.raises(TypeError):
        jsonout.dumps({"a": [1], 2: [3]})  # keys that do not sort: json's TypeError too


def test_a_real_builds_documents_are_byte_identical(tmp_path, packages, cache_dir):
    """Every JSON document a build writes (manifest with ensure_ascii, SBOMs and provenance
    without) is what json.dumps writes; the build itself writes through jsonout."""
    recipe = write_recipe_dict(tmp_path, hello_recipe(
        "directory", sources=[packages["deb"], packages["deb-zstd"], packages["rpm"]]))
    out = tmp_path / "out"
    build_cli(recipe, out, cache_dir=cache_dir)
    documents = sorted(out.glob("*.json"))
    assert {p.name.split(".", 1)[1] for p in documents} >= {
        "manifest.json", "spdx.json", "cdx.json", "provenance.json"}
    for path in documents:
        data = path.read_bytes()
        value = json.loads(data)
        ensure_ascii = path.name.endswith(".manifest.json")
        assert data == (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=ensure_ascii)
                        + "\n").encode(), path.name
        assert jsonout.pretty(value, ensure_ascii=ensure_ascii) == data, path.name
    manifest = json.loads((out / "hello.manifest.json").read_bytes())
    assert len(manifest["files"]) > 3  # the list-of-flat-dicts path ran on a real file list
