"""Delivery: a slow or unreachable mail server never blocks or fails a request, failed sends
are retried a bounded number of times, notices follow security events (each can be turned
off), and the development outbox with its CLI."""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path

import httpx
import pytest
from mail_support import BEARER, MakeMailTw, SmtpInbox, isolated_client, link_of, settled, text_of

from ports import free_port
from tokenward.clock import FrozenClock
from tokenward.mail_smtp import SmtpConfig
from tokenward.runtime import Tokenward
from tokenward.settings import load_settings
from tw_accounts import PASSWORD, new_email

NEW_DEVICE = "New sign-in to your account"


async def _register(client: httpx.AsyncClient, email: str) -> None:
    r = await client.post("/auth/register", json={"email": email, "password": PASSWORD})
    assert r.status_code == 201, r.text


async def _login(
    client: httpx.AsyncClient, email: str, agent: str = "test-agent"
) -> dict[str, str]:
    r = await client.post(
        "/auth/login",
        json={"email": email, "password": PASSWORD},
        headers={**BEARER, "User-Agent": agent},
    )
    assert r.status_code == 200, r.text
    body: dict[str, str] = r.json()
    return body


# ------------------------------------------------------------------- a bad mail server


async def test_a_stalled_mail_server_blocks_no_request(
    client: httpx.AsyncClient, smtp: SmtpInbox, tw: Tokenward
) -> None:
    """The server hangs on every message: registration, login and forgot still answer at
    once; the mails arrive when it recovers."""
    smtp.stall = threading.Event()
    email = new_email()
    await _register(client, email)
    await _login(client, email)
    r = await client.post("/auth/password/forgot", json={"email": email})
    assert r.status_code == 202
    assert smtp.to(email) == []
    smtp.stall.set()
    mails = await smtp.wait_for(email, 2)
    assert {m["Subject"] for m in mails} == {"Confirm your e-mail address", "Reset your password"}


async def test_a_refusing_server_gets_the_mail_on_a_retry(
    client: httpx.AsyncClient, smtp: SmtpInbox, tw: Tokenward
) -> None:
    """Two ``451`` answers, then the third attempt is delivered."""
    smtp.refuse_next = 2
    email = new_email()
    await _register(client, email)
    await smtp.wait_for(email)
    await settled(tw)
    assert smtp.attempts == 3
    assert tw.mailer.sent == 1


async def test_an_unreachable_server_fails_no_login_and_retries_boundedly(
    mail_tw: MakeMailTw, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing listens at TOKENWARD_SMTP_URL: registration and login succeed; the mail is
    tried 1 + len(retry_delays) times, then given up (logged, without the link)."""
    tw = await mail_tw(smtp_url=f"smtp://127.0.0.1:{free_port()}?starttls=off", smtp_timeout=1)
    caplog.set_level(logging.INFO, logger="tokenward.mail")
    async with isolated_client(tw) as client:
        email = new_email()
        await _register(client, email)
        await _login(client, email)
    await settled(tw)
    assert tw.mailer.dropped == 1
    assert tw.mailer.sent == 0
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == len(tw.mailer.retry_delays)
    assert any("given up" in r.getMessage() for r in caplog.records)
    assert "token=" not in caplog.text


# --------------------------------------------------------------------------- notices


async def test_a_new_device_is_announced_once_the_account_is_older_than_an_hour(
    client: httpx.AsyncClient, smtp: SmtpInbox, tw: Tokenward
) -> None:
    email = new_email()
    await _register(client, email)
    await _login(client, email, "first-device")
    await settled(tw)
    assert [m for m in smtp.to(email) if m["Subject"] == NEW_DEVICE] == []
    assert isinstance(tw.clock, FrozenClock)
    tw.clock.advance(2 * 3600)
    await _login(client, email, "Mozilla/5.0 (iPhone) second-device")
    await _login(client, email, "Mozilla/5.0 (iPhone) second-device")  # known now: no mail
    await settled(tw)
    notices = [m for m in smtp.to(email) if m["Subject"] == NEW_DEVICE]
    assert len(notices) == 1
    assert "second-device" in text_of(notices[0])


async def test_password_change_and_refresh_reuse_are_announced(
    client: httpx.AsyncClient, smtp: SmtpInbox, tw: Tokenward
) -> None:
    email = new_email()
    await _register(client, email)
    login = await _login(client, email)
    first = await client.post(
        "/auth/refresh", json={"refresh_token": login["refresh_token"]}, headers=BEARER
    )
    assert first.status_code == 200
    assert isinstance(tw.clock, FrozenClock)
    tw.clock.advance(tw.settings.refresh_grace + 1)
    stolen = await client.post(
        "/auth/refresh", json={"refresh_token": login["refresh_token"]}, headers=BEARER
    )
    assert stolen.status_code == 401
    again = await _login(client, email)
    r = await client.post(
        "/auth/password",
        json={"current_password": PASSWORD, "new_password": "plum orchard 31 harbour"},
        headers={"Authorization": f"Bearer {again['access_token']}", **BEARER},
    )
    assert r.status_code == 200, r.text
    await settled(tw)
    subjects = [str(m["Subject"]) for m in smtp.to(email)]
    assert "Your password was changed" in subjects
    assert any("its sign-in was copied" in s for s in subjects)


async def test_each_notice_can_be_turned_off(mail_tw: MakeMailTw, smtp: SmtpInbox) -> None:
    tw = await mail_tw(
        notify_new_device="false",
        notify_password_changed="false",
        notify_refresh_reused="false",
        notify_email_changed="false",
    )
    async with isolated_client(tw) as client:
        email = new_email()
        await _register(client, email)
        assert isinstance(tw.clock, FrozenClock)
        tw.clock.advance(2 * 3600)
        login = await _login(client, email, "elsewhere")
        auth = {"Authorization": f"Bearer {login['access_token']}"}
        r = await client.post(
            "/auth/password",
            json={"current_password": PASSWORD, "new_password": "plum orchard 31 harbour"},
            headers={**auth, **BEARER},
        )
        assert r.status_code == 200
        auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
        new = new_email()
        r = await client.post(
            "/auth/email/change",
            json={"new_email": new, "password": "plum orchard 31 harbour"},
            headers=auth,
        )
        assert r.status_code == 202
        _, token = link_of((await smtp.wait_for(new))[0])
        assert (
            await client.post("/auth/email/change/confirm", json={"token": token})
        ).status_code == 200
    await settled(tw)
    # Only what was asked for: the verification link and the change link.
    assert [str(m["Subject"]) for m in smtp.to(email)] == ["Confirm your e-mail address"]
    assert [str(m["Subject"]) for m in smtp.to(new)] == ["Confirm your new e-mail address"]


# --------------------------------------------------------------------- configuration


def test_smtp_urls() -> None:
    assert SmtpConfig.from_url("smtps://u:p%40ss@mail.example.com", timeout=3).port == 465
    c = SmtpConfig.from_url("smtp://mail.example.com", timeout=3)
    assert (c.tls, c.port, c.username) == ("starttls", 587, None)
    c = SmtpConfig.from_url("smtp://u:p%40ss@127.0.0.1:2525?starttls=off", timeout=3)
    assert (c.tls, c.password) == ("off", "p@ss")
    assert "p@ss" not in repr(c)
    for bad in (
        "http://mail.example.com",
        "smtp://",
        "smtp://mail.example.com?starttls=off",
        "smtps://mail.example.com?starttls=on",
        "smtp://mail.example.com?tls=1",
        "smtp://mail.example.com/path",
        "smtp://mail.example.com:99999",
    ):
        with pytest.raises(Exception, match="TOKENWARD_SMTP_URL") as caught:
            load_settings({"TOKENWARD_SMTP_URL": bad}, env_file=Path("/nonexistent.env"))
        assert "p@ss" not in str(caught.value)
    masked = repr(load_settings({"TOKENWARD_SMTP_URL": "smtps://u:secret@m.example.com"},
                                env_file=Path("/nonexistent.env")))  # fmt: skip
    assert "secret" not in masked


# --------------------------------------------------------------------------- outbox


async def test_without_smtp_mail_goes_to_the_outbox_and_the_cli_reads_it(
    mail_tw: MakeMailTw, caplog: pytest.LogCaptureFixture
) -> None:
    """No TOKENWARD_SMTP_URL: each mail is a 0600 file in <data dir>/outbox, logged as
    "mail written to the outbox" (never the token). The CLI that reads it:
    tests/ops/test_cli_email.py."""
    caplog.set_level(logging.INFO, logger="tokenward.mail")
    tw = await mail_tw(smtp_url=None)
    async with isolated_client(tw) as client:
        email = new_email()
        await _register(client, email)
    await settled(tw)
    outbox = tw.settings.data_dir / "outbox"
    [path] = list(outbox.glob("*.eml"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(outbox).st_mode) == 0o700
    assert "mail written to the outbox" in caplog.text
    [entry] = tw.outbox.list()
    assert entry.to == email
    _, token = link_of(tw.outbox.show(entry.id))
    assert token not in caplog.text


async def test_a_deployment_overrides_templates_file_by_file(
    mail_tw: MakeMailTw, smtp: SmtpInbox, tmp_path: Path
) -> None:
    """A ``.subject`` in TOKENWARD_MAIL_TEMPLATES_DIR replaces the built-in one; the bodies
    not overridden stay built-in; values are HTML-escaped in the HTML body."""
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "verify_email.subject").write_text("Welcome to Example, $email\n")
    (templates / "verify_email.html").write_text("<p>Hi <b>$email</b>: <a href='$link'>go</a></p>")
    tw = await mail_tw(mail_templates_dir=str(templates))
    async with isolated_client(tw) as client:
        email = "o'brien+" + new_email()
        await _register(client, email)
    [mail] = await smtp.wait_for(email)
    assert mail["Subject"] == f"Welcome to Example, {email}"
    assert "please confirm that" in text_of(mail)
    link_of(mail)
    from mail_support import html_of

    assert "o&#x27;brien" in html_of(mail)


def test_a_missing_templates_directory_is_a_configuration_error(tmp_path: Path) -> None:
    from tokenward.errors import ConfigError
    from tokenward.mail import Templates

    with pytest.raises(ConfigError, match="TOKENWARD_MAIL_TEMPLATES_DIR"):
        Templates(tmp_path / "missing")
    with pytest.raises(ConfigError, match="no mail template"):
        Templates().render("nope", "a@example.com", {})
