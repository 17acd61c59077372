"""Helpers of the e-mail tests: a real SMTP server to read mail from, link extraction.

:class:`SmtpInbox` is an aiosmtpd server on 127.0.0.1 (in its own thread and event loop, as
a mail server is its own process in production). Tests wait for mail with bounded polls.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import threading
from collections.abc import Awaitable, Callable
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

import httpx
from aiosmtpd.controller import Controller

from ports import free_port
from tokenward.http.app import create_app
from tokenward.runtime import Tokenward
from tw_accounts import ORIGIN
from waiting import await_until

MakeMailTw = Callable[..., Awaitable[Tokenward]]

#: Mail limits no test trips unless it is about them.
MAIL_LIMITS: dict[str, int] = {"mail_address_limit": 1_000_000, "mail_ip_limit": 1_000_000}
BEARER = {"X-Auth-Transport": "bearer"}
#: Shaped like a link token (a user id, a dot, 43 characters), but no link's.
UNKNOWN = "0123456789abcdef0123456789abcdef." + "C" * 43
_LINK = re.compile(
    r"https://tokenward\.test(/[a-z-]+)\?token=([A-Za-z0-9_-]{1,64}\.[A-Za-z0-9_-]{43})"
)
#: Seconds a mail may take to arrive (it is sent in the background).
ARRIVAL = 10.0


def isolated_client(tw: Tokenward) -> httpx.AsyncClient:
    """A client on ``tw``'s app from a random 10/8 address of its own (rate limits are
    kept per client address in the shared Redis)."""
    host = "10." + ".".join(str(secrets.randbelow(254) + 1) for _ in range(3))
    transport = httpx.ASGITransport(app=create_app(tw, manage_lifespan=False), client=(host, 1))
    return httpx.AsyncClient(transport=transport, base_url=ORIGIN)


class _Handler:
    def __init__(self, inbox: SmtpInbox) -> None:
        self.inbox = inbox

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        inbox = self.inbox
        with inbox.lock:
            inbox.attempts += 1
            refuse = inbox.refuse_next > 0
            if refuse:
                inbox.refuse_next -= 1
        if refuse:
            return "451 4.3.0 try again later"
        if inbox.stall is not None:
            # The server hangs (a slow mail server) until the test releases it.
            await asyncio.get_running_loop().run_in_executor(None, inbox.stall.wait)
        parsed = message_from_bytes(envelope.content, policy=SMTP)
        assert isinstance(parsed, EmailMessage)
        with inbox.lock:
            inbox.messages.append(parsed)
        return "250 OK"


class SmtpInbox:
    """A real SMTP server that keeps what it is sent."""

    def __init__(self) -> None:
        self.port = free_port()
        self.lock = threading.Lock()
        self.messages: list[EmailMessage] = []
        self.attempts = 0
        self.refuse_next = 0
        self.stall: threading.Event | None = None
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}?starttls=off"

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        if self.stall is not None:
            self.stall.set()
        self._controller.stop()

    def to(self, address: str) -> list[EmailMessage]:
        """The messages sent to ``address`` so far, oldest first."""
        with self.lock:
            return [m for m in self.messages if address in str(m["To"])]

    async def wait_for(self, address: str, count: int = 1) -> list[EmailMessage]:
        """The messages to ``address`` once there are ``count`` of them (bounded wait)."""
        await await_until(
            lambda: len(self.to(address)) >= count,
            within=ARRIVAL,
            what=f"{count} mail(s) to {address}",
        )
        return self.to(address)


def text_of(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert isinstance(body, EmailMessage)
    return str(body.get_content())


def html_of(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("html",))
    assert isinstance(body, EmailMessage)
    return str(body.get_content())


def link_of(message: EmailMessage) -> tuple[str, str]:
    """The (page path, token) of the one link in a mail's text body; the HTML body has it
    too."""
    found = _LINK.findall(text_of(message))
    assert len(found) == 1, text_of(message)
    page, token = found[0]
    assert token in html_of(message)
    return page, token


async def settled(tw: Tokenward) -> None:
    """Every event, mail job and queued mail of ``tw`` so far has been handled."""
    await tw.events.drain()
    await tw.email_flows.drain()
