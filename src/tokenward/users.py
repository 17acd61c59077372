"""Users: registration, authentication and password changes. Framework-free.

Emails are normalised (surrounding space removed, NFKC, lower-cased) before they are stored
or looked up, so uniqueness is case-insensitive. Login never reveals whether an account
exists: an unknown email is checked against a dummy hash at the same cost, and both failures
raise the same :class:`~tokenward.errors.InvalidCredentials`.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass
from typing import Protocol

from tokenward.errors import Forbidden, InvalidCredentials, PolicyError, WrongPassword
from tokenward.password_policy import PasswordPolicy
from tokenward.passwords import PasswordHasher

__all__ = ["User", "UserStore", "Users", "normalize_email"]

MAX_EMAIL_LENGTH = 254
_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]{1,64}@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]+$")


@dataclass(frozen=True, slots=True)
class User:
    """A stored user. ``password_hash`` is an argon2id hash, never a password."""

    id: str
    email: str
    password_hash: str
    created_at: int
    disabled: bool = False

    def __repr__(self) -> str:
        return f"User(id={self.id!r}, email={self.email!r}, disabled={self.disabled!r})"


class UserStore(Protocol):
    """Where users live.

    Concurrency contract: ``add`` is atomic with the uniqueness check on ``email`` (a
    unique index), so two concurrent registrations of one email give one user and one
    :class:`~tokenward.errors.Conflict`.
    """

    async def add(self, user: User) -> None:
        """Insert a user; raises ``Conflict`` when the email is taken."""
        ...

    async def by_email(self, email: str) -> User | None:
        """The user with this (normalised) email, if any."""
        ...

    async def by_id(self, user_id: str) -> User | None:
        """The user with this id, if any."""
        ...

    async def set_password_hash(self, user_id: str, password_hash: str, *, now: int) -> None:
        """Replace a user's password hash."""
        ...

    async def set_disabled(self, user_id: str, disabled: bool, *, now: int) -> bool:
        """Disable or enable a user; ``False`` when there is no such user."""
        ...

    async def list(self, *, limit: int = 100, offset: int = 0) -> list[User]:
        """Users ordered by creation time."""
        ...


def normalize_email(email: str) -> str:
    """The canonical form of an email address, or raise ``PolicyError``."""
    value = unicodedata.normalize("NFKC", email.strip()).lower()
    if len(value) > MAX_EMAIL_LENGTH or not _EMAIL.fullmatch(value):
        raise PolicyError("email", "email must be a valid address of at most 254 characters")
    return value


class Users:
    """Registration and authentication over a :class:`UserStore`."""

    def __init__(self, store: UserStore, hasher: PasswordHasher, policy: PasswordPolicy) -> None:
        self.store = store
        self.hasher = hasher
        self.policy = policy

    async def register(self, email: str, password: str, *, now: int) -> User:
        """Create an account.

        Raises:
            PolicyError: bad email or a password that breaks the policy.
            Conflict: the email is already registered.
        """
        address = normalize_email(email)
        password = self.policy.check(password, email=address)
        user = User(
            id=uuid.uuid4().hex,
            email=address,
            password_hash=await self.hasher.hash(password),
            created_at=now,
        )
        await self.store.add(user)
        return user

    async def authenticate(self, email: str, password: str, *, now: int) -> User:
        """The user whose email and password these are.

        Raises:
            PolicyError: the password is longer than the policy allows (no hashing done).
            InvalidCredentials: unknown email, wrong password or disabled account, alike.
        """
        password = self._bounded(password)
        try:
            address = normalize_email(email)
        except PolicyError:
            address = None
        user = await self.store.by_email(address) if address else None
        ok = await self.hasher.verify(user.password_hash if user else None, password)
        if user is None or not ok or user.disabled:
            raise InvalidCredentials("invalid email or password")
        if self.hasher.needs_rehash(user.password_hash):
            await self.store.set_password_hash(user.id, await self.hasher.hash(password), now=now)
        return user

    async def change_password(self, user_id: str, current: str, new: str, *, now: int) -> User:
        """Replace the password after checking the current one.

        Raises:
            WrongPassword: ``current`` is wrong (403: the session itself is fine).
            PolicyError: ``new`` breaks the policy.
            Forbidden: the account is gone or disabled.
        """
        user = await self.store.by_id(user_id)
        if user is None or user.disabled:
            raise Forbidden("account not available")
        if not await self.hasher.verify(user.password_hash, self._bounded(current)):
            raise WrongPassword("current password is wrong")
        new = self.policy.check(new, email=user.email)
        await self.store.set_password_hash(user.id, await self.hasher.hash(new), now=now)
        return user

    def _bounded(self, password: str) -> str:
        # The length rule of PasswordPolicy.check, so any password that could register can
        # log in: at most max_length characters after NFKC; a raw input 4x longer is refused
        # before it is even normalised. Either way no hashing happens.
        too_long = PolicyError(
            "too-long", f"password must be at most {self.policy.max_length} characters"
        )
        if len(password) > 4 * self.policy.max_length:
            raise too_long
        normalized = self.policy.normalize(password)
        if len(normalized) > self.policy.max_length:
            raise too_long
        return normalized
