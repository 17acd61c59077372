"""Structured log lines: one JSON object per line, with secrets redacted.

Tokenward never passes a password, token or secret to a logger; this module is the second
line of defence. :func:`redact` blanks the value of any field whose *name* looks secret
(``password``, ``token``, ``secret``, ``csrf``, ``cookie``, ``authorization`` ...) and any
*text* that looks like a credential: a JWT, a Tokenward refresh token, a ``Bearer``
credential, or a ``name=value`` pair with a secret-looking name. :class:`JsonFormatter`
applies it to the message, to the ``event`` a record carries (see
:mod:`tokenward.events`) and to tracebacks.

A line looks like::

    {"ts":"2026-11-29T09:00:00.123Z","level":"info","logger":"tokenward.events",
     "message":"login.failed","event":{"kind":"login.failed","uid":null,"ip":"203.0.113.9",...}}
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

import orjson

__all__ = [
    "REDACTED",
    "JsonFormatter",
    "RedactingFilter",
    "configure_logging",
    "redact",
    "request_id",
]

REDACTED = "[redacted]"

#: The id of the HTTP request being served (set by :mod:`tokenward.http.observability`);
#: every line logged meanwhile, and by the tasks the request starts, carries it.
request_id: ContextVar[str | None] = ContextVar("tokenward_request_id", default=None)

_SECRET_NAME = re.compile(
    r"pass(word|phrase)?|secret|token|csrf|cookie|authorization|jwt|api[_-]?key|private|"
    r"credential|signature",
    re.IGNORECASE,
)
_SECRET_TEXT = [
    # a compact JWS/JWT: its header is base64url JSON, so it starts with "eyJ"
    (re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*"), REDACTED),
    # a refresh token: <uid>.<sid>.<secret>
    (re.compile(r"\b[0-9a-f]{32}\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}"), REDACTED),
    (re.compile(r"(?i)\b(bearer|basic)\s+[^\s,;\"']+"), r"\1 " + REDACTED),
    (
        re.compile(
            r"(?i)\b([\w-]*(?:pass(?:word)?|secret|token|csrf|session|key)[\w-]*)"
            r"(\s*[=:]\s*)([^&\s;,\"']+)"
        ),
        r"\1\2" + REDACTED,
    ),
]


def _redact_text(text: str) -> str:
    for pattern, replacement in _SECRET_TEXT:
        text = pattern.sub(replacement, text)
    return text


def redact(value: Any) -> Any:
    """A copy of ``value`` with secret-looking fields and text blanked.

    Mappings are walked (a secret-looking key blanks its whole value), sequences are
    walked, strings are scanned; other values are returned as they are.
    """
    if isinstance(value, str):
        return _redact_text(value)
    if isinstance(value, Mapping):
        return {
            str(k): REDACTED if _SECRET_NAME.search(str(k)) and v is not None else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line; see the module docstring."""

    def format(self, record: logging.LogRecord) -> str:
        """The JSON line for ``record``."""
        stamp = datetime.fromtimestamp(record.created, UTC)
        data: dict[str, Any] = {
            "ts": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _redact_text(record.getMessage()),
        }
        rid = request_id.get()
        if rid is not None:
            data["request_id"] = rid
        event = getattr(record, "event", None)
        if event is not None:
            data["event"] = redact(event)
        if record.exc_info and record.exc_info[0] is not None:
            data["error"] = {
                "type": record.exc_info[0].__name__,
                "trace": _redact_text(self.formatException(record.exc_info)),
            }
        return orjson.dumps(data, default=str).decode()


class RedactingFilter(logging.Filter):
    """Redacts a record's message in place, for handlers that keep their own format."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Replace the message with its redacted form; never drops a record."""
        message = _redact_text(record.getMessage())
        record.msg, record.args = message, None
        event = getattr(record, "event", None)
        if event is not None:
            record.event = redact(event)
        return True


def configure_logging(level: str = "info", *, stream: IO[str] | None = None) -> logging.Handler:
    """Send the ``tokenward`` loggers' records to ``stream`` (stderr) as JSON lines.

    Args:
        level: ``debug``, ``info``, ``warning`` or ``error`` (``TOKENWARD_LOG_LEVEL``).
        stream: where to write; standard error by default.

    Returns:
        The handler installed (remove it to undo).
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tokenward")
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    return handler
