"""The OpenAPI 3.1 document served at ``/openapi.json``, built from one table of endpoints.

Each endpoint lists every status it can answer; every error status points at the
problem+json schema, with the problem ``type`` values that status can carry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
_TIME = {"type": "string", "format": "date-time"}
_PASSWORD = {
    "type": "string",
    "description": "At most 1024 characters after NFKC normalisation (longer: 422 before any "
    "hashing). To register, also at least TOKENWARD_PASSWORD_MIN_LENGTH characters, not "
    "common or breached, not containing the email (NIST SP 800-63B-4; 422 names the rule).",
}
_CREDENTIALS = {
    "type": "object",
    "required": ["email", "password"],
    "properties": {"email": {"type": "string", "maxLength": 1024}, "password": _PASSWORD},
}
#: An HTML form post is answered 303 whatever it holds (errors go in the redirect's query).
_FORM_CREDENTIALS = {"type": "object", "properties": {"email": _STR, "password": _STR}}
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
}
_USER = {
    "type": "object",
    "required": ["id", "email", "created_at"],
    "properties": {"id": _STR, "email": _STR, "created_at": _TIME},
}
_SESSION_BODY = {
    "type": "object",
    "required": ["user", "session"],
    "properties": {
        "user": {
            "type": "object",
            "required": ["id"],
            "properties": {
                "id": _STR,
                # Sessions do not store the address: only a login (which read the user) has
                # it at hand. GET /auth/me gives it.
                "email": {**_STR, "description": "on login only"},
            },
        },
        "session": {
            "type": "object",
            "required": ["id", "expires_at"],
            "properties": {"id": _STR, "expires_at": _TIME},
        },
        "access_token": _STR,
        "refresh_token": _STR,
        "token_type": {"type": "string", "const": "Bearer"},
        "expires_in": {"type": "integer"},
        "refresh_expires_in": {"type": "integer"},
    },
}
_SESSION_ROW = {
    "type": "object",
    "required": ["id", "created_at", "last_used_at", "expires_at", "ip", "user_agent", "current"],
    "properties": {
        "id": _STR,
        "created_at": _TIME,
        "last_used_at": _TIME,
        "expires_at": _TIME,
        "ip": _STR,
        "user_agent": _STR,
        "current": {"type": "boolean"},
    },
}
_ENDED_ROW = {
    "type": "object",
    "required": ["id", "reason", "ended_at"],
    "properties": {"id": _STR, "reason": _STR, "ended_at": _TIME},
}
_EVENT_ROW = {
    "type": "object",
    "required": ["id", "kind", "at", "ip", "user_agent", "session_id", "detail"],
    "properties": {
        "id": _STR,
        "kind": {
            "type": "string",
            "enum": [
                "account.registered",
                "login.succeeded",
                "login.failed",
                "login.new-device",
                "throttled",
                "refresh.reused",
                "refresh.grace-replay",
                "password.changed",
                "sessions.ended",
            ],
        },
        "at": _TIME,
        "ip": _STR,
        "user_agent": _STR,
        "session_id": {"type": ["string", "null"]},
        "detail": {
            "type": "object",
            "additionalProperties": {"type": ["string", "integer"]},
        },
    },
}

# method, path, summary, request schema (or None), success status, success schema, error statuses
_AUTHED = [400, 401, 403, 503]
_ENDPOINTS: list[
    tuple[str, str, str, dict[str, Any] | None, int, dict[str, Any] | None, list[int]]
] = [
    (
        "post",
        "/auth/register",
        "Create an account",
        _CREDENTIALS,
        201,
        _USER,
        [400, 403, 409, 413, 415, 422, 429, 503],
    ),
    (
        "post",
        "/auth/login",
        "Log in",
        _CREDENTIALS,
        200,
        _SESSION_BODY,
        [400, 401, 403, 413, 415, 422, 429, 503],
    ),
    (
        "post",
        "/auth/refresh",
        "Rotate the refresh token",
        {"type": "object", "properties": {"refresh_token": _STR}},
        200,
        _SESSION_BODY,
        [400, 401, 403, 413, 415, 422, 429, 503],
    ),
    (
        "post",
        "/auth/logout",
        "End the current session",
        # null is read as absent (a client's "no token" field), as everywhere in bodies
        {"type": "object", "properties": {"refresh_token": {"type": ["string", "null"]}}},
        204,
        None,
        [400, 401, 403, 404, 413, 415, 422, 503],
    ),
    (
        "post",
        "/auth/logout-all",
        "End every session",
        {"type": "object", "properties": {"keep_current": {"type": "boolean"}}},
        204,
        None,
        [*_AUTHED, 413, 415, 422],
    ),
    ("get", "/auth/me", "The current user", None, 200, _USER, _AUTHED),
    (
        "get",
        "/auth/sessions",
        "The user's live sessions",
        None,
        200,
        {"type": "array", "items": _SESSION_ROW},
        _AUTHED,
    ),
    (
        "get",
        "/auth/sessions/ended",
        "Recently ended sessions and why",
        None,
        200,
        {"type": "array", "items": _ENDED_ROW},
        _AUTHED,
    ),
    (
        "get",
        "/auth/events",
        "The user's own recent security events, newest first",
        None,
        200,
        {"type": "array", "items": _EVENT_ROW},
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
        {
            "type": "object",
            "required": ["current_password", "new_password"],
            "properties": {"current_password": _STR, "new_password": _PASSWORD},
        },
        204,
        None,
        [*_AUTHED, 413, 415, 422, 429],
    ),
    (
        "post",
        "/auth/token",
        "An access token for one of the deployment's services (TOKENWARD_AUDIENCES), for "
        "the current session; bearer clients only; never outlives the token presented",
        {"type": "object", "required": ["audience"], "properties": {"audience": _STR}},
        200,
        {
            "type": "object",
            "required": ["access_token", "token_type", "expires_in", "audience"],
            "properties": {
                "access_token": _STR,
                "token_type": {"const": "Bearer"},
                "expires_in": {"type": "integer"},
                "audience": _STR,
            },
        },
        [*_AUTHED, 413, 415, 422],
    ),
    (
        "get",
        "/.well-known/jwks.json",
        "Public keys that verify access tokens",
        None,
        200,
        {
            "type": "object",
            "required": ["keys"],
            "properties": {"keys": {"type": "array", "items": {"type": "object"}}},
        },
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


def openapi_document(tw: Tokenward | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document."""
    paths: dict[str, Any] = {}
    access_cookie, refresh_cookie = "__Host-access_token", "__Secure-refresh_token"
    if tw is not None:
        access_cookie, refresh_cookie = tw.cookies.names.access, tw.cookies.names.refresh
    for method, path, summary, request, status, schema, errors in _ENDPOINTS:
        if path == "/metrics" and (tw is None or tw.settings.metrics_token is None):
            continue  # the public app serves /metrics only to a scrape token
        responses: dict[str, Any] = {}
        ok: dict[str, Any] = {"description": "Success"}
        if schema is not None:
            ok["content"] = {"application/json": {"schema": schema}}
        if status == 200 and path == "/auth/login":
            ok["description"] = "Logged in (HTML form posts get 303 instead)"
        responses[str(status)] = ok
        if path in ("/auth/login", "/auth/register"):
            responses["303"] = {"description": "HTML form post: go to the next page"}
        if path in ("/auth/password", "/auth/logout-all"):
            # The kept session is re-keyed; bearer clients get its new tokens in a body.
            responses["200"] = {
                "description": "Bearer transport: the session kept, with its new tokens "
                "(the old refresh token is retired; presenting it again ends the session)",
                "content": {"application/json": {"schema": _SESSION_BODY}},
            }
        for code in errors:
            types = " | ".join(f"urn:tokenward:problem:{t}" for t in PROBLEM_TYPES[code])
            responses[str(code)] = {
                "description": types,
                "content": {
                    "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
                },
            }
            if code in _RESPONSE_HEADERS:
                responses[str(code)]["headers"] = _RESPONSE_HEADERS[code]
        op: dict[str, Any] = {"summary": summary, "responses": responses}
        if request is not None:
            content: dict[str, Any] = {"application/json": {"schema": request}}
            if path in ("/auth/login", "/auth/register"):
                content["application/x-www-form-urlencoded"] = {"schema": _FORM_CREDENTIALS}
            op["requestBody"] = {
                "required": path in ("/auth/login", "/auth/register", "/auth/password"),
                "content": content,
            }
        if path.startswith("/auth/") and path not in ("/auth/register", "/auth/login"):
            op["security"] = _SECURITY.get(path, [{"bearer": []}, {"cookie": []}])
        if "{sid}" in path:
            op["parameters"] = [{"name": "sid", "in": "path", "required": True, "schema": _STR}]
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
            "schemas": {
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status", "detail"],
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "rule": {"type": "string"},
                        "retry_after": {"type": "integer"},
                    },
                }
            },
        },
    }
