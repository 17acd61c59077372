"""How many argon2 computations run at once: one per core, shared out among serve's workers.

Two workers on two cores, each with one thread per core, ran four 19 MiB computations on two
cores: a login then cost about a quarter more CPU than a bare hash (``bench/perf.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tokenward import passwords
from tokenward.passwords import CHEAP_FOR_TESTS, PasswordHasher, threads_per_worker
from tokenward.runtime import Tokenward
from tokenward.settings import load_settings


@pytest.mark.parametrize(
    ("cores", "workers", "threads"),
    [(2, 1, 2), (2, 2, 1), (2, 3, 1), (8, 3, 2), (8, 4, 2), (16, 1, 16), (1, 8, 1)],
)
def test_the_cores_are_shared_out_rounded_down_and_at_least_one(
    monkeypatch: pytest.MonkeyPatch, cores: int, workers: int, threads: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)))
    assert threads_per_worker(workers) == threads
    assert PasswordHasher(CHEAP_FOR_TESTS).concurrency == cores  # one process: every core


def test_the_setting_reaches_the_hasher(redis_url: str, tmp_path: Path) -> None:
    env = {
        "TOKENWARD_REDIS_URL": redis_url,
        "TOKENWARD_DATA_DIR": str(tmp_path),
        "TOKENWARD_ISSUER": "https://tokenward.test",
    }
    default = Tokenward(load_settings(env, env_file=tmp_path / "none.env"), argon2=CHEAP_FOR_TESTS)
    assert default.hasher.concurrency == passwords._cores()
    env["TOKENWARD_ARGON2_THREADS"] = "3"
    three = Tokenward(load_settings(env, env_file=tmp_path / "none.env"), argon2=CHEAP_FOR_TESTS)
    assert three.hasher.concurrency == 3
