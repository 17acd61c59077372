"""The ``tokenward`` command.

``tokenward serve [--host 127.0.0.1] [--port 8000] [--workers N] [--metrics-port N]`` runs
the HTTP server (``/metrics`` only on the metrics port, loopback by default).
With no configuration it starts an embedded Redis and an SQLite database in the data
directory and generates signing keys there. The supervising process does the one-time work
(embedded Redis, keys, migrations) before any worker starts, so workers never race on it.

Administration, from the same settings (``TOKENWARD_*``, ``.env``)::

    tokenward users create EMAIL          password from stdin, or prompted (never argv)
    tokenward users list [--limit N] [--offset N]
    tokenward users disable|enable USER   USER: an email or an id; disable ends all sessions
    tokenward users collisions            accounts whose email folds onto an older one's
    tokenward sessions list --user USER
    tokenward sessions revoke --user USER [--session ID]
    tokenward db upgrade
    tokenward keys list
    tokenward keys rotate [--alg EdDSA|ES256] [--activate-in SECONDS]

Every administrative command takes ``--json`` for scripts, ``--data-dir DIR`` (else
``TOKENWARD_DATA_DIR``, else ``./.tokenward``), and ``--create-data-dir``: a command refuses
a data directory that does not exist unless asked to make it, and first prints on stderr
which data directory, databases and key file it uses. ``tokenward --version``.

Exit codes: 0 done; 1 the operation failed (no such user or session, email taken,
password refused); 2 usage or configuration error; 3 a back end (Redis, the database) is
unavailable; 4 ``serve`` cannot listen on its address or metrics address (the port is in use,
or the address is not this host's or not allowed), said in one line.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import logging.config
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

from tokenward.errors import ConfigError, TokenwardError, Unavailable
from tokenward.settings import Settings, load_settings

__all__ = [
    "EXIT_CANNOT_LISTEN",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "main",
]

log = logging.getLogger("tokenward")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_CANNOT_LISTEN = 4

#: The supervisor's pid, for its workers (:func:`worker_app`); not a ``TOKENWARD_`` setting.
SUPERVISOR_PID_ENV = "_TOKENWARD_SUPERVISOR_PID"


class UsageError(Exception):
    """A command was used wrongly; exits with :data:`EXIT_USAGE`."""


class CannotListen(Exception):
    """``serve`` cannot bind an address; exits with :data:`EXIT_CANNOT_LISTEN`."""

    def __init__(self, host: str, port: int, exc: OSError) -> None:
        reason = (exc.strerror or str(exc)).lower()
        where = f"[{host}]" if ":" in host else host
        super().__init__(f"cannot listen on {where}:{port}: {reason}")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tokenward")
    except PackageNotFoundError:  # a source tree on sys.path, not installed
        from tokenward import __version__

        return __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenward",
        description="Tokenward authentication service",
        epilog="exit codes: 0 ok, 1 operation failed, 2 usage or configuration error, "
        "3 back end unavailable, 4 serve cannot listen (port in use)",
    )
    parser.add_argument("--version", action="version", version=f"tokenward {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP server")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.add_argument(
        "--metrics-port",
        type=int,
        help="serve /metrics on this port of --metrics-host, not on the public port "
        "(default TOKENWARD_METRICS_PORT; unset: no metrics listener)",
    )
    serve.add_argument(
        "--metrics-host",
        help="address of the metrics listener (default TOKENWARD_METRICS_HOST, 127.0.0.1)",
    )

    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    out.add_argument(
        "--data-dir",
        metavar="DIR",
        help="the deployment's data directory (default TOKENWARD_DATA_DIR, ./.tokenward)",
    )
    out.add_argument(
        "--create-data-dir",
        action="store_true",
        help="make the data directory if it does not exist (refused otherwise: a command "
        "run from the wrong directory would silently start an empty deployment)",
    )

    users = commands.add_parser("users", help="manage users").add_subparsers(
        dest="action", required=True
    )
    create = users.add_parser(
        "create", parents=[out], help="create a user; the password is read from stdin"
    )
    create.add_argument("email")
    listing = users.add_parser("list", parents=[out], help="list users, oldest first")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    listing.add_argument("--offset", type=int, default=0, help="skip this many (default 0)")
    users.add_parser(
        "collisions", parents=[out], help="accounts that cannot log in by email (migration 0002)"
    )
    for action, text in (
        ("disable", "refuse the user's logins and end all their sessions now"),
        ("enable", "allow a disabled user to log in again"),
    ):
        users.add_parser(action, parents=[out], help=text).add_argument(
            "user", help="email address or user id"
        )

    sessions = commands.add_parser("sessions", help="manage sessions").add_subparsers(
        dest="action", required=True
    )
    s_list = sessions.add_parser("list", parents=[out], help="a user's live sessions")
    s_revoke = sessions.add_parser("revoke", parents=[out], help="end a user's sessions")
    for sub in (s_list, s_revoke):
        sub.add_argument("--user", required=True, help="email address or user id")
    s_revoke.add_argument("--session", help="end only this session (default: all)")

    db = commands.add_parser("db", help="manage the user database").add_subparsers(
        dest="action", required=True
    )
    db.add_parser("upgrade", parents=[out], help="apply pending migrations")

    keys = commands.add_parser("keys", help="manage signing keys").add_subparsers(
        dest="action", required=True
    )
    keys.add_parser("list", parents=[out], help="the keys of the key file and their state")
    rotate = keys.add_parser(
        "rotate", parents=[out], help="add a new signing key and retire the current one"
    )
    rotate.add_argument(
        "--alg", choices=["EdDSA", "ES256"], help="the new key's algorithm (TOKENWARD_SIGNING_ALG)"
    )
    rotate.add_argument(
        "--activate-in",
        type=int,
        metavar="SECONDS",
        help="seconds until the new key signs (default: JWKS max-age + reload interval)",
    )
    return parser


# -- serve ------------------------------------------------------------------------------------


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

    return create_app(Tokenward(load_settings(), migrate=False))


def log_config(level: str) -> dict[str, Any]:
    """``logging.config`` for the server: JSON lines on stderr for Tokenward and uvicorn.

    Given to uvicorn too, which applies it in every worker process it spawns.
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
        "loggers": {"tokenward": handler, "uvicorn": handler},
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
) -> int:
    """Run the server until interrupted; returns the exit status.

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
        if workers > 1:
            os.environ[SUPERVISOR_PID_ENV] = str(os.getpid())
        limits = http_server.ConnectionLimits(
            idle_timeout=settings.idle_timeout,
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            max_connections=http_server.fit_open_files(settings.max_connections),
        )
        config = http_server.ServerConfig(
            "tokenward.cli:worker_app",
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


# -- administration ---------------------------------------------------------------------------


def _time(epoch: int | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


def _table(rows: Sequence[Sequence[object]]) -> str:
    """Aligned columns; ``None`` shows as ``-``."""
    cells = [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def _read_password() -> str:
    """The new user's password: prompted twice on a terminal, else one line of stdin."""
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != first:
            raise UsageError("the passwords do not match")
        return first
    line = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not line:
        # An empty stdin is a scripting mistake, not a weak password: say what to send.
        raise UsageError(
            "no password on standard input: send it as one line, e.g. "
            "printf '%s\\n' \"$PASSWORD\" | tokenward users create EMAIL"
        )
    return line


def _user_json(user: Any) -> dict[str, Any]:
    return {
        "id": user.id,
        "email": user.email,
        "created_at": _time(user.created_at),
        "disabled": user.disabled,
    }


async def _users(args: argparse.Namespace, settings: Settings) -> int:
    from tokenward import admin

    password = _read_password() if args.action == "create" else ""
    if args.action == "list" and (args.limit < 1 or args.offset < 0):
        raise UsageError("--limit must be at least 1 and --offset at least 0")
    async with admin.admin_runtime(settings) as tw:
        if args.action == "create":
            user = await admin.create_user(tw, args.email, password)
            _emit(args, _user_json(user), f"created user {user.id} <{user.email}>")
        elif args.action == "list":
            users = await admin.list_users(tw, limit=args.limit, offset=args.offset)
            rows = [["ID", "EMAIL", "CREATED", "DISABLED"]] + [
                [u.id, u.email, _time(u.created_at), "yes" if u.disabled else "no"] for u in users
            ]
            _emit(args, [_user_json(u) for u in users], _table(rows))
        elif args.action == "collisions":
            found = await admin.email_collisions(tw)
            rows = [["ID", "EMAIL", "CREATED", "KEY HELD BY"]] + [
                [c.user.id, c.user.email, _time(c.user.created_at), c.holder.id if c.holder else ""]
                for c in found
            ]
            data = [
                _user_json(c.user) | {"key_held_by": _user_json(c.holder) if c.holder else None}
                for c in found
            ]
            _emit(args, data, _table(rows))
        elif args.action == "disable":
            user, ended = await admin.disable_user(tw, args.user)
            _emit(
                args,
                {"user": _user_json(user) | {"disabled": True}, "sessions_ended": ended},
                f"disabled user {user.id} <{user.email}>; ended {len(ended)} session(s)",
            )
        else:
            user = await admin.enable_user(tw, args.user)
            _emit(
                args,
                {"user": _user_json(user) | {"disabled": False}},
                f"enabled user {user.id} <{user.email}>",
            )
    return EXIT_OK


async def _sessions(args: argparse.Namespace, settings: Settings) -> int:
    from tokenward import admin

    async with admin.admin_runtime(settings) as tw:
        if args.action == "list":
            found = await admin.list_sessions(tw, args.user)
            data = [
                {
                    "id": r.sid,
                    "created_at": _time(r.created_at),
                    "last_used_at": _time(r.last_used_at),
                    "expires_at": _time(r.expires_at),
                    "ip": r.ip,
                    "user_agent": r.user_agent,
                }
                for r in found.sessions
            ]
            rows = [["ID", "CREATED", "LAST USED", "EXPIRES", "IP", "USER AGENT"]] + [
                [d["id"], d["created_at"], d["last_used_at"], d["expires_at"], d["ip"],
                 str(d["user_agent"])[:40]]
                for d in data
            ]  # fmt: skip
            _emit(args, {"user": _user_json(found.user), "sessions": data}, _table(rows))
        else:
            ended = await admin.revoke_sessions(tw, args.user, args.session)
            _emit(args, {"sessions_ended": ended}, f"ended {len(ended)} session(s)")
    return EXIT_OK


async def _db(args: argparse.Namespace, settings: Settings) -> int:
    from tokenward import admin

    revision = await admin.db_upgrade(settings)
    _emit(args, {"revision": revision}, f"database at revision {revision}")
    return EXIT_OK


def _keys(args: argparse.Namespace, settings: Settings) -> int:
    from tokenward import keyring
    from tokenward.clock import SystemClock
    from tokenward.keys import KeySet

    now = SystemClock().now()
    path = keyring.key_file_path(settings)
    retain = keyring.retain_seconds(settings)
    if args.action == "rotate":
        activate_in = args.activate_in
        if activate_in is None:
            activate_in = keyring.default_activation_delay(settings)
        elif activate_in < 0:
            raise UsageError("--activate-in must not be negative")
        done = keyring.rotate(
            path,
            alg=args.alg or settings.signing_alg,
            now=now,
            activate_in=activate_in,
            retain=retain,
        )
        _emit(
            args,
            {
                "kid": done.new.kid,
                "alg": done.new.alg,
                "activates_at": _time(done.activates_at),
                "retired": list(done.retired),
                "pruned": list(done.pruned),
                "file": str(path),
            },
            f"new key {done.new.kid} ({done.new.alg}) signs from {_time(done.activates_at)}; "
            f"retired {len(done.retired)}, pruned {len(done.pruned)}; running servers pick "
            f"it up within {settings.key_reload_interval} s",
        )
        return EXIT_OK
    if not path.exists():
        raise TokenwardError(
            f"no key file at {path} yet; `tokenward serve` or `tokenward keys rotate` creates it"
        )
    statuses = keyring.describe(KeySet.from_file(path), now=now, retain=retain)
    data = [
        {
            "kid": k.kid,
            "alg": k.alg,
            "state": k.state,
            "signing": k.signing,
            "created_at": _time(k.created_at),
            "active_from": _time(k.not_before),
            "retired_at": _time(k.retired_at),
        }
        for k in statuses
    ]
    rows = [["KID", "ALG", "STATE", "CREATED", "ACTIVE FROM", "RETIRED"]] + [
        [d["kid"], d["alg"], d["state"], d["created_at"], d["active_from"], d["retired_at"]]
        for d in data
    ]  # fmt: skip
    _emit(args, {"file": str(path), "keys": data}, _table(rows))
    return EXIT_OK


def _needs_data_dir(settings: Settings) -> bool:
    """Whether anything of the deployment lives in the data directory."""
    return (
        settings.redis_url is None
        or settings.database_url is None
        or (settings.signing_keys is None)
    )


def _check_data_dir(settings: Settings, *, create: bool) -> None:
    """Refuse to run against a data directory that does not exist, unless asked to make it.

    An operator who runs ``tokenward users disable`` from another directory would otherwise
    get a new, empty deployment ("no such user") while the real user stays signed in.
    """
    where = settings.data_dir.resolve()
    if create or not _needs_data_dir(settings) or where.is_dir():
        return
    raise UsageError(
        f"no data directory at {where}: run the command where the server runs, or pass "
        "--data-dir DIR (or set TOKENWARD_DATA_DIR); --create-data-dir makes a new one"
    )


def _whereabouts(settings: Settings) -> str:
    """One line naming what a command reads and writes, without any password."""
    from tokenward.keyring import key_file_path
    from tokenward.runtime import SQLITE_FILE
    from tokenward.settings import mask_url_password

    where = settings.data_dir.resolve()
    users = mask_url_password(settings.database_url or f"sqlite+aiosqlite:///{where / SQLITE_FILE}")
    sessions = (
        mask_url_password(settings.redis_url)
        if settings.redis_url is not None
        else f"the embedded Valkey of {where}"
    )
    return (
        f"data directory {where}; users {users}; sessions {sessions}; "
        f"keys {key_file_path(settings).resolve()}"
    )


_ASYNC_COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]] = {
    "users": _users,
    "sessions": _sessions,
    "db": _db,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tokenward`` console script; returns the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        if args.command == "serve":
            return serve(args.host, args.port, args.workers, args.metrics_port, args.metrics_host)
        env = dict(os.environ)
        if args.data_dir:
            env["TOKENWARD_DATA_DIR"] = args.data_dir
        settings = load_settings(env)
        _check_data_dir(settings, create=args.create_data_dir)
        print(f"tokenward: using {_whereabouts(settings)}", file=sys.stderr)
        # Commands print their result; only problems are logged (to stderr).
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        if args.command == "keys":
            return _keys(args, settings)
        return asyncio.run(_ASYNC_COMMANDS[args.command](args, settings))
    except CannotListen as exc:
        print(f"tokenward: {exc}", file=sys.stderr)
        return EXIT_CANNOT_LISTEN
    except (ConfigError, UsageError) as exc:
        message = exc.detail if isinstance(exc, ConfigError) else str(exc)
        kind = "configuration error" if isinstance(exc, ConfigError) else "usage error"
        print(f"tokenward: {kind}: {message}", file=sys.stderr)
        return EXIT_USAGE
    except Unavailable as exc:
        print(f"tokenward: unavailable: {exc.detail}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except TokenwardError as exc:
        print(f"tokenward: {exc.detail}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
