"""Tokenward inside other web apps.

* :mod:`tokenward.integrations.fastapi`: mount the routes into a FastAPI app, and
  dependencies for the current user, session, optional user and required scopes.
* :mod:`tokenward.integrations.asgi`: plain ASGI middleware for Starlette, Litestar or any
  ASGI app.

Services that only need to check access tokens (Flask, Django, workers) use
:mod:`tokenward.verifier` instead.
"""
