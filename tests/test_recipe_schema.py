"""The recipe schema table (pipeline/recipe.py SCHEMA): one test per row and one per error message.

Per row: the documented example loads (in the smallest recipe that can hold it), a value of the
wrong type is refused naming the dotted key, and the reference prints every column. Per message:
every ``fail(...)``/``InputError`` site of recipe.py is reached by a case below (a line tracer
checks it), each case asserting the file, the dotted key and the words — one line, exit class 2.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from conftest import write_recipe

from pipeline import recipe as recipe_mod
from pipeline.errors import INPUT, InputError

BASE = '[extension]\nname = "x"\n[target]\nid = "debian"\n'
REPO = '[[repository]]\ntype = "deb"\nmirror = "host"\nsuite = "bookworm"\n'
SHA = "a" * 64
APT = f'[[source]]\napt = "jq"\nversion = "1.6"\nsha256 = "{SHA}"\n'

#: what a key's example needs around it to load: (text before the key's table, the table's
#: header and companions, text after)
CONTEXT = {
    "image.filesystem": "format = \"ddi\"\n",
    "sign.key": "cert = \"k.crt\"\n", "sign.cert": "key = \"k.key\"\n",
    "sign.passphrase_env": "key = \"k.key\"\ncert = \"k.crt\"\n",
    "sign.passphrase_file": "key = \"k.key\"\ncert = \"k.crt\"\n",
    "image.compression_level": "compression = \"zstd\"\n",
}
AFTER = {  # more tables the key's example needs
    "sign.key": '[image]\nformat = "ddi"\n', "sign.cert": '[image]\nformat = "ddi"\n',
    "sign.passphrase_env": '[image]\nformat = "ddi"\n',
    "sign.passphrase_file": '[image]\nformat = "ddi"\n',
    "target.base": '[[source]]\npackages = ["jq"]\n' + REPO,
}
ENTRY = {  # array/map sections: the entry's other keys
    "source.deb": "", "source.rpm": f'sha256 = "{SHA}"\n', "source.apt": f'version = "1"\n'
    f'sha256 = "{SHA}"\n', "source.packages": "", "source.recommends": 'packages = ["jq"]\n',
    "source.version": f'apt = "jq"\nsha256 = "{SHA}"\n', "source.sha256": 'deb = "a.deb"\n',
    "repository.type": 'mirror = "host"\nsuite = "bookworm"\n',
    "repository.baseurl": 'type = "rpm-md"\n', "repository.gpgkey": 'type = "rpm-md"\n'
    'baseurl = "https://example.invalid/os"\n',
    "files.from": "", "files.content": "", "files.mode": 'content = "x"\n',
}
DEB_REPOSITORY = 'type = "deb"\nmirror = "host"\nsuite = "bookworm"\n'


def _row_text(key: recipe_mod.Key, value: str) -> str:
    section = next(s for s in recipe_mod.SECTIONS if s.name == key.section)
    line = f"{key.name} = {value}\n"
    if section.shape == "array":
        others = ENTRY.get(key.path)
        if others is None and key.section == "repository":
            others = "".join(f"{x}\n" for x in DEB_REPOSITORY.splitlines()
                             if not x.startswith(key.name))
        body = f"[[{key.section}]]\n{others}{line}"
        needs_repo = key.section == "repository" or "packages" in body
        return BASE + body + (REPO if needs_repo and key.section == "source" else "")
    if section.shape == "map":
        return BASE + f'[files."usr/lib/x"]\n{ENTRY.get(key.path, "")}{line}'
    head = BASE if key.section not in ("extension", "target") else ""
    if key.section == "extension":
        text = '[extension]\n' + ('name = "x"\n' if key.name != "name" else "") + line + \
            '[target]\nid = "debian"\n'
    elif key.section == "target":
        text = '[extension]\nname = "x"\n[target]\n' + ('id = "debian"\n' if key.name != "id"
                                                       else "") + line
    else:
        text = head + f"[{key.section}]\n{CONTEXT.get(key.path, '')}{line}"
    return text + AFTER.get(key.path, "")


ROWS = [pytest.param(k, id=k.path) for k in recipe_mod.keys()]


def _prepare(directory: Path) -> None:
    """Files the examples name."""
    (directory / "files").mkdir(parents=True, exist_ok=True)
    (directory / "files/agent.conf").write_text("x\n")
    (directory / "base").mkdir(exist_ok=True)
    (directory / "base/debian-12-minimal.txt").write_text("libc6\n")


@pytest.mark.parametrize("key", ROWS)
def test_row_example_loads(tmp_path, key):
    _prepare(tmp_path)
    recipe = recipe_mod.load(write_recipe(tmp_path, _row_text(key, key.example)))
    assert recipe.name == ("debug-tools" if key.path == "extension.name" else "x")


WRONG = {str: "5", int: '"five"', bool: '"yes"', list: '"one"', dict: '"one"', (int, str): "[1]"}
TYPE_WORDS = {str: "a string", int: "an integer", bool: "a boolean", list: "a list",
              dict: "a table", (int, str): "an integer or string"}


@pytest.mark.parametrize("key", ROWS)
def test_row_wrong_type_names_the_key(tmp_path, key):
    _prepare(tmp_path)
    text = _row_text(key, WRONG[key.type])
    with pytest.raises(InputError) as info:
        recipe_mod.load(write_recipe(tmp_path, text))
    line = info.value.line()
    assert f": {key.name}: " not in line  # always the dotted path, never the bare name
    assert f".{key.name}: must be {TYPE_WORDS[key.type]}, not " in line, line
    assert f"(example: {key.name} = {key.example})" in line
    assert info.value.exit_code == INPUT and "\n" not in line


@pytest.mark.parametrize("key", ROWS)
def test_row_has_every_column(key):
    """Type, default, example and meaning for every key of every section (issue 16 §7)."""
    assert key.doc and key.example and key.type
    reference = recipe_mod.reference_markdown()
    rows = [line for line in reference.splitlines() if line.startswith(f"| `{key.name}` |")]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert any(len(c) == 5 and all(c) and c[3] == f"`{key.example}`" for c in cells), rows


def test_every_section_is_in_the_reference():
    reference = recipe_mod.reference_markdown()
    for section in recipe_mod.SECTIONS:
        assert f"## {section.title}\n" in reference
        assert recipe_mod.keys(section.name), section.name


# --- every error message --------------------------------------------------------------------

ERRORS = [
    # reading
    ("[extension\n", "not valid TOML"),
    ('include = "../elsewhere.toml"\n', "include: must name a .toml recipe in the same directory"),
    ('include = "recipe.toml"\n', "include: recipe.toml includes itself (a cycle)"),
    ('include = "missing.toml"\n', "missing.toml: cannot read recipe: No such file"),
    # sections
    (BASE + "[images]\n", "images: unknown section (allowed: extension, files, filter"),
    ("source = 1\n" + BASE, "source: must be an array of tables (write [[source]] for each"),
    ("repository = 1\n" + BASE, "repository: must be an array of tables (write [[repository]]"),
    ("image = 1\n" + BASE, "image: must be a table"),
    ("files = 1\n" + BASE, "files: must be a table"),
    ("source = [1]\n" + BASE, "source #1: must be a table"),
    ("repository = [1]\n" + BASE, "repository #1: must be a table"),
    (BASE + '[files]\n"usr/x" = "y"\n', "files.'usr/x': must be a table ({ from = "),
    # keys of a table
    (BASE + "colour = 1\n", "target.colour: unknown key (allowed: id, version_id,"),
    ('[extension]\nname = "x"\n', "target.id: missing (example: id = \"debian\")"),
    ('[target]\nid = "debian"\n', "extension.name: missing (example: name = \"debug-tools\")"),
    (BASE.replace('"x"', "5"), "extension.name: must be a string, not integer (example: name"),
    (BASE + '[policy]\nvar = "keep"\n', "policy.var: 'keep' must be one of 'tmpfiles', 'drop'"),
    (BASE + '[owners]\ncolour = 1\n', "owners.colour: unknown key (allowed: users, groups)"),
    (BASE + '[owners]\nusers = "x"\n', "owners.users: must be a table, not string"),
    (BASE + '[owners]\nusers = { daemon = "one" }\n',
     "owners.users.daemon: 'one' must be a numeric id between 0 and 2^32-1"),
    (BASE + '[owners]\ngroups = { adm = -1 }\n', "owners.groups.adm: -1 must be a numeric id"),
    # cross-key rules
    (BASE.replace('"x"\n', '"x"\nkind = "confext"\n') + '[policy]\netc = "drop"\n',
     "policy.etc: applies to sysext and auto recipes only (a confext is all /etc)"),
    (BASE.replace('"x"\n', '"x"\nkind = "sysext"\n') + 'confext_level = "1"\n',
     "target.confext_level: this recipe never makes a confext (systemd never reads"),
    (BASE + '[image]\nfilesystem = "squashfs"\n',
     'image.filesystem: applies to format = "ddi" only'),
    (BASE + '[image]\nformat = "erofs"\ncompression = "zstd"\n',
     "image.compression: 'zstd' is not available for erofs (allowed: lz4hc, lz4, none)"),
    (BASE + '[image]\nformat = "ddi"\nverity = "detached"\n',
     "image.verity: detached verity applies to squashfs and erofs, not ddi (a ddi carries"),
    (BASE + '[sign]\nkey = "k.key"\n', "sign: needs both key and cert"),
    (BASE + '[sign]\nkey = "k.key"\ncert = "k.crt"\n',
     'sign: nothing to sign in a squashfs image without verity (use format = "ddi"'),
    (BASE + '[image]\ncompression = "none"\ncompression_level = 1\n',
     "image.compression_level: has no meaning without compression"),
    (BASE + '[image]\ncompression = "xz"\ncompression_level = 6\n',
     "image.compression_level: squashfs xz takes no level (mksquashfs's xz has -Xbcj"),
    (BASE + '[image]\ncompression = "gzip"\ncompression_level = 15\n',
     "image.compression_level: 15 is out of range for squashfs gzip (allowed: 1-9)"),
    (BASE + '[[source]]\npackages = ["jq"]\n',
     "source: packages sources need at least one [[repository]]"),
    (BASE + 'base = "b.txt"\n', "target.base: only applies to packages sources"),
    # [[source]]
    (BASE + '[[source]]\ndeb = "a.deb"\nfrom = "x"\n',
     "source #1 (deb = \"a.deb\").from: unknown key (allowed: deb, rpm, apt, packages, recommends, version, sha256)"),
    (BASE + '[[source]]\ndeb = "a.deb"\nrpm = "b.rpm"\n',
     "source #1 (deb = \"a.deb\"): needs exactly one of deb, rpm, apt, packages"),
    (BASE + f'[[source]]\nsha256 = "{SHA}"\n',
     "source #1: needs exactly one of deb, rpm, apt, packages"),
    (BASE + '[[source]]\ndeb = 5\n', "source #1.deb: must be a string, not integer"),
    (BASE + '[[source]]\ndeb = "ftp://example.invalid/a.deb"\n',
     "source #1 (deb = \"ftp://example.invalid/a.deb\").deb: 'ftp://example.invalid/a.deb' is not supported: only http(s) URLs and"),
    (BASE + '[[source]]\nrpm = ""\n', "source #1 (rpm = \"\").rpm: '' is empty"),
    (BASE + '[[source]]\ndeb = "a.deb"\nsha256 = "ABC"\n',
     "source #1 (deb = \"a.deb\").sha256: 'ABC' must be 64 lowercase hex digits"),
    (BASE + '[[source]]\ndeb = "https://example.invalid/x.deb"\n',
     "source #1 (deb = \"https://example.invalid/x.deb\").sha256: required for the URL https://example.invalid/x.deb (sha256sum"),
    (BASE + '[[source]]\ndeb = "a.deb"\nversion = "1"\n',
     "source #1 (deb = \"a.deb\").version: only applies to apt sources (the deb file is exact)"),
    (BASE + '[[source]]\napt = "jq"\n',
     "source #1 (apt = \"jq\"): apt source 'jq' needs version and sha256 (apt-cache policy jq shows versions"),
    (BASE + f'[[source]]\napt = "jq"\nsha256 = "{SHA}"\n',
     "source #1 (apt = \"jq\").version: required for apt source 'jq' (apt-cache policy jq"),
    (BASE + '[[source]]\napt = "J Q"\nversion = "1"\n',
     "source #1 (apt = \"J Q\").apt: 'J Q' is not a Debian package name"),
    (BASE + APT + "recommends = true\n",
     "source #1 (apt = \"jq\").recommends: only applies to packages sources"),
    (BASE + '[[source]]\npackages = ["a b"]\n' + REPO,
     "source #1 (packages = [\"a b\"]).packages: ['a b'] is not a non-empty list of package names"),
    (BASE + '[[source]]\npackages = []\n' + REPO, "source #1 (packages = []).packages: [] is not a non-empty"),
    (BASE + f'[[source]]\npackages = ["jq"]\nsha256 = "{SHA}"\n' + REPO,
     "source #1 (packages = [\"jq\"]).sha256: does not apply to packages sources (the lock pins them)"),
    (BASE + '[[source]]\npackages = ["jq"]\nrecommends = "yes"\n' + REPO,
     "source #1 (packages = [\"jq\"]).recommends: must be a boolean, not string"),
    (BASE + APT + '[[source]]\ndeb = "a.deb"\nsha256 = "x"\n',
     "source #2 (deb = \"a.deb\").sha256: 'x' must be 64 lowercase hex digits"),
    # [[repository]]
    (BASE + '[[source]]\npackages = ["a"]\n[[repository]]\nmirror = "host"\n',
     'repository #1.type: missing (example: type = "deb")'),
    (BASE + '[[repository]]\ntype = "yum"\n',
     "repository #1 (type = \"yum\").type: 'yum' must be one of 'deb', 'rpm-md'"),
    (BASE + '[[repository]]\ntype = "deb"\ncolour = 1\n', "repository #1 (type = \"deb\").colour: unknown key"),
    (BASE + '[[repository]]\ntype = "deb"\nsuite = "x"\n',
     'repository #1 (suite = "x").mirror: missing (example: mirror = "host")'),
    (BASE + '[[repository]]\ntype = "deb"\nmirror = "host"\n',
     'repository #1 (type = "deb").suite: missing (example: suite = "bookworm")'),
    (BASE + '[[repository]]\ntype = "deb"\n', "repository #1 (type = \"deb\"): a deb repository needs mirror and suite"),
    (BASE + '[[repository]]\ntype = "rpm-md"\n',
     "repository #1 (type = \"rpm-md\").baseurl: missing (example: baseurl = "),
    (BASE + '[[repository]]\ntype = "deb"\nmirror = "ftp://x"\nsuite = "x"\n',
     "repository #1 (suite = \"x\").mirror: 'ftp://x' is not host, an http(s) URL or $ENV_VAR"),
    (BASE + '[[repository]]\ntype = "rpm-md"\nbaseurl = "host"\n',
     "repository #1 (baseurl = \"host\").baseurl: 'host' is not an http(s) URL or $ENV_VAR"),
    (BASE + '[[repository]]\ntype = "rpm-md"\nbaseurl = "$M"\nsuite = "x"\n',
     "repository #1 (suite = \"x\").suite: does not apply to rpm-md repositories"),
    (BASE + REPO.replace("[[repository]]\n", "[[repository]]\ncomponents = []\n"),
     "repository #1 (suite = \"bookworm\").components: [] must be a non-empty list of strings"),
    (BASE + REPO.replace("[[repository]]\n", "[[repository]]\nallow_unsigned = 1\n"),
     "repository #1 (suite = \"bookworm\").allow_unsigned: must be a boolean, not integer"),
    (BASE + REPO.replace("[[repository]]\n", '[[repository]]\nname = "a b"\n'),
     "repository #1 (name = \"a b\").name: 'a b' must be letters, digits and ._+- only"),
    (BASE + REPO.replace('"bookworm"', '"book worm"'),
     "repository #1 (suite = \"book worm\").name: 'book worm' must be letters, digits and ._+- only, starting with a "
     "letter or digit (set name explicitly)"),
    (BASE + REPO + REPO, "repository #2 (suite = \"bookworm\").name: 'bookworm' is used twice (give each repository"),
    # [files]
    (BASE + '[files]\n"usr/x" = { content = "a", colour = 1 }\n',
     "files.'usr/x'.colour: unknown key (allowed: from, content, mode)"),
    (BASE + '[files]\n"usr/x" = { mode = "0644" }\n',
     "files.'usr/x': needs exactly one of from, content"),
    (BASE + '[files]\n"usr/x" = { content = "a", from = "b" }\n',
     "files.'usr/x': needs exactly one of from, content"),
    (BASE + '[files]\n"usr/x" = { content = 5 }\n',
     "files.'usr/x'.content: must be a string, not integer"),
    (BASE + '[files]\n"usr/x" = { from = 5 }\n', "files.'usr/x'.from: must be a string, not"),
    (BASE + '[files]\n"usr/x" = { content = "a", mode = "rw" }\n',
     "files.'usr/x'.mode: 'rw' is not an octal mode string (e.g. \"0755\")"),
    (BASE + '[files]\n"usr/../x" = { content = "a" }\n',
     "files.'usr/../x': must be a relative path inside the image, without . or .. parts"),
    (BASE + '[files]\n"/" = { content = "a" }\n', "files.'/': must be a relative path"),
    (BASE + '[files]\n"usr/x" = { from = "nothere" }\n', "/nothere is not a file"),
    (BASE + '[files]\n"etc/x" = { from = "/etc/hostname" }\n',
     "files.'etc/x'.from: '/etc/hostname' is outside the recipe's directory"),
]


def _error(tmp_path: Path, text: str) -> InputError:
    path = write_recipe(tmp_path, text)
    with pytest.raises(InputError) as info:
        recipe_mod.load(path)
    return info.value


@pytest.mark.parametrize("text, expected", ERRORS, ids=[e[1][:60] for e in ERRORS])
def test_error_message(tmp_path, text, expected):
    error = _error(tmp_path, text)
    line = error.line()
    assert expected in line, line
    assert str(tmp_path) in line and "\n" not in line and error.exit_code == INPUT


def _fail_sites() -> set[int]:
    """Lines of recipe.py that report a recipe error: a call of ``fail`` or a ``raise
    InputError``, outside ``fail`` itself."""
    tree = ast.parse(Path(recipe_mod.__file__).read_text())
    sites = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and \
                isinstance(node.value.func, ast.Name) and node.value.func.id == "fail":
            sites.add(node.lineno)
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and \
                getattr(node.exc.func, "id", None) == "InputError":
            sites.add(node.lineno)
    inner = {n.lineno for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and
             f.name == "fail" for n in ast.walk(f) if hasattr(n, "lineno")}
    return sites - inner


def test_every_error_site_has_a_case(tmp_path):
    """A line tracer records which lines of recipe.py the ERRORS cases run: every place that
    reports an error must be among them (a new message needs a case)."""
    source = recipe_mod.__file__
    ran: set[int] = set()

    def local(frame, event, arg):
        if event == "line":
            ran.add(frame.f_lineno)
        return local

    def tracer(frame, event, arg):
        return local if frame.f_code.co_filename == source else None

    old = sys.gettrace()
    sys.settrace(tracer)
    try:
        for index, (text, _expected) in enumerate(ERRORS):
            with pytest.raises(InputError):
                recipe_mod.load(write_recipe(tmp_path / str(index), text))
    finally:
        sys.settrace(old)
    sites = _fail_sites()
    assert len(sites) >= 35  # the parser is where they are
    missing = sorted(sites - ran)
    lines = Path(source).read_text().splitlines()
    assert not missing, [f"recipe.py:{n}: {lines[n - 1].strip()}" for n in missing]


def test_sources_are_named_one_based_with_their_key(tmp_path):
    """Issue 16 §8: not the 0-based ``source[2]`` but ``source #3 (apt = "jq")``."""
    path = tmp_path / "recipe.toml"
    path.write_text(BASE + '[[source]]\ndeb = "a.deb"\n[[source]]\ndeb = "b.deb"\n'
                    '[[source]]\napt = "jq"\nsha256 = "' + "0" * 64 + '"\n')
    with pytest.raises(InputError) as exc:
        recipe_mod.load(path)
    assert exc.value.line() == (f'{path}: source #3 (apt = "jq").version: required for apt '
                                "source 'jq' (apt-cache policy jq shows versions; the lock "
                                "command pins them)")
    assert "source[" not in exc.value.line()


def test_json_error_names_the_source_entry_as_its_field(tmp_path):
    """--json's error splits the 1-based entry name like any dotted key: subject the file,
    field the entry and key."""
    path = tmp_path / "recipe.toml"
    path.write_text(BASE + '[[source]]\napt = "jq"\nsha256 = "' + "0" * 64 + '"\n')
    with pytest.raises(InputError) as exc:
        recipe_mod.load(path)
    error = exc.value.as_json()
    assert (error["subject"], error["field"]) == (str(path), 'source #1 (apt = "jq").version')
