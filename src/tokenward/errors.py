"""Tokenward's exception hierarchy.

Every failure the core can report is one of these. Each class knows its problem ``slug``
and HTTP ``status`` (RFC 9457 ``urn:tokenward:problem:<slug>``); the HTTP adapter maps them
to responses in one place (:mod:`tokenward.http.problems`). The core never raises an HTTP
exception and never returns ``None`` or ``False`` for a failure.

    TokenwardError
    ├── AuthError (401)
    │   ├── TokenExpired          token-expired
    │   ├── TokenInvalid          unauthenticated
    │   ├── SessionEnded          unauthenticated
    │   ├── RefreshReused         refresh-reused
    │   ├── InvalidCredentials    invalid-credentials
    │   ├── MfaChallengeInvalid   mfa-challenge-invalid
    │   ├── InvalidCode           invalid-code
    │   └── PasskeyInvalid        passkey-invalid
    ├── CsrfError (403)           csrf
    ├── Forbidden (403)           forbidden
    │   ├── EmailNotVerified      email-not-verified, carries where to resend
    │   ├── MfaRequired           mfa-required
    │   └── ReauthenticationRequired reauthentication-required
    ├── WrongPassword (403)       invalid-credentials
    ├── WrongCode (403)           invalid-code
    ├── RateLimited (429)         rate-limited, carries retry_after
    │   └── RefreshLimited        rate-limited (one session's rotations)
    ├── Unavailable (503)         unavailable
    │   ├── KeysStale             jwks-stale (verifiers only)
    │   └── EmbeddedRedisError    unavailable (the embedded Valkey; in tokenward.stores)
    ├── PolicyError (422)         validation, carries the rule that failed
    ├── Conflict (409)            conflict
    ├── NotFound (404)            not-found
    ├── BadRequest (400)          bad-request
    │   ├── LinkTokenInvalid      token-invalid (an e-mailed link's token)
    │   ├── CredentialMalformed   credential-malformed (a WebAuthn credential's JSON)
    │   └── PasskeyRegistrationFailed passkey-registration-failed
    ├── PayloadTooLarge (413)     payload-too-large
    ├── UnsupportedMediaType (415) unsupported-media-type
    └── ConfigError               start-up only, names the variable

tests/core/test_error_tree.py checks this diagram against ``__subclasses__()``.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AuthError",
    "BadRequest",
    "ConfigError",
    "Conflict",
    "CredentialMalformed",
    "CsrfError",
    "EmailNotVerified",
    "Forbidden",
    "InvalidCode",
    "InvalidCredentials",
    "KeysStale",
    "LinkTokenInvalid",
    "MfaChallengeInvalid",
    "MfaRequired",
    "NotFound",
    "PasskeyInvalid",
    "PasskeyRegistrationFailed",
    "PayloadTooLarge",
    "PolicyError",
    "RateLimited",
    "ReauthenticationRequired",
    "RefreshLimited",
    "RefreshReused",
    "SessionEnded",
    "TokenExpired",
    "TokenInvalid",
    "TokenwardError",
    "Unavailable",
    "UnsupportedMediaType",
    "WrongCode",
    "WrongPassword",
]


class TokenwardError(Exception):
    """Root of every error Tokenward raises on purpose.

    Attributes:
        slug: the problem type suffix, ``urn:tokenward:problem:<slug>``.
        status: the HTTP status the adapter answers with.
        title: a short, fixed, human summary of the problem type.
        detail: a message for this occurrence; never holds a token, password or secret.
    """

    slug: ClassVar[str] = "bad-request"
    status: ClassVar[int] = 400
    title: ClassVar[str] = "Bad request"

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail or self.title
        super().__init__(self.detail)


class AuthError(TokenwardError):
    """The caller is not authenticated; the client should log in."""

    slug = "unauthenticated"
    status = 401
    title = "Authentication required"


class TokenExpired(AuthError):
    """The access token is past ``exp``: refresh, then retry.

    Genuine, or signed by a key retired since (a key rotation) and past ``exp`` by its own
    unverified claims, which choose this answer and nothing else.
    """

    slug = "token-expired"
    title = "Access token expired"


class TokenInvalid(AuthError):
    """The token is missing, malformed, forged, or signed by an unknown key."""

    title = "Invalid or missing token"


class SessionEnded(AuthError):
    """The token is genuine but its session has ended (logout, expiry, revocation)."""

    title = "Session ended"


class RefreshReused(AuthError):
    """A replaced refresh token came back after the grace window: the session was ended."""

    slug = "refresh-reused"
    title = "Refresh token reused; session ended"


class InvalidCredentials(AuthError):
    """Wrong email or password at login; identical whichever of the two was wrong."""

    slug = "invalid-credentials"
    title = "Invalid email or password"


class MfaChallengeInvalid(AuthError):
    """The MFA challenge of a two-step login is unknown, used, expired, exhausted or was
    started by another client: log in again (``POST /auth/login``)."""

    slug = "mfa-challenge-invalid"
    title = "MFA challenge invalid or expired"


class InvalidCode(AuthError):
    """A wrong second-factor code at login (``POST /auth/login/mfa``); the challenge stays
    usable for a few more attempts."""

    slug = "invalid-code"
    title = "Invalid code"

    def __init__(self, detail: str | None = None, *, uid: str | None = None) -> None:
        #: whose password was right (for the ``mfa.failed`` event; never shown)
        self.uid = uid
        super().__init__(detail)


class PasskeyInvalid(AuthError):
    """A passkey sign-in (or second step) was refused: its handle is unknown, used, expired
    or another client's, or the assertion failed (unknown or removed passkey, signature,
    origin, rp id, no user verification where required, a counter that went backwards)."""

    slug = "passkey-invalid"
    title = "Passkey refused"

    def __init__(
        self, detail: str | None = None, *, uid: str | None = None, clone: bool = False
    ) -> None:
        #: whose passkey it was, when known (for events; never shown)
        self.uid = uid
        #: the signature counter did not grow: two copies of the key may exist
        self.clone = clone
        super().__init__(detail)


class CsrfError(TokenwardError):
    """A cookie-authenticated unsafe request failed the CSRF or Origin check."""

    slug = "csrf"
    status = 403
    title = "CSRF check failed"


class Forbidden(TokenwardError):
    """Authenticated, but not allowed to do this."""

    slug = "forbidden"
    status = 403
    title = "Forbidden"


class EmailNotVerified(Forbidden):
    """Login refused until the address is verified (``TOKENWARD_REQUIRE_VERIFIED_EMAIL``).

    Raised only after the password was checked, so it reveals nothing to whoever does not
    know it. ``extra`` adds ``resend``: where to ask for a new verification link.
    """

    slug = "email-not-verified"
    title = "E-mail address not verified"

    def __init__(self, detail: str | None = None, *, resend: str) -> None:
        self.extra = {"resend": resend}
        super().__init__(detail)


class MfaRequired(Forbidden):
    """The route needs a session that signed in with a second factor (``amr`` holds
    ``mfa``): the client should enrol a factor or re-authenticate with one
    (``POST /auth/reauthenticate``)."""

    slug = "mfa-required"
    title = "Second factor required"


class ReauthenticationRequired(Forbidden):
    """The route needs a recent authentication (``auth_time`` too old): the client should
    ask for the password or a code again (``POST /auth/reauthenticate``)."""

    slug = "reauthentication-required"
    title = "Recent authentication required"


class WrongPassword(TokenwardError):
    """The ``current_password`` of a signed-in user was wrong.

    403, not 401: the session itself is fine, so the client must not log in again.
    """

    slug = "invalid-credentials"
    status = 403
    title = "Current password is wrong"


class WrongCode(TokenwardError):
    """A wrong second-factor code from a signed-in user (enrolment, re-authentication).

    403, not 401: the session itself is fine.
    """

    slug = "invalid-code"
    status = 403
    title = "Invalid code"


class RateLimited(TokenwardError):
    """Too many attempts; ``retry_after`` is a whole number of seconds, at least 1."""

    slug = "rate-limited"
    status = 429
    title = "Too many requests"

    def __init__(self, retry_after: int, detail: str | None = None) -> None:
        self.retry_after = max(1, int(retry_after))
        super().__init__(detail)


class RefreshLimited(RateLimited):
    """Too many rotations of one session in the refresh rate window.

    ``first`` is true for the first refusal of the window: report that one (a security
    event), not every retry of a stuck client.
    """

    def __init__(self, retry_after: int, *, first: bool) -> None:
        self.first = first
        super().__init__(retry_after, "too many refreshes of this session")


class Unavailable(TokenwardError):
    """A back end (Redis, the database) did not answer; nothing was changed."""

    slug = "unavailable"
    status = 503
    title = "Service unavailable"


class KeysStale(Unavailable):
    """A verifier's key set is older than its ``max_stale``: every token is refused.

    The issuer's JWKS could not be fetched for that long, so a key withdrawn there (after a
    compromise) might still be trusted here; refusing is the only safe answer. Raised by
    :mod:`tokenward.verifier`, never by the server itself.
    """

    slug = "jwks-stale"
    title = "Signing keys too old to trust"


class PolicyError(TokenwardError):
    """Input broke a rule (password policy, field format); ``rule`` names which one."""

    slug = "validation"
    status = 422
    title = "Validation failed"

    def __init__(self, rule: str, detail: str) -> None:
        self.rule = rule
        super().__init__(detail)


class Conflict(TokenwardError):
    """The resource already exists (an email already registered)."""

    slug = "conflict"
    status = 409
    title = "Conflict"


class NotFound(TokenwardError):
    """No such resource, or not one of the caller's."""

    slug = "not-found"
    status = 404
    title = "Not found"


class BadRequest(TokenwardError):
    """The request is malformed in a way no more specific problem covers."""


class LinkTokenInvalid(BadRequest):
    """The token of an e-mailed link is unknown, expired, used or superseded: one answer
    for all four, so it tells nothing about which."""

    slug = "token-invalid"
    title = "Invalid or expired link"


class CredentialMalformed(BadRequest):
    """The ``credential`` of a passkey request is not a WebAuthn ``PublicKeyCredential``
    in its JSON form (missing fields, bad base64url, wrong structure)."""

    slug = "credential-malformed"
    title = "Malformed passkey credential"


class PasskeyRegistrationFailed(BadRequest):
    """A new passkey was refused: no registration in progress (never started, used or
    expired), or its attestation does not verify (challenge, origin, rp id). Start again
    with ``POST /auth/passkeys/register/options``."""

    slug = "passkey-registration-failed"
    title = "Passkey registration failed"


class PayloadTooLarge(TokenwardError):
    """The request body is larger than the route accepts."""

    slug = "payload-too-large"
    status = 413
    title = "Payload too large"


class UnsupportedMediaType(TokenwardError):
    """The request body's media type is not one the route accepts."""

    slug = "unsupported-media-type"
    status = 415
    title = "Unsupported media type"


class ConfigError(TokenwardError):
    """Configuration is invalid; the message is one line naming the variable."""

    title = "Configuration error"
