"""Dependency bounds: no release with a known token flaw is admitted, and no needless cap.

* PyJWT 2.13 decodes base64url leniently: 65,536 spellings of one token verified, and each
  was a separate entry of the verified-token cache (+300 MiB per worker). 2.14 is the floor.
* argon2-cffi uses calendar versions: 26 is a year, not an API break, so no upper cap.

The lock files are what the tests, the server scripts and the packaging test install: they
must pin versions inside the bounds, and the environment running the tests must have them.
"""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCKS = sorted((ROOT / "requirements").glob("*.lock"))
PYJWT_FLOOR = Version("2.14")


def _requirements() -> dict[str, Requirement]:
    """The base dependencies and every extra's (argon2-cffi lives in ``server``)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = [*project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        listed.extend(extra)
    parsed = (Requirement(r) for r in listed)
    return {r.name.lower(): r for r in parsed if r.name != "tokenward"}


def _pinned(lock: Path, name: str) -> Version:
    found = re.search(rf"(?im)^{re.escape(name)}==([^\s\\]+)", lock.read_text())
    assert found, f"{name} is not pinned in {lock.name}"
    return Version(found.group(1))


def test_pyjwt_floor_refuses_the_malleable_releases() -> None:
    """pyproject admits no PyJWT below 2.14 (2.13.x included), and nothing from 3 on."""
    spec = _requirements()["pyjwt"].specifier
    assert not spec.contains("2.13.0")
    assert not spec.contains("2.13.9")
    assert spec.contains(str(PYJWT_FLOOR))
    assert not spec.contains("3.0")


def test_argon2_cffi_has_no_calver_cap() -> None:
    """argon2-cffi: the OWASP-capable floor, no upper bound (next year's release installs)."""
    spec = _requirements()["argon2-cffi"].specifier
    assert not spec.contains("23.0")
    for future in ("26.1.0", "27.1.0", "30.1.0"):
        assert spec.contains(future), f"argon2-cffi {future} is refused by {spec}"


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.name)
def test_lock_files_pin_inside_the_bounds(lock: Path) -> None:
    """Every lock pins PyJWT (and, with the server, argon2-cffi) to versions pyproject admits."""
    requirements = _requirements()
    # verifier.lock is the base install (no extra): it has no password hashing.
    names = ("pyjwt",) if lock.name == "verifier.lock" else ("pyjwt", "argon2-cffi")
    for name in names:
        assert requirements[name].specifier.contains(_pinned(lock, name)), (lock.name, name)


def test_installed_pyjwt_is_past_the_floor() -> None:
    assert Version(version("pyjwt")) >= PYJWT_FLOOR
