"""Throttling Tokenward's endpoints with the rate-limit rule of :mod:`tokenward.ratelimit`.

Login failures are counted per (account, client address), per account, and per client
address; an attempt is reserved *before* the password is checked (so concurrent guesses
cannot slip past the count and a throttled request never runs argon2), and refunded when it
succeeds. Registration and refresh are limited per client address. Key names carry SHA-256
digests, never an email. Framework-free.

A reservation that ends in :class:`~tokenward.errors.Unavailable` (the database or Redis
did not answer: 503) is refunded too: the failure was ours, not a wrong guess, and an
outage must not lock owners out once it is over. :meth:`Throttle.login` and
:meth:`Throttle.register` are async context managers so that no caller can forget it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ipaddress
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from tokenward.errors import RateLimited, TokenwardError, Unavailable
from tokenward.ratelimit import Decision, Limit, RateLimiter
from tokenward.users import email_key

if TYPE_CHECKING:
    from tokenward.settings import Settings

__all__ = [
    "KNOWN_ADDRESS_TTL",
    "Limits",
    "LockNotice",
    "LoginTicket",
    "Throttle",
    "Ticket",
    "account_digest",
    "address_bucket",
    "address_digest",
]

#: A client address stays "known" for an account this long after a successful login from it.
KNOWN_ADDRESS_TTL = 30 * 86_400
#: Known addresses kept per account (the most recent ones).
KNOWN_ADDRESSES_KEPT = 32
#: Addresses one process remembers as near their refresh limit (see Throttle.refresh).
_CROWDED_MAX = 10_000

log = logging.getLogger("tokenward.throttle")


def _digest(kind: str, value: str) -> str:
    # 128 bits: ample against collisions, short keys. Domain-separated per kind.
    return hashlib.sha256(f"tokenward:{kind}:{value}".encode()).hexdigest()[:32]


def account_digest(email: str) -> str:
    """The digest that names an account in throttle keys and logs (never the email itself).

    The same NFKC, case-folded form as login uses, so every spelling of one address shares
    one bucket, whether or not the account exists.
    """
    return _digest("account", email_key(email))


def address_bucket(ip: str) -> str:
    """The unit of per-address limits: an IPv4 address, or an IPv6 address's /64.

    One IPv6 host usually holds a whole /64, so counting single addresses would give it
    2**64 buckets. IPv4-mapped IPv6 addresses count as their IPv4 address.
    """
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def address_digest(ip: str) -> str:
    """The digest of :func:`address_bucket`, as used in key names."""
    return _address_digest(ip)


@functools.lru_cache(maxsize=4096)
def _address_digest(ip: str) -> str:
    # Cached: every refresh and login of a client names its address again.
    return _digest("address", address_bucket(ip))


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits Tokenward applies (``TOKENWARD_LOGIN_*``, ``_REGISTER_*``, ``_REFRESH_IP_*``).

    Attributes:
        login_pair: failed logins per (account, client address).
        login_account: failed logins per account from addresses it has not logged in from.
        login_ip: failed logins per client address, any account.
        register_ip: registrations per client address (policy refusals do not count).
        refresh_ip: refused refreshes per client address.
    """

    login_pair: Limit = Limit("login-pair", 10, 900, 3600)
    login_account: Limit = Limit("login-account", 50, 900, 900)
    login_ip: Limit = Limit("login-ip", 100, 900, 3600)
    register_ip: Limit = Limit("register-ip", 20, 3600, 3600)
    refresh_ip: Limit = Limit("refresh-ip", 60, 60, 60)

    @classmethod
    def from_settings(cls, s: Settings) -> Limits:
        """The limits configured in ``s``."""
        return cls(
            login_pair=Limit("login-pair", s.login_pair_limit, s.login_window, s.login_max_block),
            # The account-wide lock never grows past one window: it also holds back the
            # owner (from new addresses), so a distributed attack must not lock them out long.
            login_account=Limit("login-account", s.login_account_limit, s.login_window),
            login_ip=Limit("login-ip", s.login_ip_limit, s.login_window, s.login_max_block),
            register_ip=Limit("register-ip", s.register_ip_limit, s.register_window),
            refresh_ip=Limit("refresh-ip", s.refresh_ip_limit, s.refresh_ip_window),
        )

    def all(self) -> tuple[Limit, ...]:
        """Every limit (for documentation and metrics)."""
        return (self.login_pair, self.login_account, self.login_ip, self.register_ip,
                self.refresh_ip)  # fmt: skip


@dataclass(frozen=True, slots=True)
class LockNotice:
    """A lock just began: what security events and metrics are told (no secrets)."""

    limit: str
    ip: str
    retry_after: int
    at: int
    #: the email the attempt named (login only); consumers hash or resolve it, never log it
    email: str | None = None


@dataclass(slots=True)
class Ticket:
    """An attempt that got through the throttle; counted unless refunded.

    Call :meth:`refund` when the attempt turned out not to count (a successful refresh, a
    registration refused by the password policy before any hashing).

    A *deferred* ticket (a refresh from an address with room to spare, see
    :meth:`Throttle.refresh`) has counted nothing yet: :meth:`refund` costs nothing, and
    :meth:`failed` counts the attempt once it is known to be refused.
    """

    limiter: RateLimiter
    event: str
    keys: tuple[str, ...]
    refunded: bool = False
    #: counts a deferred attempt as refused (set by the throttle); ``None``: already counted
    deferred: Callable[[], Awaitable[None]] | None = None

    async def refund(self) -> None:
        """Forget this attempt under every key it was counted under."""
        if not self.refunded:
            self.refunded = True
            if self.deferred is None:
                await self.limiter.release(self.keys, event=self.event)

    async def failed(self) -> None:
        """The attempt was refused: count a deferred one now (no-op otherwise).

        Raises:
            RateLimited: counting it found the limit full (the address is throttled).
        """
        count, self.deferred = self.deferred, None
        if count is not None and not self.refunded:
            self.refunded = True  # counted: nothing left to refund or count
            await count()


class _Refundable(Protocol):
    async def refund(self) -> None: ...


@asynccontextmanager
async def _refunded_on_outage(ticket: _Refundable) -> AsyncIterator[None]:
    """Refund ``ticket`` when the attempt fails with :class:`Unavailable`, then re-raise it.

    The refund is best effort: when it fails too (Redis is the back end that is down), the
    attempt stays counted, a warning is logged, and the caller still gets the original 503,
    never the refund's error.
    """
    try:
        yield
    except Unavailable:
        try:
            await ticket.refund()
        except Unavailable:
            log.warning("throttle refund after an outage failed: the attempt stays counted")
        raise


@dataclass(slots=True)
class LoginTicket:
    """A login attempt reserved as a failure; :meth:`succeeded` refunds it."""

    limiter: RateLimiter
    event: str
    ip_key: str | None
    pair_key: str
    account_key: str | None
    known_key: str
    address: str
    done: bool = field(default=False)

    def _keys(self) -> list[str]:
        return [k for k in (self.pair_key, self.ip_key, self.account_key) if k is not None]

    async def refund(self) -> None:
        """No password was judged (the input was refused first): the attempt does not count."""
        if not self.done:
            self.done = True
            await self.limiter.release(self._keys(), event=self.event)

    @asynccontextmanager
    async def succeeding(self, *, now: int) -> AsyncIterator[None]:
        """:meth:`succeeded`, started as the block starts and waited for when it ends.

        Its writes are sent while the block runs, not one round trip ahead of it: with a
        store that sends what one turn of the event loop asks for in one write (the Redis
        store does), they join the block's first write when the block awaits nothing else
        before it (a login's session). Should they fail, the block's work stands (a
        session it opened is answered: the password was right); the attempt stays counted
        and a warning is logged.
        """
        settled = asyncio.ensure_future(self.succeeded(now=now))
        try:
            yield
        finally:
            try:
                await settled
            except Unavailable:
                log.warning("clearing a right password's throttle record failed: it stays counted")

    async def succeeded(self, *, now: int) -> None:
        """The password was right: clear the (account, address) record, refund the rest,
        and remember the address as one this account logs in from."""
        if self.done:
            return
        self.done = True
        await self.limiter.settle(
            reset=[self.pair_key],
            release=[k for k in self._keys() if k != self.pair_key],
            event=self.event,
            remember=(self.known_key, self.address, now, KNOWN_ADDRESS_TTL, KNOWN_ADDRESSES_KEPT),
        )


class Throttle:
    """Tokenward's limits on login, registration and refresh.

    Args:
        limiter: where the windows live.
        limits: the limits to apply.
        on_lock: told once whenever a lock begins (security events); must not block.
        on_refuse: told the limit's name for every attempt a limit refuses (metrics);
            must not block.
    """

    def __init__(
        self,
        limiter: RateLimiter,
        limits: Limits | None = None,
        *,
        on_lock: Callable[[LockNotice], None] | None = None,
        on_refuse: Callable[[str], None] | None = None,
    ) -> None:
        self.limiter = limiter
        self.limits = limits or Limits()
        self.on_lock = on_lock
        self.on_refuse = on_refuse
        #: refresh throttle keys (per address) this process saw full or locked, until when
        self._crowded: dict[str, int] = {}

    def _note_locks(self, decision: Decision, *, ip: str, now: int, email: str | None) -> None:
        for name in decision.locked:
            if self.on_lock is not None:
                self.on_lock(LockNotice(name, ip, decision.retry_after, now, email))

    def _refuse(self, decision: Decision, *, ip: str, now: int, email: str | None) -> RateLimited:
        if self.on_refuse is not None:
            for name in decision.blocked:
                self.on_refuse(name)
        self._note_locks(decision, ip=ip, now=now, email=email)
        # One message whatever refused: it must not tell an attacker which bucket is full.
        return RateLimited(decision.retry_after, "too many attempts; retry later")

    @asynccontextmanager
    async def login(self, email: str, ip: str, *, now: int) -> AsyncIterator[LoginTicket]:
        """Reserve a login attempt before the password is checked, for the ``async with``
        block that checks it::

            async with throttle.login(email, ip, now=now) as ticket:
                user = await users.authenticate(email, password, now=now)
                await ticket.succeeded(now=now)

        The attempt counts as a failure unless the block calls :meth:`LoginTicket.succeeded`
        (or :meth:`LoginTicket.refund`), or ends in :class:`Unavailable`: a back end that
        did not answer judged no password, so the attempt is refunded (see
        :func:`_refunded_on_outage`) and the 503 goes on.

        The same for existing and unknown accounts, so throttling reveals nothing. An
        address the account logged in from recently ("known") is exempt from the
        account-wide and the per-address limits: neither a botnet spread over many
        addresses nor a stuffer sharing the owner's NAT can lock the owner out of their
        usual network. The (account, address) limit always applies.

        Raises:
            RateLimited: a limit refused; nothing was counted (the block does not run).
        """
        ticket = await self._reserve_login(email, ip, now=now)
        async with _refunded_on_outage(ticket):
            yield ticket

    async def _reserve_login(self, email: str, ip: str, *, now: int) -> LoginTicket:
        event = secrets.token_hex(8)
        address = address_digest(ip)
        scope = f"tw:{{rl:a:{account_digest(email)}}}"
        pair_key, account_key, known_key = f"{scope}:ip:{address}", f"{scope}:all", f"{scope}:known"
        ip_key = f"tw:{{rl:ip:{address}}}:login"
        lim = self.limits
        known: bool | None = None  # looked up only when a limit it waives refuses

        async def is_known() -> bool:
            nonlocal known
            if known is None:
                known = await self.limiter.remembers(
                    known_key, address, now=now, ttl=KNOWN_ADDRESS_TTL
                )
            return known

        by_ip_checks = [(ip_key, lim.login_ip)]
        checks = [(pair_key, lim.login_pair), (account_key, lim.login_account)]
        decision: Decision | None = None
        if self._is_crowded(ip_key, now):
            # Near or at its limit: the address is judged first and, refused, the account
            # is not consulted (a refused address must not add strikes to an account).
            by_ip = await self.limiter.acquire(by_ip_checks, now=now, event=event)
        else:
            # The common case: both judged in one round trip.
            by_ip, decision = await self.limiter.acquire_each(
                [by_ip_checks, checks], now=now, event=event
            )
        if not by_ip.allowed:
            self._crowd(ip_key, now + by_ip.retry_after)
        elif by_ip.remaining <= 0:
            self._crowd(ip_key, now + lim.login_ip.window)
        counted_ip: str | None = ip_key
        if not by_ip.allowed:
            if not await is_known():
                if decision is not None and decision.allowed:
                    await self.limiter.release([pair_key, account_key], event=event)
                raise self._refuse(by_ip, ip=ip, now=now, email=None)
            self._note_locks(by_ip, ip=ip, now=now, email=None)
            counted_ip = None
        if decision is None:
            decision = await self.limiter.acquire(checks, now=now, event=event)
        counted_account: str | None = account_key
        if (
            not decision.allowed
            and decision.blocked == (lim.login_account.name,)
            and await is_known()
        ):
            self._note_locks(decision, ip=ip, now=now, email=email)
            decision = await self.limiter.acquire(checks[:1], now=now, event=event)
            counted_account = None
        if not decision.allowed:
            if counted_ip is not None:
                await self.limiter.release([counted_ip], event=event)
            raise self._refuse(decision, ip=ip, now=now, email=email)
        return LoginTicket(
            self.limiter, event, counted_ip, pair_key, counted_account, known_key, address
        )

    async def _per_address(self, kind: str, limit: Limit, ip: str, now: int) -> Ticket:
        event = secrets.token_hex(8)
        key = f"tw:{{rl:ip:{address_digest(ip)}}}:{kind}"
        decision = await self.limiter.acquire([(key, limit)], now=now, event=event)
        if not decision.allowed:
            raise self._refuse(decision, ip=ip, now=now, email=None)
        return Ticket(self.limiter, event, (key,))

    @asynccontextmanager
    async def register(self, ip: str, *, now: int) -> AsyncIterator[Ticket]:
        """Count a registration attempt from ``ip`` for the ``async with`` block that makes
        it; the block refunds it when the policy refused it. A block that ends in
        :class:`Unavailable` (the database is down) is refunded as well.

        Raises:
            RateLimited: too many registrations from this address.
        """
        ticket = await self._per_address("register", self.limits.register_ip, ip, now)
        async with _refunded_on_outage(ticket):
            yield ticket

    @asynccontextmanager
    async def passkey(self, ip: str, *, now: int) -> AsyncIterator[Ticket]:
        """Count a passkey sign-in from ``ip`` as a failed login of the address (the
        ``login-ip`` limit, the bucket wrong passwords fill) for the ``async with`` block
        that checks it; the block refunds it when the passkey passed. A 503 is refunded.

        Raises:
            RateLimited: too many failed logins from this address.
        """
        ticket = await self._per_address("login", self.limits.login_ip, ip, now)
        async with _refunded_on_outage(ticket):
            yield ticket

    async def refresh(self, ip: str, *, now: int) -> Ticket:
        """A refresh attempt from ``ip``; only a refused one counts against the address.

        A correct refresh never counts, so for an address this process has not seen near
        its limit the ticket is *deferred*: nothing is stored before the rotation (no Redis
        round trip on the common path), and :meth:`Ticket.failed` counts a refused one
        afterwards. An address whose window this process saw full, or locked, is counted
        up front as before (refunded when it succeeds), so it is refused before anything is
        tried. Workers learn this separately: on one that has not seen the address crowded
        a correct refresh may go through while another refuses it, and a refused one is
        answered 429 as soon as its count finds the limit full.

        Raises:
            RateLimited: too many refused refreshes from this address.
        """
        key = f"tw:{{rl:ip:{address_digest(ip)}}}:refresh"
        limit = self.limits.refresh_ip
        if self._is_crowded(key, now):
            event = secrets.token_hex(8)
            decision = await self.limiter.acquire([(key, limit)], now=now, event=event)
            if not decision.allowed:
                self._crowd(key, now + decision.retry_after)
                raise self._refuse(decision, ip=ip, now=now, email=None)
            if decision.remaining <= 0:
                self._crowd(key, now + limit.window)
            return Ticket(self.limiter, event, (key,))

        async def count() -> None:
            event = secrets.token_hex(8)
            decision = await self.limiter.acquire([(key, limit)], now=now, event=event)
            if not decision.allowed:
                self._crowd(key, now + decision.retry_after)
                raise self._refuse(decision, ip=ip, now=now, email=None)
            if decision.remaining <= 0:
                self._crowd(key, now + limit.window)

        return Ticket(self.limiter, "", (key,), deferred=count)

    @asynccontextmanager
    async def refreshing(self, ip: str, *, now: int) -> AsyncIterator[Ticket]:
        """:meth:`refresh` for the ``async with`` block that rotates: a refusal
        (:class:`~tokenward.errors.TokenwardError`) leaving the block is counted against the
        address (and becomes 429 when that finds the limit full); a success must call
        :meth:`Ticket.refund`. A 503 is not counted: no token was judged.

        Raises:
            RateLimited: too many refused refreshes from this address.
        """
        ticket = await self.refresh(ip, now=now)
        try:
            yield ticket
        except Unavailable:
            raise
        except TokenwardError:
            await ticket.failed()
            raise

    def _is_crowded(self, key: str, now: int) -> bool:
        """Whether this process saw ``key``'s window full (or locked) until after ``now``."""
        until = self._crowded.get(key)
        if until is not None and until <= now:
            del self._crowded[key]
            return False
        return until is not None

    def _crowd(self, key: str, until: int) -> None:
        if len(self._crowded) >= _CROWDED_MAX:
            self._crowded.clear()  # a flood of addresses: forget, they are counted again
        self._crowded[key] = until
