"""A real three-node Redis Cluster on 127.0.0.1, started for the tests that ask for it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from waiting import wait_until

NODES = 3
START_TIMEOUT = 30.0


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        # cluster bus ports are port + 10000: keep the data ports below 55535
        ports = [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
    if any(p > 55000 for p in ports):
        return _free_ports(n)
    return ports


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["redis-cli", *args], capture_output=True, text=True, timeout=30, check=False
    )


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(server).exists() or not shutil.which("redis-cli"):
        pytest.fail(
            "redis-server and redis-cli are required (Debian: apt-get install redis-server)"
        )
    base = tmp_path_factory.mktemp("cluster")
    ports = _free_ports(NODES)
    procs = []
    try:
        for port in ports:
            procs.append(
                subprocess.Popen(
                    [
                        server,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        f"nodes-{port}.conf",
                        "--dir",
                        str(base),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        deadline = time.monotonic() + START_TIMEOUT
        wait_until(
            lambda: all(_cli("-p", str(p), "ping").stdout.strip() == "PONG" for p in ports),
            within=START_TIMEOUT,
            what="the cluster nodes answer",
            step=0.05,
        )
        created = _cli(
            "--cluster",
            "create",
            *[f"127.0.0.1:{p}" for p in ports],
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        )
        assert created.returncode == 0, created.stdout + created.stderr
        wait_until(
            lambda: all(
                "cluster_state:ok" in _cli("-p", str(p), "cluster", "info").stdout for p in ports
            ),
            within=max(0.0, deadline - time.monotonic()),
            what="the cluster is ready",
            step=0.05,
        )
        yield f"redis+cluster://127.0.0.1:{ports[0]}"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
