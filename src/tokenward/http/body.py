"""Reading request bodies strictly: size, media type, shape and field types.

Auth bodies are small flat objects of strings (and one boolean). Anything else is refused
with a precise problem before it reaches the core: 413 past :data:`MAX_BODY`, 415 for a
media type the route does not take, 400 for bytes that do not parse, 422 for a wrong shape
or type (naming the field, never echoing its value).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import ClientDisconnect, Request

from tokenward.errors import BadRequest, PayloadTooLarge, PolicyError, UnsupportedMediaType

__all__ = ["MAX_BODY", "Body", "read_body"]

#: 16 KiB: a login body is a few hundred bytes; a 1024-character password fits many times.
MAX_BODY = 16 * 1024
_MAX_FORM_FIELDS = 16


class Body:
    """A parsed body with typed accessors.

    Attributes:
        form: whether it came as an HTML form post (the answer is then a redirect).
    """

    def __init__(self, data: dict[str, Any], *, form: bool) -> None:
        self.data = data
        self.form = form

    def string(self, name: str, *, required: bool = True, max_length: int = 4096) -> str | None:
        """A string field; 422 when missing (if required), not a string, or too long."""
        value = self.data.get(name)
        if value is None:
            if required:
                raise PolicyError("required", f"field '{name}' is required")
            return None
        if not isinstance(value, str):
            raise PolicyError("type", f"field '{name}' must be a string")
        if len(value) > max_length:
            raise PolicyError("too-long", f"field '{name}' is too long")
        return value

    def token(self, name: str) -> str | None:
        """A credential field (a refresh token): a string of any length, or ``None`` when
        absent or null; 422 only when it is not a string.

        No length rule: a value too long to be a token is a wrong credential, which the
        caller answers with 401 when it fails to verify, not a malformed body (a 10 KB
        token once got 422 ``too-long``). :data:`MAX_BODY` already bounds what is read.
        """
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise PolicyError("type", f"field '{name}' must be a string")
        return value

    def boolean(self, name: str, *, default: bool) -> bool:
        """A boolean field; 422 when present and not a boolean."""
        value = self.data.get(name, default)
        if not isinstance(value, bool):
            raise PolicyError("type", f"field '{name}' must be a boolean")
        return value


async def _read_limited(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        # isdigit() alone accepts '²' (latin-1 0xB2), which int() then refuses; and int()
        # refuses more than 4300 digits, so the length is bounded before it is converted.
        if not (length.isascii() and length.isdigit()):
            raise BadRequest("invalid Content-Length")
        digits = length.lstrip("0")
        if len(digits) > len(str(MAX_BODY)) or int(digits or "0") > MAX_BODY:
            raise PayloadTooLarge(f"body larger than {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                raise PayloadTooLarge(f"body larger than {MAX_BODY} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        # The client left, or the server cut a body that came too slowly (it has answered
        # 408 itself: tokenward.http.server). Nobody reads this answer; it only keeps a
        # routine event out of the error log.
        raise BadRequest("the connection ended before the body was complete") from None
    return b"".join(chunks)


async def read_body(
    request: Request, *, allow_form: bool = False, allow_empty: bool = False
) -> Body:
    """Read and parse the request body.

    Args:
        request: the request.
        allow_form: accept ``application/x-www-form-urlencoded`` (login and register).
        allow_empty: an empty body (with or without a media type) is an empty object.
    """
    raw = await _read_limited(request)
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if not raw and allow_empty:
        return Body({}, form=False)
    if media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    ):
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadRequest("body is not valid JSON") from None
        if not isinstance(data, dict):
            raise PolicyError("type", "body must be a JSON object")
        return Body(data, form=False)
    if allow_form and media == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(
                raw.decode("utf-8"), strict_parsing=bool(raw), max_num_fields=_MAX_FORM_FIELDS
            )
        except (UnicodeDecodeError, ValueError):
            raise BadRequest("body is not a valid form") from None
        return Body(dict(pairs), form=True)
    accepted = "application/json" + (" or application/x-www-form-urlencoded" if allow_form else "")
    raise UnsupportedMediaType(f"send {accepted}")
