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
   twelve spaces), or one piece shorter than ``min_length`` repeated
   (``iloveyouiloveyou``, ``abcabcabcabc``, ``hello hello hello``), or a common
   password repeated. The repeats of a short piece are as easy to guess as the piece.
6. ``contains-email``: the password contains the whole email address, or its local part
   (the text before the last ``@``) when that has at least 3 characters, or the local part
   without its ``+tag`` when that has at least 3 characters. Compared case-insensitively.
7. ``common``: the password, NFKC-normalised and case-folded (:func:`blocklist_key`), is
   in the corpus of common and breached passwords, either as typed or with its spaces
   and ``-_.`` separators removed, so ``correct horse battery staple`` is refused because
   ``correcthorsebatterystaple`` is listed. The corpus (4.9 million entries, see
   ``tokenward/data/COMMON_PASSWORDS.md``) is shipped as a binary fuse filter,
   ``tokenward/data/common_passwords.fuse``.
8. ``keyboard-walk``: the password, apart from a few leading or trailing digits and
   symbols, is a path over neighbouring keys of a US QWERTY keyboard or an alphabet or
   digit run, in at most four strokes of at least three keys each: ``qwertyuiop12``,
   ``1qaz2wsx3edc``, ``zxcvbnm,./``, ``abcdefghijkl``.
9. ``common-variant``: a common password with guessable digits or symbols put before or
   after it: at most 4 of them, or a year, or a digit run like ``123456``, or another
   common password (``password123456``, ``letmein12345``, ``dragon1987!``,
   ``2024summertime``). Password crackers try exactly these first.

A refusal raises :class:`tokenward.errors.PolicyError` whose ``rule`` is the name above
and whose ``detail`` says in plain words what the rule wants; it never contains the
password or the email.

The filter has no false negatives (every corpus entry is refused) and a measured
false-positive rate of about 0.02% per lookup on random strings: a password that is in
no list is refused as ``common`` about once in 4,000 tries, and the user picks another.
It is read once, lazily, on the first check (a few MB, a few milliseconds); a lookup
hashes the key with BLAKE2b and reads three packed fingerprints, a few microseconds.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.resources
import itertools
import string
import struct
import unicodedata
from collections.abc import Callable

from tokenward.errors import PolicyError

__all__ = [
    "COMMON_PASSWORDS_RESOURCE",
    "NIST_MIN_LENGTH",
    "FuseFilter",
    "PasswordPolicy",
    "blocklist_key",
    "is_common",
    "refused_rule",
]

NIST_MIN_LENGTH = 8
"""The smallest ``min_length`` NIST SP 800-63B-4 allows for a single-factor password."""

_MIN_MAX_LENGTH = 64
"""NIST: verifiers SHOULD permit at least 64 characters."""

_RAW_LENGTH_FACTOR = 4
"""A raw password longer than this many times ``max_length`` is refused unnormalised."""

COMMON_PASSWORDS_RESOURCE = "data/common_passwords.fuse"
"""Path of the common-password filter inside the ``tokenward`` package."""

_REFUSED_CATEGORIES = frozenset({"Cc", "Cs"})

_SEPARATORS = frozenset(" -_.")
"""Removed from a key before its second lookup: ``correct-horse battery.staple``."""

_AFFIX_CHARS = string.digits + string.punctuation + " "
"""What a common password is padded with in ``common-variant`` and ``keyboard-walk``."""

_SHORT_AFFIX = 4
"""An affix of at most this many digits and symbols is always guessable."""

_MIN_STEM = 3
"""The shortest stem (password without its affixes) the affix rules look at."""

_WALK_STROKE = 3
"""The fewest keys in one stroke of a keyboard walk."""

_WALK_STROKES = 4
"""The most strokes a keyboard walk may have."""

_QWERTY_ROWS = (
    ("`1234567890-=", "~!@#$%^&*()_+", 0.0),
    ("qwertyuiop[]\\", "QWERTYUIOP{}|", 0.5),
    ("asdfghjkl;'", 'ASDFGHJKL:"', 0.75),
    ("zxcvbnm,./", "ZXCVBNM<>?", 1.25),
)
"""US QWERTY: each row's keys, their shifted characters, and the row's offset in keys."""


def _keyboard_positions() -> dict[str, tuple[int, float]]:
    """Map every character of the QWERTY rows to its (row, horizontal position).

    Returns:
        Plain and shifted characters alike; a shifted character sits on its key.
    """
    positions: dict[str, tuple[int, float]] = {}
    for row, (plain, shifted, offset) in enumerate(_QWERTY_ROWS):
        for column, (low, high) in enumerate(zip(plain, shifted, strict=True)):
            positions[low] = positions[high] = (row, column + offset)
    return positions


_KEY_POSITIONS = _keyboard_positions()


def blocklist_key(password: str) -> str:
    """Fold a password into the form the common-password corpus is stored in.

    The corpus and every lookup use this one function: NFKC, then Unicode case folding.

    Args:
        password: any string.

    Returns:
        The NFKC-normalised, case-folded string.
    """
    return unicodedata.normalize("NFKC", password).casefold()


def _compact(key: str) -> str:
    """Drop spaces and the ``-_.`` separators from a folded key.

    Args:
        key: a key from :func:`blocklist_key`.

    Returns:
        The key without separators: ``correct horse`` becomes ``correcthorse``.
    """
    return "".join(char for char in key if char not in _SEPARATORS)


class FuseFilter:
    """A binary fuse filter (Graf and Lemire, 2022): set membership with no false
    negatives and a false-positive rate of ``2 ** -fingerprint_bits``.

    Every key is hashed to three slots, one in each of three consecutive segments of
    the fingerprint array, and is in the set when the XOR of the three slots equals its
    fingerprint. ``scripts/build_common_passwords.py`` builds the array (it must use the
    same :meth:`hash_key`, :meth:`slots` and :meth:`fingerprint`); this class only reads.

    File layout (little-endian): the 8-byte magic, the 64-bit seed, the segment length,
    the segment count times the segment length, the array length (three 32-bit words),
    the fingerprint width in bits (one byte, 8 to 16), 3 bytes of padding, then the
    fingerprints packed ``fingerprint_bits`` bits each, followed by 3 zero bytes.
    """

    MAGIC = b"twfuse\x00\x01"
    HEADER = struct.Struct("<8sQIIIB3x")

    __slots__ = (
        "_data",
        "_mask",
        "array_length",
        "fingerprint_bits",
        "seed",
        "segment_count_length",
        "segment_length",
    )

    def __init__(self, data: bytes) -> None:
        """Read a filter's header and keep its fingerprints.

        Args:
            data: the whole file.

        Raises:
            ValueError: not a filter this code can read, or truncated.
        """
        if len(data) < self.HEADER.size:
            raise ValueError("common-password filter: truncated header")
        magic, seed, segment_length, segment_count_length, array_length, bits = (
            self.HEADER.unpack_from(data)
        )
        if magic != self.MAGIC or not 8 <= bits <= 16:
            raise ValueError("common-password filter: unknown format")
        if len(data) != self.HEADER.size + (array_length * bits + 7) // 8 + 3:
            raise ValueError("common-password filter: wrong size")
        self._data: bytes = data
        self._mask: int = (1 << bits) - 1
        self.seed: int = seed
        self.segment_length: int = segment_length
        self.segment_count_length: int = segment_count_length
        self.array_length: int = array_length
        self.fingerprint_bits: int = bits

    @staticmethod
    def hash_key(key: str, seed: int) -> int:
        """Hash a folded key to 64 bits: BLAKE2b-64 salted with the seed.

        Args:
            key: a key from :func:`blocklist_key`.
            seed: the filter's seed (64 bits); each seed gives independent hashes.

        Returns:
            The 64-bit hash.
        """
        digest = hashlib.blake2b(
            key.encode("utf-8", "surrogatepass"), digest_size=8, salt=seed.to_bytes(8, "little")
        ).digest()
        return int.from_bytes(digest, "little")

    @staticmethod
    def slots(hashed: int, segment_length: int, segment_count_length: int) -> tuple[int, int, int]:
        """The three array slots of a hash.

        Args:
            hashed: from :meth:`hash_key`.
            segment_length: a power of two.
            segment_count_length: the number of segments that can start a key, times
                ``segment_length``.

        Returns:
            One slot in each of three consecutive segments.
        """
        first = (hashed * segment_count_length) >> 64
        second = first + segment_length
        third = second + segment_length
        mask = segment_length - 1
        return first, second ^ ((hashed >> 18) & mask), third ^ (hashed & mask)

    @staticmethod
    def fingerprint(hashed: int, bits: int) -> int:
        """The fingerprint a key's three slots must XOR to.

        Args:
            hashed: from :meth:`hash_key`.
            bits: the fingerprint width.

        Returns:
            A ``bits``-bit integer.
        """
        return (hashed ^ (hashed >> 32)) & ((1 << bits) - 1)

    def __contains__(self, key: object) -> bool:
        """Tell whether a folded key may be in the set.

        Args:
            key: a key from :func:`blocklist_key`; anything else is not in the set.

        Returns:
            True for every key the filter was built from, and for a fraction
            ``2 ** -fingerprint_bits`` of all other keys.
        """
        if not isinstance(key, str):
            return False
        hashed = self.hash_key(key, self.seed)
        stored = 0
        data, bits, offset = self._data, self.fingerprint_bits, self.HEADER.size
        for slot in self.slots(hashed, self.segment_length, self.segment_count_length):
            bit = slot * bits
            start = offset + (bit >> 3)
            stored ^= int.from_bytes(data[start : start + 3], "little") >> (bit & 7)
        return (stored & self._mask) == self.fingerprint(hashed, bits)


@functools.cache
def _blocklist() -> FuseFilter:
    """Load the common-password filter once, on first use.

    Returns:
        The filter over the folded corpus.
    """
    resource = importlib.resources.files("tokenward").joinpath(COMMON_PASSWORDS_RESOURCE)
    return FuseFilter(resource.read_bytes())


def _listed(key: str) -> bool:
    """Tell whether a folded key is in the shipped corpus.

    Args:
        key: a key from :func:`blocklist_key`.

    Returns:
        The filter's answer; False for an empty key.
    """
    return bool(key) and key in _blocklist()


def _is_common_key(key: str, listed: Callable[[str], bool]) -> bool:
    """The ``common`` rule on a folded key: listed as is, or without its separators.

    Args:
        key: a key from :func:`blocklist_key`.
        listed: the corpus lookup.

    Returns:
        Whether the key or its compact form is listed.
    """
    if listed(key):
        return True
    compact = _compact(key)
    return compact != key and listed(compact)


def is_common(password: str) -> bool:
    """Tell whether a password is in the shipped corpus of common and breached passwords.

    The comparison ignores case and NFKC differences (``"PASSWORD1234"`` is
    ``"password1234"``), and spaces and ``-_.`` separators (``"correct horse battery
    staple"`` is ``"correcthorsebatterystaple"``). The corpus is a probabilistic filter:
    about 0.02% of passwords that are in no list are reported common as well.

    Args:
        password: the password, normalised or not.

    Returns:
        True if the password is in the corpus (or is one of the rare false positives).
    """
    return _is_common_key(blocklist_key(password), _listed)


def _period(text: str) -> int:
    """The length of the shortest piece whose repeats spell ``text``.

    Args:
        text: any string.

    Returns:
        The smallest ``p`` with ``text[i] == text[i - p]`` for every ``i >= p``
        (``len(text)`` when nothing shorter repeats). A trailing partial repeat counts:
        ``abcabcab`` has period 3.
    """
    # The failure function of Knuth-Morris-Pratt: the longest proper border of text.
    border = [0] * (len(text) + 1)
    border[0] = -1
    for i in range(1, len(text) + 1):
        k = border[i - 1]
        while k >= 0 and text[k] != text[i - 1]:
            k = border[k]
        border[i] = k + 1
    return len(text) - border[len(text)]


def _is_repetitive(key: str, min_length: int, listed: Callable[[str], bool]) -> bool:
    """The ``repetitive`` rule on a folded key.

    Args:
        key: a key from :func:`blocklist_key`.
        min_length: the policy's shortest password.
        listed: the corpus lookup.

    Returns:
        True when the key is one character repeated, or (separators aside) a piece
        repeated at least twice that is shorter than ``min_length`` or is common.
    """
    if len(set(key)) == 1:
        return True
    compact = _compact(key) or key
    period = _period(compact)
    if 2 * period > len(compact):
        return False
    return period < min_length or _is_common_key(compact[:period], listed)


def _split_affixes(key: str) -> tuple[str, str, str]:
    """Split a key into leading digits and symbols, the stem, and trailing ones.

    Args:
        key: a key from :func:`blocklist_key`.

    Returns:
        ``(prefix, stem, suffix)``; the stem is empty when the key is all digits
        and symbols.
    """
    stem = key.strip(_AFFIX_CHARS)
    if not stem:
        return key, "", ""
    start = key.index(stem)
    return key[:start], stem, key[start + len(stem) :]


def _is_run(digits: str) -> bool:
    """Tell whether digits step by +1 or -1 (wrapping 9 to 0) or repeat one digit.

    Args:
        digits: a string of ASCII digits.

    Returns:
        True for ``123456``, ``7890``, ``987654``, ``0000``.
    """
    steps = {(int(b) - int(a)) % 10 for a, b in itertools.pairwise(digits)}
    return len(steps) <= 1 and steps <= {0, 1, 9}


def _is_guessable_affix(affix: str, listed: Callable[[str], bool]) -> bool:
    """Tell whether digits and symbols added to a common password are guessable.

    Args:
        affix: a prefix or suffix from :func:`_split_affixes`.
        listed: the corpus lookup.

    Returns:
        True for an empty affix, one of at most 4 characters (separators aside), a year
        (1900-2099) or a digit run with at most 2 symbols, or a common password.
    """
    compact = _compact(affix)
    if len(compact) <= _SHORT_AFFIX:
        return True
    digits = "".join(char for char in compact if char.isdigit())
    if len(compact) - len(digits) <= 2 and digits:
        year = len(digits) == 4 and digits[:2] in ("19", "20")
        if year or _is_run(digits):
            return True
    return listed(compact)


def _is_common_variant(key: str, listed: Callable[[str], bool]) -> bool:
    """The ``common-variant`` rule: a common stem with guessable affixes.

    Args:
        key: a key from :func:`blocklist_key`.
        listed: the corpus lookup.

    Returns:
        True when digits or symbols pad a common stem of at least 3 characters, each
        affix guessable (:func:`_is_guessable_affix`).
    """
    prefix, stem, suffix = _split_affixes(key)
    if len(stem) < _MIN_STEM or not (prefix or suffix):
        return False
    return (
        _is_guessable_affix(prefix, listed)
        and _is_guessable_affix(suffix, listed)
        and _is_common_key(stem, listed)
    )


def _adjacent(first: str, second: str) -> bool:
    """Tell whether two characters are one stroke apart in a walk.

    Args:
        first: one character.
        second: the next character.

    Returns:
        True for neighbouring keys of a US QWERTY keyboard (same key, the next key on
        the row, or a touching key on the row above or below), or for letters or
        digits next to each other in the alphabet or in 0-9.
    """
    if (
        first.isascii()
        and second.isascii()
        and first.isalnum()
        and second.isalnum()
        and abs(ord(first) - ord(second)) == 1
        and first.isalpha() == second.isalpha()
    ):
        return True
    here = _KEY_POSITIONS.get(first)
    there = _KEY_POSITIONS.get(second)
    if here is None or there is None:
        return False
    rows = abs(here[0] - there[0])
    distance = abs(here[1] - there[1])
    return (rows == 0 and distance <= 1) or (rows == 1 and distance <= 1)


def _is_walk(text: str) -> bool:
    """Tell whether a text is at most 4 strokes of at least 3 neighbouring keys each.

    Args:
        text: a folded key or stem.

    Returns:
        True for ``qwertyuiop``, ``1qaz2wsx3edc``, ``zxcvbnm,./``.
    """
    if len(text) < _WALK_STROKE:
        return False
    strokes = []
    length = 1
    for first, second in itertools.pairwise(text):
        if _adjacent(first, second):
            length += 1
        else:
            strokes.append(length)
            length = 1
    strokes.append(length)
    return len(strokes) <= _WALK_STROKES and min(strokes) >= _WALK_STROKE


def _is_keyboard_walk(key: str, listed: Callable[[str], bool]) -> bool:
    """The ``keyboard-walk`` rule on a folded key.

    Args:
        key: a key from :func:`blocklist_key`.
        listed: the corpus lookup (for guessable affixes).

    Returns:
        True when the key, or its stem with guessable affixes, is a walk.
    """
    compact = _compact(key)
    if _is_walk(key) or (compact != key and _is_walk(compact)):
        return True
    prefix, stem, suffix = _split_affixes(key)
    return (
        stem != key
        and _is_walk(stem)
        and _is_guessable_affix(prefix, listed)
        and _is_guessable_affix(suffix, listed)
    )


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


def _pattern_rule(key: str, listed: Callable[[str], bool]) -> str | None:
    """The first of the rules after ``contains-email`` that a folded key breaks.

    Args:
        key: a key from :func:`blocklist_key`.
        listed: the corpus lookup.

    Returns:
        ``common``, ``keyboard-walk`` or ``common-variant``, or None.
    """
    if _is_common_key(key, listed):
        return "common"
    if _is_keyboard_walk(key, listed):
        return "keyboard-walk"
    if _is_common_variant(key, listed):
        return "common-variant"
    return None


def refused_rule(
    key: str, *, min_length: int, listed: Callable[[str], bool] = _listed
) -> str | None:
    """The first corpus or pattern rule a folded key breaks (every rule but the length,
    control-character and email ones).

    The build script calls it with the exact corpus, to leave out of the filter the
    entries that the pattern rules refuse anyway. Every rule is monotone in ``listed``:
    a lookup that answers True more often never refuses less.

    Args:
        key: a key from :func:`blocklist_key`.
        min_length: the policy's shortest password.
        listed: the corpus lookup; the shipped filter by default.

    Returns:
        ``repetitive``, ``common``, ``keyboard-walk`` or ``common-variant``, or None.
    """
    if _is_repetitive(key, min_length, listed):
        return "repetitive"
    return _pattern_rule(key, listed)


_DETAILS = {
    "repetitive": "Password must not be one character or one short piece repeated.",
    "common": "Password is too common: it is on a list of known breached passwords.",
    "keyboard-walk": (
        "Password must not be a keyboard pattern or a simple sequence such as "
        "qwerty, 1qaz2wsx or abcdef."
    ),
    "common-variant": (
        "Password is too common: it is a known breached password with a few digits, "
        "a year or symbols added."
    ),
}


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
                ``too-short``, ``repetitive``, ``contains-email``, ``common``,
                ``keyboard-walk`` or ``common-variant``; the detail never contains
                the password.
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
        folded = blocklist_key(normalized)
        if _is_repetitive(folded, self.min_length, _listed):
            raise PolicyError("repetitive", _DETAILS["repetitive"])
        if any(fragment in folded for fragment in _email_fragments(email)):
            raise PolicyError(
                "contains-email", "Password must not contain your email address or its user name."
            )
        rule = _pattern_rule(folded, _listed)
        if rule is not None:
            raise PolicyError(rule, _DETAILS[rule])
        return normalized

    def _too_long(self) -> PolicyError:
        """Build the ``too-long`` refusal.

        Returns:
            The error to raise.
        """
        return PolicyError(
            "too-long", f"Password must be at most {self.max_length} characters long."
        )
