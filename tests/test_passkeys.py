"""Passkey rules (tokenward.passkeys) over the real Redis and SQLite, with a software
authenticator that signs for real (tests/soft_authenticator.py): registration, sign-in
without an e-mail, the checks (challenge, origin, rp id, user verification, counter), and
the relying-party configuration check."""

from __future__ import annotations

import hashlib
import struct
import time
from typing import Any

import cbor2
import pytest

from soft_authenticator import AT, UP, UV, SoftAuthenticator, b64url
from tokenward.clock import FrozenClock
from tokenward.errors import (
    ConfigError,
    Conflict,
    CredentialMalformed,
    NotFound,
    PasskeyInvalid,
    PasskeyRegistrationFailed,
)
from tokenward.passkeys import CHALLENGE_TTL, passkey_amr, relying_party
from tokenward.runtime import Tokenward
from tw_accounts import ORIGIN

BIND = "client-a"


class World:
    def __init__(self, tw: Tokenward, clock: FrozenClock) -> None:
        self.tw = tw
        self.clock = clock
        self.pk = tw.passkeys
        self.n = 0

    async def user(self) -> str:
        self.n += 1
        user = await self.tw.users.register(
            f"pk{self.n}-{time.time_ns()}@example.com",
            "a long enough password",
            now=self.clock.now(),
        )
        return user.id

    async def registered(
        self, uid: str, auth: SoftAuthenticator | None = None
    ) -> tuple[SoftAuthenticator, str]:
        auth = auth or SoftAuthenticator(ORIGIN)
        options = await self.pk.registration_options(uid, "x@example.com", now=self.clock.now())
        passkey = await self.pk.register(uid, "Laptop", auth.create(options), now=self.clock.now())
        return auth, passkey.id

    async def options(self, binding: str = BIND) -> tuple[str, dict[str, Any]]:
        return await self.pk.signin_options(binding=binding, now=self.clock.now())


@pytest.fixture
async def world(make_tw: Any) -> World:
    clock = FrozenClock(int(time.time()))
    return World(await make_tw(clock=clock), clock)


async def test_register_then_sign_in_without_an_email(world: World) -> None:
    uid = await world.user()
    options = await world.pk.registration_options(uid, "ann@example.com", now=world.clock.now())
    assert options["rp"]["id"] == "tokenward.test"
    assert options["authenticatorSelection"]["residentKey"] == "required"
    assert options["user"]["name"] == "ann@example.com"
    auth = SoftAuthenticator(ORIGIN)
    passkey = await world.pk.register(uid, " Laptop ", auth.create(options), now=world.clock.now())
    assert passkey.name == "Laptop"
    assert not passkey.synced
    listed = await world.pk.passkeys(uid)
    assert [p.id for p in listed] == [passkey.id]
    assert listed[0].last_used_at is None
    # A second registration excludes the first credential.
    again = await world.pk.registration_options(uid, "ann@example.com", now=world.clock.now())
    assert [c["id"] for c in again["excludeCredentials"]] == [b64url(auth.credentials[0].id)]

    handle, request = await world.options()
    assert request["allowCredentials"] == []
    assert request["userVerification"] == "required"
    world.clock.advance(5)
    done = await world.pk.signin(handle, auth.get(request), binding=BIND, now=world.clock.now())
    assert done.uid == uid
    assert done.passkey_id == passkey.id
    assert done.level.amr == ("hwk", "mfa")
    assert done.level.auth_time == world.clock.now()
    assert (await world.pk.passkeys(uid))[0].last_used_at == world.clock.now()


async def test_a_synced_passkey_is_swk(world: World) -> None:
    uid = await world.user()
    auth, _ = await world.registered(uid, SoftAuthenticator(ORIGIN, synced=True))
    assert (await world.pk.passkeys(uid))[0].synced
    handle, request = await world.options()
    done = await world.pk.signin(handle, auth.get(request), binding=BIND, now=world.clock.now())
    assert done.level.amr == ("swk", "mfa")


def test_amr_values_of_passkeys() -> None:
    assert passkey_amr(synced=False, user_verified=True) == ("hwk", "mfa")
    assert passkey_amr(synced=True, user_verified=True) == ("swk", "mfa")
    assert passkey_amr(synced=False, user_verified=False) == ("hwk",)
    assert passkey_amr(synced=True, user_verified=False) == ("swk",)
    assert passkey_amr(synced=False, user_verified=False, password=True) == ("pwd", "hwk", "mfa")
    assert passkey_amr(synced=True, user_verified=True, password=True) == ("pwd", "swk", "mfa")


async def test_a_replayed_sign_in_is_refused(world: World) -> None:
    uid = await world.user()
    auth, _ = await world.registered(uid)
    handle, request = await world.options()
    answer = auth.get(request)
    await world.pk.signin(handle, answer, binding=BIND, now=world.clock.now())
    with pytest.raises(PasskeyInvalid, match="unknown or was used"):
        await world.pk.signin(handle, answer, binding=BIND, now=world.clock.now())
    # The same answer against a fresh handle: its challenge is not this one.
    handle2, _ = await world.options()
    with pytest.raises(PasskeyInvalid, match="challenge"):
        await world.pk.signin(handle2, answer, binding=BIND, now=world.clock.now())


async def test_an_expired_sign_in_is_refused(world: World) -> None:
    uid = await world.user()
    auth, _ = await world.registered(uid)
    handle, request = await world.options()
    world.clock.advance(CHALLENGE_TTL)
    with pytest.raises(PasskeyInvalid, match="expired"):
        await world.pk.signin(handle, auth.get(request), binding=BIND, now=world.clock.now())


async def test_another_clients_handle_is_refused_and_kept_for_its_owner(world: World) -> None:
    uid = await world.user()
    auth, _ = await world.registered(uid)
    handle, request = await world.options()
    with pytest.raises(PasskeyInvalid, match="another client"):
        await world.pk.signin(handle, auth.get(request), binding="client-b", now=world.clock.now())
    done = await world.pk.signin(handle, auth.get(request), binding=BIND, now=world.clock.now())
    assert done.uid == uid


@pytest.mark.parametrize(
    ("knobs", "why"),
    [
        ({"origin": "https://evil.test"}, "origin"),
        ({"rp_id": "evil.test"}, "RP ID"),
        ({"uv": False}, "verif"),
    ],
)
async def test_a_wrong_origin_rp_id_or_missing_user_verification_is_refused(
    world: World, knobs: dict[str, Any], why: str
) -> None:
    uid = await world.user()
    auth, _ = await world.registered(uid)
    handle, request = await world.options()
    with pytest.raises(PasskeyInvalid, match=why):
        await world.pk.signin(
            handle, auth.get(request, **knobs), binding=BIND, now=world.clock.now()
        )


@pytest.mark.parametrize(
    ("knobs", "why"),
    [({"origin": "https://evil.test"}, "origin"), ({"rp_id": "evil.test"}, "RP ID")],
)
async def test_a_registration_from_a_wrong_origin_or_rp_id_is_refused(
    world: World, knobs: dict[str, Any], why: str
) -> None:
    uid = await world.user()
    options = await world.pk.registration_options(uid, "x@example.com", now=world.clock.now())
    credential = SoftAuthenticator(ORIGIN).create(options, **knobs)
    with pytest.raises(PasskeyRegistrationFailed, match=why):
        await world.pk.register(uid, "x", credential, now=world.clock.now())
    assert await world.pk.passkeys(uid) == []


async def test_a_registration_is_single_use_and_expires(world: World) -> None:
    uid = await world.user()
    options = await world.pk.registration_options(uid, "x@example.com", now=world.clock.now())
    auth = SoftAuthenticator(ORIGIN)
    credential = auth.create(options)
    await world.pk.register(uid, "one", credential, now=world.clock.now())
    with pytest.raises(PasskeyRegistrationFailed, match="in progress"):
        await world.pk.register(uid, "again", credential, now=world.clock.now())
    options = await world.pk.registration_options(uid, "x@example.com", now=world.clock.now())
    world.clock.advance(CHALLENGE_TTL)
    with pytest.raises(PasskeyRegistrationFailed, match="expired"):
        await world.pk.register(uid, "late", auth.create(options), now=world.clock.now())
    # The same authenticator credential twice: 409.
    options = await world.pk.registration_options(uid, "x@example.com", now=world.clock.now())
    with pytest.raises(Conflict):
        await world.pk.register(uid, "dup", _same_credential(auth, options), now=world.clock.now())


def _same_credential(auth: SoftAuthenticator, options: dict[str, Any]) -> dict[str, Any]:
    """An attestation for ``options`` of the credential ``auth`` already registered."""
    first = auth.credentials[0]
    fresh = auth.create(options)
    auth.credentials.pop()
    attested = bytes(16) + struct.pack(">H", len(first.id)) + first.id + first.cose_public_key()
    auth_data = (
        hashlib.sha256(first.rp_id.encode()).digest()
        + bytes([UP | UV | AT])
        + struct.pack(">I", 0)
        + attested
    )
    fresh["id"] = fresh["rawId"] = b64url(first.id)
    fresh["response"]["attestationObject"] = b64url(
        cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
    )
    return fresh


async def test_a_counter_that_goes_backwards_is_refused_as_a_clone(world: World) -> None:
    uid = await world.user()
    auth, _ = await world.registered(uid)
    handle, request = await world.options()
    await world.pk.signin(handle, auth.get(request, counter=7), binding=BIND, now=world.clock.now())
    for counter in (7, 3, 0):
        handle, request = await world.options()
        with pytest.raises(PasskeyInvalid) as caught:
            await world.pk.signin(
                handle, auth.get(request, counter=counter), binding=BIND, now=world.clock.now()
            )
        assert caught.value.clone
        assert caught.value.uid == uid
    handle, request = await world.options()
    done = await world.pk.signin(
        handle, auth.get(request, counter=8), binding=BIND, now=world.clock.now()
    )
    assert done.uid == uid


async def test_an_authenticator_without_a_counter_keeps_working(world: World) -> None:
    uid = await world.user()
    auth, _ = await world.registered(uid, SoftAuthenticator(ORIGIN, counting=False))
    for _ in range(2):
        handle, request = await world.options()
        await world.pk.signin(handle, auth.get(request), binding=BIND, now=world.clock.now())


async def test_a_removed_passkey_is_refused_and_others_cannot_remove_it(world: World) -> None:
    ann, bob = await world.user(), await world.user()
    auth, passkey_id = await world.registered(ann)
    with pytest.raises(NotFound):
        await world.pk.remove(bob, passkey_id)
    await world.pk.remove(ann, passkey_id)
    with pytest.raises(NotFound):
        await world.pk.remove(ann, passkey_id)
    handle, request = await world.options()
    with pytest.raises(PasskeyInvalid, match="not registered"):
        await world.pk.signin(handle, auth.get(request), binding=BIND, now=world.clock.now())


@pytest.mark.parametrize(
    "credential",
    [
        None,
        "text",
        {},
        {"id": "x", "rawId": "x", "type": "public-key", "response": {}},
        {
            "id": "!!",
            "rawId": "!!",
            "type": "public-key",
            "response": {"clientDataJSON": "!!", "authenticatorData": "!!", "signature": "!!"},
        },
    ],
)
async def test_malformed_credentials_are_a_precise_400(world: World, credential: Any) -> None:
    handle, _ = await world.options()
    with pytest.raises(CredentialMalformed):
        await world.pk.signin(handle, credential, binding=BIND, now=world.clock.now())
    uid = await world.user()
    with pytest.raises(CredentialMalformed):
        await world.pk.register(uid, "x", credential, now=world.clock.now())


def test_the_rp_id_must_match_the_issuer() -> None:
    # A single-label host (an intranet name, a test client's) is its own rp id.
    assert relying_party("http://testserver", rp_id=None, origins=(), name="X").id == "testserver"
    rp = relying_party("https://Auth.example.com:443/base", rp_id=None, origins=(), name="X")
    assert rp.origins == ("https://auth.example.com",)  # as browsers write it
    rp = relying_party("http://[::1]:8080", rp_id=None, origins=(), name="X")
    assert (rp.id, rp.origins) == ("::1", ("http://[::1]:8080",))
    rp = relying_party("https://auth.example.com", rp_id=None, origins=(), name="X")
    assert (rp.id, rp.origins) == ("auth.example.com", ("https://auth.example.com",))
    rp = relying_party(
        "https://auth.example.com",
        rp_id="example.com",
        origins=("https://auth.example.com", "https://app.example.com"),
        name="X",
    )
    assert rp.id == "example.com"
    with pytest.raises(ConfigError, match=r"^TOKENWARD_WEBAUTHN_RP_ID: .*issuer's host"):
        relying_party("https://auth.example.com", rp_id="other.com", origins=(), name="X")
    with pytest.raises(ConfigError, match=r"^TOKENWARD_WEBAUTHN_RP_ID: .*issuer's host"):
        relying_party("https://auth.example.com", rp_id="ample.com", origins=(), name="X")
    with pytest.raises(ConfigError, match=r"^TOKENWARD_WEBAUTHN_RP_ID: .*top-level"):
        relying_party("https://auth.example.com", rp_id="com", origins=(), name="X")
    with pytest.raises(ConfigError, match=r"^TOKENWARD_WEBAUTHN_ORIGINS: .*evil"):
        relying_party(
            "https://auth.example.com",
            rp_id="example.com",
            origins=("https://evil.test",),
            name="X",
        )


async def test_a_mismatched_rp_id_stops_the_start(make_tw: Any) -> None:
    with pytest.raises(ConfigError, match=r"^TOKENWARD_WEBAUTHN_RP_ID"):
        await make_tw(webauthn_rp_id="example.org")
