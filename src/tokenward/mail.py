"""Mail: messages from templates, and a queue that sends them off the request path.

A :class:`Mail` is rendered from a template (:class:`Templates`: a subject, a text and an
HTML body; a deployment overrides any of them with files in ``TOKENWARD_MAIL_TEMPLATES_DIR``)
and handed to :meth:`Mailer.submit`, which returns at once. A worker task sends the queued
mails through a :class:`MailSender`: the SMTP adapter (:mod:`tokenward.mail_smtp`) when
``TOKENWARD_SMTP_URL`` is set, else the :class:`Outbox`, files in the data directory that
``tokenward mail list|show`` reads (development).

Why a queue: a slow or unreachable mail server must never hold up or fail the request that
asked for a mail (a login that triggers a "new device" notice, a registration). The queue is
bounded (a full queue drops the mail and logs it), and a failed send is retried a bounded
number of times with growing pauses, then dropped and logged. Nothing here logs a mail's
body or a link: the bodies carry single-use tokens.

Framework-free: no web framework, no clock reads (times come from the caller).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formataddr, formatdate, make_msgid, parseaddr
from importlib import resources
from pathlib import Path
from string import Template
from typing import Protocol

from tokenward.errors import ConfigError, NotFound

__all__ = [
    "MAX_QUEUED",
    "RETRY_DELAYS",
    "TEMPLATE_NAMES",
    "Mail",
    "MailSender",
    "Mailer",
    "Outbox",
    "OutboxEntry",
    "Templates",
    "default_sender",
]

log = logging.getLogger("tokenward.mail")

#: Mails waiting to be sent; past it a new one is dropped (and the drop logged).
MAX_QUEUED = 1000
#: Pauses, in seconds, before each retry of a failed send: four attempts in all.
RETRY_DELAYS: tuple[float, ...] = (2.0, 10.0, 60.0)
#: The built-in templates (each has a ``.subject``, ``.txt`` and ``.html`` file).
TEMPLATE_NAMES = (
    "verify_email",
    "reset_password",
    "confirm_email_change",
    "notice_new_device",
    "notice_password_changed",
    "notice_password_reset",
    "notice_email_changed",
    "notice_refresh_reused",
    "notice_recovery_code_used",
)
_OUTBOX_ID = re.compile(r"[0-9]{10}-[0-9a-f]{16}")


@dataclass(frozen=True, slots=True)
class Mail:
    """One rendered mail. ``repr`` shows no body: bodies carry link tokens."""

    to: str
    subject: str
    text: str
    html: str
    #: the template it was made from (logs name it, never the body)
    template: str

    def __repr__(self) -> str:
        return f"Mail(template={self.template!r}, body=<hidden>)"

    def message(self, sender: str, *, now: int) -> EmailMessage:
        """The MIME message: ``multipart/alternative`` with the text, then the HTML body."""
        msg = EmailMessage(policy=SMTP)
        msg["Date"] = formatdate(now, usegmt=True)
        msg["From"] = sender
        msg["To"] = self.to
        msg["Subject"] = self.subject
        domain = parseaddr(sender)[1].rpartition("@")[2] or "localhost"
        msg["Message-ID"] = make_msgid(domain=domain)
        msg.set_content(self.text)
        msg.add_alternative(self.html, subtype="html")
        return msg


def default_sender(mail_from: str | None, issuer: str) -> str:
    """``TOKENWARD_MAIL_FROM``, or ``Tokenward <no-reply@issuer host>``.

    Raises:
        ConfigError: ``mail_from`` holds no address, or a line break (header injection).
    """
    if mail_from is None:
        host = re.sub(r"^[a-z]+://", "", issuer).split("/")[0].split(":")[0] or "localhost"
        return formataddr(("Tokenward", f"no-reply@{host}"))
    name, address = parseaddr(mail_from)
    if "\r" in mail_from or "\n" in mail_from or "@" not in address:
        raise ConfigError("TOKENWARD_MAIL_FROM: must be an address, e.g. Name <a@example.com>")
    return formataddr((name, address)) if name else address


class Templates:
    """The mail templates: the built-in ones, or a deployment's from ``directory``.

    A template is three files, ``<name>.subject`` (one line), ``<name>.txt`` and
    ``<name>.html``, with ``$placeholders`` (:class:`string.Template`). In the HTML body every
    value is HTML-escaped; in the subject, line breaks are removed. A file missing from
    ``directory`` falls back to the built-in one, so a deployment overrides only what it
    wants to.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self._cache: dict[str, str] = {}
        if directory is not None and not directory.is_dir():
            raise ConfigError(f"TOKENWARD_MAIL_TEMPLATES_DIR: {directory} is not a directory")

    def _source(self, filename: str) -> str:
        cached = self._cache.get(filename)
        if cached is not None:
            return cached
        text: str | None = None
        if self.directory is not None:
            path = self.directory / filename
            if path.is_file():
                text = path.read_text(encoding="utf-8")
        if text is None:
            text = (
                resources.files("tokenward")
                .joinpath("mail_templates", filename)
                .read_text(encoding="utf-8")
            )
        self._cache[filename] = text
        return text

    def render(self, name: str, to: str, values: Mapping[str, str]) -> Mail:
        """The mail ``name`` to ``to``, with ``values`` filled in.

        Raises:
            ConfigError: no such template, or it names a placeholder not given.
        """
        if name not in TEMPLATE_NAMES:
            raise ConfigError(f"no mail template {name!r}")
        try:
            subject = Template(self._source(f"{name}.subject")).substitute(values)
            text = Template(self._source(f"{name}.txt")).substitute(values)
            escaped = {key: html.escape(value) for key, value in values.items()}
            body = Template(self._source(f"{name}.html")).substitute(escaped)
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"mail template {name!r}: unknown placeholder {exc}") from None
        subject = " ".join(subject.split())
        return Mail(to=to, subject=subject, text=text, html=body, template=name)


class MailSender(Protocol):
    """Delivers one message, or raises (any exception: the queue retries)."""

    async def send(self, message: EmailMessage, *, now: int) -> None:
        """Hand ``message`` to the mail system."""
        ...


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One mail in the outbox."""

    id: str
    at: int
    to: str
    subject: str
    path: Path


class Outbox:
    """The development mail sink: one ``.eml`` file per mail in ``<data dir>/outbox``.

    The directory is 0700 and every file 0600 (mails carry link tokens). Used when no
    ``TOKENWARD_SMTP_URL`` is set; ``tokenward mail list|show`` reads it.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def send(self, message: EmailMessage, *, now: int) -> None:
        """Write ``message`` as ``<now>-<random>.eml``; logs that it did, never the body."""
        mail_id = f"{now:010d}-{secrets.token_hex(8)}"
        await asyncio.to_thread(self._write, mail_id, message.as_bytes())
        log.info("mail written to the outbox", extra={"mail_id": mail_id})

    def _write(self, mail_id: str, data: bytes) -> None:
        # 0700: the mails carry link tokens (the data directory itself is private too)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        path = self.directory / f"{mail_id}.eml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)

    def list(self) -> list[OutboxEntry]:
        """The mails, oldest first."""
        from email import message_from_bytes

        if not self.directory.is_dir():
            return []
        found = []
        for path in sorted(self.directory.glob("*.eml")):
            mail_id = path.stem
            if not _OUTBOX_ID.fullmatch(mail_id):
                continue
            parsed = message_from_bytes(path.read_bytes(), policy=SMTP)
            found.append(
                OutboxEntry(
                    id=mail_id,
                    at=int(mail_id.split("-")[0]),
                    to=str(parsed["To"] or ""),
                    subject=str(parsed["Subject"] or ""),
                    path=path,
                )
            )
        return found

    def show(self, mail_id: str) -> EmailMessage:
        """The mail ``mail_id`` (an id of :meth:`list`; ``last`` for the newest).

        Raises:
            NotFound: no such mail.
        """
        from email import message_from_bytes

        if mail_id == "last":
            entries = self.list()
            if not entries:
                raise NotFound("the outbox is empty")
            mail_id = entries[-1].id
        if not _OUTBOX_ID.fullmatch(mail_id):
            raise NotFound(f"no mail {mail_id!r} in the outbox")
        path = self.directory / f"{mail_id}.eml"
        if not path.is_file():
            raise NotFound(f"no mail {mail_id!r} in the outbox")
        parsed = message_from_bytes(path.read_bytes(), policy=SMTP)
        assert isinstance(parsed, EmailMessage)  # noqa: S101 - the SMTP policy makes one
        return parsed


@dataclass(slots=True)
class _Queued:
    mail: Mail
    attempts: int = 0


class Mailer:
    """Sends mails in the background: a bounded queue, one worker, bounded retries.

    Args:
        sender: where mails go.
        sender_address: the ``From`` header.
        now: the time source (seconds), for outbox names.
        max_queued: see :data:`MAX_QUEUED`.
        retry_delays: see :data:`RETRY_DELAYS`.
    """

    def __init__(
        self,
        sender: MailSender,
        sender_address: str,
        now: _Now,
        *,
        max_queued: int = MAX_QUEUED,
        retry_delays: Sequence[float] = RETRY_DELAYS,
    ) -> None:
        self.sender = sender
        self.sender_address = sender_address
        self.now = now
        self.retry_delays = tuple(retry_delays)
        self._queue: asyncio.Queue[_Queued] = asyncio.Queue(max_queued)
        self._worker: asyncio.Task[None] | None = None
        self._retries: set[asyncio.Task[None]] = set()
        #: counters for tests and metrics: mails sent, and mails given up on
        self.sent = 0
        self.dropped = 0

    def start(self) -> None:
        """Start the worker (in the running event loop)."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(
                self._work(), name="tokenward-mailer"
            )

    async def stop(self, *, wait: float) -> None:
        """Send what is queued for at most ``wait`` seconds, then stop (the rest is lost,
        and logged)."""
        if self._worker is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), wait)
        left = self._queue.qsize() + len(self._retries)
        for task in [self._worker, *self._retries]:
            task.cancel()
        await asyncio.gather(self._worker, *self._retries, return_exceptions=True)
        self._worker = None
        if left:
            log.warning("mailer stopped with %d mail(s) unsent", left)

    def submit(self, mail: Mail) -> bool:
        """Queue ``mail``; returns at once. ``False`` (and a warning) when the queue is full."""
        try:
            self._queue.put_nowait(_Queued(mail))
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("mail dropped: %d mails queued", self._queue.qsize(),
                        extra={"template": mail.template})  # fmt: skip
            return False
        return True

    async def idle(self) -> None:
        """Wait until every mail queued so far was sent or given up on (tests, shutdown)."""
        await self._queue.join()
        while self._retries:
            await asyncio.gather(*list(self._retries), return_exceptions=True)

    async def _work(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                await self._attempt(item)
            finally:
                self._queue.task_done()

    async def _attempt(self, item: _Queued) -> None:
        item.attempts += 1
        try:
            now = self.now()
            await self.sender.send(item.mail.message(self.sender_address, now=now), now=now)
        except Exception as exc:  # any failure of the mail system: retry, bounded
            # The type only: an SMTP error may quote the message back.
            if item.attempts > len(self.retry_delays):
                self.dropped += 1
                log.error(  # noqa: TRY400 - no traceback: it could carry the message
                    "mail not sent after %d attempts (%s); given up",
                    item.attempts,
                    type(exc).__name__,
                    extra={"template": item.mail.template},
                )
                return
            if len(self._retries) >= self._queue.maxsize:
                self.dropped += 1
                log.error("mail dropped: %d retries pending", len(self._retries),  # noqa: TRY400
                          extra={"template": item.mail.template})  # fmt: skip
                return
            delay = self.retry_delays[item.attempts - 1]
            log.warning(
                "mail not sent (%s); retrying in %s s",
                type(exc).__name__,
                delay,
                extra={"template": item.mail.template},
            )
            task = asyncio.get_running_loop().create_task(self._retry(item, delay))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)
            return
        self.sent += 1
        log.info("mail sent", extra={"template": item.mail.template})

    async def _retry(self, item: _Queued, delay: float) -> None:
        # A retry waits beside the queue, not in it: one unreachable server must not hold
        # up the mails behind it for minutes.
        await asyncio.sleep(delay)
        await self._attempt(item)


class _Now(Protocol):
    def __call__(self) -> int: ...
