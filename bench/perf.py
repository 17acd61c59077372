"""Tokenward's hot paths against baselines measured in the same run: one command.

Usage (from the repository root; never in CI)::

    .venv/bin/python bench/perf.py --duration 10 --repeat 3
    .venv/bin/python bench/perf.py --server granian        # if `tokenward serve --server` exists
    .venv/bin/python bench/perf.py --src /tmp/tw-before/src --label before   # another tree's code
    .venv/bin/python bench/perf.py --node     # the Node stack too (installs bench/node's packages)

What it does, all on 127.0.0.1, every process bounded in time and stopped by pid:

1. starts a private ``redis-server`` (no persistence) and ``tokenward serve`` with
   ``--workers`` (default: one per core, the production advice) on it, argon2id at its
   production cost (m=19 MiB, t=2), the per-session refresh limit on but raised so that
   the load never meets it (``TOKENWARD_REFRESH_RATE_LIMIT``), registration limit raised;
2. registers and logs in ``--users`` users (bearer; a tenth of them in cookie mode too);
3. drives each scenario with ``wrk`` (``--connections`` 64, 2 threads, ``--duration`` s,
   ``--repeat`` times round-robin; the table shows the median run, the JSON every run):

   * ``hello``    -- a bare Starlette route under uvicorn, same worker count (baseline)
   * ``healthz``  -- the server's own ``GET /healthz`` (baseline)
   * ``me-bearer`` / ``me-cookie`` -- ``GET /auth/me`` with one of the users' tokens
   * ``refresh``  -- bearer ``POST /auth/refresh``, every response's successor used next
     (rotation, grace, reuse detection and the per-session limit all on)
   * ``login``    -- bearer ``POST /auth/login`` cycling through the users
   * ``argon2``   -- the bare argon2id hash rate, one process per core, same parameters
   * ``node-hello``, ``node-me``, ``node-refresh``, ``node-login`` -- the same requests to
     the Node stack of issue 11 (``bench/node``: Express + jsonwebtoken + node-redis,
     argon2id with the same parameters, node cluster with ``--workers`` workers) on its own
     private Redis, with its own ``--users`` users; on when node is installed and
     ``bench/node/node_modules`` exists (``--node`` installs it, ``--no-node`` skips it)

4. per scenario: req/s, ratio to the baseline (``hello`` for the HTTP routes, ``argon2``
   for login; for the Node rows ``node-hello`` and ``argon2``), Tokenward / Node (req/s
   and server CPU per request of the matching Node row), p99 latency, server CPU per
   request (utime + stime of the server and its workers from ``/proc``, before and
   after), Redis commands per request (``INFO commandstats`` delta) and, from ``MONITOR``
   over a few sequential requests, Redis round trips (commands sent by clients) and
   commands run inside scripts, per request.

The raw results go to ``bench/results/<label>.json``. The machine may be shared and noisy:
compare runs of one invocation, or the medians of several.
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
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from multiprocessing import Pool
from pathlib import Path
from typing import Any

from benchkit import private_redis, results_header

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PASSWORD = "violet tractor 42 umbrella"
BROWSER_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
TICK = os.sysconf("SC_CLK_TCK")
SCENARIOS = ("hello", "healthz", "me-bearer", "me-cookie", "refresh", "login", "argon2")
NODE_SCENARIOS = ("node-hello", "node-me", "node-refresh", "node-login")
NODE_DIR = ROOT / "bench" / "node"
# Each Tokenward scenario and the Node stack's scenario it is compared with.
VS_NODE = {
    "hello": "node-hello",
    "healthz": "node-hello",
    "me-bearer": "node-me",
    "me-cookie": "node-me",
    "refresh": "node-refresh",
    "login": "node-login",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).read()
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not answer within {timeout} s") from None
            time.sleep(0.2)
        else:
            return


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# ------------------------------------------------------------------------- measurements


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of ``root`` and every live descendant."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
        ticks[int(entry)] = int(fields[11]) + int(fields[12])
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo.extend(p for p, pp in parents.items() if pp == pid)
    return total / TICK


class Redis:
    """A tiny synchronous client of the private server (INFO, MONITOR)."""

    def __init__(self, port: int) -> None:
        import redis

        self.port = port
        self.client = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)

    def commandstats(self) -> dict[str, int]:
        info = self.client.info("commandstats")
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}

    def cpu(self) -> float:
        info = self.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    @contextlib.contextmanager
    def monitor(self) -> Iterator[dict[str, list[str]]]:
        """Commands seen while the block runs: ``{"client": [...], "lua": [...]}``."""
        seen: dict[str, list[str]] = {"client": [], "lua": [], "trips": []}
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.sendall(b"MONITOR\r\n")
        done = threading.Event()
        line_re = re.compile(rb'^\+?([\d.]+) \[\d+ ([^\]]+)\] "([^"]+)"')
        last: dict[str, Any] = {"addr": None, "ts": 0.0}

        def reader() -> None:
            buf = b""
            sock.settimeout(0.2)
            while not done.is_set():
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                *lines, buf = buf.split(b"\r\n")
                for line in lines:
                    m = line_re.search(line)
                    if m:
                        ts, addr = float(m.group(1)), m.group(2).decode()
                        command = m.group(3).decode().lower()
                        who = "lua" if addr == "lua" else "client"
                        seen[who].append(command)
                        if who == "client" and command not in ("ping", "info"):
                            # A command right behind the previous one of the same
                            # connection (under 40 us after whatever ran last) came in
                            # the same write: a pipeline, one round trip.
                            if not (addr == last["addr"] and ts - last["ts"] < 4e-5):
                                seen["trips"].append(addr)
                            last["addr"] = addr
                        last["ts"] = ts

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        time.sleep(0.3)
        try:
            yield seen
        finally:
            time.sleep(0.3)
            done.set()
            thread.join(timeout=5)
            sock.close()


def run_wrk(
    url: str, duration: int, connections: int, script: Path | None = None
) -> dict[str, Any]:
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "10s"]
    if script is not None:
        argv += ["-s", str(script)]
    out = subprocess.run(
        [*argv, url], capture_output=True, text=True, check=True, timeout=duration + 60
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    lat = {k: _ms(v) for k, v in re.findall(r"\s+(50|99)%\s+([\d.]+\w+)", out)}
    return {
        "rps": rps,
        "requests": total,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1) if errors else "",
        "p50_ms": lat.get("50"),
        "p99_ms": lat.get("99"),
    }


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def _argon2_worker(seconds: float) -> int:
    from argon2 import PasswordHasher, Type

    hasher = PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1, type=Type.ID)
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        hasher.hash(PASSWORD)
        n += 1
    return n


def argon2_rate(seconds: float, processes: int) -> dict[str, Any]:
    """Bare argon2id hashes per second with one process per core (same parameters), over
    the seconds the processes hashed (their start-up not counted: it made the rate look
    a few per cent lower, and a login's ratio to it higher)."""
    with Pool(processes) as pool:
        counts = pool.map(_argon2_worker, [seconds] * processes)
    return {"rps": sum(counts) / seconds, "requests": sum(counts), "p99_ms": None}


# ---------------------------------------------------------------------------- the setup


def node_ready(wanted: bool | None) -> bool:
    """Whether to run the Node stack's scenarios; with ``--node``, installs its packages
    (``npm ci``, from bench/node/package-lock.json) if they are missing."""
    node, installed = shutil.which("node"), (NODE_DIR / "node_modules").is_dir()
    if wanted is None:
        return bool(node and installed)
    if not wanted:
        return False
    if not node or not shutil.which("npm"):
        raise SystemExit("--node needs node and npm (Debian: apt-get install nodejs npm)")
    if not installed:
        print("installing the Node stack's packages: npm ci in bench/node")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True,
                       timeout=600)  # fmt: skip
    return True


def node_versions() -> dict[str, str]:
    """Node's version and the installed versions of the baseline's direct dependencies."""
    out = {"node": subprocess.run(["node", "--version"], capture_output=True, text=True,
                                  check=False, timeout=30).stdout.strip()}  # fmt: skip
    for name in json.loads((NODE_DIR / "package.json").read_text())["dependencies"]:
        with contextlib.suppress(OSError, KeyError, ValueError):
            meta = json.loads((NODE_DIR / "node_modules" / name / "package.json").read_text())
            out[name] = meta["version"]
    return out


def users_none() -> dict[str, list[str]]:
    return {"emails": [], "access": [], "refresh": [], "cookies": []}


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A private PostgreSQL (as the ``postgres`` OS user when root), fsync off; its URL."""
    import pwd

    bindir = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))[-1].parent
    run_as: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="tokenward-perf-pg-", dir="/tmp"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(workdir, owner.pw_uid, owner.pw_gid)
        run_as = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "postgres", "--"]
    data, port = workdir / "data", free_port()
    pg_ctl = [*run_as, str(bindir / "pg_ctl"), "-D", str(data)]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "timeout": 120}
    subprocess.run([*run_as, str(bindir / "initdb"), "-D", str(data), "-U", "tokenward",
                    "--auth=trust", "--no-sync"], check=True, **quiet)  # fmt: skip
    options = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={workdir} "
               "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")  # fmt: skip
    subprocess.run([*pg_ctl, "-l", str(workdir / "log"), "-w", "-o", options, "start"],
                   check=True, **quiet)  # fmt: skip
    try:
        subprocess.run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U",
                        "tokenward", "tokenward"], check=True, **quiet)  # fmt: skip
        yield f"postgresql+asyncpg://tokenward@127.0.0.1:{port}/tokenward"
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], check=False, **quiet)
        shutil.rmtree(workdir, ignore_errors=True)


async def make_users(base: str, n: int, cookie_share: int) -> dict[str, list[str]]:
    """Register and log in ``n`` users; returns emails, bearer tokens and cookies (one user
    in ``cookie_share`` logs in in cookie mode too; none if 0: the Node stack has no cookies)."""
    import httpx

    out: dict[str, list[str]] = {"emails": [], "access": [], "refresh": [], "cookies": []}
    sem = asyncio.Semaphore(8)
    bearer = {"X-Auth-Transport": "bearer", "User-Agent": BROWSER_UA}
    run = f"{time.time_ns():x}"

    async with httpx.AsyncClient(base_url=base, timeout=60) as client:

        async def one(i: int) -> None:
            email = f"u{i}-{run}@example.com"
            async with sem:
                r = await client.post(
                    "/auth/register", json={"email": email, "password": PASSWORD},
                    headers={"Origin": base},
                )  # fmt: skip
                r.raise_for_status()
                r = await client.post(
                    "/auth/login", json={"email": email, "password": PASSWORD}, headers=bearer
                )
                r.raise_for_status()
                body = r.json()
                out["emails"].append(email)
                out["access"].append(f"Bearer {body['access_token']}")
                out["refresh"].append(body["refresh_token"])
                if cookie_share and i % cookie_share == 0:
                    # A client of its own: in the shared one, the cookies of this login went
                    # out with the other users' concurrent logins, and a login presenting a
                    # session's cookies ends that session (1 in 100 cookie users got 401s).
                    async with httpx.AsyncClient(base_url=base, timeout=60) as browser:
                        r = await browser.post(
                            "/auth/login", json={"email": email, "password": PASSWORD},
                            headers={"Origin": base, "User-Agent": BROWSER_UA},
                        )  # fmt: skip
                    r.raise_for_status()
                    jar = [h.split(";", 1)[0] for h in r.headers.get_list("set-cookie")]
                    access = [c for c in jar if c.split("=", 1)[0].endswith("access_token")]
                    out["cookies"].append(access[0])

        await asyncio.gather(*(one(i) for i in range(n)))
    return out


def serve_env(
    src: Path,
    tmp: Path,
    redis_port: int,
    database: str | None,
    base: str,
    settings: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment of ``tokenward serve`` under load: production settings, the limits
    that one client address sending everything would trip raised (bench/soak.py too)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWARD_")}
    env.update(
        PYTHONPATH=str(src.resolve()),
        TOKENWARD_DATA_DIR=str(tmp / "data"),
        TOKENWARD_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        TOKENWARD_LOG_LEVEL="warning",
        TOKENWARD_REGISTER_IP_LIMIT="1000000",
        TOKENWARD_LOGIN_IP_LIMIT="1000000",
        # on, but above what the load reaches (~10 rotations/s of one session)
        TOKENWARD_REFRESH_RATE_LIMIT="100000",
        TOKENWARD_COOKIE_SECURE="false",
        # one address sends everything: the refused-refresh limit must not trip
        TOKENWARD_REFRESH_IP_LIMIT="1000000",
        TOKENWARD_ALLOWED_ORIGINS=base,
    )
    if database:
        env["TOKENWARD_DATABASE_URL"] = database
    # --setting NAME=VALUE: one setting for the server under test (an A/B of one knob)
    env.update(settings or {})
    return env


def start_serve(
    args: argparse.Namespace, tmp: Path, redis_port: int, database: str | None
) -> tuple[subprocess.Popen[bytes], str, dict[str, str]]:
    """``tokenward serve`` of ``args.src`` with ``args.workers`` (and ``args.server`` when
    that serve has the option) on a free port, answering ``/healthz``: the process, its
    base URL and its environment. Stopped by pid if it does not come up."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # bench/soak.py's arguments have no --setting
    env = serve_env(args.src, tmp, redis_port, database, base, getattr(args, "settings", None))
    argv = [str(VENV_BIN / "tokenward"), "serve", "--port", str(port),
            "--workers", str(args.workers)]  # fmt: skip
    if args.server:
        if serve_supports("--server", env):
            argv += ["--server", args.server]
        else:
            print("note: this tokenward serve has no --server; using its default")
    proc = subprocess.Popen(
        argv, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_http(base + "/healthz")
    except BaseException:
        stop(proc)
        raise
    return proc, base, env


def serve_supports(option: str, env: dict[str, str]) -> bool:
    out = subprocess.run(
        [str(VENV_BIN / "tokenward"), "serve", "--help"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    return option in out.stdout


def template(name: str, tmp: Path, dest: str | None = None, **subs: str) -> Path:
    text = (ROOT / "bench" / "wrk" / name).read_text()
    for key, value in subs.items():
        text = text.replace(f"@{key}@", value)
    path = tmp / (dest or name)
    path.write_text(text)
    return path


#: Scenarios a worker serves from its caches (sessions, profiles) once it has seen each user.
CACHED = ("me-bearer", "me-cookie")


def warm_caches(url: str, redis: Redis, args: argparse.Namespace, script: Path | None) -> None:
    """More warm-up, 2 s at a time (up to 5 times), while a session is still looked up in
    Redis more than once per 2,000 requests.

    Each worker's first request for a user misses its session and profile caches: a Redis
    lookup and a database read, about 1.5 ms. With 1,000 users and 2 workers those misses
    took 4 to 5 s of load to work off (probed by logging each miss), so after the 3 s
    warm-up some 400 fell into the measured run, queued on the database pool, and made its
    p99 (85-340 ms) where the later runs had 9-13 ms. The measured run is the steady state;
    a cold start is not what it compares with the Node stack (which has no cache).
    """
    for _ in range(5):
        before = redis.commandstats()
        run = run_wrk(url, 2, args.connections, script)
        after = redis.commandstats()
        lookups = after.get("evalsha", 0) - before.get("evalsha", 0)
        if lookups <= max(run["requests"], 1) / 2000:
            return


def wait_idle(pid: int, limit: float = 120) -> None:
    """Until the server has worked off the load's backlog (under 5% CPU for 0.5 s)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = tree_cpu(pid)
        time.sleep(0.5)
        if tree_cpu(pid) - before < 0.025:
            return


def round_trips(
    redis: Redis, base: str, kind: str, users: dict[str, list[str]], pid: int
) -> dict[str, Any]:
    """Redis commands per request from MONITOR over a few sequential requests."""
    import httpx

    wait_idle(pid)

    n = 20
    with httpx.Client(base_url=base, timeout=60) as client:
        if kind == "refresh":
            # Fresh tokens (the load's pool is rotated by wrk), from the last users.
            tokens = []
            for email in users["emails"][-n:]:
                r = client.post(
                    "/auth/login", json={"email": email, "password": PASSWORD},
                    headers={"X-Auth-Transport": "bearer"},
                )  # fmt: skip
                r.raise_for_status()
                tokens.append(r.json()["refresh_token"])
        with redis.monitor() as seen:
            for i in range(n):
                if kind == "refresh":
                    r = client.post(
                        "/auth/refresh", json={"refresh_token": tokens[i]},
                        headers={"X-Auth-Transport": "bearer", "User-Agent": BROWSER_UA},
                    )  # fmt: skip
                elif kind == "login":
                    r = client.post(
                        "/auth/login", json={"email": users["emails"][i], "password": PASSWORD},
                        headers={"X-Auth-Transport": "bearer", "User-Agent": BROWSER_UA},
                    )  # fmt: skip
                elif kind == "me-bearer":
                    r = client.get("/auth/me", headers={"Authorization": users["access"][i]})
                else:
                    raise ValueError(kind)
                r.raise_for_status()
    client_cmds = [c for c in seen["client"] if c not in ("ping", "info")]
    by_cmd: dict[str, float] = {}
    for c in client_cmds:
        by_cmd[c] = by_cmd.get(c, 0) + 1 / n
    return {
        "round_trips": len(seen["trips"]) / n,
        "client_commands_per_request": len(client_cmds) / n,
        "script_commands": len(seen["lua"]) / n,
        "client_commands": {k: round(v, 2) for k, v in sorted(by_cmd.items())},
    }


def profile_scenario(
    name: str, pid: int, url: str, script: Path | None, args: argparse.Namespace
) -> None:
    """py-spy on the server's processes during one scenario's load: a flame graph and a
    text top, ``bench/profiles/<label>-<name>.svg`` and ``.txt``."""
    spy = shutil.which("py-spy") or str(VENV_BIN / "py-spy")
    out = ROOT / "bench" / "profiles"
    out.mkdir(exist_ok=True)
    for fmt, path in (("flamegraph", out / f"{args.label}-{name}.svg"),
                      ("raw", out / f"{args.label}-{name}.raw")):  # fmt: skip
        argv = [
            spy,
            "record",
            "--pid",
            str(pid),
            "--subprocesses",
            "--nonblocking",
            "--rate",
            "250",
            "--duration",
            str(args.duration),
            "--format",
            fmt,
            "--output",
            str(path),
        ]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        run_wrk(url, args.duration, args.connections, script)
        proc.wait(timeout=args.duration + 60)
    raw = out / f"{args.label}-{name}.raw"
    if raw.exists():
        (out / f"{args.label}-{name}.txt").write_text(summarize(raw.read_text()))
        raw.unlink()


def summarize(collapsed: str, top: int = 45) -> str:
    """Hottest functions (inclusive and self share of samples) from py-spy's collapsed stacks."""
    total = 0
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [re.sub(r" \((.*?)/([^/]+:\d+)\)", r" (\2)", f) for f in stack.split(";")]
        frames = [re.sub(r":\d+\)$", ")", f) for f in frames]
        if frames and frames[0].startswith("process "):
            frames = frames[1:]
        if not frames:
            continue
        total += n
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
    lines = [f"{total} samples (all server processes; idle event-loop waits included)", "",
             "inclusive %  self %  function"]  # fmt: skip
    for f, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{100 * n / total:10.1f}  {100 * own.get(f, 0) / total:6.1f}  {f}")
    lines += ["", "self % (top)"]
    for f, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{100 * n / total:6.1f}  {f}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument(
        "--warmup", type=int, default=3,
        help="seconds of unmeasured load before each run (caches, connections, JIT)",
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario (median shown)")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--server", choices=("uvicorn", "granian"), default=None)
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="tokenward source tree")
    parser.add_argument("--label", default="run")
    parser.add_argument(
        "--profile", action="store_true",
        help="after the runs, two more runs of refresh and of me-bearer (those of them chosen) "
        "under py-spy: bench/profiles/<label>-<scenario>.svg (flame graph) and .txt (hottest "
        "functions, from the collapsed stacks)",
    )  # fmt: skip
    parser.add_argument("--sqlite", action="store_true", help="users in SQLite, not PostgreSQL")
    parser.add_argument(
        "--setting", action="append", default=[], metavar="TOKENWARD_NAME=VALUE",
        help="a setting for tokenward serve, on top of the bench's (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--scenarios", nargs="+", choices=SCENARIOS + NODE_SCENARIOS,
        default=list(SCENARIOS + NODE_SCENARIOS),
    )  # fmt: skip
    parser.add_argument(
        "--node", action=argparse.BooleanOptionalAction, default=None,
        help="the Node stack's scenarios (bench/node; --node installs its packages with npm ci "
        "if needed). Default: on when node is installed and bench/node/node_modules exists",
    )  # fmt: skip
    args = parser.parse_args()
    args.settings = {}
    for item in args.setting:
        name, sep, value = item.partition("=")
        if not name.startswith("TOKENWARD_") or not sep:
            parser.error(f"--setting: TOKENWARD_NAME=VALUE expected (got {item!r})")
        args.settings[name] = value
    if not shutil.which("wrk"):
        raise SystemExit("wrk is required (Debian: apt-get install wrk)")
    args.node = node_ready(args.node)
    if not args.node:
        args.scenarios = [s for s in args.scenarios if s not in NODE_SCENARIOS]

    results: dict[str, Any] = {
        **results_header(args),
        "node": node_versions() if args.node else None,
        "runs": {},
        "round_trips": {},
    }
    redis_proc = serve_proc = hello_proc = node_proc = None
    with (
        tempfile.TemporaryDirectory(prefix="tokenward-perf-") as tmpdir,
        contextlib.ExitStack() as stack,
    ):
        tmp = Path(tmpdir)
        database = None if args.sqlite else stack.enter_context(postgres())
        try:
            redis_port = free_port()
            redis_proc = subprocess.Popen(
                ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(tmp)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            redis = Redis(redis_port)
            deadline = time.monotonic() + 20
            while True:
                try:
                    redis.client.ping()
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)

            serve_proc, base, env = start_serve(args, tmp, redis_port, database)
            if args.server and "--server" not in serve_proc.args:
                results["args"]["server"] = "default (no --server option)"
            hello_port = free_port()
            hello_argv = [str(VENV_BIN / "uvicorn"), "hello_app:app", "--port", str(hello_port),
                          "--workers", str(args.workers), "--no-access-log",
                          "--log-level", "warning"]  # fmt: skip
            if args.server == "granian" and (VENV_BIN / "granian").exists():
                hello_argv = [str(VENV_BIN / "granian"), "--interface", "asgi", "--port",
                              str(hello_port), "--workers", str(args.workers),
                              "--log-level", "warning", "hello_app:app"]  # fmt: skip
            if "hello" in args.scenarios:
                hello_proc = subprocess.Popen(
                    hello_argv, cwd=ROOT / "bench", env=env,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                wait_http(f"http://127.0.0.1:{hello_port}/")

            node_scenarios = [s for s in args.scenarios if s in NODE_SCENARIOS]
            node_base, node_redis, node_users = "", redis, users_none()
            if node_scenarios:
                node_url = stack.enter_context(private_redis())
                node_redis = Redis(int(node_url.rsplit(":", 1)[1].split("/")[0]))
                node_port = free_port()
                node_base = f"http://127.0.0.1:{node_port}"
                node_env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWARD_")}
                node_env.update(PORT=str(node_port), REDIS_URL=node_url,
                                WORKERS=str(args.workers), NODE_ENV="production")  # fmt: skip
                node_proc = subprocess.Popen(
                    [shutil.which("node") or "node", "server.js"], cwd=NODE_DIR, env=node_env,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                wait_http(node_base + "/")

            t0 = time.monotonic()
            users = asyncio.run(make_users(base, args.users, 10))
            print(f"{args.users} users registered and logged in in {time.monotonic() - t0:.0f} s")
            if node_scenarios:
                t0 = time.monotonic()
                node_users = asyncio.run(make_users(node_base, args.users, 0))
                print(f"{args.users} Node users registered and logged in in "
                      f"{time.monotonic() - t0:.0f} s")  # fmt: skip
                (tmp / "node-access.txt").write_text("\n".join(node_users["access"]) + "\n")
                (tmp / "node-refresh.txt").write_text("\n".join(node_users["refresh"]) + "\n")
                (tmp / "node-emails.txt").write_text("\n".join(node_users["emails"]) + "\n")
            (tmp / "access.txt").write_text("\n".join(users["access"]) + "\n")
            (tmp / "cookies.txt").write_text("\n".join(users["cookies"]) + "\n")
            (tmp / "refresh.txt").write_text("\n".join(users["refresh"]) + "\n")
            (tmp / "emails.txt").write_text("\n".join(users["emails"]) + "\n")

            scripts = {
                "me-bearer": template("tokens_get.lua", tmp, PATH="/auth/me",
                                      FILE=str(tmp / "access.txt"), HEADER="Authorization"),
                "refresh": template("refresh.lua", tmp, FILE=str(tmp / "refresh.txt"),
                                    OUT=str(tmp / "refresh.txt"), THREADS="2"),
                "login": template("login.lua", tmp, FILE=str(tmp / "emails.txt"),
                                  PASSWORD=PASSWORD),
            }  # fmt: skip
            cookie = tmp / "cookie_get.lua"
            cookie.write_text(
                (ROOT / "bench/wrk/tokens_get.lua").read_text()
                .replace("@PATH@", "/auth/me").replace("@FILE@", str(tmp / "cookies.txt"))
                .replace("@HEADER@", "Cookie")
            )  # fmt: skip
            scripts["me-cookie"] = cookie
            if node_scenarios:
                scripts["node-me"] = template(
                    "tokens_get.lua", tmp, "node_me.lua", PATH="/auth/me",
                    FILE=str(tmp / "node-access.txt"), HEADER="Authorization",
                )  # fmt: skip
                scripts["node-refresh"] = template(
                    "refresh.lua", tmp, "node_refresh.lua", FILE=str(tmp / "node-refresh.txt"),
                    OUT=str(tmp / "node-refresh.txt"), THREADS="2",
                )  # fmt: skip
                scripts["node-login"] = template(
                    "login.lua", tmp, "node_login.lua", FILE=str(tmp / "node-emails.txt"),
                    PASSWORD=PASSWORD,
                )  # fmt: skip
            urls = {
                "hello": f"http://127.0.0.1:{hello_port}/",
                "healthz": base + "/healthz",
                "me-bearer": base + "/auth/me",
                "me-cookie": base + "/auth/me",
                "refresh": base + "/auth/refresh",
                "login": base + "/auth/login",
                "node-hello": node_base + "/",
                "node-me": node_base + "/auth/me",
                "node-refresh": node_base + "/auth/refresh",
                "node-login": node_base + "/auth/login",
            }
            server_pids = {"hello": hello_proc.pid if hello_proc else 0}
            if node_proc:
                server_pids.update(dict.fromkeys(NODE_SCENARIOS, node_proc.pid))
            for _ in range(args.repeat):
                for name in args.scenarios:
                    if name == "argon2":
                        # Not while a server still works off a login load's backlog (up to
                        # 64 queued logins, a second or two of both cores).
                        for proc in (serve_proc, node_proc):
                            if proc is not None:
                                wait_idle(proc.pid)
                        run = argon2_rate(args.duration, os.cpu_count() or 1)
                    else:
                        pid = server_pids.get(name, serve_proc.pid)
                        rds = node_redis if name in NODE_SCENARIOS else redis
                        if args.warmup > 0:
                            # Steady state, as a server that has served these users
                            # before: each worker's session cache (60 s) and Node's JIT
                            # warm; a cold 10 s run of 1,000 users missed up to half.
                            run_wrk(urls[name], args.warmup, args.connections,
                                    scripts.get(name))  # fmt: skip
                            if name in CACHED:
                                warm_caches(urls[name], rds, args, scripts.get(name))
                        stats0, rcpu0, cpu0 = rds.commandstats(), rds.cpu(), tree_cpu(pid)
                        run = run_wrk(urls[name], args.duration, args.connections,
                                      scripts.get(name))  # fmt: skip
                        cpu1, rcpu1, stats1 = tree_cpu(pid), rds.cpu(), rds.commandstats()
                        n = max(run["requests"], 1)
                        run["server_cpu_us"] = (cpu1 - cpu0) / n * 1e6
                        run["redis_cpu_us"] = (rcpu1 - rcpu0) / n * 1e6
                        delta = {k: stats1.get(k, 0) - stats0.get(k, 0) for k in stats1}
                        delta.pop("info", None)
                        delta.pop("commandstats", None)
                        run["redis_commands"] = sum(delta.values()) / n
                        run["redis_by_command"] = {
                            k: round(v / n, 3) for k, v in sorted(delta.items()) if v
                        }
                    results["runs"].setdefault(name, []).append(run)
                    print(f"  {name:10s} {run['rps']:10.1f} req/s"
                          + (f"  {run.get('server_cpu_us', 0):7.0f} us CPU"
                             f"  non-2xx {run.get('non_2xx', 0)}" if name != "argon2" else ""),
                          flush=True)  # fmt: skip
            for name in ("refresh", "me-bearer") if args.profile else ():
                if name in args.scenarios:
                    profile_scenario(name, serve_proc.pid, urls[name], scripts.get(name), args)
            for kind in ("me-bearer", "refresh", "login"):
                if kind in args.scenarios:
                    results["round_trips"][kind] = round_trips(
                        redis, base, kind, users, serve_proc.pid
                    )
            for name, kind in (("node-me", "me-bearer"), ("node-refresh", "refresh"),
                               ("node-login", "login")):  # fmt: skip
                if name in args.scenarios and node_proc:
                    results["round_trips"][name] = round_trips(
                        node_redis, node_base, kind, node_users, node_proc.pid
                    )
        finally:
            stop(node_proc)
            stop(hello_proc)
            stop(serve_proc)
            stop(redis_proc)

    out = ROOT / "bench" / "results" / f"{args.label}.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print_table(results)
    print(f"\nraw results: {out}")
    return 0


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda r: r["rps"])
    return ordered[len(ordered) // 2]


def print_table(results: dict[str, Any]) -> None:
    runs = results["runs"]
    med = {name: median_run(r) for name, r in runs.items()}
    base_http = med.get("hello") or med.get("healthz")
    print(f"\n# {results['label']} ({results['git']}), workers={results['args']['workers']}, "
          f"server={results['args']['server']}, median of {results['args']['repeat']} runs "
          f"of {results['args']['duration']} s, 64 connections")  # fmt: skip
    if results.get("node"):
        print("# Node stack: " + ", ".join(f"{k} {v}" for k, v in results["node"].items())
              + "; 'vs Node': Tokenward / Node (req/s: higher is better; CPU: lower)")  # fmt: skip
    head = ("scenario", "req/s", "ratio", "vs Node req/s", "vs Node CPU", "p99 ms",
            "srv CPU us/req", "redis cmds/req", "round trips/req", "client cmds/req",
            "in-script cmds/req", "runs req/s")  # fmt: skip
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, run in med.items():
        # the ratio: to the same stack's hello-world route (login: to the bare argon2 rate)
        if name.startswith("node-"):
            baseline = med.get("argon2") if name == "node-login" else med.get("node-hello")
        else:
            baseline = med.get("argon2") if name == "login" else base_http
        if name == "argon2":
            baseline = None
        ratio = run["rps"] / baseline["rps"] if baseline and baseline is not run else None
        node = med.get(VS_NODE.get(name, ""))
        vs_rps = run["rps"] / node["rps"] if node else None
        vs_cpu = (run["server_cpu_us"] / node["server_cpu_us"]
                  if node and run.get("server_cpu_us") and node.get("server_cpu_us")
                  else None)  # fmt: skip
        rt = results["round_trips"].get(name, {})
        cells = [
            name,
            f"{run['rps']:,.0f}" if run["rps"] >= 100 else f"{run['rps']:.1f}",
            f"{ratio:.2f}x" if ratio else "-",
            f"{vs_rps:.2f}x" if vs_rps else "-",
            f"{vs_cpu:.2f}x" if vs_cpu else "-",
            f"{run['p99_ms']:.1f}" if run.get("p99_ms") is not None else "-",
            f"{run['server_cpu_us']:.0f}" if "server_cpu_us" in run else "-",
            f"{run['redis_commands']:.2f}" if "redis_commands" in run else "-",
            f"{rt['round_trips']:.2f}" if rt else "-",
            f"{rt.get('client_commands_per_request', rt['round_trips']):.2f}" if rt else "-",
            f"{rt['script_commands']:.1f}" if rt else "-",
            " / ".join(f"{r['rps']:.0f}" for r in runs[name]),
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
