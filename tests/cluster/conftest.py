"""A real three-node Redis Cluster on 127.0.0.1, started for the tests that ask for it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cluster_nodes import running_cluster

NODES = 3


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Three masters, no replicas, shared by the whole run."""
    with running_cluster(tmp_path_factory.mktemp("cluster"), masters=NODES) as ports:
        yield f"redis+cluster://127.0.0.1:{ports[0]}"
