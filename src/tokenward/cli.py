"""The ``tokenward`` command.

``tokenward serve [--host 127.0.0.1] [--port 8000] [--workers N] [--metrics-port N]
[--server uvicorn|granian]`` runs the HTTP server (``/metrics`` only on the metrics port,
loopback by default).
With no configuration it starts an embedded Redis and an SQLite database in the data
directory and generates signing keys there. The supervising process does the one-time work
(embedded Redis, keys, migrations) before any worker starts, so workers never race on it.

Administration, from the same settings (``TOKENWARD_*``, ``.env``)::

    tokenward users create EMAIL          password from stdin, or prompted (never argv)
    tokenward users list [--limit N] [--offset N]
    tokenward users disable|enable USER   USER: an email or an id; disable ends all sessions
    tokenward users collisions            accounts whose email folds onto an older one's
    tokenward users verify USER           mark the user's e-mail address verified
    tokenward users reset-link USER       print a password reset link (for support staff)
    tokenward mail list                   the development outbox (no TOKENWARD_SMTP_URL)
    tokenward mail show ID|last           one mail of the outbox, as sent
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
import logging
import logging.config
import os
import sys
from collections.abc import Sequence

from tokenward.errors import ConfigError, TokenwardError, Unavailable

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
        "--server",
        choices=("uvicorn", "granian"),
        help="the HTTP server (default TOKENWARD_SERVER, uvicorn); granian costs less CPU "
        "per request but enforces fewer connection limits (docs/deployment.md)",
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
        ("verify", "mark the user's e-mail address verified"),
        (
            "reset-link",
            "print a password reset link for the user (valid 30 minutes, once; "
            "supersedes the user's earlier links)",
        ),
        (
            "reset-mfa",
            "remove the user's second factors and recovery codes and end all their sessions",
        ),
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

    mail = commands.add_parser(
        "mail", help="read the development outbox (mail when TOKENWARD_SMTP_URL is unset)"
    ).add_subparsers(dest="action", required=True)
    mail.add_parser("list", parents=[out], help="the mails of the outbox, oldest first")
    mail.add_parser("show", parents=[out], help="one mail of the outbox").add_argument(
        "id", help="a mail id of `tokenward mail list`, or `last`"
    )

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


#: Options whose value is an id that may begin with "-": a session id is random base64url
#: (1 in 64 starts with "-"), which argparse would take for an option.
_ID_OPTIONS = ("--session", "--user")


def _joined_ids(argv: Sequence[str]) -> list[str]:
    """``--session -x1`` as ``--session=-x1``, so that an id beginning with "-" works."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in _ID_OPTIONS and arg.startswith("-") and arg != "--":
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tokenward`` console script; returns the exit status."""
    try:
        args = _parser().parse_args(_joined_ids(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        try:
            from tokenward import admin_commands, serve_command
            from tokenward.settings import load_settings
        except ModuleNotFoundError as exc:
            # A base install is the token verifier: the command needs the server's packages.
            print(
                f"tokenward: the tokenward command needs the server extra ({exc.name} is not "
                "installed): pip install 'tokenward[server]'",
                file=sys.stderr,
            )
            return EXIT_USAGE
        if args.command == "serve":
            return serve_command.serve(
                args.host,
                args.port,
                args.workers,
                args.metrics_port,
                args.metrics_host,
                server=args.server,
            )
        env = dict(os.environ)
        if args.data_dir:
            env["TOKENWARD_DATA_DIR"] = args.data_dir
        settings = load_settings(env)
        admin_commands.check_data_dir(settings, create=args.create_data_dir)
        print(f"tokenward: using {admin_commands.whereabouts(settings)}", file=sys.stderr)
        # Commands print their result; only problems are logged (to stderr).
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        if args.command == "keys":
            return admin_commands.keys_command(args, settings)
        if args.command == "mail":
            return admin_commands.mail_command(args, settings)
        return asyncio.run(admin_commands.ASYNC_COMMANDS[args.command](args, settings))
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
    # `python -m tokenward.cli`: run the importable module's main, not this __main__ copy, so
    # the UsageError and CannotListen that the command modules raise are the ones caught.
    from tokenward.cli import main as _main

    sys.exit(_main())
