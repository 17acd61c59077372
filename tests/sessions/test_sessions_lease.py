"""The revocation lease lapses on time under load: a frozen Redis (SIGSTOP) is not vouched for.

While Redis is frozen nothing can reach it, so any request answered 200 was answered from the
session cache alone (a lookup would wait for Redis and end in 503). A request that starts
after the lease plus a margin must not be one of them, however busy the event loop is.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import time
from pathlib import Path
from typing import Any

from sessions_support import Accounts, MakeTw, auth, client_for

from private_redis import private_redis
from waiting import await_until

#: Concurrent in-process clients: enough to keep every turn of the event loop busy for
#: longer than the feed's watchdog period (the load under which it used to mistake its own
#: late wake-ups for a stalled loop and keep extending the lease).
CLIENTS = 200
#: Sessions the load is spread over (all vouched for by the cache before the freeze).
SESSIONS = 20
#: How long Redis stays frozen under load.
FROZEN = 3.0
#: Slack on top of the lease for the moment the freeze begins.
MARGIN = 0.25


async def test_frozen_redis_is_not_vouched_for_after_the_lease(
    make_tw: MakeTw, tmp_path: Path
) -> None:
    """Redis frozen with SIGSTOP for 3 s under 200 concurrent clients: no request started after
    lease + margin is answered from the cache; all of them wait for Redis and get 503."""
    with private_redis(tmp_path) as server:
        tw = await make_tw(redis_url=server.url, backend_timeout=0.5)
        lease = tw.feed.lease
        assert server.proc is not None
        pid = server.proc.pid
        async with client_for(tw) as client:
            accounts = Accounts(client)
            email = await accounts.register()
            tokens: list[dict[str, Any]] = [
                await accounts.login_bearer(email) for _ in range(SESSIONS)
            ]
            for t in tokens:
                assert (
                    await client.get("/auth/me", headers=auth(t["access_token"]))
                ).status_code == 200
            late: collections.Counter[int] = collections.Counter()
            early: collections.Counter[int] = collections.Counter()
            frozen_at = 0.0
            stop_at = time.monotonic() + 3600
            made: list[int] = []
            all_made, go = asyncio.Event(), asyncio.Event()

            async def load(n: int) -> None:
                headers = auth(tokens[n % SESSIONS]["access_token"])
                async with client_for(tw) as c:
                    # Every client is made before the freeze and starts asking at it: making
                    # 200 clients holds the event loop long enough on a busy machine that,
                    # made after it, none asked anything before the lease ran out.
                    made.append(n)
                    if len(made) == CLIENTS:
                        all_made.set()
                    await go.wait()
                    while time.monotonic() < stop_at:
                        started = time.monotonic()
                        status = (await c.get("/auth/me", headers=headers)).status_code
                        if frozen_at and started > frozen_at + lease + MARGIN:
                            late[status] += 1
                        elif frozen_at:
                            early[status] += 1

            tasks = [asyncio.create_task(load(n)) for n in range(CLIENTS)]
            try:
                await asyncio.wait_for(all_made.wait(), timeout=60)

                # Making them held the loop past the lease (the feed may have started over,
                # emptying the cache): the freeze comes once the cache vouches again for
                # every session.
                async def all_vouched() -> bool:
                    for t in tokens:
                        await client.get("/auth/me", headers=auth(t["access_token"]))
                    now = tw.clock.now()
                    return all(tw.cache.get(t["session"]["id"], now=now) for t in tokens)

                await await_until(all_vouched, within=10, what="the cache vouches for all")
                os.kill(pid, signal.SIGSTOP)
                frozen_at = time.monotonic()
                stop_at = frozen_at + FROZEN
                go.set()
                await asyncio.wait_for(asyncio.gather(*tasks), timeout=FROZEN + 30)
            finally:
                os.kill(pid, signal.SIGCONT)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            print(
                f"lease {lease} s; Redis frozen {FROZEN} s under {CLIENTS} clients: before "
                f"lease + {MARGIN} s {dict(early)}, after {dict(late)}"
            )
            assert late[200] == 0, f"{late[200]} requests vouched for after the lease: {dict(late)}"
            assert late[503] > 0, dict(late)
            assert set(late) <= {503}, dict(late)
            assert early[200] > 0, "the cache vouched before the freeze was noticed"

            # Redis is back: the feed holds its lease again, and the cache vouches again.
            async def vouched() -> bool:
                r = await client.get("/auth/me", headers=auth(tokens[0]["access_token"]))
                return (
                    r.status_code == 200
                    and tw.cache.get(tokens[0]["session"]["id"], now=tw.clock.now()) is not None
                )

            await await_until(vouched, within=10, what="the cache vouches again")
