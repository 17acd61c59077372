"""Where a login's server CPU goes, thread by thread: the event loop against the hashing.

Usage (from the repository root; never in CI)::

    .venv/bin/python bench/login_threads.py [--logins 60] [--rounds 3] [--src DIR]

A private ``redis-server`` and ``tokenward serve --workers 1`` (SQLite, production argon2id
cost, as ``bench/perf.py`` starts it) on 127.0.0.1; one user registers, then ``--logins``
bearer logins run one after another (no load: one login at a time, so nothing waits for a
core). Per login, each thread's CPU (utime + stime from ``/proc/<pid>/task``) is printed:
the event loop (the main thread) and the hashing worker threads. Then, in this process,
one argon2id verification of the same parameters on one thread: what a login must cost at
least. Repeated ``--rounds`` times, alternating the server and the bare hash, because the
machine's speed moves between minutes.

What it answers: how far a login is from the bare argon2id rate before any load or
contention, and how much of the gap is the event loop's work (HTTP, throttle, user
store, session, events) rather than the hashing thread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from benchkit import private_redis, results_header
from perf import PASSWORD, ROOT, TICK, start_serve, stop, tree_cpu


def thread_cpu(pid: int) -> dict[str, tuple[str, float]]:
    """Each live thread of ``pid``: its name and its CPU seconds so far."""
    out: dict[str, tuple[str, float]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:
            continue  # ended between the listing and the read
        fields = stat.rsplit(")", 1)[1].split()
        out[tid] = (
            stat[stat.index("(") + 1 : stat.rindex(")")],
            (int(fields[11]) + int(fields[12])) / TICK,
        )
    return out


def bare_verify_ms(count: int) -> float:
    from argon2 import PasswordHasher, Type

    hasher = PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1, type=Type.ID)
    encoded = hasher.hash(PASSWORD)
    start = time.thread_time()
    for _ in range(count):
        hasher.verify(encoded, PASSWORD)
    return (time.thread_time() - start) / count * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logins", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--src", type=Path, default=ROOT / "src")
    parser.add_argument("--label", default="login-threads")
    args = parser.parse_args()
    args.workers, args.server = 1, None
    rounds: list[dict[str, Any]] = []
    with private_redis() as redis_url, tempfile.TemporaryDirectory() as tmp:
        port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        proc, base, _ = start_serve(args, Path(tmp), port, None)
        try:
            headers = {"X-Auth-Transport": "bearer", "Origin": base}
            body = {"email": "threads@bench.test", "password": PASSWORD}
            with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
                client.post("/auth/register", json=body).raise_for_status()
                for _ in range(5):  # warm: scripts loaded, pools open
                    client.post("/auth/login", json=body).raise_for_status()
                for r in range(args.rounds):
                    before, total = thread_cpu(proc.pid), tree_cpu(proc.pid)
                    for _ in range(args.logins):
                        client.post("/auth/login", json=body).raise_for_status()
                    after, total = thread_cpu(proc.pid), tree_cpu(proc.pid) - total
                    main_tid = str(proc.pid)
                    loop = (after[main_tid][1] - before[main_tid][1]) / args.logins * 1000
                    whole = total / args.logins * 1000
                    bare = bare_verify_ms(args.logins // 2 or 1)
                    threads = {
                        f"{tid} ({'event loop' if tid == main_tid else name})": round(
                            (cpu - before.get(tid, (name, 0.0))[1]) / args.logins * 1000, 2
                        )
                        for tid, (name, cpu) in after.items()
                    }
                    row = {
                        "server_ms_per_login": round(whole, 2),
                        "event_loop_ms": round(loop, 2),
                        "other_threads_ms": round(whole - loop, 2),
                        "bare_verify_ms": round(bare, 2),
                        "threads": threads,
                    }
                    rounds.append(row)
                    print(f"round {r + 1}: {whole:.1f} ms of server CPU a login: event loop "
                          f"{loop:.1f}, other threads {whole - loop:.1f}; bare verification "
                          f"{bare:.1f} ms")  # fmt: skip
        finally:
            stop(proc)
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0] if k != "threads"}
    ceiling = med["bare_verify_ms"] / med["server_ms_per_login"]
    print(
        f"median: a login costs {med['server_ms_per_login']:.1f} ms of CPU, "
        f"{med['event_loop_ms']:.1f} of them on the event loop; one login at a time, the "
        f"server could reach {ceiling:.2f}x the bare argon2id rate on the same cores"
    )
    out = ROOT / "bench" / "results" / f"{args.label}.json"
    out.write_text(json.dumps({**results_header(args), "rounds": rounds, "median": med}, indent=1))
    print(f"raw results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
