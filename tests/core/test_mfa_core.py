"""The second-factor rules that need no back end: TOTP steps and drift, recovery codes,
``amr`` values, the step-up check, the ``amr``/``auth_time`` claims, and sealing secrets."""

from __future__ import annotations

from pathlib import Path

import pyotp
import pytest
from test_tokens import AUD, ISS, NOW, TTL, claims, ed25519_signer, forge, header_for

from tokenward.authn import AuthLevel, combined_amr, password_level
from tokenward.errors import ConfigError, MfaRequired, ReauthenticationRequired, TokenInvalid
from tokenward.keys import KeySet, generate_key
from tokenward.mfa import (
    TOTP_PERIOD,
    check_step_up,
    new_recovery_codes,
    new_totp_secret,
    otpauth_uri,
    recovery_digest,
    totp_code,
    totp_step,
)
from tokenward.secretbox import KEY_FILE, SecretBox, SecretBoxError, new_key_text
from tokenward.tokens import AccessTokens

T = 1_800_000_000


def test_codes_match_an_independent_rfc6238_implementation() -> None:
    secret = new_totp_secret()
    for when in (T, T + 29, T + 30, T + 12_345):
        assert totp_code(secret, when // TOTP_PERIOD) == pyotp.TOTP(secret).at(when)


def test_one_step_of_drift_either_way_and_no_more() -> None:
    secret = new_totp_secret()
    step = T // TOTP_PERIOD
    for offset in (-1, 0, 1):
        assert totp_step(secret, totp_code(secret, step + offset), now=T) == step + offset
    for offset in (-2, 2):
        code = totp_code(secret, step + offset)
        if code not in {totp_code(secret, step + o) for o in (-1, 0, 1)}:
            assert totp_step(secret, code, now=T) is None


def test_otpauth_uri_names_the_issuer_and_account() -> None:
    secret = new_totp_secret()
    uri = otpauth_uri(secret, account="ann@example.com", issuer="Acme Notes")
    parsed = pyotp.parse_uri(uri)
    assert parsed.secret == secret
    assert parsed.issuer == "Acme Notes"
    assert parsed.name == "ann@example.com"


def test_recovery_codes_are_random_and_their_digest_ignores_format() -> None:
    codes = new_recovery_codes()
    assert len(set(codes)) == 10
    assert all(len(c) == 19 and c.count("-") == 3 for c in codes)
    code = codes[0]
    digest = recovery_digest("u1", code)
    assert recovery_digest("u1", code.upper().replace("-", " ")) == digest
    assert recovery_digest("u2", code) != digest  # bound to its user


def test_amr_values() -> None:
    assert combined_amr(["pwd"]) == ("pwd",)
    assert combined_amr(["otp", "pwd"]) == ("pwd", "otp", "mfa")
    assert combined_amr(["pwd", "otp", "mfa", "pwd"]) == ("pwd", "otp", "mfa")
    assert combined_amr(["otp"]) == ("otp",)
    level = AuthLevel(("pwd", "otp", "mfa"), 42)
    assert AuthLevel.decode(level.encode()) == level
    assert level.multi_factor
    assert AuthLevel.decode("garbage") is None
    # Which second factor, beside the claims (what "otp" does not tell); older values
    # without it still read.
    recovered = AuthLevel(("pwd", "otp", "mfa"), 42, "recovery")
    assert recovered.encode() == "pwd,otp,mfa|42|recovery"
    assert AuthLevel.decode(recovered.encode()) == recovered
    assert AuthLevel.decode("pwd,otp,mfa|42") == level
    assert AuthLevel.decode("pwd|42|totp|extra") is None
    assert password_level(7) == AuthLevel(("pwd",), 7)


def test_step_up_check(tmp_path: Path) -> None:
    tokens = AccessTokens(KeySet([generate_key("EdDSA")]), issuer=ISS, audience=AUD, ttl=TTL)
    _, pwd = tokens.issue(sub="u", sid="s", now=NOW, amr=("pwd",), auth_time=NOW - 100)
    _, mfa = tokens.issue(sub="u", sid="s", now=NOW, amr=("pwd", "otp", "mfa"), auth_time=NOW)
    with pytest.raises(MfaRequired):
        check_step_up(pwd, mfa=True, now=NOW)
    check_step_up(pwd, max_age=100, now=NOW)
    with pytest.raises(ReauthenticationRequired):
        check_step_up(pwd, max_age=99, now=NOW)
    check_step_up(mfa, mfa=True, max_age=0, now=NOW)


def test_amr_and_auth_time_claims_round_trip_and_are_checked() -> None:
    key = generate_key("EdDSA")
    tokens = AccessTokens(KeySet([key]), issuer=ISS, audience=AUD, ttl=TTL)
    token, issued = tokens.issue(sub="u", sid="s", now=NOW, amr=("pwd", "otp", "mfa"), auth_time=5)
    verified = tokens.verify(token, now=NOW)
    assert verified.amr == ("pwd", "otp", "mfa")
    assert verified.auth_time == 5
    assert verified == issued
    # Absent (a token of an older issuer): empty amr, no auth_time.
    plain = forge(header_for(key), claims(), ed25519_signer(key))
    assert tokens.verify(plain, now=NOW).amr == ()
    assert tokens.verify(plain, now=NOW).auth_time is None
    for bad in ({"amr": "pwd"}, {"amr": [1]}, {"auth_time": "5"}, {"auth_time": 5.5}):
        forged = forge(header_for(key), claims(**bad), ed25519_signer(key))
        with pytest.raises(TokenInvalid):
            tokens.verify(forged, now=NOW)


def test_secretbox_seals_per_context_and_rotates_keys(tmp_path: Path) -> None:
    old, new = new_key_text(), new_key_text()
    sealed = SecretBox.from_config(old, tmp_path).seal(b"JBSWY3DP", context="row-1")
    assert b"JBSWY3DP" not in sealed
    rotated = SecretBox.from_config(f"{new},{old}", tmp_path)
    assert rotated.open(sealed, context="row-1") == b"JBSWY3DP"
    assert rotated.seal(b"x", context="c")[1:5] != sealed[1:5]  # the first key seals now
    with pytest.raises(SecretBoxError):
        rotated.open(sealed, context="row-2")
    with pytest.raises(SecretBoxError):
        SecretBox.from_config(new, tmp_path).open(sealed, context="row-1")
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(SecretBoxError):
        rotated.open(tampered, context="row-1")
    with pytest.raises(ConfigError, match="TOKENWARD_MFA_KEYS"):
        SecretBox.from_config("too-short", tmp_path)


def test_secretbox_generates_one_private_key_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = SecretBox.from_config(None, data)
    sealed = first.seal(b"s", context="c")
    assert (data / KEY_FILE).stat().st_mode & 0o777 == 0o600
    assert SecretBox.from_config(None, data).open(sealed, context="c") == b"s"
    assert [p.name for p in data.iterdir()] == [KEY_FILE]
