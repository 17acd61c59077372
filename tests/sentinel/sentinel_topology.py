"""A real Sentinel deployment on 127.0.0.1: one master, one replica, three sentinels.

A uniquely named module (imported by the tests of this folder and its conftest).

Every process is a ``redis-server`` (``--sentinel`` for the sentinels) this module starts
on free ports, waits for with bounded polls and stops by pid. The sentinels are tuned for
tests: a master is down after 1 s of silence and a failover may be retried after 3 s, so a
switch-over or a crash is over in a few seconds.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from ports import free_port
from private_redis import kill_process, stop_process
from waiting import wait_until

SERVICE = "tw"
STARTUP_TIMEOUT = 30.0
#: A whole failover (detection, election, promotion, reconfiguration) fits in this.
FAILOVER_TIMEOUT = 30.0
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


def _binary() -> str:
    found = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(found).exists():
        pytest.fail("redis-server is required (Debian: apt-get install redis-server)")
    return found


def command(port: int, *args: str, timeout: float = 2.0) -> str:
    """One command over a fresh socket (inline protocol); the raw reply, '' if unreachable."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall((" ".join(args) + "\r\n").encode())
            chunks = b""
            while True:
                chunk = sock.recv(65536)
                chunks += chunk
                if not chunk or _complete(chunks):
                    return chunks.decode(errors="replace")
    except OSError:
        return ""


def _complete(reply: bytes) -> bool:
    # Enough for the replies read here: a simple line, a bulk string, or a flat array.
    if reply[:1] in (b"+", b"-", b":"):
        return reply.endswith(b"\r\n")
    if reply[:1] == b"$":
        head, _, body = reply.partition(b"\r\n")
        return int(head[1:]) < 0 or len(body) >= int(head[1:]) + 2
    if reply[:1] == b"*":
        head, _, body = reply.partition(b"\r\n")
        count = int(head[1:])
        return count <= 0 or body.count(b"\r\n") >= 2 * count
    return False


class Server:
    """One redis-server process of the topology."""

    def __init__(self, workdir: Path, name: str, argv: list[str]) -> None:
        self.workdir = workdir
        self.name = name
        self.argv = argv
        self.port = int(argv[argv.index("--port") + 1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.workdir / f"{self.name}.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = self.proc

        def pings() -> bool:
            assert proc.poll() is None, log.read_text()
            return command(self.port, "PING").startswith("+PONG")

        wait_until(pings, within=STARTUP_TIMEOUT, what=f"{self.name} answers")

    def kill(self) -> None:
        """SIGKILL by pid."""
        kill_process(self.proc)

    def stop(self) -> None:
        """SIGTERM by pid (SIGKILL after 10 s)."""
        stop_process(self.proc)


class SentinelTopology:
    """The servers, and what the tests do to them."""

    def __init__(self, workdir: Path, *, data_args: tuple[str, ...] = ()) -> None:
        binary = _binary()
        self.workdir = workdir
        base = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        base += ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]
        base += list(data_args)
        first, second = free_port(), free_port()
        self.data = [
            Server(workdir, "redis-a", [binary, "--port", str(first), *base]),
            Server(
                workdir,
                "redis-b",
                [binary, "--port", str(second), *base, "--replicaof", "127.0.0.1", str(first)],
            ),
        ]
        self.sentinels: list[Server] = []
        for n in range(3):
            port = free_port()
            conf = workdir / f"sentinel-{n}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {first} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            argv = [binary, str(conf), "--sentinel", "--port", str(port)]
            self.sentinels.append(Server(workdir, f"sentinel-{n}", argv))

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self) -> None:
        for server in self.data:
            server.start()
        self.wait_replicated(self.data[0].port)
        for server in self.sentinels:
            server.start()
        wait_until(
            lambda: all(self._knows_everyone(s.port) for s in self.sentinels),
            within=STARTUP_TIMEOUT,
            what="every sentinel sees the replica and the other sentinels",
        )

    def stop(self) -> None:
        for server in [*self.sentinels, *self.data]:
            server.stop()

    def _knows_everyone(self, port: int) -> bool:
        reply = command(port, "SENTINEL", "MASTER", SERVICE)
        fields = reply.split("\r\n")[2::2]
        info = dict(zip(fields[::2], fields[1::2], strict=False))
        return info.get("num-slaves") == "1" and info.get("num-other-sentinels") == "2"

    def master_port(self) -> int:
        """The master's port as the first sentinel that answers sees it."""
        for sentinel in self.sentinels:
            reply = command(sentinel.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
            lines = reply.split("\r\n")
            if reply.startswith("*2") and len(lines) > 4:
                return int(lines[4])
        raise AssertionError("no sentinel answers")

    def server(self, port: int) -> Server:
        return next(s for s in self.data if s.port == port)

    def role(self, port: int) -> str:
        """``master``, ``slave`` or '' (down), as the server itself says (INFO)."""
        info = command(port, "INFO", "replication")
        for line in info.splitlines():
            if line.startswith("role:"):
                return line.split(":", 1)[1].strip()
        return ""

    def wait_replicated(self, master: int) -> None:
        """Until the other data node is a replica of ``master`` with its link up and the
        same offset (everything the master acknowledged is there)."""
        replica = next(s.port for s in self.data if s.port != master)

        def caught_up() -> bool:
            rep = _info(replica)
            return (
                rep.get("role") == "slave"
                and rep.get("master_port") == str(master)
                and rep.get("master_link_status") == "up"
                and rep.get("slave_repl_offset") == _info(master).get("master_repl_offset")
            )

        wait_until(caught_up, within=FAILOVER_TIMEOUT, what="the replica caught up")

    def wait_master(self, port: int) -> None:
        """Until every sentinel names ``port`` as the master and the server says so."""

        def moved() -> bool:
            names = {
                command(s.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE).split("\r\n")[4:5]
                == [str(port)]
                for s in self.sentinels
                if s.proc is not None and s.proc.poll() is None
            }
            return names == {True} and self.role(port) == "master"

        wait_until(moved, within=FAILOVER_TIMEOUT, what=f"the sentinels name :{port} master")


def _info(port: int) -> dict[str, str]:
    out = {}
    for line in command(port, "INFO", "replication").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key] = value.strip()
    return out
