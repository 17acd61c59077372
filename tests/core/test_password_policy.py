"""Tests of the NIST SP 800-63B-4 password policy (tokenward.password_policy)."""

from __future__ import annotations

import importlib.resources
import lzma
import unicodedata

import pytest

from tokenward.errors import PolicyError
from tokenward.password_policy import (
    COMMON_PASSWORDS_RESOURCE,
    PasswordPolicy,
    blocklist_key,
    is_common,
)

EMAIL = "alice.smith@example.com"
GOOD = "violet tractor 42 umbrella"


def _refused(password: str, *, email: str = EMAIL, policy: PasswordPolicy | None = None) -> str:
    """Check a password that must be refused and return the rule it broke."""
    with pytest.raises(PolicyError) as caught:
        (policy or PasswordPolicy()).check(password, email=email)
    return caught.value.rule


def _fullwidth(text: str) -> str:
    """Spell printable ASCII with its full-width compatibility characters (U+FF01..U+FF5E)."""
    return "".join(chr(ord(char) + 0xFEE0) if "!" <= char <= "~" else char for char in text)


def _shipped_entries() -> list[bytes]:
    """The lines of the common-password list as shipped in the package."""
    resource = importlib.resources.files("tokenward").joinpath(COMMON_PASSWORDS_RESOURCE)
    blob = lzma.decompress(resource.read_bytes())
    assert blob.endswith(b"\n")
    return blob[:-1].split(b"\n")


def test_defaults_follow_nist() -> None:
    """The default policy asks for 12 to 1024 code points."""
    policy = PasswordPolicy()
    assert (policy.min_length, policy.max_length) == (12, 1024)


def test_password_one_below_min_length_is_too_short() -> None:
    """An 11-character password is refused with rule too-short."""
    assert _refused("vtr42umbrel") == "too-short"


def test_empty_password_is_too_short() -> None:
    """An empty password is refused with rule too-short."""
    assert _refused("") == "too-short"


def test_password_of_exactly_min_length_is_accepted() -> None:
    """A 12-character password that breaks no rule is accepted."""
    assert PasswordPolicy().check("vtr42umbrela", email=EMAIL) == "vtr42umbrela"


def test_configured_min_length_is_enforced() -> None:
    """A policy with min_length 16 refuses a 15-character password."""
    assert _refused("vtr42umbrela!!x", policy=PasswordPolicy(min_length=16)) == "too-short"


def test_64_character_password_is_accepted() -> None:
    """A 64-character password is accepted unchanged."""
    password = ("violet tractor 42 umbrella " * 3)[:64]
    assert len(password) == 64
    assert PasswordPolicy().check(password, email=EMAIL) == password


def test_max_length_password_is_accepted() -> None:
    """A password of exactly max_length (1024) code points is accepted."""
    password = ("violet tractor 42 umbrella " * 40)[:1024]
    assert PasswordPolicy().check(password, email=EMAIL) == password


def test_password_over_max_length_is_too_long() -> None:
    """A 1025-character password is refused with rule too-long."""
    assert _refused(("violet tractor 42 umbrella " * 40)[:1025]) == "too-long"


def test_huge_password_is_too_long() -> None:
    """A million-character password is refused with rule too-long."""
    assert _refused("x7" * 500_000) == "too-long"


def test_length_is_counted_after_nfkc() -> None:
    """Length is counted in code points after NFKC, not in the code points typed."""
    composed = "éèêëàâäîïôöù"  # 12 code points
    decomposed = unicodedata.normalize("NFD", composed)  # 24 code points
    assert len(decomposed) == 24
    assert PasswordPolicy().check(decomposed, email=EMAIL) == composed
    assert _refused(unicodedata.normalize("NFD", composed[:11])) == "too-short"


def test_unicode_password_is_accepted() -> None:
    """A password of Cyrillic, CJK, emoji and spaces is accepted."""
    password = "Привет мир 你好 🔐 пароль"
    assert PasswordPolicy().check(password, email=EMAIL) == password


def test_spaces_are_accepted() -> None:
    """A passphrase with spaces is accepted and keeps its spaces."""
    assert PasswordPolicy().check(GOOD, email=EMAIL) == GOOD


def test_nfkc_equivalent_forms_normalise_identically() -> None:
    """Composed, decomposed and full-width spellings of a password give one result."""
    composed = "Café Noël 2024 Ü"
    decomposed = unicodedata.normalize("NFD", composed)
    fullwidth = f"Café Noël {_fullwidth('2024')} Ü"
    assert decomposed != composed
    policy = PasswordPolicy()
    checked = {policy.check(form, email=EMAIL) for form in (composed, decomposed, fullwidth)}
    assert checked == {composed}


def test_normalize_matches_check_and_keeps_case() -> None:
    """normalize() is the form check() returns: NFKC, case and spaces kept."""
    policy = PasswordPolicy()
    typed = f"{_fullwidth('V')}iolet Tractor {_fullwidth('42')} Umbrella"
    assert policy.normalize(typed) == "Violet Tractor 42 Umbrella"
    assert policy.check(typed, email=EMAIL) == policy.normalize(typed)


@pytest.mark.parametrize("password", ["password1234", "123456789012", "qwertyuiopasdfgh"])
def test_common_password_is_refused(password: str) -> None:
    """A password on the shipped list is refused with rule common."""
    assert _refused(password) == "common"


def test_case_variant_of_common_password_is_refused() -> None:
    """A common password in other letter case is still refused with rule common."""
    assert _refused("PassWord1234") == "common"


def test_fullwidth_variant_of_common_password_is_refused() -> None:
    """A full-width spelling of a common password is refused after NFKC."""
    assert _refused(_fullwidth("password1234")) == "common"


def test_is_common_answers_for_listed_and_unlisted_passwords() -> None:
    """is_common is true for a listed password in any case, false for a random one."""
    assert is_common("password1234")
    assert is_common("PASSWORD1234")
    assert not is_common("violet tractor 42 umbrella")
    assert not is_common("")


def test_email_local_part_is_refused() -> None:
    """A password containing the email's local part is refused with rule contains-email."""
    assert _refused("my alice.smith secret") == "contains-email"


def test_email_local_part_match_ignores_case() -> None:
    """The local part is found whatever its letter case in the password."""
    assert _refused("ALICE.Smith violet 42") == "contains-email"


def test_whole_email_is_refused() -> None:
    """A password containing the whole email is refused even with a short local part."""
    assert _refused("jo@example.com 42 violet", email="jo@example.com") == "contains-email"


def test_short_local_part_is_not_a_match() -> None:
    """A local part of fewer than 3 characters does not refuse a password containing it."""
    assert PasswordPolicy().check("jo violet tractor", email="jo@example.com")


def test_local_part_without_plus_tag_is_refused() -> None:
    """For alice+news@..., a password containing "alice" is refused."""
    assert _refused("violet alice 4242", email="alice+news@example.com") == "contains-email"


def test_one_repeated_character_is_refused() -> None:
    """A password that is one character repeated is refused with rule repetitive."""
    assert _refused("z" * 16) == "repetitive"


@pytest.mark.parametrize("char", ["\x00", "\t", "\n", "\r", "\x1b", "\x7f", "\x85", "\ud800"])
def test_control_characters_are_refused(char: str) -> None:
    """NUL, other C0/C1 controls, DEL and lone surrogates give rule control-characters."""
    assert _refused(f"violet{char}tractor 42") == "control-characters"


@pytest.mark.parametrize(
    ("password", "email"),
    [
        ("vtr42um", EMAIL),
        ("x7" * 600, EMAIL),
        ("violet\x00tractor 42", EMAIL),
        ("q" * 20, EMAIL),
        ("alice.smith violet 42", EMAIL),
        ("Password1234", EMAIL),
    ],
)
def test_detail_never_contains_the_password(password: str, email: str) -> None:
    """No refusal's detail or message contains the password, in any case."""
    with pytest.raises(PolicyError) as caught:
        PasswordPolicy().check(password, email=email)
    for text in (caught.value.detail, str(caught.value)):
        assert password not in text
        assert password.casefold() not in text.casefold()
        assert email not in text


@pytest.mark.parametrize(
    "limits",
    [{"min_length": 7}, {"max_length": 63}, {"min_length": 100, "max_length": 64}],
)
def test_limits_outside_nist_raise_value_error(limits: dict[str, int]) -> None:
    """min_length below 8, max_length below 64 or below min_length raise ValueError."""
    with pytest.raises(ValueError, match="must"):
        PasswordPolicy(**limits)


def test_list_has_at_least_100k_entries() -> None:
    """The shipped common-password list holds at least 100,000 entries."""
    assert len(_shipped_entries()) >= 100_000


def test_list_is_folded_sorted_and_unique() -> None:
    """Every shipped entry is NFKC-case-folded; entries are unique and byte-sorted."""
    entries = _shipped_entries()
    assert entries == sorted(set(entries))
    assert all(entry and blocklist_key(entry.decode()) == entry.decode() for entry in entries)
