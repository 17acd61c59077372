"""The assembled service: settings in, wired core and back ends out.

:class:`Tokenward` is the composition root. It owns the connections (Redis, the database,
an embedded Redis when no URL is configured), the invalidation feed and the core objects,
and it is what every adapter (the HTTP app, the FastAPI integration, the CLI) is built on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import make_url

from tokenward.audiences import ServiceTokens
from tokenward.clientinfo import TrustedProxies
from tokenward.clock import Clock, SystemClock
from tokenward.cookies import CookieTransport
from tokenward.email_flows import EmailFlows, MailLimits, Notices, NoticeSink
from tokenward.errors import ConfigError, Unavailable
from tokenward.events import SecurityEvents
from tokenward.keyring import KeyRing
from tokenward.keys import KeySet
from tokenward.mail import Mailer, MailSender, Outbox, Templates, default_sender
from tokenward.metrics import Metrics, SessionCounter
from tokenward.mfa import Mfa
from tokenward.passkeys import Passkeys, relying_party
from tokenward.password_policy import PasswordPolicy
from tokenward.passwords import Argon2Params, PasswordHasher
from tokenward.private_paths import SQLITE_SIDE_FILES, private_dir, private_file
from tokenward.ratelimit import Limit
from tokenward.revocation import SessionCache
from tokenward.secretbox import SecretBox
from tokenward.sessions import SessionPolicy, Sessions
from tokenward.settings import Settings
from tokenward.stores.embedded_redis import EmbeddedRedis
from tokenward.stores.redis_client import Durability, RedisClient, connect_redis, probe_redis
from tokenward.stores.redis_events import RedisEventLog
from tokenward.stores.redis_feed import RevocationFeed
from tokenward.stores.redis_links import RedisLinkStore
from tokenward.stores.redis_mfa import RedisMfaStore
from tokenward.stores.redis_passkeys import RedisPasskeyStore
from tokenward.stores.redis_ratelimit import RedisRateLimiter
from tokenward.stores.redis_sessions import RedisSessionStore
from tokenward.stores.sql_mfa import SqlFactorStore
from tokenward.stores.sql_users import SqlUserStore, create_engine, upgrade
from tokenward.throttle import Limits, Throttle
from tokenward.tokens import AccessTokens
from tokenward.users import Profiles, Users

__all__ = ["Tokenward", "default_database_url", "load_keys"]

SQLITE_FILE = "tokenward.db"
_log = logging.getLogger("tokenward.keys")


def default_database_url(data_dir: Path) -> str:
    """The embedded SQLite database in the data directory, made private first.

    Every user of the default database (the server, ``tokenward serve``'s migration step,
    ``tokenward db``) gets its URL here, so here the directory is made 0700 and the file
    created 0600 before SQLite opens it: SQLite would create it with the umask's mode
    (world-readable password hashes), and its journal files take the database's mode.
    """
    private_dir(data_dir)
    path = (data_dir / SQLITE_FILE).resolve()
    private_file(path, side_files=SQLITE_SIDE_FILES, variable="TOKENWARD_DATA_DIR")
    return f"sqlite+aiosqlite:///{path}"


def database_whereabouts(settings: Settings) -> str:
    """Names the user database for an error message: the setting and the host, never the
    password (``TOKENWARD_DATABASE_URL, host db.internal:5432``)."""
    if settings.database_url is None:
        return f"the SQLite database of TOKENWARD_DATA_DIR ({settings.data_dir.resolve()})"
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        return f"TOKENWARD_DATABASE_URL, SQLite file {url.database}"
    port = f":{url.port}" if url.port else ""
    return f"TOKENWARD_DATABASE_URL, host {url.host}{port}, database {url.database}"


def _private_sqlite_file(url: str) -> None:
    """A configured SQLite file gets mode 0600 too (its directory is the operator's)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database)
        if path.parent.is_dir():
            private_file(path, side_files=SQLITE_SIDE_FILES, variable="TOKENWARD_DATABASE_URL")


def load_keys(settings: Settings, now: int | None = None) -> KeySet:
    """The keys in force: the configured key file, or keys generated into the data directory.

    Args:
        settings: the settings.
        now: the current time; the system clock when omitted.
    """
    when = SystemClock().now() if now is None else now
    return KeyRing.from_settings(settings).load(when)


@dataclass
class Tokenward:
    """A running Tokenward: call :meth:`start` before use and :meth:`stop` after.

    Args:
        settings: resolved settings (``issuer`` set; see :meth:`Settings.resolved`).
        clock: the time source; the system clock by default.
        argon2: password hashing cost; from settings unless given (tests pass
            :data:`~tokenward.passwords.CHEAP_FOR_TESTS`).
        migrate: apply database migrations on start (the CLI does it once, before workers).
    """

    settings: Settings
    clock: Clock = field(default_factory=SystemClock)
    argon2: Argon2Params | None = None
    migrate: bool = True
    embedded: EmbeddedRedis | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        s = self.settings
        if s.issuer is None:
            # Checked before anything touches the data directory; `tokenward serve` resolves
            # the issuer from --host/--port, an app that embeds Tokenward has none to use.
            raise ConfigError(
                "TOKENWARD_ISSUER: required when Tokenward runs inside your own app; set it "
                "to the app's public URL (e.g. https://app.example.com)"
            )
        #: None with TOKENWARD_MFA=off (no passkey routes); checked here, before any work
        self.relying_party = (
            None
            if s.mfa == "off"
            else relying_party(
                s.effective_issuer,
                rp_id=s.webauthn_rp_id,
                origins=s.webauthn_origins,
                name=s.webauthn_rp_name,
            )
        )
        self.keyring = KeyRing.from_settings(s)
        self.keys = self.keyring.load(self.clock.now())
        self.tokens = AccessTokens(
            self.keys,
            issuer=s.effective_issuer,
            audience=s.audience,
            ttl=s.access_ttl,
            leeway=s.leeway,
        )
        #: tokens for the other services of the deployment (TOKENWARD_AUDIENCES)
        self.service_tokens = ServiceTokens(self.tokens, s.audiences)
        self.cache = SessionCache(max_entries=s.session_cache_size, max_age=s.session_cache_ttl)
        self.cookies = CookieTransport(
            secure=s.cookie_secure, transparent_refresh=s.transparent_refresh
        )
        self.proxies = TrustedProxies(s.trusted_proxies)
        self.policy = SessionPolicy(
            idle_ttl=s.session_idle_ttl,
            max_ttl=s.session_max_ttl,
            grace=s.refresh_grace,
            max_sessions=s.max_sessions,
            refresh_rate_limit=s.refresh_rate_limit,
            refresh_rate_window=s.refresh_rate_window,
        )
        self.hasher = PasswordHasher(
            self.argon2
            or Argon2Params(s.argon2_memory_kib, s.argon2_time_cost, s.argon2_parallelism),
            concurrency=s.argon2_threads,
        )
        self.password_policy = PasswordPolicy(min_length=s.password_min_length)
        self.templates = Templates(s.mail_templates_dir)
        #: the development outbox (mail goes there unless TOKENWARD_SMTP_URL is set)
        self.outbox = Outbox(s.data_dir / "outbox")
        sender: MailSender = self.outbox
        if s.smtp_url is not None:
            from tokenward.mail_smtp import SmtpConfig, SmtpSender

            sender = SmtpSender(SmtpConfig.from_url(s.smtp_url, timeout=s.smtp_timeout))
        from_address = default_sender(s.mail_from, s.effective_issuer)
        self.mailer = Mailer(sender, from_address, self.clock.now)
        #: one set of metrics per Tokenward, however many apps are built on it
        self.metrics = Metrics(sessions=SessionCounter(lambda: self.redis))
        self._started = False
        self._key_watch: asyncio.Task[None] | None = None

    def reload_keys(self) -> bool:
        """Pick up a rotated key file, or keys that started or stopped signing since.

        Runs every ``TOKENWARD_KEY_RELOAD_INTERVAL`` seconds while started; cheap (one
        ``stat``). Returns whether the keys in force changed.
        """
        fresh = self.keyring.refresh(self.clock.now())
        if fresh is None:
            return False
        self.keys = fresh
        self.tokens.keys = fresh
        return True

    async def _watch_keys(self) -> None:
        while True:
            await asyncio.sleep(self.settings.key_reload_interval)
            try:
                self.reload_keys()
            except Exception:  # keep watching: the keys in use stay valid
                _log.exception("key reload failed")

    async def start(self) -> None:
        """Connect to the back ends, apply migrations, subscribe to the invalidation feed."""
        s = self.settings
        if s.redis_url is None or s.database_url is None:
            private_dir(s.data_dir)
        if s.database_url is not None:
            _private_sqlite_file(s.database_url)
        redis_url = s.redis_url
        if redis_url is None:
            self.embedded = EmbeddedRedis(s.data_dir)
            redis_url = await asyncio.to_thread(self.embedded.start)
        durability = Durability.for_setting(s.redis_wait, s.redis_url)
        self.redis: RedisClient = connect_redis(redis_url, timeout=s.backend_timeout)
        if await probe_redis(self.redis, redis_url, wait=s.backend_timeout):  # logs if not
            try:
                await durability.verify(self.redis)
            except ConfigError:
                await self.redis.aclose()
                if self.embedded is not None:
                    await asyncio.to_thread(self.embedded.stop)
                raise
        self.engine = create_engine(
            s.database_url or default_database_url(s.data_dir), timeout=s.backend_timeout
        )
        if self.migrate:
            try:
                await upgrade(self.engine)
            except Unavailable as exc:
                raise Unavailable(f"{exc.detail}: {database_whereabouts(s)}") from exc
        self.session_store = RedisSessionStore(self.redis, durability=durability)
        self.user_store = SqlUserStore(self.engine)
        self.mfa_state = RedisMfaStore(self.redis)
        # With MFA off every session is a password session: refreshes read no auth level.
        levels = None if s.mfa == "off" else self.mfa_state
        self.sessions = Sessions(
            self.session_store, self.tokens, self.cache, self.policy, levels=levels
        )
        self.users = Users(self.user_store, self.hasher, self.password_policy)
        # Kept long while the feed that announces address changes is up (see Profiles).
        self.profiles = Profiles(self.user_store, vouched=lambda: self.cache.healthy)
        self.event_log = RedisEventLog(
            self.redis, ttl=s.events_ttl, per_user=s.events_per_user, global_max=s.events_global_max
        )
        notices = NoticeSink(self.event_log)
        self.events = SecurityEvents(notices, self.user_store, observer=self.metrics.security_event)
        self.throttle = Throttle(
            RedisRateLimiter(self.redis),
            Limits.from_settings(s),
            on_lock=self.events.throttled,
            on_refuse=self.metrics.rate_limit_refused,
        )
        self.links = RedisLinkStore(self.redis)
        self.email_flows = EmailFlows(
            users=self.users,
            store=self.user_store,
            links=self.links,
            mailer=self.mailer,
            templates=self.templates,
            throttle=self.throttle,
            sessions=self.sessions,
            events=self.events,
            base_url=s.effective_issuer,
            limits=MailLimits(
                Limit("mail-address", s.mail_address_limit, s.mail_window),
                Limit("mail-ip", s.mail_ip_limit, s.mail_window),
            ),
            notices=Notices(
                new_device=s.notify_new_device,
                password_changed=s.notify_password_changed,
                email_changed=s.notify_email_changed,
                refresh_reused=s.notify_refresh_reused,
                recovery_code_used=s.notify_recovery_code_used,
            ),
            verified_ttl=s.session_max_ttl,
        )
        notices.flows = self.email_flows
        self.sessions.email_verified_claim = True
        self.mailer.start()
        keys_text = s.mfa_keys.get_secret_value() if s.mfa_keys is not None else None
        factor_store = SqlFactorStore(self.engine)
        self.mfa = Mfa(
            factor_store,
            self.mfa_state,
            SecretBox.from_config(keys_text, s.data_dir),
            self.throttle,
            policy=s.mfa,
            challenge_ttl=s.mfa_challenge_ttl,
            issuer_name=s.mfa_issuer_name,
        )
        rp = self.relying_party or relying_party(
            s.effective_issuer, rp_id=None, origins=(), name=s.webauthn_rp_name
        )
        self.passkeys = Passkeys(factor_store, RedisPasskeyStore(self.redis), rp)
        self.feed = RevocationFeed(
            self.redis,
            self.cache,
            on_change=self._feed_changed,
            on_user=self.profiles.forget,
        )
        await self.feed.start(wait=s.backend_timeout)
        self._key_watch = asyncio.create_task(self._watch_keys(), name="tokenward-key-watch")
        self._started = True

    def _feed_changed(self, up: bool) -> None:
        # Announcements may have been missed while the feed was down: the profiles read
        # before are not vouched for any more.
        self.profiles.reset()
        self.metrics.revocation_feed(up)

    async def profile_changed(self, uid: str) -> None:
        """User ``uid``'s address or its verification changed: this process's profile cache
        drops it at once, every other process's when the announcement reaches its feed (a
        lost announcement costs at most the cache's few seconds)."""
        self.profiles.forget(uid)
        with contextlib.suppress(Unavailable):
            await self.session_store.announce_user(uid)

    async def stop(self) -> None:
        """Close everything :meth:`start` opened."""
        if not self._started:
            return
        self._started = False
        if self._key_watch is not None:
            self._key_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._key_watch
            self._key_watch = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.events.drain(), self.settings.backend_timeout)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.email_flows.drain(), self.settings.backend_timeout)
        await self.mailer.stop(wait=self.settings.backend_timeout)
        await self.feed.stop()
        with contextlib.suppress(Exception):
            await self.redis.aclose()
        await self.engine.dispose()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
            self.embedded = None

    async def check_ready(self) -> None:
        """Raise :class:`Unavailable` unless Redis and the database both answer."""
        try:
            await asyncio.wait_for(self.redis.ping(), self.settings.backend_timeout)
        except Exception as exc:
            raise Unavailable("session store unreachable") from exc
        await self.user_store.ping()
