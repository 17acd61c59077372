"""The HTTP adapter: Starlette routes over the framework-free core."""

from tokenward.http.app import create_app

__all__ = ["create_app"]
