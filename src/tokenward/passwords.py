"""Password hashing with argon2id (argon2-cffi), off the event loop.

Parameters default to OWASP's minimum for argon2id (m=19 MiB, t=2, p=1); hashes made with
weaker or older parameters are upgraded at the next successful login. Unknown accounts are
verified against a dummy hash made with the same parameters, so "no such user" costs the
same as "wrong password".

Once the parameters are raised, the hashes not yet upgraded are cheaper to check than the
dummy: an existing account that has not logged in since would answer a wrong password
faster than an unknown email answers anything (measured: 178 ms against 325 ms), which tells
a guesser the account exists. So a verification against a hash made with other parameters
than the current ones is *padded*: it returns no sooner than a verification at the current
parameters takes right now, estimated as the median of the last :data:`COST_SAMPLES` such
verifications (of the dummy or of current hashes), timed from the call to the result, so
including the wait for a worker thread. Until one has been timed, the real thing is paid
once: a verification of the dummy.

Why a measured wait and not more argon2 work: argon2's time is not linear in its
parameters (memory allocation and cache effects; 38 MiB x 1 pass takes twice 19 MiB x 2),
so no cheap "complementary" hash matches the difference, and verifying the dummy as well
costs old + new, a difference of its own. A wait holds no worker thread and no CPU, so the
padding itself cannot be made expensive by a flood; and since the estimate is a median of
recent measurements under the same load, when the machine is busy and current-cost
verifications slow down, the padded ones slow down with them. What stays different is the
CPU an old-cost check burns, which a client observes only as the latency above. The
durations come from the event loop's monotonic clock (``anyio.current_time``), never the
wall clock: the core still takes ``now`` as an argument for everything it decides.
"""

from __future__ import annotations

import os
import secrets
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from argon2 import PasswordHasher as _Argon2
from argon2 import Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["CHEAP_FOR_TESTS", "COST_SAMPLES", "OWASP_2025", "Argon2Params", "PasswordHasher"]

#: How many recent verifications at the current parameters estimate what one costs: few,
#: so that the estimate follows a change of load within a few requests (with 16 it lagged
#: enough, on a machine whose load moved, to put the two kinds of failure 20 % apart).
COST_SAMPLES = 5


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


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class PasswordHasher:
    """Hashes and verifies passwords in worker threads, at most ``concurrency`` at once.

    Bounding concurrency keeps a flood of logins from starving the event loop's thread
    pool: argon2 is deliberately CPU- and memory-hungry.

    Args:
        params: the current cost parameters (new hashes; older ones need a rehash).
        concurrency: at most this many argon2 computations at once; by default one per
            core this process may run on (more threads than cores only thrash the caches
            each 19 MiB computation needs, and slow every login down).
        timer: monotonic seconds, for the padding of old-cost verifications (see above).
    """

    def __init__(
        self,
        params: Argon2Params = OWASP_2025,
        *,
        concurrency: int | None = None,
        timer: Callable[[], float] = anyio.current_time,
    ) -> None:
        self.params = params
        self._hasher = _Argon2(
            time_cost=params.time_cost,
            memory_cost=params.memory_kib,
            parallelism=params.parallelism,
            type=Type.ID,
        )
        self._limiter = anyio.CapacityLimiter(concurrency or _cores())
        self._dummy = self._hasher.hash(secrets.token_urlsafe(24))
        self._timer = timer
        #: seconds taken by the latest verifications at the current parameters
        self._costs: deque[float] = deque(maxlen=COST_SAMPLES)

    @property
    def concurrency(self) -> int:
        """At most this many argon2 computations run at once."""
        return int(self._limiter.total_tokens)

    async def hash(self, password: str) -> str:
        """A new argon2id hash of ``password``."""
        return await anyio.to_thread.run_sync(self._hasher.hash, password, limiter=self._limiter)

    async def verify(self, encoded: str | None, password: str) -> bool:
        """Check ``password`` against ``encoded``; ``None`` checks against the dummy hash.

        Returns ``False`` for ``None`` whatever the password, at the same cost. Against a
        hash made with other parameters, takes at least as long as a check at the current
        ones, whatever the outcome (see the module docstring).
        """
        target = self._dummy if encoded is None else encoded
        current = encoded is None or not self.needs_rehash(encoded)

        def check() -> bool:
            try:
                return self._hasher.verify(target, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        started = self._timer()
        ok = await anyio.to_thread.run_sync(check, limiter=self._limiter)
        elapsed = self._timer() - started
        if current:
            self._costs.append(elapsed)
        elif not self._costs:
            await self.verify(None, password)  # nothing timed yet: pay the real price once
        else:
            await anyio.sleep(max(0.0, statistics.median(self._costs) - elapsed))
        return ok and encoded is not None

    def needs_rehash(self, encoded: str) -> bool:
        """Whether ``encoded`` was made with other parameters than the current ones.

        A string that is no argon2 hash at all (it never verifies) counts as needing one.
        """
        try:
            return self._hasher.check_needs_rehash(encoded)
        except InvalidHashError:
            return True
