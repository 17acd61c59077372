"""App fixtures: a started Tokenward over the real Redis, an SQLite file, and a client.

* ``client``  -- an ``httpx.AsyncClient`` on ``tw``'s app at ``https://tokenward.test``.

``make_tw``, ``tw``, ``accounts`` and ``redis`` come from tests/conftest.py.

Helpers live in ``http_support`` (import that, not this module: several conftests exist).
Time is a :class:`FrozenClock` starting at the real time, so tests move it instead of
sleeping; Redis TTLs are checked as values.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from http_support import isolated_client

from tokenward.runtime import Tokenward


@pytest.fixture
async def client(tw: Tokenward) -> AsyncIterator[httpx.AsyncClient]:
    async with isolated_client(tw) as c:
        yield c
