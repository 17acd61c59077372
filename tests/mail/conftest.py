"""Fixtures of the e-mail tests: a real SMTP server (aiosmtpd) on 127.0.0.1, and
Tokenward instances that send to it.

* ``smtp`` -- a started :class:`mail_support.SmtpInbox`: every message it accepts, parsed;
  it can refuse the next N messages (``451``) or stall until released.
* ``mail_tw(**settings)`` -- a started Tokenward on ``redis_url`` whose mail goes to
  ``smtp`` (``TOKENWARD_SMTP_URL=smtp://127.0.0.1:PORT?starttls=off``), with generous
  abuse limits and short retry pauses.
* ``client`` -- an isolated client on the default ``mail_tw()``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from mail_support import MAIL_LIMITS, MakeMailTw, SmtpInbox, isolated_client

from tokenward.runtime import Tokenward
from tw_accounts import GENEROUS_LIMITS
from tw_factory import TokenwardFactory


@pytest.fixture
def smtp() -> Iterator[SmtpInbox]:
    inbox = SmtpInbox()
    inbox.start()
    try:
        yield inbox
    finally:
        inbox.stop()


@pytest.fixture
async def mail_tw(redis_url: str, tmp_path: Any, smtp: SmtpInbox) -> AsyncIterator[MakeMailTw]:
    factory = TokenwardFactory(redis_url, tmp_path, issuer="https://tokenward.test")

    async def make(**overrides: Any) -> Tokenward:
        settings = {**GENEROUS_LIMITS, **MAIL_LIMITS, "smtp_url": smtp.url, **overrides}
        tw = await factory.make(**{k: v for k, v in settings.items() if v is not None})
        tw.mailer.retry_delays = (0.05, 0.05, 0.05)
        return tw

    yield make
    await factory.stop_all()


@pytest.fixture
async def tw(mail_tw: MakeMailTw) -> Tokenward:
    return await mail_tw()


@pytest.fixture
async def client(tw: Tokenward) -> AsyncIterator[httpx.AsyncClient]:
    async with isolated_client(tw) as c:
        yield c
