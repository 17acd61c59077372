"""The small pure pieces: refresh token format, CSRF checks, cookie rendering."""

from __future__ import annotations

import base64
import hashlib

import pytest

from tokenward.cookies import CookieTransport
from tokenward.csrf import check_origin, check_token, csrf_digest, new_csrf_token
from tokenward.errors import CsrfError, TokenInvalid
from tokenward.refresh import SECRET_BYTES, RefreshToken, new_salt

UID = "0123456789abcdef0123456789abcdef"
SID = "AAAAAAAAAAAAAAAAAAAAAA"
ALLOWED = ("https://app.test",)


# ------------------------------------------------------------------------- refresh tokens


def test_refresh_secret_is_256_bits() -> None:
    """A new refresh token carries 32 random bytes."""
    assert SECRET_BYTES * 8 >= 256
    assert len(RefreshToken.new(UID, SID).secret) == 32


def test_refresh_token_round_trips() -> None:
    """encode() then parse() gives the same token."""
    token = RefreshToken.new(UID, SID)
    assert RefreshToken.parse(token.encode()) == token


def test_refresh_digest_is_sha256_of_the_secret() -> None:
    """Only the SHA-256 of the secret is ever stored: its first 128 bits, base64url."""
    token = RefreshToken.new(UID, SID)
    whole = hashlib.sha256(token.secret).digest()
    assert token.digest == base64.urlsafe_b64encode(whole[:16]).rstrip(b"=").decode()
    assert len(token.digest) == 22


def test_refresh_repr_hides_the_secret() -> None:
    """repr never shows the secret, in any encoding."""
    token = RefreshToken.new(UID, SID)
    text = repr(token)
    secret_b64 = token.encode().rsplit(".", 1)[1]
    assert secret_b64 not in text
    assert token.secret.hex() not in text


def test_successor_depends_on_secret_and_salt() -> None:
    """Same secret and salt give the same successor; another salt or secret, another one."""
    token, other = RefreshToken.new(UID, SID), RefreshToken.new(UID, SID)
    salt = new_salt()
    assert token.successor(salt) == token.successor(salt)
    assert token.successor(salt).secret != token.successor(new_salt()).secret
    assert token.successor(salt).secret != other.successor(salt).secret
    assert token.successor(salt).secret != token.secret
    assert (token.successor(salt).uid, token.successor(salt).sid) == (UID, SID)


def test_salt_alone_does_not_give_the_successor() -> None:
    """The stored salt is useless without the old secret (which is stored only as a hash)."""
    token = RefreshToken.new(UID, SID)
    salt = new_salt()
    guess = hashlib.sha256(salt.encode()).digest()
    assert token.successor(salt).secret != guess


@pytest.mark.parametrize(
    "value",
    [
        "",
        "x",
        f"{UID}.{SID}",
        f"{UID}.{SID}.",
        f"{UID}.{SID}.{'A' * 42}",
        f"{UID}.{SID}.{'A' * 44}",
        f"{UID.upper()}.{SID}.{'A' * 43}",
        f"{UID}.{SID}.{'A' * 42}=",
        f"{UID}.{SID}.{'A' * 42}+",
        f"{UID}.{SID[:-1]}.{'A' * 43}",
        f"{UID}.{SID}.{'A' * 43}.extra",
        f" {UID}.{SID}.{'A' * 43}",
        f"{UID}.{SID}.{'A' * 43}\n",
        "a" * 100_000,
    ],
)
def test_malformed_refresh_tokens_are_token_invalid(value: str) -> None:
    """Anything but ``<32 hex>.<22 b64url>.<43 b64url>`` is TokenInvalid."""
    with pytest.raises(TokenInvalid):
        RefreshToken.parse(value)


# ------------------------------------------------------------------------------------ CSRF


def test_csrf_token_has_256_bits() -> None:
    """CSRF tokens are 32 random bytes, base64url."""
    token = new_csrf_token()
    assert len(base64.urlsafe_b64decode(token + "=")) == 32
    assert len({new_csrf_token() for _ in range(200)}) == 200


@pytest.mark.parametrize(
    ("origin", "fetch_site"),
    [
        ("https://evil.test", None),
        ("https://app.test.evil.test", None),
        ("http://app.test", None),
        ("https://app.test:444", None),
        ("null", None),
        (None, "cross-site"),
        (None, "Cross-Site"),
        ("https://app.test", "cross-site"),
    ],
)
def test_foreign_origin_is_refused(origin: str | None, fetch_site: str | None) -> None:
    """Another origin, or Sec-Fetch-Site: cross-site, is a CSRF error."""
    with pytest.raises(CsrfError):
        check_origin(origin, fetch_site, ALLOWED)


@pytest.mark.parametrize(
    ("origin", "fetch_site"),
    [
        ("https://app.test", None),
        ("https://APP.test", "same-origin"),
        (None, None),
        (None, "same-site"),
        (None, "none"),
    ],
)
def test_own_or_absent_origin_is_allowed(origin: str | None, fetch_site: str | None) -> None:
    """Our origin, or no Origin at all (non-browser clients), passes the origin check."""
    check_origin(origin, fetch_site, ALLOWED)


def test_matching_token_of_this_session_passes() -> None:
    """Header equal to cookie and bound to the session: accepted."""
    token = new_csrf_token()
    check_token(token, token, csrf_digest(token))


@pytest.mark.parametrize("missing", ["header", "cookie"])
def test_missing_token_is_refused(missing: str) -> None:
    """No header or no cookie: refused."""
    token = new_csrf_token()
    header = None if missing == "header" else token
    cookie = None if missing == "cookie" else token
    with pytest.raises(CsrfError):
        check_token(header, cookie, csrf_digest(token))


def test_header_different_from_cookie_is_refused() -> None:
    """The header must equal the cookie."""
    token = new_csrf_token()
    with pytest.raises(CsrfError):
        check_token(new_csrf_token(), token, csrf_digest(token))


def test_token_of_another_session_is_refused() -> None:
    """A planted cookie + header pair of another session is refused (session binding)."""
    mine, planted = new_csrf_token(), new_csrf_token()
    with pytest.raises(CsrfError):
        check_token(planted, planted, csrf_digest(mine))


# --------------------------------------------------------------------------------- cookies


def test_secure_cookies_have_prefixes_and_flags() -> None:
    """Secure mode: __Host-/__Secure- names with the flags of the contract."""
    specs = CookieTransport(secure=True).issue(
        access_token="A", access_max_age=600, refresh_token="R", refresh_max_age=999,
        csrf_token="C",
    )  # fmt: skip
    access, refresh, csrf = specs
    assert (
        access.header()
        == "__Host-access_token=A; Path=/; Max-Age=600; HttpOnly; Secure; SameSite=Lax"
    )
    assert refresh.header() == (
        "__Secure-refresh_token=R; Path=/auth; Max-Age=999; HttpOnly; Secure; SameSite=Strict"
    )
    assert csrf.header() == "__Host-csrf_token=C; Path=/; Max-Age=999; Secure; SameSite=Lax"


def test_insecure_cookies_drop_prefixes_and_secure() -> None:
    """COOKIE_SECURE=false: bare names and no Secure attribute, other flags unchanged."""
    specs = CookieTransport(secure=False).issue(
        access_token="A", access_max_age=600, refresh_token="R", refresh_max_age=999,
        csrf_token="C",
    )  # fmt: skip
    headers = [s.header() for s in specs]
    assert [h.split("=", 1)[0] for h in headers] == ["access_token", "refresh_token", "csrf_token"]
    assert all("Secure" not in h for h in headers)
    assert "HttpOnly" in headers[0]
    assert "HttpOnly" in headers[1]
    assert "HttpOnly" not in headers[2]


def test_transparent_refresh_puts_the_refresh_cookie_on_root() -> None:
    """With transparent refresh, the refresh cookie must reach every route."""
    specs = CookieTransport(transparent_refresh=True).issue(
        access_token="A", access_max_age=1, refresh_token="R", refresh_max_age=1, csrf_token="C"
    )
    assert specs[1].path == "/"


def test_clear_expires_all_three_cookies_on_their_paths() -> None:
    """Logout empties and expires each cookie with the same name and path it was set with."""
    transport = CookieTransport()
    issued = transport.issue(
        access_token="A", access_max_age=1, refresh_token="R", refresh_max_age=1, csrf_token="C"
    )
    cleared = transport.clear()
    assert [(c.name, c.path) for c in cleared] == [(c.name, c.path) for c in issued]
    for spec in cleared:
        header = spec.header()
        assert spec.value == ""
        assert "Max-Age=0" in header
        assert "Expires=Thu, 01 Jan 1970" in header
