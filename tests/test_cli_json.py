"""Issue 16 §1/§3: every verb's ``--json`` output, on success, on a verdict and on failure, is ONE
object on stdout that validates against its published schema (docs/schemas/, JSON Schema
2020-12), and its ``exit`` is the process's exit status from the classes in pipeline/errors.py.

Real builds (a files-only recipe: seconds), real images, a real --root tree; jsonschema is a
test-only dependency (pyproject's test extra).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cli_schemas
import jsonschema
import pytest
from conftest import run_cli
from merge import make_root
from recipes_kit import tool_recipe, write_recipe_dict

pytest_plugins = ["repos"]  # the archive, key and server fixtures (lock, fetch)

SCHEMAS = Path(__file__).resolve().parent.parent / "docs" / "schemas"


def validate(command: str, proc, exit: int) -> dict:
    """The output is one JSON object, valid against the command's schema, whose exit is the
    process's."""
    assert proc.returncode == exit, (command, proc.returncode, proc.stdout, proc.stderr)
    data = json.loads(proc.stdout)  # exactly one document: json.loads refuses trailing data
    schema = json.loads((SCHEMAS / f"{command}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    result, bare_failure = schema["anyOf"]
    branch = bare_failure if set(data) == {"schema", "ok", "error", "exit"} else result
    # the branch alone first (its error message is the useful one), then the whole schema
    jsonschema.validate(data, branch, cls=jsonschema.Draft202012Validator)
    jsonschema.validate(data, schema, cls=jsonschema.Draft202012Validator)
    assert data["exit"] == exit and data["ok"] is (exit == 0) and data["schema"] == 2
    if exit:
        assert data["error"]["message"], data
    return data


def failure(command: str, proc, exit: int = 2) -> dict:
    data = validate(command, proc, exit)
    if exit != 3:
        assert set(data) == {"schema", "ok", "error", "exit"}, data
    # stderr still has the one human line
    assert proc.stderr.count("error:") >= 1 and "Traceback" not in proc.stderr
    return data


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One built image (and a second version), a --root tree, keys."""
    tmp = tmp_path_factory.mktemp("cli")
    out = {}
    for label, kw in {"v1": {}, "v2": {"payload": "v2"}, "old": {"version_id": "11"}}.items():
        rdir = tmp / label
        recipe = write_recipe_dict(rdir, tool_recipe("tool", **kw))
        proc = run_cli("build", str(recipe), "-o", str(rdir / "out"), "--json")
        data = validate("build", proc, 0)
        out[label] = (recipe, Path(data["images"][0]["image"]), data)
    root = make_root(tmp / "root", "ID=debian\nVERSION_ID=12\n")
    return {"tmp": tmp, "images": out, "root": root}


def test_build_and_plan(world, tmp_path):
    recipe, image, built = world["images"]["v1"]
    assert isinstance(built["dropped"], dict)  # the same type as plan's
    plan = validate("plan", run_cli("plan", "--json", str(recipe)), 0)  # bare --json first
    assert plan["dropped"] == built["dropped"]
    failure("plan", run_cli("plan", str(tmp_path / "missing.toml"), "--json"))
    failure("build", run_cli("build", str(tmp_path / "missing.toml"), "--json"))
    bad = write_recipe_dict(tmp_path / "bad", tool_recipe("tool", extension={"bogus": 1}))
    error = failure("build", run_cli("build", str(bad), "--json"))["error"]
    assert error == {"message": "unknown key", "subject": str(bad), "field": "extension.bogus",
                     "hint": "allowed: name, kind, version"}


def test_check_doctor_install_uninstall_rollback(world, tmp_path):
    root = Path(shutil.copytree(world["root"], tmp_path / "root", symlinks=True))
    v1, v2, old = (world["images"][k][1] for k in ("v1", "v2", "old"))
    host = ("--root", str(root), "--systemd", "252")
    validate("check", run_cli("check", str(v1), *host, "--json"), 0)
    verdict = validate("check", run_cli("check", str(old), *host, "--json"), 3)
    assert verdict["images"] and verdict["error"]["subject"] == str(old)
    failure("check", run_cli("check", str(tmp_path / "nope.raw"), *host, "--json"))

    # install refusing a non-merging image: the same verdict, the same exit as check
    refused = validate("install", run_cli("install", str(old), *host, "--json"), 3)
    assert "match.version-id" in refused["error"]["message"] + refused["error"]["hint"]
    assert refused["error"]["message"].startswith("would be ignored under systemd 252: ")
    assert not (root / "var/lib/extensions/tool.raw").exists()

    validate("install", run_cli("install", str(v1), *host, "--json"), 0)
    validate("install", run_cli("install", str(v2), *host, "--json"), 0)
    failure("install", run_cli("install", str(tmp_path / "nope.raw"), *host, "--json"))
    validate("doctor", run_cli("doctor", *host, "--json"), 0)
    back = validate("rollback", run_cli("rollback", "tool", *host, "--json"), 0)
    assert back["name"] == "tool"
    failure("rollback", run_cli("rollback", "nothing", *host, "--json"))
    validate("uninstall", run_cli("uninstall", "tool", *host, "--json"), 0)
    failure("uninstall", run_cli("uninstall", "tool", *host, "--json"))
    failure("doctor", run_cli("doctor", "--root", str(tmp_path / "none"), "--json"))


def test_doctor_verdict(world, tmp_path):
    root = Path(shutil.copytree(world["root"], tmp_path / "root", symlinks=True))
    shutil.copy(world["images"]["old"][1], root / "var/lib/extensions/old.raw")
    data = validate("doctor", run_cli("doctor", "--root", str(root), "--systemd", "252",
                                      "--json"), 3)
    assert data["findings"] and re.match(r"\d+ errors?: ", data["error"]["message"])


def test_verify_and_diff(world, tmp_path):
    _, v1, built = world["images"]["v1"]
    _, v2, _ = world["images"]["v2"]
    manifest = built["images"][0]["manifest"]
    validate("verify", run_cli("verify", manifest, "--json", "-q"), 0)
    failure("verify", run_cli("verify", str(tmp_path / "x.manifest.json"), "--json"))
    validate("diff", run_cli("diff", str(v1), str(v1), "--json"), 0)
    differs = validate("diff", run_cli("diff", str(v1), str(v2), "--json"), 3)
    assert differs["identical"] is False
    failure("diff", run_cli("diff", str(v1), str(tmp_path / "none.raw"), "--json"))


def test_keys_sign_inspect(world, tmp_path):
    keys = tmp_path / "keys"
    key, cert = keys / "k.key", keys / "k.crt"
    generated = validate("keys-generate", run_cli("keys", "generate", "--key", str(key),
                                                  "--cert", str(cert), "--json"), 0)
    assert len(generated["fingerprint"]) == 64 and generated["encrypted"] is False
    again = run_cli("keys", "generate", "--key", str(key), "--cert", str(cert), "--json")
    failure("keys-generate", again)  # never overwrites
    gpg = validate("keys-generate", run_cli("keys", "generate", "--openpgp",
                                            str(tmp_path / "gnupg"), "--json"), 0)
    assert gpg["openpgp"] is True and gpg["cert"] is None and len(gpg["fingerprint"]) == 40

    rdir = tmp_path / "ddi"
    recipe = write_recipe_dict(rdir, tool_recipe("tool", fmt="ddi"))
    built = validate("build", run_cli("build", str(recipe), "-o", str(rdir / "out"),
                                      "--unsigned", "--json"), 0)
    image = built["images"][0]["image"]
    signed = validate("sign", run_cli("sign", image, "--key", str(key), "--cert", str(cert),
                                      "--json=short"), 0)
    assert signed["format"] == "ddi" and len(signed["root_hash"]) == 64
    failure("sign", run_cli("sign", str(tmp_path / "none.raw"), "--key", str(key), "--cert",
                            str(cert), "--json"))

    report = validate("inspect", run_cli("inspect", image, "--cert", str(cert), "--json"), 0)
    assert "disk_uuid" in report and "diskUuid" not in report  # snake_case, like build's
    assert "uuids_match_root_hash" in report["verity"]
    plain = world["images"]["v1"][1]
    verdict = validate("inspect", run_cli("inspect", str(plain), "--cert", str(cert),
                                          "--json"), 3)  # not signed: fails against --cert
    assert verdict["problems"]
    failure("inspect", run_cli("inspect", str(tmp_path / "none.raw"), "--json"))


def test_explain(tmp_path):
    line = "Extension image tool is not compatible, ignoring"  # any text: known or unknown
    validate("explain", run_cli("explain", "--json", line), 0)
    failure("explain", run_cli("explain", "--json", "--file", str(tmp_path / "none.log")))


def test_lock_and_fetch(tmp_path, deb_archive, deb_recipe):
    env = {"SYSEXT_PIPELINE_CACHE": str(tmp_path / "cache")}
    recipe = deb_recipe(tmp_path / "r", deb_archive, ["tool"])
    locked = validate("lock", run_cli("lock", str(recipe), "--json", env=env), 0)
    assert isinstance(locked, dict) and locked["recipes"][0]["packages"] >= 1
    failure("lock", run_cli("lock", str(tmp_path / "none.toml"), "--json", env=env))
    store = tmp_path / "store"
    fetched = validate("fetch", run_cli("fetch", str(recipe), "--store", str(store),
                                        "--json=short", env=env), 0)
    assert fetched["files"] >= 1
    failure("fetch", run_cli("fetch", str(tmp_path / "none.toml"), "--store", str(store),
                             "--json"))


def test_json_modes_and_usage_errors(world):
    recipe = str(world["images"]["v1"][0])
    short = run_cli("plan", recipe, "--json=short")
    assert short.returncode == 0 and short.stdout.count("\n") == 1
    pretty = run_cli("plan", recipe, "--json=pretty")
    assert json.loads(pretty.stdout) == json.loads(short.stdout) and pretty.stdout.count("\n") > 1
    off = run_cli("plan", recipe, "--json=off")
    assert off.returncode == 0 and off.stdout.startswith("plan for ")
    bad = run_cli("plan", recipe, "--json=yaml")
    assert bad.returncode == 2 and "invalid mode 'yaml'" in bad.stderr
    # a command line argparse refuses is a failure like any other: one object with --json
    usage = failure("plan", run_cli("plan", recipe, "--no-such-option", "--json"))
    assert "--no-such-option" in usage["error"]["message"]
    assert run_cli("plan", recipe, "--no-such-option").stdout == ""


def test_schemas_are_current():
    """docs/schemas/ is generated by tests/cli_schemas.py (python3 tests/cli_schemas.py)."""
    for command in cli_schemas.BODIES:
        path = SCHEMAS / f"{command}.schema.json"
        assert path.read_text() == cli_schemas.render(command), f"regenerate {path}"
    names = {p.name for p in SCHEMAS.glob("*.schema.json")}
    assert names == {f"{c}.schema.json" for c in cli_schemas.BODIES}


def test_publish_and_sign_feed(world, tmp_path):
    _, image, _ = world["images"]["v1"]
    feed = tmp_path / "feed"
    url = "http://updates.example.invalid/feed"
    published = validate("publish", run_cli("publish", str(image), "--feed", str(feed), "--url",
                                            url, "--unsigned", "--json"), 0)
    assert published["index"]["signed"] is False and published["index"]["url"] == url
    failure("publish", run_cli("publish", str(tmp_path / "none.raw"), "--feed",
                               str(tmp_path / "f2"), "--url", url, "--json"))
    gnupg = tmp_path / "gnupg"
    validate("keys-generate", run_cli("keys", "generate", "--openpgp", str(gnupg), "--json"), 0)
    signed = validate("sign-feed", run_cli("sign-feed", str(feed), "--gnupghome", str(gnupg),
                                           "--json"), 0)
    assert Path(signed["signature"]).is_file()
    failure("sign-feed", run_cli("sign-feed", str(tmp_path / "nofeed"), "--gnupghome",
                                 str(gnupg), "--json"))
