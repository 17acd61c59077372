"""Connections cannot be hoarded: a real ``tokenward serve`` and real slow clients.

One server (one worker) with small limits: idle 3 s, head 1.5 s, body 1.5 s, 200
connections. The clients are raw sockets, so nothing smooths over what the server does: a
slow client sends one byte every :data:`PACE` seconds from a bounded loop, and every wait is
a bounded poll of the sockets (``selectors``), never a sleep.

Before these limits (uvicorn's defaults), 50 idle connections were all still open after
12 s, and a head or a body sent a byte a second was still being read after 12 s.
"""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from ports import free_port
from tokenward.http.server import REFUSAL_GRACE
from waiting import wait_until

IDLE, HEAD, BODY, CAP = 3.0, 1.5, 1.5, 200
#: Seconds between two bytes of a slow client: faster than the idle timeout, so only the
#: head or body deadline can cut it off.
PACE = 1.0
#: Slack for a loaded 2-core CI machine between a deadline and the close being seen.
SLACK = 3.0
START_DEADLINE = 90.0


@dataclass
class Server:
    base: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path


@contextlib.contextmanager
def _serving(
    redis_url: str, tmp: Path, prefix: Sequence[str] = (), **settings: str
) -> Iterator[Server]:
    """``tokenward serve`` with these ``TOKENWARD_*`` settings, healthy; SIGTERM at the end.
    ``prefix`` runs before it (a wrapper that lowers the open-files limit)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TOKENWARD_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(TOKENWARD_REDIS_URL=redis_url, TOKENWARD_DATA_DIR=str(tmp / "data"))
    env.update({f"TOKENWARD_{name.upper()}": value for name, value in settings.items()})
    log = tmp / "serve.log"
    argv = [*prefix] or [sys.executable, "-m", "tokenward.cli"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*argv, "serve", "--port", str(port)],
            cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    srv = Server(f"http://127.0.0.1:{port}", port, proc, log)
    try:

        def healthy() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(srv.base + "/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, within=START_DEADLINE, what="/healthz answers", step=0.05)
        yield srv
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert "Traceback" not in log.read_text(errors="replace")


@pytest.fixture(scope="module")
def server(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with _serving(
        redis_url,
        tmp_path_factory.mktemp("limits"),
        idle_timeout=str(IDLE),
        header_timeout=str(HEAD),
        body_timeout=str(BODY),
        max_connections=str(CAP),
    ) as srv:
        yield srv


@dataclass
class Client:
    """One raw connection: what it sends, when, and what it got back until closed."""

    sock: socket.socket
    opened: float
    pending: bytes = b""
    first_byte: float | None = None
    received: bytes = b""
    closed: float | None = None
    sent: int = field(default=0)


def _connect(port: int, pending: bytes = b"") -> Client:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setblocking(False)
    return Client(sock, time.monotonic(), pending)


def _run(clients: list[Client], *, within: float, pace: float | None = None) -> None:
    """Until every client is closed by the server or ``within`` s pass: read what arrives,
    and (with ``pace``) send each client's next pending byte every ``pace`` seconds."""
    selector = selectors.DefaultSelector()
    for c in clients:
        selector.register(c.sock, selectors.EVENT_READ, c)
    deadline = time.monotonic() + within
    next_send = time.monotonic()
    try:
        while any(c.closed is None for c in clients) and time.monotonic() < deadline:
            now = time.monotonic()
            if pace is not None and now >= next_send:
                next_send = now + pace
                for c in clients:
                    if c.closed is None and c.pending:
                        try:
                            c.sock.send(c.pending[:1])
                        except OSError:
                            continue  # closed under us: the read below sees it
                        c.pending = c.pending[1:]
                        c.sent += 1
                        c.first_byte = c.first_byte or now
            timeout = max(0.0, min(deadline, next_send if pace else deadline) - now)
            for key, _ in selector.select(timeout):
                c = key.data
                try:
                    data = c.sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                if data:
                    c.received += data
                else:
                    c.closed = time.monotonic()
                    selector.unregister(c.sock)
    finally:
        selector.close()


def _close_all(clients: list[Client]) -> None:
    for c in clients:
        c.sock.close()


def test_a_head_sent_a_byte_at_a_time_is_cut_off_with_408(server: Server) -> None:
    """Request line and headers trickled one byte a second (never idle): 408 and closed
    within the head timeout (1.5 s) of the first byte, after 2 of its ~60 bytes."""
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nUser-Agent: slow/1.0\r\nAccept: */*\r\n\r\n"
    clients = [_connect(server.port, head) for _ in range(3)]
    try:
        _run(clients, within=HEAD + 2 * SLACK, pace=PACE)
    finally:
        _close_all(clients)
    for c in clients:
        assert c.closed is not None, "the server never closed it"
        assert c.first_byte is not None
        assert c.received.startswith(b"HTTP/1.1 408 "), c.received[:200]
        assert b"urn:tokenward:problem:request-timeout" in c.received
        took = c.closed - c.first_byte
        assert HEAD - 0.1 <= took <= HEAD + SLACK, took
        assert c.pending, "cut off before the head was complete"


def test_a_body_sent_a_byte_at_a_time_is_cut_off(server: Server) -> None:
    """A login body trickled one byte a second gets 408 within the body timeout; a body
    the route never reads (GET /healthz with a Content-Length) is answered, and the
    connection is still closed at the deadline instead of being held by the trickle."""
    body = b'{"email": "slow@example.com", "password": "x"}' + b" " * 54
    login = (
        b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    ignored = b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    slow_login = _connect(server.port, body)
    slow_login.sock.sendall(login)
    slow_ignored = _connect(server.port, b"x" * 100)
    slow_ignored.sock.sendall(ignored)
    clients = [slow_login, slow_ignored]
    try:
        _run(clients, within=BODY + 2 * SLACK, pace=PACE)
    finally:
        _close_all(clients)
    for c in clients:
        assert c.closed is not None, "the server never closed it"
        took = c.closed - c.opened
        assert BODY - 0.1 <= took <= BODY + SLACK, took
        assert c.pending, "cut off before the body was complete"
    assert slow_login.received.startswith(b"HTTP/1.1 408 "), slow_login.received[:200]
    assert b"urn:tokenward:problem:request-timeout" in slow_login.received
    assert slow_ignored.received.startswith(b"HTTP/1.1 200 "), slow_ignored.received[:200]


def test_a_huge_head_gets_431(server: Server) -> None:
    """40 KiB of headers, sent at once: 431, not buffered without bound."""
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Junk: " + b"a" * 40_000 + b"\r\n\r\n"
    c = _connect(server.port)
    try:
        c.sock.setblocking(True)
        c.sock.sendall(head)
        c.sock.setblocking(False)
        _run([c], within=SLACK)
    finally:
        _close_all([c])
    assert c.received.startswith(b"HTTP/1.1 431 "), c.received[:200]


def _get(port: int, path: str = "/healthz") -> tuple[bytes, float]:
    """One request on a new connection: the status line and the seconds it took."""
    start = time.monotonic()
    c = _connect(port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    try:
        c.sock.sendall(c.pending)
        _run([c], within=10)
    finally:
        _close_all([c])
    return c.received.split(b"\r\n", 1)[0], time.monotonic() - start


def test_idle_connections_are_closed_and_the_cap_answers_503(server: Server) -> None:
    """220 connections that send nothing, against a cap of 200: a new client gets 503 at
    once (not a hang); the 20 refused ones are closed after a second (REFUSAL_GRACE), the 200
    admitted ones after the idle timeout (3 s), not before; then new clients get 200."""
    hoarders = [_connect(server.port) for _ in range(CAP + 20)]
    try:
        status, took = _get(server.port)
        assert status.startswith(b"HTTP/1.1 503 "), status
        assert took < 1.5, f"the refused client waited {took:.2f} s"
        _run(hoarders, within=IDLE + 2 * SLACK)
    finally:
        _close_all(hoarders)
    assert all(h.closed is not None for h in hoarders), "an idle connection stayed open"
    lives = sorted(h.closed - h.opened for h in hoarders if h.closed is not None)
    early = [t for t in lives if t < IDLE - 0.1]
    # At most the 20 over the cap (plus one slot a just-finished request may still hold).
    assert 20 <= len(early) <= 21, lives
    assert min(early) >= REFUSAL_GRACE - 0.05, early  # given their second to send a head
    assert all(IDLE - 0.1 <= t <= IDLE + SLACK for t in lives[len(early) :]), lives
    assert all(h.received == b"" for h in hoarders), "idle ones get no answer, only a close"

    wait_until(
        lambda: _get(server.port)[0].startswith(b"HTTP/1.1 200 "),
        within=SLACK,
        what="the server serves again once the hoarders are gone",
    )


#: Runs ``tokenward`` with the open-files limit of a small container: soft 128, hard 400.
_LOW_NOFILE = (
    "import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (128, 400)); "
    "os.execv(sys.executable, [sys.executable, '-m', 'tokenward.cli', *sys.argv[1:]])"
)


def test_the_cap_fits_the_open_files_limit(redis_url: str, tmp_path: Path) -> None:
    """The default cap (1000) needs 2 x 1000 + 64 descriptors; under a hard limit of 400
    serve raises its soft limit to 400, lowers the cap to (400 - 64) // 2 = 168 with one
    warning, and the 169th connection gets 503 instead of the server running out."""
    prefix = [sys.executable, "-c", _LOW_NOFILE]
    with _serving(redis_url, tmp_path, prefix, idle_timeout="30") as srv:
        limits = Path(f"/proc/{srv.proc.pid}/limits").read_text()
        assert any(
            line.startswith("Max open files") and line.split()[3:5] == ["400", "400"]
            for line in limits.splitlines()
        ), limits
        assert "capping at 168 connections" in srv.log.read_text()
        hoarders = [_connect(srv.port) for _ in range(168)]
        try:
            status, took = _get(srv.port)
            assert status.startswith(b"HTTP/1.1 503 "), status
            assert took < 1.0, took
        finally:
            _close_all(hoarders)
        wait_until(
            lambda: _get(srv.port)[0].startswith(b"HTTP/1.1 200 "),
            within=SLACK,
            what="a slot is free again once the hoarders hang up",
        )


def test_keep_alive_pauses_longer_than_the_head_timeout_are_not_cut(server: Server) -> None:
    """One keep-alive connection, three requests 2 s apart: longer than the head timeout
    (1.5 s), shorter than the idle one (3 s). All are answered on the same connection (the
    head deadline starts at a request's first byte, not at the last response), and the
    connection is closed the idle timeout after the last answer."""
    gap = 2.0
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=IDLE + SLACK) as sock:
        last = time.monotonic()
        for i in range(3):
            if i:
                # The pause is the client's pacing; the server must stay silent through it.
                readable, _, _ = select.select([sock], [], [], gap)
                assert not readable, f"closed or answered unasked during pause {i}"
            sock.sendall(request)
            answer = b""
            while not (answer.endswith(b"}") and b"\r\n\r\n" in answer):
                chunk = sock.recv(4096)
                assert chunk, f"request {i + 1} on the kept-alive connection got no answer"
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]
            last = time.monotonic()
        assert sock.recv(1) == b"", "closed after the idle timeout, without a word"
        assert IDLE - 0.1 <= time.monotonic() - last <= IDLE + SLACK


def _read_responses(sock: socket.socket, count: int) -> list[bytes]:
    """``count`` responses, each with a Content-Length, in the order they arrive."""
    data, out = b"", []
    while len(out) < count:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            head = data[:head_end].lower()
            length = int(head.split(b"\r\ncontent-length: ")[1].split(b"\r\n")[0])
            end = head_end + 4 + length
            if len(data) >= end:
                out.append(data[:end])
                data = data[end:]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"closed after {len(out)} of {count} responses"
        data += chunk
    assert data == b"", "nothing more than the responses"
    return out


def test_head_continue_and_pipelined_requests_are_answered_whole(server: Server) -> None:
    """The server writes a response's head and body in one piece: a HEAD answer (head
    only) still goes out, ``Expect: 100-continue`` still gets its interim answer before the
    body is sent, and pipelined requests get their answers whole and in order."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=IDLE + SLACK) as sock:
        sock.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, "the HEAD answer arrived"
            head += chunk
        assert head.startswith(b"HTTP/1.1 200 ")
        assert head.endswith(b"\r\n\r\n"), "a head, no body"

    body = b'{"email": "x@example.com", "password": "y"}'
    with socket.create_connection(("127.0.0.1", server.port), timeout=IDLE + SLACK) as sock:
        sock.sendall(
            b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        interim = sock.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n"), interim[:60]
        sock.sendall(body)
        answer = b""
        while not answer.endswith(b"}"):
            chunk = sock.recv(4096)
            assert chunk, "the final answer arrived"
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 4"), answer[:60]  # refused: no such user/origin

    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-ID: r%d\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=IDLE + SLACK) as sock:
        sock.sendall(b"".join(request % i for i in range(5)))
        answers = _read_responses(sock, 5)
    for i, answer in enumerate(answers):
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert f"\r\nx-request-id: r{i}\r\n".encode() in answer
        assert answer.endswith(b'{"status":"ok"}')
