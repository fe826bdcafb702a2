"""A build whose packages are all cached imports nothing it does not use (issue 14, fixed costs
before extraction): the HTTP client (http.client, ssl, urllib.request, email.*) is imported by a
download only; rpm metadata's XML parser and the solver by ``lock`` only. Checked in a fresh
interpreter, on the modules a build imports and on a real build of a local package."""

from __future__ import annotations

import json
import subprocess
import sys

from prereq import require_tool
from recipes_kit import REPO, cli_env, hello_recipe, write_recipe_dict

#: what only a download (sources/fetch.py http_download) or `lock` (rpm metadata) needs
NOT_FOR_A_CACHED_BUILD = ("http.client", "ssl", "urllib.request", "email.utils",
                          "email.parser", "xml.etree.ElementTree", "pipeline.sources.solver")


def _modules_after(code: str) -> set[str]:
    probe = (f"import json, sys\n{code}\n"
             "print(json.dumps(sorted(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=REPO, env=cli_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_the_build_modules_import_no_http_client():
    loaded = _modules_after(
        "import pipeline.commands.cli, pipeline.commands.build, pipeline.stages.build\n"
        "import pipeline.sources.fetch, pipeline.sources.lock, pipeline.sources.metadata")
    assert "pipeline.sources.lock" in loaded  # the probe did import what it names
    assert not loaded & set(NOT_FOR_A_CACHED_BUILD), sorted(loaded & set(NOT_FOR_A_CACHED_BUILD))


def test_a_build_of_a_local_package_imports_no_http_client(packages, tmp_path):
    require_tool("mksquashfs", "squashfs-tools")
    recipe = write_recipe_dict(tmp_path / "r", hello_recipe("squashfs", sources=[packages["deb"]]))
    code = ("from pipeline.commands import cli\n"
            f"code = cli.main(['build', {str(recipe)!r}, '-q', '-o', {str(tmp_path / 'out')!r}, "
            f"'--cache-dir', {str(tmp_path / 'cache')!r}])\n"
            "assert code == 0, code")
    loaded = _modules_after(code)
    assert "pipeline.stages.build" in loaded and (tmp_path / "out" / "hello.raw").is_file()
    assert not loaded & set(NOT_FOR_A_CACHED_BUILD), sorted(loaded & set(NOT_FOR_A_CACHED_BUILD))
