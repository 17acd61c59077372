"""Where a request's CPU goes, in one process, without HTTP or a load generator.

Run by hand (never in CI), from the repository root::

    PYTHONPATH=$PWD/src .venv/bin/python bench/inprocess.py               # refresh, sqlite
    PYTHONPATH=$PWD/src .venv/bin/python bench/inprocess.py --route login --argon2
    PYTHONPATH=$PWD/src .venv/bin/python bench/inprocess.py --database-reads

Routes: a private ``redis-server`` (127.0.0.1, no persistence, stopped by pid) and a
started :class:`~tokenward.runtime.Tokenward` on it (SQLite users, or ``--postgres``: a
private PostgreSQL as in ``bench/perf.py``). ``--users`` users register and log in (bearer),
then ``--rounds`` rounds of the route for each user run one after another, each call made
straight into the ASGI app (uvloop, as ``tokenward serve`` runs). Printed: CPU per call
(``time.process_time``, which counts this process's threads too: argon2, aiosqlite) and,
per layer, the CPU spent inside it per call (inclusive; a layer's awaits let the
previous requests' background work run, so read them as upper bounds).

``--database-reads``: CPU per ``SELECT`` of one user by id, through the store and through
bare connections with and without the pre-use ping and a transaction, on SQLite and on
PostgreSQL.

Timings on a shared machine are noisy: compare figures of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop
from benchkit import private_redis

PASSWORD = "violet tractor 42 umbrella"
UA = b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120"
spent: dict[str, float] = defaultdict(float)
calls: dict[str, int] = defaultdict(int)


def measure(owner: Any, name: str) -> None:
    """Wrap ``owner.name`` (async) to add its inclusive CPU to :data:`spent`."""
    original = getattr(owner, name)
    label = f"{owner.__name__}.{name}"

    @functools.wraps(original)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.process_time()
        try:
            return await original(*args, **kwargs)
        finally:
            spent[label] += time.process_time() - start
            calls[label] += 1

    setattr(owner, name, wrapper)


def layers(route: str) -> None:
    from tokenward.http.routes import AuthRoutes
    from tokenward.passwords import PasswordHasher
    from tokenward.sessions import Sessions
    from tokenward.stores.redis_client import Durability
    from tokenward.stores.redis_sessions import RedisSessionStore
    from tokenward.stores.sql_users import SqlUserStore
    from tokenward.throttle import Throttle

    if route == "refresh":
        for owner, name in ((AuthRoutes, "refresh"), (Sessions, "refresh"),
                            (RedisSessionStore, "rotate"), (Durability, "run")):  # fmt: skip
            measure(owner, name)
    elif route == "login":
        for owner, name in ((AuthRoutes, "login"), (PasswordHasher, "verify"),
                            (SqlUserStore, "by_email"), (SqlUserStore, "by_id"),
                            (Throttle, "_reserve_login"), (Sessions, "open")):  # fmt: skip
            measure(owner, name)


class App:
    """Calls into an ASGI app the way a server would, one request at a time."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> tuple[int, Any]:
        raw = b"" if body is None else json.dumps(body).encode()
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "client": ("127.0.0.1", 5555), "server": ("127.0.0.1", 8000),
            "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                        (b"x-auth-transport", b"bearer"), (b"user-agent", UA), *headers],
        }  # fmt: skip
        sent = False
        status = 0
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.Event().wait()  # the client stays connected
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        data = b"".join(chunks)
        return status, json.loads(data) if data else None


async def routes(args: argparse.Namespace) -> None:
    from tokenward.http.app import create_app
    from tokenward.passwords import CHEAP_FOR_TESTS
    from tokenward.runtime import Tokenward
    from tokenward.settings import load_settings

    layers(args.route)
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(private_redis())
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        env = {
            "TOKENWARD_REDIS_URL": redis_url, "TOKENWARD_DATA_DIR": str(tmp),
            "TOKENWARD_ISSUER": "https://bench.tokenward.test", "TOKENWARD_LOG_LEVEL": "warning",
            "TOKENWARD_REFRESH_RATE_LIMIT": "100000", "TOKENWARD_REGISTER_IP_LIMIT": "1000000",
            "TOKENWARD_LOGIN_IP_LIMIT": "1000000", "TOKENWARD_REFRESH_IP_LIMIT": "1000000",
        }  # fmt: skip
        if args.postgres:
            from perf import postgres

            env["TOKENWARD_DATABASE_URL"] = stack.enter_context(postgres())
        settings = load_settings(env, env_file=tmp / "no.env")
        tw = Tokenward(settings, argon2=None if args.argon2 else CHEAP_FOR_TESTS)
        await tw.start()
        try:
            call = App(create_app(tw, manage_lifespan=False))
            tokens: list[tuple[str, str]] = []
            for i in range(args.users):
                credentials = {"email": f"u{i}@bench.test", "password": PASSWORD}
                await call("POST", "/auth/register", credentials)
                status, body = await call("POST", "/auth/login", credentials)
                assert status == 200, body
                tokens.append((body["refresh_token"], body["access_token"]))

            async def one(i: int) -> None:
                if args.route == "refresh":
                    status, body = await call(
                        "POST", "/auth/refresh", {"refresh_token": tokens[i][0]}
                    )
                    tokens[i] = (body["refresh_token"], body["access_token"])
                elif args.route == "me":
                    auth = (b"authorization", f"Bearer {tokens[i][1]}".encode())
                    status, body = await call("GET", "/auth/me", headers=(auth,))
                elif args.route == "login":
                    credentials = {"email": f"u{i}@bench.test", "password": PASSWORD}
                    status, body = await call("POST", "/auth/login", credentials)
                else:
                    status, body = await call("GET", "/healthz")
                assert status == 200, body

            await rounds(one, args.users, 1)  # warm: scripts loaded, caches filled
            spent.clear()
            calls.clear()
            start = time.process_time()
            await rounds(one, args.users, args.rounds)
            n = args.users * args.rounds
            print(f"{args.route}: {(time.process_time() - start) / n * 1e6:.0f} µs CPU a call "
                  f"({n} calls, {'PostgreSQL' if args.postgres else 'SQLite'})")  # fmt: skip
            for label in sorted(spent, key=lambda k: -spent[k]):
                print(f"  {label:32s} {spent[label] / calls[label] * 1e6:8.0f} µs "
                      f"({calls[label]} calls)")  # fmt: skip
        finally:
            await tw.stop()


async def rounds(one: Callable[[int], Awaitable[None]], users: int, count: int) -> None:
    for _ in range(count):
        for i in range(users):
            await one(i)


async def database_reads(args: argparse.Namespace) -> None:
    from perf import postgres
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

    from tokenward.stores.sql_users import (
        SqlUserStore,
        create_engine,
        read,
        reader,
        upgrade,
        users_table,
    )
    from tokenward.users import User

    async def per_call(work: Callable[[], Awaitable[object]]) -> float:
        for _ in range(50):
            await work()
        start = time.process_time()
        for _ in range(args.reads):
            await work()
        return (time.process_time() - start) / args.reads * 1e6

    async def one(url: str, name: str) -> None:
        engine = create_engine(url)
        await upgrade(engine)
        store = SqlUserStore(engine)
        user = User(id="b" * 32, email="read@bench.test", password_hash="x", created_at=1)
        await store.add(user)
        query = select(users_table).where(users_table.c.id == user.id)
        print(f"{name}: SqlUserStore.by_id {await per_call(lambda: store.by_id(user.id)):.0f} µs")

        async def built_per_call() -> object:
            # what by_id did before its statement was built once, with a bound parameter
            fresh = select(users_table).where(users_table.c.id == user.id)
            return (await read(reader(engine), fresh)).first()

        print(f"  the same, statement built per call {await per_call(built_per_call):6.0f} µs")
        pinged = create_async_engine(url, pool_pre_ping=True)
        bare = create_async_engine(url)
        variants: dict[str, AsyncEngine] = {
            "ping + transaction": pinged,
            "ping, no transaction": pinged.execution_options(isolation_level="AUTOCOMMIT"),
            "no ping, transaction": bare,
            "neither": bare.execution_options(isolation_level="AUTOCOMMIT"),
        }
        for label, eng in variants.items():

            async def select_one(eng: AsyncEngine = eng) -> object:
                async with eng.connect() as conn:
                    return (await conn.execute(query)).first()

            print(f"  {label:22s} {await per_call(select_one):6.0f} µs")
        for eng in (engine, pinged, bare):
            await eng.dispose()

    with tempfile.TemporaryDirectory() as tmp:
        await one(f"sqlite+aiosqlite:///{tmp}/users.db", "SQLite")
    with postgres() as url:
        await one(url, "PostgreSQL")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--route", choices=("refresh", "me", "login", "healthz"), default="refresh")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--argon2", action="store_true", help="the production argon2id cost")
    parser.add_argument("--postgres", action="store_true", help="users in PostgreSQL")
    parser.add_argument("--database-reads", action="store_true")
    parser.add_argument("--reads", type=int, default=500)
    args = parser.parse_args()
    uvloop.run(database_reads(args) if args.database_reads else routes(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
