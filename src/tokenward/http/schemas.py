"""The shapes of the HTTP API's bodies, as typed models: one definition for each.

Request models are what :meth:`tokenward.http.body.Body.parse` checks a body against (422
naming the field and the rule that failed: ``required``, ``type`` or ``too-long``); response
models describe what the routes answer. :mod:`tokenward.http.openapi` reads both, so the
served ``/openapi.json`` cannot drift from the checks (``tests/http/test_contract.py``
validates real answers against it).

Models are strict (no coercion: ``"true"`` is not a boolean, ``1`` is not a string) and
ignore unknown fields, as clients add fields over time.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from tokenward.events import EventKind

__all__ = [
    "Accepted",
    "Credentials",
    "EmailChange",
    "EmailOut",
    "EmailRequest",
    "EndedRow",
    "EventRow",
    "Jwks",
    "LinkToken",
    "LogoutAllRequest",
    "MfaChallengeBody",
    "MfaCode",
    "MfaEnrollChallenge",
    "MfaLogin",
    "MfaPasskeyOptions",
    "MfaSessionBody",
    "MfaStatus",
    "PasskeyCreationOptions",
    "PasskeyList",
    "PasskeyOut",
    "PasskeyRegistration",
    "PasskeyRename",
    "PasskeyRequestOptions",
    "PasskeySignIn",
    "PasswordChange",
    "PasswordReset",
    "Problem",
    "ReauthRequest",
    "RecoveryCodes",
    "RefreshRequest",
    "ResendRequest",
    "ServiceToken",
    "SessionBody",
    "SessionRow",
    "TokenRequest",
    "TotpEnrolment",
    "UserOut",
    "VerifiedOut",
]

#: Password fields carry no length rule here: the body limit (413) bounds them, and the
#: password policy's 1024 characters after NFKC is the core's rule (422 `too-long`, before
#: any hashing), so a schema maximum would only be a second, looser copy of it.

PASSWORD_DOC = (
    "At most 1024 characters after NFKC normalisation (longer: 422 before any hashing). To "
    "register, also at least TOKENWARD_PASSWORD_MIN_LENGTH characters, not common or "
    "breached, not containing the email (NIST SP 800-63B-4; 422 names the rule)."
)

Time = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
Password = Annotated[str, Field(description=PASSWORD_DOC)]


def _no_null_defaults(schema: dict[str, Any]) -> None:
    # A field that may be left out but never sent as null (the tokens of a cookie-mode
    # answer) would otherwise show "default": null beside "type": "string".
    for prop in schema.get("properties", {}).values():
        if "default" in prop and prop["default"] is None and "anyOf" not in prop:
            del prop["default"]


class _Model(BaseModel):
    # Model docstrings become the schemas' descriptions (CommonMark: single backticks).
    model_config = ConfigDict(
        strict=True, extra="ignore", frozen=True, json_schema_extra=_no_null_defaults
    )


# ------------------------------------------------------------------------------ requests


class Credentials(_Model):
    """`POST /auth/register` and `POST /auth/login` (JSON or an HTML form)."""

    email: str = Field(max_length=1024)
    password: Password


class RefreshRequest(_Model):
    """`POST /auth/refresh` and `POST /auth/logout` in bearer mode.

    No length rule: a token too long to be one is a wrong credential (401 when it fails to
    verify), not a malformed body; the body limit (413) bounds it. `null` is absent.
    """

    refresh_token: str | None = None


class LogoutAllRequest(_Model):
    """`POST /auth/logout-all`: `keep_current` keeps (and re-keys) this session."""

    keep_current: bool = False


class PasswordChange(_Model):
    """`POST /auth/password`."""

    current_password: str
    new_password: Password


class TokenRequest(_Model):
    """`POST /auth/token`: one of `TOKENWARD_AUDIENCES`."""

    audience: str = Field(max_length=128)


#: A link token is `<user id>.<43 characters>`; anything else is a wrong token (400
#: `token-invalid`), not a malformed body, up to this bound.
LinkTokenField = Annotated[str, Field(max_length=512, description="the token of the link")]


class LinkToken(_Model):
    """`POST /auth/email/verify` and `POST /auth/email/change/confirm`: the `token` of the
    e-mailed link."""

    token: LinkTokenField


class EmailRequest(_Model):
    """`POST /auth/password/forgot`."""

    email: str = Field(max_length=1024)


class ResendRequest(_Model):
    """`POST /auth/email/verify/resend`: `{}` when signed in, else `{email}`."""

    email: Annotated[str, Field(max_length=1024)] | SkipJsonSchema[None] = None


class PasswordReset(_Model):
    """`POST /auth/password/reset`: the link's token and the new password."""

    token: LinkTokenField
    new_password: Password


class EmailChange(_Model):
    """`POST /auth/email/change`: the new address and the current password."""

    new_email: str = Field(max_length=1024)
    password: str


#: A WebAuthn credential as `PublicKeyCredential.toJSON()` gives it (base64url bytes).
WebAuthnCredential = Annotated[
    dict[str, Any],
    Field(
        description="The `PublicKeyCredential` in its JSON form (`toJSON()`): `id`, `rawId`, "
        "`type`, `response` with base64url fields. Not an object: 422; an object that is "
        "not a credential: 400 `credential-malformed`."
    ),
]


class MfaLogin(_Model):
    """`POST /auth/login/mfa`: the login's challenge and a TOTP code (6 digits), a
    recovery code (`xxxx-xxxx-xxxx-xxxx`), or a passkey's `credential` (an assertion for
    the options of `POST /auth/login/mfa/passkey/options`)."""

    challenge: str = Field(max_length=128)
    code: Annotated[str, Field(max_length=64)] | SkipJsonSchema[None] = None
    credential: WebAuthnCredential | SkipJsonSchema[None] = None


class MfaPasskeyOptions(_Model):
    """`POST /auth/login/mfa/passkey/options`: the login's challenge."""

    challenge: str = Field(max_length=128)


class PasskeyRegistration(_Model):
    """`POST /auth/passkeys/register`: a name for the passkey and the answer of
    `navigator.credentials.create()` to the options of `/auth/passkeys/register/options`."""

    name: str = Field(default="Passkey", max_length=64)
    credential: WebAuthnCredential


class PasskeyRename(_Model):
    """`PATCH /auth/passkeys/{id}`: the passkey's new name."""

    name: str = Field(max_length=64)


class PasskeySignIn(_Model):
    """`POST /auth/login/passkey`: the handle of `/auth/login/passkey/options` and the
    answer of `navigator.credentials.get()` to its options."""

    handle: str = Field(max_length=128)
    credential: WebAuthnCredential


class MfaEnrollChallenge(_Model):
    """`POST /auth/login/mfa/enroll` (`TOKENWARD_MFA=required`, no factor yet)."""

    challenge: str = Field(max_length=128)


class MfaCode(_Model):
    """`POST /auth/mfa/totp/confirm`: the first code of the app just enrolled."""

    code: str = Field(max_length=64)


class ReauthRequest(_Model):
    """`POST /auth/reauthenticate`: the password, a second-factor code, or both; or a
    passkey (`handle` and `credential`, as for `POST /auth/login/passkey`)."""

    password: str | SkipJsonSchema[None] = None
    code: Annotated[str, Field(max_length=64)] | SkipJsonSchema[None] = None
    handle: Annotated[str, Field(max_length=128)] | SkipJsonSchema[None] = None
    credential: WebAuthnCredential | SkipJsonSchema[None] = None


# ----------------------------------------------------------------------------- responses


class UserOut(_Model):
    """`POST /auth/register` (201) and `GET /auth/me`."""

    id: str
    email: str
    created_at: Time
    email_verified: bool


class Accepted(_Model):
    """A 202: the request was taken; any mail goes out in the background. The same body
    whether or not an account has the address."""

    status: Literal["accepted"]


class VerifiedOut(_Model):
    """`POST /auth/email/verify`."""

    email: str
    email_verified: bool


class EmailOut(_Model):
    """`POST /auth/email/change/confirm`: the account's new address."""

    email: str


class SessionUser(_Model):
    id: str
    #: Sessions do not store the address: only a login (which read the user) has it at
    #: hand. `GET /auth/me` gives it.
    email: str | SkipJsonSchema[None] = Field(default=None, description="on login only")


class SessionInfo(_Model):
    id: str
    expires_at: Time


class SessionBody(_Model):
    """A login, refresh or re-key; the tokens only in bearer mode (cookies otherwise)."""

    user: SessionUser
    session: SessionInfo
    access_token: str | SkipJsonSchema[None] = None
    refresh_token: str | SkipJsonSchema[None] = None
    token_type: Literal["Bearer"] | SkipJsonSchema[None] = None
    expires_in: int | SkipJsonSchema[None] = None
    refresh_expires_in: int | SkipJsonSchema[None] = None


class MfaChallengeBody(_Model):
    """`POST /auth/login` of a user who must give a second factor: no session yet. Send
    the challenge and a code to `POST /auth/login/mfa` (with `enrollment_required`, first
    get a secret from `POST /auth/login/mfa/enroll`)."""

    mfa_required: Literal[True]
    challenge: str
    factors: list[str]
    expires_in: int
    enrollment_required: bool


class MfaSessionBody(SessionBody):
    """`POST /auth/login/mfa`: the session, as a login's; `recovery_codes` (shown once)
    when a factor was enrolled during this login, `recovery_codes_left` always."""

    recovery_codes: list[str] | SkipJsonSchema[None] = None
    recovery_codes_left: int | SkipJsonSchema[None] = None


class TotpEnrolment(_Model):
    """A new TOTP secret: as text, as an `otpauth://` URI, and as a QR code (SVG, rendered
    by the server)."""

    secret: str
    otpauth_uri: str
    qr_svg: str


class RecoveryCodes(_Model):
    """Ten single-use recovery codes, shown this once."""

    recovery_codes: list[str]


class MfaFactorRow(_Model):
    id: str
    kind: str
    label: str
    created_at: Time
    last_used_at: Time | None


class PasskeyOut(_Model):
    """A passkey (never its key). `synced`: the authenticator may copy it to the owner's
    other devices (backup-eligible)."""

    id: str
    name: str
    created_at: Time
    last_used_at: Time | None
    synced: bool


class PasskeyList(_Model):
    """`GET /auth/passkeys`: the user's passkeys, oldest first."""

    passkeys: list[PasskeyOut]


class PasskeyCreationOptions(_Model):
    """`POST /auth/passkeys/register/options`: `publicKey` is the
    `PublicKeyCredentialCreationOptions` in JSON form (base64url bytes), for
    `navigator.credentials.create({publicKey})` (or `parseCreationOptionsFromJSON`)."""

    publicKey: dict[str, Any]  # noqa: N815 - the WebAuthn API's name
    expires_in: int


class PasskeyRequestOptions(_Model):
    """Options for `navigator.credentials.get({publicKey})`: `publicKey` is the
    `PublicKeyCredentialRequestOptions` in JSON form; `handle` (sign-in without an e-mail)
    goes back with the answer."""

    publicKey: dict[str, Any]  # noqa: N815 - the WebAuthn API's name
    expires_in: int
    handle: str | SkipJsonSchema[None] = None


class MfaStatus(_Model):
    """`GET /auth/mfa`: the policy, the user's factors (no secrets) and codes left."""

    policy: Literal["off", "optional", "required"]
    factors: list[MfaFactorRow]
    recovery_codes_left: int


class SessionRow(_Model):
    """One of `GET /auth/sessions`."""

    id: str
    created_at: Time
    last_used_at: Time
    expires_at: Time
    ip: str
    user_agent: str
    current: bool
    amr: list[str] = Field(
        description="how the session authenticated (RFC 8176: `pwd`, `otp`, `mfa`, ...)"
    )
    auth_time: Time = Field(description="its login, or its latest re-authentication")
    second_factor: str | None = Field(
        description="the second factor it used last (`totp`, `recovery`), or null"
    )


class EndedRow(_Model):
    """One of `GET /auth/sessions/ended`."""

    id: str
    reason: str
    ended_at: Time


class EventRow(_Model):
    """One of `GET /auth/events` (the kinds: docs/abuse.md)."""

    id: str
    kind: str = Field(json_schema_extra={"enum": [kind.value for kind in EventKind]})
    at: Time
    ip: str
    user_agent: str
    session_id: str | None
    detail: dict[str, str | int]


class ServiceToken(_Model):
    """`POST /auth/token`."""

    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int
    audience: str


class Problem(_Model):
    """Every error answer (`application/problem+json`, RFC 9457): `type` is
    `urn:tokenward:problem:<slug>`; `rule` on `validation`; `retry_after` on
    `rate-limited` (also the `Retry-After` header); `resend` on `email-not-verified` (where
    to ask for a new verification link)."""

    type: str
    title: str
    status: int
    detail: str
    rule: str | SkipJsonSchema[None] = None
    retry_after: int | SkipJsonSchema[None] = None
    resend: str | SkipJsonSchema[None] = None


class Jwks(_Model):
    """`GET /.well-known/jwks.json`."""

    keys: list[dict[str, Any]]
