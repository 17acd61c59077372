"""What immediate revocation costs: an authenticated GET under load, three ways, in one run.

The route is ``GET /whoami`` of a host app behind :class:`TokenwardMiddleware`: the session
check of ``GET /auth/me`` (token, then session) without its read of the user store, which
``/auth/me`` makes for the e-mail address (sessions do not hold it) and which is the same
in every mode.

Modes (same app, same route, same token; only the session check differs):

* ``stateless`` -- verify the access token and nothing else (what a pure-JWT service does:
  a logged-out token keeps working until it expires). The baseline.
* ``lookup``    -- verify, then look the session up in Redis on every request
  (``SessionCache(max_entries=0)``: the cache stores nothing).
* ``cached``    -- the default: verify, then trust the per-process session cache kept
  coherent by the pub/sub invalidation feed.

For each mode the script starts ``uvicorn`` (1 worker unless ``--workers``) on 127.0.0.1,
warms it up and drives it with ``wrk`` (64 connections, fixed duration) or, without wrk, an
asyncio httpx load generator in a separate process (64 connections, fixed request count).
It then measures in-process CPU per ``Sessions.authenticate()`` call for the three modes
(plus a token verification without the verified-token cache, for reference) and the Redis
memory of a session (``MEMORY USAGE`` of the session hash and the user's index).

Usage::

    .venv/bin/python bench/auth_bench.py                 # private redis-server, wrk if found
    .venv/bin/python bench/auth_bench.py --duration 15 --workers 2
    .venv/bin/python bench/auth_bench.py --tool httpx --requests 20000

The switches live here, not in the app: a ``Tokenward`` subclass swaps in
``SessionCache(max_entries=0)`` (a documented constructor argument of the cache) or a
stateless ``Sessions``; no environment variable or setting was added for benchmarking.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from tokenward.passwords import CHEAP_FOR_TESTS
from tokenward.revocation import SessionCache
from tokenward.runtime import Tokenward
from tokenward.sessions import EndReason, Principal, Sessions, SessionState, UserRef
from tokenward.settings import load_settings
from tokenward.tokens import AccessTokens

MODES = ("stateless", "lookup", "cached")
#: The measured route: the session check alone (see the module docstring).
WHOAMI = "/whoami"
ISSUER = "https://bench.tokenward.test"
BENCH_DIR = Path(__file__).resolve().parent


# ------------------------------------------------------------------------- the app, 3 ways


class StatelessSessions(Sessions):
    """Token verification only: the session is never consulted (the baseline)."""

    async def authenticate(self, access_token: str, *, now: int) -> Principal:
        claims = self.tokens.verify(access_token, now=now)
        state = SessionState(claims.sub, 0, "", claims.iat, claims.exp)
        return Principal(claims, state)


class BenchTokenward(Tokenward):
    """A Tokenward whose session check is chosen by ``bench_mode``."""

    bench_mode = "cached"

    async def start(self) -> None:
        if self.bench_mode == "lookup":
            self.cache = SessionCache(max_entries=0)
        await super().start()
        if self.bench_mode == "stateless":
            self.sessions = StatelessSessions(
                self.session_store, self.tokens, self.cache, self.policy
            )


def bench_app() -> object:
    """``uvicorn --factory`` entry point of a server process (mode from ``BENCH_MODE``)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from tokenward.integrations.asgi import TokenwardMiddleware

    tw = BenchTokenward(load_settings(), migrate=False)
    tw.bench_mode = os.environ["BENCH_MODE"]

    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse({"id": request.state.tokenward.uid})

    @contextlib.asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[None]:
        await tw.start()
        try:
            yield
        finally:
            await tw.stop()

    host = Starlette(routes=[Route(WHOAMI, whoami)], lifespan=lifespan)
    return TokenwardMiddleware(host, tw=tw, protect=[WHOAMI])


# ------------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process group this script started."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def redis_server(url: str | None, workdir: Path) -> Iterator[str]:
    if url:
        yield url
        return
    port = free_port()
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    argv = [binary, "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"]
    argv += ["--port", str(port), "--dir", str(workdir)]
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_port(port, proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(proc)


def env_for(redis_url: str, data_dir: Path) -> dict[str, str]:
    return {
        "TOKENWARD_REDIS_URL": redis_url,
        "TOKENWARD_DATA_DIR": str(data_dir),
        "TOKENWARD_ISSUER": ISSUER,
        "TOKENWARD_ACCESS_TTL": "3600",
        "TOKENWARD_LOG_LEVEL": "warning",
    }


async def new_instance(env: dict[str, str], mode: str) -> BenchTokenward:
    tw = BenchTokenward(
        load_settings(env, env_file=Path("/nonexistent/.env")), argon2=CHEAP_FOR_TESTS
    )
    tw.bench_mode = mode
    await tw.start()
    return tw


# ------------------------------------------------------------------------------ the load


def run_wrk(url: str, token: str, duration: int, connections: int) -> dict[str, Any]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    argv += ["-H", f"Authorization: Bearer {token}", url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=duration + 60)
    text = out.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: (.*)", text)
    lat = dict(re.findall(r"\s+(50|99)%\s+([\d.]+\w+)", text))
    return {
        "rps": rps,
        "requests": total,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1) if errors else "",
        "p50": lat.get("50", "?"),
        "p99": lat.get("99", "?"),
    }


async def _httpx_load(url: str, token: str, requests: int, connections: int) -> dict[str, Any]:
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    remaining = requests
    bad = 0
    latencies: list[float] = []
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal remaining, bad
            while remaining > 0:
                remaining -= 1
                t = time.perf_counter()
                r = await client.get(url, headers=headers)
                latencies.append(time.perf_counter() - t)
                bad += r.status_code != 200

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "rps": requests / elapsed,
        "requests": requests,
        "non_2xx": bad,
        "socket_errors": "",
        "p50": f"{latencies[len(latencies) // 2] * 1000:.2f}ms",
        "p99": f"{latencies[int(len(latencies) * 0.99)] * 1000:.2f}ms",
    }


def run_httpx(url: str, token: str, requests: int, connections: int) -> dict[str, Any]:
    """The fallback generator, in its own process so it does not share the server's core."""
    argv = [sys.executable, __file__, "_load", url, token, str(requests), str(connections)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=900)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def serve_mode(mode: str, env: dict[str, str], workers: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    code = (
        "import uvicorn; uvicorn.run('auth_bench:bench_app', factory=True, host='127.0.0.1', "
        f"port={port}, workers={workers}, app_dir={str(BENCH_DIR)!r}, log_level='warning', "
        "access_log=False, server_header=False)"
    )
    proc_env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWARD_")}
    proc_env.update(env, BENCH_MODE=mode)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=proc_env, cwd=BENCH_DIR, start_new_session=True
    )
    wait_port(port, proc)
    return proc, port


# ----------------------------------------------------------------------- in-process timing


async def cpu_per_call(
    env: dict[str, str], token: str, rounds: int
) -> dict[str, tuple[float, float]]:
    """µs of process CPU and of wall time per authenticate() (medians of 5 batches)."""
    results: dict[str, tuple[float, float]] = {}
    for mode in MODES:
        tw = await new_instance(env, mode)
        try:
            now = tw.clock.now()
            await tw.sessions.authenticate(token, now=now)  # warm both caches
            n = rounds if mode != "lookup" else max(rounds // 10, 500)
            cpu, wall = [], []
            for _ in range(5):
                c0, w0 = time.process_time(), time.perf_counter()
                for _ in range(n):
                    await tw.sessions.authenticate(token, now=now)
                cpu.append((time.process_time() - c0) / n * 1e6)
                wall.append((time.perf_counter() - w0) / n * 1e6)
            results[mode] = (statistics.median(cpu), statistics.median(wall))
            if mode == "cached":
                # Reference: the signature check the verified-token cache saves.
                cold = AccessTokens(
                    tw.keys, issuer=ISSUER, audience=tw.settings.audience, ttl=3600, cache_size=0
                )
                m = 2000
                c0, w0 = time.process_time(), time.perf_counter()
                for _ in range(m):
                    cold.verify(token, now=now)
                results["verify, no token cache"] = (
                    (time.process_time() - c0) / m * 1e6,
                    (time.perf_counter() - w0) / m * 1e6,
                )
        finally:
            await tw.stop()
    return results


async def memory_per_session(
    env: dict[str, str], listpack_value: int | None = None
) -> list[tuple[str, float, float, str]]:
    """Redis bytes per session: ``(case, hash + share of index, hash alone, hash encoding)``.

    ``listpack_value`` sets the server's ``hash-max-listpack-value`` first (private server
    only): with the default (64) any longer field value, such as a browser's user agent,
    turns the hash into a hashtable, about twice the size.
    """
    tw = await new_instance(env, "cached")
    ua = (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0 Safari/537.36"
    )
    rows: list[tuple[str, float, float, str]] = []
    try:
        redis = tw.redis
        if listpack_value is not None:
            await redis.config_set("hash-max-listpack-value", listpack_value)

        async def usage(key: str) -> int:
            return int(await redis.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0") or 0)

        for label, agent, n_sessions, rotations in (
            ("1 session, short UA, fresh", "curl/8.5", 1, 0),
            ("1 session, browser UA, fresh", ua, 1, 0),
            ("1 session, browser UA, 20 rotations", ua, 1, 20),
            ("10 sessions, browser UA, fresh", ua, 10, 0),
        ):
            uid = uuid.uuid4().hex
            user = UserRef(uid, f"{uid[:12]}@example.com", tw.clock.now())
            now = tw.clock.now()
            issued = [
                await tw.sessions.open(user, ip="203.0.113.7", user_agent=agent, now=now)
                for _ in range(n_sessions)
            ]
            token = issued[0].refresh_token
            for i in range(rotations):
                token = (
                    await tw.sessions.refresh(token, csrf_token=None, now=now + 11 * (i + 1))
                ).refresh_token
            tag = f"tw:{{u:{uid}}}"
            hashes = sum([await usage(f"{tag}:s:{i.sid}") for i in issued])
            index = await usage(f"{tag}:idx")
            encoding = await redis.object("encoding", f"{tag}:s:{issued[0].sid}")
            rows.append((label, (hashes + index) / n_sessions, hashes / n_sessions, encoding))
        # The ended record a logout leaves behind (kept 30 days, last 50 per user).
        uid = uuid.uuid4().hex
        one = await tw.sessions.open(
            UserRef(uid, "e@example.com", 0), ip="", user_agent="", now=tw.clock.now()
        )
        await tw.sessions.end(uid, one.sid, EndReason.LOGOUT, now=tw.clock.now())
        ended = await usage(f"tw:{{u:{uid}}}:ended")
        rows.append(("ended-sessions list, 1 entry", ended, ended, "list"))
    finally:
        if listpack_value is not None:
            await tw.redis.config_set("hash-max-listpack-value", 64)
        await tw.stop()
    return rows


# --------------------------------------------------------------------------------- main


async def prepare(env: dict[str, str]) -> str:
    """Keys, migrations, a user and a session; returns its access token."""
    tw = BenchTokenward(
        load_settings(env, env_file=Path("/nonexistent/.env")), argon2=CHEAP_FOR_TESTS
    )
    await tw.start()  # generates the keys and applies migrations (migrate=True)
    try:
        email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
        user = await tw.users.register(email, "violet tractor 42 umbrella", now=tw.clock.now())
        issued = await tw.sessions.open(
            UserRef(user.id, user.email, user.created_at),
            ip="127.0.0.1",
            user_agent="bench",
            now=tw.clock.now(),
        )
        return issued.access_token
    finally:
        await tw.stop()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_load":
        url, token, n, c = sys.argv[2:6]
        print(json.dumps(asyncio.run(_httpx_load(url, token, int(n), int(c)))))
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis-url", help="use this Redis instead of a private redis-server")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=int, default=10, help="seconds per mode (wrk)")
    parser.add_argument("--requests", type=int, default=20_000, help="requests per mode (httpx)")
    parser.add_argument("--tool", choices=("auto", "wrk", "httpx"), default="auto")
    parser.add_argument("--rounds", type=int, default=20_000, help="in-process calls per batch")
    parser.add_argument("--skip-load", action="store_true", help="only the in-process parts")
    args = parser.parse_args()
    tool = args.tool if args.tool != "auto" else ("wrk" if shutil.which("wrk") else "httpx")

    with (
        tempfile.TemporaryDirectory(prefix="tokenward-bench-") as tmp,
        redis_server(args.redis_url, Path(tmp)) as redis_url,
    ):
        env = env_for(redis_url, Path(tmp) / "data")
        token = asyncio.run(prepare(env))
        print(
            f"# GET {WHOAMI}, {tool}, {args.connections} connections, {args.workers} worker(s), "
            f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs"
        )
        load: dict[str, dict[str, Any]] = {}
        for mode in MODES if not args.skip_load else ():
            proc, port = serve_mode(mode, env, args.workers)
            try:
                url = f"http://127.0.0.1:{port}{WHOAMI}"
                if tool == "wrk":
                    run_wrk(url, token, 2, args.connections)  # warm-up
                    load[mode] = run_wrk(url, token, args.duration, args.connections)
                else:
                    run_httpx(url, token, 1000, args.connections)
                    load[mode] = run_httpx(url, token, args.requests, args.connections)
            finally:
                stop(proc)
            if load[mode]["non_2xx"]:
                print(f"!! {mode}: {load[mode]['non_2xx']} non-2xx responses", file=sys.stderr)
                return 1
        base = load["stateless"]["rps"] if load else 1.0
        head = ("mode", "req/s", "vs stateless", "p50", "p99", "requests")
        print("{:<10} {:>9} {:>13} {:>9} {:>9} {:>9}".format(*head))
        for mode, r in load.items():
            errors = f"  socket errors: {r['socket_errors']}" if r["socket_errors"] else ""
            print(
                f"{mode:<10} {r['rps']:>9.0f} {r['rps'] / base:>12.2f}x {r['p50']:>9} "
                f"{r['p99']:>9} {r['requests']:>9}{errors}"
            )

        print("\n# in-process Sessions.authenticate(), µs per call (median of 5 batches)")
        cpu = asyncio.run(cpu_per_call(env, token, args.rounds))
        print(f"{'mode':<24} {'CPU µs':>8} {'wall µs':>8}")
        for mode, (c, w) in cpu.items():
            print(f"{mode:<24} {c:>8.2f} {w:>8.2f}")

        print("\n# Redis memory per session (MEMORY USAGE, bytes)")
        settings = [None] if args.redis_url else [None, 512]
        print(f"{'case':<38} {'listpack max':>12} {'hash+index':>10} {'hash':>6}  encoding")
        for listpack_value in settings:
            for label, total, alone, encoding in asyncio.run(
                memory_per_session(env, listpack_value)
            ):
                limit = "64 (default)" if listpack_value is None else str(listpack_value)
                print(f"{label:<38} {limit:>12} {total:>10.0f} {alone:>6.0f}  {encoding}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
