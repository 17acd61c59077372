"""Fixtures for the operations tests: started Tokenwards and the CLI in-process.

* ``make_ops_tw(data_dir=None, **settings)`` -- build and start a Tokenward on the real Redis
  (FrozenClock, cheap hashing); stopped at teardown. Instances given the same ``data_dir``
  share the SQLite database and the generated key file, as instances of one deployment do.
* ``run_cli(*args, env=..., stdin=..., make_data_dir=True)`` -- ``tokenward.cli.main`` in a
  worker thread (its own event loop) with exactly the given ``TOKENWARD_*`` variables, the
  data directory made first unless ``make_data_dir=False``; returns exit code, stdout
  and stderr. Much faster than a subprocess; the console script itself is covered by
  ``test_admin_cli.py`` and ``test_packaging.py``.

Helpers live in ``ops_support.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from ops_support import CliResult, MakeOpsTw, RunCli, ops_env

from tokenward.clock import FrozenClock
from tokenward.passwords import CHEAP_FOR_TESTS
from tokenward.runtime import Tokenward
from tokenward.settings import load_settings


@pytest.fixture
async def make_ops_tw(redis_url: str, tmp_path: Path) -> AsyncIterator[MakeOpsTw]:
    started: list[Tokenward] = []

    async def make(data_dir: Path | None = None, **overrides: Any) -> Tokenward:
        where = data_dir or tmp_path / f"ops{len(started)}"
        env = ops_env(overrides.pop("redis_url", redis_url), where, **overrides)
        settings = load_settings(env, env_file=tmp_path / "no.env")
        tw = Tokenward(settings, clock=FrozenClock(int(time.time())), argon2=CHEAP_FOR_TESTS)
        await tw.start()
        started.append(tw)
        return tw

    yield make
    for tw in started:
        await tw.stop()


@pytest.fixture
def run_cli(tmp_path: Path) -> RunCli:
    async def run(
        *args: str, env: dict[str, str], stdin: str = "", make_data_dir: bool = True
    ) -> CliResult:
        """``make_data_dir``: the deployment exists (its data directory does), as it would
        where an operator runs commands; the CLI refuses a missing one."""
        from tokenward.cli import main

        if make_data_dir and "TOKENWARD_DATA_DIR" in env:
            Path(env["TOKENWARD_DATA_DIR"]).mkdir(  # noqa: ASYNC240 - test setup, instant
                parents=True, exist_ok=True, mode=0o700
            )

        clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("TOKENWARD_")}
        out, err = io.StringIO(), io.StringIO()

        def call() -> int:
            # The main thread only awaits this thread, so swapping process-wide state is safe.
            with (
                mock.patch.dict(os.environ, {**clean, **env}, clear=True),
                mock.patch.object(sys, "stdin", io.StringIO(stdin)),
                contextlib.redirect_stdout(out),
                contextlib.redirect_stderr(err),
                contextlib.chdir(tmp_path),  # no stray ./.env
            ):
                return main(list(args))

        code = await asyncio.to_thread(call)
        return CliResult(code, out.getvalue(), err.getvalue())

    return run
