"""Password hashing with argon2id (argon2-cffi), off the event loop.

Parameters default to OWASP's minimum for argon2id (m=19 MiB, t=2, p=1); hashes made with
weaker or older parameters are upgraded at the next successful login. Unknown accounts are
verified against a dummy hash made with the same parameters, so "no such user" costs the
same as "wrong password".
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import anyio
from argon2 import PasswordHasher as _Argon2
from argon2 import Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["CHEAP_FOR_TESTS", "OWASP_2025", "Argon2Params", "PasswordHasher"]


@dataclass(frozen=True, slots=True)
class Argon2Params:
    """argon2id cost parameters."""

    memory_kib: int
    time_cost: int
    parallelism: int


#: OWASP Password Storage Cheat Sheet, argon2id minimum: m=19 MiB, t=2, p=1.
OWASP_2025 = Argon2Params(memory_kib=19_456, time_cost=2, parallelism=1)

#: Warning: for tests only. Fast and insecure.
CHEAP_FOR_TESTS = Argon2Params(memory_kib=64, time_cost=1, parallelism=1)


class PasswordHasher:
    """Hashes and verifies passwords in worker threads, at most ``concurrency`` at once.

    Bounding concurrency keeps a flood of logins from starving the event loop's thread
    pool: argon2 is deliberately CPU- and memory-hungry.
    """

    def __init__(self, params: Argon2Params = OWASP_2025, *, concurrency: int = 4) -> None:
        self.params = params
        self._hasher = _Argon2(
            time_cost=params.time_cost,
            memory_cost=params.memory_kib,
            parallelism=params.parallelism,
            type=Type.ID,
        )
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._dummy = self._hasher.hash(secrets.token_urlsafe(24))

    async def hash(self, password: str) -> str:
        """A new argon2id hash of ``password``."""
        return await anyio.to_thread.run_sync(self._hasher.hash, password, limiter=self._limiter)

    async def verify(self, encoded: str | None, password: str) -> bool:
        """Check ``password`` against ``encoded``; ``None`` checks against the dummy hash.

        Returns ``False`` for ``None`` whatever the password, at the same cost.
        """
        target = self._dummy if encoded is None else encoded

        def check() -> bool:
            try:
                return self._hasher.verify(target, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        ok = await anyio.to_thread.run_sync(check, limiter=self._limiter)
        return ok and encoded is not None

    def needs_rehash(self, encoded: str) -> bool:
        """Whether ``encoded`` was made with other parameters than the current ones."""
        return self._hasher.check_needs_rehash(encoded)
