"""Password policy after NIST SP 800-63B-4 (section 3.1.1.2, memorized secrets).

What is checked, in this order, by :meth:`PasswordPolicy.check`:

1. ``too-long``: more than ``max_length`` code points. A password of more than
   ``4 * max_length`` code points is refused before it is even normalised, so an
   oversized input costs nothing; no hashing ever happens here.
2. The password is normalised with NFKC (:meth:`PasswordPolicy.normalize`), the same
   function the login path applies, so every NFKC-equivalent spelling of a password is
   the same password. Case is kept: passwords are case-sensitive.
3. ``control-characters``: any character of Unicode category ``Cc`` (NUL, C0 controls
   such as tab and newline, DEL, C1 controls) or ``Cs`` (an unpaired surrogate, which
   cannot be encoded as UTF-8). Every other character is allowed, spaces included, as
   NIST asks: printing ASCII, the space character and the rest of Unicode.
4. ``too-long`` / ``too-short``: the length in code points after NFKC, against
   ``max_length`` and ``min_length``. An empty password is ``too-short``.
5. ``repetitive``: the whole password is one character repeated (``"aaaaaaaaaaaa"``,
   twelve spaces).
6. ``contains-email``: the password contains the whole email address, or its local part
   (the text before the last ``@``) when that has at least 3 characters, or the local part
   without its ``+tag`` when that has at least 3 characters. Compared case-insensitively.
7. ``common``: the password, NFKC-normalised and case-folded, is on the list of common and
   breached passwords shipped in ``tokenward/data/common_passwords.txt.xz`` (see
   ``tokenward/data/COMMON_PASSWORDS.md``). The list is case-folded, so ``Password1234``
   is refused because ``password1234`` is listed.

A refusal raises :class:`tokenward.errors.PolicyError` whose ``rule`` is the name above
and whose ``detail`` says in plain words what the rule wants; it never contains the
password or the email.

The common-password list is decompressed once, on first use, into one sorted
newline-separated ``bytes`` blob (about 1.4 MB); a lookup is a binary search over it,
O(log n), with no per-entry objects kept in memory.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import lzma
import unicodedata

from tokenward.errors import PolicyError

__all__ = [
    "COMMON_PASSWORDS_RESOURCE",
    "NIST_MIN_LENGTH",
    "PasswordPolicy",
    "blocklist_key",
    "is_common",
]

NIST_MIN_LENGTH = 8
"""The smallest ``min_length`` NIST SP 800-63B-4 allows for a single-factor password."""

_MIN_MAX_LENGTH = 64
"""NIST: verifiers SHOULD permit at least 64 characters."""

_RAW_LENGTH_FACTOR = 4
"""A raw password longer than this many times ``max_length`` is refused unnormalised."""

COMMON_PASSWORDS_RESOURCE = "data/common_passwords.txt.xz"
"""Path of the common-password list inside the ``tokenward`` package."""

_REFUSED_CATEGORIES = frozenset({"Cc", "Cs"})


def blocklist_key(password: str) -> str:
    """Fold a password into the form the common-password list is stored in.

    The list and every lookup use this one function: NFKC, then Unicode case folding.

    Args:
        password: any string.

    Returns:
        The NFKC-normalised, case-folded string.
    """
    return unicodedata.normalize("NFKC", password).casefold()


@functools.cache
def _blocklist() -> bytes:
    """Load the common-password list once.

    Returns:
        The decompressed list: UTF-8 entries, sorted by their bytes, each ending in ``\\n``.
    """
    resource = importlib.resources.files("tokenward").joinpath(COMMON_PASSWORDS_RESOURCE)
    return lzma.decompress(resource.read_bytes())


def _contains_line(blob: bytes, needle: bytes) -> bool:
    """Binary-search a sorted, newline-terminated list of lines for an exact line.

    Args:
        blob: lines sorted by their bytes, each terminated by ``\\n``.
        needle: the line to find, without ``\\n``.

    Returns:
        Whether ``needle`` is one of the lines.
    """
    lo, hi = 0, len(blob)  # lo and hi are always the start of a line, or len(blob)
    while lo < hi:
        mid = (lo + hi) // 2
        newline = blob.rfind(b"\n", lo, mid)
        start = lo if newline < 0 else newline + 1
        end = blob.index(b"\n", start)
        line = blob[start:end]
        if needle == line:
            return True
        if needle < line:
            hi = start
        else:
            lo = end + 1
    return False


def is_common(password: str) -> bool:
    """Tell whether a password is on the shipped list of common and breached passwords.

    The comparison ignores case and NFKC differences: ``"PASSWORD1234"`` and
    ``"password1234"`` give the same answer.

    Args:
        password: the password, normalised or not.

    Returns:
        True if the password is on the list.
    """
    key = blocklist_key(password)
    if not key or "\n" in key:
        return False
    return _contains_line(_blocklist(), key.encode("utf-8", "surrogatepass"))


def _email_fragments(email: str) -> set[str]:
    """The case-folded pieces of an email address a password must not contain.

    Args:
        email: the account's email address.

    Returns:
        The whole address, its local part and its local part without a ``+tag``;
        the last two only when they have at least 3 characters.
    """
    whole = blocklist_key(email).strip()
    fragments = {whole} if whole else set()
    local = whole.rpartition("@")[0] if "@" in whole else whole
    for candidate in (local, local.partition("+")[0]):
        if len(candidate) >= 3:
            fragments.add(candidate)
    return fragments


@dataclasses.dataclass(frozen=True, slots=True)
class PasswordPolicy:
    """The rules a new password must meet (NIST SP 800-63B-4).

    Attributes:
        min_length: fewest code points after NFKC; at least 8 (``NIST_MIN_LENGTH``).
            Configured by ``TOKENWARD_PASSWORD_MIN_LENGTH``.
        max_length: most code points after NFKC; at least 64 and at least ``min_length``.
            A longer password is refused (HTTP 422) before any hashing.

    Raises:
        ValueError: at construction, if a limit is out of range.
    """

    min_length: int = 12
    max_length: int = 1024

    def __post_init__(self) -> None:
        """Refuse limits NIST does not allow.

        Raises:
            ValueError: ``min_length`` below 8, ``max_length`` below 64, or
                ``max_length`` below ``min_length``.
        """
        if self.min_length < NIST_MIN_LENGTH:
            raise ValueError(
                f"min_length must be at least {NIST_MIN_LENGTH} (NIST SP 800-63B-4), "
                f"got {self.min_length}"
            )
        if self.max_length < _MIN_MAX_LENGTH:
            raise ValueError(
                f"max_length must be at least {_MIN_MAX_LENGTH}, got {self.max_length}"
            )
        if self.max_length < self.min_length:
            raise ValueError(
                f"max_length ({self.max_length}) must not be below min_length ({self.min_length})"
            )

    def normalize(self, password: str) -> str:
        """Normalise a password the one way used at registration, change and login.

        Args:
            password: the password as typed.

        Returns:
            The NFKC form of ``password``; case and spaces are kept.
        """
        return unicodedata.normalize("NFKC", password)

    def check(self, password: str, *, email: str) -> str:
        """Check a new password against every rule and return the form to hash.

        Args:
            password: the new password as typed.
            email: the account's email address (for the ``contains-email`` rule).

        Returns:
            The normalised password (:meth:`normalize`), which is what must be hashed.

        Raises:
            PolicyError: ``rule`` is one of ``too-long``, ``control-characters``,
                ``too-short``, ``repetitive``, ``contains-email`` or ``common``; the
                detail never contains the password.
        """
        if len(password) > _RAW_LENGTH_FACTOR * self.max_length:
            raise self._too_long()
        normalized = self.normalize(password)
        if any(unicodedata.category(char) in _REFUSED_CATEGORIES for char in normalized):
            raise PolicyError(
                "control-characters",
                "Password must not contain control characters such as NUL, tab or newline.",
            )
        if len(normalized) > self.max_length:
            raise self._too_long()
        if len(normalized) < self.min_length:
            raise PolicyError(
                "too-short", f"Password must be at least {self.min_length} characters long."
            )
        if len(set(normalized)) == 1:
            raise PolicyError("repetitive", "Password must not be one character repeated.")
        folded = blocklist_key(normalized)
        if any(fragment in folded for fragment in _email_fragments(email)):
            raise PolicyError(
                "contains-email", "Password must not contain your email address or its user name."
            )
        if is_common(normalized):
            raise PolicyError(
                "common", "Password is too common: it is on a list of known breached passwords."
            )
        return normalized

    def _too_long(self) -> PolicyError:
        """Build the ``too-long`` refusal.

        Returns:
            The error to raise.
        """
        return PolicyError(
            "too-long", f"Password must be at most {self.max_length} characters long."
        )
