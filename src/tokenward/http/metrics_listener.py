"""The operator listener: ``GET /metrics`` on its own address, loopback by default.

``/metrics`` tells whoever reads it how many logins fail, which limits refuse whom and how
many sessions are live; it is not for the public port. ``tokenward serve --metrics-port N``
(``TOKENWARD_METRICS_PORT``) serves it here instead, on ``TOKENWARD_METRICS_HOST``
(``127.0.0.1``), where only this machine (a Prometheus agent, a sidecar) can reach it.

One small asyncio server per worker process, started and stopped with the app's lifespan,
not a second uvicorn: it answers only ``GET``/``HEAD /metrics``, one request per connection,
with a bounded request head (8 KiB) read within :data:`READ_TIMEOUT` and the answer written
within :data:`WRITE_TIMEOUT` (a scraper that stops reading does not hold the connection),
and at most :data:`MAX_CONNECTIONS` connections at a time per worker: more are closed at
once, so connections left open cannot pile up (see "Connection limits" in
docs/deployment.md for the public port). With several workers
each binds the port with ``SO_REUSEPORT`` and the kernel spreads scrapes over them; any
worker reports the whole server (the multiprocess mode of :mod:`tokenward.metrics`).
``tokenward serve`` checks the port is free before starting the workers, so a port taken
by another program (or another Tokenward) is a start-up error, not a silent share.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from tokenward.metrics import CONTENT_TYPE, Metrics

__all__ = ["MAX_CONNECTIONS", "READ_TIMEOUT", "WRITE_TIMEOUT", "MetricsListener", "check_port_free"]

#: Seconds a client has to send its request head.
READ_TIMEOUT = 5.0
#: Seconds to render and send the answer (to a client that reads it).
WRITE_TIMEOUT = 10.0
#: Open connections per worker; a scraper needs one now and then.
MAX_CONNECTIONS = 32
_HEAD_LIMIT = 8192

log = logging.getLogger("tokenward.http")


def check_port_free(host: str, port: int) -> None:
    """Raise ``OSError`` when ``host:port`` cannot be bound (another program holds it).

    The probe binds as the listener will (``SO_REUSEADDR``, asyncio's default): without it
    the ``TIME_WAIT`` left by the last run's scrapes (the listener closes first) refused a
    restart within a minute. A socket listening there, ``SO_REUSEPORT`` or not (orphaned
    workers of a killed server), still fails it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


def _response(status: str, body: bytes, content_type: str, *, head: bool = False) -> bytes:
    lines = [
        f"HTTP/1.1 {status}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head else body)


class MetricsListener:
    """Serves ``metrics`` at ``http://host:port/metrics`` while started.

    Args:
        metrics: the process's metrics.
        host: the address to listen on.
        port: the port.
        read_timeout: seconds a client has to send its request head.
        max_connections: connections served at a time; more are closed at once.
    """

    def __init__(
        self,
        metrics: Metrics,
        host: str,
        port: int,
        *,
        read_timeout: float = READ_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self._open = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen (``SO_REUSEPORT``: every worker process of one server listens here)."""
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, reuse_port=True, limit=_HEAD_LIMIT
        )
        log.info("metrics listener on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), READ_TIMEOUT)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= self.max_connections:
            writer.close()
            return
        self._open += 1
        try:
            async with asyncio.timeout(self.read_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            path = target.split("?", 1)[0]
            async with asyncio.timeout(WRITE_TIMEOUT):
                if path != "/metrics":
                    writer.write(_response("404 Not Found", b"not found\n", "text/plain"))
                elif method not in ("GET", "HEAD"):
                    writer.write(_response("405 Method Not Allowed", b"GET only\n", "text/plain"))
                else:
                    body = await self.metrics.render()
                    writer.write(_response("200 OK", body, CONTENT_TYPE, head=method == "HEAD"))
                await writer.drain()
        except (
            TimeoutError,
            ValueError,
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass  # a malformed, oversized or slow request gets no answer
        finally:
            self._open -= 1
            writer.close()
