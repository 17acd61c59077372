"""The public surface is exactly ``tokenward.__all__`` (as httpx pins its own).

Changing the public API must be a deliberate edit of this list, not a side effect.
"""

from __future__ import annotations

import inspect
import types

import tokenward

EXPECTED = [
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


def test_all_is_pinned() -> None:
    """``__all__`` lists exactly the expected names, sorted."""
    assert tokenward.__all__ == EXPECTED
    assert sorted(tokenward.__all__) == tokenward.__all__


def test_every_exported_name_exists() -> None:
    """Each name in ``__all__`` is importable from the package root."""
    for name in tokenward.__all__:
        assert hasattr(tokenward, name), name


def test_every_public_attribute_is_exported() -> None:
    """Nothing public hangs off the package root without being in ``__all__``."""
    public = {
        name
        for name, value in vars(tokenward).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public <= set(tokenward.__all__)


def test_exported_objects_belong_to_tokenward_and_are_documented() -> None:
    """Exports are Tokenward's own classes and functions, each with a docstring."""
    for name in tokenward.__all__:
        if name == "__version__":
            continue
        obj = getattr(tokenward, name)
        assert obj.__module__.startswith("tokenward."), name
        assert inspect.getdoc(obj), f"{name} has no docstring"


def test_errors_share_one_root() -> None:
    """Every exported exception derives from TokenwardError and knows its slug and status."""
    for name in tokenward.__all__:
        obj = getattr(tokenward, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, tokenward.TokenwardError), name
            assert isinstance(obj.slug, str), name
            assert isinstance(obj.status, int), name
