"""Key rotation without downtime: the key file, the key ring, running servers, the CLI."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from ops_support import MakeOpsTw, RunCli, ops_client, ops_env, register_and_login

from tokenward.clock import FrozenClock
from tokenward.errors import ConfigError, TokenExpired
from tokenward.keyring import (
    KeyRing,
    default_activation_delay,
    describe,
    retain_seconds,
    rotate,
)
from tokenward.keys import GENERATED_KEYS_FILE, KeySet, generate_key
from tokenward.runtime import Tokenward
from tokenward.settings import load_settings
from tokenward.tokens import AccessTokens
from waiting import await_until

NOW = 1_800_000_000
TTL, LEEWAY, INTERVAL = 600, 30, 5
RETAIN = TTL + LEEWAY + INTERVAL


def _tokens(keys: KeySet) -> AccessTokens:
    return AccessTokens(keys, issuer="https://t.test", audience="tokenward", ttl=TTL)


def _entries(path: Path) -> list[dict[str, object]]:
    keys: list[dict[str, object]] = json.loads(path.read_text())["keys"]
    return keys


# -- the key file -----------------------------------------------------------------------------


def test_rotate_appends_a_pending_key_and_retires_the_signer(tmp_path: Path) -> None:
    """rotate: the new key is last, starts signing later; the old signer retires then."""
    path = tmp_path / "keys.jwks"
    first = rotate(path, alg="EdDSA", now=NOW, activate_in=300, retain=RETAIN)
    assert first.activates_at == NOW  # nothing signed before: the first key signs at once
    second = rotate(path, alg="EdDSA", now=NOW + 10, activate_in=300, retain=RETAIN)
    assert second.activates_at == NOW + 310
    assert second.retired == (first.new.kid,)
    entries = _entries(path)
    assert [e["kid"] for e in entries] == [first.new.kid, second.new.kid]
    assert entries[0]["retired_at"] == NOW + 310
    assert entries[1]["iat"] == NOW + 10
    assert entries[1]["nbf"] == NOW + 310
    assert "retired_at" not in entries[1]
    keys = KeySet.from_file(path)
    assert keys.at(NOW + 309, retain=RETAIN).signing_key.kid == first.new.kid
    assert keys.at(NOW + 310, retain=RETAIN).signing_key.kid == second.new.kid


def test_key_file_stays_private_after_rotation(tmp_path: Path) -> None:
    """The rewritten key file is mode 0600 and no temporary file is left beside it."""
    path = tmp_path / "keys.jwks"
    rotate(path, alg="EdDSA", now=NOW, activate_in=0, retain=RETAIN)
    rotate(path, alg="ES256", now=NOW, activate_in=0, retain=RETAIN)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.jwks", "keys.jwks.lock"]


def test_retired_key_verifies_until_access_ttl_plus_leeway_then_leaves(tmp_path: Path) -> None:
    """A token of the old key verifies till it expires; the key leaves the JWKS after retain."""
    path = tmp_path / "keys.jwks"
    old = rotate(path, alg="EdDSA", now=NOW, activate_in=0, retain=RETAIN).new
    at_rotation = KeySet.from_file(path).at(NOW + 100, retain=RETAIN)
    token, claims = _tokens(at_rotation).issue(sub="u", sid="s", now=NOW + 100)
    new = rotate(path, alg="EdDSA", now=NOW + 100, activate_in=0, retain=RETAIN).new
    file_keys = KeySet.from_file(path)

    last_second = file_keys.at(claims.exp + LEEWAY, retain=RETAIN)
    assert last_second.signing_key.kid == new.kid
    assert _tokens(last_second).verify(token, now=claims.exp + LEEWAY).sub == "u"
    assert {k["kid"] for k in last_second.jwks()["keys"]} == {old.kid, new.kid}

    gone = file_keys.at(NOW + 100 + RETAIN, retain=RETAIN)
    assert [k.kid for k in gone.keys] == [new.kid]
    # The key is gone but the answer is "expired" (refresh), not "invalid" (log in): see
    # tests/ops/test_rotation_expired_token.py.
    with pytest.raises(TokenExpired):
        _tokens(gone).verify(token, now=NOW + 100 + RETAIN)


def test_next_rotation_prunes_keys_retired_longer_than_retain(tmp_path: Path) -> None:
    """Keys whose tokens have all expired are removed from the file by the next rotation."""
    path = tmp_path / "keys.jwks"
    a = rotate(path, alg="EdDSA", now=NOW, activate_in=0, retain=RETAIN).new
    b = rotate(path, alg="EdDSA", now=NOW + 1, activate_in=0, retain=RETAIN).new
    c = rotate(path, alg="EdDSA", now=NOW + 1 + RETAIN, activate_in=0, retain=RETAIN)
    assert c.pruned == (a.kid,)
    assert c.retired == (b.kid,)
    assert [e["kid"] for e in _entries(path)] == [b.kid, c.new.kid]


def test_rotate_can_switch_to_es256(tmp_path: Path) -> None:
    """ES256 is selectable per rotation; EdDSA tokens still verify meanwhile."""
    path = tmp_path / "keys.jwks"
    rotate(path, alg="EdDSA", now=NOW, activate_in=0, retain=RETAIN)
    rotate(path, alg="ES256", now=NOW, activate_in=0, retain=RETAIN)
    keys = KeySet.from_file(path).at(NOW, retain=RETAIN)
    assert keys.signing_key.alg == "ES256"
    assert [k.alg for k in keys.keys] == ["EdDSA", "ES256"]


def test_pem_key_file_cannot_be_rotated(tmp_path: Path) -> None:
    """A PEM file has no room for metadata: rotate explains how to rotate it by hand."""
    path = tmp_path / "keys.pem"
    pem = generate_key().private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(pem)
    with pytest.raises(ConfigError, match="PEM file") as caught:
        rotate(path, alg="EdDSA", now=NOW, activate_in=0, retain=RETAIN)
    assert "append the new private key" in caught.value.detail
    assert path.read_bytes() == pem


def test_pending_key_is_published_before_it_signs() -> None:
    """A key that has not started is in the JWKS (verifiers learn it first) but does not sign."""
    old = generate_key()
    pending = generate_key()
    keys = KeySet(
        [
            old.__class__(old.kid, old.alg, old.private_key, retired_at=NOW + 60),
            pending.__class__(pending.kid, pending.alg, pending.private_key, not_before=NOW + 60),
        ]
    ).at(NOW, retain=RETAIN)
    assert keys.signing_key.kid == old.kid
    assert {k["kid"] for k in keys.jwks()["keys"]} == {old.kid, pending.kid}
    states = [s.state for s in describe(KeySet(list(keys.keys)), now=NOW, retain=RETAIN)]
    assert states == ["signing", "pending"]


def test_rotation_delay_covers_jwks_caching_and_reload() -> None:
    """By default the new key signs only after outside JWKS caches and every instance know it."""
    settings = load_settings({}, env_file=Path("/nonexistent.env"))
    assert default_activation_delay(settings) == 300 + settings.key_reload_interval
    assert retain_seconds(settings) == (
        settings.access_ttl + settings.leeway + settings.key_reload_interval
    )


# -- the key ring of a running instance -------------------------------------------------------


def test_key_ring_reloads_only_when_something_changed(tmp_path: Path) -> None:
    """refresh() returns None until the file or the time changes what is in force."""
    path = tmp_path / "keys.jwks"
    first = rotate(path, alg="EdDSA", now=NOW, activate_in=0, retain=RETAIN).new
    ring = KeyRing(path, retain=RETAIN, generate_alg=None)
    assert ring.load(NOW).signing_key.kid == first.kid
    assert ring.refresh(NOW + 1) is None
    second = rotate(path, alg="EdDSA", now=NOW + 2, activate_in=60, retain=RETAIN).new
    published = ring.refresh(NOW + 2)
    assert published is not None
    assert published.get(second.kid) is not None
    assert published.signing_key.kid == first.kid
    switched = ring.refresh(NOW + 62)
    assert switched is not None
    assert switched.signing_key.kid == second.kid
    assert ring.refresh(NOW + 63) is None


def test_key_ring_keeps_its_keys_when_the_file_is_broken(tmp_path: Path) -> None:
    """A half-edited key file is logged and ignored; the keys in use stay."""
    path = tmp_path / "keys.jwks"
    first = rotate(path, alg="EdDSA", now=NOW, activate_in=0, retain=RETAIN).new
    ring = KeyRing(path, retain=RETAIN, generate_alg=None)
    ring.load(NOW)
    path.write_text('{"keys": [')
    assert ring.refresh(NOW + 1) is None
    assert ring.refresh(NOW + 2) is None
    rotate_target = tmp_path / "other.jwks"
    rotate(rotate_target, alg="EdDSA", now=NOW, activate_in=0, retain=RETAIN)
    path.write_bytes(rotate_target.read_bytes())
    fresh = ring.refresh(NOW + 3)
    assert fresh is not None
    assert fresh.get(first.kid) is None


# -- running servers --------------------------------------------------------------------------


async def test_running_server_picks_up_rotation_without_downtime(
    make_ops_tw: MakeOpsTw,
) -> None:
    """Rotate under a running server: old tokens keep working, then the new key signs."""
    tw = await make_ops_tw()
    clock = tw.clock
    assert isinstance(clock, FrozenClock)
    path = tw.settings.data_dir / GENERATED_KEYS_FILE
    old_kid = tw.keys.signing_key.kid
    async with ops_client(tw) as client:
        login = await register_and_login(client, "rotate@example.com")
        old_auth = {"Authorization": f"Bearer {login['access_token']}"}

        done = rotate(
            path, alg="ES256", now=clock.now(), activate_in=60, retain=retain_seconds(tw.settings)
        )
        assert tw.reload_keys()
        jwks = (await client.get("/.well-known/jwks.json")).json()
        assert {k["kid"] for k in jwks["keys"]} == {old_kid, done.new.kid}
        assert tw.keys.signing_key.kid == old_kid  # not yet: the new key is only published

        clock.advance(60)
        assert tw.reload_keys()
        assert tw.keys.signing_key.kid == done.new.kid
        assert (await client.get("/auth/me", headers=old_auth)).status_code == 200
        r = await client.post(
            "/auth/refresh",
            json={"refresh_token": login["refresh_token"]},
            headers={"X-Auth-Transport": "bearer"},
        )
        assert r.status_code == 200
        new_token = r.json()["access_token"]
        header = json.loads(_b64(new_token.split(".")[0]))
        assert header["kid"] == done.new.kid
        assert header["alg"] == "ES256"

        clock.advance(retain_seconds(tw.settings))
        assert tw.reload_keys()
        jwks = (await client.get("/.well-known/jwks.json")).json()
        assert [k["kid"] for k in jwks["keys"]] == [done.new.kid]


async def test_instances_sharing_a_key_file_agree_on_the_signer(
    make_ops_tw: MakeOpsTw, tmp_path: Path
) -> None:
    """Two instances on one TOKENWARD_SIGNING_KEYS file sign with the same key, before and
    after a rotation, and each verifies the other's tokens throughout."""
    path = tmp_path / "shared.jwks"
    rotate(path, alg="EdDSA", now=int(time.time()) - 10, activate_in=0, retain=RETAIN)
    a = await make_ops_tw(signing_keys=path)
    b = await make_ops_tw(signing_keys=path)
    assert a.keys.signing_key.kid == b.keys.signing_key.kid
    rotate(path, alg="EdDSA", now=a.clock.now(), activate_in=30, retain=RETAIN)
    for step in (0, 30):
        for tw in (a, b):
            clock = tw.clock
            assert isinstance(clock, FrozenClock)
            clock.advance(step)
            tw.reload_keys()
        assert a.keys.signing_key.kid == b.keys.signing_key.kid
        token_a, _ = a.tokens.issue(sub="u", sid="s", now=a.clock.now())
        token_b, _ = b.tokens.issue(sub="u", sid="s", now=b.clock.now())
        assert b.tokens.verify(token_a, now=b.clock.now()).sub == "u"
        assert a.tokens.verify(token_b, now=a.clock.now()).sub == "u"


async def test_server_rereads_the_key_file_on_its_own(make_ops_tw: MakeOpsTw) -> None:
    """Without any call, a started server notices a rotated key file within the interval."""
    tw = await make_ops_tw(key_reload_interval=1)
    path = tw.settings.data_dir / GENERATED_KEYS_FILE
    done = rotate(path, alg="EdDSA", now=tw.clock.now(), activate_in=60, retain=RETAIN)
    # The background task exposes no event to wait on.
    await await_until(
        lambda: tw.keys.get(done.new.kid) is not None, within=10, what="the new key is loaded"
    )


# -- the CLI ----------------------------------------------------------------------------------


async def test_cli_keys_rotate_and_list(run_cli: RunCli, tmp_path: Path) -> None:
    """keys rotate then keys list --json: kid, alg, created, retired and who signs."""
    env = ops_env(None, tmp_path / "d")
    assert (await run_cli("keys", "list", env=env)).code == 1  # no key file yet
    first = await run_cli("keys", "rotate", "--json", env=env)
    assert first.code == 0, first.err
    second = await run_cli("keys", "rotate", "--alg", "ES256", "--json", env=env)
    assert second.code == 0, second.err
    rotated = json.loads(second.out)
    assert rotated["alg"] == "ES256"
    assert rotated["retired"] == [json.loads(first.out)["kid"]]
    listed = await run_cli("keys", "list", "--json", env=env)
    assert listed.code == 0, listed.err
    keys = json.loads(listed.out)["keys"]
    assert [k["state"] for k in keys] == ["signing", "pending"]
    assert [k["signing"] for k in keys] == [True, False]
    assert keys[0]["retired_at"] == rotated["activates_at"] == keys[1]["active_from"]
    assert keys[1]["created_at"] is not None
    text = await run_cli("keys", "list", env=env)
    assert rotated["kid"] in text.out
    assert "pending" in text.out


async def test_cli_keys_rotate_on_pem_is_a_configuration_error(
    run_cli: RunCli, tmp_path: Path
) -> None:
    """keys rotate with a PEM TOKENWARD_SIGNING_KEYS exits 2 and says how to rotate by hand."""
    path = tmp_path / "keys.pem"
    path.write_bytes(
        generate_key().private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    result = await run_cli("keys", "rotate", env=ops_env(None, tmp_path / "d", signing_keys=path))
    assert result.code == 2
    assert "PEM file" in result.err
    assert "TOKENWARD_SIGNING_KEYS" in result.err
    listed = await run_cli("keys", "list", env=ops_env(None, tmp_path / "d", signing_keys=path))
    assert listed.code == 0
    assert "signing" in listed.out


async def test_tokenward_restarted_after_rotation_keeps_old_tokens(
    make_ops_tw: MakeOpsTw, tmp_path: Path
) -> None:
    """A restart (new process) after a rotation still verifies tokens of the retired key."""
    data = tmp_path / "restart"
    first = await make_ops_tw(data_dir=data)
    token, _ = first.tokens.issue(sub="u", sid="s", now=first.clock.now())
    rotate(
        data / GENERATED_KEYS_FILE,
        alg="EdDSA",
        now=first.clock.now(),
        activate_in=0,
        retain=retain_seconds(first.settings),
    )
    second: Tokenward = await make_ops_tw(data_dir=data)
    assert second.keys.signing_key.kid != first.keys.signing_key.kid
    assert second.tokens.verify(token, now=second.clock.now()).sub == "u"


def _b64(part: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
