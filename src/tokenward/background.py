"""Work done after the response: tracked, bounded, and never failing a request.

Security events and e-mail jobs run off the request path (a slow event store or mail server
must not slow a login, a broken one must not fail it). :class:`Background` holds those
tasks: at most ``max_pending`` at once (past it new work is dropped and the drop logged:
back-pressure instead of unbounded memory), each failure logged by its type only (a
traceback's messages could carry the data being written), and waitable, for tests, for
read-your-writes and for shutdown. Framework-free.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

__all__ = ["Background"]


class Background:
    """A bounded set of background tasks.

    Args:
        what: names the work in log lines (``security event``, ``mail job``).
        log: where drops and failures are logged.
        max_pending: tasks kept at once; more are dropped.
        failed: what a failure's log line says happened (``failed``, ``not stored``).
    """

    def __init__(
        self, what: str, log: logging.Logger, *, max_pending: int, failed: str = "failed"
    ) -> None:
        self.what = what
        self.failed = failed
        self.log = log
        self.max_pending = max_pending
        self._pending: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._pending)

    def spawn(self, work: Coroutine[Any, Any, object]) -> None:
        """Run ``work`` in the background (or drop it, logged, when too much is pending)."""
        if len(self._pending) >= self.max_pending:
            work.close()
            self.log.warning("%s dropped: %d pending", self.what, len(self._pending))
            return
        task = asyncio.get_running_loop().create_task(self._guarded(work))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _guarded(self, work: Coroutine[Any, Any, object]) -> None:
        try:
            await work
        except Exception as exc:  # a lost write must never fail the request that caused it
            self.log.error("%s %s (%s)", self.what, self.failed, type(exc).__name__)  # noqa: TRY400

    async def wait(self, *, at_most: float | None = None) -> None:
        """Wait for the tasks pending now (not those spawned meanwhile, so steady traffic
        cannot keep the caller waiting), for ``at_most`` seconds at most: a task still
        running then goes on (not cancelled, as ``asyncio.timeout`` would). Without
        ``at_most``, cancelling the caller cancels them."""
        pending = set(self._pending)
        if not pending:
            return
        if at_most is None:
            await asyncio.gather(*pending, return_exceptions=True)
        else:
            await asyncio.wait(pending, timeout=at_most)

    async def settle(self) -> None:
        """Wait until nothing is pending, including work spawned by pending work."""
        while self._pending:
            await self.wait()
