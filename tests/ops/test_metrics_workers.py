"""Metrics with several worker processes: every scrape sees the whole server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ports import free_port
from waiting import wait_until

STARTUP_TIMEOUT = 90.0

_WORKER = """
import sys
from tokenward.metrics import Metrics
m = Metrics()
for _ in range(int(sys.argv[1])):
    m.observe_request("GET", "/healthz", 200, 0.001)
m.login("ok")
"""

_SCRAPE = """
import asyncio
from tokenward.metrics import Metrics
print(asyncio.run(Metrics().render()).decode())
"""


def _healthz_count(text: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "tokenward_http_requests_total" and s.labels.get("route") == "/healthz":
                return s.value
    return 0.0


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TOKENWARD_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(extra)
    return env


def test_multiprocess_mode_adds_up_the_processes(tmp_path: Path) -> None:
    """Two processes count; a third one's scrape reports the sum of both."""
    env = _env(PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    for n in ("3", "4"):
        subprocess.run([sys.executable, "-c", _WORKER, n], env=env, check=True, timeout=60)
    out = subprocess.run(
        [sys.executable, "-c", _SCRAPE], env=env, check=True, timeout=60, capture_output=True
    ).stdout.decode()
    assert _healthz_count(out) == 7
    assert 'tokenward_logins_total{outcome="ok"} 2.0' in out


def test_serve_with_two_workers_reports_every_request(redis_url: str, tmp_path: Path) -> None:
    """`tokenward serve --workers 2 --metrics-port M`: whichever worker answers the metrics
    listener counts all requests; the public port serves no /metrics."""
    port, metrics_port = free_port(), free_port()
    data = tmp_path / "data"
    data.mkdir()
    log = tmp_path / "server.log"
    env = _env(
        TOKENWARD_REDIS_URL=redis_url,
        TOKENWARD_DATA_DIR=str(data),
        TOKENWARD_ACCESS_LOG="false",
    )
    argv = [
        sys.executable, "-m", "tokenward.cli", "serve", "--port", str(port), "--workers", "2",
        "--metrics-port", str(metrics_port),
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:

        def both_workers_started() -> bool:
            assert proc.poll() is None, log.read_text()
            return log.read_text(errors="replace").count("Application startup complete") >= 2

        wait_until(both_workers_started, within=STARTUP_TIMEOUT, step=0.1)
        base = f"http://127.0.0.1:{port}"
        for _ in range(20):
            # A new connection each time, so the kernel may hand it to either worker.
            assert httpx.get(base + "/healthz", timeout=10).status_code == 200
        assert httpx.get(base + "/metrics", timeout=10).status_code == 404
        counts = set()
        for _ in range(6):
            r = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
            assert r.status_code == 200
            counts.add(_healthz_count(r.text))
        assert counts == {20.0}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
