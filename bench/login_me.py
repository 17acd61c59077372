"""Login latency and ``GET /auth/me`` throughput of a real ``tokenward serve``.

Run by hand (never in CI):  .venv/bin/python bench/login_me.py [--workers 1 2] [--seconds 10]

For each worker count it starts ``tokenward serve`` on embedded defaults in a temporary
directory (real argon2id parameters), registers one user, then measures

* login latency: 40 sequential bearer logins, median and p95, milliseconds;
* ``GET /healthz`` (the baseline: the framework alone) and ``GET /auth/me`` (verify the
  access token, check the session, read the user's address from the user store: sessions
  do not hold it) requests per second with ``wrk`` (64 connections,
  2 threads, 127.0.0.1 only), and their ratio.

Everything targets 127.0.0.1, is bounded in time, and stops the server it started by pid.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
PASSWORD = "violet tractor 42 umbrella"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(url: str, body: dict[str, str], headers: dict[str, str]) -> dict[str, object]:
    data = json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, headers={"content-type": "application/json", **headers}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        payload = r.read()
    return json.loads(payload) if payload else {}


def wrk(url: str, seconds: int, token: str | None) -> float:
    cmd = ["wrk", "-t2", "-c64", f"-d{seconds}s", "--latency", url]
    if token:
        cmd[1:1] = ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=seconds + 30, check=True
    ).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"wrk saw errors:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert match, out
    return float(match.group(1))


def run(workers: int, seconds: int) -> dict[str, float]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWARD_")}
        env["TOKENWARD_LOG_LEVEL"] = "warning"
        proc = subprocess.Popen(
            [str(VENV_BIN / "tokenward"), "serve", "--port", str(port), "--workers", str(workers)],
            cwd=tmp,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(base + "/healthz", timeout=1).read()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit("server did not start") from None
                    time.sleep(0.1)
            email = "bench@example.com"
            post(base + "/auth/register", {"email": email, "password": PASSWORD}, {})
            bearer = {"X-Auth-Transport": "bearer"}
            latencies = []
            token = ""
            for _ in range(40):
                start = time.perf_counter()
                body = post(base + "/auth/login", {"email": email, "password": PASSWORD}, bearer)
                latencies.append((time.perf_counter() - start) * 1000)
                token = str(body["access_token"])
            healthz = wrk(base + "/healthz", seconds, None)
            me = wrk(base + "/auth/me", seconds, token)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    latencies.sort()
    return {
        "login_median_ms": statistics.median(latencies),
        "login_p95_ms": latencies[int(len(latencies) * 0.95) - 1],
        "healthz_rps": healthz,
        "me_rps": me,
        "me_vs_healthz": me / healthz,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is required (Debian: apt-get install wrk)")
    for workers in args.workers:
        result = run(workers, args.seconds)
        print(
            f"workers={workers} " + " ".join(f"{k}={v:.2f}" for k, v in result.items()), flush=True
        )


if __name__ == "__main__":
    main()
