"""Fixtures of the abuse tests.

* ``client`` -- on ``tw``'s app, from a fresh address.

``make_tw`` (``argon2=None`` hashes with the configured OWASP cost), ``tw``, ``accounts`` and
``redis`` come from tests/conftest.py.

Helpers live in ``abuse_support`` (import that, not this module: several conftests exist).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from abuse_support import (
    GENEROUS_LIMITS,
    LiveServer,
    client_for,
    fresh_ip,
    live_server,
)

from tokenward.runtime import Tokenward


@pytest.fixture
async def client(tw: Tokenward) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(tw, fresh_ip()) as c:
        yield c


@pytest.fixture(scope="module")
def fuzz_server(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A real server (thread, own loop) with limits no fuzzer trips, for plain-HTTP fuzzing."""
    with live_server(redis_url, tmp_path_factory.mktemp("fuzz"), **GENEROUS_LIMITS) as server:
        yield server
