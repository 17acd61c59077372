"""tokenward.lifeline on its own: the death signal, the fallback watch, the fork race.

Each case runs a real parent process and its real child; the parent is ``SIGKILL``-ed, so
nothing but the mechanism under test can end the child. (The workers of ``tokenward serve``
are covered end to end in ``test_worker_lifeline.py``.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from processes import alive
from waiting import wait_until

#: The death signal is immediate; the watch looks every 0.5 s; slack for a loaded machine.
EXIT_DEADLINE = 10.0

_CHILD = """
import os, signal, sys
import tokenward.lifeline as lifeline
if sys.argv[1] == "watch":
    lifeline._death_signal = lambda signum: False  # as on a platform without prctl
parent = os.getppid() if sys.argv[2] == "mine" else int(sys.argv[2])
print("armed" if lifeline.die_with_parent(parent) else "parent-gone", flush=True)
signal.pause()  # only a signal ends this process
"""

_PARENT = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]],
                         stdout=subprocess.PIPE, text=True)
print(child.pid, child.stdout.readline().strip(), flush=True)
child.wait()  # the test kills this process before the child ends
"""


@pytest.mark.parametrize("how", ["prctl", "watch"])
def test_the_child_exits_when_its_parent_is_killed(how: str) -> None:
    """``prctl(PR_SET_PDEATHSIG)`` and, without it, the getppid watch: the child gets
    SIGTERM once its parent is SIGKILL-ed."""
    if how == "prctl" and not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    # "mine": the child takes getppid() at start, its parent's pid while the parent waits.
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_PARENT), _CHILD, how, "mine"],
        stdout=subprocess.PIPE,
        text=True,
    )
    child_pid = 0
    try:
        assert parent.stdout is not None
        pid_text, state = parent.stdout.readline().split()
        child_pid = int(pid_text)
        assert state == "armed"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        wait_until(
            lambda: not alive(child_pid),
            within=EXIT_DEADLINE,
            what=f"the orphan ({how}) exits",
            step=0.02,
        )
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child_pid and alive(child_pid):
            os.kill(child_pid, signal.SIGKILL)


def test_a_parent_that_died_before_the_prctl_is_noticed() -> None:
    """The fork race: the pid handed down is no longer the parent's, so no signal would ever
    come; die_with_parent says so and the caller exits (a worker, the Valkey launcher)."""
    result = subprocess.run(
        [sys.executable, "-c", _CHILD.replace("signal.pause()", "pass"), "prctl", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "parent-gone"
