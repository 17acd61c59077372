"""Tests of the embedded Valkey server, with real processes.

Nothing sleeps for a fixed time: every wait polls a condition against a deadline. The only
processes killed are ones these tests started, and only by pid.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tokenward.stores.embedded_redis import EmbeddedRedis, EmbeddedRedisError, find_valkey_server
from waiting import wait_until

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux-only")


def _client(embedded: EmbeddedRedis) -> redis.Redis:
    socket_path = embedded.url.removeprefix("unix://")
    return redis.Redis(unix_socket_path=socket_path, socket_timeout=5)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (an orphan nobody has reaped yet) counts as gone."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat_line.rpartition(")")[2].split()[0] != "Z"


def _kill_valkey(pid: int) -> None:
    """Clean-up after a failed test: SIGKILL ``pid`` if it is still a valkey-server."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return
    if comm == "valkey-server":
        os.kill(pid, signal.SIGKILL)


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            pytest.fail(f"child printed nothing within {timeout} s")
    return proc.stdout.readline()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def embedded(data_dir: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(data_dir)
    server.start()
    yield server
    server.stop()


def test_serves_ping_set_get_on_private_unix_socket(
    embedded: EmbeddedRedis, data_dir: Path
) -> None:
    socket_path = data_dir / "redis.sock"
    assert embedded.url == f"unix://{socket_path}"
    with _client(embedded) as client:
        assert client.ping() is True
        assert client.set("session:1", "alice") is True
        assert client.get("session:1") == b"alice"
        assert client.config_get("port") == {"port": "0"}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("maxmemory") == {"maxmemory": "0"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("dir") == {"dir": str(data_dir / "redis")}
    assert stat.S_IMODE(socket_path.stat().st_mode) == 0o700
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((data_dir / "redis").stat().st_mode) == 0o700
    assert (data_dir / "redis" / "valkey.log").is_file()


def test_data_survives_stop_and_start(data_dir: Path) -> None:
    server = EmbeddedRedis(data_dir)
    server.start()
    with _client(server) as client:
        client.set("session:2", "kept")
    server.stop()
    assert not (data_dir / "redis.sock").exists()
    with pytest.raises(EmbeddedRedisError, match="not running"):
        _ = server.url

    with server, _client(server) as client:
        assert client.get("session:2") == b"kept"


def test_stop_is_idempotent(data_dir: Path) -> None:
    server = EmbeddedRedis(data_dir)
    server.stop()
    server.start()
    pid = server.pid
    assert pid is not None
    server.stop()
    server.stop()
    assert server.pid is None
    assert not _alive(pid)


def test_second_owner_of_a_data_dir_is_refused(embedded: EmbeddedRedis, data_dir: Path) -> None:
    with pytest.raises(EmbeddedRedisError, match="in use by another embedded Redis"):
        EmbeddedRedis(data_dir).start()
    with pytest.raises(EmbeddedRedisError, match="already runs"):
        embedded.start()
    with _client(embedded) as client:
        assert client.ping() is True


def test_stale_socket_and_pid_file_are_cleared(data_dir: Path) -> None:
    (data_dir / "redis").mkdir(parents=True)
    (data_dir / "redis" / "valkey.pid").write_text("999999\n")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(data_dir / "redis.sock"))  # closed without unlink: nobody listens
    with EmbeddedRedis(data_dir) as server, _client(server) as client:
        assert client.ping() is True


def test_orphaned_server_of_a_crashed_run_is_shut_down(data_dir: Path) -> None:
    server_dir = data_dir / "redis"
    server_dir.mkdir(parents=True)
    socket_path = data_dir / "redis.sock"
    argv = [
        str(find_valkey_server()),
        "--port", "0",
        "--unixsocket", str(socket_path),
        "--dir", str(server_dir),
        "--appendonly", "yes",
        "--save", "",
    ]  # fmt: skip
    orphan = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with redis.Redis(unix_socket_path=str(socket_path), socket_timeout=5) as client:

            def orphan_set() -> bool:
                try:
                    return client.set("session:3", "from-orphan") is True
                except (redis.ConnectionError, redis.BusyLoadingError):
                    return False

            wait_until(orphan_set, within=10, what="the orphan accepts writes")

        with EmbeddedRedis(data_dir) as server, _client(server) as client:
            assert orphan.wait(timeout=10) == 0
            assert client.get("session:3") == b"from-orphan"
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait(timeout=10)


def test_failed_start_reports_log_tail_and_releases_the_lock(data_dir: Path) -> None:
    aof_dir = data_dir / "redis" / "appendonlydir"
    aof_dir.mkdir(parents=True)
    (aof_dir / "appendonly.aof.manifest").write_text("this is not a manifest\n")
    server = EmbeddedRedis(data_dir)
    with pytest.raises(EmbeddedRedisError, match=r"exited during start-up .*valkey\.log: ") as err:
        server.start()
    assert "\n" not in str(err.value)
    assert server.pid is None

    (aof_dir / "appendonly.aof.manifest").unlink()
    with EmbeddedRedis(data_dir) as other, _client(other) as client:
        assert client.ping() is True


@linux_only
def test_server_outlives_the_thread_that_started_it(data_dir: Path) -> None:
    server = EmbeddedRedis(data_dir)
    starter = threading.Thread(target=server.start)
    starter.start()
    starter.join(timeout=15)
    try:
        pid = server.pid
        assert pid is not None
        # join() returns before the kernel has finished the thread's exit, which is where a
        # death signal tied to it would be sent; the thread's /proc entry goes after that.
        task = Path(f"/proc/self/task/{starter.native_id}")
        wait_until(lambda: not task.exists(), within=15, what="the starter thread is gone")
        # A pending signal is handled before the server can read the next command, and
        # Valkey logs a SIGTERM from its handler at once (its shutdown comes later, so a
        # PING alone would still be answered).
        with _client(server) as client:
            assert client.ping() is True
        assert _alive(pid), "the server died with the thread that started it"
        assert "Received SIGTERM" not in server.log_path.read_text(), (
            "the server was told to stop when the thread that started it ended"
        )
    finally:
        server.stop()


_CHILD = textwrap.dedent(
    """
    import sys, threading
    from pathlib import Path
    import redis
    from tokenward.stores.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis(Path(sys.argv[1]))
    if sys.argv[2] == "thread":
        starter = threading.Thread(target=server.start)
        starter.start()
        starter.join()
    else:
        server.start()
    socket_path = server.url.removeprefix("unix://")
    with redis.Redis(unix_socket_path=socket_path) as client:
        client.set("session:4", "before-sigkill")
    print(server.pid, flush=True)
    sys.stdin.read()  # parked until the test kills this process
    """
)


@linux_only
@pytest.mark.parametrize("started_from", ["main", "thread"])
def test_server_dies_with_sigkilled_parent(data_dir: Path, started_from: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(data_dir), started_from],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    server_pid: int | None = None
    try:
        line = _read_line(child, timeout=30)
        assert line.strip().isdigit(), f"child printed {line!r}, exit code {child.poll()}"
        server_pid = int(line)
        assert _alive(server_pid)

        child.kill()
        child.wait(timeout=10)
        wait_until(
            lambda: not _alive(server_pid), within=10, what=f"server pid {server_pid} is gone"
        )
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
        if child.stdin is not None:
            child.stdin.close()
        if child.stdout is not None:
            child.stdout.close()
        if server_pid is not None:
            _kill_valkey(server_pid)

    # SIGTERM made it persist and clean up; the data dir is free for the next run.
    with EmbeddedRedis(data_dir) as server, _client(server) as client:
        assert client.get("session:4") == b"before-sigkill"
