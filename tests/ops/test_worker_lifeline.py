"""Workers die with their supervisor: ``SIGKILL`` of ``tokenward serve --workers 2``.

The supervisor is killed without any chance to clean up. Its workers (and every other child:
multiprocessing's resource tracker) must exit by themselves, freeing the public and the
metrics port, so that the restart binds both again. Before :mod:`tokenward.lifeline` both
workers kept the port and answered ``/healthz`` 200 five seconds later, and the restart
failed with "address already in use".
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from ports import free_port
from processes import alive, children
from waiting import wait_until

START_DEADLINE = 90.0
#: Seconds for the orphans to go: the death signal is immediate; a graceful uvicorn
#: shutdown and the kernel's reaping take well under this on a loaded machine.
EXIT_DEADLINE = 20.0


def _port_free(port: int) -> bool:
    """Whether a server could listen there now (as servers bind: SO_REUSEADDR, so the
    TIME_WAIT of connections that ended does not count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _serve(
    redis_url: str, tmp: Path, port: int, metrics_port: int, log: Path
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TOKENWARD_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(TOKENWARD_REDIS_URL=redis_url, TOKENWARD_DATA_DIR=str(tmp / "data"))
    argv = [
        sys.executable, "-m", "tokenward.cli", "serve", "--port", str(port), "--workers", "2",
        "--metrics-port", str(metrics_port),
    ]  # fmt: skip
    with log.open("wb") as out:
        return subprocess.Popen(
            argv, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def _wait_started(proc: subprocess.Popen[bytes], log: Path) -> None:
    def both_workers_started() -> bool:
        assert proc.poll() is None, log.read_text()
        return log.read_text(errors="replace").count("Application startup complete") >= 2

    wait_until(both_workers_started, within=START_DEADLINE, step=0.1)


def test_workers_exit_when_the_supervisor_is_killed(redis_url: str, tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = _serve(redis_url, tmp_path, port, metrics_port, first_log)
    orphans: list[int] = []
    second: subprocess.Popen[bytes] | None = None
    try:
        _wait_started(first, first_log)
        orphans = children(first.pid)
        assert len(orphans) >= 2, "two workers (and the resource tracker)"
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        # A scrape: the listener closes first, leaving its port in TIME_WAIT for the restart.
        scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
        assert scrape.status_code == 200

        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        wait_until(
            lambda: not any(alive(pid) for pid in orphans),
            within=EXIT_DEADLINE,
            what=f"the supervisor's children {orphans} exit",
            step=0.05,
        )
        wait_until(
            lambda: _port_free(port) and _port_free(metrics_port),
            within=EXIT_DEADLINE,
            what="both ports are free",
            step=0.05,
        )

        second = _serve(redis_url, tmp_path, port, metrics_port, second_log)
        _wait_started(second, second_log)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        r = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
        assert r.status_code == 200
        os.kill(second.pid, signal.SIGTERM)
        assert second.wait(30) == 0
    finally:
        # Whatever a failure left behind: only the processes this test started, by pid.
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        for pid in orphans:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    log = first_log.read_text(errors="replace") + second_log.read_text(errors="replace")
    assert "Traceback" not in log
