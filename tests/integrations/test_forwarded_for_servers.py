"""``X-Forwarded-For`` over several header lines, through real servers and a raw socket.

Each mode starts a real server on 127.0.0.1 (the test's socket is "the proxy") and sends
requests by hand, with the ``X-Forwarded-For`` lines a chain of proxies that each add a
line would send: the client's own (spoofed) line, then the lines the proxies added. The
client is the rightmost untrusted address of all lines joined in order. Checked: the
registration rate-limit bucket (4 registrations, each with a different spoofed line, over
a limit of 3) and the address recorded for the session.

* ``serve``: ``tokenward serve`` (uvicorn's proxy headers off) with
  ``TOKENWARD_TRUSTED_PROXIES``: Tokenward reads the lines.
* ``uvicorn-no-proxy-headers``: your app under ``uvicorn app:app --no-proxy-headers``,
  ``TOKENWARD_TRUSTED_PROXIES`` set: Tokenward reads the lines.
* ``uvicorn-forwarded-allow-ips``: ``uvicorn app:app --forwarded-allow-ips=<the proxies>``
  and no ``TOKENWARD_TRUSTED_PROXIES``: uvicorn rewrites the peer, Tokenward believes it.
* ``uvicorn-default``: plain ``uvicorn app:app``: uvicorn trusts a loopback peer's
  ``X-Forwarded-For`` by default (``--forwarded-allow-ips=127.0.0.1``).

Before the fix the first two modes took the spoofed first line: every registration had a
bucket of its own (four 201s) and the session recorded the spoofed address.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ports import free_port
from waiting import poll_until

HERE = Path(__file__).parent
TOKENWARD = Path(sys.executable).parent / "tokenward"
PASSWORD = "violet tractor 42 umbrella"
START_TIMEOUT = 60.0
INNER_PROXY = "10.0.0.5"
PROXIES = f"127.0.0.1,{INNER_PROXY}"


@dataclass(frozen=True)
class Mode:
    argv: list[str]
    env: dict[str, str]
    inner_proxy: bool  # whether the chain has a second proxy (trusted in this mode)


def _uvicorn(*flags: str) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "uvicorn_app:app", "--app-dir", str(HERE), *flags]


MODES = {
    "serve": Mode([str(TOKENWARD), "serve"], {"TOKENWARD_TRUSTED_PROXIES": PROXIES}, True),
    "uvicorn-no-proxy-headers": Mode(
        _uvicorn("--no-proxy-headers"), {"TOKENWARD_TRUSTED_PROXIES": PROXIES}, True
    ),
    "uvicorn-forwarded-allow-ips": Mode(_uvicorn(f"--forwarded-allow-ips={PROXIES}"), {}, True),
    "uvicorn-default": Mode(_uvicorn(), {}, False),
}


def _http(port: int, method: str, path: str, headers: list[tuple[str, str]], body: Any = None):
    """One HTTP/1.1 request written by hand (so repeated header lines stay repeated)."""
    payload = b"" if body is None else json.dumps(body).encode()
    head = [
        f"{method} {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Connection: close",
        f"Content-Length: {len(payload)}",
        *(["Content-Type: application/json"] if body is not None else []),
        *(f"{name}: {value}" for name, value in headers),
    ]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    _, _, content = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), json.loads(content) if content else None


@pytest.fixture(params=list(MODES))
def server(
    request: pytest.FixtureRequest, redis_url: str, tmp_path: Path
) -> Iterator[tuple[int, Mode]]:
    mode = MODES[request.param]
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOKENWARD_")},
        "TOKENWARD_REDIS_URL": redis_url,
        "TOKENWARD_DATA_DIR": str(tmp_path / "data"),
        "TOKENWARD_ISSUER": f"http://127.0.0.1:{port}",
        "TOKENWARD_REGISTER_IP_LIMIT": "3",
        **mode.env,
    }
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*mode.argv, "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def healthy() -> bool:
        try:
            return _http(port, "GET", "/.well-known/jwks.json", [])[0] == 200
        except OSError:
            return False

    try:
        settled = poll_until(lambda: proc.poll() is not None or healthy(), within=START_TIMEOUT)
        if not settled or proc.poll() is not None:
            pytest.fail(f"{mode.argv} did not start:\n{log.read_text()[-3000:]}")
        yield port, mode
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_client_is_read_from_every_forwarded_for_line(server: tuple[int, Mode]) -> None:
    port, mode = server
    real = f"198.18.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"

    def lines(spoofed: str) -> list[tuple[str, str]]:
        added = [real, INNER_PROXY] if mode.inner_proxy else [real]
        return [("X-Forwarded-For", spoofed), *(("X-Forwarded-For", hop) for hop in added)]

    statuses, emails = [], []
    for i in range(4):
        email = f"xff-{secrets.token_hex(6)}@example.com"
        status, _ = _http(
            port,
            "POST",
            "/auth/register",
            lines(f"203.0.113.{i + 1}"),
            {"email": email, "password": PASSWORD},
        )
        statuses.append(status)
        emails.append(email)
    assert statuses == [201, 201, 201, 429], "one client, one bucket, whatever it writes"

    status, body = _http(
        port,
        "POST",
        "/auth/login",
        [("X-Auth-Transport", "bearer"), *lines("6.6.6.6")],
        {"email": emails[0], "password": PASSWORD},
    )
    assert status == 200, body
    auth = [("Authorization", f"Bearer {body['access_token']}")]
    status, sessions = _http(port, "GET", "/auth/sessions", auth)
    assert status == 200, sessions
    assert [s["ip"] for s in sessions] == [real]
