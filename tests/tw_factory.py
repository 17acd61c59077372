"""One way to build started Tokenward instances for the in-process tests.

Every test folder's ``make_tw`` fixture is a thin wrapper around :class:`TokenwardFactory`:
settings come from ``TOKENWARD_*`` overrides (as an operator would give them), time is a
:class:`FrozenClock` at the real time unless a clock is given, and argon2 is cheap unless
``argon2=None`` asks for the configured (OWASP) cost.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ports import free_port
from tokenward.clock import Clock, FrozenClock
from tokenward.passwords import CHEAP_FOR_TESTS, Argon2Params
from tokenward.runtime import Tokenward
from tokenward.settings import load_settings


class TokenwardFactory:
    """Builds, starts and finally stops Tokenward instances on one Redis."""

    def __init__(
        self, redis_url: str, tmp_path: Path, *, issuer: str, base: dict[str, str] | None = None
    ) -> None:
        self.redis_url = redis_url
        self.tmp_path = tmp_path
        self.issuer = issuer
        self.base = base or {}
        self.started: list[Tokenward] = []

    async def make(
        self,
        *,
        argon2: Argon2Params | None = CHEAP_FOR_TESTS,
        clock: Clock | None = None,
        migrate: bool = True,
        **overrides: Any,
    ) -> Tokenward:
        env = {
            "TOKENWARD_REDIS_URL": self.redis_url,
            "TOKENWARD_DATA_DIR": str(self.tmp_path / f"data{len(self.started)}"),
            "TOKENWARD_ISSUER": self.issuer,
            **self.base,
        }
        env.update({f"TOKENWARD_{k.upper()}": str(v) for k, v in overrides.items()})
        settings = load_settings(env, env_file=self.tmp_path / "no.env")
        tw = Tokenward(
            settings, clock=clock or FrozenClock(int(time.time())), argon2=argon2, migrate=migrate
        )
        await tw.start()
        self.started.append(tw)
        return tw

    async def make_without_database(self, **overrides: Any) -> Tokenward:
        """An instance whose user database (PostgreSQL) is a closed port of 127.0.0.1, so
        every query fails; migrations are skipped so that it starts at all."""
        url = f"postgresql+asyncpg://u@127.0.0.1:{free_port()}/db"
        return await self.make(database_url=url, migrate=False, **overrides)

    async def stop_all(self) -> None:
        for tw in self.started:
            await tw.stop()
