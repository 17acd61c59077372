"""The HTTP servers of ``tokenward serve``: uvicorn (the default, plus the connection limits
it lacks) or granian (``--server granian``, faster, fewer limits).

What uvicorn (0.54, the httptools protocol) offers, read in its source:

* ``timeout_keep_alive`` closes a connection idle *after a response*; nothing is armed before
  the first request, so a connection that never sends a byte stays open for ever (500 idle
  connections were still open after 90 s).
* Any byte received cancels that timer and nothing replaces it: a request head or body
  trickled one byte a second is read for as long as the client likes.
* ``limit_concurrency`` answers 503 only once a request's head is complete; connections that
  never send one are not refused, they hold a file descriptor each (about 1,000 idle sockets
  locked every new client out under the common open-files limit of 1,024).
* ``h11_max_incomplete_event_size`` bounds the head for the h11 protocol only; httptools,
  the one used, has no bound.

:class:`LimitedHttpToolsProtocol` adds them, per connection, with one timer at a time:

* **idle** (``TOKENWARD_IDLE_TIMEOUT``): from the connection's start, and after each response
  (uvicorn's own keep-alive timer, given the same value), until the next request's first byte;
* **head** (``TOKENWARD_HEADER_TIMEOUT``): from the first byte of a request (or any byte
  outside a body) until its head is complete; then 408 and close;
* **body** (``TOKENWARD_BODY_TIMEOUT``): a *total* time from the end of the head to the end of
  the body, not a minimum rate: bodies are at most 16 KiB (:data:`tokenward.http.body.MAX_BODY`),
  so a total bound is as fair to a slow link and cannot be gamed by sending just above a
  rate. It runs whether or not the route reads the body. Past it: 408 if no response has
  started, and the connection is closed either way;
* **cap** (``TOKENWARD_MAX_CONNECTIONS``, per worker process): a connection beyond it is
  answered 503 (``Retry-After: 1``, ``Connection: close``) as soon as its head arrives, and
  closed after :data:`REFUSAL_GRACE` seconds if none does, so refused connections do not
  hold descriptors either;
* **head size**: more than :data:`MAX_HEAD` bytes of request line and headers get 431.

It also writes a response's head and its body in one ``write`` (one system call and one
TCP segment where uvicorn makes two, see :class:`_HeadWithBody`).

The listening socket is bound by :func:`bind_listener` in the supervising process before
any start-up work, so a port in use is one error line, not a log stream after the embedded
Redis and the migrations have run.

**granian** (:func:`run_granian`, ``tokenward serve --server granian``): its HTTP/1 server
(hyper, in Rust) parses, writes and keeps connections without Python, which costs less
CPU per request than uvicorn's httptools protocol; but its settings cover fewer of the
limits above:

* **head** (``TOKENWARD_HEADER_TIMEOUT``): hyper's header read timeout, at most 60 s
  (longer settings are capped); past it the connection is closed without a 408;
* **idle**: the same header read timeout closes a connection that sends nothing, before
  its first request and between requests; ``TOKENWARD_IDLE_TIMEOUT`` is not used;
* **head size**: hyper's read buffer is bounded (:data:`MAX_HEAD`, 32 KiB); a larger head
  gets 431 or a closed connection;
* **body** (``TOKENWARD_BODY_TIMEOUT``): **not enforced**: a body trickled slowly is read
  for as long as the client likes (bodies are at most 16 KiB, read by the app);
* **cap** (``TOKENWARD_MAX_CONNECTIONS``): **not enforced** as a connection cap; it bounds
  the requests in flight per worker (granian's backpressure: more wait, none is refused),
  so idle connections each hold a descriptor until the idle timeout closes them.

Workers, the lifeline (workers die with ``serve``), the port check (exit code 4), the
metrics listener and multiprocess metrics, and ``SIGTERM`` work as with uvicorn. Run
granian behind a proxy that buffers request bodies and caps connections (nginx does both
by default), or keep uvicorn.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import resource
import socket
import weakref
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn import Config, Server
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from tokenward.http.problems import PROBLEM_PREFIX

__all__ = [
    "FD_RESERVE",
    "GRANIAN_MAX_HEADER_TIMEOUT",
    "MAX_HEAD",
    "REFUSAL_GRACE",
    "SERVERS",
    "ConnectionLimits",
    "LimitedHttpToolsProtocol",
    "ServerConfig",
    "bind_listener",
    "fit_open_files",
    "run",
    "run_granian",
]

log = logging.getLogger("tokenward.http")

#: Bytes of request line and headers accepted: a browser's head with every Tokenward cookie
#: is under 8 KiB; nginx's default limit is 4 buffers of 8 KiB.
MAX_HEAD = 32 * 1024
#: Seconds a connection refused by the cap has to send its head (and get its 503).
REFUSAL_GRACE = 1.0
#: The ASGI servers ``tokenward serve --server`` can run; the first is the default.
SERVERS = ("uvicorn", "granian")
#: Seconds: the longest header read timeout granian accepts.
GRANIAN_MAX_HEADER_TIMEOUT = 60.0
#: Descriptors a worker needs besides its client connections and one back-end connection
#: per request in flight: listening sockets, the database pool, log and key files.
FD_RESERVE = 64


@dataclass(frozen=True)
class ConnectionLimits:
    """The per-connection limits of one server (see the module docstring)."""

    idle_timeout: float
    header_timeout: float
    body_timeout: float
    max_connections: int


class ServerConfig(Config):
    """uvicorn's configuration plus :class:`ConnectionLimits` (pickled to every worker)."""

    def __init__(self, app: Any, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(
            app,
            http=LimitedHttpToolsProtocol,
            timeout_keep_alive=limits.idle_timeout,  # type: ignore[arg-type]  # a float works
            **kwargs,
        )
        self.limits = limits


def _problem(status: int, reason: str, slug: str, detail: str, extra: bytes = b"") -> bytes:
    body = orjson.dumps(
        {
            "type": PROBLEM_PREFIX + slug,
            "title": slug.replace("-", " ").capitalize(),
            "status": status,
            "detail": detail,
        }
    )
    return (
        f"HTTP/1.1 {status} {reason}\r\n".encode()
        + b"content-type: application/problem+json\r\ncache-control: no-store\r\n"
        + extra
        + b"connection: close\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


_TIMED_OUT_HEAD = _problem(
    408, "Request Timeout", "request-timeout", "the request head did not arrive in time"
)
_TIMED_OUT_BODY = _problem(
    408, "Request Timeout", "request-timeout", "the request body did not arrive in time"
)
_HEAD_TOO_LARGE = _problem(
    431,
    "Request Header Fields Too Large",
    "headers-too-large",
    f"request line and headers larger than {MAX_HEAD} bytes",
)
_OVER_CAPACITY = _problem(
    503,
    "Service Unavailable",
    "unavailable",
    "too many connections to this server; retry",
    b"retry-after: 1\r\n",
)

#: Connections admitted under the cap, per server (one uvicorn ``Server`` per process).
_admitted: weakref.WeakKeyDictionary[ServerState, int] = weakref.WeakKeyDictionary()


class _HeadWithBody:
    """The transport a request's cycle writes to: holds the response head until the body's
    first write and sends both in one ``write``.

    uvicorn writes the head when the app sends ``http.response.start`` and the body when
    it sends ``http.response.body``: two system calls and two segments for the usual small
    response. Only the head is held: the first write once the response has started (an
    earlier one is a ``100 Continue``, which the client waits for), and never for ``HEAD``
    (whose response has no body write to follow). Every other response's body message
    writes, even an empty one, so nothing stays held; a streamed body still goes out chunk
    by chunk; and closing (by the cycle or by the deadlines) sends a held head first.
    """

    __slots__ = ("cycle", "held", "transport", "waiting")

    def __init__(self, transport: asyncio.Transport, cycle: Any) -> None:
        self.transport = transport
        self.cycle = cycle
        self.held: bytes | None = None
        self.waiting = cycle.scope["method"] != "HEAD"  # for the head

    def write(self, data: bytes) -> None:
        held = self.held
        if held is not None:
            self.held = None
            self.transport.write(held + data)
        elif self.waiting and self.cycle.response_started:
            self.waiting = False
            self.held = data
        else:
            self.transport.write(data)

    def flush(self) -> None:
        held = self.held
        if held is not None:
            self.held = None
            if not self.transport.is_closing():
                self.transport.write(held)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with idle, head and body deadlines, a head size limit
    and a connection cap. One timer runs at a time; the keep-alive one stays uvicorn's."""

    def __init__(self, config: Config, server_state: ServerState, *args: Any, **kw: Any) -> None:
        super().__init__(config, server_state, *args, **kw)
        limits = getattr(config, "limits", None)
        if not isinstance(limits, ConnectionLimits):
            raise TypeError("LimitedHttpToolsProtocol needs a ServerConfig")
        self.limits = limits
        # Admission is by connection, so uvicorn's own per-request check is not used.
        self.limit_concurrency = None
        self._running: Any = None  # the cycle whose app runs (pipelined ones wait)
        self._deadline: asyncio.TimerHandle | None = None
        self._in_body = False
        self._head_bytes = 0
        self._admitted = False
        self._refused = False  # answered by us (408, 431, 503): ignore what else arrives

    # -- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        admitted = _admitted.get(self.server_state, 0)
        if admitted < self.limits.max_connections:
            _admitted[self.server_state] = admitted + 1
            self._admitted = True
            # uvicorn arms its keep-alive timer only after a response; arm it now too.
            self.timeout_keep_alive_task = self.loop.call_later(
                self.limits.idle_timeout, self.timeout_keep_alive_handler
            )
        else:
            self._deadline = self.loop.call_later(REFUSAL_GRACE, self._close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        if self._admitted:
            self._admitted = False
            _admitted[self.server_state] = max(0, _admitted.get(self.server_state, 1) - 1)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._deadline is None and not self._in_body:
            # Bytes outside a body belong to a request head, which must end in time.
            self._deadline = self.loop.call_later(self.limits.header_timeout, self._head_late)
        super().data_received(data)

    # -- parser callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._head_bytes = 0
        if self._deadline is None and not self._refused:
            # A pipelined request that began in the chunk that ended the previous one.
            self._deadline = self.loop.call_later(self.limits.header_timeout, self._head_late)
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        if self._count_head(len(url)):
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._count_head(len(name) + len(value) + 4):
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        if not self._admitted:
            self._refuse(_OVER_CAPACITY)
            return
        self._cancel_deadline()
        self._in_body = True
        self._deadline = self.loop.call_later(self.limits.body_timeout, self._body_late)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        if cycle.transport is self.transport:
            cycle.transport = _HeadWithBody(self.transport, cycle)
        self._running = cycle
        super()._start_asgi_task(cycle, app)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._cancel_deadline()
        self._in_body = False
        super().on_message_complete()

    # -- deadlines -----------------------------------------------------------------------------

    def _count_head(self, size: int) -> bool:
        if self._refused:
            return False
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD:
            self._refuse(_HEAD_TOO_LARGE)
            return False
        return True

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _responding(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _head_late(self) -> None:
        self._deadline = None
        if self._responding():
            self._close()  # a pipelined head behind a response in progress: just end it
        else:
            self._refuse(_TIMED_OUT_HEAD)

    def _body_late(self) -> None:
        self._deadline = None
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            # The app, waiting in receive(), gets http.disconnect; whatever it sends is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
            self._refuse(_TIMED_OUT_BODY)
        else:
            self._close()

    def _flush_head(self) -> None:
        cycle = self._running
        if cycle is not None and isinstance(cycle.transport, _HeadWithBody):
            cycle.transport.flush()

    def _refuse(self, response: bytes) -> None:
        self._refused = True
        self._cancel_deadline()
        if not self.transport.is_closing():
            self.transport.write(response)
        self._close()

    def _close(self) -> None:
        self._deadline = None
        self._refused = True
        self._flush_head()  # a head already sent, as uvicorn would have, before closing
        if not self.transport.is_closing():
            self.transport.close()


def fit_open_files(max_connections: int) -> int:
    """Raise this process's soft open-files limit so one worker can hold ``max_connections``
    clients (and one back-end connection for each request in flight); return the cap that
    fits: lower than asked, with a warning, when the hard limit is too low.

    Workers inherit the limit. Each worker process has its own descriptor table, so the
    need is per worker: ``2 * max_connections + FD_RESERVE``.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * max_connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= need:
        return max_connections
    fitted = max(1, (soft - FD_RESERVE) // 2)
    log.warning(
        "TOKENWARD_MAX_CONNECTIONS=%d needs %d open files per worker but the limit is %d; "
        "capping at %d connections (raise LimitNOFILE=, see docs/deployment.md)",
        max_connections,
        need,
        soft,
        fitted,
    )
    return fitted


def bind_listener(host: str, port: int) -> socket.socket:
    """The listening socket, bound (as uvicorn binds it); ``OSError`` if it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def run(config: ServerConfig, sock: socket.socket) -> None:
    """Serve on ``sock`` until stopped: in this process, or in ``config.workers`` workers
    under uvicorn's supervisor."""
    from uvicorn.supervisors import Multiprocess

    host, port = sock.getsockname()[:2]
    log.info("listening on http://%s:%d (%d worker(s))", host, port, config.workers)
    if config.workers > 1:
        supervisor: Any = Multiprocess
        if "target" in inspect.signature(Multiprocess).parameters:
            # uvicorn before 0.3x's rework (0.32 is the floor) gives workers a target.
            supervisor(config, target=Server(config).run, sockets=[sock]).run()
        else:
            supervisor(config, sockets=[sock]).run()
    else:
        Server(config).run(sockets=[sock])


def run_granian(
    target: str,
    *,
    host: str,
    port: int,
    workers: int,
    limits: ConnectionLimits,
    log_level: str,
    log_config: dict[str, Any],
) -> None:
    """Serve the app factory ``target`` (``module:function``) with granian until stopped.

    Granian binds the port itself, in every worker (``SO_REUSEPORT``): the caller checks
    that it is free first. The main process supervises ``workers`` worker processes (at
    least one, even for ``workers=1``) and returns once they have stopped on ``SIGTERM``
    or ``SIGINT``. See the module docstring for which :class:`ConnectionLimits` apply.
    """
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    header_timeout = min(limits.header_timeout, GRANIAN_MAX_HEADER_TIMEOUT)
    if header_timeout < limits.header_timeout:
        log.warning(
            "TOKENWARD_HEADER_TIMEOUT=%g: granian waits at most %g s for a request head",
            limits.header_timeout,
            header_timeout,
        )
    log.info("listening on http://%s:%d (%d granian worker(s))", host, port, workers)
    server = Granian(
        target,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        factory=True,
        workers=workers,
        loop=Loops.auto,
        http=HTTPModes.http1,
        websockets=False,
        backpressure=limits.max_connections,
        http1_settings=HTTP1Settings(
            header_read_timeout=max(1, int(header_timeout * 1000)),
            keep_alive=True,
            max_buffer_size=MAX_HEAD,
        ),
        log_enabled=True,
        log_level=LogLevels(log_level),
        log_dictconfig=log_config,
        log_access=False,
    )
    server.serve()
