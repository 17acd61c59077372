"""Helpers for the session tests: real server processes, a private Redis, account helpers.

Not a test module (no ``test_`` prefix) and not the conftest, so the test files can import
it by a unique name (``from sessions_support import ...``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import httpx

from ports import free_port
from reaper import spawn_reaper
from tokenward.http.app import create_app
from tokenward.runtime import Tokenward
from tw_accounts import BEARER, ORIGIN, PASSWORD, Accounts, new_email  # noqa: F401 - re-exported
from waiting import wait_until

#: ``make_tw(clock=None, **settings)``: the fixture's factory of started instances.
MakeTw = Callable[..., Awaitable[Tokenward]]

STARTUP_TIMEOUT = 30.0


def random_address() -> str:
    """A random client address in 10/8.

    Rate limits are kept per client address in the Redis the whole run shares, so every
    client calls from an address of its own: a test not about throttling neither trips
    nor inherits them.
    """
    return "10." + ".".join(str(secrets.randbelow(254) + 1) for _ in range(3))


def client_for(tw: Tokenward, host: str | None = None) -> httpx.AsyncClient:
    """A client on ``tw``'s app, calling from ``host`` (random in 10/8 by default).

    The app's lifespan is not run: the fixture started ``tw``.
    """
    app = create_app(tw, manage_lifespan=False)
    transport = httpx.ASGITransport(app=app, client=(host or random_address(), 40000))
    return httpx.AsyncClient(transport=transport, base_url=ORIGIN)


def session_key(uid: str, sid: str) -> str:
    """The Redis key of a session hash."""
    return f"tw:{{u:{uid}}}:s:{sid}"


def user_keys(uid: str) -> tuple[str, str]:
    """The Redis keys of a user's index and ended list."""
    return f"tw:{{u:{uid}}}:idx", f"tw:{{u:{uid}}}:ended"


def set_cookies(response: httpx.Response) -> dict[str, dict[str, str]]:
    """``Set-Cookie`` headers of a response as ``{name: {value, max-age, path, ...}}``."""
    out: dict[str, dict[str, str]] = {}
    for header in response.headers.get_list("set-cookie"):
        jar: SimpleCookie = SimpleCookie()
        jar.load(header)
        for name, morsel in jar.items():
            attrs = {k: v for k, v in morsel.items() if v}
            attrs["value"] = morsel.value
            out[name] = attrs
    return out


async def refresh_bearer(client: httpx.AsyncClient, token: str) -> httpx.Response:
    """``POST /auth/refresh`` in bearer mode."""
    return await client.post("/auth/refresh", json={"refresh_token": token}, headers=BEARER)


def auth(access: str) -> dict[str, str]:
    """The ``Authorization`` header for an access token."""
    return {"Authorization": f"Bearer {access}"}


# ------------------------------------------------------------------ real server processes


@dataclass
class Server:
    """A ``tokenward serve`` process group started by a test."""

    proc: subprocess.Popen[bytes]
    base_url: str
    log: Path
    workers: int

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        """A client for this server (plain http on 127.0.0.1).

        The server trusts 127.0.0.1 as a proxy, and each client names a random address of
        its own in ``X-Forwarded-For`` (see :func:`random_address`).
        """
        kwargs.setdefault("timeout", 30.0)
        kwargs["headers"] = {"X-Forwarded-For": random_address(), **kwargs.get("headers", {})}
        return httpx.AsyncClient(base_url=self.base_url, **kwargs)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server's log, for failure messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Terminate the supervisor and its workers (their own process group)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@contextlib.contextmanager
def run_server(
    redis_url: str, data_dir: Path, *, workers: int = 1, **settings: Any
) -> Iterator[Server]:
    """Run ``python -m tokenward.cli serve`` on a free 127.0.0.1 port until the block ends.

    Plain-http cookies (``TOKENWARD_COOKIE_SECURE=false``); ``settings`` become
    ``TOKENWARD_<NAME>`` variables. Waits (bounded) until every worker has started.
    """
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TOKENWARD_")}
    env.update(
        TOKENWARD_REDIS_URL=redis_url,
        TOKENWARD_DATA_DIR=str(data_dir),
        TOKENWARD_COOKIE_SECURE="false",
        TOKENWARD_LOG_LEVEL="info",
        TOKENWARD_TRUSTED_PROXIES="127.0.0.1",
    )
    env.update({f"TOKENWARD_{k.upper()}": str(v) for k, v in settings.items()})
    log = data_dir / "server.log"
    argv = [sys.executable, "-m", "tokenward.cli", "serve", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--workers", str(workers)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=data_dir,  # no stray ./.env is read
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped as one
        )
    # If pytest dies without running finalizers, the watchdog stops the server group.
    reaper = spawn_reaper(f"kill -TERM -{proc.pid} 2>/dev/null")
    server = Server(proc, f"http://127.0.0.1:{port}", log, workers)
    try:

        def started() -> bool:
            assert proc.poll() is None, f"server did not start:\n{server.log_tail()}"
            count = log.read_text(errors="replace").count("Application startup complete")
            return count >= workers

        wait_until(started, within=STARTUP_TIMEOUT, step=0.05)
        yield server
    finally:
        server.stop()
        reaper.kill()
        reaper.wait()
