"""The notes example (examples/notes): each user reads and changes only their own notes.

The example is not a package: its directory is put on ``sys.path`` and ``notes_app`` is
imported from there, exactly as ``uvicorn --app-dir examples/notes`` does.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tokenward.clock import FrozenClock
from tokenward.passwords import CHEAP_FOR_TESTS
from tokenward.runtime import Tokenward
from tokenward.settings import load_settings

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "notes"
sys.path.insert(0, str(EXAMPLE_DIR))

import notes_app  # noqa: E402 - importable only once its directory is on sys.path

ORIGIN = "https://notes.test"
PASSWORD = "violet tractor 42 umbrella"


@pytest.fixture
async def tw(redis_url: str, tmp_path: Path) -> AsyncIterator[Tokenward]:
    env = {
        "TOKENWARD_REDIS_URL": redis_url,
        "TOKENWARD_DATA_DIR": str(tmp_path / "data"),
        "TOKENWARD_ISSUER": ORIGIN,
        # The whole test run registers from one address into one Redis.
        "TOKENWARD_REGISTER_IP_LIMIT": "1000000",
    }
    settings = load_settings(env, env_file=tmp_path / "no.env")
    service = Tokenward(settings, clock=FrozenClock(int(time.time())), argon2=CHEAP_FOR_TESTS)
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
def app(tw: Tokenward, tmp_path: Path) -> Any:
    return notes_app.create_app(tw, database=tmp_path / "notes.db", manage_lifespan=False)


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ORIGIN)


async def bearer_user(app: Any) -> dict[str, str]:
    """Register and log in a new user in bearer mode; the headers to send."""
    email = f"notes-{uuid.uuid4().hex[:10]}@example.com"
    async with client_for(app) as client:
        r = await client.post("/auth/register", json={"email": email, "password": PASSWORD})
        assert r.status_code == 201, r.text
        r = await client.post(
            "/auth/login",
            json={"email": email, "password": PASSWORD},
            headers={"X-Auth-Transport": "bearer"},
        )
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def test_owner_creates_reads_updates_deletes(app: Any) -> None:
    """The happy path: a user manages their own note."""
    alice = await bearer_user(app)
    async with client_for(app) as client:
        created = await client.post(
            "/notes", json={"title": "groceries", "body": "eggs"}, headers=alice
        )
        assert created.status_code == 201
        note = created.json()
        assert (await client.get(f"/notes/{note['id']}", headers=alice)).json()["body"] == "eggs"
        updated = await client.put(
            f"/notes/{note['id']}", json={"title": "groceries", "body": "milk"}, headers=alice
        )
        assert updated.status_code == 200
        assert updated.json()["body"] == "milk"
        assert [n["id"] for n in (await client.get("/notes", headers=alice)).json()] == [note["id"]]
        assert (await client.delete(f"/notes/{note['id']}", headers=alice)).status_code == 204
        assert (await client.get(f"/notes/{note['id']}", headers=alice)).status_code == 404


async def test_other_users_notes_are_invisible_404(app: Any) -> None:
    """User B can neither read, change, nor delete user A's note: 404, as if it did not exist."""
    alice, bob = await bearer_user(app), await bearer_user(app)
    async with client_for(app) as client:
        note = (
            await client.post("/notes", json={"title": "diary", "body": "secret"}, headers=alice)
        ).json()
        url = f"/notes/{note['id']}"
        for response in (
            await client.get(url, headers=bob),
            await client.put(url, json={"title": "pwned", "body": ""}, headers=bob),
            await client.delete(url, headers=bob),
        ):
            assert response.status_code == 404
            assert response.json()["type"] == "urn:tokenward:problem:not-found"
            assert "secret" not in response.text
        assert (await client.get("/notes", headers=bob)).json() == []
        kept = (await client.get(url, headers=alice)).json()
        assert (kept["title"], kept["body"]) == ("diary", "secret")


async def test_unauthenticated_is_401(app: Any) -> None:
    """No token, a forged one, or no session: 401 problem+json on every notes route."""
    async with client_for(app) as client:
        for method, url in (
            ("GET", "/notes"),
            ("POST", "/notes"),
            ("GET", "/notes/1"),
            ("DELETE", "/notes/1"),
        ):
            r = await client.request(method, url, json={"title": "x"} if method == "POST" else None)
            assert r.status_code == 401, (method, url)
            assert r.json()["type"] == "urn:tokenward:problem:unauthenticated"
        forged = await client.get("/notes", headers={"Authorization": "Bearer a.b.c"})
        assert forged.status_code == 401


async def test_cookie_mode_enforces_csrf(app: Any) -> None:
    """Cookie sessions read freely; writes need X-CSRF-Token and no foreign Origin."""
    email = f"notes-{uuid.uuid4().hex[:10]}@example.com"
    async with client_for(app) as client:
        assert (
            await client.post("/auth/register", json={"email": email, "password": PASSWORD})
        ).status_code == 201
        assert (
            await client.post("/auth/login", json={"email": email, "password": PASSWORD})
        ).status_code == 200
        assert (await client.get("/notes")).status_code == 200
        refused = await client.post("/notes", json={"title": "x", "body": ""})
        assert refused.status_code == 403
        assert refused.json()["type"] == "urn:tokenward:problem:csrf"
        csrf = client.cookies.get("__Host-csrf_token")
        assert csrf
        foreign = await client.post(
            "/notes",
            json={"title": "x"},
            headers={"X-CSRF-Token": csrf, "Origin": "https://evil.test"},
        )
        assert foreign.status_code == 403
        ok = await client.post(
            "/notes", json={"title": "x"}, headers={"X-CSRF-Token": csrf, "Origin": ORIGIN}
        )
        assert ok.status_code == 201, ok.text


async def test_logged_out_token_cannot_touch_notes(app: Any) -> None:
    """After logout the still-unexpired access token no longer reaches the notes."""
    alice = await bearer_user(app)
    async with client_for(app) as client:
        assert (await client.get("/notes", headers=alice)).status_code == 200
        assert (await client.post("/auth/logout", headers=alice)).status_code == 204
        assert (await client.get("/notes", headers=alice)).status_code == 401


async def test_out_of_range_note_ids_are_422_not_500(app: Any) -> None:
    """Ids SQLite cannot hold (past 2**63 - 1, or below 1) are refused before the query;
    the largest id it can hold is an ordinary 404."""
    alice = await bearer_user(app)
    async with client_for(app) as client:
        for note_id in (2**63, 10**30, 0, -1):
            url = f"/notes/{note_id}"
            for response in (
                await client.get(url, headers=alice),
                await client.put(url, json={"title": "x", "body": ""}, headers=alice),
                await client.delete(url, headers=alice),
            ):
                assert response.status_code == 422, (note_id, response.text)
        assert (await client.get(f"/notes/{2**63 - 1}", headers=alice)).status_code == 404
