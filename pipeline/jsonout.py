"""Pretty-printed JSON, the same bytes as ``json.dumps(data, indent=2, sort_keys=True)``, faster.

Python's C encoder ignores ``indent`` (3.11): with it, ``json.dumps`` runs the pure-Python
encoder, a generator per container, which costs a tenth of a second on a large manifest. Here
the containers are walked in Python and every *flat* container (a dict or list holding only
strings, numbers, booleans and null: a manifest's file entries, the SBOM's checksums) is encoded
by the C encoder in one call, its item separator carrying the newline and the indentation of its
depth. Anything else (a key that is not a string, a value json does not know, a deep nesting)
is handed to ``json.dumps`` itself, so the result or the error is always json's.

The one writer of the manifest, the SBOMs and the provenance (tests/test_jsonout.py compares it
with ``json.dumps`` on real documents and on awkward values).
"""

from __future__ import annotations

import json

INDENT = 2
#: Deeper than this, json.dumps does the work (our documents nest about six levels).
_MAX_DEPTH = 64
_SCALARS = (str, int, float, bool, type(None))
#: The exact types a flat container may hold (a subclass takes the walk, then json's own path).
_SCALAR_TYPES = frozenset(_SCALARS)


class _Fallback(Exception):
    """The fast path does not handle this value: json.dumps does."""


def pretty(data, *, ensure_ascii: bool = True) -> bytes:
    """``(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=…) + "\\n").encode()``."""
    return (dumps(data, ensure_ascii=ensure_ascii) + "\n").encode()


def dumps(data, *, ensure_ascii: bool = True) -> str:
    """``json.dumps(data, indent=2, sort_keys=True, ensure_ascii=ensure_ascii)``."""
    out: list[str] = []
    try:
        _Writer(ensure_ascii, out).value(data, 0)
    except _Fallback:
        return json.dumps(data, indent=INDENT, sort_keys=True, ensure_ascii=ensure_ascii)
    return "".join(out)


class _Writer:
    def __init__(self, ensure_ascii: bool, out: list[str]):
        self.ensure_ascii = ensure_ascii
        self.out = out
        self._flat: dict[int, object] = {}  # depth → the C encoder of that depth's flat items
        self._scalar = json.JSONEncoder(ensure_ascii=ensure_ascii).encode

    def _flat_encoder(self, depth: int):
        encode = self._flat.get(depth)
        if encode is None:
            encode = self._flat[depth] = json.JSONEncoder(
                ensure_ascii=self.ensure_ascii, sort_keys=True,
                separators=(",\n" + " " * (INDENT * (depth + 1)), ": ")).encode
        return encode

    def value(self, value, depth: int) -> None:
        if isinstance(value, _SCALARS):
            self.out.append(self._scalar(value))
        elif isinstance(value, dict):
            self._dict(value, depth)
        elif isinstance(value, (list, tuple)):
            self._list(value, depth)
        else:
            raise _Fallback

    def _dict(self, value: dict, depth: int) -> None:
        if not value:
            self.out.append("{}")
            return
        if depth > _MAX_DEPTH:
            raise _Fallback
        if _SCALAR_TYPES.issuperset(map(type, value.values())):
            self._flat_container(value, depth)
            return
        if not all(isinstance(k, str) for k in value):
            raise _Fallback  # json converts such keys after sorting them: its own rules
        inner = "\n" + " " * (INDENT * (depth + 1))
        key = self._scalar
        out = self.out
        out.append("{")
        separator = inner
        for k, v in sorted(value.items()):
            out.append(separator)
            out.append(key(k))
            out.append(": ")
            self.value(v, depth + 1)
            separator = "," + inner
        out.append("\n" + " " * (INDENT * depth) + "}")

    def _list(self, value, depth: int) -> None:
        if not value:
            self.out.append("[]")
            return
        if depth > _MAX_DEPTH:
            raise _Fallback
        if _SCALAR_TYPES.issuperset(map(type, value)):
            self._flat_container(value, depth)
            return
        if self._flat_dicts(value, depth):
            return
        inner = "\n" + " " * (INDENT * (depth + 1))
        out = self.out
        out.append("[")
        separator = inner
        for v in value:
            out.append(separator)
            self.value(v, depth + 1)
            separator = "," + inner
        out.append("\n" + " " * (INDENT * depth) + "]")

    def _flat_dicts(self, value, depth: int) -> bool:
        """A list of non-empty flat dicts (a manifest's files): one C call for all of them,
        with the dicts' separator; the boundaries between them (``}`` separator ``{``, found
        only there: a flat dict's separator is followed by a key's quote, and no JSON string
        holds a raw newline) get the list's indentation here. False if ``value`` is not one."""
        if not all(type(v) is dict and v and _SCALAR_TYPES.issuperset(map(type, v.values()))
                   for v in value):
            return False
        outer, inner = " " * (INDENT * (depth + 1)), " " * (INDENT * (depth + 2))
        separator = ",\n" + inner
        text = self._flat_encoder(depth + 1)(value)
        body = text[2:-2].replace("}" + separator + "{", f"\n{outer}}},\n{outer}{{\n{inner}")
        self.out.append(f"[\n{outer}{{\n{inner}{body}\n{outer}}}\n{' ' * (INDENT * depth)}]")
        return True

    def _flat_container(self, value, depth: int) -> None:
        """A non-empty dict or list of scalars: one C call; its separators indent the items,
        the brackets get their own lines here."""
        text = self._flat_encoder(depth)(value)
        self.out.append(f"{text[0]}\n{' ' * (INDENT * (depth + 1))}{text[1:-1]}\n"
                        f"{' ' * (INDENT * depth)}{text[-1]}")
