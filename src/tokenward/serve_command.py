"""The ``tokenward serve`` command: one-time start-up work, then uvicorn (or granian) with N
workers.

The supervising process does the one-time work (embedded Redis, keys, migrations) before any
worker starts, so workers never race on it; each worker builds its app from the environment
(:func:`worker_app`) and dies with the supervisor. Parsing and exit codes: :mod:`tokenward.cli`.
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
import os
import shutil
import signal
import tempfile
import threading
from typing import Any

from tokenward.cli import EXIT_OK, CannotListen
from tokenward.errors import ConfigError
from tokenward.settings import Settings, load_settings

__all__ = ["SUPERVISOR_PID_ENV", "log_config", "serve", "worker_app"]

log = logging.getLogger("tokenward")

#: The supervisor's pid, for its workers (:func:`worker_app`); not a ``TOKENWARD_`` setting.
SUPERVISOR_PID_ENV = "_TOKENWARD_SUPERVISOR_PID"


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
    """The ASGI app of one worker process (``uvicorn --factory``), configured by environment.

    A worker of ``serve --workers N`` dies with its supervisor (:mod:`tokenward.lifeline`):
    an orphan would keep the port, answer ``/healthz`` and fail the restart.
    """
    from tokenward.http.app import create_app
    from tokenward.runtime import Tokenward

    supervisor = os.environ.get(SUPERVISOR_PID_ENV)
    if supervisor is not None:
        from tokenward.lifeline import die_with_parent

        if not die_with_parent(int(supervisor)):
            raise SystemExit("tokenward: the supervising process exited; worker not started")

    return create_app(Tokenward(load_settings(), migrate=False), freeze_gc=True)


def log_config(level: str) -> dict[str, Any]:
    """``logging.config`` for the server: JSON lines on stderr for Tokenward and the server
    (uvicorn or granian).

    Given to the server too, which applies it in every worker process it spawns.
    """
    handler = {"handlers": ["json"], "level": level.upper(), "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "tokenward.logs.JsonFormatter"}},
        "handlers": {
            "json": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "tokenward": handler,
            "uvicorn": handler,
            "_granian": handler,
            "granian.access": handler,
        },
    }


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM is how servers are stopped: unwind through the clean-up and exit 0.

    uvicorn re-raises the signal it caught once it has shut down; with the default handler
    that kills the process before ``serve`` stops the embedded Redis and removes its files.
    """
    raise SystemExit(EXIT_OK)


def serve(
    host: str,
    port: int,
    workers: int,
    metrics_port: int | None = None,
    metrics_host: str | None = None,
    server: str | None = None,
) -> int:
    """Run the server until interrupted; returns the exit status.

    ``server`` is ``uvicorn`` or ``granian`` (``TOKENWARD_SERVER`` when not given); see
    :mod:`tokenward.http.server` for what each enforces.

    ``/metrics`` is served on ``metrics_host:metrics_port`` (the settings' when not given)
    by every worker (:mod:`tokenward.http.metrics_listener`). The public port is bound and
    the metrics port checked free here, before any start-up work: a port in use is
    :class:`CannotListen`. Connection limits: :mod:`tokenward.http.server`.
    """
    from tokenward.http import server as http_server
    from tokenward.stores.embedded_redis import EmbeddedRedis, EmbeddedRedisError

    if not 1 <= port <= 65535:
        raise ConfigError(f"--port: must be 1-65535 (got {port})")
    if workers < 1:
        raise ConfigError(f"--workers: must be at least 1 (got {workers})")
    settings = load_settings().resolved(host=host, port=port)
    server = server or settings.server
    if server not in http_server.SERVERS:
        raise ConfigError(f"--server: must be one of {', '.join(http_server.SERVERS)}")
    metrics_port = metrics_port if metrics_port is not None else settings.metrics_port
    metrics_host = metrics_host or settings.metrics_host
    if metrics_port is not None:
        from tokenward.http.metrics_listener import check_port_free

        if not 1 <= metrics_port <= 65535 or metrics_port == port:
            raise ConfigError(
                f"--metrics-port: must be 1-65535 and not --port (got {metrics_port})"
            )
        try:
            check_port_free(metrics_host, metrics_port)
        except OSError as exc:
            raise CannotListen(metrics_host, metrics_port, exc) from None
        # Workers read their settings from the environment.
        os.environ["TOKENWARD_METRICS_PORT"] = str(metrics_port)
        os.environ["TOKENWARD_METRICS_HOST"] = metrics_host
    try:
        listener = http_server.bind_listener(host, port)
    except OSError as exc:
        raise CannotListen(host, port, exc) from None
    if server == "granian":
        # Granian binds the port in each worker (SO_REUSEPORT): the check must let go.
        listener.close()
    logging.config.dictConfig(log_config(settings.log_level))
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    embedded: EmbeddedRedis | None = None
    metrics_dir: str | None = None
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
        if workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            # Several processes: prometheus_client's multiprocess mode, one fresh directory
            # per run (stale files would add a previous run's counts). See docs/deployment.md.
            metrics_dir = tempfile.mkdtemp(prefix="tokenward-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        if workers > 1 or server == "granian":  # granian always runs worker processes
            os.environ[SUPERVISOR_PID_ENV] = str(os.getpid())
        limits = http_server.ConnectionLimits(
            idle_timeout=settings.idle_timeout,
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            max_connections=http_server.fit_open_files(settings.max_connections),
        )
        if server == "granian":
            http_server.run_granian(
                "tokenward.serve_command:worker_app",
                host=host,
                port=port,
                workers=workers,
                limits=limits,
                log_level=settings.log_level,
                log_config=log_config(settings.log_level),
            )
            return EXIT_OK
        config = http_server.ServerConfig(
            "tokenward.serve_command:worker_app",
            limits=limits,
            factory=True,
            host=host,
            port=port,
            workers=workers,
            ws="none",
            log_level=settings.log_level,
            log_config=log_config(settings.log_level),
            proxy_headers=False,
            server_header=False,
            access_log=False,
        )
        http_server.run(config, listener)
    finally:
        listener.close()
        os.environ.pop(SUPERVISOR_PID_ENV, None)
        if metrics_port is not None:
            os.environ.pop("TOKENWARD_METRICS_PORT", None)
            os.environ.pop("TOKENWARD_METRICS_HOST", None)
        if metrics_dir is not None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            shutil.rmtree(metrics_dir, ignore_errors=True)
        if embedded is not None:
            embedded.stop()
    return EXIT_OK
