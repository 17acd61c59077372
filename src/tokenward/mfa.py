"""Second factors: TOTP (RFC 6238), recovery codes, the two-step login challenge, step-up.

Framework-free. The rules live here; the back ends are two protocols:

* :class:`FactorStore` (SQL): a user's factors (a TOTP secret, sealed by
  :class:`~tokenward.secretbox.SecretBox`; passkeys later, as another ``kind`` of the same
  table) and their recovery codes, stored as SHA-256 digests;
* :class:`MfaStateStore` (Redis): login challenges and each user's last accepted TOTP time
  step, every key with a TTL.

**TOTP.** 6 digits, 30 s, SHA-1 (what every authenticator app does), one step of clock
drift either way. A code is accepted once: the store keeps the last accepted time step per
user and refuses that step and every earlier one (RFC 6238 section 5.2), atomically, so
two concurrent requests with one code cannot both pass.

**Recovery codes.** Ten, 80 random bits each (``xxxx-xxxx-xxxx-xxxx``, base32), shown once.
Stored as SHA-256 of the user id and the code: a slow password hash protects *guessable*
secrets, and an 80-bit random code is not guessable, so a database thief gains nothing
from a fast hash while every login step would pay argon2's cost. Used with one
``UPDATE ... WHERE used_at IS NULL``: single-use under concurrency.

**The challenge.** After a right password, a user with a factor (or, under
``TOKENWARD_MFA=required``, without one) gets a challenge instead of a session: 256 random
bits, of which only the SHA-256 digest is stored, with the user, the deadline (app time)
and a *binding*: a digest of the client's user agent and address prefix and, in cookie
mode, of a cookie set with the challenge. Redeeming takes the record out of the store
atomically (one redeemer wins), checks the code and, on a wrong code, puts it back with one
more attempt counted (at most :data:`MAX_CODE_ATTEMPTS`). Code attempts go through the login
throttle (the same limits and lock-outs as password guesses), under a record of their own
per user, which a right password does not clear.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol
from urllib.parse import quote

from tokenward.authn import AMR_MFA, AMR_OTP, AMR_PWD, AuthLevel, combined_amr
from tokenward.errors import (
    BadRequest,
    Conflict,
    InvalidCode,
    MfaChallengeInvalid,
    MfaRequired,
    NotFound,
    RateLimited,
    ReauthenticationRequired,
    TokenwardError,
    Unavailable,
    WrongCode,
)
from tokenward.sessions import client_fingerprint
from tokenward.throttle import Throttle
from tokenward.tokens import AccessClaims

__all__ = [
    "FACTOR_PASSKEY",
    "FACTOR_RECOVERY",
    "FACTOR_TOTP",
    "MAX_CODE_ATTEMPTS",
    "RECOVERY_CODES",
    "Challenge",
    "ChallengeRecord",
    "Enrolment",
    "Factor",
    "FactorStore",
    "Mfa",
    "MfaPolicy",
    "MfaStateStore",
    "Redeemed",
    "Sealer",
    "challenge_binding",
    "check_step_up",
    "new_recovery_codes",
    "recovery_digest",
    "totp_code",
    "totp_step",
]

MfaPolicy = Literal["off", "optional", "required"]

FACTOR_TOTP = "totp"
FACTOR_RECOVERY = "recovery"
#: a WebAuthn credential (:mod:`tokenward.passkeys`), a row of the same table
FACTOR_PASSKEY = "passkey"
TOTP_PERIOD = 30
TOTP_DIGITS = 6
#: steps of clock drift accepted either way
TOTP_DRIFT = 1
RECOVERY_CODES = 10
#: wrong codes one challenge takes before it is gone (the login throttle applies as well)
MAX_CODE_ATTEMPTS = 5


# ------------------------------------------------------------------------------ TOTP


def new_totp_secret() -> str:
    """160 random bits in base32 (RFC 4226's recommended length), as apps take it."""
    import pyotp  # imported where used: the CLI and the verifier never load it

    return pyotp.random_base32(32)


def totp_code(secret: str, step: int) -> str:
    """The code of time step ``step`` (RFC 6238 with HMAC-SHA-1, 6 digits).

    Time steps, not times, go in: pyotp never reads the clock here.
    """
    import pyotp

    return pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_PERIOD).generate_otp(step)


def totp_step(secret: str, code: str, *, now: int) -> int | None:
    """The time step whose code ``code`` is (within the allowed drift), or ``None``.

    Every candidate is compared in constant time, and all of them are computed, so the
    time taken does not tell which step (if any) matched.
    """
    current = now // TOTP_PERIOD
    found: int | None = None
    for step in range(current - TOTP_DRIFT, current + TOTP_DRIFT + 1):
        if hmac.compare_digest(totp_code(secret, step).encode(), code.encode()):
            found = step
    return found


def otpauth_uri(secret: str, *, account: str, issuer: str) -> str:
    """The ``otpauth://totp/...`` URI authenticator apps scan (Key Uri Format)."""
    label = quote(f"{issuer}:{account}", safe="@:")
    return (
        f"otpauth://totp/{label}?secret={secret}&issuer={quote(issuer)}"
        f"&algorithm=SHA1&digits={TOTP_DIGITS}&period={TOTP_PERIOD}"
    )


def qr_svg(text: str) -> str:
    """``text`` as a QR code in SVG, rendered here (no image service, no CDN)."""
    # qrcode ships no type information; only these two calls are used.
    import qrcode  # type: ignore[import-untyped]
    import qrcode.image.svg  # type: ignore[import-untyped]

    image = qrcode.make(text, image_factory=qrcode.image.svg.SvgPathImage, border=2)
    svg: str = image.to_string(encoding="unicode")
    return svg


# --------------------------------------------------------------------- recovery codes


def new_recovery_codes(count: int = RECOVERY_CODES) -> list[str]:
    """``count`` codes of 80 random bits, ``abcd-efgh-ijkl-mnop`` (base32, lower case)."""
    codes = []
    for _ in range(count):
        raw = base64.b32encode(secrets.token_bytes(10)).decode().lower()
        codes.append("-".join(raw[i : i + 4] for i in range(0, 16, 4)))
    return codes


def _normalized(code: str) -> str:
    return "".join(c for c in code.lower() if c.isalnum())


def recovery_digest(uid: str, code: str) -> str:
    """What is stored for a recovery code (see the module docstring for why SHA-256)."""
    raw = f"tokenward:recovery:{uid}:{_normalized(code)}".encode()
    return hashlib.sha256(raw).hexdigest()


def _looks_like_totp(code: str) -> bool:
    return len(code) == TOTP_DIGITS and code.isascii() and code.isdigit()


def _looks_like_recovery(code: str) -> bool:
    plain = _normalized(code)
    return len(plain) == 16 and plain.isascii() and len(code) <= 32


# ----------------------------------------------------------------------------- stores


@dataclass(frozen=True, slots=True)
class Factor:
    """A second factor of a user. ``secret`` is sealed (never the plain secret); a passkey's
    is its public key (:mod:`tokenward.passkeys`), which is no secret."""

    id: str
    uid: str
    kind: str
    label: str
    secret: bytes
    created_at: int
    confirmed_at: int | None = None
    last_used_at: int | None = None
    #: passkeys: the credential id (base64url) and the authenticator's signature counter
    credential_id: str | None = None
    sign_count: int = 0

    def __repr__(self) -> str:
        return f"Factor(id={self.id!r}, uid={self.uid!r}, kind={self.kind!r}, secret=<sealed>)"


class FactorStore(Protocol):
    """Factors and recovery codes (SQL). Each verb is one transaction."""

    async def factors(self, uid: str) -> list[Factor]:
        """Every factor of ``uid``, pending (unconfirmed) ones included."""
        ...

    async def put_pending(self, factor: Factor) -> None:
        """Store an unconfirmed factor, replacing any unconfirmed one of the same kind."""
        ...

    async def confirm(self, uid: str, factor_id: str, *, codes: Sequence[str], now: int) -> bool:
        """Confirm a pending factor and replace the recovery codes by ``codes`` (digests);
        ``False`` when it is not pending any more (a concurrent confirmation won)."""
        ...

    async def add_confirmed(self, factor: Factor, *, codes: Sequence[str], now: int) -> bool:
        """Store a confirmed factor with its recovery codes, unless the user already has a
        confirmed factor of that kind (``False``)."""
        ...

    async def touch(self, factor_id: str, *, now: int) -> None:
        """Record a use of the factor."""
        ...

    async def use_recovery(self, uid: str, digest: str, *, now: int) -> bool:
        """Mark a recovery code used; ``False`` when unknown or already used."""
        ...

    async def replace_recovery(self, uid: str, codes: Sequence[str], *, now: int) -> None:
        """Replace every recovery code of ``uid`` by ``codes`` (digests)."""
        ...

    async def recovery_left(self, uid: str) -> int:
        """How many unused recovery codes ``uid`` has."""
        ...

    async def remove_all(self, uid: str) -> int:
        """Delete every factor and recovery code of ``uid``; returns the factors deleted."""
        ...

    async def remove_kind(self, uid: str, kind: str, *, codes: bool) -> int:
        """Delete the factors of one ``kind`` of ``uid`` (and, with ``codes``, the recovery
        codes); returns the factors deleted."""
        ...


@dataclass(frozen=True, slots=True)
class ChallengeRecord:
    """A login challenge as stored (no token: the store knows only its digest)."""

    uid: str
    email: str
    user_created_at: int
    epoch: int
    expires_at: int
    binding: str
    mode: Literal["verify", "enroll"]
    attempts: int = 0
    #: enrolment under ``required``: the sealed secret shown to the client, once shown
    pending: bytes | None = None
    #: whether the address was verified at the password step (the session's claim)
    email_verified: bool = False
    #: a passkey answer asked for (:mod:`tokenward.passkeys`): the WebAuthn challenge sent
    webauthn: str | None = None

    def fields(self) -> dict[str, str]:
        """The record as flat strings (what the store keeps)."""
        out = {
            "uid": self.uid,
            "email": self.email,
            "uca": str(self.user_created_at),
            "epoch": str(self.epoch),
            "exp": str(self.expires_at),
            "bind": self.binding,
            "mode": self.mode,
            "tries": str(self.attempts),
            "ev": "1" if self.email_verified else "0",
        }
        if self.pending is not None:
            out["pending"] = base64.b64encode(self.pending).decode()
        if self.webauthn is not None:
            out["wa"] = self.webauthn
        return out

    @classmethod
    def from_fields(cls, f: Mapping[str, str]) -> ChallengeRecord:
        """Read back :meth:`fields`.

        Raises:
            MfaChallengeInvalid: not a challenge record.
        """
        try:
            mode = f["mode"]
            if mode not in ("verify", "enroll"):
                raise ValueError(mode)
            pending = f.get("pending")
            return cls(
                uid=f["uid"],
                email=f["email"],
                user_created_at=int(f["uca"]),
                epoch=int(f["epoch"]),
                expires_at=int(f["exp"]),
                binding=f["bind"],
                mode="verify" if mode == "verify" else "enroll",
                attempts=int(f["tries"]),
                pending=None if pending is None else base64.b64decode(pending),
                email_verified=f.get("ev") == "1",
                webauthn=f.get("wa"),
            )
        except (KeyError, ValueError):
            raise MfaChallengeInvalid("the challenge is invalid; log in again") from None


class MfaStateStore(Protocol):
    """Challenges and TOTP time steps (Redis). Every key has a TTL."""

    async def put_challenge(self, digest: str, fields: Mapping[str, str], *, ttl: int) -> None:
        """Store a challenge record for ``ttl`` seconds."""
        ...

    async def take_challenge(self, digest: str, *, binding: str) -> dict[str, str] | str:
        """Remove and return the record when ``binding`` matches; else ``"missing"`` or
        ``"client"`` (another client's challenge: left in place). Atomic."""
        ...

    async def set_pending(
        self, digest: str, *, binding: str, pending: str, now: int
    ) -> tuple[str, str, str, str]:
        """Store the enrolment secret on a live challenge of mode ``enroll`` unless one is
        stored already, atomically: ``("ok", uid, email, the secret stored)`` (``pending``,
        or the one an earlier call stored), or ``("missing"|"client"|"expired"|"mode", "",
        "", "")``."""
        ...

    async def accept_step(self, uid: str, step: int, *, ttl: int) -> bool:
        """Record ``step`` as the last accepted TOTP step of ``uid`` unless it is not later
        than the one recorded (a replay): atomic compare-and-set."""
        ...

    async def forget_steps(self, uid: str) -> None:
        """Forget the last accepted step (the factor was removed)."""
        ...


class Sealer(Protocol):
    """Encrypts TOTP secrets at rest (:class:`~tokenward.secretbox.SecretBox`)."""

    def seal(self, plaintext: bytes, *, context: str) -> bytes:
        """Encrypt, bound to ``context``."""
        ...

    def open(self, sealed: bytes, *, context: str) -> bytes:
        """Decrypt what :meth:`seal` made with ``context``."""
        ...


# ------------------------------------------------------------------------------ rules


def challenge_binding(ip: str, user_agent: str, cookie: str | None) -> str:
    """Names the client that started a challenge: its user agent and address prefix (as
    :func:`~tokenward.sessions.client_fingerprint`) and, in cookie mode, the challenge
    cookie. Compared for equality only."""
    raw = f"{client_fingerprint(ip, user_agent)}\x00{cookie or ''}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def _challenge_digest(token: str) -> str:
    return hashlib.sha256(f"tokenward:mfa-challenge:{token}".encode()).hexdigest()[:32]


def _code_account(uid: str) -> str:
    """The throttle's name for a user's code guesses.

    Not the e-mail address: a right password clears the (account, address) record of the
    password throttle, and must not clear the count of wrong codes with it. The same
    limits and lock-outs apply, on a record of their own.
    """
    return f"second-factor:{uid}"


def check_step_up(
    claims: AccessClaims, *, mfa: bool = False, max_age: int | None = None, now: int
) -> None:
    """Refuse a session that did not use a second factor (``mfa``) or authenticated longer
    than ``max_age`` seconds ago.

    Raises:
        MfaRequired: ``mfa`` and the token's ``amr`` lacks ``mfa``.
        ReauthenticationRequired: ``auth_time`` is missing or too old.
    """
    if mfa and AMR_MFA not in claims.amr:
        raise MfaRequired("this needs a session signed in with a second factor")
    if max_age is not None and (claims.auth_time is None or now - claims.auth_time > max_age):
        raise ReauthenticationRequired(f"this needs an authentication in the last {max_age} s")


@dataclass(frozen=True, slots=True)
class Challenge:
    """What a login answers instead of a session."""

    token: str
    expires_in: int
    factors: tuple[str, ...]
    #: ``TOKENWARD_MFA=required`` and the user has no factor: enrol first
    enrollment_required: bool = False


@dataclass(frozen=True, slots=True)
class Enrolment:
    """A TOTP secret to show: as text, as an ``otpauth://`` URI and as an SVG QR code."""

    secret: str
    uri: str
    qr_svg: str

    def __repr__(self) -> str:
        return "Enrolment(secret=<hidden>)"


@dataclass(frozen=True, slots=True)
class Redeemed:
    """A challenge redeemed: who logged in, and how."""

    uid: str
    email: str
    user_created_at: int
    epoch: int
    level: AuthLevel
    #: ``totp`` or ``recovery``
    method: str
    #: unused recovery codes left (after this one, when one was used)
    recovery_left: int
    #: a factor enrolled during this login (``required``): its recovery codes, shown once
    recovery_codes: tuple[str, ...] = field(default=(), repr=False)
    #: whether the address was verified at the password step
    email_verified: bool = False


_REFUSALS = {
    "missing": "the challenge is unknown or was used; log in again",
    "client": "this challenge was started by another client",
    "expired": "the challenge has expired; log in again",
    "mode": "this challenge is not an enrolment; send a code",
}


class _Wrong(Exception):
    """Internal: the code was wrong (its detail says how, without revealing a secret)."""


class Mfa:
    """The second-factor rules over the two stores.

    Args:
        factors: the factor store (SQL).
        state: challenges and TOTP steps (Redis).
        box: encrypts TOTP secrets at rest.
        throttle: code attempts count as login attempts of the account.
        policy: ``TOKENWARD_MFA``.
        challenge_ttl: seconds a login challenge lives.
        issuer_name: the name authenticator apps show for the account.
    """

    def __init__(
        self,
        factors: FactorStore,
        state: MfaStateStore,
        box: Sealer,
        throttle: Throttle,
        *,
        policy: MfaPolicy = "optional",
        challenge_ttl: int = 300,
        issuer_name: str = "Tokenward",
    ) -> None:
        self.factors = factors
        self.state = state
        self.box = box
        self.throttle = throttle
        self.policy: MfaPolicy = policy
        self.challenge_ttl = challenge_ttl
        self.issuer_name = issuer_name

    # -- helpers ------------------------------------------------------------------------

    @staticmethod
    def _context(uid: str) -> str:
        # Bound to the user: a sealed secret copied onto another user's row does not open.
        return f"tokenward:totp:{uid}"

    def _seal(self, uid: str, secret: str) -> bytes:
        return self.box.seal(secret.encode(), context=self._context(uid))

    def _open(self, uid: str, sealed: bytes) -> str:
        try:
            return self.box.open(sealed, context=self._context(uid)).decode()
        except Exception as exc:  # the sealer's own error type: a key problem, not the user's
            raise Unavailable(
                "a stored second-factor secret does not open with TOKENWARD_MFA_KEYS"
            ) from exc

    def _enrolment(self, secret: str, account: str) -> Enrolment:
        uri = otpauth_uri(secret, account=account, issuer=self.issuer_name)
        return Enrolment(secret, uri, qr_svg(uri))

    async def _confirmed_totp(self, uid: str) -> Factor | None:
        for factor in await self.factors.factors(uid):
            if factor.kind == FACTOR_TOTP and factor.confirmed_at is not None:
                return factor
        return None

    async def _check_totp(self, uid: str, secret: str, code: str, now: int) -> None:
        step = totp_step(secret, code, now=now)
        if step is None:
            raise _Wrong("wrong code")
        # Kept past the last step any drift could still accept, then forgotten.
        ttl = (2 * TOTP_DRIFT + 2) * TOTP_PERIOD
        if not await self.state.accept_step(uid, step, ttl=ttl):
            raise _Wrong("this code was already used; wait for the next one")

    async def _check_code(self, uid: str, code: str, now: int) -> str:
        """Check a TOTP or recovery code of a user with a confirmed factor; the method."""
        if _looks_like_totp(code):
            factor = await self._confirmed_totp(uid)
            if factor is None:
                raise _Wrong("wrong code")
            await self._check_totp(uid, self._open(uid, factor.secret), code, now)
            await self.factors.touch(factor.id, now=now)
            return FACTOR_TOTP
        if _looks_like_recovery(code):
            if not await self.factors.use_recovery(uid, recovery_digest(uid, code), now=now):
                raise _Wrong("wrong or already used recovery code")
            return FACTOR_RECOVERY
        raise _Wrong("wrong code")

    # -- status -------------------------------------------------------------------------

    async def has_factor(self, uid: str) -> bool:
        """Whether ``uid`` has a confirmed second factor (an app or a passkey)."""
        return any(f.confirmed_at is not None for f in await self.factors.factors(uid))

    async def kinds(self, uid: str) -> tuple[str, ...]:
        """What the second step of ``uid``'s login accepts: ``totp`` and ``recovery`` with
        an app, ``passkey`` with a passkey."""
        confirmed = {f.kind for f in await self.factors.factors(uid) if f.confirmed_at}
        out: list[str] = []
        if FACTOR_TOTP in confirmed:
            out += [FACTOR_TOTP, FACTOR_RECOVERY]
        if FACTOR_PASSKEY in confirmed:
            out.append(FACTOR_PASSKEY)
        return tuple(out)

    async def status(self, uid: str) -> dict[str, object]:
        """What the account page shows: the factors (no secret) and codes left."""
        rows = [f for f in await self.factors.factors(uid) if f.confirmed_at is not None]
        return {
            "policy": self.policy,
            "factors": [
                {
                    "id": f.id,
                    "kind": f.kind,
                    "label": f.label,
                    "created_at": f.created_at,
                    "last_used_at": f.last_used_at,
                }
                for f in rows
            ],
            "recovery_codes_left": await self.factors.recovery_left(uid) if rows else 0,
        }

    # -- two-step login -----------------------------------------------------------------

    async def begin_login(
        self,
        uid: str,
        email: str,
        *,
        user_created_at: int,
        epoch: int,
        binding: str,
        now: int,
        email_verified: bool = False,
        has_factor: bool | None = None,
    ) -> Challenge | None:
        """After a right password: the challenge to answer, or ``None`` (no second step).

        ``off``: never. A user with a confirmed factor: a challenge for a code. ``required``
        and no factor: a challenge whose first step is enrolment. ``has_factor``: what the
        user's read said (:attr:`tokenward.users.User.has_second_factor`); ``False`` spares
        the factors' lookup, ``None`` (not known) or ``True`` reads them.
        """
        if self.policy == "off":
            return None
        kinds: tuple[str, ...] = () if has_factor is False else await self.kinds(uid)
        if kinds:
            mode: Literal["verify", "enroll"] = "verify"
        elif self.policy == "required":
            mode, kinds = "enroll", (FACTOR_TOTP,)
        else:
            return None
        token = secrets.token_urlsafe(32)
        record = ChallengeRecord(
            uid=uid,
            email=email,
            user_created_at=user_created_at,
            epoch=epoch,
            expires_at=now + self.challenge_ttl,
            binding=binding,
            mode=mode,
            email_verified=email_verified,
        )
        # The Redis TTL only collects garbage (and outlives the deadline a little, so a late
        # redemption is told "expired", not "unknown"); the deadline is checked in app time.
        await self.state.put_challenge(
            _challenge_digest(token), record.fields(), ttl=self.challenge_ttl + 60
        )
        return Challenge(token, self.challenge_ttl, kinds, enrollment_required=mode == "enroll")

    async def enroll_on_challenge(self, token: str, *, binding: str, now: int) -> Enrolment:
        """``required`` mode: a TOTP secret for the user of an enrolment challenge.

        Idempotent: every call on one challenge answers the same secret (two tabs, a
        reload), so no secret is shown that its code could not confirm.

        Raises:
            MfaChallengeInvalid: unknown, expired, another client's, or not an enrolment.
        """
        if not token or len(token) > 128:
            raise MfaChallengeInvalid("the challenge is invalid; log in again")
        digest = _challenge_digest(token)
        secret = new_totp_secret()
        # Sealed for this challenge (the user is not known before the store answers); the
        # redemption re-seals it for the user's factor row.
        sealed = self.box.seal(secret.encode(), context=f"tokenward:challenge:{digest}")
        pending = base64.b64encode(sealed).decode()
        status, _, email, stored = await self.state.set_pending(
            digest, binding=binding, pending=pending, now=now
        )
        if status != "ok":
            raise MfaChallengeInvalid(_REFUSALS.get(status, _REFUSALS["missing"]))
        if stored != pending:
            # Another tab of this client fetched one first: show the same secret, so
            # whichever tab's QR code was scanned, its code confirms the enrolment.
            sealed = base64.b64decode(stored)
            secret = self.box.open(sealed, context=f"tokenward:challenge:{digest}").decode()
        return self._enrolment(secret, email)

    async def _take(self, token: str, *, binding: str, now: int) -> ChallengeRecord:
        if not token or len(token) > 128:
            raise MfaChallengeInvalid("the challenge is invalid; log in again")
        got = await self.state.take_challenge(_challenge_digest(token), binding=binding)
        if isinstance(got, str):
            raise MfaChallengeInvalid(_REFUSALS.get(got, _REFUSALS["missing"]))
        record = ChallengeRecord.from_fields(got)
        if now >= record.expires_at:
            raise MfaChallengeInvalid("the challenge has expired; log in again")
        return record

    async def _restore(self, token: str, record: ChallengeRecord) -> None:
        await self.state.put_challenge(
            _challenge_digest(token), record.fields(), ttl=self.challenge_ttl + 60
        )

    async def redeem(self, token: str, code: str, *, binding: str, ip: str, now: int) -> Redeemed:
        """Second step of a login: the code for the challenge. Single-use: of concurrent
        redemptions of one challenge at most one succeeds.

        Raises:
            MfaChallengeInvalid: unknown, used, expired, exhausted or another client's.
            InvalidCode: wrong or replayed code (the challenge stays, one attempt less).
            RateLimited: the account's login throttle refused (the challenge stays).
            BadRequest: an enrolment challenge whose secret was never fetched.
            Unavailable: a back end did not answer (the challenge is put back if possible).
        """
        record = await self._take(token, binding=binding, now=now)
        codes: tuple[str, ...] = ()
        try:
            if record.mode == "enroll" and record.pending is None:
                raise BadRequest("fetch the secret first: POST /auth/login/mfa/enroll")
            async with self.throttle.login(_code_account(record.uid), ip, now=now) as ticket:
                if record.mode == "enroll":
                    assert record.pending is not None  # noqa: S101 - checked above
                    secret = self.box.open(
                        record.pending, context=f"tokenward:challenge:{_challenge_digest(token)}"
                    ).decode()
                    code = code.strip()
                    if not _looks_like_totp(code):
                        raise _Wrong("wrong code")
                    await self._check_totp(record.uid, secret, code, now)
                    codes = tuple(new_recovery_codes())
                    factor = Factor(
                        id=secrets.token_hex(16),
                        uid=record.uid,
                        kind=FACTOR_TOTP,
                        label="Authenticator app",
                        secret=self._seal(record.uid, secret),
                        created_at=now,
                        confirmed_at=now,
                        last_used_at=now,
                    )
                    digests = [recovery_digest(record.uid, c) for c in codes]
                    if not await self.factors.add_confirmed(factor, codes=digests, now=now):
                        raise Conflict("a factor was enrolled meanwhile; log in again")
                    method = FACTOR_TOTP
                else:
                    method = await self._check_code(record.uid, code.strip(), now)
                await ticket.succeeded(now=now)
        except _Wrong as exc:
            tries = record.attempts + 1
            if tries < MAX_CODE_ATTEMPTS:
                await self._restore(token, replace(record, attempts=tries))
                raise InvalidCode(str(exc), uid=record.uid) from None
            raise MfaChallengeInvalid("too many wrong codes; log in again") from None
        except (RateLimited, Unavailable, BadRequest):
            # Redis down: the challenge is lost; the user logs in again, nothing is open.
            with contextlib.suppress(Unavailable):
                await self._restore(token, record)
            raise
        left = await self.factors.recovery_left(record.uid)
        level = AuthLevel(combined_amr((AMR_PWD, AMR_OTP)), now, method)
        return Redeemed(
            uid=record.uid,
            email=record.email,
            user_created_at=record.user_created_at,
            epoch=record.epoch,
            level=level,
            method=method,
            recovery_left=left,
            recovery_codes=codes,
            email_verified=record.email_verified,
        )

    # -- signed-in management -----------------------------------------------------------

    async def start_enrolment(self, uid: str, email: str, *, now: int) -> Enrolment:
        """A new TOTP secret for a signed-in user, pending until :meth:`confirm_enrolment`.

        Raises:
            Conflict: the user already has a confirmed TOTP factor (remove it first).
        """
        if await self._confirmed_totp(uid) is not None:
            raise Conflict("an authenticator app is already enrolled; remove it first")
        secret = new_totp_secret()
        factor = Factor(
            id=secrets.token_hex(16),
            uid=uid,
            kind=FACTOR_TOTP,
            label="Authenticator app",
            secret=self._seal(uid, secret),
            created_at=now,
        )
        await self.factors.put_pending(factor)
        return self._enrolment(secret, email)

    async def confirm_enrolment(
        self, uid: str, email: str, code: str, *, ip: str, now: int
    ) -> list[str]:
        """Activate the pending TOTP factor with its first code; the ten recovery codes.

        Raises:
            NotFound: no enrolment is pending.
            WrongCode: wrong or replayed code (throttled like a password guess).
        """
        pending = [
            f
            for f in await self.factors.factors(uid)
            if f.kind == FACTOR_TOTP and f.confirmed_at is None
        ]
        if not pending:
            raise NotFound("no enrolment is pending: POST /auth/mfa/totp/enroll first")
        factor = pending[0]
        code = code.strip()
        async with self.throttle.login(_code_account(uid), ip, now=now) as ticket:
            try:
                if not _looks_like_totp(code):
                    raise _Wrong("wrong code")
                await self._check_totp(uid, self._open(uid, factor.secret), code, now)
            except _Wrong as exc:
                raise WrongCode(str(exc)) from None
            await ticket.succeeded(now=now)
        codes = new_recovery_codes()
        digests = [recovery_digest(uid, c) for c in codes]
        if not await self.factors.confirm(uid, factor.id, codes=digests, now=now):
            raise NotFound("the enrolment was confirmed or replaced meanwhile")
        return codes

    async def verify(self, uid: str, email: str, code: str, *, ip: str, now: int) -> str:
        """Check a second-factor code of a signed-in user (re-authentication); the method.

        Raises:
            NotFound: the user has no second factor.
            WrongCode: wrong or replayed code (throttled like a password guess).
        """
        if not await self.has_factor(uid):
            raise NotFound("no second factor is enrolled")
        async with self.throttle.login(_code_account(uid), ip, now=now) as ticket:
            try:
                method = await self._check_code(uid, code.strip(), now)
            except _Wrong as exc:
                raise WrongCode(str(exc)) from None
            await ticket.succeeded(now=now)
        return method

    async def regenerate_recovery(self, uid: str, *, now: int) -> list[str]:
        """Ten new recovery codes; the old ones stop working.

        Raises:
            NotFound: the user has no second factor.
        """
        if not await self.has_factor(uid):
            raise NotFound("no second factor is enrolled")
        codes = new_recovery_codes()
        await self.factors.replace_recovery(uid, [recovery_digest(uid, c) for c in codes], now=now)
        return codes

    async def remove_totp(self, uid: str) -> int:
        """Remove the app and the recovery codes of ``uid`` (not its passkeys); how many
        factors went."""
        removed = await self.factors.remove_kind(uid, FACTOR_TOTP, codes=True)
        with contextlib.suppress(TokenwardError):
            await self.state.forget_steps(uid)
        return removed

    async def remove_all(self, uid: str) -> int:
        """Remove every factor (apps and passkeys) and recovery code of ``uid``; the number
        of factors."""
        removed = await self.factors.remove_all(uid)
        with contextlib.suppress(TokenwardError):  # the marker expires in two minutes anyway
            await self.state.forget_steps(uid)
        return removed
