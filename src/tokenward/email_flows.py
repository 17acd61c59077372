"""E-mail flows: verification, forgotten passwords, e-mail change, security notices.

Every flow proves control of a mailbox with a *link token*: 32 bytes from :mod:`secrets`
(URL-safe), mailed in a link; only its SHA-256 is stored (:class:`LinkStore`), with a TTL,
and it works once. Issuing a link of one kind supersedes the user's previous one of that
kind. Every way a token can fail (unknown, expired, used, superseded, or the account moved
on: another address, another password) is one answer, :class:`LinkTokenInvalid`.

* **Verification** (24 h): mailed on registration and on request (throttled); confirming it
  marks the address verified.
* **Forgotten password** (30 min): :meth:`EmailFlows.forgot` does the same work whether or
  not the account exists (a throttle check, one user lookup, one background job queued) and
  answers the same; the job mails a link only when there is an account. A reset applies
  the password policy, moves the credential epoch, ends every session of the user and
  records ``password.reset``; of two resets with one token exactly one wins (the password
  write is a compare-and-swap on the hash the token was checked against).
* **E-mail change**: re-authentication with the password, then a link to the new address;
  confirming it changes the address (verified), mails the old address a notice with a way
  to report it, and leaves sessions alone.
* **Notices** (:class:`NoticeSink`): wraps the security-event sink and mails the owner on a
  sign-in from a new device, a password change or reset, and a session ended because its
  refresh token was reused; each can be turned off.

Mails go through :class:`~tokenward.mail.Mailer` (off the request path). Nothing here logs a
token or a link. Framework-free: times come from the caller.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tokenward.background import Background
from tokenward.errors import (
    Conflict,
    Forbidden,
    LinkTokenInvalid,
    PolicyError,
    RateLimited,
    TokenwardError,
)
from tokenward.events import (
    DEVICE_MEMORY,
    EventKind,
    EventSink,
    SecurityEvent,
    SecurityEvents,
)
from tokenward.mail import Mailer, Templates
from tokenward.ratelimit import Limit, RateLimiter
from tokenward.sessions import EndReason, Sessions
from tokenward.throttle import Throttle, account_digest, address_digest
from tokenward.users import User, Users, UserStore, email_key, normalize_email

__all__ = [
    "CHANGE_TTL",
    "RESET_TTL",
    "VERIFY_TTL",
    "EmailFlows",
    "LinkStore",
    "MailLimits",
    "NoticeSink",
    "Notices",
    "new_link_token",
]

log = logging.getLogger("tokenward.email")

VERIFY_TTL = 24 * 3600
RESET_TTL = 30 * 60
CHANGE_TTL = 24 * 3600
#: Background jobs past this are dropped (and logged): back-pressure.
MAX_PENDING = 10_000
#: A sign-in this soon after registering is not announced as a "new device": every
#: account's first device is new.
NEW_ACCOUNT_QUIET = 3600

#: ``<user id>.<43 random base64url characters>``: the user id names the one key (in the
#: user's own hash slot) that holds the link's digest.
_TOKEN = re.compile(r"([A-Za-z0-9_-]{1,64})\.[A-Za-z0-9_-]{43}")

VERIFY, RESET, CHANGE = "verify", "reset", "change"

Client = tuple[str, str]


def new_link_token(uid: str) -> tuple[str, str]:
    """A fresh link token for user ``uid`` and the digest that is stored (never the token).

    The token starts with the user id, so that its link lives in the user's own hash slot
    (no slot of a Cluster holds every user's links) and is found without an index.
    """
    token = f"{uid}.{secrets.token_urlsafe(32)}"
    return token, _digest(token)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _address(email: str) -> str:
    """What a link's payload keeps of an address: a digest of its key. No Redis key or value
    holds an address (a dump must not list the users'), yet a link can still tell whether
    the account's address is the one it was sent to."""
    return hashlib.sha256(f"tokenward:link-address:{email_key(email)}".encode()).hexdigest()


def _seal_key(token: str) -> bytes:
    return hashlib.sha256(f"tokenward:link-seal:{token}".encode()).digest()


def _seal(token: str, value: str) -> str:
    """``value`` encrypted (AES-GCM) under a key only the link's token gives: the new
    address of an e-mail change is stored, but only whoever holds the link can read it."""
    nonce = secrets.token_bytes(12)
    sealed = AESGCM(_seal_key(token)).encrypt(nonce, value.encode(), b"tokenward:link")
    return base64.urlsafe_b64encode(nonce + sealed).decode()


def _unseal(token: str, sealed: str) -> str:
    raw = base64.urlsafe_b64decode(sealed.encode())
    try:
        plain = AESGCM(_seal_key(token)).decrypt(raw[:12], raw[12:], b"tokenward:link")
    except InvalidTag:
        raise LinkTokenInvalid("the link is invalid or has expired") from None
    return plain.decode()


def _presented(token: str) -> tuple[str, str]:
    """The user id and digest of a presented token; anything not shaped like one of ours is
    refused before any store is asked."""
    shaped = _TOKEN.fullmatch(token)
    if shaped is None:
        raise LinkTokenInvalid("the link is invalid or has expired")
    return shaped.group(1), _digest(token)


class LinkStore(Protocol):
    """Where link tokens live (only digests), and which users' addresses are verified.

    Contract: :meth:`issue` makes ``digest`` the user's one valid link of ``kind`` (earlier
    ones stop working) for ``ttl`` seconds; :meth:`consume` is atomic: of concurrent calls
    for one digest at most one gets the payload. Every key expires.
    """

    async def issue(
        self, kind: str, uid: str, digest: str, payload: Mapping[str, str], *, ttl: int
    ) -> None:
        """Store a link; ``payload`` comes back (with ``uid``) from :meth:`peek`."""
        ...

    async def peek(self, kind: str, uid: str, digest: str) -> dict[str, str] | None:
        """The payload of user ``uid``'s valid link, without using it up."""
        ...

    async def consume(self, kind: str, uid: str, digest: str) -> dict[str, str] | None:
        """Use the link up; its payload, or ``None`` when it was not (or no longer) valid."""
        ...

    async def mark_verified(self, uid: str, *, ttl: int) -> None:
        """Remember for ``ttl`` seconds that the user's address is verified (refreshes read
        it to fill the ``email_verified`` claim)."""
        ...


@dataclass(frozen=True, slots=True)
class MailLimits:
    """Mails that may be asked for per address (or account) and per client address."""

    per_address: Limit = Limit("mail-address", 5, 3600)
    per_ip: Limit = Limit("mail-ip", 30, 3600)


@dataclass(frozen=True, slots=True)
class Notices:
    """Which security notices are mailed (``TOKENWARD_NOTIFY_*``)."""

    new_device: bool = True
    password_changed: bool = True
    email_changed: bool = True
    refresh_reused: bool = True
    recovery_code_used: bool = True


def _when(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC")


class EmailFlows:
    """The e-mail flows of one deployment.

    Args:
        users: registration and password rules (the policy applies to resets).
        store: the user store.
        links: the link tokens.
        mailer: where mails go (off the request path).
        templates: the mail templates.
        throttle: the deployment's throttle (its limiter counts the mail limits, its login
            limits guard the password check of an e-mail change).
        sessions: to end a user's sessions on a reset.
        events: security events.
        base_url: the public URL the links point into (the issuer).
        limits: the mail limits.
        notices: which notices are mailed.
        verified_ttl: how long the "verified" marker lives (the longest session).
    """

    def __init__(
        self,
        *,
        users: Users,
        store: UserStore,
        links: LinkStore,
        mailer: Mailer,
        templates: Templates,
        throttle: Throttle,
        sessions: Sessions,
        events: SecurityEvents,
        base_url: str,
        limits: MailLimits | None = None,
        notices: Notices | None = None,
        verified_ttl: int = 7_776_000,
    ) -> None:
        self.users = users
        self.store = store
        self.links = links
        self.mailer = mailer
        self.templates = templates
        self.throttle = throttle
        self.limiter: RateLimiter = throttle.limiter
        self.sessions = sessions
        self.events = events
        self.base_url = base_url.rstrip("/")
        self.limits = limits or MailLimits()
        self.notices = notices or Notices()
        self.verified_ttl = verified_ttl
        self._background = Background("mail job", log, max_pending=MAX_PENDING)

    # -- machinery -----------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        self._background.spawn(work)

    async def drain(self) -> None:
        """Wait for the jobs pending now (tests; shutdown), then for the mail queue."""
        await self._background.settle()
        await self.mailer.idle()

    def link(self, page: str, token: str | None = None) -> str:
        """An absolute link to one of the pages (``/reset-password?token=...``)."""
        return f"{self.base_url}{page}" + ("" if token is None else f"?token={token}")

    async def _limit(self, *, address: str | None, ip: str, now: int) -> None:
        """Count one mail request against the address's and the client's limits.

        ``address`` is keyed by its :func:`~tokenward.users.email_key` digest, whether or not
        an account has it, so the answer never depends on an account existing.
        """
        checks = [(f"tw:{{rl:ip:{address_digest(ip)}}}:mail", self.limits.per_ip)]
        if address is not None:
            checks.append((f"tw:{{rl:a:{account_digest(address)}}}:mail", self.limits.per_address))
        decision = await self.limiter.acquire(checks, now=now, event=secrets.token_hex(8))
        if not decision.allowed:
            raise RateLimited(decision.retry_after, "too many mails asked for; retry later")

    def _send(self, template: str, to: str, values: Mapping[str, str]) -> None:
        self.mailer.submit(self.templates.render(template, to, values))

    async def _issue(self, kind: str, user: User, payload: Mapping[str, str], ttl: int) -> str:
        token, digest = new_link_token(user.id)
        await self.links.issue(kind, user.id, digest, payload, ttl=ttl)
        return token

    # -- verification --------------------------------------------------------------------

    async def send_verification(self, user: User) -> None:
        """Issue a verification link (superseding the previous one) and mail it."""
        token = await self._issue(VERIFY, user, {"email": _address(user.email)}, VERIFY_TTL)
        self._send("verify_email", user.email, {
            "email": user.email, "link": self.link("/verify-email", token),
            "hours": str(VERIFY_TTL // 3600),
        })  # fmt: skip

    def registered(self, user: User) -> None:
        """A new account: mail its verification link (in the background)."""
        self._spawn(self.send_verification(user))

    async def resend_for_user(self, uid: str, *, ip: str, now: int) -> None:
        """A signed-in user asks for a new verification link (throttled per account and
        client address); nothing is sent when the address is verified already."""
        user = await self.store.by_id(uid)
        if user is None or user.disabled:
            raise Forbidden("account not available")
        await self._limit(address=user.email, ip=ip, now=now)
        if not user.email_verified:
            self._spawn(self.send_verification(user))

    async def resend_for_address(self, email: str, *, ip: str, now: int) -> None:
        """Someone asks for a new verification link for ``email``: the same work and answer
        whether or not an account has it (and whether or not it is verified)."""
        address = normalize_email(email)
        await self._limit(address=address, ip=ip, now=now)
        user = await self.store.by_email(address)
        self._spawn(self._resend_job(user))

    async def _resend_job(self, user: User | None) -> None:
        if user is not None and not user.disabled and not user.email_verified:
            await self.send_verification(user)

    async def verify(self, token: str, *, client: Client, now: int) -> User:
        """Confirm an address with its link.

        Raises:
            LinkTokenInvalid: unknown, expired, used or superseded; or the account's
                address is no longer the one the link was sent to.
            Unavailable: a back end did not answer (the link still works afterwards).
        """
        uid, digest = _presented(token)
        payload = await self.links.peek(VERIFY, uid, digest)
        user = await self._user_of(payload)
        if payload is None or user is None or _address(user.email) != payload.get("email"):
            raise LinkTokenInvalid("the link is invalid or has expired")
        # Idempotent writes first, the token last: a back end failing half-way leaves the
        # link usable for a retry, and nothing else changes twice.
        if not user.email_verified and not await self.store.set_email_verified(
            user.id, user.email, now=now
        ):
            raise LinkTokenInvalid("the link is invalid or has expired")
        await self.links.mark_verified(user.id, ttl=self.verified_ttl)
        if await self.links.consume(VERIFY, user.id, digest) is None:
            raise LinkTokenInvalid("the link is invalid or has expired")
        self.events.email_verified(user.id, client=client, now=now)
        return User(**{**_fields(user), "email_verified": True})

    async def mark_verified(self, user: User, *, now: int) -> None:
        """An operator vouches for the address (``tokenward users verify``)."""
        if not user.email_verified:
            await self.store.set_email_verified(user.id, user.email, now=now)
        await self.links.mark_verified(user.id, ttl=self.verified_ttl)
        self.events.email_verified(user.id, client=("", "tokenward-cli"), now=now)

    # -- forgotten password --------------------------------------------------------------

    async def forgot(self, email: str, *, ip: str, now: int) -> None:
        """``POST /auth/password/forgot``: the same steps whether or not the account exists.

        Raises:
            PolicyError: ``email`` is not an address at all (says nothing about accounts).
            RateLimited: too many requests for this address or from this client.
            Unavailable: a back end did not answer.
        """
        address = normalize_email(email)
        await self._limit(address=address, ip=ip, now=now)
        user = await self.store.by_email(address)
        # One job either way: the link is issued and mailed after the answer, so neither
        # the answer nor its time tells whether there was anything to mail.
        self._spawn(self._forgot_job(user))

    async def _forgot_job(self, user: User | None) -> None:
        if user is None or user.disabled:
            return
        await self.send_reset(user)

    async def send_reset(self, user: User) -> str:
        """Issue a reset link (superseding every older one) and mail it; returns the link."""
        link = await self.reset_link(user)
        self._send("reset_password", user.email, {
            "email": user.email, "link": link, "minutes": str(RESET_TTL // 60),
        })  # fmt: skip
        return link

    async def reset_link(self, user: User) -> str:
        """A reset link for ``user``, not mailed (``tokenward users reset-link``)."""
        payload = {"email": _address(user.email), "epoch": str(user.credential_epoch)}
        token = await self._issue(RESET, user, payload, RESET_TTL)
        return self.link("/reset-password", token)

    async def reset(
        self, token: str, new_password: str, *, client: Client, now: int
    ) -> tuple[User, list[str]]:
        """Set a new password with a reset link; ends every session of the user.

        The order keeps a failure safe: the policy is checked before anything changes (422
        leaves the link usable); the sessions are ended before the password changes (Redis
        down: 503 with nothing changed); the password write is a compare-and-swap on the
        hash the link was checked against, so of two resets with one link exactly one
        wins; the sessions are ended again after it (a login that slipped in between); the
        link is used up last (it is dead anyway: the credential epoch moved).

        Raises:
            LinkTokenInvalid: unknown, expired, used or superseded, or the password changed
                since the link was sent (another reset won).
            PolicyError: the new password breaks the policy (the link still works).
            Unavailable: a back end did not answer.
        """
        uid, digest = _presented(token)
        payload = await self.links.peek(RESET, uid, digest)
        user = await self._user_of(payload)
        if (
            payload is None
            or user is None
            or user.disabled
            or _address(user.email) != payload.get("email")
            or str(user.credential_epoch) != payload.get("epoch")
        ):
            raise LinkTokenInvalid("the link is invalid or has expired")
        self.users.policy.check(new_password, email=user.email)
        ended = await self.sessions.end_all(
            user.id, keep=None, reason=EndReason.PASSWORD_CHANGED, now=now
        )
        try:
            updated = await self.users.reset_password(user, new_password, now=now)
        except Forbidden:
            raise LinkTokenInvalid("the link is invalid or has expired") from None
        ended += await self.sessions.end_all(
            user.id, keep=None, reason=EndReason.PASSWORD_CHANGED, now=now
        )
        try:
            await self.links.consume(RESET, user.id, digest)
        except TokenwardError:  # dead anyway: its epoch is behind the user's now
            log.warning("reset link not deleted; it expires on its own")
        if not user.email_verified:
            # The link reached the mailbox: that proves the address as a verification does.
            await self.store.set_email_verified(user.id, user.email, now=now)
            updated = User(**{**_fields(updated), "email_verified": True})
        self.events.password_reset(user.id, ended=len(ended), client=client, now=now)
        return updated, ended

    # -- e-mail change -------------------------------------------------------------------

    async def request_change(
        self, uid: str, new_email: str, password: str, *, ip: str, now: int
    ) -> str:
        """Check the password, then mail a confirmation link to ``new_email``; returns the
        normalised new address.

        Raises:
            InvalidCredentials: wrong password (counted by the login limits).
            PolicyError: ``new_email`` is not an address, or is the account's already.
            Conflict: another account has ``new_email``.
            RateLimited: too many mails asked for.
        """
        address = normalize_email(new_email)
        user = await self.store.by_id(uid)
        if user is None or user.disabled:
            raise Forbidden("account not available")
        async with self.throttle.login(user.email, ip, now=now) as ticket:
            try:
                await self.users.check_password(uid, password)
            except PolicyError:
                await ticket.refund()
                raise
            await ticket.succeeded(now=now)
        if email_key(address) == email_key(user.email):
            raise PolicyError("email", "that is the account's address already")
        await self._limit(address=user.email, ip=ip, now=now)
        if await self.store.by_email(address) is not None:
            raise Conflict("an account with this email already exists")
        token, digest = new_link_token(user.id)
        payload = {"email": _address(user.email), "new_email": _seal(token, address)}
        await self.links.issue(CHANGE, user.id, digest, payload, ttl=CHANGE_TTL)
        self._send("confirm_email_change", address, {
            "email": address, "link": self.link("/confirm-email", token),
            "hours": str(CHANGE_TTL // 3600),
        })  # fmt: skip
        return address

    async def confirm_change(self, token: str, *, client: Client, now: int) -> User:
        """Change the address with the link mailed to the new one; mails the old address.

        Raises:
            LinkTokenInvalid: unknown, expired, used or superseded, or the address changed
                since the link was sent.
            Conflict: another account took the new address meanwhile.
            Unavailable: a back end did not answer.
        """
        uid, digest = _presented(token)
        payload = await self.links.peek(CHANGE, uid, digest)
        user = await self._user_of(payload)
        if (
            payload is None
            or user is None
            or user.disabled
            or _address(user.email) != payload.get("email")
            or "new_email" not in payload
        ):
            raise LinkTokenInvalid("the link is invalid or has expired")
        new = _unseal(token, payload["new_email"])
        if not await self.store.set_email(user.id, new, expected_email=user.email, now=now):
            raise LinkTokenInvalid("the link is invalid or has expired")
        await self.links.mark_verified(user.id, ttl=self.verified_ttl)
        try:
            await self.links.consume(CHANGE, user.id, digest)
        except TokenwardError:  # dead anyway: the address it changes from is gone
            log.warning("e-mail change link not deleted; it expires on its own")
        self.events.email_changed(user.id, client=client, now=now)
        if self.notices.email_changed:
            self._send("notice_email_changed", user.email, {
                "email": user.email, "new_email": new, "when": _when(now),
                "forgot_link": self.link("/forgot-password"),
            })  # fmt: skip
        return User(**{**_fields(user), "email": new, "email_verified": True})

    # -- notices -------------------------------------------------------------------------

    def notice(self, event: SecurityEvent) -> None:
        """Mail the owner about ``event`` if it is one they are told about."""
        template = self._notice_template(event.kind)
        if template is not None and event.uid is not None:
            self._spawn(self._notice_job(template, event))

    def _notice_template(self, kind: EventKind) -> str | None:
        n = self.notices
        wanted = {
            EventKind.NEW_DEVICE: ("notice_new_device", n.new_device),
            EventKind.PASSWORD_CHANGED: ("notice_password_changed", n.password_changed),
            EventKind.PASSWORD_RESET: ("notice_password_reset", n.password_changed),
            EventKind.REFRESH_REUSED: ("notice_refresh_reused", n.refresh_reused),
            EventKind.RECOVERY_CODE_USED: ("notice_recovery_code_used", n.recovery_code_used),
        }.get(kind)
        return wanted[0] if wanted is not None and wanted[1] else None

    async def _notice_job(self, template: str, event: SecurityEvent) -> None:
        assert event.uid is not None  # noqa: S101 - checked by notice()
        user = await self.store.by_id(event.uid)
        if user is None or user.disabled:
            return
        if event.kind is EventKind.NEW_DEVICE and event.at - user.created_at < NEW_ACCOUNT_QUIET:
            return
        self._send(template, user.email, {
            "email": user.email, "when": _when(event.at), "ip": event.ip or "unknown",
            "device": event.user_agent[:120] or "an unknown device",
            "forgot_link": self.link("/forgot-password"), "account_link": self.link("/account"),
            "left": str(event.detail.get("left", "")),
        })  # fmt: skip

    async def _user_of(self, payload: Mapping[str, str] | None) -> User | None:
        if payload is None or "uid" not in payload:
            return None
        return await self.store.by_id(payload["uid"])


def _fields(user: User) -> dict[str, Any]:
    return {name: getattr(user, name) for name in User.__dataclass_fields__}


class NoticeSink:
    """An :class:`~tokenward.events.EventSink` that passes every event on to ``inner`` and
    tells :meth:`EmailFlows.notice` about it: the notices follow the security events, so no
    code that records events needs to know about mail.

    ``flows`` is set once the flows exist (they need the events, which need this sink).
    """

    def __init__(self, inner: EventSink) -> None:
        self.inner = inner
        self.flows: EmailFlows | None = None

    async def append(
        self, event: SecurityEvent, *, device: str | None = None, memory: int = DEVICE_MEMORY
    ) -> bool | None:
        """See :meth:`tokenward.events.EventSink.append`; the notice goes out even when the
        store failed (the owner must hear about theft whatever Redis does)."""
        if self.flows is not None:
            self.flows.notice(event)
        return await self.inner.append(event, device=device, memory=memory)

    async def for_user(self, uid: str, *, now: int, limit: int = 100) -> list[SecurityEvent]:
        """See :meth:`tokenward.events.EventSink.for_user`."""
        return await self.inner.for_user(uid, now=now, limit=limit)

    async def recent(
        self, *, limit: int = 100, kinds: Sequence[str] = (), before: str | None = None
    ) -> list[SecurityEvent]:
        """See :meth:`tokenward.events.EventSink.recent`."""
        return await self.inner.recent(limit=limit, kinds=kinds, before=before)
