"""The administrative commands of :mod:`tokenward.cli`: ``users``, ``sessions``, ``db`` and
``keys``, their data-directory check and their output (text or ``--json``).

What the commands do lives in :mod:`tokenward.admin` (no printing there).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

from tokenward.cli import EXIT_OK, UsageError
from tokenward.errors import TokenwardError
from tokenward.settings import Settings

__all__ = ["ASYNC_COMMANDS", "check_data_dir", "keys_command", "mail_command", "whereabouts"]


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
        "email_verified": user.email_verified,
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
        elif args.action == "verify":
            user = await admin.find_user(tw, args.user)
            await tw.email_flows.mark_verified(user, now=tw.clock.now())
            await tw.profile_changed(user.id)  # the running servers show it at once
            _emit(
                args,
                {"user": _user_json(user) | {"email_verified": True}},
                f"verified the address of user {user.id} <{user.email}>",
            )
        elif args.action == "reset-link":
            user = await admin.find_user(tw, args.user)
            if user.disabled:
                raise TokenwardError(f"user {user.id} is disabled: enable it first")
            link = await tw.email_flows.reset_link(user)
            _emit(args, {"user": _user_json(user), "link": link, "expires_in": 1800}, link)
        elif args.action == "reset-mfa":
            user, removed, ended = await admin.reset_mfa(tw, args.user)
            _emit(
                args,
                {"user": _user_json(user), "factors_removed": removed, "sessions_ended": ended},
                f"reset second factors of user {user.id} <{user.email}>: removed {removed} "
                f"factor(s), ended {len(ended)} session(s)",
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


def keys_command(args: argparse.Namespace, settings: Settings) -> int:
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


def mail_command(args: argparse.Namespace, settings: Settings) -> int:
    """``tokenward mail list|show``: the development outbox of the data directory."""
    from email.message import EmailMessage

    from tokenward.mail import Outbox

    outbox = Outbox(settings.data_dir / "outbox")
    if args.action == "list":
        entries = outbox.list()
        data = [{"id": e.id, "at": _time(e.at), "to": e.to, "subject": e.subject} for e in entries]
        rows = [["ID", "AT", "TO", "SUBJECT"]] + [
            [d["id"], d["at"], d["to"], d["subject"]] for d in data
        ]
        note = "" if settings.smtp_url is None else "\n(TOKENWARD_SMTP_URL is set: mail goes there)"
        _emit(args, data, _table(rows) + note)
        return EXIT_OK
    message = outbox.show(args.id)

    def part(kind: str) -> str:
        body = message.get_body(preferencelist=(kind,))
        return body.get_content() if isinstance(body, EmailMessage) else ""

    headers = {name: str(message[name] or "") for name in ("From", "To", "Subject", "Date")}
    text = part("plain")
    _emit(
        args,
        {"headers": headers, "text": text, "html": part("html")},
        "\n".join(f"{k}: {v}" for k, v in headers.items() if v) + "\n\n" + text,
    )
    return EXIT_OK


def _needs_data_dir(settings: Settings) -> bool:
    """Whether anything of the deployment lives in the data directory."""
    return (
        settings.redis_url is None
        or settings.database_url is None
        or (settings.signing_keys is None)
    )


def check_data_dir(settings: Settings, *, create: bool) -> None:
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


def whereabouts(settings: Settings) -> str:
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


ASYNC_COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]] = {
    "users": _users,
    "sessions": _sessions,
    "db": _db,
}
