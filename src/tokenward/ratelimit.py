"""Rate limiting: exact sliding windows that lock with a growing back-off. Framework-free.

The rule for one key under a :class:`Limit` (``limit`` events in ``window`` seconds):

* Every attempt that gets through is recorded as an *event* (at ``now``, with an id).
  Events older than ``window`` no longer count: the window slides, it is exact, and no
  burst at a window edge ever lets more than ``limit`` events in within ``window`` seconds.
* An attempt that finds ``limit`` events already in the window is refused and *locks* the
  key for ``window`` seconds; each further lock while the key is remembered lasts twice as
  long, up to ``max_block`` (1, 2, 4 ... windows). Refused attempts while locked record
  nothing and do not extend the lock, so hammering a locked key gains nothing and costs
  its owner nothing more. A key is forgotten (back to the first step) ``max_block`` seconds
  after its last lock ended.
* Several keys can be checked together, all or nothing: either every key records the
  event, or none does and the caller is told the longest wait (``retry_after``).

:func:`acquire` and :func:`release` are the reference model: pure functions over
:class:`KeyState`. A :class:`RateLimiter` (the Redis adapter runs one Lua script per call)
must behave exactly like them; a property test runs both on random histories.

:mod:`tokenward.throttle` applies the rule to Tokenward's endpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

__all__ = [
    "Decision",
    "KeyState",
    "Limit",
    "RateLimiter",
    "acquire",
    "release",
]


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``limit`` events per ``window`` seconds; locks grow up to ``max_block``.

    Attributes:
        name: names the limit in events, logs and metrics (``login-pair``, ...).
        limit: events allowed in any ``window`` seconds.
        window: the sliding window and the first lock's length, seconds.
        max_block: the longest lock, seconds; raised to ``window`` when smaller (a lock
            never ends before the window has slid past the events that caused it).
    """

    name: str
    limit: int
    window: int
    max_block: int = 0

    def __post_init__(self) -> None:
        if self.limit <= 0 or self.window <= 0:
            raise ValueError(f"{self.name}: limit and window must be positive")
        if self.max_block < self.window:
            object.__setattr__(self, "max_block", self.window)

    def block_for(self, strikes: int) -> int:
        """How long the ``strikes``-th lock lasts: ``window * 2**(strikes - 1)``, capped."""
        block = self.window
        for _ in range(1, strikes):
            if block >= self.max_block:
                break
            block *= 2
        return min(block, self.max_block)


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer of :meth:`RateLimiter.acquire`.

    Attributes:
        allowed: the event was recorded under every key.
        retry_after: when refused, seconds until the longest lock ends (at least 1).
        remaining: when allowed, how many more events the tightest key takes now.
        blocked: names of the limits that refused.
        locked: names of the limits whose lock began with this call (one per lock, so
            events and logs are bounded under attack).
    """

    allowed: bool
    retry_after: int = 0
    remaining: int = 0
    blocked: tuple[str, ...] = ()
    locked: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class KeyState:
    """The reference model's state of one key.

    Attributes:
        events: ``(time, id)`` of recorded events, oldest first.
        strikes: locks so far (the back-off level).
        until: the current or last lock ends at this time; 0 if never locked.
    """

    events: tuple[tuple[int, str], ...] = ()
    strikes: int = 0
    until: int = 0

    def at(self, limit: Limit, now: int) -> KeyState:
        """This state at ``now``: expired events dropped, an old back-off forgotten."""
        events = tuple(e for e in self.events if e[0] > now - limit.window)
        if now >= self.until + limit.max_block:
            return KeyState(events, 0, 0)
        return KeyState(events, self.strikes, self.until)


def acquire(
    states: Sequence[KeyState], limits: Sequence[Limit], *, now: int, event: str
) -> tuple[Decision, list[KeyState]]:
    """Record ``event`` under every key, or under none (the reference model).

    Args:
        states: the keys' current states.
        limits: the limit of each key, in the same order.
        now: the current time, seconds.
        event: a unique id for this event (used by :func:`release`).

    Returns:
        The decision and the keys' new states.
    """
    current = [s.at(lim, now) for s, lim in zip(states, limits, strict=True)]
    retry, blocked, locked = 0, [], []
    for i, (state, lim) in enumerate(zip(current, limits, strict=True)):
        if state.until > now:
            retry = max(retry, state.until - now)
            blocked.append(lim.name)
        elif len(state.events) >= lim.limit:
            strikes = state.strikes + 1
            block = lim.block_for(strikes)
            current[i] = KeyState((), strikes, now + block)
            retry = max(retry, block)
            blocked.append(lim.name)
            locked.append(lim.name)
    if blocked:
        return Decision(False, retry, 0, tuple(blocked), tuple(locked)), current
    after = [replace(s, events=(*s.events, (now, event))) for s in current]
    remaining = min(lim.limit - len(s.events) for s, lim in zip(after, limits, strict=True))
    return Decision(True, 0, remaining), after


def release(state: KeyState, event: str) -> KeyState:
    """Forget one event (a refund: the attempt turned out not to count)."""
    return replace(state, events=tuple(e for e in state.events if e[1] != event))


class RateLimiter(Protocol):
    """Stored sliding windows with the semantics of :func:`acquire` and :func:`release`.

    Concurrency contract: :meth:`acquire` is atomic over all the keys it is given (they must
    share one Redis hash slot), so N concurrent callers on a key with room for k events get
    exactly k acceptances. Every stored key has a TTL; time is the caller's ``now``.
    """

    async def acquire(
        self, checks: Sequence[tuple[str, Limit]], *, now: int, event: str
    ) -> Decision:
        """Record ``event`` under every key of ``checks`` or under none (see :func:`acquire`)."""
        ...

    async def acquire_each(
        self, groups: Sequence[Sequence[tuple[str, Limit]]], *, now: int, event: str
    ) -> list[Decision]:
        """:meth:`acquire` of each group on its own (each atomic, all of them tried, one
        decision per group), in one round trip where the back end allows."""
        ...

    async def release(self, keys: Sequence[str], *, event: str) -> None:
        """Forget ``event`` under each key (a refund)."""
        ...

    async def reset(self, keys: Sequence[str]) -> None:
        """Forget everything about each key: events, locks and back-off."""
        ...

    async def remember(self, key: str, member: str, *, now: int, ttl: int, keep: int) -> None:
        """Add ``member`` to the set ``key`` (kept ``ttl`` seconds, newest ``keep`` only)."""
        ...

    async def settle(
        self,
        *,
        reset: Sequence[str],
        release: Sequence[str],
        event: str,
        remember: tuple[str, str, int, int, int] | None = None,
    ) -> None:
        """:meth:`reset` ``reset``, :meth:`release` ``event`` under ``release`` and, given
        ``(key, member, now, ttl, keep)``, :meth:`remember` it: the end of a successful
        login, in one round trip where the back end allows (not atomic as a whole)."""
        ...

    async def remembers(self, key: str, member: str, *, now: int, ttl: int) -> bool:
        """Whether ``member`` was added to ``key`` within the last ``ttl`` seconds."""
        ...
