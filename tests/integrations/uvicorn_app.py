"""A host ASGI app with Tokenward inside, configured by environment, for ``uvicorn``.

Run by ``test_forwarded_for_servers.py`` as ``uvicorn uvicorn_app:app`` (the integration
mode: your app, your server command), so uvicorn's own proxy-header handling is in play.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette

from tokenward.integrations.asgi import TokenwardMiddleware
from tokenward.runtime import Tokenward
from tokenward.settings import load_settings

tw = Tokenward(load_settings())


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    await tw.start()
    try:
        yield
    finally:
        await tw.stop()


app = TokenwardMiddleware(Starlette(lifespan=lifespan), tw, serve_routes=True)
