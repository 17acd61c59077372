"""Does ``POST /auth/password/forgot`` take as long for an address without an account as for
one with? The enumeration-safety of its timing, measured (the tests check the answers).

The app runs in this process (``httpx.ASGITransport``: no network jitter to hide a
difference behind) on a private ``redis-server`` and an SQLite file, mail to the outbox in a
temporary data directory. Requests for an existing account and for fresh unknown addresses
are interleaved in a random order (so warm-up, garbage collection and the background mail
jobs of earlier requests fall on both alike), and the script reports per kind the median,
the 10th/90th percentiles and the mean of the middle 80 %, and the ratio of the medians
(existing / unknown; 1.00 is ideal).

Usage::

    .venv/bin/python bench/forgot_timing.py                  # 2,000 requests of each kind
    .venv/bin/python bench/forgot_timing.py --requests 5000 --redis-url redis://127.0.0.1:6379/9
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

from tokenward.http.app import create_app
from tokenward.passwords import CHEAP_FOR_TESTS
from tokenward.runtime import Tokenward
from tokenward.settings import load_settings

PASSWORD = "violet tractor 42 umbrella"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextlib.contextmanager
def _private_redis() -> Iterator[str]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    n = len(ordered)
    middle = ordered[n // 10 : n - n // 10]
    return {
        "median": statistics.median(ordered) * 1e6,
        "p10": ordered[n // 10] * 1e6,
        "p90": ordered[(9 * n) // 10] * 1e6,
        "trimmed_mean": statistics.fmean(middle) * 1e6,
    }


async def _run(redis_url: str, requests: int, seed: int) -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        env = {
            "TOKENWARD_REDIS_URL": redis_url,
            "TOKENWARD_DATA_DIR": data_dir,
            "TOKENWARD_ISSUER": "https://bench.test",
            "TOKENWARD_MAIL_ADDRESS_LIMIT": "1000000000",
            "TOKENWARD_MAIL_IP_LIMIT": "1000000000",
            "TOKENWARD_REGISTER_IP_LIMIT": "1000000000",
        }
        settings = load_settings(env, env_file=Path(data_dir) / "none.env")
        tw = Tokenward(settings, argon2=CHEAP_FOR_TESTS)
        await tw.start()
        try:
            transport = httpx.ASGITransport(app=create_app(tw, manage_lifespan=False))
            async with httpx.AsyncClient(transport=transport, base_url="https://bench.test") as c:
                known = f"bench-{uuid.uuid4().hex[:8]}@example.com"
                r = await c.post("/auth/register", json={"email": known, "password": PASSWORD})
                assert r.status_code == 201, r.text
                order = ["known"] * requests + ["unknown"] * requests
                random.Random(seed).shuffle(order)  # noqa: S311 - an order, not a secret
                for _ in range(200):  # warm-up, not measured
                    await c.post("/auth/password/forgot", json={"email": known})
                times: dict[str, list[float]] = {"known": [], "unknown": []}
                bodies: dict[str, set[bytes]] = {"known": set(), "unknown": set()}
                for kind in order:
                    email = known if kind == "known" else f"{uuid.uuid4().hex[:12]}@example.com"
                    start = time.perf_counter()
                    r = await c.post("/auth/password/forgot", json={"email": email})
                    times[kind].append(time.perf_counter() - start)
                    assert r.status_code == 202, r.text
                    bodies[kind].add(r.content)
                await tw.email_flows.drain()
        finally:
            await tw.stop()
    assert bodies["known"] == bodies["unknown"], bodies
    k, u = _summary(times["known"]), _summary(times["unknown"])
    print(
        f"POST /auth/password/forgot, {requests} requests of each kind, interleaved (seed {seed})"
    )
    print(f"{'':10}{'median':>10}{'p10':>10}{'p90':>10}{'mean80':>10}   (microseconds)")
    for name, s in (("existing", k), ("unknown", u)):
        print(
            f"{name:10}{s['median']:10.0f}{s['p10']:10.0f}{s['p90']:10.0f}{s['trimmed_mean']:10.0f}"
        )
    print(f"ratio of medians (existing / unknown): {k['median'] / u['median']:.3f}")
    print(f"ratio of 80 % means (existing / unknown): {k['trimmed_mean'] / u['trimmed_mean']:.3f}")
    print("bodies identical:", bodies["known"] == bodies["unknown"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="per kind (default 2000)")
    parser.add_argument("--redis-url", help="a Redis to use (default: a private redis-server)")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    if args.redis_url:
        asyncio.run(_run(args.redis_url, args.requests, args.seed))
    else:
        with _private_redis() as url:
            asyncio.run(_run(url, args.requests, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
