"""Waiting for state in tests: bounded polls, never a fixed sleep.

Every test that waits for something another process or task does (a server to listen, a
feed message to land, a key file to be re-read) waits here: ``check`` is called until it is
true or ``within`` seconds pass, with a short pause between calls. A check may raise to stop
early (a server process that exited will never become healthy).

A uniquely named module at the root of ``tests`` (on ``sys.path`` through the root
conftest), like :mod:`tw_factory`.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

__all__ = ["apoll_until", "await_until", "poll_until", "wait_until"]

#: Seconds between two calls of a check: short against every bound used, long enough not to
#: busy-wait.
STEP = 0.02


def poll_until(check: Callable[[], object], *, within: float, step: float = STEP) -> bool:
    """Call ``check`` until it returns something true; whether it did within ``within`` s."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True


def _timed_out(check: Callable[..., object], within: float, what: str | None) -> AssertionError:
    return AssertionError(
        f"timed out after {within} s waiting until {what or getattr(check, '__name__', 'check')}"
    )


def wait_until(
    check: Callable[[], object], *, within: float, what: str | None = None, step: float = STEP
) -> float:
    """Like :func:`poll_until`, but fail the test on time-out (saying ``what``, or the
    check's name); returns the seconds waited."""
    start = time.monotonic()
    if not poll_until(check, within=within, step=step):
        raise _timed_out(check, within, what)
    return time.monotonic() - start


async def apoll_until(
    check: Callable[[], object | Awaitable[object]], *, within: float, step: float = STEP
) -> bool:
    """The async :func:`poll_until`: ``check`` may be a plain or a coroutine function."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(step)


async def await_until(
    check: Callable[[], object | Awaitable[object]],
    *,
    within: float,
    what: str | None = None,
    step: float = STEP,
) -> float:
    """The async :func:`wait_until`."""
    start = time.monotonic()
    if not await apoll_until(check, within=within, step=step):
        raise _timed_out(check, within, what)
    return time.monotonic() - start
