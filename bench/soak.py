"""Worker memory under a long mixed load: is each worker's RSS flat (issue 11, goal 5)?

Usage (from the repository root; never in CI)::

    .venv/bin/python bench/soak.py --minutes 10
    .venv/bin/python bench/soak.py --minutes 3 --server granian --label soak-granian

Starts, all on 127.0.0.1 and stopped by pid, a private ``redis-server``, a private
PostgreSQL (``--sqlite``: none) and ``tokenward serve`` with ``--workers`` (default one per
core) and the same settings as ``bench/perf.py``; registers and logs in ``--users`` users;
then runs one ``wrk`` for ``--minutes`` with a mixed load (``bench/wrk/mixed.lua``): mostly
bearer ``GET /auth/me``, every ``--refresh-every``-th request a refresh with rotation,
every ``--login-every``-th a login (argon2id, a new session). Every ``--interval`` seconds
it reads the RSS (``VmRSS`` in ``/proc/<pid>/status``) of every process of the server
(the supervisor, the workers, multiprocessing's resource tracker) and Redis's
``used_memory``.

Prints the series and, per process, the slope of RSS over the second half of the run
(KiB per minute, least squares: the first half is the warm-up, caches filling) and over
the whole run; the raw samples and wrk's totals go to ``bench/results/<label>.json``.
A worker restarted during the run shows as a new pid. The machine may be shared: the
request rate is noisy, the memory series much less.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchkit import private_redis, results_header
from perf import (
    PASSWORD,
    ROOT,
    Redis,
    make_users,
    postgres,
    run_wrk,
    start_serve,
    stop,
    template,
)


def descendants(root: int) -> list[int]:
    """``root`` and every live process below it."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(p for p, pp in parents.items() if pp == pid)
    return sorted(out)


def role(pid: int, root: int) -> str:
    if pid == root:
        return "serve"
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "gone"
    if "resource_tracker" in cmdline:
        return "tracker"
    return "worker"


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (minutes, KiB): KiB per minute."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--interval", type=float, default=10, help="seconds between samples")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--server", choices=("uvicorn", "granian"), default=None)
    parser.add_argument("--refresh-every", type=int, default=10)
    parser.add_argument("--login-every", type=int, default=200)
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="tokenward source tree")
    parser.add_argument("--label", default="soak")
    parser.add_argument("--sqlite", action="store_true", help="users in SQLite, not PostgreSQL")
    args = parser.parse_args()
    seconds = round(args.minutes * 60)

    results: dict[str, Any] = {
        **results_header(args),
        "samples": [],
    }
    serve_proc = None
    with (
        tempfile.TemporaryDirectory(prefix="tokenward-soak-") as tmpdir,
        contextlib.ExitStack() as stack,
    ):
        tmp = Path(tmpdir)
        database = None if args.sqlite else stack.enter_context(postgres())
        redis_url = stack.enter_context(private_redis())
        redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        redis = Redis(redis_port)
        try:
            serve_proc, base, _ = start_serve(args, tmp, redis_port, database)
            t0 = time.monotonic()
            users = asyncio.run(make_users(base, args.users, 0))
            print(f"{args.users} users registered and logged in in {time.monotonic() - t0:.0f} s")
            access = [a.removeprefix("Bearer ") for a in users["access"]]
            (tmp / "access.txt").write_text("\n".join(access) + "\n")
            (tmp / "refresh.txt").write_text("\n".join(users["refresh"]) + "\n")
            (tmp / "emails.txt").write_text("\n".join(users["emails"]) + "\n")
            script = template(
                "mixed.lua", tmp, ACCESS=str(tmp / "access.txt"),
                REFRESH=str(tmp / "refresh.txt"), EMAILS=str(tmp / "emails.txt"),
                PASSWORD=PASSWORD, THREADS="2", REFRESH_EVERY=str(args.refresh_every),
                LOGIN_EVERY=str(args.login_every),
            )  # fmt: skip

            wrk_out: dict[str, Any] = {}

            def load() -> None:
                wrk_out.update(run_wrk(base + "/auth/me", seconds, args.connections, script))

            root = serve_proc.pid
            start = time.monotonic()
            thread = threading.Thread(target=load, daemon=True)
            thread.start()
            print(f"mixed load for {seconds} s, a sample every {args.interval:g} s")
            k = 0
            while True:
                at = time.monotonic() - start
                sample = {
                    "t": round(at, 1),
                    "rss_kib": {str(p): rss_kib(p) for p in descendants(root)},
                    "roles": {str(p): role(p, root) for p in descendants(root)},
                    "redis_used_memory": int(redis.client.info("memory")["used_memory"]),
                }
                results["samples"].append(sample)
                workers = "  ".join(
                    f"{p}:{(v or 0) / 1024:.1f}" for p, v in sample["rss_kib"].items()
                )
                print(f"  t={at:6.0f} s  RSS MiB {workers}  redis "
                      f"{sample['redis_used_memory'] / 2**20:.1f} MiB", flush=True)  # fmt: skip
                if not thread.is_alive():
                    break
                k += 1
                # a sampling schedule, not a wait for state: the load runs meanwhile
                time.sleep(max(0.0, start + k * args.interval - time.monotonic()))
            thread.join(timeout=120)
            results["wrk"] = wrk_out
        finally:
            stop(serve_proc)

    report(results)
    out = ROOT / "bench" / "results" / f"{args.label}.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nraw results: {out}")
    return 0


def report(results: dict[str, Any]) -> None:
    samples = results["samples"]
    end = samples[-1]["t"] if samples else 0.0
    pids = sorted({p for s in samples for p in s["rss_kib"]}, key=int)
    results["slopes"] = {}
    w = results.get("wrk", {})
    print(f"\n# {results['label']} ({results['git']}): {end / 60:.1f} min of mixed load, "
          f"{w.get('rps', 0):,.0f} req/s, {w.get('requests', 0):,} requests, "
          f"non-2xx {w.get('non_2xx')}, p99 {w.get('p99_ms')} ms")  # fmt: skip
    print("| process | role | samples | RSS first MiB | RSS at half MiB | RSS last MiB | "
          "slope 2nd half KiB/min | slope whole KiB/min |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for pid in pids:
        series = [(s["t"] / 60, s["rss_kib"][pid]) for s in samples
                  if s["rss_kib"].get(pid) is not None]  # fmt: skip
        if not series:
            continue
        role_ = next(s["roles"][pid] for s in samples if pid in s["roles"])
        second = [(t, v) for t, v in series if t >= end / 120]
        half = second[0][1] if second else series[-1][1]
        late, whole = slope(second), slope(series)
        results["slopes"][pid] = {"role": role_, "second_half_kib_per_min": late,
                                  "whole_kib_per_min": whole}  # fmt: skip
        print(f"| {pid} | {role_} | {len(series)} | {series[0][1] / 1024:.1f} | "
              f"{half / 1024:.1f} | {series[-1][1] / 1024:.1f} | "
              f"{'-' if late is None else f'{late:+.1f}'} | "
              f"{'-' if whole is None else f'{whole:+.1f}'} |")  # fmt: skip
    redis_series = [(s["t"] / 60, s["redis_used_memory"] / 1024) for s in samples]
    second = [(t, v) for t, v in redis_series if t >= end / 120]
    results["slopes"]["redis_used_memory"] = {"second_half_kib_per_min": slope(second)}
    late = slope(second)
    if late is not None:
        print(f"Redis used_memory: {redis_series[0][1] / 1024:.1f} -> "
              f"{redis_series[-1][1] / 1024:.1f} MiB, {late:+.1f} KiB/min over the 2nd half "
              "(sessions from logins, rotated refresh tokens until they expire)")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
