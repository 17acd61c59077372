"""``TOKENWARD_ARGON2_THREADS``: how many argon2 computations a process runs at once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tokenward.passwords import CHEAP_FOR_TESTS, PasswordHasher
from tokenward.runtime import Tokenward
from tokenward.settings import load_settings


def test_one_per_core_the_process_may_run_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 3, 5})
    assert PasswordHasher(CHEAP_FOR_TESTS).concurrency == 3
    assert PasswordHasher(CHEAP_FOR_TESTS, concurrency=1).concurrency == 1


def test_the_setting_reaches_the_hasher(redis_url: str, tmp_path: Path) -> None:
    env = {
        "TOKENWARD_REDIS_URL": redis_url,
        "TOKENWARD_DATA_DIR": str(tmp_path),
        "TOKENWARD_ISSUER": "https://tokenward.test",
    }
    default = Tokenward(load_settings(env, env_file=tmp_path / "none.env"), argon2=CHEAP_FOR_TESTS)
    assert default.hasher.concurrency == len(os.sched_getaffinity(0))
    env["TOKENWARD_ARGON2_THREADS"] = "3"
    three = Tokenward(load_settings(env, env_file=tmp_path / "none.env"), argon2=CHEAP_FOR_TESTS)
    assert three.hasher.concurrency == 3
