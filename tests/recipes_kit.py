"""One way for tests to write a recipe and run the CLI.

``recipe_dict(...)`` returns a recipe as a dict (Debian 12 unless told), and ``hello_recipe``,
``tool_recipe`` and ``unfetchable_recipe`` the shapes many tests share; ``toml_text(spec)``
writes any dict as TOML (checked by reading it back with :mod:`tomllib`), ``write_recipe_dict``
puts it in a file (the ``make_recipe`` fixture in conftest.py: in the test's tmp_path).
``build_cli`` / ``build_recipe`` / ``run_cli`` run the real CLI (a separate process by default,
or in-process with ``in_process=True``) and return a :class:`CliResult`: exit code, output and
the parsed ``--json``; ``cli_argv`` and ``cli_env`` are for tests that start it themselves.

Recipes whose *text* is the point of a test (a TOML syntax error, a key spelled wrong on
purpose) stay literal strings in that test.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

REPO = Path(__file__).resolve().parent.parent

#: ``[target]`` of most test recipes.
DEBIAN_12 = {"id": "debian", "version_id": "12"}
#: The ``source_date_epoch`` the tests pin.
EPOCH = 1700000000


# --- TOML writing -----------------------------------------------------------------------------

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


def _string(value: str) -> str:
    out = []
    for ch in value:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _key(key: str) -> str:
    bare = key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key)
    return key if bare else _string(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"no TOML for {value!r}")
        return repr(value)
    if isinstance(value, (str, os.PathLike)):
        return _string(os.fspath(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {type(value).__name__}: {value!r}")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and \
        all(isinstance(v, dict) for v in value)


def _plain(value: Any) -> Any:
    """``value`` as tomllib would read it back (paths as strings, tuples as lists)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def toml_text(spec: dict[str, Any]) -> str:
    """``spec`` as TOML: top-level scalars first, then ``[table]`` for each dict and
    ``[[table]]`` for each list of dicts; dicts inside a table become inline tables. A value of
    ``None`` is left out (so ``kind=None`` means "no kind key")."""
    spec = {k: v for k, v in spec.items() if v is not None}
    lines = [f"{_key(k)} = {_value(v)}" for k, v in spec.items()
             if not isinstance(v, dict) and not _is_table_array(v)]
    for key, value in spec.items():
        if isinstance(value, dict):
            lines += ["", f"[{_key(key)}]"]
            lines += [f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None]
        elif _is_table_array(value):
            for item in value:
                lines += ["", f"[[{_key(key)}]]"]
                lines += [f"{_key(k)} = {_value(v)}" for k, v in item.items() if v is not None]
    text = "\n".join(lines).lstrip("\n") + "\n"
    expected = _plain({k: ({kk: vv for kk, vv in v.items() if vv is not None}
                           if isinstance(v, dict) else
                           [{kk: vv for kk, vv in i.items() if vv is not None} for i in v]
                           if _is_table_array(v) else v)
                       for k, v in spec.items()})
    assert tomllib.loads(text) == expected, text  # the writer's own check
    return text


# --- recipes ----------------------------------------------------------------------------------

def recipe_dict(name: str = "x", *, kind: str | None = None, version: str | None = None,
                target: dict | None = None, sources: list | tuple = (),
                image: dict | None = None, extension: dict | None = None,
                **sections: Any) -> dict:
    """A recipe dict: ``[extension]`` (name, kind, version, plus ``extension``), ``[target]``
    (Debian 12 unless given), ``[[source]]`` per item of ``sources`` (a path alone means a
    deb or rpm by its suffix), ``[image]``, then any other ``sections`` (``files``,
    ``filter``, ``owners``, ``sign``, ``repository`` as a list, ...). ``[image]`` is written
    last, so a test may append keys of it to the text."""
    ext = {"name": name, "kind": kind, "version": version, **(extension or {})}
    spec: dict[str, Any] = {"extension": ext, "target": dict(DEBIAN_12 if target is None
                                                           else target)}
    if sources:
        spec["source"] = [source(s) if isinstance(s, (str, os.PathLike)) else s
                          for s in sources]
    spec.update(sections)
    if image is not None:
        spec["image"] = image
    return spec


def hello_recipe(fmt: str = "squashfs", *, sources: list | tuple, name: str = "hello",
                 version: str = "1.0", target: dict | None = None, epoch: int | None = EPOCH,
                 image: dict | None = None, **sections: Any) -> dict:
    """The recipe most build tests share: a versioned x86-64 Debian 12 sysext of ``sources``
    without their docs, the rpm's ``daemon`` owner mapped to 1, pinned to ``epoch`` (None: not
    pinned); a section given as None is left out."""
    return recipe_dict(
        name, kind="sysext", version=version,
        target={"id": "debian", "version_id": "12", "architecture": "x86-64", **(target or {})},
        sources=sources, image={"format": fmt, "source_date_epoch": epoch, **(image or {})},
        **{"filter": {"exclude": ["usr/share/doc/**"]},
           "owners": {"users": {"daemon": 1}, "groups": {"daemon": 1}}, **sections})


def tool_recipe(name: str, *, kind: str = "sysext", version_id: str = "12",
                payload: str = "v1", fmt: str = "squashfs", **more: Any) -> dict:
    """An image NAME with one tool that echoes ``payload`` (usr/bin/NAME-tool, or
    etc/NAME-tool in a confext), version 1, for Debian ``version_id`` (x86-64 for a sysext); a
    DDI holds erofs. ``more``: other arguments of :func:`recipe_dict`."""
    path = "usr/bin" if kind == "sysext" else "etc"
    target = {"id": "debian", "version_id": version_id,
              "architecture": "x86-64" if kind == "sysext" else None}
    return recipe_dict(
        name, kind=kind, version="1", target=target,
        files={f"{path}/{name}-tool": {"content": f"#!/bin/sh\necho {payload}\n",
                                       "mode": "0755"}},
        image={"format": fmt, "filesystem": "erofs" if fmt == "ddi" else None,
               "source_date_epoch": EPOCH}, **more)


#: A deb that can only come from the network, where nothing listens (port 9 of localhost).
UNFETCHABLE_DEB = {"deb": "http://127.0.0.1:9/pre_1.0_amd64.deb", "sha256": "0" * 64}


def unfetchable_recipe(*, source: dict | None = None, image: dict | None = None,
                       **sections: Any) -> dict:
    """A sysext "pre" whose one source (``UNFETCHABLE_DEB`` unless given) cannot be fetched:
    for the checks that must refuse a build before anything is fetched."""
    return recipe_dict("pre", kind="sysext", target={**DEBIAN_12, "architecture": "x86-64"},
                       sources=[source or UNFETCHABLE_DEB],
                       image={"source_date_epoch": EPOCH, **(image or {})}, **sections)


def source(path: str | os.PathLike) -> dict:
    """``{"deb": path}`` or ``{"rpm": path}`` by the file's suffix."""
    kind = "rpm" if os.fspath(path).endswith(".rpm") else "deb"
    return {kind: os.fspath(path)}


def write_recipe_dict(directory: Path, spec: dict[str, Any], name: str = "recipe.toml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(toml_text(spec))
    return path


# --- running the CLI --------------------------------------------------------------------------

@dataclass
class CliResult:
    """What one run of the CLI gave: its exit code, its output, and (for ``--json``) the
    parsed object."""

    code: int
    stdout: str
    stderr: str

    @property
    def returncode(self) -> int:  # the name subprocess.CompletedProcess uses
        return self.code

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)

    @property
    def images(self) -> list[dict]:
        return self.json["images"]

    @property
    def image(self) -> dict:
        """The one image a single-image build wrote (fails when there are more)."""
        [image] = self.images
        return image

    @property
    def image_path(self) -> Path:
        return Path(self.image["image"])

    def manifest(self, image: dict | None = None) -> dict:
        return json.loads(Path((image or self.image)["manifest"]).read_text())

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None,
            umask: int | None = None, in_process: bool = False) -> CliResult:
    """``python -m pipeline ARGS`` as a user runs it: a separate process with a real exit code
    (SOURCE_DATE_EPOCH removed from the environment), or, ``in_process``, ``cli.main`` in this
    process with its output captured (no env, umask or cwd then)."""
    if in_process:
        if env or umask is not None or cwd is not None:
            raise ValueError("in_process runs take no env, umask or cwd")
        return _run_in_process(list(args))
    preexec = (lambda: os.umask(umask)) if umask is not None else None
    proc = subprocess.run(cli_argv(*args), cwd=cwd or REPO, env=cli_env(env),
                          capture_output=True, text=True, preexec_fn=preexec)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def cli_argv(*args: str | os.PathLike) -> list[str]:
    """``python -m pipeline ARGS`` with this interpreter, for tests that start the CLI
    themselves (to kill it, or inside a namespace); run it in :func:`cli_env`."""
    return [sys.executable, "-m", "pipeline", *map(os.fspath, args)]


def cli_env(extra: dict | None = None) -> dict[str, str]:
    """The environment the CLI runs in: ours, the checkout on PYTHONPATH, no
    SOURCE_DATE_EPOCH (a test sets it when it means it), then ``extra``."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("SOURCE_DATE_EPOCH", None)
    env.update(extra or {})
    return env


def _run_in_process(argv: list[str]) -> CliResult:
    from pipeline.commands import cli

    out, err = io.StringIO(), io.StringIO()
    handler = signal.getsignal(signal.SIGTERM)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(argv)
            except SystemExit as exc:  # argparse's --help and usage errors
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        signal.signal(signal.SIGTERM, handler)
    return CliResult(code, out.getvalue(), err.getvalue())


def build_cli(recipe: Path, out: Path, *args: str, cache_dir: Path | None = None,
              json_out: bool = True, expect: int | None = 0, **run: Any) -> CliResult:
    """``build RECIPE -o OUT [--cache-dir DIR] [--json] ARGS``; asserts the exit code is
    ``expect`` (0 unless told; None: any) and returns the :class:`CliResult`. ``run`` goes to
    :func:`run_cli` (cwd, env, umask, in_process)."""
    argv = ["build", os.fspath(recipe), "-o", os.fspath(out)]
    if cache_dir is not None:
        argv += ["--cache-dir", os.fspath(cache_dir)]
    if json_out:
        argv.append("--json")
    result = run_cli(*argv, *args, **run)
    if expect is not None:
        assert result.code == expect, result.stderr
    return result


def build_recipe(directory: Path, spec: dict[str, Any], *args: str, **kw: Any) -> CliResult:
    """``spec`` written to ``directory/recipe.toml`` and built into ``directory/out``
    (:func:`build_cli`'s keywords apply)."""
    return build_cli(write_recipe_dict(directory, spec), directory / "out", *args, **kw)


def signing_keys(directory: Path, name: str = "k") -> tuple[Path, Path]:
    """``keys generate``: a fresh key and certificate ``directory/NAME.key`` and ``.crt``."""
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    result = run_cli("keys", "generate", "--key", os.fspath(key), "--cert", os.fspath(cert))
    assert result.code == 0, result.stderr
    return key, cert


def on_a_terminal(*args: str, env: dict, stream: str = "stdout", expect: int) -> bytes:
    """The CLI run with ``stream`` (stdout or stderr) on a real pseudo-terminal (the other one
    to /dev/null), TERM=xterm and ``env`` (a None value removes the variable): what it wrote
    there; asserts the exit code is ``expect``."""
    import pty

    master, slave = pty.openpty()
    full = {**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm", **env}
    full = {k: v for k, v in full.items() if v is not None}
    streams = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, stream: slave}
    proc = subprocess.run(cli_argv(*args), env=full, cwd=REPO, **streams)
    os.close(slave)
    out = b""
    try:
        while chunk := os.read(master, 4096):
            out += chunk
    except OSError:  # EIO: the terminal's other side is closed
        pass
    os.close(master)
    assert proc.returncode == expect
    return out


def subcommands(parser: argparse.ArgumentParser, prefix: tuple = ()):
    """Every (sub)command of ``parser``, depth first: (its words, its parser)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from subcommands(sub, (*prefix, name))
