"""Configuration: one typed, immutable object, validated once at start-up.

Every field is read from ``TOKENWARD_<NAME>`` in the environment or an optional ``.env``
file. Bad configuration raises :class:`~tokenward.errors.ConfigError` with one line that names
the variable; the CLI prints that line and exits. No secret has a built-in default: signing
keys are generated into the data directory or read from ``TOKENWARD_SIGNING_KEYS``.

``repr()`` and ``str()`` of :class:`Settings` mask the password of every ``*_url`` field
(:func:`mask_url_password`): settings end up in tracebacks, debug logs and error reports.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from tokenward.errors import ConfigError

__all__ = ["ENV_PREFIX", "Settings", "load_settings", "mask_url_password"]

ENV_PREFIX = "TOKENWARD_"

#: Redis URL schemes we accept. The ``+sentinel`` and ``+cluster`` forms are ours (redis-py
#: has no URL form for either); see :mod:`tokenward.stores.redis_client`.
REDIS_SCHEMES = (
    "redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel", "redis+cluster",
    "rediss+cluster",
)  # fmt: skip

#: OWASP Password Storage Cheat Sheet (2025): argon2id, m=19 MiB, t=2, p=1 is the minimum.
OWASP_ARGON2_MEMORY_KIB = 19_456
OWASP_ARGON2_TIME_COST = 2
OWASP_ARGON2_PARALLELISM = 1

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})

Csv = Annotated[tuple[str, ...], NoDecode]
#: A service name (``aud``): a word or a URL, nothing that could smuggle a separator.
_AUDIENCE = re.compile(r"[A-Za-z0-9._:/-]{1,128}")

MASK = "***"
#: Query parameters that carry a password in database and Redis URLs.
_SECRET_QUERY_KEYS = frozenset(
    {"password", "pass", "pwd", "passwd", "sslpassword", "sentinel_password"}
)


def mask_url_password(url: str) -> str:
    """``url`` with the password of its userinfo and of ``password=`` query parameters
    replaced by ``***``; the rest (user, hosts, ports, path) is kept for debugging.

    ``redis://:s3cret@cache:6379/0`` -> ``redis://:***@cache:6379/0``. A userinfo without a
    ``:`` is a user name (redis-py, libpq) and is kept.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    # The last "@" before the query ends the userinfo, even if the password holds a raw
    # "/" or "@" (invalid, but written by hand often enough).
    head, question, query = rest.partition("?")
    userinfo, at, after = head.rpartition("@")
    if at and ":" in userinfo:
        head = f"{userinfo.partition(':')[0]}:{MASK}@{after}"
    if question:
        pairs = []
        for pair in query.split("&"):
            key, eq, _ = pair.partition("=")
            pairs.append(f"{key}={MASK}" if eq and key.lower() in _SECRET_QUERY_KEYS else pair)
        query = "&".join(pairs)
    return f"{scheme}{sep}{head}{question}{query}"


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

    data_dir: Path = Field(
        default=Path("./.tokenward"),
        description="Where the embedded Redis (socket, append-only file), the SQLite database "
        "and generated signing keys live. Created with mode 0700.",
    )
    redis_url: str | None = Field(
        default=None,
        description="Session store: `redis://`, `rediss://` (TLS), `unix://`, "
        "`redis+sentinel://[user:pass@]host:port,host:port/<service>[/db]"
        "[?sentinel_username=..&sentinel_password=..]` or "
        "`redis+cluster://[user:pass@]host:port,host:port` (seed nodes); `rediss+sentinel` "
        "and `rediss+cluster` for TLS (query: `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`). "
        "Unset: an embedded Valkey in the data directory (development only).",
    )
    redis_wait: str = Field(
        default="auto",
        description="Durability of session writes (logins, refreshes, logouts, re-keys): "
        "`<replicas>:<timeout ms>` sends `WAIT` after each and answers 503 unless that many "
        "replicas confirmed it in time; `<replicas>:<timeout ms>:aof` sends `WAITAOF 1 "
        "<replicas>` (the write is also fsynced locally; Redis/Valkey >= 7.2); `off` waits "
        "for nothing. `auto`: `1:500` on Sentinel, `off` elsewhere (not supported on "
        "Cluster). What each can lose: docs/deployment.md.",
    )
    database_url: str | None = Field(
        default=None,
        description="User database, an SQLAlchemy async URL: `postgresql+asyncpg://...` in "
        "production (`postgresql://` is accepted) or `sqlite+aiosqlite:///path`. "
        "Unset: SQLite in the data directory.",
    )
    issuer: str | None = Field(
        default=None,
        description="The `iss` claim of access tokens and the service's public URL. "
        "Unset: `http://<host>:<port>` of `tokenward serve`.",
    )
    audience: str = Field(
        default="tokenward", min_length=1, description="The `aud` claim of access tokens."
    )
    access_ttl: int = Field(default=600, gt=0, description="Access token lifetime, seconds.")
    session_idle_ttl: int = Field(
        default=2_592_000,
        gt=0,
        description="A session with no refresh for this many seconds ends (30 days).",
    )
    session_max_ttl: int = Field(
        default=7_776_000,
        gt=0,
        description="No session lives longer than this many seconds from login (90 days).",
    )
    refresh_grace: int = Field(
        default=10,
        ge=0,
        le=300,
        description="Seconds during which the refresh token just replaced may be presented "
        "again and gets the same successor (concurrent tabs); 0 is strict mode.",
    )
    refresh_rate_limit: int = Field(
        default=30,
        gt=0,
        description="Refreshes of one session allowed per `TOKENWARD_REFRESH_RATE_WINDOW`; "
        "more get 429 (replays inside the grace window never count).",
    )
    refresh_rate_window: int = Field(
        default=60, gt=0, description="Window of the per-session refresh limit, seconds."
    )
    # The per-process session cache (tokenward.revocation; sizing in docs/sessions.md).
    session_cache_size: int = Field(
        default=100_000,
        ge=0,
        le=100_000_000,
        description="Live sessions each process remembers (about 0.5 KB each), so an "
        "authenticated request needs no Redis lookup; the least recently seen goes first. "
        "`0` turns the cache off (every request asks Redis). Sizing: docs/sessions.md.",
    )
    session_cache_ttl: int = Field(
        default=60,
        gt=0,
        le=3600,
        description="Seconds a cached session may vouch at most before Redis is asked again "
        "(each entry a random 75-100 % of it; a safety net: the revocation feed removes ended "
        "sessions at once).",
    )
    # Abuse limits (docs/abuse.md). Each is "N events in any window of W seconds"; reaching
    # it locks for W, doubling per repeated lock up to the max block.
    login_pair_limit: int = Field(
        default=10,
        gt=0,
        description="Failed logins per (account, client address) in `TOKENWARD_LOGIN_WINDOW`; "
        "the next attempt gets 429 and the pair is locked (growing back-off).",
    )
    login_account_limit: int = Field(
        default=50,
        gt=0,
        description="Failed logins per account, all addresses, in `TOKENWARD_LOGIN_WINDOW`; "
        "past it only addresses the account logged in from recently may try. Never locks "
        "longer than one window.",
    )
    login_ip_limit: int = Field(
        default=100,
        gt=0,
        description="Failed logins per client address (IPv6: per /64), any account, in "
        "`TOKENWARD_LOGIN_WINDOW` (credential stuffing); an account's own recent login "
        "addresses are exempt for it.",
    )
    login_window: int = Field(
        default=900, gt=0, description="Sliding window of the login limits, seconds."
    )
    login_max_block: int = Field(
        default=3600,
        gt=0,
        description="Longest lock of the per-pair and per-address login limits, seconds; "
        "locks grow from one window, doubling each time.",
    )
    register_ip_limit: int = Field(
        default=20,
        gt=0,
        description="Registrations per client address in `TOKENWARD_REGISTER_WINDOW` "
        "(attempts refused by the password policy do not count).",
    )
    register_window: int = Field(
        default=3600, gt=0, description="Window of the registration limit, seconds."
    )
    refresh_ip_limit: int = Field(
        default=60,
        gt=0,
        description="Refused refreshes (bad, expired or reused tokens) per client address in "
        "`TOKENWARD_REFRESH_IP_WINDOW`.",
    )
    refresh_ip_window: int = Field(
        default=60, gt=0, description="Window of the per-address refresh limit, seconds."
    )
    events_ttl: int = Field(
        default=7_776_000,
        gt=0,
        description="Security events (logins, throttling, theft, password changes) are kept "
        "this many seconds (90 days).",
    )
    events_per_user: int = Field(
        default=100,
        gt=0,
        le=10_000,
        description="Security events kept per user (`GET /auth/events`), newest first.",
    )
    events_global_max: int = Field(
        default=100_000,
        gt=0,
        description="Security events kept in the operators' log, its 16 streams together (about).",
    )
    cookie_secure: bool = Field(
        default=True,
        description="Cookies get `Secure` and the `__Host-`/`__Secure-` prefixes. `false` only "
        "for plain-http testing off localhost.",
    )
    allowed_origins: Csv = Field(
        default=(),
        description="Comma-separated origins allowed to make cookie-authenticated unsafe "
        "requests and browser logins. Unset: the issuer's origin.",
    )
    signing_keys: Path | None = Field(
        default=None,
        description="PEM or JWKS file with the private signing key(s), the same file for "
        "every instance; the last key in force signs, all verify (see `tokenward keys`). "
        "Unset: a JWKS generated in the data directory.",
    )
    signing_alg: Literal["EdDSA", "ES256"] = Field(
        default="EdDSA",
        description="Algorithm of generated keys (first start, `tokenward keys rotate`): "
        "`EdDSA` (Ed25519) or `ES256` (P-256). Keys read from a file carry their own.",
    )
    leeway: int = Field(
        default=30,
        ge=0,
        le=300,
        description="Seconds of clock skew tolerated on `exp`, `nbf` and `iat`.",
    )
    password_min_length: int = Field(
        default=12,
        ge=8,
        le=64,
        description="Shortest password accepted. Up to 1024 characters of any Unicode are "
        "accepted; common and breached passwords are refused (NIST SP 800-63B-4).",
    )
    trusted_proxies: Csv = Field(
        default=(),
        description="Comma-separated addresses or CIDR networks of reverse proxies whose "
        "`X-Forwarded-For` is believed for client IPs (rate limits, session metadata). "
        "Unset: the peer address is the client.",
    )
    max_sessions: int = Field(
        default=100,
        gt=0,
        description="Sessions per user; a new login past it ends the least recently used one.",
    )
    mfa: Literal["off", "optional", "required"] = Field(
        default="optional",
        description="Second factors (docs/mfa.md). `off`: none, logins are password-only; "
        "`optional`: users may enrol TOTP, and those who did give a code after their "
        "password; `required`: users without a factor enrol one during their next login.",
    )
    mfa_keys: SecretStr | None = Field(
        default=None,
        description="Comma-separated keys (32 random bytes each, unpadded base64url) that "
        "encrypt TOTP secrets at rest; the first encrypts, every one decrypts (rotation). "
        "Unset: `mfa.key` in the data directory, generated on first use.",
    )
    mfa_challenge_ttl: int = Field(
        default=300,
        gt=0,
        le=3600,
        description="Seconds a login's MFA challenge (between password and code) lives.",
    )
    mfa_issuer_name: str = Field(
        default="Tokenward",
        min_length=1,
        max_length=64,
        description="The name authenticator apps show beside the account.",
    )
    webauthn_rp_id: str | None = Field(
        default=None,
        description="The WebAuthn relying-party id passkeys are bound to: the issuer's host "
        "or a parent domain of it (`example.com` for `https://auth.example.com`). Browsers "
        "refuse IP addresses: use a name (`localhost` locally). Unset: the issuer's host.",
    )
    webauthn_origins: tuple[str, ...] = Field(
        default=(),
        description="Comma-separated origins passkeys may be used from; each host must be "
        "within the rp id. Unset: the issuer's origin.",
    )
    webauthn_rp_name: str = Field(
        default="Tokenward",
        min_length=1,
        max_length=64,
        description="The name browsers show when a passkey is created or used.",
    )
    reauth_max_age: int = Field(
        default=300,
        gt=0,
        description="Seconds an authentication counts as recent: enrolling or removing a "
        "factor, new recovery codes and (for users with a factor) a password change need "
        "one; `POST /auth/reauthenticate` renews it.",
    )
    transparent_refresh: bool = Field(
        default=False,
        description="`true`: protected routes refresh an expired (or dropped) access cookie "
        "themselves, as the classic tutorial's `validate_jwt` did; the refresh cookie then "
        "uses `Path=/`.",
    )
    argon2_memory_kib: int = Field(
        default=OWASP_ARGON2_MEMORY_KIB,
        ge=OWASP_ARGON2_MEMORY_KIB,
        description="argon2id memory cost, KiB; the OWASP minimum (19 MiB) or more.",
    )
    argon2_time_cost: int = Field(
        default=OWASP_ARGON2_TIME_COST,
        ge=OWASP_ARGON2_TIME_COST,
        description="argon2id iterations; the OWASP minimum (2) or more.",
    )
    argon2_parallelism: int = Field(
        default=OWASP_ARGON2_PARALLELISM, ge=1, le=16, description="argon2id lanes."
    )
    argon2_threads: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="argon2id computations at once in each process (each holds its memory "
        "cost while it runs). Unset: one per core the process may run on.",
    )
    backend_timeout: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="Seconds to wait for Redis or the database (connecting, and each command) "
        "before answering 503.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Least severe level logged."
    )
    key_reload_interval: int = Field(
        default=5,
        ge=1,
        le=300,
        description="Seconds between checks of the key file for a change (a rotation), so "
        "running instances agree on the keys; also added to how long a retired key verifies.",
    )
    access_log: bool = Field(
        default=False,
        description="Log one JSON line per HTTP request (method, route, path, status, "
        "duration, client address, request id; never query strings, headers or bodies). Off "
        "by default: the TLS proxy usually logs requests, and a line costs more CPU than "
        "serving `GET /auth/me` from the caches.",
    )
    audiences: Csv = Field(
        default=(),
        description="Comma-separated names of the services (audiences) a signed-in client may "
        "get an access token for with `POST /auth/token`; each service's verifier accepts "
        "only tokens naming it. `TOKENWARD_AUDIENCE` stays the audience of Tokenward's own "
        "API. Unset: no other services.",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Port of the operator listener that serves `/metrics` (`tokenward serve "
        "--metrics-port`), on `TOKENWARD_METRICS_HOST`. Unset: no such listener.",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Address of the metrics listener. Loopback by default: only this machine "
        "(a Prometheus agent, a sidecar) can scrape it.",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="At least 32 characters: lets `/metrics` be scraped on the public port "
        "with `Authorization: Bearer <token>`. Unset: the public port serves no `/metrics`.",
    )
    # Connection limits of `tokenward serve` (tokenward.http.server, docs/deployment.md).
    idle_timeout: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="Seconds a connection may stay idle (before its first request, and between "
        "requests) before the server closes it. Behind a proxy that keeps connections to "
        "Tokenward open, set it above the proxy's idle timeout for them.",
    )
    header_timeout: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Seconds from the first byte of a request to the end of its headers; past "
        "it the server answers 408 and closes the connection (slow-header clients).",
    )
    body_timeout: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Seconds from the end of a request's headers to the end of its body (a "
        "total, not a rate: bodies are at most 16 KiB); past it 408 and the connection is "
        "closed (slow-body clients).",
    )
    max_connections: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Open client connections per worker process; a connection past it gets "
        "503 as soon as its request arrives (and is closed within 1 s if none does). Needs "
        "`2 x max_connections + 64` open files per worker: `tokenward serve` raises its soft "
        "limit up to the hard one, else lowers the cap with a warning.",
    )

    server: Literal["uvicorn", "granian"] = Field(
        default="uvicorn",
        description="The HTTP server of `tokenward serve` (`--server`): `uvicorn` enforces "
        "every connection limit above; `granian` costs less CPU per request but enforces "
        "only the header timeout (at most 60 s, also closing idle connections) and the head "
        "size, not the body timeout nor the connection cap (see docs/deployment.md).",
    )

    # E-mail (tokenward.mail, tokenward.email_flows; docs/email.md).
    smtp_url: str | None = Field(
        default=None,
        description="Mail server: `smtp://[user:pass@]host[:587]` (STARTTLS, required unless "
        "`?starttls=off` on a loopback host) or `smtps://[user:pass@]host[:465]` (implicit "
        "TLS). Unset: mail is written to the outbox in the data directory (`tokenward mail "
        "list`), for development.",
    )
    mail_from: str | None = Field(
        default=None,
        description="The `From` of every mail, e.g. `Example <no-reply@example.com>`. Unset: "
        "`no-reply@` the issuer's host.",
    )
    smtp_timeout: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Seconds to connect to the mail server and for each SMTP command; a mail "
        "not sent is retried a few times, off the request path.",
    )
    mail_templates_dir: Path | None = Field(
        default=None,
        description="A directory whose `<name>.subject`, `<name>.txt` and `<name>.html` files "
        "replace the built-in mail templates of that name (docs/email.md lists them).",
    )
    require_verified_email: bool = Field(
        default=False,
        description="`true`: a login with an address not yet verified is refused (403 "
        "`email-not-verified`, with where to ask for a new link).",
    )
    mail_address_limit: int = Field(
        default=5,
        gt=0,
        description="Mails asked for one address (verification resends, forgotten passwords, "
        "e-mail changes) in `TOKENWARD_MAIL_WINDOW`; more get 429, whether or not the account "
        "exists.",
    )
    mail_ip_limit: int = Field(
        default=30,
        gt=0,
        description="Mails asked for from one client address (any account) in "
        "`TOKENWARD_MAIL_WINDOW`.",
    )
    mail_window: int = Field(default=3600, gt=0, description="Window of the mail limits, seconds.")
    notify_new_device: bool = Field(
        default=True, description="Mail the owner when their account signs in from a new device."
    )
    notify_password_changed: bool = Field(
        default=True, description="Mail the owner when their password is changed or reset."
    )
    notify_email_changed: bool = Field(
        default=True,
        description="Mail the old address when the account's address changes, with a link to "
        "report it (reset the password).",
    )
    notify_refresh_reused: bool = Field(
        default=True,
        description="Mail the owner when a session was ended because its refresh token was "
        "used twice (stolen).",
    )
    notify_recovery_code_used: bool = Field(
        default=True,
        description="Mail the owner when a recovery code is used to sign in or to confirm "
        "a change, with the number of codes left.",
    )

    _split = field_validator(
        "allowed_origins", "trusted_proxies", "audiences", "webauthn_origins", mode="before"
    )(_split_csv)

    @field_validator("audiences")
    @classmethod
    def _check_audiences(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not _AUDIENCE.fullmatch(name):
                raise ValueError(f"{name!r}: use 1-128 of A-Z a-z 0-9 . _ : / -")
        return tuple(dict.fromkeys(value))

    @field_validator("metrics_token")
    @classmethod
    def _check_metrics_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (a random secret)")
        return value

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        """What ``repr()`` and ``str()`` show: every field, URL passwords masked."""
        for name, value in super().__repr_args__():
            if isinstance(value, str) and name is not None and name.endswith("_url"):
                yield name, mask_url_password(value)
            else:
                yield name, value

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
        from tokenward.stores.redis_client import parse_redis_url

        parse_redis_url(value)  # hosts, ports, path and options: one line saying what is wrong
        return value

    @field_validator("smtp_url")
    @classmethod
    def _check_smtp_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from tokenward.mail_smtp import SmtpConfig

        SmtpConfig.from_url(value, timeout=1.0)  # one line saying what is wrong
        return value

    @field_validator("redis_wait")
    @classmethod
    def _check_redis_wait(cls, value: str) -> str:
        from tokenward.stores.redis_client import parse_redis_wait

        return str(parse_redis_wait(value) or "off")

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

    @field_validator("allowed_origins", "webauthn_origins")
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
    # Serialise as browsers send ``Origin``: no userinfo, no default port, brackets on IPv6.
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = parts.port
    default_port = 443 if parts.scheme == "https" else 80
    return f"{parts.scheme}://{host}" + ("" if port in (None, default_port) else f":{port}")


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
