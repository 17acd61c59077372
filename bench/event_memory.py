"""Redis memory of the security-event history: bytes per user, and the operators' log.

Run by hand (never in CI)::

    .venv/bin/python bench/event_memory.py [--users 10000] [--json out.json]

It starts a private ``redis-server`` (127.0.0.1, no persistence) in a temporary directory,
then writes through :class:`~tokenward.stores.redis_events.RedisEventLog` (the store the
service uses, with its default caps) the history of ``--users`` users at its *usual size*:

* registered; signed in from a laptop (a new device) and from a phone (a new device);
* 5 more ordinary logins and 3 logouts (``sessions.ended``, reason ``logout``);

that is 11 events and 2 devices (and, reported apart, a *new* user: registered and signed in
once, 3 events and 1 device), with real browser user agents and addresses. It also writes
one user at the per-user cap (``TOKENWARD_EVENTS_PER_USER`` routine and as many critical
events).

Reported: ``MEMORY USAGE`` (``SAMPLES 0``) of every key of one usual user and of the capped
user, and the ``used_memory`` delta over all users divided by their number (that includes
the operators' log, which is capped in total and not per user: it is reported apart).
The server is stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from benchkit import private_redis

from tokenward.events import EventKind, SecurityEvent, device_digest
from tokenward.stores.redis_events import RedisEventLog

LAPTOP = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
PHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1"
)
NOW = int(time.time())  # the server's time, as in service (a skewed clock costs bytes)
DAY = 86_400


def usual_history(uid: str, n: int) -> list[tuple[SecurityEvent, str | None]]:
    """The 11 events (and the device each login checks) of a user at its usual size."""
    ip_a, ip_b = f"203.0.{n % 250}.{n % 200 + 1}", f"198.51.{n % 250}.{n % 100 + 7}"
    # Events are written as they happen: their time is the server's (the id's) time.
    at = int(time.time())
    out: list[tuple[SecurityEvent, str | None]] = []

    def ev(kind: EventKind, ua: str, ip: str, sid: str = "", **detail: str | int) -> None:
        out.append((SecurityEvent(kind, at, uid, sid or None, ip, ua, detail), None))

    ev(EventKind.REGISTERED, LAPTOP, ip_a)
    for i, (ua, ip) in enumerate([(LAPTOP, ip_a), (PHONE, ip_b)] + [(LAPTOP, ip_a)] * 5):
        sid = f"s{i:02d}{n:08d}abcdefghijkl"
        if i < 2:
            ev(EventKind.NEW_DEVICE, ua, ip, sid)
            out[-1] = (out[-1][0], device_digest(ua, ip))
        else:
            ev(EventKind.LOGIN_SUCCEEDED, ua, ip, sid)
        if i in (2, 3, 4):
            ev(EventKind.SESSIONS_ENDED, ua, ip, sid, reason="logout", count=1)
    return out


def new_user(uid: str, n: int) -> list[tuple[SecurityEvent, str | None]]:
    """A user who registered and signed in once: 3 events, 1 device."""
    return usual_history(uid, n)[:3]


async def write_user(log: RedisEventLog, uid: str, n: int, history: Any = usual_history) -> None:
    for event, device in history(uid, n):
        if device is not None:
            await log.seen(uid, device, now=event.at, memory=90 * DAY)
        await log.append(event)


def uid_of(n: int) -> str:
    """A user id as the service makes them (``uuid4().hex``: 32 characters), since key
    names count in ``MEMORY USAGE``."""
    return uuid.UUID(int=n).hex


async def keys_of(r: aioredis.Redis, uid: str) -> dict[str, int]:
    out: dict[str, int] = {}
    async for key in r.scan_iter(match=f"*{uid}*", count=1000):
        out[key] = int(await r.memory_usage(key, samples=0) or 0)
    return out


async def run(users: int, url: str) -> dict[str, Any]:
    r = aioredis.Redis.from_url(url, decode_responses=True)
    log = RedisEventLog(r)  # the service's default caps
    usual, fresh_uid, capped_uid = (uid_of(n) for n in (1, 2, 3))
    await write_user(log, usual, 0)
    one = await keys_of(r, usual)
    await write_user(log, fresh_uid, 0, new_user)
    fresh = await keys_of(r, fresh_uid)
    for i in range(log.per_user):
        kind = EventKind.LOGIN_SUCCEEDED
        await log.append(
            SecurityEvent(kind, NOW - DAY + i, capped_uid, f"s{i:021d}", "203.0.113.9", LAPTOP)
        )
        kind = EventKind.NEW_DEVICE
        await log.append(
            SecurityEvent(kind, NOW - DAY + i, capped_uid, f"s{i:021d}", "203.0.113.9", LAPTOP)
        )
    capped = await keys_of(r, capped_uid)
    await r.flushall()
    before = int((await r.info("memory"))["used_memory"])
    started = time.perf_counter()
    sem = asyncio.Semaphore(32)

    async def one_user(n: int) -> None:
        async with sem:
            await write_user(log, uid_of(1000 + n), n)

    await asyncio.gather(*(one_user(n) for n in range(users)))
    elapsed = time.perf_counter() - started
    after = int((await r.info("memory"))["used_memory"])
    shared = {
        k: int(await r.memory_usage(k, samples=0) or 0) async for k in r.scan_iter("*events*")
    }
    await r.aclose()
    return {
        "users": users,
        "events_per_user": len(usual_history("x", 0)),
        "new_user_keys (3 events, 1 device)": fresh,
        "new_user_bytes": sum(fresh.values()),
        "usual_user_keys": one,
        "usual_user_bytes": sum(one.values()),
        "usual_user_history_bytes": sum(v for k, v in one.items() if not k.endswith(":d")),
        "usual_user_devices_bytes": sum(v for k, v in one.items() if k.endswith(":d")),
        "capped_user_keys": capped,
        "capped_user_bytes": sum(capped.values()),
        "used_memory_delta_per_user": round((after - before) / users, 1),
        "operators_log_keys": len(shared),
        "operators_log_bytes": sum(shared.values()),
        "shared_agent_keys": len([k for k in shared if ":ua:" in k]),
        "shared_agent_bytes": sum(v for k, v in shared.items() if ":ua:" in k),
        "used_memory_delta_per_user_without_operators_log": round(
            (after - before - sum(shared.values())) / users, 1
        ),
        "write_seconds": round(elapsed, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    with private_redis() as url:
        result = asyncio.run(run(args.users, url))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
