"""The JSON Schemas (2020-12) of every command's ``--json`` output, written to docs/schemas/.

    python3 tests/cli_schemas.py     # regenerate docs/schemas/ (tests/test_cli_json.py checks)

Every output is one object: the envelope (``schema``, ``ok``, ``exit``; ``error`` when not ok)
and, on success or a verdict (exit 3), the command's own members. Top-level members are closed
(``additionalProperties: false``) so that a renamed or camelCase key fails the tests.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "schemas"
SCHEMA_VERSION = 2

S, INT, B, N = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}, {"type": "number"}
NULL = {"type": "null"}
OBJ, ARR = {"type": "object"}, {"type": "array"}


def opt(t: dict) -> dict:
    return {"anyOf": [t, NULL]}


def arr(items: dict) -> dict:
    return {"type": "array", "items": items}


def obj(props: dict, required: list[str] | None = None, closed: bool = False) -> dict:
    out = {"type": "object", "properties": props,
           "required": sorted(props) if required is None else required}
    if closed:
        out["additionalProperties"] = False
    return out


SNAKE = {"type": "object", "propertyNames": {"pattern": "^[a-z0-9_]+$"}}

ERROR = obj({"message": S, "subject": opt(S), "field": opt(S), "hint": opt(S)}, closed=True)
ENVELOPE = {"schema": {"const": SCHEMA_VERSION}, "ok": B, "exit": INT, "error": ERROR}

HOST = {"type": "object", "required": ["architecture"],
        "properties": {"architecture": S, "initrd": B, "os_release": OBJ}}

FINDING = obj({"severity": S, "code": S, "message": S, "fix": S, "subject": S},
              required=["severity", "code", "message"])

CACHE_ENTRY = obj({"sha256": S, "size": INT, "kind": {"enum": ["deb", "rpm", "other",
                                                               "unreadable"]},
                   "mtime": INT}, closed=True)

BUILD_IMAGE = obj({
    "kind": {"enum": ["sysext", "confext"]}, "name": S, "image": S, "manifest": S,
    "format": S, "sha256": opt(S), "size": opt(INT), "tree_sha256": S,
    "extension_release": {"type": "object", "additionalProperties": S},
    "extension_release_path": S, "warnings": ARR, "root_hash": opt(S),
    "extra_files": arr(S)}, closed=True)

#: A second shape of a command's output: ``build`` with several recipes (a catalogue), whose
#: failure (any exit) still carries every recipe's row.
CATALOGUE = {
    "recipes": arr(obj({
        "recipe": S, "name": opt(S),
        "status": {"enum": ["built", "up_to_date", "failed", "not_started", "running"]},
        "exit": opt(INT), "seconds": N, "images": arr(BUILD_IMAGE), "warnings": arr(S),
        "error": opt(ERROR)}, closed=True)),
    "jobs": INT,
    "counts": obj({k: INT for k in ("built", "up_to_date", "failed", "not_started")},
                  closed=True),
}
VARIANTS: dict[str, dict] = {"build": CATALOGUE}

#: command → its own members (all required, closed at the top level)
BODIES: dict[str, dict] = {
    "build": {
        "decision": opt(S), "warnings": arr(S), "dropped": {"type": "object",
                                                            "additionalProperties": S},
        "timings": OBJ, "up_to_date": B, "images": arr(BUILD_IMAGE),
    },
    "matrix": {
        "include": arr(obj({k: S for k in ("recipe", "name", "architecture",
                                           "debian_architecture", "output_dir", "command",
                                           "cache_key")}, closed=True)),
        "skipped": arr(obj({"recipe": S, "architecture": S, "why": S}, closed=True)),
    },
    "plan": {
        "recipe": S, "decision": opt(S), "undecided": opt(S), "complete": B,
        "would_fetch": arr(S), "packages": ARR,
        "dropped": {"type": "object", "additionalProperties": S}, "excluded_count": INT,
        "source_date_epoch": opt(INT), "images": arr(SNAKE), "matching": OBJ, "commands": arr(S),
        "cautions": arr(S),
    },
    "lock": {  # a row per recipe: lock, or lock --check (what a re-lock would move)
        "recipes": arr({"anyOf": [
            obj({"recipe": S, "lock": S, "changed": B, "packages": INT, "seconds": N,
                 "notes": arr(S), "warnings": arr(S), "moved": arr(S)}, closed=True),
            obj({"recipe": S, "lock": S, "stale": B, "would_move": B, "moves": arr(SNAKE),
                 "newer": arr(SNAKE)}, closed=True)]}),
    },
    "fetch": {"store": S, "files": INT, "bytes": INT, "downloaded": INT, "present": INT},
    "check": {"host": HOST, "images": arr(SNAKE)},
    "doctor": {"host": HOST, "images": ARR, "findings": arr(FINDING),
               "journal": opt(SNAKE)},
    "install": {"installed": S, "kind": S, "name": S, "previous": arr(S), "refreshed": B,
                "enabled": opt(B), "visible": arr(S), "warnings": arr(S), "check": SNAKE},
    "uninstall": {"removed": arr(S), "left": arr(S), "refreshed": arr(S)},
    "rollback": {"restored": S, "kind": S, "name": S, "kept": arr(S), "refreshed": B},
    "verify": {"status": S, "name": opt(S), "recipe": opt(S), "recorded_sha256": opt(S),
               "rebuilt_sha256": opt(S), "manifest_identical": opt(B), "notes": arr(S),
               "diff": opt(SNAKE), "kept": opt(S), "signature": opt(SNAKE),
               "variations": opt(ARR)},
    "diff": {"a": S, "b": S, "identical": B, "unverified": ARR, "manifests_identical": opt(B),
             "explained_at": opt(S), "summary": S, "notes": arr(S), "levels": OBJ,
             "findings": arr(SNAKE), "tree": opt(SNAKE)},
    "inspect": {"path": S, "format": S, "size": INT, "sha256": S, "problems": arr(S)},
    "sign": {"image": S, "format": {"enum": ["ddi", "verity"]}, "root_hash": S,
             "certificate_fingerprint": S, "signature_file": opt(S), "sha256": opt(S),
             "warnings": arr(S)},
    "keys-generate": {"key": S, "cert": opt(S), "encrypted": B, "fingerprint": S},
    "publish": {"feed": S, "index": obj({"schema": INT, "url": S, "images": ARR, "signed": B},
                                        required=["url", "images"])},
    "sign-feed": {"feed": S, "signature": S},
    "cache-list": {"cache": S, "entries": arr(CACHE_ENTRY), "files": INT, "bytes": INT},
    "cache-prune": {"cache": S, "removed": arr(CACHE_ENTRY), "freed": INT, "kept": INT,
                    "dry_run": B},
    "explain": {"lines": arr(SNAKE), "unknown": arr(INT), "images": ARR,
                "merge": {"type": ["string", "object", "null"]},
                "files": opt(ARR), "host": opt(HOST)},
}

#: members that a command's output may have besides the required ones
OPTIONAL: dict[str, dict] = {
    "inspect": {k: opt(SNAKE) for k in ("verity", "signature", "filesystem", "manifest")}
    | {"partitions": arr(SNAKE), "disk_uuid": opt(S), "certificate": opt(S)},
    "keys-generate": {"openpgp": B},  # --openpgp: key is the GnuPG home, cert null
    "install": {"feed": SNAKE},  # install --feed: what was set up (pipeline/release/feed.py)
}

#: outputs whose members depend on what is inspected: open, but every member is snake_case
OPEN = {"inspect"}


def schema(command: str) -> dict:
    body = BODIES[command]
    extra = OPTIONAL.get(command, {})
    envelope_props = {k: v for k, v in ENVELOPE.items() if k != "error"}
    failure = {
        "description": "any failure but a verdict: the envelope alone",
        "type": "object", "additionalProperties": False,
        "required": ["schema", "ok", "exit", "error"],
        "properties": {**ENVELOPE, "ok": {"const": False},
                       "exit": {"type": "integer", "minimum": 1}},
    }
    result = {
        "description": "success (ok, exit 0) or a verdict (not ok, exit 3, with error)",
        "type": "object",
        **({"propertyNames": {"pattern": "^[a-z0-9_]+$"}} if command in OPEN
           else {"additionalProperties": False}),
        "required": ["schema", "ok", "exit", *sorted(body)],
        "properties": {**envelope_props, "error": ERROR, **body, **extra},
        "if": {"properties": {"ok": {"const": True}}},
        "then": {"properties": {"exit": {"const": 0}}, "not": {"required": ["error"]}},
        "else": {"required": ["error"], "properties": {"exit": {"const": 3}}},
    }
    variants = []
    if command in VARIANTS:
        body = VARIANTS[command]
        variants.append({
            "description": "several recipes: one row each; not ok (any exit) when one failed",
            "type": "object", "additionalProperties": False,
            "required": ["schema", "ok", "exit", *sorted(body)],
            "properties": {**envelope_props, "error": ERROR, **body},
            "if": {"properties": {"ok": {"const": True}}},
            "then": {"properties": {"exit": {"const": 0}}, "not": {"required": ["error"]}},
            "else": {"required": ["error"], "properties": {"exit": {"minimum": 1}}},
        })
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"sysext-pipeline/{command}.schema.json",
            "title": f"sysext-pipeline {command.replace('-', ' ')} --json",
            "anyOf": [{"anyOf": [result, *variants]} if variants else result, failure]}


def render(command: str) -> str:
    return json.dumps(schema(command), indent=2, sort_keys=True) + "\n"


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for command in BODIES:
        (OUT / f"{command}.schema.json").write_text(render(command))
    print(f"wrote {len(BODIES)} schemas to {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
