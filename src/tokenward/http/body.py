"""Reading request bodies strictly: size, media type, shape and field types.

Auth bodies are small flat objects of strings (and one boolean). Anything else is refused
with a precise problem before it reaches the core: 413 past :data:`MAX_BODY`, 415 for a
media type the route does not take, 400 for bytes that do not parse, 422 for a wrong shape
or type (naming the field, never echoing its value).
"""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import parse_qsl

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request

from tokenward.errors import BadRequest, PayloadTooLarge, PolicyError, UnsupportedMediaType

__all__ = ["MAX_BODY", "Body", "read_body"]

M = TypeVar("M", bound=BaseModel)

#: 16 KiB: a login body is a few hundred bytes; a 1024-character password fits many times.
MAX_BODY = 16 * 1024
_MAX_FORM_FIELDS = 16


class Body:
    """A parsed body, checked against a model by :meth:`parse`.

    Attributes:
        form: whether it came as an HTML form post (the answer is then a redirect).
    """

    def __init__(self, data: dict[str, Any], *, form: bool) -> None:
        self.data = data
        self.form = form

    def parse(self, model: type[M]) -> M:
        """The body as ``model`` (:mod:`tokenward.http.schemas`): 422 naming the first field
        that is missing (``required``), of the wrong type (``type``) or too long
        (``too-long``); the value itself is never echoed."""
        try:
            return model.model_validate(self.data)
        except ValidationError as exc:
            error = exc.errors(include_url=False, include_input=False)[0]
            field = ".".join(str(part) for part in error["loc"]) or "body"
            kind = error["type"]
        if kind == "missing":
            raise PolicyError("required", f"field '{field}' is required")
        if kind == "string_too_long":
            raise PolicyError("too-long", f"field '{field}' is too long")
        expected = _EXPECTED.get(kind, "of another type")
        raise PolicyError("type", f"field '{field}' must be {expected}")


#: pydantic's error types -> what the 422 says the field must be.
_EXPECTED = {
    "string_type": "a string",
    "bool_type": "a boolean",
    "int_type": "an integer",
    "literal_error": "one of the listed values",
    "dict_type": "an object",
}


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
