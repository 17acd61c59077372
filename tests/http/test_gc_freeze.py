"""``tokenward serve``'s workers freeze the garbage collector once started; an app made for
embedding leaves its host's collector alone."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest

from tokenward.http.app import create_app
from tokenward.runtime import Tokenward


async def test_a_serving_app_freezes_what_start_up_made(tw: Tokenward) -> None:
    """With ``freeze_gc`` (what ``worker_app`` passes), the objects alive once the app has
    started move to the permanent generation, so a full collection no longer walks them;
    without it (the default, for a library in someone else's process), nothing is frozen."""
    gc.unfreeze()
    plain = create_app(tw, manage_lifespan=False)
    async with plain.router.lifespan_context(plain):
        assert gc.get_freeze_count() == 0
    serving = create_app(tw, manage_lifespan=False, freeze_gc=True)
    try:
        async with serving.router.lifespan_context(serving):
            assert gc.get_freeze_count() > 10_000  # the modules, the app, the service
    finally:
        gc.unfreeze()


def test_the_serve_worker_asks_for_it(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, tmp_path: Path
) -> None:
    """``worker_app``, the factory ``tokenward serve``'s server calls in each worker, builds
    the app with ``freeze_gc=True``."""
    from tokenward import serve_command
    from tokenward.http import app as app_module

    for name, value in {
        "TOKENWARD_REDIS_URL": redis_url,
        "TOKENWARD_DATA_DIR": str(tmp_path),
        "TOKENWARD_ISSUER": "https://tokenward.test",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(serve_command.SUPERVISOR_PID_ENV, raising=False)
    made: list[dict[str, Any]] = []
    monkeypatch.setattr(app_module, "create_app", lambda tw, **kwargs: made.append(kwargs))
    serve_command.worker_app()
    assert made == [{"freeze_gc": True}]
