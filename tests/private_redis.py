"""A ``redis-server`` owned by one test, so it may be killed, restarted or reconfigured.

The shared session-wide server (``redis_url`` in conftest) is never stopped by a test;
outage and recovery stories run on one of these instead. Every start waits for a PING with
a bounded poll; every stop is by pid.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

from ports import free_port
from waiting import wait_until

__all__ = ["PrivateRedis", "kill_process", "private_redis", "stop_process"]

#: Bound on a start (a loaded CI machine may take a while to fork and load the AOF).
STARTUP_TIMEOUT = 30.0


def kill_process(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL ``proc`` (ours, by pid) if it still runs, and reap it."""
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(10)


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM ``proc`` if it still runs; SIGKILL if it has not exited within 10 s."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            kill_process(proc)


class PrivateRedis:
    """A throw-away redis-server on a free port of 127.0.0.1.

    Args:
        workdir: its ``--dir`` (and the home of ``redis.log``).
        durable: append-only with an fsync on every write, so that a restart after
            :meth:`kill` finds everything acknowledged before it.
    """

    def __init__(self, workdir: Path, *, durable: bool = False) -> None:
        self.workdir = workdir
        self.durable = durable
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Its URL."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (again, on the same port and directory) and wait until it answers."""
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--dir", str(self.workdir), "--appendonly", "yes" if self.durable else "no"]
        if self.durable:
            argv += ["--appendfsync", "always"]
        log_path = self.workdir / "redis.log"
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = self.proc

        def pings() -> bool:
            assert proc.poll() is None, log_path.read_text()
            return self._pings()

        wait_until(pings, within=STARTUP_TIMEOUT, what="the private redis-server answers")

    def kill(self) -> None:
        """SIGKILL by pid: a crash, not a clean shutdown."""
        kill_process(self.proc)

    def stop(self) -> None:
        """A clean shutdown (SIGTERM), a SIGKILL if that takes over 10 s."""
        stop_process(self.proc)

    def _pings(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


@contextlib.contextmanager
def private_redis(workdir: Path, *, durable: bool = False) -> Iterator[PrivateRedis]:
    """A started :class:`PrivateRedis`, stopped on exit whatever happened."""
    server = PrivateRedis(workdir, durable=durable)
    try:
        server.start()
        yield server
    finally:
        server.stop()
