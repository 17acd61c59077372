"""Sessions: opening, rotating, checking and ending them. Framework-free.

A session is one login on one device. Its record lives in a :class:`SessionStore` with a TTL
of ``min(idle timeout, time left until the absolute limit)``, so an idle or over-age session
simply disappears; the TTL slides on every refresh.

:class:`Sessions` holds the rules (lifetimes, grace, limits, token issue); the store offers
atomic verbs (:meth:`SessionStore.rotate` is one compare-and-swap), and
:class:`~tokenward.revocation.SessionCache` spares the hot path a store round trip per
request while staying coherent with it.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import ipaddress
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol, TypedDict

from tokenward.authn import AuthLevel, AuthLevelStore, password_level
from tokenward.csrf import csrf_digest, new_csrf_token
from tokenward.errors import (
    CsrfError,
    NotFound,
    RefreshLimited,
    RefreshReused,
    SessionEnded,
    TokenInvalid,
)
from tokenward.refresh import RefreshToken, new_salt
from tokenward.revocation import SessionCache
from tokenward.tokens import AccessClaims, AccessTokens

__all__ = [
    "EndReason",
    "Issued",
    "Principal",
    "RefreshUse",
    "RotateOutcome",
    "RotateResult",
    "SessionInfo",
    "SessionPolicy",
    "SessionRecord",
    "SessionState",
    "SessionStore",
    "Sessions",
    "UserRef",
    "client_fingerprint",
    "new_session_id",
]

log = logging.getLogger("tokenward.sessions")


_REUSED_DETAIL = {
    "late": "a replaced refresh token was presented again; the session was ended",
    "client": "a replaced refresh token was replayed by another client; the session was ended",
    "replays": "a replaced refresh token was replayed too often; the session was ended",
}


def new_session_id() -> str:
    """128 random bits, base64url (22 characters)."""
    return secrets.token_urlsafe(16)


def client_fingerprint(ip: str, user_agent: str) -> str:
    """Names the client of a refresh: its user agent and address prefix (IPv4 /24, IPv6 /64).

    Two tabs of one browser share it; a thief replaying a stolen token from elsewhere does
    not. A prefix rather than the address, so a client whose last octet changes between
    two concurrent requests is not mistaken for a thief. 64 bits of SHA-256: only compared
    for equality, and not a secret (it is stored in the session record).
    """
    return _fingerprint(ip, user_agent)


@functools.lru_cache(maxsize=4096)
def _fingerprint(ip: str, user_agent: str) -> str:
    # Cached: a client refreshes again and again, and the address parsing is most of the cost.
    try:
        address = ipaddress.ip_address(ip)
        bits = 24 if address.version == 4 else 64
        prefix = str(ipaddress.ip_network(f"{address}/{bits}", strict=False))
    except ValueError:
        prefix = ip
    return hashlib.sha256(f"{user_agent}\x00{prefix}".encode()).hexdigest()[:16]


class EndReason(enum.StrEnum):
    """Why a session ended; kept with the ended-session record shown to its owner."""

    LOGOUT = "logout"
    LOGOUT_ALL = "logout-all"
    REVOKED = "revoked"
    REFRESH_REUSED = "refresh-reused"
    PASSWORD_CHANGED = "password-changed"
    EVICTED = "session-limit"
    USER_DISABLED = "user-disabled"
    #: a login from a browser that still held this session's refresh cookie
    REPLACED = "replaced"


@dataclass(frozen=True, slots=True)
class UserRef:
    """A user as an app sees it: id, e-mail address, when the account was made.

    :meth:`Sessions.open` stores only ``id`` and ``created_at`` with the session: the
    address stays in the user store (it is personal data, and a session record must not
    leak it), so whatever shows it reads the user by id.
    """

    id: str
    email: str
    created_at: int
    #: goes into the access tokens' ``email_verified`` claim
    email_verified: bool = False


@dataclass(frozen=True, slots=True)
class SessionState:
    """What the hot path needs to accept a request of a session (no e-mail address: read it
    from the user store, by ``uid``, where it is needed)."""

    uid: str
    user_created_at: int
    csrf_digest: str
    created_at: int
    #: when the record will expire if nothing refreshes it (min of idle and absolute)
    expires_at: int


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """Everything stored about a session except secrets (for listings)."""

    sid: str
    uid: str
    created_at: int
    last_used_at: int
    expires_at: int
    absolute_expires_at: int
    ip: str
    user_agent: str


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A session as the owner sees it in ``GET /auth/sessions``."""

    record: SessionRecord
    current: bool


class RotateOutcome(enum.Enum):
    """What :meth:`SessionStore.rotate` did."""

    ROTATED = "rotated"
    GRACE = "grace"
    REUSED = "reused"
    UNKNOWN = "unknown"
    MISSING = "missing"
    CSRF = "csrf"
    LIMITED = "limited"
    #: the record could not be read as a session; the store has deleted it
    CORRUPT = "corrupt"


class RefreshUse(enum.Enum):
    """What :meth:`SessionStore.end_by_refresh` did with a presented refresh token."""

    #: the current token, or a replaced one inside its grace (the session was ended, unless
    #: no reason was given)
    VALID = "valid"
    #: a replaced token after its grace: the session was ended as ``refresh-reused``
    REUSED = "reused"
    MISSING = "missing"
    UNKNOWN = "unknown"
    CSRF = "csrf"
    CORRUPT = "corrupt"


@dataclass(frozen=True, slots=True)
class RotateResult:
    """The outcome of a rotation, with what the caller needs to answer.

    ``salts`` is set for ``GRACE``: derive the existing successor by applying them in order
    to the presented token (one salt for the token just replaced, more for an older token
    still inside its grace window); ``ttl`` is the
    session's remaining life for ``ROTATED`` and ``GRACE``; ``retry_after`` for ``LIMITED``.
    """

    outcome: RotateOutcome
    state: SessionState | None = None
    salts: tuple[str, ...] = ()
    ttl: int = 0
    retry_after: int = 0
    #: for ``LIMITED``: the first refusal of this rate window (report it once)
    first_refusal: bool = False
    #: for ``GRACE``: report this replay (at most one per session per report interval)
    report: bool = False
    #: for ``REUSED``: ``late`` (after the grace), ``client`` (a grace replay from another
    #: client than the one that rotated) or ``replays`` (too many grace replays)
    why: str = ""
    #: for ``ROTATED`` and ``GRACE``, read in the same step: whether the user's address is
    #: verified, and the session's stored second-factor level (``""``: a password session)
    email_verified: bool = False
    level: str = ""


class SessionStore(Protocol):
    """Where sessions live. Every method is one atomic operation on the back end.

    Concurrency contract: ``create``, ``rotate``, ``end`` and ``end_all`` are linearizable
    per user. ``rotate`` is a compare-and-swap on the current refresh digest: of N
    concurrent callers presenting the current token exactly one gets ``ROTATED`` and the
    others ``GRACE`` with the salts that lead to the same successor. Nothing ever
    re-creates an ended session: a ``rotate`` racing an ``end`` either completes before it
    (and the end still wins) or finds the record gone (``MISSING``). Every ended session
    is announced to the invalidation feed in the same atomic step.
    """

    async def create(
        self,
        record: SessionRecord,
        state: SessionState,
        *,
        refresh_digest: str,
        ttl: int,
        max_sessions: int,
        index_ttl: int,
        verified_ttl: int = 0,
    ) -> list[str]:
        """Store a new session; end the least recently used ones past ``max_sessions``.

        ``verified_ttl``: when above 0, renew the user's "e-mail verified" marker (what a
        rotation reads for the ``email_verified`` claim) for that many seconds.

        Returns the ids of the sessions it ended.
        """
        ...

    async def rotate(
        self,
        uid: str,
        sid: str,
        *,
        presented_digest: str,
        salt: str,
        successor_digest: str,
        csrf_digest: str | None,
        now: int,
        grace: int,
        idle_ttl: int,
        rate_limit: int,
        rate_window: int,
        client: str = "",
        grace_replays: int = 32,
        report_every: int = 3600,
    ) -> RotateResult:
        """Replace the current refresh digest, or recognise a replay or a reuse.

        A rotation remembers ``client`` (a :func:`client_fingerprint`; ``""`` checks
        nothing). A grace replay from another client, or past ``grace_replays`` replays
        since the rotation, is a reuse; a grace replay is flagged ``report`` at most once
        every ``report_every`` seconds.
        """
        ...

    async def end_by_refresh(
        self,
        uid: str,
        sid: str,
        *,
        presented_digest: str,
        csrf_digest: str | None,
        reason: EndReason | None,
        now: int,
        grace: int,
    ) -> RefreshUse:
        """End the session whose refresh token this is, with ``reason`` (``None``: only
        say whether the token is valid), or as ``refresh-reused`` when it is a replaced
        token past its grace."""
        ...

    async def rekey(
        self, uid: str, sid: str, *, refresh_digest: str, csrf_digest: str, now: int
    ) -> RotateResult:
        """Give a live session a new refresh digest and CSRF digest; every earlier refresh
        token becomes an ancestor (theft if presented again). ``ROTATED`` with the state,
        or ``MISSING`` / ``CORRUPT``."""
        ...

    async def get(self, uid: str, sid: str, *, now: int) -> SessionState | None:
        """The state of a live session, or ``None`` when it has ended."""
        ...

    async def end(self, uid: str, sid: str, reason: EndReason, *, now: int) -> bool | None:
        """End one session: ``True``; ``None`` if it had already ended for ``reason`` (a
        retry: as durable as the first ending before it returns); ``False`` otherwise."""
        ...

    async def end_all(
        self, uid: str, *, keep: str | None, reason: EndReason, now: int
    ) -> list[str]:
        """End every session of a user but ``keep``; returns the ids ended."""
        ...

    async def list(self, uid: str, *, now: int) -> list[SessionRecord]:
        """The user's live sessions, most recently used first."""
        ...

    async def matches_refresh(self, uid: str, sid: str, digest: str) -> bool:
        """Whether ``digest`` is the session's current or just-replaced refresh digest."""
        ...


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """The lifetimes and limits of sessions (see the ``TOKENWARD_*`` settings)."""

    idle_ttl: int = 2_592_000
    max_ttl: int = 7_776_000
    grace: int = 10
    max_sessions: int = 100
    refresh_rate_limit: int = 30
    refresh_rate_window: int = 60
    #: grace replays allowed between two rotations (tabs, parallel requests of one client);
    #: one more is theft
    grace_replays: int = 32
    #: at most one ``refresh.grace-replay`` event per session per this many seconds
    grace_report_interval: int = 3600

    def __post_init__(self) -> None:
        for name in (
            "idle_ttl",
            "max_ttl",
            "max_sessions",
            "refresh_rate_limit",
            "refresh_rate_window",
            "grace_replays",
            "grace_report_interval",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.grace < 0:
            raise ValueError("grace must not be negative")


@dataclass(frozen=True, slots=True)
class Issued:
    """The tokens handed out by a login or a refresh. ``repr`` hides the secrets."""

    uid: str
    user_created_at: int
    sid: str
    access_token: str
    access_claims: AccessClaims
    refresh_token: str
    #: the session's remaining life, seconds (refresh cookie Max-Age, ``refresh_expires_in``)
    refresh_expires_in: int
    session_expires_at: int
    #: set on login; ``None`` on refresh, where the client keeps the one it has
    csrf_token: str | None
    #: on login, the user's sessions it ended to stay within ``max_sessions``
    evicted: tuple[str, ...] = ()
    #: on refresh, a grace replay that should be reported (a security event)
    report_replay: bool = False
    #: the user's address: set on login (the user is at hand), ``None`` on refresh and
    #: re-key (the session record does not hold it)
    email: str | None = None

    def __repr__(self) -> str:
        return f"Issued(uid={self.uid!r}, sid={self.sid!r}, tokens=<hidden>)"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated request: the verified claims and the live session's state."""

    claims: AccessClaims
    state: SessionState

    @property
    def uid(self) -> str:
        """The user id."""
        return self.claims.sub

    @property
    def sid(self) -> str:
        """The session id."""
        return self.claims.sid


class _Carried(TypedDict):
    email_verified: bool | None
    level: AuthLevel


class Sessions:
    """The session rules, over a store, an access-token issuer and a coherent cache."""

    def __init__(
        self,
        store: SessionStore,
        tokens: AccessTokens,
        cache: SessionCache,
        policy: SessionPolicy,
        levels: AuthLevelStore | None = None,
    ) -> None:
        self.store = store
        self.tokens = tokens
        self.cache = cache
        self.policy = policy
        #: whether the tokens a refresh or a re-key issues carry ``email_verified`` (the
        #: store reads the user's marker with the change; a login has the user at hand)
        self.email_verified_claim = False
        #: where the ``amr``/``auth_time`` of second-factor and stepped-up sessions live;
        #: ``None`` (MFA off): every session is a password session
        self.levels = levels

    async def open(
        self,
        user: UserRef,
        *,
        ip: str,
        user_agent: str,
        now: int,
        level: AuthLevel | None = None,
    ) -> Issued:
        """Start a session for an authenticated user; may end their least recently used one.

        ``level``: how the user authenticated, when not by a password alone (stored before
        the session exists, so no refresh can ever issue a token without it).
        """
        sid = new_session_id()
        if level is not None and self.levels is not None:
            await self.levels.put_level(user.id, sid, level, ttl=self.policy.max_ttl)
        refresh = RefreshToken.new(user.id, sid)
        csrf = new_csrf_token()
        ttl = min(self.policy.idle_ttl, self.policy.max_ttl)
        record = SessionRecord(
            sid=sid,
            uid=user.id,
            created_at=now,
            last_used_at=now,
            expires_at=now + ttl,
            absolute_expires_at=now + self.policy.max_ttl,
            ip=ip[:64],
            user_agent=user_agent[:256],
        )
        state = SessionState(
            uid=user.id,
            user_created_at=user.created_at,
            csrf_digest=csrf_digest(csrf),
            created_at=now,
            expires_at=now + ttl,
        )
        evicted = await self.store.create(
            record,
            state,
            refresh_digest=refresh.digest,
            ttl=ttl,
            max_sessions=self.policy.max_sessions,
            index_ttl=self.policy.max_ttl,
            # The marker outlives the longest session, so a rotation can always read it.
            verified_ttl=self.policy.max_ttl if user.email_verified else 0,
        )
        self.cache.forget(evicted)
        return self._issued(
            state, sid, refresh, ttl, now, csrf, evicted, email=user.email,
            email_verified=user.email_verified, level=level,
        )  # fmt: skip

    async def refresh(
        self,
        token: str,
        *,
        csrf_token: str | None,
        now: int,
        client: tuple[str, str] | None = None,
    ) -> Issued:
        """Rotate a refresh token and issue a new access token.

        Args:
            token: the presented refresh token.
            csrf_token: in cookie mode, the (already double-submit checked) CSRF token;
                it must belong to the session. ``None`` in bearer mode.
            now: the current time.
            client: ``(ip, user agent)`` of the caller. A grace replay is granted only to
                the client that made the rotation (see :func:`client_fingerprint`);
                ``None`` skips that check (the core used without HTTP).

        Raises:
            TokenInvalid: malformed, or not this session's token.
            SessionEnded: the session is gone (expired, logged out).
            RefreshReused: a replaced token came back after the grace window; the session
                has just been ended.
            CsrfError: the CSRF token is not this session's.
            RefreshLimited: too many rotations of this session (a :class:`RateLimited`).
        """
        presented = RefreshToken.parse(token)
        salt = new_salt()
        candidate = presented.successor(salt)
        result = await self.store.rotate(
            presented.uid,
            presented.sid,
            presented_digest=presented.digest,
            salt=salt,
            successor_digest=candidate.digest,
            csrf_digest=None if csrf_token is None else csrf_digest(csrf_token),
            now=now,
            grace=self.policy.grace,
            idle_ttl=self.policy.idle_ttl,
            rate_limit=self.policy.refresh_rate_limit,
            rate_window=self.policy.refresh_rate_window,
            client="" if client is None else client_fingerprint(*client),
            grace_replays=self.policy.grace_replays,
            report_every=self.policy.grace_report_interval,
        )
        outcome = result.outcome
        if outcome is RotateOutcome.ROTATED or outcome is RotateOutcome.GRACE:
            assert result.state is not None  # noqa: S101 - the store's contract
            successor = candidate
            if outcome is RotateOutcome.GRACE:
                successor = presented
                for step in result.salts:
                    successor = successor.successor(step)
            self.cache.forget([presented.sid])
            # Read by the rotation itself: nothing after the commit can fail it (no 503
            # for a refresh that happened) and the refresh stays one round trip.
            issued = self._issued(
                result.state, presented.sid, successor, result.ttl, now, None,
                **self._carried(result),
            )  # fmt: skip
            if result.report:
                issued = replace(issued, report_replay=True)
            return issued
        if outcome is RotateOutcome.REUSED:
            self.cache.forget([presented.sid])
            raise RefreshReused(_REUSED_DETAIL.get(result.why, _REUSED_DETAIL["late"]))
        if outcome is RotateOutcome.CSRF:
            raise CsrfError("CSRF token does not belong to this session")
        if outcome is RotateOutcome.LIMITED:
            raise RefreshLimited(result.retry_after, first=result.first_refusal)
        if outcome is RotateOutcome.MISSING or outcome is RotateOutcome.CORRUPT:
            self.cache.forget([presented.sid])
            raise SessionEnded("the session has ended")
        raise TokenInvalid("refresh token not recognised")

    async def owner_of_refresh(
        self, token: str, *, now: int, ended: bool = False
    ) -> tuple[str, str]:
        """The (user id, session id) of a live session whose refresh token this is.

        Accepts the current token and a replaced one still inside its grace window; used by
        logout. A replaced token after its grace is theft, judged as by :meth:`refresh`: the
        session is ended as ``refresh-reused`` and :class:`RefreshReused` raised, so a thief
        cannot pass the replay off as a plain logout.

        Args:
            ended: raise :class:`SessionEnded` rather than :class:`TokenInvalid` when the
                token names a session that is no longer there (whose token it was cannot be
                checked any more): a logout retried after a 503 had in fact ended it.

        Raises:
            TokenInvalid: malformed or not a live session's refresh token.
            SessionEnded: with ``ended``, the session is gone.
            RefreshReused: a replaced token after the grace; the session was just ended.
        """
        presented = RefreshToken.parse(token)
        use = await self.store.end_by_refresh(
            presented.uid,
            presented.sid,
            presented_digest=presented.digest,
            csrf_digest=None,
            reason=None,
            now=now,
            grace=self.policy.grace,
        )
        if use is RefreshUse.VALID:
            return presented.uid, presented.sid
        if use in (RefreshUse.REUSED, RefreshUse.CORRUPT):
            self.cache.forget([presented.sid])
        if use is RefreshUse.REUSED:
            raise RefreshReused(_REUSED_DETAIL["late"])
        if ended and use is RefreshUse.MISSING:
            raise SessionEnded("the session has ended")
        raise TokenInvalid("refresh token not recognised")

    async def end_by_refresh(
        self, token: str, reason: EndReason, *, csrf_token: str | None, now: int
    ) -> tuple[str, str]:
        """End the session a refresh token belongs to; returns its (user id, session id).

        The current token, or a replaced one still inside its grace window (a tab that had
        not seen the latest rotation), ends the session with ``reason``. A replaced token
        after its grace is theft, exactly as for :meth:`refresh`: the session ends as
        ``refresh-reused``.

        Raises:
            TokenInvalid: malformed, or not this session's token.
            SessionEnded: the session is gone.
            RefreshReused: a replaced token after the grace; the session was just ended.
            CsrfError: ``csrf_token`` (cookie mode) is not the session's.
        """
        presented = RefreshToken.parse(token)
        use = await self.store.end_by_refresh(
            presented.uid,
            presented.sid,
            presented_digest=presented.digest,
            csrf_digest=None if csrf_token is None else csrf_digest(csrf_token),
            reason=reason,
            now=now,
            grace=self.policy.grace,
        )
        if use in (RefreshUse.VALID, RefreshUse.REUSED, RefreshUse.CORRUPT):
            self.cache.forget([presented.sid])
        if use is RefreshUse.VALID:
            return presented.uid, presented.sid
        if use is RefreshUse.REUSED:
            raise RefreshReused(_REUSED_DETAIL["late"])
        if use is RefreshUse.CSRF:
            raise CsrfError("CSRF token does not belong to this session")
        if use is RefreshUse.UNKNOWN:
            raise TokenInvalid("refresh token not recognised")
        raise SessionEnded("the session has ended")

    async def level(self, uid: str, sid: str, state: SessionState) -> AuthLevel:
        """How session ``sid`` authenticated (stored, or a password at its creation)."""
        stored = None if self.levels is None else await self.levels.get_level(uid, sid)
        return stored or password_level(state.created_at)

    async def step_up(self, uid: str, sid: str, level: AuthLevel, *, now: int) -> Issued:
        """Record that session ``sid`` re-authenticated (``level``) and re-key it: the new
        access token carries the new ``amr``/``auth_time``, and tokens issued before the
        step-up cannot be refreshed into ones that do.

        Raises:
            SessionEnded: the session is gone.
        """
        if self.levels is not None:
            await self.levels.put_level(uid, sid, level, ttl=self.policy.max_ttl)
        return await self.rekey(uid, sid, now=now, level=level)

    async def rekey(
        self, uid: str, sid: str, *, now: int, level: AuthLevel | None = None
    ) -> Issued:
        """New credentials for a live session: refresh token, CSRF token and access token.

        After a password change or a logout of every other session, the session the user
        kept must not stay reachable with tokens someone else may hold: every refresh token
        it had becomes an ancestor (presented again, it ends the session as theft), and the
        CSRF token changes. The new tokens are returned for the client.

        Raises:
            SessionEnded: the session is gone.
        """
        refresh = RefreshToken.new(uid, sid)
        csrf = new_csrf_token()
        result = await self.store.rekey(
            uid, sid, refresh_digest=refresh.digest, csrf_digest=csrf_digest(csrf), now=now
        )
        self.cache.forget([sid])
        if result.outcome is not RotateOutcome.ROTATED or result.state is None:
            raise SessionEnded("the session has ended")
        carried = self._carried(result)
        return self._issued(
            result.state, sid, refresh, result.ttl, now, csrf,
            email_verified=carried["email_verified"], level=level or carried["level"],
        )  # fmt: skip

    def _issued(
        self,
        state: SessionState,
        sid: str,
        refresh: RefreshToken,
        ttl: int,
        now: int,
        csrf: str | None,
        evicted: Sequence[str] = (),
        email: str | None = None,
        email_verified: bool | None = None,
        level: AuthLevel | None = None,
    ) -> Issued:
        level = level or password_level(state.created_at)
        access, claims = self.tokens.issue(
            sub=state.uid,
            sid=sid,
            now=now,
            email_verified=email_verified,
            amr=level.amr,
            auth_time=level.auth_time,
        )
        return Issued(
            uid=state.uid,
            user_created_at=state.user_created_at,
            sid=sid,
            access_token=access,
            access_claims=claims,
            refresh_token=refresh.encode(),
            refresh_expires_in=ttl,
            session_expires_at=now + ttl,
            csrf_token=csrf,
            evicted=tuple(evicted),
            email=email,
        )

    def _carried(self, result: RotateResult) -> _Carried:
        """The claims a rotation or re-key read with its change: the ``email_verified``
        claim (when on) and the session's level (stored, or a password at its creation)."""
        assert result.state is not None  # noqa: S101 - only asked of a rotated result
        stored = AuthLevel.decode(result.level) if self.levels and result.level else None
        return {
            "email_verified": result.email_verified if self.email_verified_claim else None,
            "level": stored or password_level(result.state.created_at),
        }

    async def authenticate(self, access_token: str, *, now: int) -> Principal:
        """Verify an access token and that its session is still live.

        Raises:
            TokenExpired: genuine but expired; the client should refresh.
            TokenInvalid: not a genuine token of ours.
            SessionEnded: the session has ended.
            Unavailable: the store did not answer and the cache could not vouch.
        """
        claims = self.tokens.verify(access_token, now=now)
        return Principal(claims, await self.state(claims.sub, claims.sid, now=now))

    async def state(self, uid: str, sid: str, *, now: int) -> SessionState:
        """The live state of a session, from the cache when it can vouch for it.

        Raises:
            SessionEnded: the session has ended or does not belong to ``uid``.
        """
        state = self.cache.get(sid, now=now)
        if state is None:
            ticket = self.cache.ticket()
            state = await self.store.get(uid, sid, now=now)
            if state is None:
                raise SessionEnded("the session has ended")
            self.cache.put(sid, state, ticket=ticket, now=now)
        if state.uid != uid:
            raise SessionEnded("the session has ended")
        return state

    async def end(
        self, uid: str, sid: str, reason: EndReason, *, now: int, repeat_ok: bool = True
    ) -> None:
        """End one of ``uid``'s sessions. Idempotent unless ``repeat_ok`` is false: a
        session already ended for the same reason (a retry of a call answered 503) counts
        as ended by this call.

        Raises:
            NotFound: no live session ``sid`` belongs to ``uid`` (and, with ``repeat_ok``,
                none ended for ``reason``).
        """
        ended = await self.store.end(uid, sid, reason, now=now)
        self.cache.forget([sid])
        if ended is False or (ended is None and not repeat_ok):
            raise NotFound("no such session")

    async def end_all(
        self, uid: str, *, keep: str | None, reason: EndReason, now: int
    ) -> list[str]:
        """End every session of ``uid`` except ``keep``; returns the ids ended."""
        ended = await self.store.end_all(uid, keep=keep, reason=reason, now=now)
        self.cache.forget(ended)
        return ended

    async def list(self, uid: str, *, current: str | None, now: int) -> Sequence[SessionInfo]:
        """The user's live sessions, most recently used first."""
        records = await self.store.list(uid, now=now)
        return [SessionInfo(r, r.sid == current) for r in records]
