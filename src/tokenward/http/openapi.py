"""The OpenAPI 3.1 document served at ``/openapi.json``, built from one table of endpoints.

Each endpoint lists every status it can answer; every error status points at the
problem+json schema, with the problem ``type`` values that status can carry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from tokenward.http import schemas

if TYPE_CHECKING:
    from tokenward.runtime import Tokenward

__all__ = ["PROBLEM_TYPES", "openapi_document"]


def _problem_types() -> dict[int, list[str]]:
    """Status -> the problem types an answer with that status can carry, read off the
    :class:`~tokenward.errors.TokenwardError` tree (in its order) so a new error class cannot
    be missing here. ``ConfigError`` is start-up only and ``KeysStale`` is raised by
    verifiers in other services: the server never answers either."""
    from tokenward import errors

    never_served = (errors.ConfigError, errors.KeysStale)
    found: dict[int, list[str]] = {}
    todo: list[type[errors.TokenwardError]] = [errors.TokenwardError]
    while todo:
        cls = todo.pop(0)
        todo[:0] = cls.__subclasses__()  # depth first, in definition order
        if cls in never_served:
            continue
        slugs = found.setdefault(cls.status, [])
        if cls.slug not in slugs:
            slugs.append(cls.slug)
    return dict(sorted(found.items()))


PROBLEM_TYPES: dict[int, list[str]] = _problem_types()

_STR = {"type": "string"}
#: An HTML form post is answered 303 whatever it holds (errors go in the redirect's query),
#: so its schema promises nothing about the fields; the JSON body is checked as Credentials.
_FORM_CREDENTIALS = {"type": "object", "properties": {"email": _STR, "password": _STR}}
#: The routes that also take an HTML form post (answered 303), with the form's fields.
_FORMS = {
    "/auth/login": _FORM_CREDENTIALS,
    "/auth/register": _FORM_CREDENTIALS,
    "/auth/login/mfa": {"type": "object", "properties": {"challenge": _STR, "code": _STR}},
}
#: Where the models' schemas live in the document.
_REF = "#/components/schemas/{model}"
_RESPONSE_HEADERS: dict[int, dict[str, Any]] = {
    429: {
        "Retry-After": {
            "description": "Seconds to wait before trying again.",
            "required": True,
            "schema": {"type": "integer", "minimum": 1},
        }
    },
    503: {
        "Retry-After": {
            "description": "Seconds to wait before trying again.",
            "required": True,
            "schema": {"type": "integer", "minimum": 1},
        }
    },
    401: {
        "WWW-Authenticate": {
            "description": 'Bearer requests: `Bearer error="invalid_token"`.',
            "schema": {"type": "string"},
        }
    },
}
#: Who may call what: refresh takes the refresh cookie or a body token (never the access
#: token); logout also takes a body refresh token, so "no header, no cookie" is allowed there.
_SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "/auth/refresh": [{"refreshCookie": []}, {}],
    "/auth/logout": [{"bearer": []}, {"cookie": []}, {"refreshCookie": []}, {}],
    # The e-mailed link is the proof: no session needed.
    "/auth/email/verify": [{}],
    "/auth/email/verify/resend": [{"bearer": []}, {"cookie": []}, {}],
    "/auth/password/forgot": [{}],
    "/auth/password/reset": [{}],
    "/auth/email/change/confirm": [{}],
}
#: Second-factor routes: not served with TOKENWARD_MFA=off.
_MFA_PATHS = frozenset(
    {
        "/auth/login/mfa",
        "/auth/login/mfa/enroll",
        "/auth/mfa",
        "/auth/mfa/totp/enroll",
        "/auth/mfa/totp/confirm",
        "/auth/mfa/totp",
        "/auth/mfa/recovery-codes",
        "/auth/passkeys/register/options",
        "/auth/passkeys/register",
        "/auth/passkeys",
        "/auth/passkeys/{id}",
        "/auth/login/passkey/options",
        "/auth/login/passkey",
        "/auth/login/mfa/passkey/options",
    }
)
#: Routes called without a session.
_NO_SESSION = (
    "/auth/register",
    "/auth/login",
    "/auth/login/mfa",
    "/auth/login/mfa/enroll",
    "/auth/login/passkey/options",
    "/auth/login/passkey",
    "/auth/login/mfa/passkey/options",
)
#: Paths whose body is required (the others accept an empty one).
_BODY_REQUIRED = (
    "/auth/login",
    "/auth/register",
    "/auth/password",
    "/auth/email/verify",
    "/auth/password/forgot",
    "/auth/password/reset",
    "/auth/email/change",
    "/auth/email/change/confirm",
    "/auth/login/mfa",
    "/auth/login/mfa/enroll",
    "/auth/mfa/totp/confirm",
    "/auth/reauthenticate",
    "/auth/passkeys/register",
    "/auth/passkeys/{id}",
    "/auth/login/passkey",
    "/auth/login/mfa/passkey/options",
)
#: A body's shape: a model (:mod:`tokenward.http.schemas`), a list of one, a plain schema.
Shape = type[BaseModel] | tuple[Literal["array"], type[BaseModel]] | dict[str, Any] | None

# method, path, summary, request shape, success status, success shape, error statuses
_AUTHED = [400, 401, 403, 503]
_ENDPOINTS: list[tuple[str, str, str, Shape, int, Shape, list[int]]] = [
    (
        "post",
        "/auth/register",
        "Create an account",
        schemas.Credentials,
        201,
        schemas.UserOut,
        [400, 403, 409, 413, 415, 422, 429, 503],
    ),
    (
        "post",
        "/auth/login",
        "Log in",
        schemas.Credentials,
        200,
        schemas.SessionBody,
        [400, 401, 403, 413, 415, 422, 429, 503],
    ),
    (
        "post",
        "/auth/refresh",
        "Rotate the refresh token",
        schemas.RefreshRequest,
        200,
        schemas.SessionBody,
        [400, 401, 403, 413, 415, 422, 429, 503],
    ),
    (
        "post",
        "/auth/logout",
        "End the current session",
        schemas.RefreshRequest,
        204,
        None,
        [400, 401, 403, 404, 413, 415, 422, 503],
    ),
    (
        "post",
        "/auth/logout-all",
        "End every session",
        schemas.LogoutAllRequest,
        204,
        None,
        [*_AUTHED, 413, 415, 422],
    ),
    ("get", "/auth/me", "The current user", None, 200, schemas.UserOut, _AUTHED),
    (
        "get",
        "/auth/sessions",
        "The user's live sessions",
        None,
        200,
        ("array", schemas.SessionRow),
        _AUTHED,
    ),
    (
        "get",
        "/auth/sessions/ended",
        "Recently ended sessions and why",
        None,
        200,
        ("array", schemas.EndedRow),
        _AUTHED,
    ),
    (
        "get",
        "/auth/events",
        "The user's own recent security events, newest first",
        None,
        200,
        ("array", schemas.EventRow),
        _AUTHED,
    ),
    (
        "delete",
        "/auth/sessions/{sid}",
        "End one of the user's sessions",
        None,
        204,
        None,
        [*_AUTHED, 404],
    ),
    (
        "post",
        "/auth/password",
        "Change the password",
        schemas.PasswordChange,
        204,
        None,
        [*_AUTHED, 413, 415, 422, 429],
    ),
    (
        "post",
        "/auth/token",
        "An access token for one of the deployment's services (TOKENWARD_AUDIENCES), for "
        "the current session; bearer clients only; never outlives the token presented",
        schemas.TokenRequest,
        200,
        schemas.ServiceToken,
        [*_AUTHED, 413, 415, 422],
    ),
    (
        "post",
        "/auth/email/verify",
        "Confirm the account's e-mail address with the token of the mailed link",
        schemas.LinkToken,
        200,
        schemas.VerifiedOut,
        [400, 403, 413, 415, 422, 503],
    ),
    (
        "post",
        "/auth/email/verify/resend",
        "Mail a new verification link: to the signed-in user, or to `{email}` (202 whether "
        "or not an account has it)",
        schemas.ResendRequest,
        202,
        schemas.Accepted,
        [400, 401, 403, 413, 415, 422, 429, 503],
    ),
    (
        "post",
        "/auth/password/forgot",
        "Mail a password reset link; 202 and the same body whether or not an account has "
        "the address",
        schemas.EmailRequest,
        202,
        schemas.Accepted,
        [400, 403, 413, 415, 422, 429, 503],
    ),
    (
        "post",
        "/auth/password/reset",
        "Set a new password with the token of the mailed link; ends every session",
        schemas.PasswordReset,
        204,
        None,
        [400, 403, 413, 415, 422, 503],
    ),
    (
        "post",
        "/auth/email/change",
        "Change the address: checks the password, mails a confirmation link to the new one",
        schemas.EmailChange,
        202,
        schemas.Accepted,
        [*_AUTHED, 409, 413, 415, 422, 429],
    ),
    (
        "post",
        "/auth/email/change/confirm",
        "Confirm an address change with the token of the link mailed to the new address; "
        "the old address gets a notice",
        schemas.LinkToken,
        200,
        schemas.EmailOut,
        [400, 403, 409, 413, 415, 422, 503],
    ),
    (
        "post",
        "/auth/login/mfa",
        "Second step of a login (after a `mfa_required` answer): the challenge and a TOTP or "
        "recovery code open the session",
        schemas.MfaLogin,
        200,
        schemas.MfaSessionBody,
        [400, 401, 403, 409, 413, 415, 422, 429, 503],
    ),
    (
        "post",
        "/auth/login/mfa/enroll",
        "TOKENWARD_MFA=required, no factor yet (`enrollment_required`): a TOTP secret for "
        "the login's challenge; its first code then goes to POST /auth/login/mfa",
        schemas.MfaEnrollChallenge,
        200,
        schemas.TotpEnrolment,
        [400, 401, 413, 415, 422, 503],
    ),
    (
        "get",
        "/auth/mfa",
        "The user's second factors and recovery codes left",
        None,
        200,
        schemas.MfaStatus,
        _AUTHED,
    ),
    (
        "post",
        "/auth/mfa/totp/enroll",
        "A new TOTP secret (text, otpauth URI, SVG QR code), pending until confirmed; needs "
        "a recent authentication",
        None,
        201,
        schemas.TotpEnrolment,
        [*_AUTHED, 409, 413, 415, 422],
    ),
    (
        "post",
        "/auth/mfa/totp/confirm",
        "Activate the pending TOTP factor with its first code; answers the ten recovery "
        "codes, once",
        schemas.MfaCode,
        200,
        schemas.RecoveryCodes,
        [*_AUTHED, 404, 413, 415, 422, 429],
    ),
    (
        "delete",
        "/auth/mfa/totp",
        "Remove the TOTP factor and the recovery codes; needs a recent second factor",
        None,
        204,
        None,
        [*_AUTHED, 404],
    ),
    (
        "post",
        "/auth/mfa/recovery-codes",
        "Ten new recovery codes (the old ones stop working); needs a recent second factor",
        None,
        200,
        schemas.RecoveryCodes,
        [*_AUTHED, 404, 413, 415, 422],
    ),
    (
        "post",
        "/auth/login/mfa/passkey/options",
        "Second step of a login with a passkey: request options (the user's passkeys) for "
        "the login's challenge; the answer goes to POST /auth/login/mfa as `credential`",
        schemas.MfaPasskeyOptions,
        200,
        schemas.PasskeyRequestOptions,
        [400, 401, 404, 413, 415, 422, 503],
    ),
    (
        "post",
        "/auth/login/passkey/options",
        "Sign in with a passkey, no e-mail typed: request options (empty "
        "`allowCredentials`, user verification required) and the `handle` to send back",
        None,
        200,
        schemas.PasskeyRequestOptions,
        [400, 403, 413, 415, 422, 503],
    ),
    (
        "post",
        "/auth/login/passkey",
        "Sign in with a passkey: the handle and the assertion open the session (answered as "
        "a login: tokens in bearer mode, cookies otherwise)",
        schemas.PasskeySignIn,
        200,
        schemas.SessionBody,
        [400, 401, 403, 413, 415, 422, 503],
    ),
    (
        "get",
        "/auth/passkeys",
        "The user's passkeys (never a key)",
        None,
        200,
        schemas.PasskeyList,
        _AUTHED,
    ),
    (
        "post",
        "/auth/passkeys/register/options",
        "Creation options for a new passkey (a discoverable credential); needs a recent "
        "authentication",
        None,
        200,
        schemas.PasskeyCreationOptions,
        [*_AUTHED, 413, 415, 422],
    ),
    (
        "post",
        "/auth/passkeys/register",
        "Register the passkey `navigator.credentials.create()` made for those options",
        schemas.PasskeyRegistration,
        201,
        schemas.PasskeyOut,
        [*_AUTHED, 409, 413, 415, 422],
    ),
    (
        "patch",
        "/auth/passkeys/{id}",
        "Rename a passkey (404: none of the user's)",
        schemas.PasskeyRename,
        200,
        schemas.PasskeyOut,
        [*_AUTHED, 404, 413, 415, 422],
    ),
    (
        "delete",
        "/auth/passkeys/{id}",
        "Remove a passkey; needs a recent second factor (404: none of the user's)",
        None,
        204,
        None,
        [*_AUTHED, 404],
    ),
    (
        "post",
        "/auth/reauthenticate",
        "Authenticate again (password, code, or both): the session's `auth_time` is now and "
        "the methods given join its `amr`; the session is re-keyed",
        schemas.ReauthRequest,
        204,
        None,
        [*_AUTHED, 404, 413, 415, 422, 429],
    ),
    (
        "get",
        "/.well-known/jwks.json",
        "Public keys that verify access tokens",
        None,
        200,
        schemas.Jwks,
        [],
    ),
    ("get", "/healthz", "Liveness", None, 200, {"type": "object"}, []),
    (
        "get",
        "/readyz",
        "Readiness, per component (redis, database, revocation_feed, signing_keys); "
        "503 only when sessions cannot be served",
        None,
        200,
        {"type": "object"},
        [503],
    ),
    (
        "get",
        "/metrics",
        "Prometheus metrics (text exposition format); only with TOKENWARD_METRICS_TOKEN, "
        "as its bearer token",
        None,
        200,
        None,
        [401],
    ),
]


class _Components:
    """The document's ``components/schemas``: each model once, referenced by name."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def ref(self, model: type[BaseModel]) -> dict[str, str]:
        # Validation mode: a field with a default is optional in the schema, which is how
        # the answers use them too (the tokens appear in bearer mode only).
        schema = model.model_json_schema(ref_template=_REF, mode="validation")
        self.schemas.update(schema.pop("$defs", {}))
        self.schemas[model.__name__] = schema
        return {"$ref": _REF.format(model=model.__name__)}

    def shape(self, shape: Shape) -> dict[str, Any] | None:
        if shape is None or isinstance(shape, dict):
            return shape
        if isinstance(shape, tuple):
            return {"type": "array", "items": self.ref(shape[1])}
        return self.ref(shape)


def openapi_document(tw: Tokenward | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document."""
    paths: dict[str, Any] = {}
    components = _Components()
    problem = components.ref(schemas.Problem)
    access_cookie, refresh_cookie = "__Host-access_token", "__Secure-refresh_token"
    if tw is not None:
        access_cookie, refresh_cookie = tw.cookies.names.access, tw.cookies.names.refresh
    for method, path, summary, request_shape, status, success, errors in _ENDPOINTS:
        request, schema = components.shape(request_shape), components.shape(success)
        if path == "/metrics" and (tw is None or tw.settings.metrics_token is None):
            continue  # the public app serves /metrics only to a scrape token
        if path in _MFA_PATHS and tw is not None and tw.settings.mfa == "off":
            continue  # TOKENWARD_MFA=off: not served
        responses: dict[str, Any] = {}
        ok: dict[str, Any] = {"description": "Success"}
        if schema is not None:
            ok["content"] = {"application/json": {"schema": schema}}
        if status == 200 and path == "/auth/login":
            ok["description"] = (
                "Logged in; or, for a user who must give a second factor, `mfa_required` "
                "with a challenge and no session (HTML form posts get 303 instead)"
            )
            challenge = components.ref(schemas.MfaChallengeBody)
            ok["content"]["application/json"]["schema"] = {"oneOf": [schema, challenge]}
        responses[str(status)] = ok
        if path in _FORMS:
            responses["303"] = {"description": "HTML form post: go to the next page"}
        if path in ("/auth/password", "/auth/logout-all", "/auth/reauthenticate"):
            # The kept session is re-keyed; bearer clients get its new tokens in a body.
            responses["200"] = {
                "description": "Bearer transport: the session kept, with its new tokens "
                "(the old refresh token is retired; presenting it again ends the session)",
                "content": {"application/json": {"schema": components.ref(schemas.SessionBody)}},
            }
        for code in errors:
            types = " | ".join(f"urn:tokenward:problem:{t}" for t in PROBLEM_TYPES[code])
            responses[str(code)] = {
                "description": types,
                "content": {"application/problem+json": {"schema": problem}},
            }
            if code in _RESPONSE_HEADERS:
                responses[str(code)]["headers"] = _RESPONSE_HEADERS[code]
        op: dict[str, Any] = {"summary": summary, "responses": responses}
        if request is not None:
            content: dict[str, Any] = {"application/json": {"schema": request}}
            if path in _FORMS:
                content["application/x-www-form-urlencoded"] = {"schema": _FORMS[path]}
            op["requestBody"] = {
                "required": path in _BODY_REQUIRED,
                "content": content,
            }
        if path.startswith("/auth/") and path not in _NO_SESSION:
            op["security"] = _SECURITY.get(path, [{"bearer": []}, {"cookie": []}])
        for name in ("sid", "id"):
            if "{" + name + "}" in path:
                param = {"name": name, "in": "path", "required": True, "schema": _STR}
                op["parameters"] = [param]
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Tokenward", "version": "1"},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": access_cookie},
                "refreshCookie": {"type": "apiKey", "in": "cookie", "name": refresh_cookie},
            },
            "schemas": dict(sorted(components.schemas.items())),
        },
    }
