"""The authenticated-request path under load, and what each middleware layer costs.

One command, run by hand (never in CI)::

    PYTHONPATH=$PWD/src .venv/bin/python bench/request_path.py            # both servers
    PYTHONPATH=$PWD/src .venv/bin/python bench/request_path.py --server uvicorn --duration 10

It starts a private ``redis-server`` and, for each ASGI server, on 127.0.0.1:

* ``tokenward serve --workers N [--server S]`` (N = 2, one per core: the production shape),
  registers and logs in one user, and drives with ``wrk`` (64 connections):
  ``GET /healthz`` (the same server's hello-world route, every middleware included),
  ``GET /auth/me`` in bearer mode and in cookie mode (verify the token, check the session
  against the revocation-fed cache, read the user's address from the user store);
* a host app behind :class:`~tokenward.integrations.asgi.TokenwardMiddleware` (``GET
  /whoami``, bearer), and a bare Starlette app (``GET /``, no middleware) under the same
  ASGI server and worker count: the ceiling.

Server CPU per request is the ``utime + stime`` of the server process and all its
descendants (from ``/proc/<pid>/stat``, before and after the run) divided by the requests
wrk completed; Redis's CPU is reported apart. Then, in this process, it times each
middleware layer around a trivial ASGI app (µs of CPU per call, least of 7 batches): request
ids, metrics (single-process, and prometheus_client's multiprocess mode in a child
process), the access log line, security headers, the framework's exception wrappers and
the problem mapping of a refused request.

Results go to stdout as a table and to ``bench/results/request_path-<label>.json``.
Everything binds 127.0.0.1 only, is bounded in time, and stops what it started by pid.
Timings on a shared machine are noisy: compare runs made back to back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
PASSWORD = "violet tractor 42 umbrella"
EMAIL = "bench@example.test"
ISSUER = "https://bench.tokenward.test"
TICK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------- ASGI apps (factories)


def host_app() -> object:
    """A host app with ``GET /whoami`` behind TokenwardMiddleware (``--factory``)."""
    from collections.abc import AsyncIterator

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from tokenward.integrations.asgi import TokenwardMiddleware
    from tokenward.runtime import Tokenward
    from tokenward.settings import load_settings

    tw = Tokenward(load_settings(), migrate=False)

    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse({"id": request.state.tokenward.uid})

    @contextlib.asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[None]:
        await tw.start()
        try:
            yield
        finally:
            await tw.stop()

    host = Starlette(routes=[Route("/whoami", whoami)], lifespan=lifespan)
    return TokenwardMiddleware(host, tw, protect=["/whoami"])


def bare_app() -> object:
    """A bare Starlette app: one route, no middleware (``--factory``)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def hello(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return Starlette(routes=[Route("/", hello)])


# ----------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:  # a 401 of a protected route: it answers
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process group this script started (its own session)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    argv = [binary, "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"]
    argv += ["--port", str(port), "--dir", str(workdir)]
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", proc.pid
    finally:
        stop(proc)


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rpartition(")")[2].split()[1])
            kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its live descendants."""
    kids = _children()
    todo, total = [pid], 0.0
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
        todo.extend(kids.get(p, ()))
    return total


def run_wrk(
    url: str, headers: dict[str, str], duration: int, connections: int, threads: int
) -> dict[str, Any]:
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    out = subprocess.run(
        [*argv, url], capture_output=True, text=True, check=True, timeout=duration + 60
    )
    text = out.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    lat = dict(re.findall(r"\s+(50|99)%\s+([\d.]+\w+)", text))
    return {
        "rps": rps,
        "requests": total,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "p50": lat.get("50", "?"),
        "p99": lat.get("99", "?"),
    }


def measure(
    pid: int,
    redis_pid: int,
    url: str,
    headers: dict[str, str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    # Warm up (caches, JIT-less but lazy imports, connection pools), then measure.
    run_wrk(url, headers, 2, args.connections, args.threads)
    cpu0, rcpu0 = tree_cpu(pid), tree_cpu(redis_pid)
    result = run_wrk(url, headers, args.duration, args.connections, args.threads)
    cpu1, rcpu1 = tree_cpu(pid), tree_cpu(redis_pid)
    n = max(result["requests"], 1)
    result["cpu_us"] = (cpu1 - cpu0) / n * 1e6
    result["redis_cpu_us"] = (rcpu1 - rcpu0) / n * 1e6
    return result


def _request(
    url: str, body: dict[str, str] | None, headers: dict[str, str]
) -> tuple[int, Any, list[str]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data=data, headers={"content-type": "application/json", **headers}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        payload = r.read()
        return r.status, json.loads(payload) if payload else {}, r.headers.get_all("set-cookie")


def log_in(base: str) -> tuple[str, str]:
    """Register (once per data dir) and log in: a bearer token and a Cookie header."""
    origin = {"Origin": "http://127.0.0.1"}
    with contextlib.suppress(urllib.error.HTTPError):  # already registered
        _request(base + "/auth/register", {"email": EMAIL, "password": PASSWORD}, origin)
    creds = {"email": EMAIL, "password": PASSWORD}
    _, body, _ = _request(base + "/auth/login", creds, {**origin, "X-Auth-Transport": "bearer"})
    _, _, cookies = _request(base + "/auth/login", creds, origin)
    cookie = "; ".join(c.split(";", 1)[0] for c in cookies or [])
    return str(body["access_token"]), cookie


def serve_supports_server() -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "tokenward.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return "--server" in out


def asgi_command(server: str, target: str, port: int, workers: int) -> list[str]:
    """The same ASGI server's own command line for a bench app (``module:factory``)."""
    if server == "granian":
        return [
            sys.executable, "-m", "granian", "--interface", "asgi", "--factory",
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
            "--loop", "uvloop", "--no-ws", "--log-level", "warning",
            "--working-dir", str(BENCH_DIR), target,
        ]  # fmt: skip
    return [
        sys.executable, "-m", "uvicorn", "--factory", "--host", "127.0.0.1",
        "--port", str(port), "--workers", str(workers), "--app-dir", str(BENCH_DIR),
        "--log-level", "warning", "--no-access-log", "--no-server-header", "--ws", "none",
        target,
    ]  # fmt: skip


def start(argv: list[str], env: dict[str, str], health: str) -> subprocess.Popen[bytes]:
    log = tempfile.NamedTemporaryFile(prefix="bench-server-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        argv,
        env=env,
        cwd=BENCH_DIR,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    try:
        wait_http(health, proc)
    except RuntimeError:
        stop(proc)
        print(Path(log.name).read_text(errors="replace")[-3000:], file=sys.stderr)
        raise
    return proc


def server_runs(
    server: str, redis_url: str, redis_pid: int, args: argparse.Namespace, data: Path
) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWARD_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        TOKENWARD_REDIS_URL=redis_url,
        TOKENWARD_DATA_DIR=str(data),
        TOKENWARD_ISSUER=ISSUER,
        TOKENWARD_ALLOWED_ORIGINS="http://127.0.0.1",
        TOKENWARD_ACCESS_TTL="3600",
        TOKENWARD_LOG_LEVEL="warning",
        PYTHONPATH=os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(BENCH_DIR)) if p),
    )
    results: dict[str, Any] = {}
    port = free_port()
    argv = [sys.executable, "-m", "tokenward.cli", "serve", "--port", str(port)]
    argv += ["--workers", str(args.workers)]
    if serve_supports_server():
        argv += ["--server", server]
    elif server != "uvicorn":
        raise SystemExit(f"this tokenward serve has no --server: {server} not measurable")
    base = f"http://127.0.0.1:{port}"
    proc = start(argv, env, base + "/healthz")
    try:
        bearer, cookie = log_in(base)
        auth = {"Authorization": f"Bearer {bearer}"}
        results["healthz"] = measure(proc.pid, redis_pid, base + "/healthz", {}, args)
        results["me_bearer"] = measure(proc.pid, redis_pid, base + "/auth/me", auth, args)
        results["me_cookie"] = measure(
            proc.pid, redis_pid, base + "/auth/me", {"Cookie": cookie}, args
        )
    finally:
        stop(proc)
    # The env holds the resolved settings, so the host app shares keys, users and Redis.
    for name, target, path, headers in (
        ("host_whoami", "request_path:host_app", "/whoami", auth),
        ("bare_starlette", "request_path:bare_app", "/", {}),
    ):
        port = free_port()
        url = f"http://127.0.0.1:{port}{path}"
        proc = start(asgi_command(server, target, port, args.workers), env, url)
        try:
            results[name] = measure(proc.pid, redis_pid, url, headers, args)
        finally:
            stop(proc)
    return results


# ------------------------------------------------------------------ in-process: per layer


async def _time_app(app: Any, scope: dict[str, Any], rounds: int) -> float:
    """µs of CPU per call: the least of 7 batches (CPU time, not wall time, and the least,
    so that other processes on a shared machine inflate it as little as possible)."""
    body = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> dict[str, Any]:
        return body

    async def send(message: dict[str, Any]) -> None:
        return None

    for _ in range(rounds // 10 + 1):
        await app(dict(scope), receive, send)
    samples = []
    for _ in range(7):
        t = time.process_time()
        for _ in range(rounds):
            await app(dict(scope), receive, send)
        samples.append((time.process_time() - t) / rounds * 1e6)
    return min(samples)


def _scope(path: str, headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk"), *(headers or [])],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def layer_costs(rounds: int) -> dict[str, float]:
    """µs per request each layer adds around a trivial ASGI app (one process's view)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route, Router

    from tokenward.errors import TokenInvalid, TokenwardError
    from tokenward.http.observability import ObservabilityMiddleware
    from tokenward.http.problems import handle_tokenward_error
    from tokenward.logs import JsonFormatter
    from tokenward.metrics import Metrics
    from tokenward.web.headers import SecurityHeaders, security_headers

    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"15")],
    }
    done = {"type": "http.response.body", "body": b'{"status":"ok"}'}

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        await send(start)
        await send(done)

    class Route0:  # what the router leaves in the scope: the route template is read
        path = "/healthz"

    async def routed(scope: Any, receive: Any, send: Any) -> None:
        scope["route"] = Route0
        await inner(scope, receive, send)

    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115, ASYNC230
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger("tokenward.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False

    scope = _scope("/healthz")
    metrics = Metrics()
    base = await _time_app(routed, scope, rounds)
    rid = await _time_app(ObservabilityMiddleware(routed, metrics=None), scope, rounds)
    with_metrics = await _time_app(ObservabilityMiddleware(routed, metrics=metrics), scope, rounds)
    with_log = await _time_app(
        ObservabilityMiddleware(routed, metrics=None, log_requests=True), scope, rounds
    )
    headers = await _time_app(SecurityHeaders(routed, hsts=True), scope, rounds)
    try:  # the security headers added by the observability layer itself (after the change)
        merged = ObservabilityMiddleware(
            routed, metrics=metrics, headers=security_headers(hsts=True)
        )
    except TypeError:  # before: two layers
        merged = ObservabilityMiddleware(SecurityHeaders(routed, hsts=True), metrics=metrics)
    both = await _time_app(merged, scope, rounds)

    async def hello(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def refused(request: Request) -> Response:
        raise TokenInvalid("no access token")

    routes = [Route("/healthz", hello), Route("/refused", refused)]
    router = await _time_app(Router(routes=routes), scope, rounds)
    app = Starlette(routes=routes, exception_handlers={TokenwardError: handle_tokenward_error})
    framework = await _time_app(app, scope, rounds)
    refusal = await _time_app(app, _scope("/refused"), rounds)
    access.removeHandler(handler)
    return {
        "trivial app": base,
        "request id (+ header scan, contextvar)": rid - base,
        "metrics (counter + histogram)": with_metrics - rid,
        "access log line (TOKENWARD_ACCESS_LOG=true)": with_log - rid,
        "security headers": headers - base,
        "request id + metrics + security headers, as create_app stacks them": both - base,
        "Starlette router + route (reference)": router,
        "framework wrappers (exception middlewares)": framework - router,
        "problem mapping (a 401 instead of a 200)": refusal - framework,
    }


_MULTIPROC = """
import asyncio, json, sys
sys.path.insert(0, {bench!r})
import request_path
print(json.dumps(asyncio.run(request_path.layer_costs({rounds}))))
"""


def layer_costs_multiprocess(rounds: int) -> dict[str, float]:
    """:func:`layer_costs` with prometheus_client's multiprocess mode (``--workers N``)."""
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": tmp}
        code = _MULTIPROC.format(bench=str(BENCH_DIR), rounds=rounds)
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


# ----------------------------------------------------------------------------------- main

ROWS = (
    ("healthz", "GET /healthz (tokenward serve, hello world)"),
    ("me_bearer", "GET /auth/me, bearer"),
    ("me_cookie", "GET /auth/me, cookie"),
    ("host_whoami", "host GET /whoami behind TokenwardMiddleware"),
    ("bare_starlette", "bare Starlette, same server (ceiling)"),
)
NODE_RPS = 10_243


def print_table(server: str, results: dict[str, Any], workers: int) -> None:
    hello = results["healthz"]["rps"]
    print(f"\n{server}, {workers} worker(s)")
    print(
        f"| {'scenario':<44} | {'req/s':>8} | {'x Node':>6} | {'x hello':>7} "
        f"| {'CPU µs/req':>10} | {'redis µs':>8} | {'p99':>8} | non-2xx |"
    )
    widths = (46, 10, 8, 9, 12, 10, 10, 8)
    print("|" + "|".join("-" * (w - 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|")
    for key, label in ROWS:
        r = results.get(key)
        if r is None:
            continue
        print(
            f"| {label:<44} | {r['rps']:>8,.0f} | {r['rps'] / NODE_RPS:>6.2f} "
            f"| {r['rps'] / hello:>7.2f} | {r['cpu_us']:>10.1f} | {r['redis_cpu_us']:>8.1f} "
            f"| {r['p99']:>8} | {r['non_2xx']:>7} |"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--server", choices=("uvicorn", "granian", "both"), default="both")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--rounds", type=int, default=20_000, help="calls per layer batch")
    parser.add_argument("--skip-load", action="store_true", help="per-layer costs only")
    parser.add_argument("--label", default="run", help="name of the results file")
    args = parser.parse_args()
    if not args.skip_load and shutil.which("wrk") is None:
        raise SystemExit("wrk not found (apt-get install -y wrk)")
    servers = ["uvicorn", "granian"] if args.server == "both" else [args.server]
    if args.server == "both" and not serve_supports_server():
        servers = ["uvicorn"]
    import tokenward

    report: dict[str, Any] = {
        "tokenward": tokenward.__file__,
        "cpus": os.cpu_count(),
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
        "args": vars(args),
        "servers": {},
    }
    if not args.skip_load:
        with (
            tempfile.TemporaryDirectory(prefix="bench-reqpath-") as tmp,
            redis_server(Path(tmp)) as (redis_url, redis_pid),
        ):
            data = Path(tmp) / "data"
            for server in servers:
                report["servers"][server] = server_runs(server, redis_url, redis_pid, args, data)
                print_table(server, report["servers"][server], args.workers)
    single = asyncio.run(layer_costs(args.rounds))
    multi = layer_costs_multiprocess(args.rounds)
    report["layers"] = {"single_process": single, "multiprocess": multi}
    print("\nper-layer cost, µs per request (in-process CPU, least of 7 batches)")
    print(f"| {'layer':<46} | {'1 process':>9} | {'multiprocess':>12} |")
    print(f"|{'-' * 48}|{'-' * 10}:|{'-' * 13}:|")
    for name, value in single.items():
        print(f"| {name:<46} | {value:>9.2f} | {multi[name]:>12.2f} |")
    report["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    out_dir = BENCH_DIR / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"request_path-{args.label}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nraw results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
