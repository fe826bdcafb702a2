"""Issue 16 §8: colour for the words a person must not miss (error, severe) on a terminal only,
honouring NO_COLOR: doctor's findings too, not only the error: line."""

from __future__ import annotations

from conftest import run_cli
from recipes_kit import on_a_terminal


def test_doctor_colours_its_errors_on_a_terminal_only(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text("VERSION_ID=12\n")  # no ID: an error finding
    args = ("doctor", "--root", str(root), "--systemd", "252")
    coloured = on_a_terminal(*args, env={"NO_COLOR": None}, expect=3)
    assert b"\x1b[1;31merror  \x1b[0m host.no-id:" in coloured, coloured
    plain = on_a_terminal(*args, env={"NO_COLOR": "1"}, expect=3)
    assert b"error   host.no-id:" in plain and b"\x1b" not in plain
    piped = run_cli(*args)
    assert "error   host.no-id:" in piped.stdout and "\x1b" not in piped.stdout
