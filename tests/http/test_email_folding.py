"""One account per address however it is spelt: NFKC + full case folding (issue 9 item 4).

``lower()`` alone kept ``straße@`` and ``STRASSE@`` (``strasse@``), or the final and the
medial sigma of ``σίσυφος@`` and ``σίσυφοσ@``, apart: two accounts, and two throttle buckets,
for what a mail system and a person read as one address.
"""

from __future__ import annotations

import sys
import unicodedata
import uuid

import httpx
import pytest
from http_support import GENEROUS_LIMITS, MakeTw, isolated_client

from tokenward.throttle import account_digest
from tokenward.users import email_key, normalize_email
from tw_accounts import BEARER, PASSWORD

#: (first registered, later spellings that must be the same account)
SPELLINGS = [
    pytest.param(
        "straße-{}@example.com", ["STRASSE-{}@example.com", "strasse-{}@Example.com"], id="sharp-s"
    ),
    pytest.param(
        "σίσυφος-{}@example.gr", ["ΣΊΣΥΦΟΣ-{}@example.gr", "σίσυφοσ-{}@example.gr"], id="sigma"
    ),
    pytest.param("ﬁle-{}@example.com", ["FILE-{}@example.com", "file-{}@example.com"], id="nfkc"),
]


@pytest.mark.parametrize(("first", "others"), SPELLINGS)
async def test_other_spellings_of_a_registered_address_are_409(
    client: httpx.AsyncClient, first: str, others: list[str]
) -> None:
    """Registering another spelling is a 409 conflict; logging in with any spelling opens a
    session of the one account, which keeps the address as first registered."""
    tag = uuid.uuid4().hex[:8]
    r = await client.post("/auth/register", json={"email": first.format(tag), "password": PASSWORD})
    assert r.status_code == 201, r.text
    account = r.json()
    assert account["email"] == normalize_email(first.format(tag))
    for other in others:
        r = await client.post(
            "/auth/register", json={"email": other.format(tag), "password": PASSWORD}
        )
        assert r.status_code == 409, f"{other.format(tag)}: {r.status_code} {r.text}"
        assert r.json()["type"] == "urn:tokenward:problem:conflict"
        r = await client.post(
            "/auth/login", json={"email": other.format(tag), "password": PASSWORD}, headers=BEARER
        )
        assert r.status_code == 200, r.text
        assert r.json()["user"] == {"id": account["id"], "email": account["email"]}


async def test_every_spelling_counts_against_one_account_throttle(make_tw: MakeTw) -> None:
    """Three wrong passwords as ``STRASSE-...`` use up a per-account limit of 3; the fourth,
    as ``straße-...``, is throttled (429) rather than a fresh bucket's 401."""
    limits = GENEROUS_LIMITS | {"login_account_limit": 3}
    tw = await make_tw(**limits)
    tag = uuid.uuid4().hex[:8]
    async with isolated_client(tw) as client:
        r = await client.post(
            "/auth/register", json={"email": f"straße-{tag}@example.com", "password": PASSWORD}
        )
        assert r.status_code == 201, r.text
        for _ in range(3):
            r = await client.post(
                "/auth/login",
                json={"email": f"STRASSE-{tag}@example.com", "password": "wrong password 123"},
            )
            assert r.status_code == 401, r.text
        r = await client.post(
            "/auth/login",
            json={"email": f"straße-{tag}@example.com", "password": "wrong password 123"},
        )
        assert r.status_code == 429, r.text


def test_account_digest_is_the_digest_of_the_email_key() -> None:
    """Throttle keys name the account by its email key: every spelling, one bucket."""
    assert account_digest("straße@x.test") == account_digest(" STRASSE@X.test")
    assert account_digest("σίσυφος@x.gr") == account_digest("σίσυφοσ@x.gr")
    assert account_digest("ΣΊΣΥΦΟΣ@x.gr") == account_digest("σίσυφοσ@x.gr")
    assert account_digest("straße@x.test") != account_digest("strase@x.test")


def test_email_key_folds_and_keeps_the_address_for_mail() -> None:
    """The key folds sharp s to ss, final sigma to sigma; the address keeps what was typed."""
    assert email_key("Straße@Example.com") == "strasse@example.com"
    assert email_key("ΣΊΣΥΦΟΣ@x.gr") == email_key("σίσυφος@x.gr") == "σίσυφοσ@x.gr"
    assert normalize_email("Straße@Example.com") == "straße@example.com"


def test_email_key_is_idempotent_and_agrees_with_the_stored_address() -> None:
    """For every code point, alone and inside an address: the key of a key is itself, and
    the key of the stored (normalised) form is the key of what was typed. Stores look up
    by the key of whatever they are given, so both must hold."""
    bad: list[str] = []
    for cp in range(sys.maxunicode + 1):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        for text in (chr(cp), f"a{chr(cp)}b@x.test"):
            key = email_key(text)
            stored = unicodedata.normalize("NFKC", text.strip()).lower()
            if email_key(key) != key or email_key(stored) != key:
                bad.append(f"U+{cp:04X}")
    assert not bad, bad[:20]
