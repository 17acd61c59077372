"""Counting what a Redis client sends: its round trips (a pipeline is one send)."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis


def count_sends(redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every send of ``redis``'s connections from now on (a pipeline is one), as text."""
    connection_class = redis.connection_pool.connection_class
    send = connection_class.send_packed_command
    sends: list[str] = []

    async def counted(conn: Any, command: Any, check_health: bool = True) -> None:
        packed = command if isinstance(command, bytes | str) else b"".join(command)
        sends.append(packed if isinstance(packed, str) else packed.decode("latin-1"))
        await send(conn, command, check_health)

    monkeypatch.setattr(connection_class, "send_packed_command", counted)
    return sends
