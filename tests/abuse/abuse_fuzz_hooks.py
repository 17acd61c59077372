"""Schemathesis hooks for the authenticated fuzzing run (``SCHEMATHESIS_HOOKS``).

Every generated case gets a fresh bearer token of one test account (cases may log out or
end sessions, so a shared token would soon be dead). The server is ``TOKENWARD_FUZZ_URL``.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import httpx
import schemathesis

PASSWORD = "violet tractor 42 umbrella"
_state: dict[str, str] = {}


def _login() -> str:
    base = os.environ["TOKENWARD_FUZZ_URL"]
    with httpx.Client(base_url=base, timeout=10) as client:
        if "email" not in _state:
            email = f"fuzz-{uuid.uuid4().hex[:12]}@example.com"
            r = client.post("/auth/register", json={"email": email, "password": PASSWORD})
            r.raise_for_status()
            _state["email"] = email
        r = client.post(
            "/auth/login",
            json={"email": _state["email"], "password": PASSWORD},
            headers={"X-Auth-Transport": "bearer"},
        )
        r.raise_for_status()
        token: str = r.json()["access_token"]
        return token


@schemathesis.auth(refresh_interval=None, retry_on=[])
class FreshBearer:
    """A new session per case; 401s are reported as they are, never retried."""

    def get(self, case: Any, context: Any) -> str:
        return _login()

    def set(self, case: Any, data: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}
