"""A real three-node Redis Cluster on 127.0.0.1, started for the tests that ask for it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cluster_nodes import running_cluster

from tokenward.clock import FrozenClock
from tokenward.passwords import CHEAP_FOR_TESTS
from tokenward.runtime import Tokenward
from tokenward.settings import load_settings

NODES = 3


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Three masters, no replicas, shared by the whole run."""
    with running_cluster(tmp_path_factory.mktemp("cluster"), masters=NODES) as ports:
        yield f"redis+cluster://127.0.0.1:{ports[0]}"


@pytest.fixture
async def cluster_tw(redis_cluster_url: str, tmp_path: Path) -> AsyncIterator[Tokenward]:
    """A started Tokenward on the cluster (FrozenClock at the real time, cheap hashing)."""
    env = {
        "TOKENWARD_REDIS_URL": redis_cluster_url,
        "TOKENWARD_DATA_DIR": str(tmp_path),
        "TOKENWARD_ISSUER": "https://tokenward.test",
    }
    settings = load_settings(env, env_file=tmp_path / "none.env")
    tw = Tokenward(settings, clock=FrozenClock(int(time.time())), argon2=CHEAP_FOR_TESTS)
    await tw.start()
    yield tw
    await tw.stop()
