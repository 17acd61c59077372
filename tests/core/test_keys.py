"""Signing keys: generated per deployment, read from PEM or JWKS files, newest signs."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tokenward.errors import ConfigError
from tokenward.keys import GENERATED_KEYS_FILE, KeySet, SigningKey, generate_key
from tokenward.runtime import load_keys
from tokenward.settings import load_settings
from tokenward.tokens import AccessTokens

NOW = 1_800_000_000


def _pem(key: SigningKey) -> bytes:
    return key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _tokens(keys: KeySet) -> AccessTokens:
    return AccessTokens(keys, issuer="https://t.test", audience="tokenward", ttl=600)


def test_generated_key_file_is_private(tmp_path: Path) -> None:
    """The generated key file is mode 0600 in a data dir the service creates 0700."""
    data = tmp_path / "data"
    KeySet.load_or_generate(data)
    key_file = data / GENERATED_KEYS_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(data.stat().st_mode) & 0o077 == 0


def test_generated_keys_are_kept_across_loads(tmp_path: Path) -> None:
    """Two loads of one data dir give the same kid and key (tokens survive restarts)."""
    first = KeySet.load_or_generate(tmp_path)
    second = KeySet.load_or_generate(tmp_path)
    assert first.signing_key.kid == second.signing_key.kid
    token, _ = _tokens(first).issue(sub="u", sid="s", now=NOW)
    assert _tokens(second).verify(token, now=NOW).sub == "u"


def test_two_data_dirs_get_different_keys(tmp_path: Path) -> None:
    """No built-in key: every deployment generates its own."""
    a = KeySet.load_or_generate(tmp_path / "a")
    b = KeySet.load_or_generate(tmp_path / "b")
    assert a.signing_key.kid != b.signing_key.kid
    token, _ = _tokens(a).issue(sub="u", sid="s", now=NOW)
    with pytest.raises(Exception, match="unknown signing key"):
        _tokens(b).verify(token, now=NOW)


def test_settings_without_keys_generate_into_the_data_dir(tmp_path: Path) -> None:
    """With TOKENWARD_SIGNING_KEYS unset, keys are generated into TOKENWARD_DATA_DIR."""
    env = {"TOKENWARD_DATA_DIR": str(tmp_path / "d")}
    settings = load_settings(env, env_file=tmp_path / "none.env")
    keys = load_keys(settings)
    assert (tmp_path / "d" / GENERATED_KEYS_FILE).is_file()
    assert keys.signing_key.alg == "EdDSA"
    assert load_keys(settings).signing_key.kid == keys.signing_key.kid


def test_signing_alg_es256_generates_a_p256_key(tmp_path: Path) -> None:
    """TOKENWARD_SIGNING_ALG=ES256 makes the generated key P-256."""
    env = {"TOKENWARD_DATA_DIR": str(tmp_path), "TOKENWARD_SIGNING_ALG": "ES256"}
    keys = load_keys(load_settings(env, env_file=tmp_path / "none.env"))
    assert keys.signing_key.alg == "ES256"
    assert isinstance(keys.signing_key.private_key, ec.EllipticCurvePrivateKey)
    assert keys.jwks()["keys"][0]["crv"] == "P-256"


def test_pem_file_with_several_keys_last_signs_all_verify(tmp_path: Path) -> None:
    """In a PEM file the last key signs; tokens of the earlier keys still verify."""
    old, new = generate_key("EdDSA"), generate_key("ES256")
    path = tmp_path / "keys.pem"
    path.write_bytes(_pem(old) + b"\n" + _pem(new))
    env = {"TOKENWARD_DATA_DIR": str(tmp_path), "TOKENWARD_SIGNING_KEYS": str(path)}
    keys = load_keys(load_settings(env, env_file=tmp_path / "none.env"))
    assert [k.kid for k in keys.keys] == [old.kid, new.kid]
    assert keys.signing_key.kid == new.kid
    assert keys.signing_key.alg == "ES256"
    old_token, _ = _tokens(KeySet([old])).issue(sub="before", sid="s", now=NOW)
    new_token, _ = _tokens(keys).issue(sub="after", sid="s", now=NOW)
    assert _tokens(keys).verify(old_token, now=NOW).sub == "before"
    assert _tokens(keys).verify(new_token, now=NOW).sub == "after"
    assert not (tmp_path / GENERATED_KEYS_FILE).exists()


def test_jwks_file_with_several_keys_last_signs_all_verify(tmp_path: Path) -> None:
    """In a JWKS file the last key signs; all verify; kids are recomputed, not trusted."""
    first, second, third = generate_key("ES256"), generate_key("EdDSA"), generate_key("EdDSA")
    entries = [k.private_jwk() for k in (first, second, third)]
    entries[0]["kid"] = "attacker-chosen"
    path = tmp_path / "keys.jwks"
    path.write_text(json.dumps({"keys": entries}))
    keys = KeySet.from_file(path)
    assert [k.kid for k in keys.keys] == [first.kid, second.kid, third.kid]
    assert keys.signing_key.kid == third.kid
    for older in (first, second):
        token, _ = _tokens(KeySet([older])).issue(sub=older.kid, sid="s", now=NOW)
        assert _tokens(keys).verify(token, now=NOW).sub == older.kid


def test_kid_is_the_rfc7638_thumbprint() -> None:
    """kid is the RFC 7638 thumbprint (RFC 8037 appendix A.3 test vector)."""
    jwk = {
        "kty": "OKP",
        "crv": "Ed25519",
        "d": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
    }
    from tokenward.keys import _keys_from_jwks

    (key,) = _keys_from_jwks(json.dumps({"keys": [jwk]}).encode(), "vector")
    assert key.kid == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_jwks_has_public_members_only() -> None:
    """The public JWK Set carries kty/crv/x(/y), kid, alg, use and never ``d``."""
    keys = KeySet([generate_key("EdDSA"), generate_key("ES256")])
    published = keys.jwks()["keys"]
    assert {frozenset(k) for k in published} == {
        frozenset({"kty", "crv", "x", "kid", "alg", "use"}),
        frozenset({"kty", "crv", "x", "y", "kid", "alg", "use"}),
    }
    assert all(k["use"] == "sig" for k in published)


def test_signing_key_repr_hides_the_private_key() -> None:
    """repr shows kid and alg, no key material."""
    key = generate_key()
    text = repr(key)
    assert key.kid in text
    assert key.private_jwk()["d"] not in text


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not a key",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        b'{"keys": []}',
        b'{"keys": [{"kty": "RSA", "n": "x", "e": "AQAB"}]}',
        b'{"keys": [{"kty": "OKP", "crv": "Ed25519"}]}',
        # a public key only: it cannot sign
        b'{"keys": [{"kty": "OKP", "crv": "Ed25519", '
        b'"x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}',
        b'{"keys": "nope"}',
        b"[1, 2]",
        b"{not json",
    ],
)
def test_bad_key_file_is_a_config_error(tmp_path: Path, content: bytes) -> None:
    """An unusable key file stops start-up with one line naming TOKENWARD_SIGNING_KEYS."""
    path = tmp_path / "keys"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        KeySet.from_file(path)
    assert caught.value.detail.startswith("TOKENWARD_SIGNING_KEYS")
    assert "\n" not in caught.value.detail


def test_public_key_only_pem_is_a_config_error(tmp_path: Path) -> None:
    """A public key cannot sign: refused."""
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    path = tmp_path / "pub.pem"
    path.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(ConfigError, match="TOKENWARD_SIGNING_KEYS"):
        KeySet.from_file(path)


@pytest.mark.parametrize("kind", ["rsa", "p384"])
def test_unsupported_key_types_are_config_errors(tmp_path: Path, kind: str) -> None:
    """Only Ed25519 and P-256 keys sign (so the algorithm is always pinned)."""
    private = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP384R1())
    )
    path = tmp_path / "k.pem"
    path.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigError, match="only Ed25519 and P-256"):
        KeySet.from_file(path)


def test_missing_key_file_is_a_config_error(tmp_path: Path) -> None:
    """A path that does not exist is named in the error."""
    with pytest.raises(ConfigError, match="TOKENWARD_SIGNING_KEYS: cannot read"):
        KeySet.from_file(tmp_path / "absent.pem")


def test_encrypted_pem_is_a_config_error(tmp_path: Path) -> None:
    """Password-protected PEM cannot be read at start-up: a clear error, not a crash."""
    key = generate_key()
    path = tmp_path / "enc.pem"
    path.write_bytes(
        key.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    with pytest.raises(ConfigError, match="TOKENWARD_SIGNING_KEYS"):
        KeySet.from_file(path)


def test_empty_key_set_is_refused() -> None:
    """A key set needs at least one key."""
    with pytest.raises(ConfigError):
        KeySet([])
