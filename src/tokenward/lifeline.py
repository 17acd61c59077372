"""Child processes that never outlive the Tokenward process that started them.

Two kinds of children must die with their parent, even when the parent is ``SIGKILL``-ed and
runs no clean-up: the embedded Valkey (:mod:`tokenward.stores.embedded_redis`) and the
worker processes of ``tokenward serve --workers N``. An orphaned worker keeps the listening
port (and the metrics port) open, answers ``/healthz`` 200 without the supervisor, and makes
the restart fail with "address already in use".

:func:`die_with_parent` is the one way both do it:

* **Linux:** ``prctl(PR_SET_PDEATHSIG, signum)`` through ctypes: the kernel sends ``signum``
  the moment the parent dies. It survives ``execve`` of a non-setuid binary, which is how
  the Valkey launcher keeps it. Linux sends it when the *thread* that forked the child ends,
  so the parent must fork from a thread that lives as long as it does (the main thread for
  uvicorn's supervisor; a keeper thread for the embedded Valkey).
* **The race:** the parent may die between the fork and the ``prctl``; the signal is then never
  sent. So the parent passes its pid and the child compares it with ``os.getppid()`` right
  after the ``prctl``.
* **Elsewhere** (or if ``prctl`` fails), a daemon thread polls ``os.getppid()`` every
  :data:`WATCH_INTERVAL` seconds and sends ``signum`` to its own process when it changes
  (only for a process that keeps running Python; an ``exec``-ed binary has no thread).

Standard library only, and runnable as a script: ``python -I -S lifeline.py PARENT_PID
PROGRAM ARG...`` arranges the death signal (``SIGTERM``), checks the parent, then ``exec``\\ s
``PROGRAM`` (the embedded Valkey's launcher, which must not import Tokenward's dependencies).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

__all__ = ["WATCH_INTERVAL", "die_with_parent"]

#: Seconds between two looks at the parent pid, where there is no death signal.
WATCH_INTERVAL = 0.5
_PR_SET_PDEATHSIG = 1


def _death_signal(signum: int) -> bool:
    """``prctl(PR_SET_PDEATHSIG, signum)``; whether it took."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent_pid: int, signum: int) -> None:
    stop = threading.Event()
    while not stop.wait(WATCH_INTERVAL):
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signum)
            return


def die_with_parent(parent_pid: int, signum: int = signal.SIGTERM, *, watch: bool = True) -> bool:
    """Have ``signum`` sent to this process when ``parent_pid`` (its parent) dies.

    Args:
        parent_pid: the pid of the parent, as the parent saw it (``os.getpid()`` there).
        signum: the signal; ``SIGTERM`` lets a server shut down in order.
        watch: where there is no death signal, start the polling thread (not for a process
            that is about to ``exec``).

    Returns:
        Whether the parent was still alive after the signal was arranged. ``False``: it had
        already died, and no signal will ever come; the caller must exit itself.
    """
    armed = _death_signal(signum)
    if os.getppid() != parent_pid:
        return False
    if not armed and watch:
        threading.Thread(
            target=_watch, args=(parent_pid, signum), name="tokenward-lifeline", daemon=True
        ).start()
    return True


if __name__ == "__main__":
    # python -I -S lifeline.py PARENT_PID PROGRAM ARG...: the embedded Valkey's launcher.
    if not die_with_parent(int(sys.argv[1]), signal.SIGTERM, watch=False):
        sys.exit("tokenward: the Tokenward process exited before " + sys.argv[2] + " started")
    os.execv(sys.argv[2], sys.argv[2:])  # noqa: S606 - the argv tokenward built
