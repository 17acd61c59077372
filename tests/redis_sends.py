"""Counting what a Redis client sends: its round trips (a pipeline is one send, and so is
one write of the shared connection, :mod:`tokenward.stores.redis_mux`)."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from tokenward.stores import redis_mux


def count_sends(redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every send of ``redis``'s connections from now on (a pipeline is one), as text."""
    connection_class = redis.connection_pool.connection_class
    send = connection_class.send_packed_command
    write_queued = redis_mux._Protocol.write_queued
    sends: list[str] = []

    async def counted(conn: Any, command: Any, check_health: bool = True) -> None:
        packed = command if isinstance(command, bytes | str) else b"".join(command)
        sends.append(packed if isinstance(packed, str) else packed.decode("latin-1"))
        await send(conn, command, check_health)

    def counted_write(protocol: redis_mux._Protocol) -> None:
        if protocol.queued:
            sends.append(b"".join(protocol.queued).decode("latin-1"))
        write_queued(protocol)

    monkeypatch.setattr(connection_class, "send_packed_command", counted)
    monkeypatch.setattr(redis_mux._Protocol, "write_queued", counted_write)
    return sends
