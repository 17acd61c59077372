"""The SMTP sender over TLS, with authentication, against a real aiosmtpd server: STARTTLS
(``smtp://``) and implicit TLS (``smtps://``), the certificate verified (a test CA, trusted
through ``SSL_CERT_FILE``), the credentials of the URL checked by the server."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from aiosmtplib import SMTPException
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ports import free_port
from tokenward.mail import Mail
from tokenward.mail_smtp import SmtpConfig, SmtpSender

USER, PASSWORD = "mailer", "s3cret p@ss"


def _certificate(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA): (cert, key) PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class _Server:
    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.logins: list[tuple[str, str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append(envelope.content)
        return "250 OK"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        login = (data.login.decode(), data.password.decode())
        self.logins.append(login)
        return AuthResult(success=login == (USER, PASSWORD))


@pytest.fixture
def tls_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    cert, key = _certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client trusts the test CA
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def _mail() -> EmailMessage:
    mail = Mail("to@example.com", "hello", "text body", "<p>html body</p>", "verify_email")
    return mail.message("from@example.com", now=1_800_000_000)


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit-tls"])
async def test_tls_and_authentication(tls_files: ssl.SSLContext, implicit: bool) -> None:
    handler = _Server()
    port = free_port()
    common: dict[str, Any] = {
        "authenticator": handler.authenticate,
        "auth_required": True,
        "auth_require_tls": True,
    }
    if implicit:
        # aiosmtpd does not count implicit TLS as TLS for its AUTH rule; it is TLS all along.
        common["auth_require_tls"] = False
        controller = Controller(
            handler, hostname="127.0.0.1", port=port, ssl_context=tls_files, **common
        )
        url = f"smtps://{USER}:s3cret%20p%40ss@127.0.0.1:{port}"
    else:
        controller = Controller(
            handler,
            hostname="127.0.0.1",
            port=port,
            tls_context=tls_files,
            require_starttls=True,
            **common,
        )
        url = f"smtp://{USER}:s3cret%20p%40ss@127.0.0.1:{port}"
    controller.start()
    try:
        await SmtpSender(SmtpConfig.from_url(url, timeout=5)).send(_mail(), now=0)
        assert handler.logins == [(USER, PASSWORD)]
        assert len(handler.messages) == 1
        assert b"text body" in handler.messages[0]
        wrong = url.replace("s3cret%20p%40ss", "wrong")
        # Refused (aiosmtpd answers a failed AUTH slowly: a time-out is a refusal too).
        with pytest.raises(SMTPException):
            await SmtpSender(SmtpConfig.from_url(wrong, timeout=2)).send(_mail(), now=0)
        assert handler.logins[-1] == (USER, "wrong")
        assert len(handler.messages) == 1
    finally:
        controller.stop()


async def test_starttls_is_required_not_optional(tmp_path: Path) -> None:
    """``smtp://`` to a server that offers no STARTTLS fails (and the queue would retry):
    never a silent fall back to plain text."""
    handler = _Server()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        sender = SmtpSender(SmtpConfig.from_url(f"smtp://127.0.0.1:{port}", timeout=5))
        with pytest.raises(SMTPException, match=r"(?i)starttls|tls"):
            await sender.send(_mail(), now=0)
        assert handler.messages == []
    finally:
        controller.stop()
