"""The SMTP :class:`~tokenward.mail.MailSender` (aiosmtplib), configured by one URL.

``TOKENWARD_SMTP_URL``:

* ``smtps://[user:pass@]host[:465]``: implicit TLS (the connection is TLS from the start);
* ``smtp://[user:pass@]host[:587]``: STARTTLS, required: a server that does not offer it is
  an error, never a silent fall back to plain text;
* ``smtp://host:port?starttls=off``: no TLS at all, accepted only for a loopback host (a
  local relay, a test server).

User name and password are percent-decoded. Every connection and command is bounded by
``TOKENWARD_SMTP_TIMEOUT``; a failure raises, and :class:`~tokenward.mail.Mailer` retries.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib

from tokenward.errors import ConfigError

__all__ = ["SmtpConfig", "SmtpSender"]

_LOOPBACK_NAMES = frozenset({"localhost"})


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    """Where and how to send. ``repr`` hides the password."""

    host: str
    port: int
    tls: Literal["implicit", "starttls", "off"]
    timeout: float
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: str, *, timeout: float) -> SmtpConfig:
        """Parse ``TOKENWARD_SMTP_URL``.

        Raises:
            ConfigError: one line saying what is wrong (never the password).
        """

        def bad(why: str) -> ConfigError:
            return ConfigError(f"TOKENWARD_SMTP_URL: {why}")

        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise bad("not a URL (bad port?)") from None
        if parts.scheme not in ("smtp", "smtps"):
            raise bad("scheme must be smtp (STARTTLS) or smtps (implicit TLS)")
        host = parts.hostname
        if not host:
            raise bad("needs a host")
        query = parse_qs(parts.query)
        unknown = set(query) - {"starttls"}
        if unknown:
            raise bad(f"unknown option {sorted(unknown)[0]!r} (only starttls=off)")
        tls: Literal["implicit", "starttls", "off"]
        if parts.scheme == "smtps":
            tls = "implicit"
            if "starttls" in query:
                raise bad("starttls is for smtp://, smtps:// is TLS already")
        elif query.get("starttls", ["on"]) == ["off"]:
            if not _is_loopback(host):
                raise bad("starttls=off only for a loopback host: mail and passwords would "
                          "cross the network in plain text")  # fmt: skip
            tls = "off"
        elif query.get("starttls", ["on"]) == ["on"]:
            tls = "starttls"
        else:
            raise bad("starttls must be on or off")
        if parts.path not in ("", "/"):
            raise bad("takes no path")
        default_port = 465 if tls == "implicit" else 587
        return cls(
            host=host,
            port=port or default_port,
            tls=tls,
            timeout=timeout,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )


class SmtpSender:
    """Sends each message on its own connection (mails are rare; no pool to go stale)."""

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config

    async def send(self, message: EmailMessage, *, now: int) -> None:
        """See :meth:`tokenward.mail.MailSender.send`."""
        c = self.config
        await aiosmtplib.send(
            message,
            hostname=c.host,
            port=c.port,
            username=c.username,
            password=c.password,
            use_tls=c.tls == "implicit",
            start_tls=True if c.tls == "starttls" else False,  # noqa: SIM210 - never None
            timeout=c.timeout,
        )
