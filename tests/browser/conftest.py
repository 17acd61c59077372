"""Browser tests: a real ``tokenward serve``, Debian's headless Chromium, a foreign site.

Fixtures:

* ``server``           -- session: ``tokenward serve`` on 127.0.0.1, reached by the browser as
  ``http://localhost:<port>`` (the issuer), default settings but for the abuse limits.
* ``short_ttl_server`` -- session: the same with ``TOKENWARD_ACCESS_TTL=2`` and
  ``TOKENWARD_LEEWAY=0`` (refresh tests).
* ``strict_server``    -- session: the same with ``TOKENWARD_REFRESH_GRACE=0`` (a replaced
  refresh token is a theft at once: the theft test).
* ``transparent_server`` -- session: ``TOKENWARD_TRANSPARENT_REFRESH=true`` and no refresh
  grace (a theft found by a protected route's own refresh).
* ``browser``          -- session: Debian's Chromium (``/usr/bin/chromium``) via Playwright.
* ``new_context``      -- factory of browser contexts ("devices"); the test fails at teardown
  if a page threw or the browser reported a Content-Security-Policy violation.
* ``foreign_site``     -- session: ``http://127.0.0.1:<port>``, another site than
  ``localhost``, serving the HTML a test gives it.
* ``smtp``             -- session: a real SMTP server (aiosmtpd, the e-mail tests'
  ``mail_support.SmtpInbox``) that keeps every message it accepts.
* ``mail_server``      -- session: ``tokenward serve`` sending its mail to ``smtp``, with
  its access log on.
* ``verifying_server`` -- session: the same with ``TOKENWARD_REQUIRE_VERIFIED_EMAIL=true``.

Secure cookies over plain http: Chromium treats ``http://localhost`` as a secure context, so
``Secure`` and the ``__Host-`` / ``__Secure-`` prefixes work there as on HTTPS
(``test_browser_cookies.py`` checks it); the servers keep ``TOKENWARD_COOKIE_SECURE=true``.
Helpers live in ``browserkit.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from browserkit import (
    CHROMIUM,
    CHROMIUM_ARGS,
    LOGIN_PAIR_LIMIT,
    SHORT_TTL,
    ForeignSite,
    NewContext,
    Server,
    start_server,
    stop_server,
    watchdog,
)

# The e-mail tests' SMTP server, shared rather than copied (test folders are not packages).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mail"))
from mail_support import SmtpInbox
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    async_playwright,
    expect,
)

# The 5 s default of expect() is tight on a 2-core CI machine that runs servers, Chromium and
# pytest at once; assertions still fail, only later.
expect.set_options(timeout=20_000)


@pytest.fixture(scope="session")
def _servers(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Server]]:
    started: list[tuple[Server, subprocess.Popen[bytes]]] = []

    def start(**overrides: str) -> Server:
        server = start_server(redis_url, tmp_path_factory.mktemp("tokenward"), **overrides)
        started.append((server, watchdog(server.process.pid)))
        return server

    yield start
    for server, guard in started:
        guard.kill()
        guard.wait()
        stop_server(server)


#: Every browser test comes from 127.0.0.1, and both servers share the Redis that keeps
#: the per-address counters: lift the registration limit (20 an hour) out of the way.
LIMITS = {"register_ip_limit": "1000"}


@pytest.fixture(scope="session")
def server(_servers: Callable[..., Server]) -> Server:
    # Three failed sign-ins per account and address, then 429: the throttling test.
    return _servers(**LIMITS, login_pair_limit=str(LOGIN_PAIR_LIMIT))


@pytest.fixture(scope="session")
def short_ttl_server(_servers: Callable[..., Server]) -> Server:
    # No leeway on exp: an expired token a browser still sends is refused at once.
    return _servers(**LIMITS, access_ttl=str(SHORT_TTL), leeway="0")


@pytest.fixture(scope="session")
def strict_server(_servers: Callable[..., Server]) -> Server:
    return _servers(**LIMITS, refresh_grace="0")


@pytest.fixture(scope="session")
def transparent_server(_servers: Callable[..., Server]) -> Server:
    return _servers(**LIMITS, refresh_grace="0", transparent_refresh="true")


@pytest.fixture(scope="session")
def smtp() -> Iterator[SmtpInbox]:
    inbox = SmtpInbox()
    inbox.start()
    yield inbox
    inbox.stop()


@pytest.fixture(scope="session")
def mail_server(_servers: Callable[..., Server], smtp: SmtpInbox) -> Server:
    # Every browser test comes from 127.0.0.1: the per-address mail limit is lifted too.
    # The access log is on: the journey checks that no link's token reaches the log.
    return _servers(
        **LIMITS, smtp_url=smtp.url, mail_ip_limit="1000", access_log="true", log_level="info"
    )


@pytest.fixture(scope="session")
def verifying_server(_servers: Callable[..., Server], smtp: SmtpInbox) -> Server:
    return _servers(
        **LIMITS, smtp_url=smtp.url, mail_ip_limit="1000", require_verified_email="true"
    )


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} not found: install Debian's chromium (scripts/test does it as root)",
            pytrace=False,
        )
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


@pytest.fixture
async def new_context(browser: Browser) -> AsyncIterator[NewContext]:
    contexts: list[BrowserContext] = []
    failures: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        # The 401s of the refresh flow log "Failed to load resource": expected, not counted.
        if message.type == "error" and "Content Security Policy" in message.text:
            failures.append(f"CSP violation on {message.location.get('url')}: {message.text}")

    async def make(**options: Any) -> BrowserContext:
        options.setdefault("viewport", {"width": 1280, "height": 860})
        context = await browser.new_context(**options)
        context.set_default_timeout(20_000)
        context.on("console", on_console)
        context.on("weberror", lambda error: failures.append(f"page error: {error.error}"))
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        await context.close()
    assert not failures, "\n".join(failures)


@pytest.fixture(scope="session")
def foreign_site() -> Iterator[ForeignSite]:
    site = ForeignSite()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = site.pages.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(body or b"not found")

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test output is not the place for an access log."""

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    site.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield site
    httpd.shutdown()
    httpd.server_close()
    thread.join()
