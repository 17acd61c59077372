"""The verifier in another process, against a real ``tokenward serve`` subprocess.

Three processes: the Tokenward server (``.venv/bin/tokenward serve``, real Redis, signing
keys from a file so the test can rotate them), and WSGI services that check tokens with the
blocking :class:`~tokenward.verifier.Verifier` (``wsgi_verifier_service.py``). The test
drives them over HTTP only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ports import free_port
from tokenward.keys import KeySet, SigningKey, generate_key
from tokenward.tokens import AccessTokens
from waiting import poll_until, wait_until

HERE = Path(__file__).parent
TOKENWARD = Path(sys.executable).parent / "tokenward"
PASSWORD = "violet tractor 42 umbrella"
START_TIMEOUT = 30.0


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def write_keys(path: Path, keys: list[SigningKey]) -> None:
    path.write_text(json.dumps({"keys": [k.private_jwk() for k in keys]}))
    path.chmod(0o600)


@dataclass
class Server:
    """A ``tokenward serve`` process; :meth:`restart` picks up a changed key file."""

    port: int
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(TOKENWARD), "serve", "--port", str(self.port)],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        proc = self.proc

        def healthy() -> bool:
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        settled = poll_until(
            lambda: proc.poll() is not None or healthy(), within=START_TIMEOUT, step=0.1
        )
        if settled and proc.poll() is None:
            return
        pytest.fail(f"tokenward serve did not start:\n{self.log.read_text()[-3000:]}")

    def restart(self) -> None:
        assert self.proc is not None
        stop(self.proc)
        self.start()


@pytest.fixture
def server(redis_url: str, tmp_path: Path) -> Iterator[Server]:
    keys_file = tmp_path / "keys.jwks"
    write_keys(keys_file, [generate_key()])
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TOKENWARD_")},
        "TOKENWARD_REDIS_URL": redis_url,
        "TOKENWARD_DATA_DIR": str(tmp_path / "data"),
        "TOKENWARD_ISSUER": f"http://127.0.0.1:{port}",
        "TOKENWARD_SIGNING_KEYS": str(keys_file),
        # The whole test run registers from 127.0.0.1 into one Redis.
        "TOKENWARD_REGISTER_IP_LIMIT": "1000000",
    }
    srv = Server(port=port, env=env, log=tmp_path / "server.log")
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None:
            stop(srv.proc)


class Service:
    """A WSGI verifier service process."""

    def __init__(self, issuer: str, redis_url: str | None, refetch_interval: float) -> None:
        argv = [sys.executable, str(HERE / "wsgi_verifier_service.py"), issuer, redis_url or "-"]
        self.proc = subprocess.Popen(
            [*argv, str(refetch_interval)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        self._url = ""

    @property
    def url(self) -> str:
        """Waits for the "port <n>" line the service prints once it listens (or exits)."""
        if not self._url:
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline().decode()
            assert line.startswith("port "), f"verifier service did not start: {line!r}"
            self._url = f"http://127.0.0.1:{int(line.split()[1])}"
        return self._url

    def whoami(self, token: str) -> httpx.Response:
        return httpx.get(f"{self.url}/whoami", headers={"Authorization": f"Bearer {token}"})

    def kids(self) -> set[str]:
        return set(httpx.get(f"{self.url}/keys").json()["kids"])


@pytest.fixture
def services() -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for service in started:
        stop(service.proc)


def login(server: Server) -> dict[str, Any]:
    email = f"user-{time.time_ns()}@example.com"
    r = httpx.post(f"{server.url}/auth/register", json={"email": email, "password": PASSWORD})
    assert r.status_code == 201, r.text
    r = httpx.post(
        f"{server.url}/auth/login",
        json={"email": email, "password": PASSWORD},
        headers={"X-Auth-Transport": "bearer"},
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def problem_type(response: httpx.Response) -> str:
    assert response.headers["content-type"] == "application/problem+json"
    kind: str = response.json()["type"]
    return kind.removeprefix("urn:tokenward:problem:")


# Two real servers start in these tests (seconds each on a busy machine).
pytestmark = pytest.mark.timeout(300)


def test_token_checks_and_logout_seen_from_another_process(
    server: Server, services: list[Service], redis_url: str
) -> None:
    """Valid accepted; tampered and expired refused; a logout refused within one second."""
    service = Service(server.url, redis_url, 30)
    services.append(service)
    tokens = login(server)
    token = tokens["access_token"]
    ok = service.whoami(token)
    assert ok.status_code == 200
    assert ok.json() == {"sub": tokens["user"]["id"], "sid": tokens["session"]["id"]}

    head, payload, sig = token.split(".")
    flipped = "A" if sig[0] != "A" else "B"
    tampered = service.whoami(f"{head}.{payload}.{flipped}{sig[1:]}")
    assert tampered.status_code == 401
    assert problem_type(tampered) == "unauthenticated"

    # Genuinely signed by the server's key, but an hour old.
    keys = KeySet.from_file(Path(server.env["TOKENWARD_SIGNING_KEYS"]))
    issuer = AccessTokens(keys, issuer=server.url, audience="tokenward", ttl=600)
    old, _ = issuer.issue(
        sub=tokens["user"]["id"], sid=tokens["session"]["id"], now=int(time.time()) - 3600
    )
    expired = service.whoami(old)
    assert expired.status_code == 401
    assert problem_type(expired) == "token-expired"

    out = httpx.post(f"{server.url}/auth/logout", headers={"Authorization": f"Bearer {token}"})
    assert out.status_code == 204
    refused: list[httpx.Response] = []

    def verifier_refuses() -> bool:
        r = service.whoami(token)
        if r.status_code == 401:
            refused.append(r)
        return bool(refused)

    wait_until(verifier_refuses, within=1.0, what="the verifier refuses the token after logout")
    assert problem_type(refused[0]) == "unauthenticated"


def test_key_rotation_refetches_the_jwks_rate_limited(
    server: Server, services: list[Service], redis_url: str
) -> None:
    """A token signed by a new key makes verifiers refetch the JWKS, once per interval."""
    limited = Service(server.url, redis_url, 3600)  # has fetched at start: no refetch for an hour
    eager = Service(server.url, redis_url, 0.5)
    services.extend([limited, eager])
    keys_file = Path(server.env["TOKENWARD_SIGNING_KEYS"])
    old_key = KeySet.from_file(keys_file).signing_key
    assert limited.kids() == eager.kids() == {old_key.kid}

    new_key = generate_key()
    write_keys(keys_file, [old_key, new_key])  # the last key signs, both verify
    server.restart()
    tokens = login(server)
    token = tokens["access_token"]

    refused = limited.whoami(token)
    assert refused.status_code == 401
    assert limited.kids() == {old_key.kid}, "the rate-limited verifier must not have refetched"

    replies: list[httpx.Response] = []

    def eager_accepts() -> bool:
        replies.append(eager.whoami(token))
        return replies[-1].status_code == 200

    poll_until(eager_accepts, within=10.0, step=0.1)
    assert replies[-1].status_code == 200, replies[-1].text
    assert eager.kids() == {old_key.kid, new_key.kid}
