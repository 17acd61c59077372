"""The verifier's trust in the issuer's keys: bounded in age, and fetched safely.

* **Max age.** The real Tokenward app serves its JWKS on a real socket; the server then goes
  away (a key withdrawn there meanwhile cannot reach the verifier). The verifier keeps its
  keys, retries with exponential backoff and jitter, and past ``max_stale`` refuses every
  token with ``KeysStale`` (503 ``jwks-stale``) until the issuer is back. Key ages are read
  from an injected monotonic timer the test moves on; nothing sleeps.
* **Fetch safety.** A raw HTTP/1.1 server on 127.0.0.1 misbehaves on purpose: it redirects
  (to its own origin, or to another one serving an attacker's keys), sends a huge body with
  or without ``Content-Length``, or drips its body a byte at a time. TLS is a real
  certificate of a private CA made here.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import itertools
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tokenward import AsyncVerifier, Verifier
from tokenward.errors import ConfigError, KeysStale, TokenInvalid, Unavailable
from tokenward.http.app import create_app
from tokenward.http.problems import render_error
from tokenward.jwks import tls_context
from tokenward.keys import KeySet, generate_key
from tokenward.metrics import VerifierCollector
from tokenward.runtime import Tokenward
from tokenward.tokens import AccessTokens
from tokenward.verifier import DEFAULT_MAX_LIFETIME
from waiting import await_until

ISSUER = "https://app.test"  # the integration fixtures' issuer (conftest.APP_ORIGIN)


class Monotonic:
    """A monotonic timer the test moves on."""

    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        return self.value


# -------------------------------------------------------- the real issuer, on a real socket


class IssuerServer:
    """Tokenward's own app served by uvicorn on a fixed port; can stop and start again."""

    def __init__(self, tw: Tokenward) -> None:
        self.app = create_app(tw, manage_lifespan=False)
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    @property
    def jwks_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/jwks.json"

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_config=None, lifespan="off", access_log=False)
        server = uvicorn.Server(config)
        self._server, self._sock = server, sock
        self._task = asyncio.create_task(server.serve(sockets=[sock]))
        await await_until(lambda: server.started, within=5.0, what="the issuer listens")

    async def stop(self) -> None:
        if self._server is None or self._task is None or self._sock is None:
            return
        self._server.should_exit = True
        await self._task
        self._sock.close()
        self._server = self._task = self._sock = None


@pytest.fixture
async def issuer(tw: Tokenward) -> AsyncIterator[IssuerServer]:
    server = IssuerServer(tw)
    await server.start()
    yield server
    await server.stop()


async def _settled(verifier: AsyncVerifier) -> None:
    """Wait until a background key refresh the last call started has finished."""
    await await_until(
        lambda: verifier._background is None, within=5.0, what="the key refresh finishes"
    )


async def test_keys_past_max_stale_fail_closed_until_the_issuer_is_back(
    tw: Tokenward, issuer: IssuerServer
) -> None:
    """Cut off from the issuer, the verifier trusts its keys for max_stale, then refuses."""
    timer = Monotonic()
    token, claims = tw.tokens.issue(sub="u1", sid="s1", now=tw.clock.now())
    verifier = AsyncVerifier(
        ISSUER, jwks_url=issuer.jwks_url, clock=tw.clock, monotonic=timer,
        keys_max_age=300, max_stale=3600,
    )  # fmt: skip
    collector = VerifierCollector(verifier)
    async with verifier:
        assert await verifier.verify(token) == claims
        await issuer.stop()  # the issuer goes away; whatever it withdraws now, we cannot learn
        timer.value += 301
        assert await verifier.verify(token) == claims  # stale keys are kept for a while...
        await _settled(verifier)
        assert verifier.stats.jwks_fetches_failed == 1
        while timer.value < 1000 + 3600:  # ...an hour of failed refreshes...
            timer.value = min(timer.value + 55, 1000 + 3600)
            assert await verifier.verify(token) == claims
            await _settled(verifier)
        assert 1 < verifier.stats.jwks_fetches_failed <= 60
        assert verifier.stats.stale_refusals == 0
        timer.value += 1  # ...then not one second more
        for _ in range(3):
            with pytest.raises(KeysStale) as refused:
                await verifier.verify(token)
            await _settled(verifier)
        assert verifier.stats.stale_refusals == 3
        response = render_error(refused.value)
        assert response.status_code == 503
        assert orjson.loads(response.body)["type"] == "urn:tokenward:problem:jwks-stale"
        metrics = {m.name: m for m in collector.collect()}
        assert metrics["tokenward_verifier_stale_refusals"].samples[0].value == 3
        assert metrics["tokenward_verifier_jwks_age_seconds"].samples[0].value > 3600

        await issuer.start()  # back on the same port: the next retry recovers

        async def verifies_again() -> bool:
            timer.value += 61  # past the longest backoff
            try:
                return await verifier.verify(token) == claims
            except KeysStale:
                await _settled(verifier)
                return False

        await await_until(verifies_again, within=5.0, what="the verifier trusts the keys again")
        assert verifier.stats.jwks_fetches_ok == 2


async def test_failed_refreshes_back_off_exponentially_with_jitter(
    tw: Tokenward, issuer: IssuerServer
) -> None:
    """Retries start within a second, double, stay under the cap and differ by verifier."""
    token, _ = tw.tokens.issue(sub="u1", sid="s1", now=tw.clock.now())
    gaps_by_verifier: list[list[float]] = []
    for round_ in range(3):
        if round_:
            await issuer.start()
        timer = Monotonic()
        verifier = AsyncVerifier(
            ISSUER, jwks_url=issuer.jwks_url, clock=tw.clock, monotonic=timer,
            keys_max_age=300, max_stale=3600, max_retry_interval=60,
        )  # fmt: skip
        async with verifier:
            await issuer.stop()
            timer.value += 301
            attempts: list[float] = []
            while timer.value < 1000 + 301 + 600:  # ten minutes of requests, 4 a second
                before = verifier.stats.jwks_fetches_failed
                await verifier.verify(token)
                await _settled(verifier)
                if verifier.stats.jwks_fetches_failed != before:
                    attempts.append(timer.value)
                timer.value += 0.25
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        gaps_by_verifier.append(gaps)
        nominal = [min(60.0, 2.0**i) for i in range(len(gaps))]
        assert gaps[0] <= 1.25, gaps  # the first retry comes quickly
        for gap, delay in zip(gaps, nominal, strict=True):  # jitter: within [delay/2, delay]
            assert delay / 2 - 0.25 <= gap <= delay + 0.25, (gaps, nominal)
        assert max(gaps) <= 60.25
        assert 12 <= len(attempts) <= 30, attempts  # not 2400 (one per request)
    assert len({tuple(g) for g in gaps_by_verifier}) > 1, "no jitter between verifiers"


# ------------------------------------------------------------------- a hostile JWKS server


@dataclass
class Hostile:
    """A raw HTTP/1.1 server on 127.0.0.1 whose answer is ``respond(path)``'s."""

    respond: Callable[[str, asyncio.StreamWriter], Awaitable[None]] | None = None
    port: int = 0
    requests: list[str] = field(default_factory=list)
    body_bytes_sent: int = 0

    def url(self, path: str = "/.well-known/jwks.json", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, _, rest = head.decode("latin-1").partition("\r\n")
            host = next(
                (line.split(":", 1)[1].strip() for line in rest.split("\r\n")
                 if line.lower().startswith("host:")), "",
            )  # fmt: skip
            self.requests.append(f"{host}{request_line.split()[1]}")
            assert self.respond is not None
            await self.respond(f"{host}{request_line.split()[1]}", writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def send_body(self, writer: asyncio.StreamWriter, chunk: bytes, total: int) -> None:
        """Send ``total`` bytes of ``chunk`` repeated, counting what the client took."""
        while self.body_bytes_sent < total:
            writer.write(chunk)
            await writer.drain()  # blocks while the client does not read; raises once it left
            self.body_bytes_sent += len(chunk)


@pytest.fixture
async def hostile() -> AsyncIterator[Hostile]:
    state = Hostile()
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    yield state
    server.close()
    await server.wait_closed()


def _head(status: str, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status}", "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _json_head(document: dict[str, Any]) -> bytes:
    body = orjson.dumps(document)
    return _head("200 OK", {"Content-Type": "application/json", "Content-Length": str(len(body))})


def _issuer(keys: KeySet) -> AccessTokens:
    return AccessTokens(keys, issuer=ISSUER, audience="tokenward", ttl=600)


async def test_redirects_followed_only_within_the_origin(hostile: Hostile) -> None:
    """A same-origin redirect is followed; one to another origin never supplies keys."""
    ours, attackers = KeySet([generate_key()]), KeySet([generate_key()])
    here = f"127.0.0.1:{hostile.port}"

    async def respond(target: str, writer: asyncio.StreamWriter) -> None:
        if target == f"{here}/.well-known/jwks.json":
            writer.write(_head("302 Found", {"Location": "/keys", "Content-Length": "0"}))
        elif target == f"{here}/keys":
            writer.write(_json_head(ours.jwks()) + orjson.dumps(ours.jwks()))
        elif target == f"{here}/elsewhere":  # another origin: same port, another host name
            location = hostile.url("/attacker-keys", host="localhost")
            writer.write(_head("307 Temporary Redirect", {"Location": location}))
        else:  # localhost/attacker-keys
            writer.write(_json_head(attackers.jwks()) + orjson.dumps(attackers.jwks()))
        await writer.drain()

    hostile.respond = respond
    async with AsyncVerifier(ISSUER, jwks_url=hostile.url()) as verifier:
        token, claims = _issuer(ours).issue(sub="u", sid="s", now=int(time.time()))
        assert await verifier.verify(token) == claims
    assert hostile.requests == [f"{here}/.well-known/jwks.json", f"{here}/keys"]

    hostile.requests.clear()
    verifier = AsyncVerifier(ISSUER, jwks_url=hostile.url("/elsewhere"))
    with pytest.raises(Unavailable):
        await verifier.start()
    await verifier.stop()
    assert hostile.requests == [f"{here}/elsewhere"], "the other origin must not be asked"
    assert verifier.stats.jwks_fetches_failed == 1


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_huge_jwks_body_is_not_read_whole(
    hostile: Hostile, declared: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """64 MiB offered; the fetch fails after at most max_jwks_bytes (+ socket buffers)."""
    keys = KeySet([generate_key()])
    total = 64 * 1024 * 1024
    # A genuine key set followed by padding: valid JSON, if one read all of it.
    start = orjson.dumps(keys.jwks())[:-1] + b',"pad":"'
    chunk = b"x" * 65536

    async def respond(target: str, writer: asyncio.StreamWriter) -> None:
        headers = {"Content-Type": "application/json"}
        if declared:
            headers["Content-Length"] = str(len(start) + total + 2)
        writer.write(_head("200 OK", headers) + start)
        await hostile.send_body(writer, chunk, total)
        writer.write(b'"}')
        await writer.drain()

    hostile.respond = respond
    verifier = AsyncVerifier(ISSUER, jwks_url=hostile.url(), timeout=10)
    began = time.monotonic()
    with caplog.at_level("WARNING", logger="tokenward.verifier"), pytest.raises(Unavailable):
        await verifier.start()
    await verifier.stop()
    assert time.monotonic() - began < 5
    # A declared length over the bound is refused before any of the body is read.
    reason = "Content-Length" if declared else "body over 65536 bytes"
    assert reason in caplog.text
    # Loopback socket buffers hold a few MiB at most; the client read 64 KiB of it.
    assert hostile.body_bytes_sent <= 16 * 1024 * 1024, hostile.body_bytes_sent


async def test_a_dripping_body_cannot_hold_a_fetch_past_its_timeout(hostile: Hostile) -> None:
    """A byte every 0.1 s never trips a per-read timeout; the whole fetch is bounded."""
    keys = KeySet([generate_key()])
    body = orjson.dumps(keys.jwks())

    async def respond(target: str, writer: asyncio.StreamWriter) -> None:
        writer.write(_json_head(keys.jwks()))
        for byte in body:
            writer.write(bytes([byte]))
            await writer.drain()
            # The pace is the behaviour under test: each byte comes well within the 1 s
            # per-read timeout, so only the bound on the whole fetch stops it. A server that
            # sends part and then stalls is stopped by the per-read timeout alone: such a
            # test passes with that bound removed.
            await asyncio.sleep(0.1)  # the hostile server's pace, not a wait for state

    hostile.respond = respond
    verifier = AsyncVerifier(ISSUER, jwks_url=hostile.url(), timeout=1.0)
    began = time.monotonic()
    with pytest.raises(Unavailable):
        await verifier.start()
    await verifier.stop()
    assert time.monotonic() - began < 3, "the fetch outlived its 1 s timeout"


@pytest.mark.parametrize(
    "url",
    ["http://auth.example.com/jwks.json", "http://10.0.0.5/jwks.json", "ftp://127.0.0.1/jwks",
     "https:///jwks.json", "file:///etc/jwks.json"],
)  # fmt: skip
def test_insecure_or_odd_jwks_urls_are_refused(url: str) -> None:
    """Plain HTTP to a remote host would let anyone on the path replace the keys."""
    with pytest.raises(ConfigError, match="jwks_url"):
        AsyncVerifier(ISSUER, jwks_url=url)
    with pytest.raises(ConfigError, match="jwks_url"):
        Verifier(ISSUER, jwks_url=url)


def test_plain_http_allowed_to_loopback_or_when_asked() -> None:
    """Development on one machine, or an explicit, visible opt-in."""
    for url in ("http://127.0.0.1:8000/j", "http://localhost/j", "http://[::1]:9/j",
                "http://127.0.0.53/j"):  # fmt: skip
        assert AsyncVerifier(ISSUER, jwks_url=url).jwks_url == url
    remote = "http://auth.internal/.well-known/jwks.json"
    assert AsyncVerifier(ISSUER, jwks_url=remote, allow_insecure_http=True).jwks_url == remote
    with pytest.raises(ConfigError, match="jwks_url"):
        AsyncVerifier("http://auth.internal")  # the default URL is the issuer's


def test_tls_verification_cannot_be_switched_off() -> None:
    """``tls=False`` (or a path) is refused: a private CA is given as an SSLContext."""
    for wrong in (False, "/etc/ssl/ca.pem", 0):
        with pytest.raises(ConfigError, match="tls"):
            AsyncVerifier(ISSUER, tls=wrong)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_stale"):
        AsyncVerifier(ISSUER, keys_max_age=600, max_stale=300)


def _private_ca(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for 127.0.0.1 it signed: (ca.pem, cert.pem, key.pem)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tokenward test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, encipher_only=False,
                          decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(
            "127.0.0.1"))]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


async def test_tls_is_verified_and_a_private_ca_is_trusted_when_given(
    tw: Tokenward, tmp_path: Path
) -> None:
    """An issuer whose certificate chains to an unknown CA is refused unless that CA is given."""
    ca, cert, key = _private_ca(tmp_path)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(tw, manage_lifespan=False), log_config=None, lifespan="off",
        access_log=False, ssl_certfile=str(cert), ssl_keyfile=str(key),
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await await_until(lambda: server.started, within=5.0, what="the TLS issuer listens")
        url = f"https://127.0.0.1:{port}/.well-known/jwks.json"
        token, claims = tw.tokens.issue(sub="u", sid="s", now=tw.clock.now())
        untrusting = AsyncVerifier(ISSUER, jwks_url=url, clock=tw.clock)
        with pytest.raises(Unavailable):
            await untrusting.start()
        await untrusting.stop()
        assert untrusting.stats.jwks_fetches_failed == 1
        context = tls_context(str(ca))
        assert context.verify_mode == ssl.CERT_REQUIRED
        async with AsyncVerifier(ISSUER, jwks_url=url, clock=tw.clock, tls=context) as verifier:
            assert await verifier.verify(token) == claims
            with pytest.raises(TokenInvalid):
                await verifier.verify(token[:-4] + "AAAA")
    finally:
        server.should_exit = True
        await task
        sock.close()


# ------------------------------------------------------------------- token lifetime bound


async def test_a_long_lived_token_signed_with_the_real_key_is_refused(
    tw: Tokenward, issuer: IssuerServer
) -> None:
    """A signing key leaked from the issuer mints a token for a day: correctly signed, the
    issuer's kid, the right iss and aud. The verifier, fed by the real JWKS on a real
    socket, refuses it (exp - iat above max_lifetime + leeway; 1 hour by default), accepts
    the issuer's own 10-minute tokens and a lifetime right at the bound, and honours a
    configured max_lifetime, in the blocking Verifier too. It used to accept the day-long
    token until its exp."""
    now = tw.clock.now()
    leaked = AccessTokens(tw.keys, issuer=ISSUER, audience="tokenward", ttl=86_400)
    day, _ = leaked.issue(sub="u1", sid="s1", now=now)
    bound = DEFAULT_MAX_LIFETIME + 30
    at_bound, _ = AccessTokens(tw.keys, issuer=ISSUER, audience="tokenward", ttl=bound).issue(
        sub="u1", sid="s1", now=now
    )
    past, _ = AccessTokens(tw.keys, issuer=ISSUER, audience="tokenward", ttl=bound + 1).issue(
        sub="u1", sid="s1", now=now
    )
    normal, claims = tw.tokens.issue(sub="u1", sid="s1", now=now)
    async with AsyncVerifier(ISSUER, jwks_url=issuer.jwks_url, clock=tw.clock) as verifier:
        assert await verifier.verify(normal) == claims
        assert (await verifier.verify(at_bound)).exp - now == bound
        for token in (day, past):
            with pytest.raises(TokenInvalid, match="lifetime"):
                await verifier.verify(token)
        assert verifier.max_lifetime == DEFAULT_MAX_LIFETIME == 3600
    async with AsyncVerifier(
        ISSUER, jwks_url=issuer.jwks_url, clock=tw.clock, max_lifetime=86_400
    ) as wide:
        assert (await wide.verify(day)).exp - now == 86_400
    # Blocking calls run in a thread: the issuer is served by this test's event loop.
    blocking = Verifier(ISSUER, jwks_url=issuer.jwks_url, clock=tw.clock, max_lifetime=600)
    try:
        assert await asyncio.to_thread(blocking.verify, normal) == claims
        with pytest.raises(TokenInvalid, match="lifetime"):
            await asyncio.to_thread(blocking.verify, at_bound)
    finally:
        blocking.close()


@pytest.mark.parametrize("value", [0, -1, 1.5, None])
def test_a_max_lifetime_that_is_not_a_positive_int_is_a_config_error(value: Any) -> None:
    with pytest.raises(ConfigError, match="max_lifetime"):
        AsyncVerifier(ISSUER, max_lifetime=value)
