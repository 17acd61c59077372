"""Structured log lines (tokenward.logs): JSON, one per line, with secrets blanked."""

from __future__ import annotations

import io
import logging
import sys

import orjson

from tokenward.logs import REDACTED, JsonFormatter, RedactingFilter, configure_logging, redact

JWT = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
REFRESH = "0123456789abcdef0123456789abcdef." + "s" * 22 + "." + "k" * 43


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("tokenward.test", logging.INFO, __file__, 1, msg, args, None)
    for k, v in extra.items():
        setattr(record, k, v)
    return record


def test_secret_looking_fields_are_blanked_at_any_depth() -> None:
    """A field named like a secret loses its value; other fields stay."""
    data = {
        "password": "hunter2-hunter2",
        "nested": {"refresh_token": "abc", "csrf": "def", "ip": "192.0.2.1"},
        "list": [{"Authorization": "Bearer x"}],
        "kind": "login.failed",
    }
    assert redact(data) == {
        "password": REDACTED,
        "nested": {"refresh_token": REDACTED, "csrf": REDACTED, "ip": "192.0.2.1"},
        "list": [{"Authorization": REDACTED}],
        "kind": "login.failed",
    }


def test_credentials_in_free_text_are_blanked() -> None:
    """JWTs, refresh tokens, bearer credentials and secret=value pairs in messages."""
    text = f"got {JWT} and {REFRESH}; Authorization: Bearer abc.def password=hunter2 ok=1"
    out = redact(text)
    for secret in (JWT, REFRESH, "abc.def", "hunter2"):
        assert secret not in out
    assert "ok=1" in out


def test_json_formatter_writes_one_parseable_line_with_the_event() -> None:
    """Message, level, logger, time and the event, as JSON on one line."""
    line = JsonFormatter().format(
        _record("login.failed %s", "x\ny", event={"kind": "login.failed", "token": JWT})
    )
    assert "\n" not in line
    data = orjson.loads(line)
    assert data["level"] == "info"
    assert data["logger"] == "tokenward.test"
    assert data["message"] == "login.failed x\ny"
    assert data["event"] == {"kind": "login.failed", "token": REDACTED}
    assert data["ts"].endswith("Z")


def test_tracebacks_are_redacted_too() -> None:
    """An exception whose message carries a token is logged with the token blanked."""
    try:
        raise ValueError(f"bad token {JWT}")
    except ValueError:
        record = logging.LogRecord(
            "tokenward.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    data = orjson.loads(JsonFormatter().format(record))
    assert data["error"]["type"] == "ValueError"
    assert JWT not in data["error"]["trace"]


def test_redacting_filter_and_configure_logging() -> None:
    """The filter cleans records for any handler; configure_logging writes JSON lines."""
    record = _record("refresh with %s", REFRESH)
    assert RedactingFilter().filter(record)
    assert REFRESH not in record.getMessage()
    stream = io.StringIO()
    logger = logging.getLogger("tokenward")
    level = logger.level
    handler = configure_logging("debug", stream=stream)
    try:
        logging.getLogger("tokenward.events").info("hello %s", JWT)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    data = orjson.loads(stream.getvalue().splitlines()[-1])
    assert data["message"] == f"hello {REDACTED}"
