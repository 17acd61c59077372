"""The metrics listener cannot be hoarded either: a cap on open connections, a head deadline.

A real :class:`MetricsListener` on a free 127.0.0.1 port, real sockets, small limits (cap 8,
head deadline 0.5 s) so that nothing waits long; every wait is a bounded read.
"""

from __future__ import annotations

import asyncio
import time

from ports import free_port
from tokenward.http.metrics_listener import MetricsListener
from tokenward.metrics import Metrics

CAP = 8
READ = 0.5
SLACK = 3.0


async def _scrape(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        return await asyncio.wait_for(reader.read(), SLACK)
    finally:
        writer.close()


async def _ended(reader: asyncio.StreamReader, within: float) -> bool:
    """Whether the server closed the connection (EOF, or a reset: data it never read)
    within ``within`` seconds, without answering."""
    try:
        return await asyncio.wait_for(reader.read(), within) == b""
    except ConnectionResetError:
        return True


async def test_the_listener_caps_connections_and_drops_idle_ones() -> None:
    """8 idle connections fill it: a 9th is closed at once (no answer); the idle ones are
    closed after the 0.5 s head deadline, not before; then a scrape gets 200 again."""
    port = free_port()
    listener = MetricsListener(Metrics(), "127.0.0.1", port, read_timeout=READ, max_connections=CAP)
    await listener.start()
    try:
        hoarders = [await asyncio.open_connection("127.0.0.1", port) for _ in range(CAP)]
        opened = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await _ended(reader, READ / 2), "refused at once"
        writer.close()

        lives = []
        for hoarder_reader, hoarder_writer in hoarders:
            assert await _ended(hoarder_reader, READ + SLACK)
            lives.append(time.monotonic() - opened)
            hoarder_writer.close()
        assert min(lives) >= READ - 0.1, lives

        answer = await _scrape(port)
        assert answer.startswith(b"HTTP/1.1 200 OK"), answer[:100]
    finally:
        await listener.stop()
