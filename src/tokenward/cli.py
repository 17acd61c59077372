"""The ``tokenward`` command.

``tokenward serve [--host 127.0.0.1] [--port 8000] [--workers N]`` runs the HTTP server.
With no configuration it starts an embedded Redis and an SQLite database in the data
directory and generates signing keys there. The supervising process does the one-time work
(embedded Redis, keys, migrations) before any worker starts, so workers never race on it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from tokenward.errors import ConfigError, TokenwardError
from tokenward.settings import Settings, load_settings

__all__ = ["main"]

log = logging.getLogger("tokenward")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenward", description="Tokenward authentication service"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    return parser


def _prepare(settings: Settings) -> Settings:
    """One-time start-up work in the supervising process; returns settings for the workers."""
    from tokenward.runtime import default_database_url, load_keys
    from tokenward.stores.sql_users import create_engine, upgrade

    load_keys(settings)
    database_url = settings.database_url or default_database_url(settings.data_dir)
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    async def migrate() -> None:
        engine = create_engine(database_url, timeout=settings.backend_timeout)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(migrate())
    return settings


def worker_app() -> object:
    """The ASGI app of one worker process (``uvicorn --factory``), configured by environment."""
    from tokenward.http.app import create_app
    from tokenward.runtime import Tokenward

    return create_app(Tokenward(load_settings(), migrate=False))


def serve(host: str, port: int, workers: int) -> int:
    """Run the server until interrupted; returns the exit status."""
    import uvicorn

    from tokenward.stores.embedded_redis import EmbeddedRedis, EmbeddedRedisError

    if not 1 <= port <= 65535:
        raise ConfigError(f"--port: must be 1-65535 (got {port})")
    if workers < 1:
        raise ConfigError(f"--workers: must be at least 1 (got {workers})")
    settings = load_settings().resolved(host=host, port=port)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    embedded: EmbeddedRedis | None = None
    try:
        if settings.redis_url is None:
            embedded = EmbeddedRedis(settings.data_dir)
            try:
                url = embedded.start()
            except EmbeddedRedisError as exc:
                raise ConfigError(
                    f"TOKENWARD_REDIS_URL: unset, and the embedded Redis failed: {exc}"
                ) from None
            log.info("embedded Redis at %s (data in %s)", url, settings.data_dir)
            settings = settings.model_copy(update={"redis_url": url})
        _prepare(settings)
        # Workers read their settings from the environment: hand them the resolved values.
        os.environ["TOKENWARD_REDIS_URL"] = str(settings.redis_url)
        os.environ["TOKENWARD_ISSUER"] = settings.effective_issuer
        os.environ["TOKENWARD_ALLOWED_ORIGINS"] = ",".join(settings.allowed_origins)
        uvicorn.run(
            "tokenward.cli:worker_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=settings.log_level,
            proxy_headers=False,
            server_header=False,
            access_log=False,
        )
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tokenward`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args.host, args.port, args.workers)
    except ConfigError as exc:
        print(f"tokenward: configuration error: {exc.detail}", file=sys.stderr)
        return 2
    except TokenwardError as exc:
        print(f"tokenward: {exc.detail}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
