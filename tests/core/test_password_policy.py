"""Tests of the NIST SP 800-63B-4 password policy (tokenward.password_policy)."""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import subprocess
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from tokenward.errors import PolicyError
from tokenward.password_policy import (
    COMMON_PASSWORDS_RESOURCE,
    FuseFilter,
    PasswordPolicy,
    blocklist_key,
    is_common,
)

ROOT = Path(__file__).resolve().parents[2]

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


def _shipped_filter() -> FuseFilter:
    """The common-password filter as shipped in the package."""
    resource = importlib.resources.files("tokenward").joinpath(COMMON_PASSWORDS_RESOURCE)
    return FuseFilter(resource.read_bytes())


def _builder() -> ModuleType:
    """scripts/build_common_passwords.py, imported by path (it is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "build_common_passwords", ROOT / "scripts" / "build_common_passwords.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _random_strings(label: str, count: int) -> list[str]:
    """``count`` distinct 16-character strings of 64 symbols (96 bits), derived from SHA-256
    so every run probes the same ones; none is a password anyone uses."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-_"
    return [
        "".join(
            alphabet[byte & 63] for byte in hashlib.sha256(f"{label}-{i}".encode()).digest()[:16]
        )
        for i in range(count)
    ]


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


@pytest.mark.parametrize("password", ["thequickbrownfox", "maytheforcebewithyou", "iloveyousomuch"])
def test_common_password_is_refused(password: str) -> None:
    """A password in the shipped corpus is refused with rule common."""
    assert _refused(password) == "common"


def test_case_variant_of_common_password_is_refused() -> None:
    """A common password in other letter case is still refused with rule common."""
    assert _refused("TheQuickBrownFox") == "common"


def test_fullwidth_variant_of_common_password_is_refused() -> None:
    """A full-width spelling of a common password is refused after NFKC."""
    assert _refused(_fullwidth("thequickbrownfox")) == "common"


def test_is_common_answers_for_listed_and_unlisted_passwords() -> None:
    """is_common is true for a listed password in any case or spacing, false for others."""
    assert is_common("thequickbrownfox")
    assert is_common("THEQUICKBROWNFOX")
    assert is_common("the quick brown fox")
    assert not is_common("violet tractor 42 umbrella")
    assert not is_common("")


# Issue 9 item 5: four famous passwords the 143k list let through.
@pytest.mark.parametrize(
    ("password", "rule"),
    [
        ("password123456", "common-variant"),
        ("letmein12345", "common-variant"),
        ("iloveyouiloveyou", "repetitive"),
        ("correct horse battery staple", "common"),
    ],
)
def test_famous_weak_passwords_are_refused(password: str, rule: str) -> None:
    """The four examples of the issue are refused, each by the rule that catches it."""
    assert _refused(password) == rule


@pytest.mark.parametrize(
    "password",
    [
        "correcthorsebatterystaple",
        "Correct-Horse-Battery-Staple",
        "CORRECT_HORSE_BATTERY_STAPLE",
        "correct.horse.battery.staple",
        "correct  horse  battery  staple",
    ],
)
def test_a_common_phrase_is_refused_however_it_is_separated(password: str) -> None:
    """Spaces and the -_. separators are ignored by the corpus lookup."""
    assert _refused(password) == "common"


@pytest.mark.parametrize(
    "password",
    [
        "iloveyouiloveyou",
        "abcabcabcabc",
        "hello hello hello",
        "violetvioletviolet",
        "ilovekittyilovekitty",
        "Monkey-monkey-MONKEY",
        "abcdabcdabcdab",
    ],
)
def test_a_short_piece_repeated_is_refused(password: str) -> None:
    """A piece shorter than min_length, repeated (separators and case aside), is repetitive."""
    assert _refused(password) == "repetitive"


def test_a_long_piece_repeated_is_accepted() -> None:
    """A piece of at least min_length that is not common may be repeated: it is as strong
    as the piece, which would pass on its own."""
    password = "Xk9#mPq2vL7!Xk9#mPq2vL7!"
    assert PasswordPolicy().check(password, email=EMAIL) == password
    assert _refused(password, policy=PasswordPolicy(min_length=13)) == "repetitive"


@pytest.mark.parametrize(
    "password",
    [
        "password123456",
        "PassWord123456",
        "letmein12345",
        "sunshine2019!!",
        "1987dragon!!",
        "letmein!2024",
        "!!superman1999",
        "shadow-2023-!",
        "iloveyou 2020",
        "super dragon 2019",
    ],
)
def test_a_common_password_with_digits_or_a_year_is_refused(password: str) -> None:
    """A common stem with a guessable prefix or suffix (a year, a digit run, at most four
    digits and symbols) is common-variant; none of these is in the corpus itself."""
    assert _refused(password) == "common-variant"


def test_dragon1987_is_refused_where_it_is_long_enough() -> None:
    """``dragon1987!`` (11 characters) is too-short by default, common-variant at 8."""
    assert _refused("dragon1987!") == "too-short"
    assert _refused("dragon1987!", policy=PasswordPolicy(min_length=8)) == "common-variant"


@pytest.mark.parametrize(
    "password",
    [
        "qwertyuiop12",
        "1qaz2wsx3edc",
        "poiuytrewq2024",
        "mnbvcxz;lkjh",
        "zaq12wsxcde3vfr",
        "asdfghjkl;'12",
        "qwertyuiopasdfgh",
        "123456789012",
        "QWERTYUIOP!@#$",
    ],
)
def test_keyboard_walks_are_refused(password: str) -> None:
    """Paths over neighbouring keys, in up to four strokes, are keyboard-walk."""
    assert _refused(password) == "keyboard-walk"


def test_the_bottom_row_walk_is_refused_at_min_length_8() -> None:
    """``zxcvbnm,./`` (10 characters) is too-short by default, keyboard-walk at 8."""
    assert _refused("zxcvbnm,./", policy=PasswordPolicy(min_length=8)) == "keyboard-walk"


@pytest.mark.parametrize(
    "password",
    [
        "password48213977120",
        "sunflower93817264",
        "werewolf trading post",
        "tractor violin 1987",
        "a different horse battery staple",
        "plum-otter-kite!",
    ],
)
def test_near_misses_are_accepted(password: str) -> None:
    """The pattern rules stop where guessing gets hard: eleven random digits after a common
    word, words that merely contain key runs (w-e-r-e), new phrases."""
    assert PasswordPolicy().check(password, email=EMAIL) == password


def test_random_passphrases_are_accepted() -> None:
    """3-word passphrases from a fixed word list: none refused but for filter false
    positives (expected about 3 in 2,000 lookups of 12 bits)."""
    words = [
        "violet", "tractor", "umbrella", "harbour", "lantern", "otter", "kite", "plum",
        "granite", "meadow", "copper", "whistle", "saffron", "glacier", "pepper", "walnut",
        "orbit", "velvet", "thunder", "maple", "falcon", "cobalt", "ember", "prairie",
    ]  # fmt: skip
    phrases = [f"{a} {b} {c}" for a in words for b in words for c in words if len({a, b, c}) == 3]
    refused = 0
    for phrase in phrases[::6]:
        try:
            PasswordPolicy().check(phrase, email=EMAIL)
        except PolicyError:
            refused += 1
    assert refused <= 4, refused


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


def test_shipped_filter_holds_millions_of_keys_in_a_few_megabytes() -> None:
    """12-bit fingerprints over at least 3.5 million keys (the array holds 1.125 slots per
    key), in less than 8 MB."""
    blocklist = _shipped_filter()
    assert blocklist.fingerprint_bits == 12
    assert blocklist.array_length >= 1.125 * 3_500_000
    resource = importlib.resources.files("tokenward").joinpath(COMMON_PASSWORDS_RESOURCE)
    assert len(resource.read_bytes()) < 8_000_000


def test_shipped_filter_false_positive_rate_is_about_one_in_4096() -> None:
    """200,000 random 96-bit strings: the share the filter calls common is below 0.05%
    (2**-12 is 0.0244%; the build measured 0.0241% on a million others)."""
    blocklist = _shipped_filter()
    probes = _random_strings("tokenward-test-fpr", 200_000)
    hits = sum(blocklist_key(probe) in blocklist for probe in probes)
    assert hits / len(probes) < 0.0005, hits


def test_filter_is_loaded_lazily_and_once() -> None:
    """Importing tokenward reads no filter; the first lookup reads it, later ones reuse it."""
    code = (
        "import tokenward, tokenward.password_policy as p\n"
        "print(p._blocklist.cache_info().currsize)\n"
        "p.is_common('one'); p.is_common('two')\n"
        "info = p._blocklist.cache_info(); print(info.misses, info.hits)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == ["0", "1", "1"]


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_built_filter_has_no_false_negatives_and_the_stated_rate(bits: int) -> None:
    """The build script's construction, on 30,000 keys: every key found; on 200,000 other
    strings, a false-positive rate within a factor 2 of 2**-bits (and exact for 16 bits:
    at most a few hits)."""
    keys = sorted(blocklist_key(key) for key in _random_strings("tokenward-test-keys", 30_000))
    blocklist = FuseFilter(_builder().build(keys, bits))
    assert blocklist.fingerprint_bits == bits
    assert all(key in blocklist for key in keys)
    probes = _random_strings("tokenward-test-probes", 200_000)
    rate = sum(blocklist_key(probe) in blocklist for probe in probes) / len(probes)
    assert rate < 2 * 2.0**-bits + 2e-5, rate
    if bits < 16:
        assert rate > 0.5 * 2.0**-bits, rate


def test_filter_construction_is_reproducible() -> None:
    """Two builds over the same keys give the same bytes."""
    keys = sorted(blocklist_key(key) for key in _random_strings("tokenward-test-repro", 5_000))
    builder = _builder()
    assert builder.build(keys, 12) == builder.build(keys, 12)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda data: data[:20],
        lambda data: b"notafuse" + data[8:],
        lambda data: data[:-1],
        lambda data: data + b"\0",
    ],
)
def test_a_damaged_filter_is_refused(mangle: Callable[[bytes], bytes]) -> None:
    """A truncated, foreign or resized file raises ValueError instead of answering."""
    data = _builder().build(["alpha", "bravo", "charlie", "delta"], 12)
    FuseFilter(data)
    with pytest.raises(ValueError, match="common-password filter"):
        FuseFilter(mangle(data))


def test_non_string_is_not_in_the_filter() -> None:
    """Membership of anything but a str is False, not an error."""
    assert 42 not in _shipped_filter()
