"""Passkeys (WebAuthn): registration, sign-in without an e-mail, and a second factor.

Framework-free; the WebAuthn checks themselves are py_webauthn's (``webauthn``), the rules
around them are here, over two back ends:

* :class:`PasskeyStore` (SQL): passkeys are rows of ``kind`` ``passkey`` in the second
  factors' table (:class:`~tokenward.mfa.Factor`): the public key (COSE, with the
  transports and the backup-eligible flag) in ``secret``, the credential id (base64url)
  and the signature counter in their columns, the user's name for it in ``label``;
* :class:`PasskeyStateStore` (Redis): the challenges, every key with a TTL.

**Challenges.** 32 random bytes each, single-use, :data:`CHALLENGE_TTL` seconds. A
registration's is kept under the user (one ceremony at a time); a sign-in's under the
SHA-256 digest of a random *handle* the client gets with the options, bound to the client
(user agent, address prefix, and in cookie mode a cookie) like the login's MFA challenge;
a second factor's on the login's MFA challenge itself. Reading one deletes it in the same
Redis script, so a replayed answer finds nothing. The deadline is checked in app time.

**Checks** (beyond py_webauthn's: type, challenge, origin among the configured ones, rp id
hash, user presence, signature): user verification is required for a sign-in without a
password; the signature counter must grow when either value is non-zero, else the
passkey is refused and the caller records ``mfa.passkey-clone-suspected`` (a counter that
does not grow means two copies of the key sign). The counter moves in one conditional
``UPDATE``, so two concurrent uses of one counter value cannot both pass.

**amr** (RFC 8176): a passkey whose authenticator says it may be backed up (synced
between devices) is ``swk``, one bound to its device ``hwk``. With user verification (a
PIN or biometric unlocked the key) it is two factors in one: ``["hwk", "mfa"]``; without,
``["hwk"]`` alone. After a password: ``["pwd", "hwk", "mfa"]``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson

from tokenward.authn import AMR_HWK, AMR_MFA, AMR_PWD, AMR_SWK, AuthLevel, combined_amr
from tokenward.errors import (
    BadRequest,
    ConfigError,
    Conflict,
    CredentialMalformed,
    MfaChallengeInvalid,
    NotFound,
    PasskeyInvalid,
    PasskeyRegistrationFailed,
    Unavailable,
)
from tokenward.mfa import FACTOR_PASSKEY, Factor, Mfa, Redeemed

__all__ = [
    "CHALLENGE_TTL",
    "MAX_PASSKEYS",
    "Passkey",
    "PasskeyStateStore",
    "PasskeyStore",
    "Passkeys",
    "RelyingParty",
    "SignedIn",
    "b64url",
    "from_b64url",
    "passkey_amr",
    "relying_party",
]

#: seconds a WebAuthn challenge lives (browsers time the ceremony out after 60 s)
CHALLENGE_TTL = 120
#: passkeys one user may register
MAX_PASSKEYS = 20


def b64url(data: bytes) -> str:
    """Unpadded base64url, as WebAuthn's JSON carries bytes."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def from_b64url(text: str) -> bytes:
    """Read :func:`b64url` (padding optional).

    Raises:
        ValueError: not base64url.
    """
    raw = text.encode("ascii")
    return base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))


def _digest(handle: str) -> str:
    return hashlib.sha256(f"tokenward:passkey-signin:{handle}".encode()).hexdigest()[:32]


def passkey_amr(*, synced: bool, user_verified: bool, password: bool = False) -> tuple[str, ...]:
    """The ``amr`` of an authentication with a passkey (see the module's docstring)."""
    methods = [AMR_SWK if synced else AMR_HWK]
    if password:
        methods.append(AMR_PWD)
    if user_verified:
        methods.append(AMR_MFA)
    return combined_amr(methods)


# ----------------------------------------------------------------------- relying party


@dataclass(frozen=True, slots=True)
class RelyingParty:
    """Who the passkeys belong to: the rp id (a host name), its display name, and the
    origins a browser may use them from."""

    id: str
    name: str
    origins: tuple[str, ...]


def _host_within(host: str, rp_id: str) -> bool:
    return host == rp_id or host.endswith("." + rp_id)


def relying_party(
    issuer: str, *, rp_id: str | None, origins: Sequence[str], name: str
) -> RelyingParty:
    """The relying party for ``issuer``, checked.

    The rp id must be the issuer's host or a registrable suffix of it (``example.com`` for
    ``https://auth.example.com``), and every origin's host must be within the rp id:
    browsers refuse anything else, so a mismatch is a start-up error, not a failed
    ceremony hours later.

    Raises:
        ConfigError: one line naming the setting.
    """
    issuer_host = (urlsplit(issuer).hostname or "").lower()
    chosen = (rp_id or issuer_host).strip().lower().rstrip(".")
    if not chosen or "/" in chosen or (":" in chosen.strip("[]") and not _is_ip(chosen)):
        raise ConfigError(f"TOKENWARD_WEBAUTHN_RP_ID: {chosen!r} is not a host name")
    if not _host_within(issuer_host, chosen) or (_is_ip(chosen) and chosen != issuer_host):
        raise ConfigError(
            f"TOKENWARD_WEBAUTHN_RP_ID: {chosen!r} is neither the issuer's host "
            f"{issuer_host!r} nor a parent domain of it"
        )
    # A parent domain must still be a registrable one (no public-suffix list here: at
    # least not a bare top-level domain); the issuer's own host is always allowed.
    if chosen != issuer_host and "." not in chosen:
        raise ConfigError(f"TOKENWARD_WEBAUTHN_RP_ID: {chosen!r} is a top-level domain")
    wanted = tuple(_origin(o) for o in origins) or (_origin(issuer),)
    for origin in wanted:
        host = (urlsplit(origin).hostname or "").lower()
        if not host or not _host_within(host, chosen) or (_is_ip(chosen) and host != chosen):
            raise ConfigError(
                f"TOKENWARD_WEBAUTHN_ORIGINS: the host of {origin!r} is not within the rp id "
                f"{chosen!r}"
            )
    return RelyingParty(chosen, name, wanted)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _origin(url: str) -> str:
    """``url``'s origin as a browser writes it in ``clientDataJSON``: no userinfo, no
    default port, a lower-case host, brackets around IPv6."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    host = f"[{host}]" if ":" in host else host
    default = 443 if parts.scheme == "https" else 80
    port = "" if parts.port in (None, default) else f":{parts.port}"
    return f"{parts.scheme}://{host}{port}"


# ------------------------------------------------------------------------------ stores


class PasskeyStore(Protocol):
    """Passkeys as factor rows (SQL); :class:`~tokenward.stores.sql_mfa.SqlFactorStore`."""

    async def factors(self, uid: str) -> list[Factor]:
        """Every factor of ``uid``."""
        ...

    async def by_credential(self, credential_id: str) -> Factor | None:
        """The factor of a credential id (base64url), whoever's."""
        ...

    async def add_passkey(self, factor: Factor, *, limit: int) -> str:
        """Store a passkey: ``"ok"``, ``"exists"`` (its credential id is registered) or
        ``"limit"`` (the user has ``limit`` passkeys)."""
        ...

    async def use_passkey(self, factor_id: str, sign_count: int, *, now: int) -> bool:
        """Record a use with the counter the authenticator reported, only if it grew (or
        both are zero); ``False`` otherwise."""
        ...

    async def remove_factor(self, uid: str, factor_id: str, kind: str) -> bool:
        """Delete one factor of ``uid``; ``False`` when ``uid`` has no such factor."""
        ...

    async def rename_factor(self, uid: str, factor_id: str, kind: str, label: str) -> bool:
        """Rename one factor of ``uid``; ``False`` when ``uid`` has no such factor."""
        ...


class PasskeyStateStore(Protocol):
    """WebAuthn challenges (Redis); :class:`~tokenward.stores.redis_passkeys.RedisPasskeyStore`."""

    async def put_registration(self, uid: str, fields: Mapping[str, str], *, ttl: int) -> None:
        """Keep the registration ceremony of ``uid`` (replacing any earlier one)."""
        ...

    async def take_registration(self, uid: str) -> dict[str, str] | None:
        """Remove and return it, atomically; ``None`` when there is none."""
        ...

    async def put_signin(self, digest: str, fields: Mapping[str, str], *, ttl: int) -> None:
        """Keep a sign-in challenge under the digest of its handle."""
        ...

    async def take_signin(self, digest: str, *, binding: str) -> dict[str, str] | str:
        """Remove and return it when ``binding`` matches; ``"missing"`` or ``"client"``
        (another client's: left in place). Atomic."""
        ...

    async def ask_on_challenge(
        self, digest: str, *, binding: str, challenge: str, now: int
    ) -> tuple[str, str]:
        """Put a WebAuthn challenge on a live MFA challenge of mode ``verify`` of this
        client: ``("ok", uid)``, or ``("missing"|"client"|"expired"|"mode", "")``."""
        ...


# ------------------------------------------------------------------------------ values


@dataclass(frozen=True, slots=True)
class StoredKey:
    """What a passkey row's ``secret`` holds: public, no need to seal it."""

    public_key: bytes
    transports: tuple[str, ...]
    #: the authenticator may back the key up (a synced passkey)
    backup_eligible: bool

    def encode(self) -> bytes:
        """JSON bytes."""
        return orjson.dumps(
            {
                "v": 1,
                "pk": b64url(self.public_key),
                "tr": list(self.transports),
                "be": self.backup_eligible,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> StoredKey:
        """Read :meth:`encode`."""
        data = orjson.loads(raw)
        return cls(from_b64url(data["pk"]), tuple(data["tr"]), bool(data["be"]))


@dataclass(frozen=True, slots=True)
class Passkey:
    """A passkey as its owner sees it (never the key)."""

    id: str
    name: str
    created_at: int
    last_used_at: int | None
    synced: bool
    transports: tuple[str, ...]

    @classmethod
    def of(cls, factor: Factor) -> Passkey:
        """The view of a factor row."""
        key = StoredKey.decode(factor.secret)
        return cls(
            factor.id,
            factor.label,
            factor.created_at,
            factor.last_used_at,
            key.backup_eligible,
            key.transports,
        )


@dataclass(frozen=True, slots=True)
class SignedIn:
    """A passkey assertion that passed: whose, which passkey, and the session's level."""

    uid: str
    passkey_id: str
    level: AuthLevel
    user_verified: bool


# ------------------------------------------------------------------------------- rules


def _parse(credential: object, kind: str) -> Any:
    """The credential JSON (a dict, as ``PublicKeyCredential.toJSON()`` gives) parsed.

    Raises:
        CredentialMalformed: 400, naming what is wrong.
    """
    from webauthn.helpers import (
        parse_authentication_credential_json,
        parse_registration_credential_json,
    )

    if not isinstance(credential, dict):
        raise CredentialMalformed("field 'credential' must be an object (PublicKeyCredential)")
    response = credential.get("response")
    fields = (
        ("clientDataJSON", "attestationObject")
        if kind == "registration"
        else ("clientDataJSON", "authenticatorData", "signature")
    )
    if not isinstance(response, dict):
        raise CredentialMalformed("field 'credential.response' must be an object")
    for name, value in [("id", credential.get("id")), ("rawId", credential.get("rawId"))] + [
        (f"response.{f}", response.get(f)) for f in fields
    ]:
        # py_webauthn's base64url reader skips what is not base64url; refuse it here.
        if not isinstance(value, str) or not _B64URL.fullmatch(value):
            raise CredentialMalformed(f"field 'credential.{name}' must be base64url")
    try:
        client_data = orjson.loads(from_b64url(response["clientDataJSON"]))
    except (ValueError, orjson.JSONDecodeError):
        client_data = None
    if not isinstance(client_data, dict) or not all(
        isinstance(client_data.get(k), str) for k in ("type", "challenge", "origin")
    ):
        raise CredentialMalformed(
            "field 'credential.response.clientDataJSON' is not WebAuthn client data"
        )
    try:
        if kind == "registration":
            return parse_registration_credential_json(credential)
        return parse_authentication_credential_json(credential)
    except Exception as exc:  # py_webauthn's parse errors vary (JSON, base64, structure)
        raise CredentialMalformed(f"the credential is malformed: {_why(exc)}") from None


_B64URL = re.compile(r"[A-Za-z0-9_-]{1,65536}={0,2}")


def _why(exc: Exception) -> str:
    text = str(exc).split("\n")[0][:160]
    return text or type(exc).__name__


class Passkeys:
    """The passkey rules over the two stores.

    Args:
        store: passkeys (SQL factor rows).
        state: challenges (Redis).
        rp: the relying party (:func:`relying_party`).
        challenge_ttl: seconds a challenge lives.
    """

    def __init__(
        self,
        store: PasskeyStore,
        state: PasskeyStateStore,
        rp: RelyingParty,
        *,
        challenge_ttl: int = CHALLENGE_TTL,
    ) -> None:
        self.store = store
        self.state = state
        self.rp = rp
        self.challenge_ttl = challenge_ttl

    async def passkeys(self, uid: str) -> list[Passkey]:
        """The passkeys of ``uid``, oldest first."""
        return [Passkey.of(f) for f in await self.store.factors(uid) if f.kind == FACTOR_PASSKEY]

    async def _descriptors(self, uid: str) -> list[Any]:
        from webauthn.helpers.structs import AuthenticatorTransport, PublicKeyCredentialDescriptor

        known = {t.value for t in AuthenticatorTransport}
        out = []
        for factor in await self.store.factors(uid):
            if factor.kind != FACTOR_PASSKEY or factor.credential_id is None:
                continue
            transports = StoredKey.decode(factor.secret).transports
            out.append(
                PublicKeyCredentialDescriptor(
                    id=from_b64url(factor.credential_id),
                    transports=[AuthenticatorTransport(t) for t in transports if t in known],
                )
            )
        return out

    # -- registration -------------------------------------------------------------------

    async def registration_options(self, uid: str, email: str, *, now: int) -> dict[str, Any]:
        """``PublicKeyCredentialCreationOptions`` (JSON) for a new passkey of ``uid``: a
        discoverable credential (``residentKey`` required, so it signs in without an
        e-mail), user verification preferred, the user's passkeys excluded."""
        from webauthn import generate_registration_options, options_to_json
        from webauthn.helpers.structs import (
            AuthenticatorSelectionCriteria,
            ResidentKeyRequirement,
            UserVerificationRequirement,
        )

        challenge = secrets.token_bytes(32)
        options = generate_registration_options(
            rp_id=self.rp.id,
            rp_name=self.rp.name,
            user_id=uid.encode(),
            user_name=email,
            user_display_name=email,
            challenge=challenge,
            timeout=(self.challenge_ttl - 10) * 1000,
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.REQUIRED,
                require_resident_key=True,
                user_verification=UserVerificationRequirement.PREFERRED,
            ),
            exclude_credentials=await self._descriptors(uid),
        )
        fields = {"ch": b64url(challenge), "exp": str(now + self.challenge_ttl)}
        await self.state.put_registration(uid, fields, ttl=self.challenge_ttl + 60)
        out: dict[str, Any] = orjson.loads(options_to_json(options))
        return out

    async def register(self, uid: str, name: str, credential: object, *, now: int) -> Passkey:
        """Check the answer to :meth:`registration_options` and store the passkey.

        Raises:
            CredentialMalformed: 400, the credential JSON is not one.
            PasskeyRegistrationFailed: 400, no ceremony in progress (or it expired, or was
                used), or the attestation does not verify (origin, rp id, challenge).
            Conflict: 409, that authenticator is registered already, or the user has
                :data:`MAX_PASSKEYS`.
        """
        from webauthn import verify_registration_response
        from webauthn.helpers.exceptions import WebAuthnException
        from webauthn.helpers.structs import CredentialDeviceType

        parsed = _parse(credential, "registration")
        pending = await self.state.take_registration(uid)
        if pending is None:
            raise PasskeyRegistrationFailed(
                "no passkey registration is in progress (or it was used); start again"
            )
        if now >= int(pending["exp"]):
            raise PasskeyRegistrationFailed("the passkey registration expired; start again")
        try:
            verified = verify_registration_response(
                credential=parsed,
                expected_challenge=from_b64url(pending["ch"]),
                expected_rp_id=self.rp.id,
                expected_origin=list(self.rp.origins),
                require_user_verification=False,
            )
        except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
            raise PasskeyRegistrationFailed(f"the passkey was refused: {_why(exc)}") from None
        transports = tuple(str(getattr(t, "value", t)) for t in (parsed.response.transports or []))
        key = StoredKey(
            verified.credential_public_key,
            transports,
            verified.credential_device_type == CredentialDeviceType.MULTI_DEVICE,
        )
        factor = Factor(
            id=secrets.token_hex(16),
            uid=uid,
            kind=FACTOR_PASSKEY,
            label=name.strip()[:64] or "Passkey",
            secret=key.encode(),
            created_at=now,
            confirmed_at=now,
            credential_id=b64url(verified.credential_id),
            sign_count=verified.sign_count,
        )
        status = await self.store.add_passkey(factor, limit=MAX_PASSKEYS)
        if status == "exists":
            raise Conflict("this passkey is registered already")
        if status == "limit":
            raise Conflict(f"at most {MAX_PASSKEYS} passkeys; remove one first")
        return Passkey.of(factor)

    async def rename(self, uid: str, passkey_id: str, name: str) -> Passkey:
        """Give a passkey of ``uid`` another name; the passkey.

        Raises:
            NotFound: ``uid`` has no passkey ``passkey_id`` (someone else's included).
        """
        label = name.strip()[:64] or "Passkey"
        if len(passkey_id) > 64 or not await self.store.rename_factor(
            uid, passkey_id, FACTOR_PASSKEY, label
        ):
            raise NotFound("no such passkey")
        for passkey in await self.passkeys(uid):
            if passkey.id == passkey_id:
                return passkey
        raise NotFound("no such passkey")  # removed meanwhile

    async def remove(self, uid: str, passkey_id: str) -> None:
        """Remove a passkey of ``uid``.

        Raises:
            NotFound: ``uid`` has no passkey ``passkey_id`` (someone else's included).
        """
        if len(passkey_id) > 64 or not await self.store.remove_factor(
            uid, passkey_id, FACTOR_PASSKEY
        ):
            raise NotFound("no such passkey")

    # -- assertions ---------------------------------------------------------------------

    def _request_options(self, challenge: bytes, allow: list[Any], *, uv: str) -> dict[str, Any]:
        from webauthn import generate_authentication_options, options_to_json
        from webauthn.helpers.structs import UserVerificationRequirement

        options = generate_authentication_options(
            rp_id=self.rp.id,
            challenge=challenge,
            timeout=(self.challenge_ttl - 10) * 1000,
            allow_credentials=allow,
            user_verification=UserVerificationRequirement(uv),
        )
        out: dict[str, Any] = orjson.loads(options_to_json(options))
        return out

    async def _check(
        self,
        parsed: Any,
        challenge: str,
        *,
        uid: str | None,
        require_uv: bool,
        now: int,
    ) -> tuple[Factor, bool, bool]:
        """Verify an assertion: the passkey, whether the user was verified, synced.

        Raises:
            PasskeyInvalid: unknown or removed passkey, someone else's, a failed check, or
                a counter that did not grow (``clone`` set).
        """
        from webauthn import verify_authentication_response
        from webauthn.helpers.exceptions import WebAuthnException

        factor = await self.store.by_credential(str(parsed.id))
        if factor is None or factor.kind != FACTOR_PASSKEY:
            raise PasskeyInvalid("this passkey is not registered (it may have been removed)")
        if uid is not None and factor.uid != uid:
            raise PasskeyInvalid("this passkey belongs to another account")
        handle = parsed.response.user_handle
        if handle is not None and not secrets.compare_digest(bytes(handle), factor.uid.encode()):
            raise PasskeyInvalid("the passkey's user handle does not match")
        key = StoredKey.decode(factor.secret)
        try:
            verified = verify_authentication_response(
                credential=parsed,
                expected_challenge=from_b64url(challenge),
                expected_rp_id=self.rp.id,
                expected_origin=list(self.rp.origins),
                credential_public_key=key.public_key,
                # The counter is compared below, after the signature: an unsigned answer
                # must not be able to raise a clone alarm.
                credential_current_sign_count=0,
                require_user_verification=require_uv,
            )
        except (WebAuthnException, ValueError, KeyError, TypeError) as exc:
            raise PasskeyInvalid(f"the passkey was refused: {_why(exc)}", uid=factor.uid) from None
        count = verified.new_sign_count
        grew = count > factor.sign_count or (count == 0 and factor.sign_count == 0)
        if not grew or not await self.store.use_passkey(factor.id, count, now=now):
            raise PasskeyInvalid(
                "this passkey's signature counter went backwards: it may have been copied",
                uid=factor.uid,
                clone=True,
            )
        return factor, verified.user_verified, key.backup_eligible

    async def signin_options(self, *, binding: str, now: int) -> tuple[str, dict[str, Any]]:
        """A handle and ``PublicKeyCredentialRequestOptions`` for a sign-in with no e-mail:
        ``allowCredentials`` empty (the browser offers its discoverable passkeys for the rp
        id), user verification required."""
        handle = secrets.token_urlsafe(32)
        challenge = secrets.token_bytes(32)
        fields = {"ch": b64url(challenge), "bind": binding, "exp": str(now + self.challenge_ttl)}
        await self.state.put_signin(_digest(handle), fields, ttl=self.challenge_ttl + 60)
        return handle, self._request_options(challenge, [], uv="required")

    async def signin(self, handle: str, credential: object, *, binding: str, now: int) -> SignedIn:
        """Check a sign-in's assertion: the user and the session's level.

        Raises:
            CredentialMalformed: 400.
            PasskeyInvalid: 401, unknown/used/expired/another client's handle, or the
                assertion was refused (no user verification, wrong origin, removed...).
        """
        parsed = _parse(credential, "authentication")
        if not handle or len(handle) > 128:
            raise PasskeyInvalid("the sign-in handle is invalid; start again")
        got = await self.state.take_signin(_digest(handle), binding=binding)
        if isinstance(got, str):
            raise PasskeyInvalid(
                "this sign-in was started by another client"
                if got == "client"
                else "the sign-in is unknown or was used; start again"
            )
        if now >= int(got["exp"]):
            raise PasskeyInvalid("the sign-in expired; start again")
        factor, uv, synced = await self._check(
            parsed, got["ch"], uid=None, require_uv=True, now=now
        )
        level = AuthLevel(passkey_amr(synced=synced, user_verified=uv), now)
        return SignedIn(factor.uid, factor.id, level, uv)

    # -- second factor after a password -------------------------------------------------

    async def mfa_options(self, mfa: Mfa, token: str, *, binding: str, now: int) -> dict[str, Any]:
        """Request options for the second step of a login (the user's passkeys allowed).

        Raises:
            MfaChallengeInvalid: unknown, expired, another client's or an enrolment.
            NotFound: the user has no passkey.
        """
        from tokenward.mfa import _challenge_digest

        if not token or len(token) > 128:
            raise MfaChallengeInvalid("the challenge is invalid; log in again")
        challenge = secrets.token_bytes(32)
        status, uid = await self.state.ask_on_challenge(
            _challenge_digest(token), binding=binding, challenge=b64url(challenge), now=now
        )
        if status != "ok":
            raise MfaChallengeInvalid(
                {
                    "client": "this challenge was started by another client",
                    "expired": "the challenge has expired; log in again",
                    "mode": "this challenge is an enrolment; send a code",
                }.get(status, "the challenge is unknown or was used; log in again")
            )
        allow = await self._descriptors(uid)
        if not allow:
            raise NotFound("this account has no passkey; send a code")
        return self._request_options(challenge, allow, uv="preferred")

    async def redeem_mfa(
        self, mfa: Mfa, token: str, credential: object, *, binding: str, now: int
    ) -> Redeemed:
        """Second step of a login with a passkey of the user whose password was right.

        Single-use like :meth:`~tokenward.mfa.Mfa.redeem`: the MFA challenge is taken out
        first; a refused passkey puts it back with one attempt counted.

        Raises:
            CredentialMalformed: 400 (the challenge stays).
            MfaChallengeInvalid: 401, the challenge is gone.
            BadRequest: 400, no passkey options were asked for it (the challenge stays).
            PasskeyInvalid: 401, the assertion was refused (the challenge stays, one
                attempt less).
        """
        from dataclasses import replace

        from tokenward.mfa import MAX_CODE_ATTEMPTS

        parsed = _parse(credential, "authentication")
        record = await mfa._take(token, binding=binding, now=now)
        if record.webauthn is None:
            await mfa._restore(token, record)
            raise BadRequest("ask for passkey options first: POST /auth/login/mfa/passkey/options")
        try:
            _, uv, synced = await self._check(
                parsed, record.webauthn, uid=record.uid, require_uv=False, now=now
            )
        except Unavailable:
            # The database is down: the challenge goes back for a retry (if Redis is up).
            with contextlib.suppress(Unavailable):
                await mfa._restore(token, record)
            raise
        except PasskeyInvalid:
            tries = record.attempts + 1
            if tries < MAX_CODE_ATTEMPTS:
                # The WebAuthn challenge was answered (rightly or not): a new one is needed.
                await mfa._restore(token, replace(record, attempts=tries, webauthn=None))
            raise
        level = AuthLevel(passkey_amr(synced=synced, user_verified=uv, password=True), now)
        left = await mfa.factors.recovery_left(record.uid)
        return Redeemed(
            uid=record.uid,
            email=record.email,
            user_created_at=record.user_created_at,
            epoch=record.epoch,
            level=level,
            method=FACTOR_PASSKEY,
            recovery_left=left,
            email_verified=record.email_verified,
        )
