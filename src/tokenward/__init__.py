"""Tokenward: safe-by-default authentication and sessions.

Short-lived JWT access tokens, rotating refresh tokens kept as hashes in Redis, users in SQL,
served over HTTP (``tokenward serve``) or embedded in an ASGI app. The public API is what this
module exports; everything else is private and may change.
"""

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
