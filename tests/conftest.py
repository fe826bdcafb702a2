"""Session fixtures: real packages built once, a shared package cache, and the CLI runner."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import recipes_kit
from pkgfactory import build_deb, build_rpm, config, file, ghost, hardlink, symlink
from prereq import require_tool
from unprivileged import UnprivilegedEnv

REPO = recipes_kit.REPO

HELLO = b"#!/bin/sh\necho hello from the extension\n"

#: A deb with every kind of entry the pipeline must carry or drop.
DEB_FILES = [
    file("/usr/bin/hello", HELLO, 0o755),
    symlink("/usr/bin/hello-link", "hello"),
    hardlink("/usr/bin/hello-hard", "/usr/bin/hello"),
    file("/usr/bin/suid-tool", b"#!/bin/sh\nid\n", 0o4755),
    file("/lib/x86_64-linux-gnu/libhello.so.1", b"\x7fELF not really", 0o644),
    config("/etc/hello.conf", b"greeting=hi\n"),
    file("/usr/share/doc/hello/README", b"docs\n"),
    file("/opt/hello/data.txt", b"opt data\n"),
]

#: An rpm with a file capability, an owner by name and a %ghost file.
RPM_FILES = [
    file("/usr/bin/rping", b"#!/bin/sh\necho pong\n", 0o755, caps="cap_net_raw=ep"),
    file("/usr/share/rtools/owned", b"owned\n", 0o640, owner=("daemon", "daemon")),
    symlink("/usr/bin/rping-alias", "rping"),
    ghost("/var/log/rtools.log"),
]


def package_dir(tmp_path_factory, name: str) -> Path:
    """A new directory for packages a fixture makes, once dpkg-deb and rpmbuild are known to
    be there."""
    require_tool("dpkg-deb", "dpkg")
    require_tool("rpmbuild", "rpm")
    return tmp_path_factory.mktemp(name)


@pytest.fixture(scope="session")
def packages(tmp_path_factory) -> dict[str, Path]:
    out = package_dir(tmp_path_factory, "packages")
    return {
        "deb": build_deb(out, "hello-tools", "1.0-1", DEB_FILES, compression="xz"),
        "deb-zstd": build_deb(out, "hello-zstd", "1.0-1", [file("/usr/bin/z", b"z\n", 0o755)],
                              compression="zstd"),
        "rpm": build_rpm(out, "rtools", "2.0", RPM_FILES, compression="zstd"),
    }


@pytest.fixture(scope="session")
def unprivileged() -> UnprivilegedEnv:
    """A world-readable interpreter and copy of the project, to run the CLI as another user
    (``unprivileged.run_cli("nobody", "build", ...)``); see tests/unprivileged.py."""
    import unprivileged as module

    return module.shared_env()


@pytest.fixture(scope="session")
def rsa_signer(tmp_path_factory):
    """A signing key and certificate (RSA-2048, CN=test release) for the image tests."""
    from test_ddi import new_signer

    return new_signer(tmp_path_factory.mktemp("rsa"), "test release")


@pytest.fixture(scope="session")
def other_signer(tmp_path_factory):
    """A second signer (CN=someone else): the certificate an image was not signed with."""
    from test_ddi import new_signer

    return new_signer(tmp_path_factory.mktemp("other"), "someone else")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def write_recipe(directory: Path, body: str, name: str = "recipe.toml") -> Path:
    """A recipe from its literal TOML text (for tests whose point is the text); a recipe built
    from a dict goes through ``make_recipe`` / ``recipes_kit.write_recipe_dict``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(body)
    return path


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None,
            umask: int | None = None, in_process: bool = False) -> recipes_kit.CliResult:
    """Run ``python -m pipeline ARGS`` as a user would (a separate process, real exit code);
    see recipes_kit.run_cli."""
    return recipes_kit.run_cli(*args, cwd=cwd, env=env, umask=umask, in_process=in_process)


@pytest.fixture
def make_recipe(tmp_path) -> Callable[..., Path]:
    """``make_recipe(spec, directory=None, name="recipe.toml")``: the dict ``spec`` (see
    ``recipes_kit.recipe_dict``) written as TOML under the test's tmp_path; returns the path."""

    def make(spec: dict, directory: Path | None = None, name: str = "recipe.toml") -> Path:
        return recipes_kit.write_recipe_dict(directory or tmp_path / "recipe", spec, name)

    return make


# --- the `root` marker, kept true -----------------------------------------------------------
# A test needs root when it, a fixture it uses, or a helper either calls (followed through the
# modules of tests/) calls prereq.require_root, os.chown, or runs unshare/setpriv/losetup.
# Such tests get the `root` marker at collection (so `-m "not root"` selects exactly what runs
# without root), and prereq.require_root fails a test that reached it without the marker.

_ROOT_CALLS = {("prereq", "require_root"), ("os", "chown")}
_ROOT_COMMANDS = {"unshare", "setpriv", "losetup"}
_ROOT_FIXTURES = {"unprivileged"}


class _RootAnalysis:
    def __init__(self) -> None:
        self.modules: dict[str, tuple[dict, dict] | None] = {}
        self.memo: dict[tuple[str, str], bool] = {}

    def _module(self, name: str):
        import ast

        if name not in self.modules:
            path = Path(__file__).parent / f"{name}.py"
            if not path.is_file():
                self.modules[name] = None
            else:
                tree = ast.parse(path.read_text())
                defs = {n.name: n for n in ast.walk(tree)
                        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
                imports: dict[str, tuple[str, str | None]] = {}
                for node in ast.walk(tree):  # imports inside functions count too
                    if isinstance(node, ast.ImportFrom) and node.module:
                        for alias in node.names:
                            imports[alias.asname or alias.name] = (node.module, alias.name)
                    elif isinstance(node, ast.Import):
                        for alias in node.names:
                            imports[alias.asname or alias.name] = (alias.name, None)
                self.modules[name] = (defs, imports)
        return self.modules[name]

    def needs(self, module: str, function: str) -> bool:
        key = (module, function)
        if key in _ROOT_CALLS:
            return True
        if key in self.memo:
            return self.memo[key]
        self.memo[key] = False  # cycles: assume no until shown otherwise
        found = self._module(module)
        if found is None or function not in found[0]:
            return False
        self.memo[key] = self._body_needs(module, found, found[0][function])
        return self.memo[key]

    def _body_needs(self, module: str, found, node) -> bool:
        import ast

        defs, imports = found
        for sub in ast.walk(node):
            if isinstance(sub, ast.Constant) and sub.value in _ROOT_COMMANDS:
                return True
            if not isinstance(sub, ast.Call):
                continue
            func = sub.func
            if isinstance(func, ast.Name):
                name = func.id
                if name in defs and defs[name] is not node and self.needs(module, name):
                    return True
                if name in imports and imports[name][1] is not None and \
                        self.needs(imports[name][0], imports[name][1]):
                    return True
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                target = imports.get(func.value.id, (func.value.id, None))
                if target[1] is None and self.needs(target[0], func.attr):
                    return True
        return False

    def item_needs(self, item) -> bool:
        function = getattr(item, "function", None)
        if function is None:
            return False
        if self.needs(function.__module__, function.__name__):
            return True
        info = getattr(item, "_fixtureinfo", None)
        for name in getattr(item, "fixturenames", ()):
            if name in _ROOT_FIXTURES:
                return True
            for fixturedef in (info.name2fixturedefs.get(name, ()) if info else ()):
                func = getattr(fixturedef, "func", None)
                if func is not None and self.needs(func.__module__, func.__name__):
                    return True
        return False


def pytest_collection_modifyitems(config, items):
    analysis = _RootAnalysis()
    for item in items:
        if item.get_closest_marker("root") is None and analysis.item_needs(item):
            item.add_marker(pytest.mark.root)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    import prereq

    prereq.CURRENT_ITEM = item


def pytest_runtest_teardown(item):
    import prereq

    prereq.CURRENT_ITEM = None
