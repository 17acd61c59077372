"""Users: registration, authentication and password changes. Framework-free.

Two forms of an email address:

* the *address* (:func:`normalize_email`: surrounding space removed, NFKC, lower-cased) is
  what is stored, shown and mailed to. ``lower()`` never turns one letter into another
  (``ß`` stays ``ß``), so it still names the mailbox the user typed;
* the *key* (:func:`email_key`: NFKC and full Unicode case folding, ``str.casefold``) is what
  uniqueness, lookups and per-account throttling use. ``straße@``, ``STRASSE@`` and
  ``strasse@``, or ``ΣΊΣΥΦΟΣ@``, ``σίσυφος@`` and ``σίσυφοσ@`` (final and medial sigma), are
  one key and so one account: ``lower()`` alone would let each register separately.

Login never reveals whether an account exists: an unknown email is checked against a dummy
hash at the same cost, and both failures raise the same
:class:`~tokenward.errors.InvalidCredentials`.

Every user has a *credential epoch*, a counter that every operation that must lock out
whoever knew the old credentials moves forward in the same write: a password change,
disabling the account, an operator's ``sessions revoke --user`` (and any future reset).
A login remembers the epoch it authenticated under and, once its session exists, asks
:func:`still_current`; see there why that closes the race with the operation's
``end_all``. A rehash at login keeps the password and does not move the epoch.
"""

from __future__ import annotations

import random
import re
import unicodedata
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from tokenward.clock import monotonic
from tokenward.errors import Conflict, Forbidden, InvalidCredentials, PolicyError, WrongPassword
from tokenward.password_policy import PasswordPolicy
from tokenward.passwords import PasswordHasher
from tokenward.revocation import SPREAD

__all__ = [
    "Profiles",
    "User",
    "UserStore",
    "Users",
    "email_key",
    "normalize_email",
    "still_current",
]

MAX_EMAIL_LENGTH = 254
#: A password change retries its compare-and-swap this often when the stored hash moved
#: under it (a login's rehash does that once per cost change) before giving up with 409.
CHANGE_ATTEMPTS = 3
_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]{1,64}@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]+$")


@dataclass(frozen=True, slots=True)
class User:
    """A stored user. ``password_hash`` is an argon2id hash, never a password."""

    id: str
    email: str
    password_hash: str
    created_at: int
    disabled: bool = False
    #: moved forward by every change that must end what the old credentials opened
    credential_epoch: int = 0
    #: the owner proved they receive mail at ``email`` (a verification or change link)
    email_verified: bool = False
    #: whether a confirmed second factor existed when the user was read (``None``: the
    #: store did not look); a hint that spares a login's second-step lookup, not part of
    #: the user's identity (not compared)
    has_second_factor: bool | None = field(default=None, compare=False)

    def __repr__(self) -> str:
        return f"User(id={self.id!r}, email={self.email!r}, disabled={self.disabled!r})"


class UserStore(Protocol):
    """Where users live.

    Concurrency contract: ``add`` is atomic with the uniqueness check on the email's
    :func:`email_key` (a unique index), so two concurrent registrations of one address,
    however spelt, give one user and one :class:`~tokenward.errors.Conflict`. Every write
    below is one statement: a compare-and-swap where it says so, and the credential epoch
    moves in the same statement as the change it belongs to.
    """

    async def add(self, user: User) -> None:
        """Insert a user; raises ``Conflict`` when the email's key is taken."""
        ...

    async def by_email(self, email: str) -> User | None:
        """The user whose email has the :func:`email_key` of ``email``, if any."""
        ...

    async def by_id(self, user_id: str) -> User | None:
        """The user with this id, if any."""
        ...

    async def set_password_hash(
        self, user_id: str, password_hash: str, *, expected_hash: str, bump_epoch: bool, now: int
    ) -> bool:
        """Replace the hash if it still is ``expected_hash``; whether it was replaced.

        ``bump_epoch`` also moves the credential epoch forward (a new password; not a rehash).
        """
        ...

    async def set_disabled(self, user_id: str, disabled: bool, *, now: int) -> bool:
        """Disable (moving the credential epoch) or enable a user; ``False`` if none."""
        ...

    async def bump_credential_epoch(self, user_id: str, *, now: int) -> bool:
        """Move the credential epoch forward; ``False`` when there is no such user."""
        ...

    async def list(self, *, limit: int = 100, offset: int = 0) -> list[User]:
        """Users ordered by creation time."""
        ...

    async def set_email_verified(self, user_id: str, email: str, *, now: int) -> bool:
        """Mark ``email`` verified if it still is the user's address; whether it was."""
        ...

    async def set_email(self, user_id: str, email: str, *, expected_email: str, now: int) -> bool:
        """Replace the address (verified: the change was confirmed from it) if it still is
        ``expected_email``; whether it was replaced. Raises ``Conflict`` when the new
        address's key is taken."""
        ...


def normalize_email(email: str) -> str:
    """The address as stored and shown (NFKC, lower-cased), or raise ``PolicyError``."""
    value = unicodedata.normalize("NFKC", email.strip()).lower()
    if len(value) > MAX_EMAIL_LENGTH or not _EMAIL.fullmatch(value):
        raise PolicyError("email", "email must be a valid address of at most 254 characters")
    return value


def email_key(email: str) -> str:
    """The key that identifies an account's email: NFKC, then ``casefold``, then NFKC.

    Any string, valid address or not (throttling keys what a client typed). Case folding
    can undo NFKC, hence the second pass; the result is idempotent, and the key of
    :func:`normalize_email`'s address is the key of what was typed.
    """
    folded = unicodedata.normalize("NFKC", email.strip()).casefold()
    return unicodedata.normalize("NFKC", folded).strip()


def still_current(user: User | None, epoch: int) -> bool:
    """Whether ``user``, read again once a login's session exists, lets the login keep it.

    ``epoch`` is the credential epoch the login authenticated under. A login re-reads its
    user after opening the session and ends the session unless this holds. Every operation
    that moves the epoch (or disables) writes the database first and then ends all of the
    user's sessions. So for a login that verified the old credentials, either the re-read
    sees the new epoch (the login is refused), or the write committed after the re-read,
    hence after the session was created, and the operation's ``end_all``, which follows
    its write, ends that session. No session opened with old credentials outlives the
    operation.
    """
    return user is not None and not user.disabled and user.credential_epoch == epoch


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
            # Only over the hash just verified: a password change that landed meanwhile
            # wins, and this write (of the old password, at the new cost) is dropped.
            await self.store.set_password_hash(
                user.id,
                await self.hasher.hash(password),
                expected_hash=user.password_hash,
                bump_epoch=False,
                now=now,
            )
        return user

    async def change_password(self, user_id: str, current: str, new: str, *, now: int) -> User:
        """Replace the password after checking the current one; moves the credential epoch.

        The write is a compare-and-swap on the hash that ``current`` was verified against,
        so a concurrent change is never overwritten. When the hash moved meanwhile,
        ``current`` is checked again against the new one: a login's rehash keeps the
        password (the change goes through), another change does not (``current`` is now
        wrong, and answered as such). The caller ends the user's other sessions afterwards.

        Raises:
            WrongPassword: ``current`` is wrong (403: the session itself is fine).
            PolicyError: ``new`` breaks the policy.
            Forbidden: the account is gone or disabled.
            Conflict: the hash kept moving under every attempt (409; try again).
        """
        current = self._bounded(current)
        new_hash: str | None = None
        for _ in range(CHANGE_ATTEMPTS):
            user = await self.store.by_id(user_id)
            if user is None or user.disabled:
                raise Forbidden("account not available")
            if not await self.hasher.verify(user.password_hash, current):
                raise WrongPassword("current password is wrong")
            if new_hash is None:
                new_hash = await self.hasher.hash(self.policy.check(new, email=user.email))
            if await self.store.set_password_hash(
                user.id, new_hash, expected_hash=user.password_hash, bump_epoch=True, now=now
            ):
                return replace(
                    user, password_hash=new_hash, credential_epoch=user.credential_epoch + 1
                )
        raise Conflict("the password changed while it was being replaced; try again")

    async def reset_password(self, user: User, new: str, *, now: int) -> User:
        """Set a new password without the current one (a reset link proved the mailbox).

        A compare-and-swap on the hash ``user`` was read with, moving the credential epoch:
        a change or another reset that landed since wins, and this one is refused.

        Raises:
            PolicyError: ``new`` breaks the policy (nothing changed).
            Forbidden: the account is gone, disabled, or changed its password meanwhile.
        """
        if user.disabled:
            raise Forbidden("account not available")
        new_hash = await self.hasher.hash(self.policy.check(new, email=user.email))
        if not await self.store.set_password_hash(
            user.id, new_hash, expected_hash=user.password_hash, bump_epoch=True, now=now
        ):
            raise Forbidden("the password changed meanwhile; request a new link")
        return replace(user, password_hash=new_hash, credential_epoch=user.credential_epoch + 1)

    async def check_password(self, user_id: str, password: str) -> User:
        """The user, after checking ``password`` (re-authentication before a sensitive change).

        Raises:
            InvalidCredentials: wrong password, or the account is gone or disabled.
            PolicyError: the password is longer than the policy allows (no hashing done).
        """
        password = self._bounded(password)
        user = await self.store.by_id(user_id)
        ok = await self.hasher.verify(user.password_hash if user else None, password)
        if user is None or not ok or user.disabled:
            raise InvalidCredentials("invalid email or password")
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


class Profiles:
    """What a signed-in request shows of its user (``GET /auth/me``), read through a small
    per-process cache: the user store is a database round trip, the profile route's whole
    cost otherwise.

    Only the display path reads through it. Whether a session may go on never depends on
    it: disabling a user or changing their credentials ends their sessions (refused at
    once through the session store), and logins and password changes read the store.

    A change of address or verification is announced on the revocation feed, and every
    process calls :meth:`forget` when it arrives (the process making the change calls it
    first). While ``vouched()`` says the feed is up, an entry is therefore trusted for
    ``vouched_ttl`` seconds; otherwise for ``ttl``, the most a lost announcement can show an
    old address. The owner calls :meth:`reset` whenever the feed goes down or comes back:
    announcements may have been missed in between.

    Args:
        store: where users are.
        ttl: seconds an entry is trusted while the feed is not vouching.
        vouched_ttl: seconds an entry is trusted while it is (a safety net, as the
            session cache's ``max_age``).
        vouched: whether the feed is delivering announcements now; never, by default.
        max_entries: entries kept (the least recently used goes first).
        clock: a monotonic clock, in seconds.
        spread: the share of either TTL an entry may lose at random, as the session
            cache's (:data:`~tokenward.revocation.SPREAD`): users read together do not
            all go back to the store in the same second.
        rng: a number in [0, 1) per entry (tests pin it).
    """

    def __init__(
        self,
        store: UserStore,
        *,
        ttl: float = 5.0,
        vouched_ttl: float = 300.0,
        vouched: Callable[[], bool] = lambda: False,
        max_entries: int = 10_000,
        clock: Callable[[], float] = monotonic,
        spread: float = SPREAD,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.vouched_ttl = vouched_ttl
        self.vouched = vouched
        self.max_entries = max_entries
        self.clock = clock
        self.spread = spread
        self.rng = rng
        #: user id -> (when read, share of the TTL it is trusted, the user)
        self._entries: OrderedDict[str, tuple[float, float, User | None]] = OrderedDict()
        self._generation = 0

    async def by_id(self, user_id: str) -> User | None:
        """The user (``None``: there is none), from the cache while it is fresh."""
        entry = self._entries.get(user_id)
        now = self.clock()
        if entry is not None:
            read_at, share, cached = entry
            if now - read_at < (self.vouched_ttl if self.vouched() else self.ttl) * share:
                self._entries.move_to_end(user_id)
                return cached
        generation = self._generation
        user = await self.store.by_id(user_id)
        # A change announced while the store was being read may not be in what it
        # returned: that answer is used once, not kept.
        if self.max_entries > 0 and generation == self._generation:
            self._entries[user_id] = (now, 1.0 - self.spread * self.rng(), user)
            self._entries.move_to_end(user_id)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return user

    def reset(self) -> None:
        """Drop every entry (the feed went down or came back)."""
        self._generation += 1
        self._entries.clear()

    def forget(self, user_id: str) -> None:
        """Drop the user's entry: the next read goes to the store."""
        self._generation += 1
        self._entries.pop(user_id, None)
