"""Configuration: one typed, immutable object, validated once at start-up.

Every field is read from ``TOKENWARD_<NAME>`` in the environment or an optional ``.env``
file. Bad configuration raises :class:`~tokenward.errors.ConfigError` with one line that names
the variable; the CLI prints that line and exits. No secret has a built-in default: signing
keys are generated into the data directory or read from ``TOKENWARD_SIGNING_KEYS``.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from tokenward.errors import ConfigError

__all__ = ["ENV_PREFIX", "Settings", "load_settings"]

ENV_PREFIX = "TOKENWARD_"

#: Redis URL schemes we accept. ``redis+sentinel://`` and ``redis+cluster://`` are ours:
#: redis-py has no URL form for either.
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")

#: OWASP Password Storage Cheat Sheet (2025): argon2id, m=19 MiB, t=2, p=1 is the minimum.
OWASP_ARGON2_MEMORY_KIB = 19_456
OWASP_ARGON2_TIME_COST = 2
OWASP_ARGON2_PARALLELISM = 1

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})

Csv = Annotated[tuple[str, ...], NoDecode]


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class Settings(BaseSettings):
    """Every setting of a Tokenward deployment. Frozen; build it with :func:`load_settings`.

    Lifetimes are in seconds and must be positive: there is no "forever".
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        frozen=True,
        extra="ignore",
        case_sensitive=False,
    )

    data_dir: Path = Path("./.tokenward")
    redis_url: str | None = None
    database_url: str | None = None
    issuer: str | None = None
    audience: str = Field(default="tokenward", min_length=1)
    access_ttl: int = Field(default=600, gt=0)
    session_idle_ttl: int = Field(default=2_592_000, gt=0)
    session_max_ttl: int = Field(default=7_776_000, gt=0)
    refresh_grace: int = Field(default=10, ge=0, le=300)
    refresh_rate_limit: int = Field(default=30, gt=0)
    refresh_rate_window: int = Field(default=60, gt=0)
    cookie_secure: bool = True
    allowed_origins: Csv = ()
    signing_keys: Path | None = None
    signing_alg: Literal["EdDSA", "ES256"] = "EdDSA"
    leeway: int = Field(default=30, ge=0, le=300)
    password_min_length: int = Field(default=12, ge=8, le=64)
    trusted_proxies: Csv = ()
    max_sessions: int = Field(default=100, gt=0)
    transparent_refresh: bool = False
    argon2_memory_kib: int = Field(default=OWASP_ARGON2_MEMORY_KIB, ge=OWASP_ARGON2_MEMORY_KIB)
    argon2_time_cost: int = Field(default=OWASP_ARGON2_TIME_COST, ge=OWASP_ARGON2_TIME_COST)
    argon2_parallelism: int = Field(default=OWASP_ARGON2_PARALLELISM, ge=1, le=16)
    backend_timeout: float = Field(default=2.0, gt=0, le=60)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    _split = field_validator("allowed_origins", "trusted_proxies", mode="before")(_split_csv)

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in REDIS_SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(REDIS_SCHEMES)}")
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError("unix:// URL needs a socket path")
        elif not parts.hostname:
            raise ValueError("URL needs a host")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError("not a database URL") from None
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+asyncpg")
        elif url.drivername == "sqlite":
            url = url.set(drivername="sqlite+aiosqlite")
        if url.drivername not in ("postgresql+asyncpg", "sqlite+aiosqlite"):
            raise ValueError("driver must be postgresql+asyncpg or sqlite+aiosqlite")
        return url.render_as_string(hide_password=False)

    @field_validator("issuer")
    @classmethod
    def _check_issuer(cls, value: str | None) -> str | None:
        if value is None:
            return None
        _origin_of(value)
        return value.rstrip("/")

    @field_validator("allowed_origins")
    @classmethod
    def _check_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_origin_of(v) for v in value)

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            ipaddress.ip_network(item, strict=False)
        return value

    def resolved(self, *, host: str, port: int) -> Settings:
        """Fill what depends on where the server listens: the issuer and allowed origins."""
        issuer = self.issuer or f"http://{host}:{port}"
        origins = self.allowed_origins or (_origin_of(issuer),)
        if not self.allowed_origins and self.issuer is None and host in _LOOPBACK:
            # A browser may call a local server by any loopback name; all are this server.
            origins = tuple(f"http://{name}:{port}" for name in ("localhost", "127.0.0.1", "[::1]"))
        return self.model_copy(update={"issuer": issuer, "allowed_origins": origins})

    @property
    def effective_issuer(self) -> str:
        """The ``iss`` claim; :meth:`resolved` must have run when ``issuer`` was unset."""
        if self.issuer is None:
            raise ConfigError("TOKENWARD_ISSUER: unresolved; call Settings.resolved() first")
        return self.issuer


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL")
    return f"{parts.scheme}://{parts.netloc}".lower()


def _unknown_variables(env: dict[str, str]) -> list[str]:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    return sorted(k for k in env if k.upper().startswith(ENV_PREFIX) and k.upper() not in known)


def _dotenv_keys(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    return {k: v or "" for k, v in dotenv_values(path).items()}


def load_settings(env: dict[str, str] | None = None, *, env_file: Path | None = None) -> Settings:
    """Read and validate the configuration.

    Args:
        env: the variables to read; ``os.environ`` when omitted.
        env_file: the ``.env`` file; ``./.env`` when omitted.

    Raises:
        ConfigError: one line naming the first bad or unknown variable.
    """
    source = dict(os.environ if env is None else env)
    dotenv_path = env_file or Path(".env")
    merged = {**_dotenv_keys(dotenv_path), **source}
    unknown = _unknown_variables(merged)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown setting (check the spelling)")
    values: dict[str, Any] = {
        k[len(ENV_PREFIX) :].lower(): v
        for k, v in merged.items()
        if k.upper().startswith(ENV_PREFIX)
    }
    try:
        settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "?"
        message = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{ENV_PREFIX}{field.upper()}: {message}") from None
    if settings.session_idle_ttl > settings.session_max_ttl:
        raise ConfigError("TOKENWARD_SESSION_IDLE_TTL: must not exceed TOKENWARD_SESSION_MAX_TTL")
    if settings.issuer is not None and not settings.allowed_origins:
        settings = settings.model_copy(update={"allowed_origins": (_origin_of(settings.issuer),)})
    return settings
