"""What each operation costs Redis, and what a user and a session occupy (capacity figures).

Run by hand (never in CI)::

    .venv/bin/python bench/capacity.py [--users 2000] [--refreshes 5] [--json out.json]

It starts a private ``redis-server`` (127.0.0.1, no persistence) and runs the real HTTP
application in process (httpx's ASGI transport; SQLite in a temporary directory; cheap
password hashing, since hashing costs the *server*, not Redis). Every user has their own
client address (so no address limit interferes) and a desktop browser's user agent.

Phases, each followed by waiting for the background event writes, with Redis's
``INFO commandstats`` and ``INFO cpu`` read before and after:

* register ``--users`` users; log each in once (bearer transport);
* refresh every session ``--refreshes`` times (rotation), an access-token lifetime apart
  (the service's clock is a ``FrozenClock`` moved forward: no waiting);
* ``GET /auth/me`` 5 times per session, with the default session cache (a cache hit costs
  Redis nothing) and then with a service whose cache keeps nothing (``lookup``: one session
  read per request, what a non-sticky deployment with a cold cache pays);
* log every session out.

Reported per operation: Redis commands (calls, scripts counted once, the commands they run
inside as well), Redis CPU microseconds (``used_cpu_user + used_cpu_sys``), and the
``used_memory`` delta per user and per session after the logins and after the refreshes,
with ``MEMORY USAGE`` of one user's keys by kind. Server CPU per request is measured by the
load benchmarks (``bench/perf.py``), not here.

``--project`` turns a result file and the server's CPU per request into the capacity guide's
table (docs/capacity.md) for 1 M, 10 M and 100 M active sessions, under the workload
assumptions of :data:`WORKLOAD`::

    .venv/bin/python bench/capacity.py --project out.json \\
        --server-cpu refresh=913,me=601,login=44143,verify=80
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from benchkit import private_redis

from tokenward.clock import FrozenClock
from tokenward.http.app import create_app
from tokenward.passwords import CHEAP_FOR_TESTS
from tokenward.revocation import SessionCache
from tokenward.runtime import Tokenward
from tokenward.settings import load_settings

BROWSER = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
PASSWORD = "violet tractor 42 umbrella"
BEARER = {"X-Auth-Transport": "bearer", "User-Agent": BROWSER}
CONCURRENCY = 4

#: The workload the projection assumes, per active session (see docs/capacity.md).
WORKLOAD = {
    "sessions_per_user": 2.0,
    "refresh_every_s": 600.0,  # TOKENWARD_ACCESS_TTL's default: every session refreshes
    "requests_per_s": 0.1,  # an authenticated request every 10 s
    "cache_miss": 1 / 6,  # a 60 s cache entry serves 6 requests, the first one reads Redis
    "logins_per_hour": 0.01,  # 1 % of the active sessions sign in during the peak hour
}
#: What one shard and one instance may carry: headroom for forks, replication, peaks.
SHARD_MEMORY = 16e9
SHARD_CPU = 0.5
INSTANCE_CORES = 2 * 0.7


class Snapshot:
    """Redis's command counters and CPU at one moment."""

    def __init__(self, stats: dict[str, Any], cpu: dict[str, Any]) -> None:
        self.calls = {k: int(v["calls"]) for k, v in stats.items()}
        self.usec = {k: int(v["usec"]) for k, v in stats.items()}
        self.cpu = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    @classmethod
    async def take(cls, r: aioredis.Redis) -> Snapshot:
        return cls(await r.info("commandstats"), await r.info("cpu"))


def delta(before: Snapshot, after: Snapshot, n: int) -> dict[str, Any]:
    calls = {
        k.removeprefix("cmdstat_"): after.calls[k] - before.calls.get(k, 0) for k in after.calls
    }
    calls = {k: v for k, v in calls.items() if v > 0 and k not in ("info",)}
    return {
        "ops": n,
        "redis_commands_per_op": round(sum(calls.values()) / n, 2),
        "scripts_per_op": round((calls.get("evalsha", 0) + calls.get("eval", 0)) / n, 2),
        "redis_cpu_us_per_op": round((after.cpu - before.cpu) / n * 1e6, 1),
        # What Redis itself timed running the scripts (their commands included), without
        # the network and event-loop work the process CPU above also holds.
        "script_us_per_op": round(
            (after.usec.get("cmdstat_evalsha", 0) - before.usec.get("cmdstat_evalsha", 0)) / n, 1
        ),
        "commands": {k: round(v / n, 2) for k, v in sorted(calls.items())},
    }


def client_for(app: Any, n: int) -> httpx.AsyncClient:
    ip = f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"
    transport = httpx.ASGITransport(app=app, client=(ip, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://tokenward.bench")


async def each(n: int, work: Callable[[int], Awaitable[None]]) -> None:
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        async with sem:
            await work(i)

    await asyncio.gather(*(one(i) for i in range(n)))


def kind_of(key: str) -> str:
    """``session`` (one per session), ``user`` (one set per user: the session index, user
    agents, ended sessions, events, markers, known addresses), ``shared`` (the operators'
    log) or ``transient`` (rate-limit windows, e-mailed links and other short-lived keys)."""
    if ":s:" in key and key.startswith("tw:{u:"):
        return "session"
    if key.startswith(("tw:{u:", "tw:{ev:")) or key.endswith("}:known"):
        return "user"  # (the addresses an account signed in from: 30 days, per account)
    if key.startswith("tw:{events:"):
        return "shared"
    return "transient"


async def memory_by_kind(r: aioredis.Redis) -> dict[str, dict[str, int]]:
    """``MEMORY USAGE`` of every key, added up by :func:`kind_of` (and by key suffix)."""
    out: dict[str, dict[str, int]] = {}
    keys = [key async for key in r.scan_iter(count=1000)]
    for start in range(0, len(keys), 500):
        batch = keys[start : start + 500]
        async with r.pipeline(transaction=False) as pipe:
            for key in batch:
                pipe.memory_usage(key, samples=0)
            sizes = await pipe.execute()
        for key, size in zip(batch, sizes, strict=True):
            kind = kind_of(key)
            entry = out.setdefault(kind, {"keys": 0, "bytes": 0})
            entry["keys"] += 1
            entry["bytes"] += int(size or 0)
            tail = key.rsplit("}", 1)[-1] if "}" in key else key.removeprefix("tw:")
            suffix = tail.strip(":").split(":")[0] or key.split("{", 1)[-1].split(":")[0]
            detail = out.setdefault(f"{kind} {suffix}", {"keys": 0, "bytes": 0})
            detail["keys"] += 1
            detail["bytes"] += int(size or 0)
    return out


class Lookup(Tokenward):
    """The service with a session cache that keeps nothing: every request reads Redis."""

    async def start(self) -> None:
        await super().start()
        self.cache = SessionCache(max_entries=0)
        self.sessions.cache = self.cache


async def run(users: int, refreshes: int, redis_url: str, data: Path) -> dict[str, Any]:
    env = {
        "TOKENWARD_REDIS_URL": redis_url,
        "TOKENWARD_DATA_DIR": str(data),
        "TOKENWARD_ISSUER": "http://tokenward.bench",
        "TOKENWARD_LOG_LEVEL": "warning",
    }
    settings = load_settings(env, env_file=Path("/nonexistent/.env"))
    clock = FrozenClock(int(time.time()))
    tw = Tokenward(settings, clock=clock, argon2=CHEAP_FOR_TESTS)
    await tw.start()
    app = create_app(tw, manage_lifespan=False)
    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    out: dict[str, Any] = {"users": users, "refreshes_per_session": refreshes}
    tokens: dict[int, dict[str, str]] = {}
    try:
        emails = [f"cap{n}@example.com" for n in range(users)]

        async def register(i: int) -> None:
            async with client_for(app, i) as c:
                body = {"email": emails[i], "password": PASSWORD}
                res = await c.post("/auth/register", json=body, headers=BEARER)
                assert res.status_code == 201, res.text

        async def login(i: int) -> None:
            async with client_for(app, i) as c:
                body = {"email": emails[i], "password": PASSWORD}
                res = await c.post("/auth/login", json=body, headers=BEARER)
                assert res.status_code == 200, res.text
                tokens[i] = res.json()

        async def refresh(i: int) -> None:
            async with client_for(app, i) as c:
                body = {"refresh_token": tokens[i]["refresh_token"]}
                res = await c.post("/auth/refresh", json=body, headers=BEARER)
                assert res.status_code == 200, res.text
                tokens[i] = {**tokens[i], **res.json()}

        async def refreshes_apart(i: int) -> None:
            """One refresh of every session per access-token lifetime, as in service (back
            to back they would all sit inside the grace window, which keeps extra state)."""
            for _ in range(refreshes):
                clock.advance(settings.access_ttl + 1)
                await each(users, refresh)

        def me(target: Any) -> Callable[[int], Awaitable[None]]:
            async def work(i: int) -> None:
                async with client_for(target, i) as c:
                    auth = {"Authorization": f"Bearer {tokens[i]['access_token']}", **BEARER}
                    for _ in range(5):
                        res = await c.get("/auth/me", headers=auth)
                        assert res.status_code == 200, res.text

            return work

        async def logout(i: int) -> None:
            async with client_for(app, i) as c:
                auth = {"Authorization": f"Bearer {tokens[i]['access_token']}", **BEARER}
                res = await c.post("/auth/logout", headers=auth)
                assert res.status_code == 204, res.text

        async def phase(
            name: str, n: int, work: Callable[[int], Awaitable[None]], times: int | None = None
        ) -> None:
            await tw.events.drain()
            before = await Snapshot.take(r)
            started = time.perf_counter()
            await each(users if times is None else times, work)
            await tw.events.drain()
            out[name] = delta(before, await Snapshot.take(r), n)
            out[name]["seconds"] = round(time.perf_counter() - started, 1)
            print(f"{name}: {out[name]['redis_commands_per_op']} commands/op", file=sys.stderr)

        mem0 = int((await r.info("memory"))["used_memory"])
        await phase("register", users, register)
        mem1 = int((await r.info("memory"))["used_memory"])
        await phase("login", users, login)
        mem2 = int((await r.info("memory"))["used_memory"])
        await phase("refresh", users * refreshes, refreshes_apart, times=1)
        mem3 = int((await r.info("memory"))["used_memory"])
        await phase("me_cached", users * 5, me(app))
        lookup = Lookup(settings, clock=clock, argon2=CHEAP_FOR_TESTS)
        await lookup.start()
        try:
            await phase("me_lookup", users * 5, me(create_app(lookup, manage_lifespan=False)))
        finally:
            await lookup.stop()

        by_kind = await memory_by_kind(r)
        await phase("logout", users, logout)
        out["memory"] = {
            "register_bytes_per_user": round((mem1 - mem0) / users, 1),
            "login_bytes_per_session": round((mem2 - mem1) / users, 1),
            "after_refreshes_bytes_per_session": round((mem3 - mem1) / users, 1),
            "by_kind_after_refreshes": by_kind,
            "session_bytes": round(by_kind["session"]["bytes"] / users, 1),
            "user_bytes": round(by_kind["user"]["bytes"] / users, 1),
        }
    finally:
        await r.aclose()
        await tw.stop()
    return out


def project(measured: dict[str, Any], cpu_us: dict[str, float]) -> str:
    """The capacity table (Markdown) for 1 M, 10 M and 100 M active sessions.

    ``cpu_us``: server CPU per ``refresh``, ``me`` (``GET /auth/me``, assumed once per
    refresh: a page load), ``login`` (mostly argon2id), all on Tokenward's instances; and
    ``verify``, what the middleware adds to an application's own authenticated request (in
    the application's processes, not Tokenward's).
    """
    w = WORKLOAD
    mem = measured["memory"]
    redis_us = {
        k: measured[k]["redis_cpu_us_per_op"] for k in ("refresh", "me_lookup", "login", "logout")
    }
    rows = [
        "| active sessions | Redis memory | refreshes/s | app requests/s | logins/s "
        "| Redis CPU (cores) | shards | Tokenward CPU (cores) | instances (2 cores) "
        "| app CPU added (cores) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for sessions in (1e6, 1e7, 1e8):
        refresh = sessions / w["refresh_every_s"]
        requests = sessions * w["requests_per_s"]
        logins = sessions * w["logins_per_hour"] / 3600
        memory = (
            sessions * mem["session_bytes"] + sessions / w["sessions_per_user"] * mem["user_bytes"]
        )
        redis_cpu = (
            refresh * redis_us["refresh"]
            + requests * w["cache_miss"] * redis_us["me_lookup"]
            + logins * (redis_us["login"] + redis_us["logout"])
        ) / 1e6
        shards = max(1, -(-memory // SHARD_MEMORY), -(-redis_cpu // SHARD_CPU))
        server = (refresh * (cpu_us["refresh"] + cpu_us["me"]) + logins * cpu_us["login"]) / 1e6
        instances = max(1, -(-server // INSTANCE_CORES))
        app = requests * cpu_us["verify"] / 1e6
        rows.append(
            f"| {sessions / 1e6:,.0f} M | {memory / 1e9:,.1f} GB | {refresh:,.0f} "
            f"| {requests:,.0f} | {logins:,.1f} | {redis_cpu:,.1f} | {shards:,.0f} "
            f"| {server:,.1f} | {instances:,.0f} | {app:,.0f} |"
        )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--project", type=Path, help="print the capacity table of this result")
    parser.add_argument(
        "--server-cpu",
        default="",
        help="with --project: server CPU µs per refresh, GET /auth/me and login "
        "(bench/perf.py) and what the middleware adds to an application's request "
        "(bench/request_path.py): refresh=N,me=N,login=N,verify=N",
    )
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--refreshes", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.project:
        cpu = {k: float(v) for k, v in (part.split("=") for part in args.server_cpu.split(","))}
        print(project(json.loads(args.project.read_text()), cpu))
        return 0
    with private_redis() as url, tempfile.TemporaryDirectory() as data:
        result = asyncio.run(run(args.users, args.refreshes, url, Path(data)))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
