"""Redis bytes per session: ``MEMORY USAGE`` of every key a session adds, and the
``used_memory`` delta over many sessions, each with a browser user agent and 20 refreshes.

Usage (never in CI; a private redis-server on 127.0.0.1, stopped at the end)::

    .venv/bin/python bench/session_memory.py                       # 10,000 sessions
    PYTHONPATH=/tmp/tw-before/src .venv/bin/python bench/session_memory.py --label before

Two shapes, 10,000 sessions each: one session per user (10,000 users) and ten per user
(1,000 users, as many devices). Sessions are opened and refreshed through
``Tokenward.sessions`` (the HTTP layer adds nothing to Redis per session but the security
events, which are not counted here), a refresh a minute apart, so no grace chain is left.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def measure(redis_url: str, tmp: Path, users: int, per_user: int, refreshes: int) -> Any:
    from tokenward.passwords import CHEAP_FOR_TESTS
    from tokenward.runtime import Tokenward
    from tokenward.sessions import UserRef
    from tokenward.settings import load_settings

    env = {
        "TOKENWARD_REDIS_URL": redis_url,
        "TOKENWARD_DATA_DIR": str(tmp / "data"),
        "TOKENWARD_ISSUER": "https://bench.example",
    }
    tw = Tokenward(load_settings(env, env_file=Path("/nonexistent/.env")), argon2=CHEAP_FOR_TESTS)
    await tw.start()
    redis = tw.redis
    try:
        await redis.execute_command("MEMORY", "PURGE")
        before = int((await redis.info("memory"))["used_memory"])
        keys_before = int(await redis.dbsize())
        base = tw.clock.now()
        sample: list[str] = []

        async def one_user(i: int) -> None:
            uid = uuid.uuid4().hex
            user = UserRef(uid, f"{uid[:12]}@example.com", base)
            ip = f"203.0.{i % 250}.{i % 200 + 1}"
            for _ in range(per_user):
                issued = await tw.sessions.open(user, ip=ip, user_agent=UA, now=base)
                token = issued.refresh_token
                for r in range(refreshes):
                    now = base + 60 * (r + 1)
                    token = (
                        await tw.sessions.refresh(token, csrf_token=None, now=now, client=(ip, UA))
                    ).refresh_token
            if i == 0:
                sample.append(uid)

        batch = 16
        for start in range(0, users, batch):
            await asyncio.gather(*(one_user(i) for i in range(start, min(users, start + batch))))
        await redis.execute_command("MEMORY", "PURGE")
        after = int((await redis.info("memory"))["used_memory"])
        keys_after = int(await redis.dbsize())
        sessions = users * per_user
        # MEMORY USAGE of every key of the first user (its sessions, index, anything else)
        usage: dict[str, int] = {}
        cursor = 0
        tag = f"tw:{{u:{sample[0]}}}"
        while True:
            cursor, found = await redis.scan(cursor, match=f"{tag}*", count=1000)
            for key in found:
                usage[key.replace(sample[0], "<uid>")] = int(
                    await redis.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0") or 0
                )
            if cursor == 0:
                break
        session_keys = [k for k in usage if ":s:" in k]
        encodings = {
            k: await redis.object("encoding", k.replace("<uid>", sample[0]))
            for k in list(usage)[:4]
        }
        return {
            "users": users,
            "sessions_per_user": per_user,
            "refreshes": refreshes,
            "used_memory_delta_per_session": (after - before) / sessions,
            "keys_added_per_session": (keys_after - keys_before) / sessions,
            "memory_usage_of_one_users_keys": usage,
            "memory_usage_per_session": sum(usage.values()) / per_user,
            "session_key_memory_usage": (
                sum(usage[k] for k in session_keys) / len(session_keys) if session_keys else 0
            ),
            "encodings": encodings,
        }
    finally:
        await tw.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--refreshes", type=int, default=20)
    parser.add_argument("--label", default="now")
    args = parser.parse_args()
    import tokenward

    results: dict[str, Any] = {"label": args.label, "tokenward": tokenward.__file__, "runs": []}
    with tempfile.TemporaryDirectory(prefix="tokenward-mem-") as tmpdir:
        tmp = Path(tmpdir)
        port = free_port()
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(tmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            time.sleep(0.5)
            for per_user in (1, 10):
                # a fresh database for each shape
                subprocess.run(
                    ["redis-cli", "-p", str(port), "FLUSHALL"], check=True, capture_output=True
                )
                run = asyncio.run(
                    measure(
                        f"redis://127.0.0.1:{port}/0", tmp, args.sessions // per_user,
                        per_user, args.refreshes,
                    )
                )  # fmt: skip
                results["runs"].append(run)
                print(
                    f"{run['users']:6d} users x {per_user:2d} sessions, {args.refreshes} "
                    f"refreshes: used_memory delta {run['used_memory_delta_per_session']:.0f} "
                    f"B/session, MEMORY USAGE {run['memory_usage_per_session']:.0f} B/session "
                    f"(session key alone {run['session_key_memory_usage']:.0f}), "
                    f"keys/session {run['keys_added_per_session']:.2f}, "
                    f"encodings {run['encodings']}",
                    flush=True,
                )
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    out = ROOT / "bench" / "results" / f"session-memory-{args.label}.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"raw results: {out}")
    return 0


if __name__ == "__main__":
    if not os.environ.get("PYTHONPATH"):
        sys.path.insert(0, str(ROOT / "src"))  # this tree's code unless told otherwise
    os.environ.setdefault("TOKENWARD_LOG_LEVEL", "warning")
    sys.exit(main())
