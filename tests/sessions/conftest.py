"""Fixtures of the session tests.

* ``client`` -- an httpx client on ``tw``'s app (``make_tw``, ``tw``, ``accounts`` and
  ``redis`` come from tests/conftest.py; ``make_tw(data_dir=...)`` makes two "instances"
  share signing keys and the SQLite file).
* ``server`` -- ``server(workers=1, **settings)``: a real ``tokenward serve`` process group.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sessions_support import Server, client_for, run_server

from tokenward.runtime import Tokenward


@pytest.fixture
async def client(tw: Tokenward) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(tw) as c:
        yield c


@pytest.fixture
def server(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start real servers on demand; all are stopped at teardown."""
    with contextlib.ExitStack() as stack:
        count = 0

        def start(workers: int = 1, **settings: Any) -> Server:
            nonlocal count
            count += 1
            return stack.enter_context(
                run_server(redis_url, tmp_path / f"srv{count}", workers=workers, **settings)
            )

        yield start
