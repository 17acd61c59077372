"""Fixtures of the Sentinel tests: real topologies (see :mod:`sentinel_topology`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sentinel_topology import SentinelTopology


@pytest.fixture
def sentinel_topology(tmp_path: Path) -> Iterator[SentinelTopology]:
    """A fresh topology for one test (a failover changes it for good)."""
    topology = SentinelTopology(tmp_path)
    try:
        topology.start()
        yield topology
    finally:
        topology.stop()


@pytest.fixture(scope="module")
def shared_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelTopology]:
    """One topology for the tests of a module that only use it (no failover)."""
    topology = SentinelTopology(tmp_path_factory.mktemp("sentinel"))
    try:
        topology.start()
        yield topology
    finally:
        topology.stop()
