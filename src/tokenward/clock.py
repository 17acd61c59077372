"""Time as an explicit input.

Core modules never read the clock themselves: they take ``now`` (seconds since the epoch,
an ``int``) or a :class:`Clock`. Expiry, grace and TTL logic is then testable to the second
with a :class:`FrozenClock`, and nothing sleeps.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "FrozenClock", "SystemClock", "monotonic"]


class Clock(Protocol):
    """Something that tells the time in whole seconds since the Unix epoch."""

    def now(self) -> int:
        """Return the current time, seconds since the epoch."""
        ...


class SystemClock:
    """The real wall clock."""

    def now(self) -> int:
        """Return ``int(time.time())``."""
        return int(time.time())


def monotonic() -> float:
    """The monotonic clock in seconds, for deadlines that must not jump with the wall clock.

    The default of the revocation lease; tests pass their own callable instead.
    """
    return time.monotonic()


class FrozenClock:
    """A clock that only moves when told to; for tests and simulations."""

    def __init__(self, start: int = 1_800_000_000) -> None:
        self._now = start

    def now(self) -> int:
        """Return the frozen time."""
        return self._now

    def advance(self, seconds: int) -> None:
        """Move the clock forward by ``seconds``."""
        self._now += seconds
