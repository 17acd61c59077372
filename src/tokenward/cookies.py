"""The cookie transport, pure: it decides which cookies to set or clear, and how.

Names and attributes (the contract, in docs/security-model.md):

* ``__Host-access_token``: ``HttpOnly; Secure; SameSite=Lax; Path=/``, Max-Age = access TTL
* ``__Secure-refresh_token``: ``HttpOnly; Secure; SameSite=Strict; Path=/auth`` (``Path=/``
  with transparent refresh), Max-Age = the session's remaining life
* ``__Host-csrf_token``: readable by page scripts; ``Secure; SameSite=Lax; Path=/``

With ``secure=False`` (plain-http testing only) the same cookies lose the prefixes and
``Secure``. The HTTP adapter writes the :class:`CookieSpec` values it is handed.

Reading is :func:`cookie_values`: *every* value sent under a name, not one. A sibling
sub-domain can set a second ``__Secure-refresh_token`` (``Domain=`` the parent, which the
``__Secure-`` prefix allows and ``__Host-`` does not) and the browser sends both; keeping
only one (frameworks keep the last) lets that "tossed" cookie hide the real one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

__all__ = ["CookieNames", "CookieSpec", "CookieTransport", "cookie_values"]


def cookie_values(header_lines: Iterable[str], name: str) -> list[str]:
    """Every non-empty value of cookie ``name``, in the order sent, without repeats.

    Args:
        header_lines: the ``Cookie`` header lines (HTTP/2 clients may send several).
        name: the cookie name, matched exactly (cookie names are case-sensitive).

    Browsers send the cookie with the longest ``Path`` first, so the real refresh cookie
    usually comes first, but a tossed one with a longer path comes before it.
    """
    values: list[str] = []
    for line in header_lines:
        for pair in line.split(";"):
            key, eq, value = pair.partition("=")
            if not eq or key.strip() != name:
                continue
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if value and value not in values:
                values.append(value)
    return values


@dataclass(frozen=True, slots=True)
class CookieSpec:
    """One ``Set-Cookie``. ``max_age=0`` with an empty value clears the cookie."""

    name: str
    value: str
    max_age: int
    path: str
    http_only: bool
    secure: bool
    same_site: Literal["Strict", "Lax"]

    def header(self) -> str:
        """The ``Set-Cookie`` header value."""
        parts = [f"{self.name}={self.value}", f"Path={self.path}", f"Max-Age={self.max_age}"]
        if self.max_age == 0:
            parts.append("Expires=Thu, 01 Jan 1970 00:00:00 GMT")
        if self.http_only:
            parts.append("HttpOnly")
        if self.secure:
            parts.append("Secure")
        parts.append(f"SameSite={self.same_site}")
        return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class CookieNames:
    """The three cookie names for one ``secure`` setting."""

    access: str
    refresh: str
    csrf: str

    @classmethod
    def for_secure(cls, secure: bool) -> CookieNames:
        """Prefixed names when secure, bare names otherwise."""
        if secure:
            return cls("__Host-access_token", "__Secure-refresh_token", "__Host-csrf_token")
        return cls("access_token", "refresh_token", "csrf_token")


class CookieTransport:
    """Renders tokens as cookies.

    Args:
        secure: set ``Secure`` and the ``__Host-``/``__Secure-`` prefixes.
        transparent_refresh: put the refresh cookie on ``Path=/`` so protected routes can
            refresh by themselves.
    """

    def __init__(self, *, secure: bool = True, transparent_refresh: bool = False) -> None:
        self.secure = secure
        self.names = CookieNames.for_secure(secure)
        self.refresh_path = "/" if transparent_refresh else "/auth"

    def issue(
        self,
        *,
        access_token: str,
        access_max_age: int,
        refresh_token: str,
        refresh_max_age: int,
        csrf_token: str,
    ) -> list[CookieSpec]:
        """The cookies a login or refresh sets."""
        return [
            CookieSpec(
                self.names.access, access_token, access_max_age, "/", True, self.secure, "Lax"
            ),
            CookieSpec(
                self.names.refresh,
                refresh_token,
                refresh_max_age,
                self.refresh_path,
                True,
                self.secure,
                "Strict",
            ),
            CookieSpec(
                self.names.csrf, csrf_token, refresh_max_age, "/", False, self.secure, "Lax"
            ),
        ]

    def clear(self) -> list[CookieSpec]:
        """The cookies a logout sets: all three, emptied and expired."""
        return [
            CookieSpec(self.names.access, "", 0, "/", True, self.secure, "Lax"),
            CookieSpec(self.names.refresh, "", 0, self.refresh_path, True, self.secure, "Strict"),
            CookieSpec(self.names.csrf, "", 0, "/", False, self.secure, "Lax"),
        ]
