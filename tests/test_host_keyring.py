"""``mirror = "host"`` on a host whose apt source has no ``Signed-By`` (a minimal or container
Debian: the archive keys are only in /etc/apt/trusted.gpg.d): the Release file is verified with
what apt itself trusts there, and with nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
from repos import gpg_keys  # noqa: F401  (fixture)

from pipeline.errors import InputError
from pipeline.recipe import Repository
from pipeline.sources import debian, metadata

pytestmark = pytest.mark.usefixtures("gpg_keys")


def _apt_etc(tmp_path, signed_by: str | None, trusted: dict[str, bytes]):
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "trusted.gpg.d").mkdir()
    option = f"[signed-by={signed_by}] " if signed_by else ""
    (etc / "sources.list").write_text(f"deb {option}http://127.0.0.1:9/debian bookworm main\n")
    for name, data in trusted.items():
        (etc / "trusted.gpg.d" / name).write_bytes(data)
    return etc


def _repo() -> Repository:
    return Repository(name="bookworm", type="deb", url="host", suite="bookworm")


def _release(tmp_path, key):
    src = tmp_path / "Release"
    src.write_text("Origin: test\nSuite: bookworm\n")
    key.clearsign(src, tmp_path / "InRelease")
    return (tmp_path / "InRelease").read_bytes()


def test_no_signed_by_uses_apt_trusted_keyrings(tmp_path, gpg_keys):  # noqa: F811
    good, evil = gpg_keys["good"], gpg_keys["evil"]
    etc = _apt_etc(tmp_path, None, {"evil.gpg": evil.keyring.read_bytes(),
                                     "good.asc": good.armored.read_bytes(),
                                     "ignored.txt": b"not a keyring"})
    rings = metadata._keyring(_repo(), tmp_path, etc)
    assert [p.name for p in rings] == ["evil.gpg", "good.asc"]
    text = debian.gpg_verify(rings, _release(tmp_path, good), None, "InRelease")
    assert b"Suite: bookworm" in text


def test_a_key_apt_does_not_trust_is_refused(tmp_path, gpg_keys):  # noqa: F811
    etc = _apt_etc(tmp_path, None, {"evil.gpg": gpg_keys["evil"].keyring.read_bytes()})
    rings = metadata._keyring(_repo(), tmp_path, etc)
    with pytest.raises(InputError) as err:
        debian.gpg_verify(rings, _release(tmp_path, gpg_keys["good"]), None, "InRelease")
    assert "trusted.gpg.d/evil.gpg" in str(err.value)


def test_signed_by_wins_over_trusted_gpg_d(tmp_path, gpg_keys):  # noqa: F811
    etc = _apt_etc(tmp_path, "/usr/share/keyrings/x.gpg",
                   {"good.asc": gpg_keys["good"].armored.read_bytes()})
    assert metadata._keyring(_repo(), tmp_path, etc) == Path("/usr/share/keyrings/x.gpg")


def test_nothing_trusted_gives_no_keyring(tmp_path):
    """(load_deb then refuses: 'no keyring to verify the Release file with'.)"""
    etc = _apt_etc(tmp_path, None, {})
    assert metadata._keyring(_repo(), tmp_path, etc) is None


# --- the mirror of a companion suite on a host that lists only its release suite --------------


@pytest.mark.parametrize("suite, uri", [
    ("bookworm", "http://127.0.0.1:9/debian"),
    ("bookworm-updates", "http://127.0.0.1:9/debian"),
    ("bookworm-backports", "http://127.0.0.1:9/debian"),
    ("bookworm-security", "http://127.0.0.1:9/debian-security"),
])
def test_a_minimal_host_derives_its_companion_suites(tmp_path, suite, uri):
    etc = _apt_etc(tmp_path, "/usr/share/keyrings/x.gpg", {})
    assert metadata.host_mirror(suite, etc) == (uri, "/usr/share/keyrings/x.gpg")


def test_a_listed_companion_suite_wins_over_the_derived_one(tmp_path):
    etc = _apt_etc(tmp_path, None, {})
    (etc / "sources.list.d" / "security.list").write_text(
        "deb http://127.0.0.1:8/elsewhere bookworm-security main\n")
    assert metadata.host_mirror("bookworm-security", etc)[0] == "http://127.0.0.1:8/elsewhere"


@pytest.mark.parametrize("suite", ["trixie", "trixie-security", "bookworm-weird"])
def test_an_unrelated_suite_is_still_an_error(tmp_path, suite):
    etc = _apt_etc(tmp_path, None, {})
    with pytest.raises(InputError, match=f"no deb source for suite {suite}"):
        metadata.host_mirror(suite, etc)


@pytest.mark.network
def test_the_derived_security_archive_is_debians(tmp_path):
    """On the host's real mirror: a sources.list with only the release suite (as mmdebstrap
    writes it) gives a bookworm-security whose InRelease the Debian archive keys verify."""
    from prereq import missing

    from pipeline.sources.fetch import Cache

    try:
        uri, signed = metadata.host_mirror("bookworm")
    except InputError as err:
        missing(str(err))
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list").write_text(f"deb {uri} bookworm main\n")
    derived, _ = metadata.host_mirror("bookworm-security", etc)
    raw = metadata._get(f"{derived}/dists/bookworm-security/InRelease", Cache(tmp_path / "c"))
    keyring = Path(signed or "/usr/share/keyrings/debian-archive-keyring.gpg")
    text = debian.gpg_verify(keyring, raw, None, "bookworm-security InRelease")
    assert b"Codename: bookworm-security" in text and b"Label: Debian-Security" in text
