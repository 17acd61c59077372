"""Cross-site WebSocket hijacking: a cookie-authenticated handshake needs an allowed Origin.

Browsers send cookies with a WebSocket opened by any page, and the same-origin policy does
not apply to WebSockets: without an Origin check, ``new WebSocket("wss://app.test/private/ws")``
on ``https://evil.example.com`` talks to the app as the signed-in user. Before the fix the
middleware accepted such handshakes from any Origin, ``null`` included.

The app runs in Starlette's TestClient (a real ASGI run of the middleware and the host app,
its lifespan starting Tokenward on the real Redis) over ``https``, so the ``__Host-``
cookies of a cookie login are sent with the handshake as a browser would send them.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from tokenward.integrations.asgi import TokenwardMiddleware
from tokenward.passwords import CHEAP_FOR_TESTS
from tokenward.runtime import Tokenward
from tokenward.settings import load_settings

ORIGIN = "https://app.test"
#: Absolute: TestClient would make a relative path ``ws://testserver/...``, to which a
#: browser (and the cookie jar) sends no ``Secure`` cookie.
SOCKET = "wss://app.test/private/ws"
PASSWORD = "violet tractor 42 umbrella"
FOREIGN = [
    "https://evil.example.com",
    "null",
    "http://app.test",
    "https://app.test.evil.example.com",
    "https://app.test:8443",
]


@pytest.fixture
def client(redis_url: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = load_settings(
        {
            "TOKENWARD_REDIS_URL": redis_url,
            "TOKENWARD_DATA_DIR": str(tmp_path / "data"),
            "TOKENWARD_ISSUER": ORIGIN,
            "TOKENWARD_REGISTER_IP_LIMIT": "1000000",
        },
        env_file=tmp_path / "no.env",
    )
    tw = Tokenward(settings, argon2=CHEAP_FOR_TESTS)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await tw.start()
        yield
        await tw.stop()

    async def socket(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json({"uid": websocket.state.tokenward.uid})
        await websocket.close()

    host = Starlette(routes=[WebSocketRoute("/private/ws", socket)], lifespan=lifespan)
    app = TokenwardMiddleware(host, tw, protect=["/private"], serve_routes=True)
    with TestClient(app, base_url=ORIGIN) as c:
        yield c


def _login(client: TestClient, *, bearer: bool = False) -> dict[str, object]:
    email = f"ws-{uuid.uuid4().hex[:12]}@example.com"
    r = client.post("/auth/register", json={"email": email, "password": PASSWORD})
    assert r.status_code == 201, r.text
    headers = {"X-Auth-Transport": "bearer"} if bearer else {"Origin": ORIGIN}
    r = client.post("/auth/login", json={"email": email, "password": PASSWORD}, headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def _refused(client: TestClient, headers: dict[str, str]) -> int:
    with (
        pytest.raises(WebSocketDisconnect) as refused,
        client.websocket_connect(SOCKET, headers=headers),
    ):
        pass
    return refused.value.code


def test_cookie_handshake_from_a_foreign_origin_is_closed(client: TestClient) -> None:
    """Each foreign Origin (``null`` included) gets close code 1008 before the app runs."""
    uid = _login(client)["user"]["id"]  # type: ignore[index]
    assert client.cookies.get("__Host-access_token"), "the cookie login set the cookie"
    for origin in FOREIGN:
        assert _refused(client, {"Origin": origin}) == 1008, origin
    with client.websocket_connect(SOCKET, headers={"Origin": ORIGIN}) as ws:
        assert ws.receive_json() == {"uid": uid}


def test_cookie_handshake_without_origin_is_not_a_browsers(client: TestClient) -> None:
    """Browsers always send Origin on a WebSocket handshake; a client that sends none is
    not a browser another site could drive, so the cookie is honoured as on any GET."""
    uid = _login(client)["user"]["id"]  # type: ignore[index]
    with client.websocket_connect(SOCKET) as ws:
        assert ws.receive_json() == {"uid": uid}


def test_bearer_handshake_is_not_origin_bound(client: TestClient) -> None:
    """A bearer token is not sent by the browser on its own: no hijacking, no Origin rule
    (a page can't set ``Authorization`` on a WebSocket, so this is a script or a service)."""
    body = _login(client, bearer=True)
    client.cookies.clear()
    auth = {"Authorization": f"Bearer {body['access_token']}", "Origin": "https://other.example"}
    with client.websocket_connect(SOCKET, headers=auth) as ws:
        assert ws.receive_json() == {"uid": body["user"]["id"]}  # type: ignore[index]
