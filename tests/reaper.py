"""Clean-up that runs even when pytest dies without its teardown (killed, crashed).

:func:`spawn_reaper` starts a detached ``sh`` that runs a shell snippet once this pytest
process is gone. It waits on a pipe, not on a timer: its standard input is the read end,
this process keeps the write end open for its whole life, and the kernel closes it however
the process ends, so ``read`` returns at that moment (no ``sleep`` loop polling ``kill -0``).
Normal teardown kills the reaper first, so the snippet never runs twice.
"""

from __future__ import annotations

import os
import subprocess

#: Write ends of the reapers' pipes, open until this process exits. Created without
#: inheritance (``os.pipe``), so no server started later holds one open after pytest.
_HELD: list[int] = []


def spawn_reaper(cleanup: str) -> subprocess.Popen[bytes]:
    """Start a detached watcher that runs ``cleanup`` (shell) once this process is gone."""
    read_end, write_end = os.pipe()
    try:
        reaper = subprocess.Popen(
            ["sh", "-c", f"read _ ; {cleanup}"],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # survives the terminal's Ctrl-C and pytest's death
        )
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    _HELD.append(write_end)
    return reaper
