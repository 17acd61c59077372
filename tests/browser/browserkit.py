"""Helpers of the browser tests: the server process, page actions, screenshots.

The fixtures that use them are in this directory's ``conftest.py``; tests import the helpers
from here (``from browserkit import sign_in``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import BrowserContext, Page

from ports import free_port
from reaper import spawn_reaper
from waiting import await_until, poll_until

ROOT = Path(__file__).resolve().parents[2]
#: Tests never rewrite tracked files: screenshots go to the (ignored) build folder and
#: scripts/update_screenshots copies them to docs/screenshots when a change is wanted.
SCREENSHOTS = ROOT / "build" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "violet tractor 42 umbrella"
SHORT_TTL = 2  # seconds: the access token lifetime of short_ttl_server
LOGIN_PAIR_LIMIT = 3  # failed sign-ins per account and address before 429 (server)
STARTUP_TIMEOUT = 30.0
PORT_ATTEMPTS = 3
ACCESS = "__Host-access_token"
REFRESH = "__Secure-refresh_token"
CSRF = "__Host-csrf_token"

#: User agents of the two "devices" of the multi-device tests (the sessions page names them).
LAPTOP_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
PHONE_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1"
)
NewContext = Callable[..., Awaitable[BrowserContext]]

PHONE = {"user_agent": PHONE_UA, "viewport": {"width": 390, "height": 844}, "is_mobile": True}


def new_email(name: str = "user") -> str:
    """A fresh address: every test has its own accounts."""
    return f"{name}-{uuid.uuid4().hex[:8]}@example.com"


# ------------------------------------------------------------------------ the server


@dataclass
class Server:
    """A running ``tokenward serve``."""

    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        """The origin the browser uses (the issuer): ``http://localhost:<port>``."""
        return f"http://localhost:{self.port}"

    def register(self, email: str, password: str = PASSWORD) -> str:
        """Create an account through the API (for tests about something else)."""
        r = httpx.post(
            f"http://127.0.0.1:{self.port}/auth/register",
            json={"email": email, "password": password},
        )
        assert r.status_code == 201, r.text
        return email

    def tail(self, lines: int = 40) -> str:
        """The end of the server's output."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"


def _tokenward_command() -> list[str]:
    script = Path(sys.executable).with_name("tokenward")  # this venv's console script
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "tokenward.cli"]


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def start_server(redis_url: str, workdir: Path, **overrides: str) -> Server:
    """Run ``tokenward serve`` as a user does (it migrates SQLite before its worker starts).

    Only our variables reach it: no ``TOKENWARD_*`` of the outer shell leaks in, and its
    working directory holds no ``.env``.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWARD_")}
    for attempt in range(PORT_ATTEMPTS):
        port = free_port()
        env.update(
            TOKENWARD_REDIS_URL=redis_url,
            TOKENWARD_DATA_DIR=str(workdir / f"data-{port}"),
            TOKENWARD_ISSUER=f"http://localhost:{port}",
            TOKENWARD_LOG_LEVEL="warning",
        )
        env.update({f"TOKENWARD_{k.upper()}": v for k, v in overrides.items()})
        log = workdir / f"server-{port}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [*_tokenward_command(), "serve", "--host", "127.0.0.1", "--port", str(port)],
                env=env,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = Server(port, process, log)
        settled = poll_until(
            lambda p=process, n=port: p.poll() is not None or _healthy(n),
            within=STARTUP_TIMEOUT,
            step=0.1,
        )
        if settled and process.poll() is None:
            return server
        stop_server(server)
        if "address already in use" not in server.tail().lower() or attempt == PORT_ATTEMPTS - 1:
            pytest.fail(f"tokenward serve did not become healthy:\n{server.tail()}", pytrace=False)
    raise AssertionError("unreachable")


def stop_server(server: Server) -> None:
    """SIGTERM (uvicorn shuts down gracefully), SIGKILL after 15 s."""
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def watchdog(pid: int) -> subprocess.Popen[bytes]:
    """Stop process ``pid`` if pytest dies without running its teardown."""
    return spawn_reaper(f"kill {pid}")


# ------------------------------------------------------------------ browser helpers


async def screenshot(page: Page, name: str) -> Path:
    """Save ``build/screenshots/<name>.png`` (full page) and return its path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.mouse.move(0, 0)  # no hover state on the last button clicked
    await page.screenshot(path=str(path), full_page=True, animations="disabled")
    return path


async def cookie(context: BrowserContext, name: str) -> dict[str, Any] | None:
    """The cookie ``name`` as the browser holds it, or None."""
    for item in await context.cookies():
        if item["name"] == name:
            return dict(item)
    return None


async def wait_for_access_cookie_expiry(context: BrowserContext, limit: float) -> float:
    """Poll until the browser has dropped the access cookie (at its Max-Age = access TTL).

    A bounded poll on the browser's own state rather than a fixed sleep: it returns as soon
    as the access token is gone (about the access TTL after it was issued), so the next API
    call has to refresh. Returns the seconds waited.
    """

    async def dropped() -> bool:
        return await cookie(context, ACCESS) is None

    return await await_until(
        dropped, within=limit, what="the browser drops the access cookie", step=0.05
    )


async def sign_up(page: Page, base: str, email: str, password: str = PASSWORD) -> None:
    """Register through the page; ends on the sign-in page."""
    await page.goto(f"{base}/register")
    await page.get_by_label("Email address").fill(email)
    await page.get_by_label("Password", exact=True).fill(password)
    await page.get_by_role("button", name="Create account").click()
    await page.wait_for_url(f"{base}/login?registered=1")


async def sign_in(page: Page, base: str, email: str, password: str = PASSWORD) -> None:
    """Sign in through the page; ends on the account page."""
    if not page.url.startswith(f"{base}/login"):
        await page.goto(f"{base}/login")
    await page.get_by_label("Email address").fill(email)
    await page.get_by_label("Password", exact=True).fill(password)
    await page.get_by_role("button", name="Sign in", exact=True).click()
    await page.wait_for_url(f"{base}/account")


async def profile_shows(page: Page, email: str) -> None:
    """Wait until the account page shows ``email`` (it came from GET /auth/me)."""
    await page.locator('[data-bind="email"]', has_text=email).wait_for()


async def api(page: Page, method: str, path: str, body: Any = None) -> Any:
    """``Tokenward.api(method, path, body)`` in the page; a problem comes back as a dict."""
    return await page.evaluate(
        """async ([method, path, body]) => {
            try {
                return { ok: true, body: await Tokenward.api(method, path, body ?? undefined) };
            } catch (problem) {
                return { ok: false, slug: problem.slug, status: problem.status,
                         loginRequired: problem.loginRequired };
            }
        }""",
        [method, path, body],
    )


# ---------------------------------------------------------------------- foreign site


@dataclass
class ForeignSite:
    """A web site on another origin (``http://127.0.0.1:<port>``) serving given pages."""

    port: int = 0
    pages: dict[str, bytes] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Its origin: 127.0.0.1 is another site than localhost for the browser."""
        return f"http://127.0.0.1:{self.port}"

    def serve(self, path: str, html: str) -> str:
        """Serve ``html`` at ``path``; returns its URL."""
        self.pages[path] = html.encode()
        return self.url + path
