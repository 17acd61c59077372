"""Refresh tokens: opaque, 256 bits from the CSPRNG, stored only as a hash.

Wire form: ``<user id>.<session id>.<secret>``. The two ids only locate the session record
(all of a user's keys share one Redis hash slot, so the user id must be known before the
lookup); the 32-byte secret is what proves possession, and the server keeps nothing but the
first 128 bits of its SHA-256 (:func:`stored_digest`).

Rotation is idempotent: the successor's secret is ``HMAC-SHA256(key=presented secret,
msg=salt)`` with a fresh random salt chosen at rotation and kept with the session. Whoever
presents the just-replaced token inside the grace window can therefore be handed *the same*
successor, while the store holds no usable token: the salt is useless without the old
secret, and the old secret exists only as a hash.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from tokenward.errors import TokenInvalid

__all__ = ["SECRET_BYTES", "RefreshToken", "new_salt", "stored_digest"]

SECRET_BYTES = 32
_FORMAT = re.compile(r"^([0-9a-f]{32})\.([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{43})$")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def stored_digest(secret: bytes) -> str:
    """What the session store keeps of a secret (a refresh secret, a CSRF token): the first
    128 bits of its SHA-256, base64url, 22 characters.

    128 bits of a hash of 256 random bits: finding a secret that matches them takes 2**128
    tries, and they are a third of the hex of the whole digest, which records held before
    (the session scripts read those as the same 128 bits).
    """
    return _b64(hashlib.sha256(secret).digest()[:16])


def new_salt() -> str:
    """A fresh random salt for one rotation (128 bits, base64url)."""
    return _b64(secrets.token_bytes(16))


@dataclass(frozen=True, slots=True)
class RefreshToken:
    """A parsed refresh token. ``repr`` never shows the secret."""

    uid: str
    sid: str
    secret: bytes

    @classmethod
    def new(cls, uid: str, sid: str) -> RefreshToken:
        """A token with a fresh 256-bit secret."""
        return cls(uid, sid, secrets.token_bytes(SECRET_BYTES))

    @classmethod
    def parse(cls, value: str) -> RefreshToken:
        """Parse the wire form.

        Raises:
            TokenInvalid: the value is not a well-formed refresh token.
        """
        match = _FORMAT.fullmatch(value) if len(value) < 128 else None
        if match is None:
            raise TokenInvalid("malformed refresh token")
        uid, sid, secret = match.groups()
        raw = base64.urlsafe_b64decode(secret + "=")
        # 43 base64 characters carry 258 bits for 256: refuse the 3 other spellings of a
        # secret, so no altered token is ever accepted (found by tests/abuse fuzzing).
        if _b64(raw) != secret:
            raise TokenInvalid("malformed refresh token")
        return cls(uid, sid, raw)

    def encode(self) -> str:
        """The wire form, for the cookie or the response body."""
        return f"{self.uid}.{self.sid}.{_b64(self.secret)}"

    @property
    def digest(self) -> str:
        """:func:`stored_digest` of the secret: the only form the store ever sees."""
        return stored_digest(self.secret)

    def successor(self, salt: str) -> RefreshToken:
        """The token that replaces this one when rotated with ``salt``."""
        secret = hmac.new(self.secret, salt.encode(), hashlib.sha256).digest()
        return RefreshToken(self.uid, self.sid, secret)

    def __repr__(self) -> str:
        return f"RefreshToken(uid={self.uid!r}, sid={self.sid!r}, secret=<hidden>)"
