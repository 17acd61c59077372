"""How a session was authenticated: RFC 8176 ``amr`` values and the ``auth_time``.

Every access token carries both claims. A session opened by a password alone has
``amr = ["pwd"]`` and ``auth_time`` = its creation time, which the session state already
holds, so nothing is stored for it. A session opened with a second factor, or one that
re-authenticated since (a "step-up"), has an :class:`AuthLevel` stored beside it
(:class:`AuthLevelStore`), which every refresh reads to put the same claims in the new
access token. Framework-free.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "AMR_HWK",
    "AMR_MFA",
    "AMR_OTP",
    "AMR_PWD",
    "AMR_SWK",
    "SECOND_FACTORS",
    "AuthLevel",
    "AuthLevelStore",
    "combined_amr",
    "password_level",
]

#: RFC 8176 section 2: password, one-time password, multiple factors.
AMR_PWD = "pwd"
AMR_OTP = "otp"
AMR_MFA = "mfa"
#: A passkey: bound to one device (hardware-secured key), or synced between devices
#: (backup-eligible, so a software-secured key as far as the server can tell).
AMR_HWK = "hwk"
AMR_SWK = "swk"
#: Methods that count as a factor other than the password.
SECOND_FACTORS = frozenset({AMR_OTP, AMR_HWK, AMR_SWK})
#: The order the values are listed in, whatever order they were added in.
_ORDER = {AMR_PWD: 0, AMR_OTP: 1, AMR_HWK: 2, AMR_SWK: 3, AMR_MFA: 9}


def combined_amr(methods: Iterable[str]) -> tuple[str, ...]:
    """The ``amr`` of a session that used ``methods``: sorted, without duplicates, with
    ``mfa`` added when a password and a second factor (or two factors) were both used.

    An ``mfa`` already in ``methods`` stays: a passkey checked with user verification is
    two factors in one (the device, and the PIN or biometric that unlocked it), and a
    session that proved that keeps it when it steps up again with one method."""
    given = list(methods)
    found = {m for m in given if m != AMR_MFA}
    if (len(found) >= 2 and found & SECOND_FACTORS) or (AMR_MFA in given and found):
        found.add(AMR_MFA)
    return tuple(sorted(found, key=lambda m: (_ORDER.get(m, 5), m)))


@dataclass(frozen=True, slots=True)
class AuthLevel:
    """The ``amr`` and ``auth_time`` claims of a session's access tokens."""

    amr: tuple[str, ...]
    auth_time: int
    #: the second factor last used (``totp``, ``recovery``): ``otp`` in ``amr`` says a
    #: one-time code, not which kind. Not a claim; the sessions page shows it.
    factor: str = ""

    @property
    def multi_factor(self) -> bool:
        """Whether a second factor was used (``mfa`` in ``amr``)."""
        return AMR_MFA in self.amr

    def encode(self) -> str:
        """``pwd,otp,mfa|1800000000`` or ``pwd,otp,mfa|1800000000|recovery`` (what the
        store keeps)."""
        text = f"{','.join(self.amr)}|{self.auth_time}"
        return f"{text}|{self.factor}" if self.factor else text

    @classmethod
    def decode(cls, text: str) -> AuthLevel | None:
        """The level :meth:`encode` wrote, or ``None`` for anything else."""
        methods, sep, rest = text.partition("|")
        when, _, factor = rest.partition("|")
        if not sep or not when.isdigit() or not methods or "|" in factor:
            return None
        return cls(tuple(methods.split(",")), int(when), factor)


def password_level(created_at: int) -> AuthLevel:
    """The level of a session opened by a password alone, at ``created_at``."""
    return AuthLevel((AMR_PWD,), created_at)


class AuthLevelStore(Protocol):
    """Where the :class:`AuthLevel` of sessions that need one is kept (with a TTL)."""

    async def get_level(self, uid: str, sid: str) -> AuthLevel | None:
        """The stored level, or ``None`` (a password-only session)."""
        ...

    async def put_level(self, uid: str, sid: str, level: AuthLevel, *, ttl: int) -> None:
        """Store the level of a session for ``ttl`` seconds (its absolute lifetime)."""
        ...
