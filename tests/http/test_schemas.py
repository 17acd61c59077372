"""Real answers have the shapes of the models that /openapi.json is generated from.

The models (tokenward.http.schemas) are the one definition of each body: requests are
checked against them (422 naming the field and rule), and here every success answer of a
whole session's life is validated against its model, strictly (no coercion, no field of
another type), so a route that drifts from its documented shape fails.
"""

from __future__ import annotations

import httpx
import pytest
from http_support import ORIGIN, PASSWORD

from tokenward.http import schemas


async def test_every_answer_of_a_session_has_its_model_shape(client: httpx.AsyncClient) -> None:
    email = f"shapes-{id(client)}@example.com"
    r = await client.post("/auth/register", json={"email": email, "password": PASSWORD})
    assert r.status_code == 201, r.text
    schemas.UserOut.model_validate_json(r.content)
    bearer = {"X-Auth-Transport": "bearer"}
    r = await client.post(
        "/auth/login", json={"email": email, "password": PASSWORD}, headers=bearer
    )
    login = schemas.SessionBody.model_validate_json(r.content)
    assert login.access_token
    assert login.refresh_token
    assert login.user.email == email
    r = await client.post(
        "/auth/refresh", json={"refresh_token": login.refresh_token}, headers=bearer
    )
    refreshed = schemas.SessionBody.model_validate_json(r.content)
    assert refreshed.user.email is None  # sessions hold no address
    auth = {"Authorization": f"Bearer {refreshed.access_token}"}
    schemas.UserOut.model_validate_json((await client.get("/auth/me", headers=auth)).content)
    for path, row in (
        ("/auth/sessions", schemas.SessionRow),
        ("/auth/sessions/ended", schemas.EndedRow),
        ("/auth/events", schemas.EventRow),
    ):
        r = await client.get(path, headers=auth)
        assert r.status_code == 200, (path, r.text)
        for item in r.json():
            row.model_validate(item)
    r = await client.post("/auth/password", json={"current_password": PASSWORD}, headers=auth)
    problem = schemas.Problem.model_validate_json(r.content)
    assert (problem.status, problem.rule) == (422, "required")
    schemas.Jwks.model_validate_json((await client.get("/.well-known/jwks.json")).content)
    # Cookie mode: the same body without the tokens.
    r = await client.post(
        "/auth/login", json={"email": email, "password": PASSWORD}, headers={"Origin": ORIGIN}
    )
    cookie = schemas.SessionBody.model_validate_json(r.content)
    assert cookie.access_token is None
    assert cookie.refresh_token is None


@pytest.mark.parametrize(
    ("body", "rule", "detail"),
    [
        ({"email": 1, "password": "x"}, "type", "field 'email' must be a string"),
        ({"password": "x"}, "required", "field 'email' is required"),
        ({"email": "a" * 1025, "password": "x"}, "too-long", "field 'email' is too long"),
    ],
)
async def test_a_body_that_breaks_its_model_is_a_422_naming_field_and_rule(
    client: httpx.AsyncClient, body: dict[str, object], rule: str, detail: str
) -> None:
    r = await client.post("/auth/login", json=body, headers={"X-Auth-Transport": "bearer"})
    assert r.status_code == 422, r.text
    problem = schemas.Problem.model_validate_json(r.content)
    assert (problem.rule, problem.detail) == (rule, detail)
