"""Cross-instance revocation delay: logout on one Tokenward, refusal on another, under load.

Run by hand (never in CI)::

    .venv/bin/python bench/revocation_delay.py [--trials 250] [--load 32] [--redis cluster]

It starts, on 127.0.0.1 in a temporary directory:

* Redis: ``cluster`` (default) six ``redis-server --cluster-enabled yes``, created as 3
  masters + 3 replicas; or ``single``, one ``redis-server``;
* two ``tokenward serve`` instances, A and B (one worker each, the real argon2id
  parameters, one shared data directory so they share the signing keys and the users).

Then ``--load`` concurrent clients keep sending ``GET /auth/me`` with live sessions of their
own to both instances (half each) while, ``--trials`` times: a user logs in on A; B
answers ``GET /auth/me`` twice (the second from its cache, warmed by the first); the user
logs out on A while a poller sends ``GET /auth/me`` to B back to back (one at a time, from
before the logout until B answers 401). Reported: p50 / p99 / max of the time from A's 204
arriving to B's first 401 arriving (it includes that request's round trip under load,
the resolution of the measure), how many trials had a request *sent* to B after A's 204
still accepted (a stale answer) and by how much, and the load's request rate and errors.

Everything is bounded (a trial gives up after 5 s and counts as a failure) and every
process it started is stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

PASSWORD = "violet tractor 42 umbrella"
ISSUER = "http://tokenward.bench"
BEARER = {"X-Auth-Transport": "bearer"}
STARTUP_TIMEOUT = 60.0


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        while len(socks) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            if s.getsockname()[1] > 55000:  # cluster bus ports are port + 10000
                s.close()
                continue
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(check: object, what: str, within: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + within
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def cli(port: int, *args: str) -> str:
    return subprocess.run(
        ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=30
    ).stdout


class Procs:
    """Processes started here, stopped by pid (process group for the servers)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path, **kw: object) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **kw,  # type: ignore[call-overload]
            )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(15)


def start_redis(kind: str, base: Path, procs: Procs) -> str:
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    n = 6 if kind == "cluster" else 1
    ports = free_ports(n)
    for port in ports:
        argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(base)]
        argv += ["--save", "", "--appendonly", "no"]
        if kind == "cluster":
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
        procs.start(argv, base / f"redis-{port}.log")
    wait_for(lambda: all(cli(p, "ping").strip() == "PONG" for p in ports), "redis")
    if kind == "single":
        return f"redis://127.0.0.1:{ports[0]}/0"
    created = subprocess.run(
        [
            "redis-cli",
            "--cluster",
            "create",
            *[f"127.0.0.1:{p}" for p in ports],
            "--cluster-replicas",
            "1",
            "--cluster-yes",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if created.returncode != 0:
        raise SystemExit(created.stdout + created.stderr)
    wait_for(
        lambda: all("cluster_state:ok" in cli(p, "cluster", "info") for p in ports),
        "the cluster",
    )
    return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports[:3])


def start_tokenward(redis_url: str, data: Path, name: str, procs: Procs) -> str:
    port = free_ports(1)[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWARD_")}
    env.update(
        TOKENWARD_REDIS_URL=redis_url,
        TOKENWARD_DATA_DIR=str(data),
        TOKENWARD_ISSUER=ISSUER,
        TOKENWARD_COOKIE_SECURE="false",
        TOKENWARD_TRUSTED_PROXIES="127.0.0.1",
        TOKENWARD_LOG_LEVEL="warning",
    )
    log = data.parent / f"{name}.log"
    argv = [sys.executable, "-m", "tokenward.cli", "serve", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--workers", "1"]
    procs.start(argv, log, env=env, cwd=data.parent)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(url + "/readyz", timeout=2).json().get("status") == "ready"
        except (httpx.HTTPError, ValueError):
            return False

    try:
        wait_for(ready, f"tokenward {name}")
    except SystemExit:
        print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
        raise
    return url


def address() -> str:
    return "10." + ".".join(str(secrets.randbelow(254) + 1) for _ in range(3))


async def login(client: httpx.AsyncClient, email: str) -> str:
    r = await client.post(
        "/auth/login", json={"email": email, "password": PASSWORD}, headers=BEARER
    )
    r.raise_for_status()
    return str(r.json()["access_token"])


def me(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def load_loop(
    client: httpx.AsyncClient,
    token: str,
    stop: asyncio.Event,
    counts: dict[str, int],
    latencies: list[float],
) -> None:
    while not stop.is_set():
        try:
            sent = time.perf_counter()
            r = await client.get("/auth/me", headers=me(token))
            latencies.append(time.perf_counter() - sent)
            key = "ok" if r.status_code == 200 else f"status {r.status_code}"
        except httpx.HTTPError as exc:
            key = type(exc).__name__
        counts[key] = counts.get(key, 0) + 1


async def run(a_url: str, b_url: str, trials: int, load: int) -> None:
    limits = httpx.Limits(max_connections=load + 8)
    async with (
        httpx.AsyncClient(base_url=a_url, timeout=10, limits=limits) as a,
        httpx.AsyncClient(base_url=b_url, timeout=10, limits=limits) as b,
    ):
        emails = []
        for i in range(8 + load):
            email = f"bench{i}-{secrets.token_hex(4)}@example.com"
            r = await a.post(
                "/auth/register",
                json={"email": email, "password": PASSWORD},
                headers={"X-Forwarded-For": address()},
            )
            r.raise_for_status()
            emails.append(email)
        trial_users, load_users = emails[:8], emails[8:]
        stop = asyncio.Event()
        counts: dict[str, int] = {}
        latencies: list[float] = []
        load_tokens = [await login(a, e) for e in load_users]
        loops = [
            asyncio.create_task(load_loop(a if i % 2 else b, t, stop, counts, latencies))
            for i, t in enumerate(load_tokens)
        ]
        delays: list[float] = []
        first_refused_sent: list[float] = []
        stale: list[float] = []
        failures = 0
        started = time.perf_counter()

        async def poll_b(token: str, log: list[tuple[float, float, int]]) -> None:
            # One request at a time, back to back, from before the logout until a 401.
            deadline = time.perf_counter() + 5
            while time.perf_counter() < deadline:
                sent = time.perf_counter()
                r = await b.get("/auth/me", headers=me(token))
                log.append((sent, time.perf_counter(), r.status_code))
                if r.status_code == 401:
                    return

        try:
            for n in range(trials):
                token = await login(a, trial_users[n % len(trial_users)])
                for _ in range(2):
                    r = await b.get("/auth/me", headers=me(token))
                    assert r.status_code == 200, r.text
                log: list[tuple[float, float, int]] = []
                poller = asyncio.create_task(poll_b(token, log))
                r = await a.post("/auth/logout", headers=me(token))
                acked = time.perf_counter()
                assert r.status_code == 204, r.text
                await poller
                refused = [got for _, got, status in log if status == 401]
                if not refused:
                    failures += 1
                    continue
                delays.append(refused[0] - acked)
                first_refused_sent.append(
                    min(sent for sent, _, status in log if status == 401) - acked
                )
                accepted = [sent for sent, _, status in log if status == 200]
                if accepted:
                    stale.append(max(accepted) - acked)
                if (n + 1) % 50 == 0:
                    print(f"{n + 1} trials", file=sys.stderr, flush=True)
        finally:
            stop.set()
            await asyncio.gather(*loops, return_exceptions=True)
        elapsed = time.perf_counter() - started
    ms = sorted(d * 1000 for d in delays)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(f"trials: {len(ms)} refused, {failures} not refused within 5 s")
    print(
        f"first 401 from B after A's 204, ms: p50 {statistics.median(ms):.2f}, "
        f"p99 {p99:.2f}, max {ms[-1]:.2f}"
    )
    after = sorted(x * 1000 for x in stale if x > 0)
    print(
        f"requests sent to B after A's 204 and still accepted: in {len(after)} of {len(ms)} "
        f"trials" + (f" (sent at most {after[-1]:.2f} ms after the 204)" if after else "")
    )
    sent_ms = sorted(x * 1000 for x in first_refused_sent)
    sent_p99 = sent_ms[min(len(sent_ms) - 1, int(len(sent_ms) * 0.99))]
    print(
        f"the first refused request was sent, relative to A's 204, ms: p50 "
        f"{statistics.median(sent_ms):+.2f}, p99 {sent_p99:+.2f}, "
        f"max {sent_ms[-1]:+.2f} (negative: sent before the 204 arrived)"
    )
    lat = sorted(x * 1000 for x in latencies)
    if lat:
        print(
            f"load request latency, ms: p50 {statistics.median(lat):.1f}, "
            f"p99 {lat[int(len(lat) * 0.99)]:.1f}"
        )
    total = sum(counts.values())
    print(f"load: {load} clients, {total / elapsed:.0f} req/s over {elapsed:.1f} s; {counts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--trials", type=int, default=250)
    parser.add_argument("--load", type=int, default=32)
    parser.add_argument("--redis", choices=["cluster", "single"], default="cluster")
    args = parser.parse_args()
    procs = Procs()
    with tempfile.TemporaryDirectory(prefix="tw-revocation-") as tmp:
        base = Path(tmp)
        data = base / "data"
        data.mkdir(mode=0o700)
        try:
            redis_url = start_redis(args.redis, base, procs)
            a_url = start_tokenward(redis_url, data, "a", procs)
            b_url = start_tokenward(redis_url, data, "b", procs)
            print(f"redis: {args.redis} ({redis_url}); A {a_url}, B {b_url}")
            asyncio.run(run(a_url, b_url, args.trials, args.load))
        finally:
            procs.stop()


if __name__ == "__main__":
    main()
