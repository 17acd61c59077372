"""Real Redis Clusters for the tests: free ports, ``redis-cli``, and a cluster that is
started, formed and torn down around a block.

Every node listens on 127.0.0.1 only, keeps nothing on disk, and is stopped by pid when the
block ends; every wait is a bounded poll.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokenward.errors import SessionEnded
from tokenward.runtime import Tokenward
from tokenward.sessions import EndReason, UserRef
from waiting import await_until, wait_until

START_TIMEOUT = 30.0


def free_cluster_ports(n: int) -> list[int]:
    """``n`` free ports whose cluster bus port (port + 10000) is a valid port too."""
    socks: list[socket.socket] = []
    try:
        while len(socks) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            if s.getsockname()[1] > 55000:
                s.close()
                continue
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def cli(port: int, *args: str, check: bool = False) -> str:
    """``redis-cli -p port args...``; its standard output."""
    return subprocess.run(
        ["redis-cli", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=check,
    ).stdout


def role(port: int) -> str:
    """``master`` or ``slave`` (or ``""`` when the node does not answer)."""
    words = cli(port, "role").split()
    return words[0] if words else ""


@contextlib.contextmanager
def running_cluster(
    base: Path, *, masters: int = 3, replicas: int = 0, node_timeout_ms: int | None = None
) -> Iterator[list[int]]:
    """A formed cluster of ``masters`` masters with ``replicas`` replicas each, every
    replica in sync; yields the node ports."""
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(server).exists() or not shutil.which("redis-cli"):
        pytest.fail(
            "redis-server and redis-cli are required (Debian: apt-get install redis-server)"
        )
    ports = free_cluster_ports(masters * (1 + replicas))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(base)]
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
            argv += ["--save", "", "--appendonly", "no"]
            if node_timeout_ms is not None:
                argv += ["--cluster-node-timeout", str(node_timeout_ms)]
            procs.append(
                subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        wait_until(
            lambda: all(cli(p, "ping").strip() == "PONG" for p in ports),
            within=START_TIMEOUT,
            what="the cluster nodes answer",
            step=0.05,
        )
        created = subprocess.run(
            ["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
             "--cluster-replicas", str(replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert created.returncode == 0, created.stdout + created.stderr

        def ready() -> bool:
            if not all("cluster_state:ok" in cli(p, "cluster", "info") for p in ports):
                return False
            synced = [p for p in ports if role(p) == "slave"]
            return len(synced) == masters * replicas and all(
                "master_link_status:up" in cli(p, "info", "replication") for p in synced
            )

        wait_until(ready, within=START_TIMEOUT, what="the cluster is formed", step=0.1)
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


async def ended_on_a_refused_on_b(a: Tokenward, b: Tokenward, user: UserRef) -> float:
    """Open a session on ``a``, let ``b`` vouch for it from its cache, end it on ``a``; the
    seconds until ``b`` refuses it (at most 2: only the revocation feed can tell ``b``)."""
    issued = await a.sessions.open(user, ip="127.0.0.1", user_agent="t", now=a.clock.now())
    await b.sessions.authenticate(issued.access_token, now=b.clock.now())
    hits = b.cache.hits
    await b.sessions.authenticate(issued.access_token, now=b.clock.now())
    assert b.cache.hits == hits + 1  # B vouches from its cache: only the feed can stop it
    start = time.monotonic()
    await a.sessions.end(user.id, issued.sid, EndReason.LOGOUT, now=a.clock.now())

    async def refused() -> bool:
        try:
            await b.sessions.authenticate(issued.access_token, now=b.clock.now())
        except SessionEnded:
            return True
        return False

    await await_until(refused, within=2, what="B refuses the ended session", step=0.001)
    return time.monotonic() - start
