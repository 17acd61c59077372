"""What the benchmark scripts share: a private ``redis-server`` on 127.0.0.1 and the
header of a results file.

The scripts import it as a sibling (``from benchkit import private_redis``): running
``python bench/<script>.py`` puts ``bench/`` first on the import path.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

STARTUP_TIMEOUT = 10.0


def free_port() -> int:
    """A port free on 127.0.0.1 now (it can be taken before it is bound: start-up says so)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def private_redis(*args: str) -> Iterator[str]:
    """A throw-away ``redis-server`` (no persistence, in a temporary directory) for the
    ``with`` block; yields its URL and stops it by pid afterwards.

    Raises:
        RuntimeError: it did not answer within :data:`STARTUP_TIMEOUT` seconds.
    """
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", tmp, *args]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.05)  # a bounded start-up poll
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def results_header(args: argparse.Namespace) -> dict[str, Any]:
    """What a ``bench/results/<label>.json`` file starts with, to tell its runs apart: the
    label, the UTC time, the measured source tree (``args.src``) and its git revision, the
    command-line arguments and the machine's cores."""
    return {
        "label": args.label,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "src": str(args.src),
        "git": subprocess.run(
            ["git", "-C", str(args.src), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "cores": os.cpu_count(),
    }
