"""A per-process cache of live sessions, kept coherent by an invalidation feed.

Checking every request's session in Redis costs the worker more CPU than the web framework
does (measured in ``docs/sessions.md``). Instead each process remembers the sessions it has
seen alive and forgets one as soon as the feed announces its end (the Redis adapter
subscribes to the channel every ending operation publishes to, in the same atomic step as
the deletion).

Fail closed: the cache vouches for nothing while the feed is down (``healthy`` is false),
and is emptied whenever the feed (re)connects, since messages may have been missed. It also
vouches only while the feed holds a *lease* (:meth:`SessionCache.renew`): the deadline is
checked right here, where the cache answers, against the monotonic clock, so no task that
runs late (a watchdog on a busy event loop) can stretch it. A lookup that raced an
invalidation is not cached (the ``ticket`` check), so a stale "alive" can never be stored
after the "ended" that should have removed it.

No store import here: the feed adapter drives :meth:`SessionCache.forget`,
:meth:`SessionCache.reset`, :meth:`SessionCache.renew` and :attr:`SessionCache.healthy`.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from tokenward.clock import monotonic

if TYPE_CHECKING:
    from tokenward.sessions import SessionState

__all__ = ["SPREAD", "SessionCache"]

#: An entry vouches for a random 75-100 % of ``max_age`` (see :meth:`SessionCache.put`).
SPREAD = 0.25


class SessionCache:
    """Live sessions seen recently by this process.

    Args:
        max_entries: bound on memory; the least recently stored entry goes first (and
            entries that have run out go anyway, a few at each store). ``0`` turns
            caching off: every request asks the store (for measurements and for
            deployments that prefer a Redis round trip to any staleness window).
        max_age: seconds an entry may vouch before it is looked up again, a safety net
            on top of the feed.
        clock: the monotonic clock the lease deadline is kept in (the event loop's).
        spread: the share of ``max_age`` an entry may lose at random (:data:`SPREAD`).
        rng: a number in [0, 1) per entry (tests pin it).

    Attributes:
        hits: requests the cache vouched for (answered without a store lookup).
        last_hit_at: when it last did, on ``clock``.
    """

    def __init__(
        self,
        max_entries: int = 100_000,
        max_age: int = 60,
        *,
        clock: Callable[[], float] = monotonic,
        spread: float = SPREAD,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._entries: OrderedDict[str, tuple[SessionState, int]] = OrderedDict()
        self._max_entries = max_entries
        self._max_age = max_age
        self._spread = spread
        self._rng = rng
        self._generation = 0
        self._healthy = False
        #: the monotonic clock of the lease (the feed reads it too)
        self.clock = clock
        self._lease_until = 0.0
        self.hits = 0
        self.last_hit_at = 0.0

    @property
    def healthy(self) -> bool:
        """Whether the invalidation feed is connected; the cache is bypassed otherwise."""
        return self._healthy

    @property
    def lease_until(self) -> float:
        """The moment (on ``clock``) the cache stops vouching unless the lease is renewed."""
        return self._lease_until

    def set_healthy(self, healthy: bool) -> None:
        """Record the feed's state; every change empties the cache and drops the lease."""
        if healthy != self._healthy:
            self._healthy = healthy
            self._lease_until = 0.0
            self.reset()

    def renew(self, until: float) -> None:
        """Extend the lease to ``until`` (on ``clock``); never shortens it.

        The feed calls this when it has proof that every ending published before some moment
        has reached :meth:`forget` (its own ping answered in order behind them), with that
        moment plus the lease length.
        """
        if until > self._lease_until:
            self._lease_until = until

    def ticket(self) -> int:
        """Take before a store lookup; pass to :meth:`put` afterwards."""
        return self._generation

    def get(self, sid: str, *, now: int) -> SessionState | None:
        """The cached state of ``sid`` if the cache may vouch for it now."""
        if not self._healthy:
            return None
        entry = self._entries.get(sid)
        if entry is None:
            return None
        state, valid_until = entry
        if now >= valid_until:
            del self._entries[sid]
            return None
        at = self.clock()
        if at >= self._lease_until:
            # The feed has not proved itself lately: the entry may have ended unannounced.
            # Checked here, inline, so it holds however late any background task runs.
            return None
        self.hits += 1
        self.last_hit_at = at
        return state

    def put(self, sid: str, state: SessionState, *, ticket: int, now: int) -> None:
        """Remember a state just read from the store, unless anything ended meanwhile."""
        if not self._healthy or ticket != self._generation or self._max_entries <= 0:
            return
        entries = self._entries
        # Entries stored together (each worker's first requests after a start or a feed
        # reconnect) would all run out in the same second and come back as one burst of
        # lookups every max_age; a random share off each spreads them. It only ever
        # shortens the trust, so the draw needs no secrecy (not a CSPRNG).
        life = self._max_age - int(self._max_age * self._spread * self._rng())
        entries[sid] = (state, min(state.expires_at, now + life))
        entries.move_to_end(sid)
        if len(entries) > self._max_entries:
            entries.popitem(last=False)
        # The oldest stored come first, and none may vouch for more than max_age seconds:
        # drop up to two that have run out (more than one a store, so the sweep keeps up;
        # one stored later that runs out sooner waits for its turn, or for get).
        # The cache then holds the sessions seen in the last max_age seconds, not the last
        # max_entries whenever they were seen.
        for _ in range(2):
            oldest = next(iter(entries.values()), None)
            if oldest is None or oldest[1] > now:
                break
            entries.popitem(last=False)

    def forget(self, sids: Iterable[str]) -> None:
        """Drop these sessions (they ended, or changed)."""
        self._generation += 1
        for sid in sids:
            self._entries.pop(sid, None)

    def reset(self) -> None:
        """Drop everything (the feed reconnected or went down)."""
        self._generation += 1
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
