"""Security events: what happened to an account, for its owner and for operators.

Logins (good and bad), logins from a new device, a replayed refresh token (theft),
throttling, password changes and ended sessions are recorded as :class:`SecurityEvent`
values. :class:`SecurityEvents` writes each one to an :class:`EventSink` (the Redis adapter
keeps each user's routine and critical events capped apart, with a TTL, and a global stream
for operators) and as one structured log line on the ``tokenward.events`` logger.

Some events are *security-critical* (:attr:`SecurityEvent.critical`): a login from a new
device, a replayed refresh token, a password change, sessions ended by an operator or by
theft. Sinks keep them apart from the routine ones (logins, failures, logouts, throttling),
under a cap of their own, because routine events are cheap to make in bulk: an intruder's
100 logins used to push their own ``login.new-device`` out of the owner's capped history.
Only a newer critical event can push a critical one out, and each of those is itself an
alert the owner sees.

No event carries a password, a token, a CSRF token or an email: accounts that may not exist
are named by :func:`~tokenward.throttle.account_digest`, users by id.

Recording is off the request path. The HTTP adapter calls the typed methods (which return
at once); the work (resolving an email to a user, checking the device, writing the
streams) runs in tracked background tasks. Two things follow: a failed login costs the same
whether or not the account exists (the account lookup and the per-user write happen after
the response), and a broken event store never fails a request (the loss is logged).
:meth:`SecurityEvents.drain` waits for pending writes (read-your-writes in one process).
"""

from __future__ import annotations

import enum
import hashlib
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tokenward.background import Background
from tokenward.errors import TokenInvalid, TokenwardError
from tokenward.refresh import RefreshToken
from tokenward.throttle import LockNotice, account_digest, address_bucket
from tokenward.users import UserStore, normalize_email

__all__ = [
    "CRITICAL_END_REASONS",
    "CRITICAL_KINDS",
    "DEVICE_MEMORY",
    "EventKind",
    "EventSink",
    "SecurityEvent",
    "SecurityEvents",
    "device_digest",
]

log = logging.getLogger("tokenward.events")

#: A (user agent, address) pair unseen for this long makes the next login a "new device".
DEVICE_MEMORY = 90 * 86_400
#: Pending background writes past this are dropped (and the drop logged): back-pressure.
MAX_PENDING = 10_000
#: Seconds a read (:meth:`SecurityEvents.for_user`) waits for pending writes at most.
READ_WAIT = 2.0


class EventKind(enum.StrEnum):
    """What happened."""

    REGISTERED = "account.registered"
    LOGIN_SUCCEEDED = "login.succeeded"
    LOGIN_FAILED = "login.failed"
    NEW_DEVICE = "login.new-device"
    THROTTLED = "throttled"
    REFRESH_REUSED = "refresh.reused"
    REFRESH_REPLAYED = "refresh.grace-replay"
    PASSWORD_CHANGED = "password.changed"
    PASSWORD_RESET = "password.reset"
    SESSIONS_ENDED = "sessions.ended"
    EMAIL_VERIFIED = "email.verified"
    EMAIL_CHANGED = "email.changed"
    MFA_ENABLED = "mfa.enabled"
    MFA_REMOVED = "mfa.removed"
    MFA_RESET = "mfa.reset"
    MFA_FAILED = "mfa.failed"
    RECOVERY_CODE_USED = "mfa.recovery-code-used"
    RECOVERY_CODES_REGENERATED = "mfa.recovery-codes-regenerated"
    REAUTHENTICATED = "login.reauthenticated"
    PASSKEY_ADDED = "mfa.passkey-added"
    PASSKEY_REMOVED = "mfa.passkey-removed"
    PASSKEY_USED = "mfa.passkey-used"
    PASSKEY_CLONE_SUSPECTED = "mfa.passkey-clone-suspected"


#: Kinds always security-critical (see :attr:`SecurityEvent.critical`).
CRITICAL_KINDS = frozenset(
    {
        EventKind.NEW_DEVICE,
        EventKind.REFRESH_REUSED,
        EventKind.PASSWORD_CHANGED,
        EventKind.PASSWORD_RESET,
        EventKind.EMAIL_CHANGED,
        EventKind.MFA_ENABLED,
        EventKind.MFA_REMOVED,
        EventKind.MFA_RESET,
        EventKind.RECOVERY_CODE_USED,
        EventKind.RECOVERY_CODES_REGENERATED,
        EventKind.PASSKEY_ADDED,
        EventKind.PASSKEY_REMOVED,
        EventKind.PASSKEY_CLONE_SUSPECTED,
    }
)
#: ``sessions.ended`` reasons that are security-critical: an operator disabled the account,
#: theft was detected, the password was changed. Logouts, revocations from the owner's own
#: sessions page and evictions are routine: anyone signed in can make them by the hundred.
CRITICAL_END_REASONS = frozenset({"user-disabled", "refresh-reused", "password-changed"})


@dataclass(frozen=True, slots=True)
class SecurityEvent:
    """One thing that happened to an account (or to an address, for throttling).

    Attributes:
        kind: what happened.
        at: when, seconds since the epoch.
        uid: the user, when known (``None`` for a failed login naming no account).
        sid: the session concerned, if any.
        ip: the client address (after trusted proxies).
        user_agent: the client's ``User-Agent``, truncated.
        detail: small extra facts (``reason``, ``limit``, ``count``, ``account``); never
            a secret.
        id: the store's id for the event (set on events read back).
    """

    kind: EventKind
    at: int
    uid: str | None = None
    sid: str | None = None
    ip: str = ""
    user_agent: str = ""
    detail: Mapping[str, str | int] = field(default_factory=dict, hash=False)
    id: str = ""

    @property
    def critical(self) -> bool:
        """Whether the owner must still see this after any amount of routine activity.

        The kinds of :data:`CRITICAL_KINDS`, and ``sessions.ended`` for a reason of
        :data:`CRITICAL_END_REASONS` or caused by an operator (the admin CLI records no
        client address; every HTTP request has one).
        """
        if self.kind in CRITICAL_KINDS:
            return True
        if self.kind is EventKind.SESSIONS_ENDED:
            return self.detail.get("reason") in CRITICAL_END_REASONS or not self.ip
        return False

    def fields(self) -> dict[str, Any]:
        """A flat, JSON-ready view (for log lines and responses)."""
        return {
            "kind": self.kind.value,
            "at": self.at,
            "uid": self.uid,
            "sid": self.sid,
            "ip": self.ip,
            "user_agent": self.user_agent,
            "detail": dict(self.detail),
        }


class EventSink(Protocol):
    """Where events are kept, and the devices each user logged in from recently.

    Contract: :meth:`append` adds the event to the global (operators') stream and, when it
    has a ``uid``, to that user's history; all are capped and expire (every key has a TTL).
    A user's critical events (:attr:`SecurityEvent.critical`) are capped apart from the
    routine ones, so no number of routine events pushes one out. Reads return the newest
    first.
    """

    async def append(
        self, event: SecurityEvent, *, device: str | None = None, memory: int = DEVICE_MEMORY
    ) -> bool | None:
        """Store one event.

        With ``device`` (a :func:`device_digest`) and an event that has a ``uid``, also
        record that device for the user, in the same round trip where the store can, and
        return whether it was seen within ``memory`` seconds before. Atomic: of two
        concurrent first logins from one device, one is "new". Without, return ``None``.
        When the event cannot be stored (this raises), a device found new is not kept as
        seen: the next login from it is still new.
        """
        ...

    async def for_user(self, uid: str, *, now: int, limit: int = 100) -> list[SecurityEvent]:
        """The user's own recent events, newest first: the newest ``limit`` routine ones and
        the newest ``limit`` critical ones, merged."""
        ...

    async def recent(
        self, *, limit: int = 100, kinds: Sequence[str] = (), before: str | None = None
    ) -> list[SecurityEvent]:
        """The global stream, newest first (for operators), optionally filtered by kind."""
        ...


def device_digest(user_agent: str, ip: str) -> str:
    """Names a (user agent, address) pair; IPv6 addresses count by their /64."""
    raw = f"{user_agent}\x00{address_bucket(ip)}".encode()
    return hashlib.sha256(raw).hexdigest()[:32]


Client = tuple[str, str]
"""``(ip, user_agent)`` of a request."""


class SecurityEvents:
    """Records security events to a sink and to the log, off the request path.

    Args:
        sink: where events (and the devices of "new device" events) are kept.
        users: used to name the user of a failed login when the account exists.
        device_memory: see :data:`DEVICE_MEMORY`.
        observer: told every event as it is written (metrics); must not block or raise.
        read_wait: seconds :meth:`for_user` waits at most for the writes pending when it is
            called (see :data:`READ_WAIT`); past that it reads what has landed.
    """

    def __init__(
        self,
        sink: EventSink,
        users: UserStore,
        *,
        device_memory: int = DEVICE_MEMORY,
        observer: Callable[[SecurityEvent], None] | None = None,
        read_wait: float = READ_WAIT,
    ) -> None:
        self.sink = sink
        self.users = users
        self.device_memory = device_memory
        self.observer = observer
        self.read_wait = read_wait
        self._background = Background(
            "security event", log, max_pending=MAX_PENDING, failed="not stored"
        )

    # -- machinery -----------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, object]) -> None:
        self._background.spawn(work)

    async def _write(self, event: SecurityEvent, *, device: str | None = None) -> bool | None:
        if self.observer is not None:
            self.observer(event)
        log.info(event.kind.value, extra={"event": event.fields()})
        return await self.sink.append(event, device=device, memory=self.device_memory)

    def record(self, event: SecurityEvent) -> None:
        """Record ``event`` (log line and sink), in the background."""
        self._spawn(self._write(event))

    async def drain(self, *, at_most: float | None = None) -> None:
        """Wait until every event recorded so far has been written.

        Only the writes pending when called are awaited (events recorded meanwhile are not),
        so steady traffic cannot keep the caller waiting; ``at_most`` (seconds) bounds the
        wait further. A write still pending then goes on in the background (not cancelled, as
        ``asyncio.timeout`` would); without ``at_most``, cancelling the caller
        (``asyncio.wait_for`` at shutdown) cancels the pending writes.
        """
        await self._background.wait(at_most=at_most)

    async def for_user(self, uid: str, *, now: int, limit: int = 100) -> list[SecurityEvent]:
        """The user's own recent events, newest first (after the writes pending when called
        land, or :attr:`read_wait` seconds pass): the newest ``limit`` routine and the newest
        ``limit`` critical ones (see :meth:`EventSink.for_user`)."""
        await self.drain(at_most=self.read_wait)
        return await self.sink.for_user(uid, now=now, limit=limit)

    # -- what the adapters report --------------------------------------------------------

    def registered(self, uid: str, *, client: Client, now: int) -> None:
        """An account was created."""
        self.record(SecurityEvent(EventKind.REGISTERED, now, uid, None, *client))

    def login_succeeded(self, uid: str, sid: str, *, client: Client, now: int) -> None:
        """A login opened session ``sid``; also reports a new device when it is one."""

        async def work() -> None:
            # The device check rides with the event: one round trip for a known device.
            event = SecurityEvent(EventKind.LOGIN_SUCCEEDED, now, uid, sid, *client)
            if not await self._write(event, device=device_digest(client[1], client[0])):
                await self._write(SecurityEvent(EventKind.NEW_DEVICE, now, uid, sid, *client))

        self._spawn(work())

    def login_failed(self, email: str, *, client: Client, now: int) -> None:
        """A login named ``email`` with a wrong password, or named no account at all."""

        async def work() -> None:
            uid = await self._uid_of(email)
            detail = {"account": account_digest(email)}
            await self._write(
                SecurityEvent(EventKind.LOGIN_FAILED, now, uid, None, *client, detail=detail)
            )

        self._spawn(work())

    def throttled(self, notice: LockNotice) -> None:
        """A throttle lock began (one event per lock, not per refused request)."""

        async def work() -> None:
            detail: dict[str, str | int] = {
                "limit": notice.limit, "retry_after": notice.retry_after,
            }  # fmt: skip
            uid = None
            if notice.email is not None:
                detail["account"] = account_digest(notice.email)
                uid = await self._uid_of(notice.email)
            event = SecurityEvent(EventKind.THROTTLED, notice.at, uid, None, notice.ip,
                                  detail=detail)  # fmt: skip
            await self._write(event)

        self._spawn(work())

    def refresh_reused(self, token: str, *, client: Client, now: int) -> None:
        """A replaced refresh token came back; its session has been ended."""
        try:
            presented = RefreshToken.parse(token)
        except TokenInvalid:
            return
        self.record(
            SecurityEvent(EventKind.REFRESH_REUSED, now, presented.uid, presented.sid, *client)
        )

    def refresh_replayed(self, token: str, *, client: Client, now: int) -> None:
        """A replaced refresh token came back inside its grace window and was handed the
        current one (another tab, a retry; or a second holder of the session's tokens).
        Reported at most once per session per hour, so tabs do not flood the history."""
        try:
            presented = RefreshToken.parse(token)
        except TokenInvalid:
            return
        self.record(
            SecurityEvent(EventKind.REFRESH_REPLAYED, now, presented.uid, presented.sid, *client)
        )

    def refresh_limited(self, token: str, retry_after: int, *, client: Client, now: int) -> None:
        """The per-session refresh limit began refusing this session (once per window)."""
        try:
            presented = RefreshToken.parse(token)
        except TokenInvalid:
            return
        detail: dict[str, str | int] = {"limit": "refresh-session", "retry_after": retry_after}
        self.record(
            SecurityEvent(
                EventKind.THROTTLED, now, presented.uid, presented.sid, *client, detail=detail
            )
        )

    def password_changed(
        self, uid: str, sid: str | None, *, ended: int, client: Client, now: int
    ) -> None:
        """The password of ``uid`` was changed from session ``sid``; ``ended`` others ended."""
        detail = {"sessions_ended": ended}
        self.record(
            SecurityEvent(EventKind.PASSWORD_CHANGED, now, uid, sid, *client, detail=detail)
        )

    def password_reset(self, uid: str, *, ended: int, client: Client, now: int) -> None:
        """The password of ``uid`` was reset with an e-mailed link; ``ended`` sessions ended."""
        detail = {"sessions_ended": ended}
        self.record(SecurityEvent(EventKind.PASSWORD_RESET, now, uid, None, *client,
                                  detail=detail))  # fmt: skip

    def email_verified(self, uid: str, *, client: Client, now: int) -> None:
        """The owner of ``uid`` proved they receive mail at the account's address."""
        self.record(SecurityEvent(EventKind.EMAIL_VERIFIED, now, uid, None, *client))

    def email_changed(self, uid: str, *, client: Client, now: int) -> None:
        """The address of ``uid`` was changed (confirmed from the new address). The
        addresses themselves are not recorded: no event carries one."""
        self.record(SecurityEvent(EventKind.EMAIL_CHANGED, now, uid, None, *client))

    def mfa(
        self,
        kind: EventKind,
        uid: str,
        sid: str | None,
        *,
        client: Client,
        now: int,
        detail: Mapping[str, str | int] | None = None,
    ) -> None:
        """A second-factor event (``mfa.*``, ``login.reauthenticated``) of ``uid``."""
        self.record(SecurityEvent(kind, now, uid, sid, *client, detail=dict(detail or {})))

    def sessions_ended(
        self, uid: str, sids: Sequence[str], reason: str, *, client: Client, now: int
    ) -> None:
        """Sessions of ``uid`` were ended: by the user (logout, logout-all, revocation), by an
        operator (``tokenward users disable``, ``sessions revoke``) or by a login past the
        session limit (``session-limit``)."""
        detail: dict[str, str | int] = {"reason": reason, "count": len(sids)}
        sid = sids[0] if len(sids) == 1 else None
        self.record(SecurityEvent(EventKind.SESSIONS_ENDED, now, uid, sid, *client, detail=detail))

    async def _uid_of(self, email: str) -> str | None:
        try:
            user = await self.users.by_email(normalize_email(email))
        except TokenwardError:  # not an address (PolicyError), or the database is down
            return None
        return None if user is None else user.id
