"""Sessions and refresh tokens in a real Redis: secrecy at rest, TTLs, rotation, theft detection.

The :class:`Sessions` service runs over the real :class:`RedisSessionStore`. Time is passed
in as ``now`` (the store's own clock only matters for Redis TTLs, which are checked as
values). Every test uses fresh user ids, so tests never see each other's keys.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from tokenward.csrf import new_csrf_token
from tokenward.errors import CsrfError, RefreshReused, SessionEnded, TokenInvalid
from tokenward.keys import KeySet, generate_key
from tokenward.refresh import RefreshToken
from tokenward.revocation import SessionCache
from tokenward.sessions import EndReason, Issued, SessionPolicy, Sessions, UserRef
from tokenward.stores.redis_client import connect_redis
from tokenward.stores.redis_feed import RevocationFeed
from tokenward.stores.redis_sessions import GRACE_CHAIN_MAX, RedisSessionStore
from tokenward.tokens import AccessTokens
from waiting import await_until

NOW = int(time.time())
GRACE = 10


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = connect_redis(redis_url)
    yield client
    await client.aclose()


def _sessions(redis: aioredis.Redis, **policy: int) -> Sessions:
    tokens = AccessTokens(
        KeySet([generate_key()]), issuer="https://t.test", audience="tokenward", ttl=600
    )
    options = {"idle_ttl": 3600, "max_ttl": 7200, "grace": GRACE, **policy}
    return Sessions(RedisSessionStore(redis), tokens, SessionCache(), SessionPolicy(**options))


@pytest.fixture
def sessions(redis: aioredis.Redis) -> Sessions:
    return _sessions(redis)


def _user() -> UserRef:
    uid = uuid.uuid4().hex
    return UserRef(uid, f"{uid[:8]}@example.com", NOW - 100)


async def _open(sessions: Sessions, user: UserRef | None = None, now: int = NOW) -> Issued:
    return await sessions.open(user or _user(), ip="192.0.2.1", user_agent="pytest", now=now)


def _hex(token: str) -> str:
    """The whole SHA-256 of a refresh token's secret in hex: how records held it before."""
    return hashlib.sha256(RefreshToken.parse(token).secret).hexdigest()


async def _user_keys(redis: aioredis.Redis, uid: str) -> list[str]:
    return sorted([k async for k in redis.scan_iter(match=f"*{uid}*", count=1000)])


async def _dump(redis: aioredis.Redis, key: str) -> str:
    """Everything stored under ``key``, whatever its type, as one string."""
    kind = await redis.type(key)
    if kind == "hash":
        items = await redis.hgetall(key)
        return " ".join(f"{k}={v}" for k, v in items.items())
    if kind == "zset":
        return " ".join(await redis.zrange(key, 0, -1))
    if kind == "list":
        return " ".join(await redis.lrange(key, 0, -1))
    if kind == "set":
        return " ".join(await redis.smembers(key))
    if kind == "string":
        return str(await redis.get(key))
    if kind == "stream":
        return str(await redis.xrange(key))
    raise AssertionError(f"{key}: unexpected type {kind}")


def _secret_forms(token: str) -> list[str]:
    """A token and the forms of its secret part that must never be stored."""
    forms = [token, token.rsplit(".", 1)[-1]]
    if token.count(".") == 2 and len(token.rsplit(".", 1)[-1]) == 43:
        secret = RefreshToken.parse(token).secret
        forms += [secret.hex(), base64.b64encode(secret).decode()]
    return forms


async def _assert_all_have_ttl(redis: aioredis.Redis, keys: list[str]) -> None:
    assert keys
    for key in keys:
        ttl = await redis.ttl(key)
        assert ttl > 0, f"{key} has TTL {ttl}"


# ------------------------------------------------------------------------ token secrecy


async def test_refresh_token_is_opaque_with_256_bit_secret(sessions: Sessions) -> None:
    """The refresh token is ``uid.sid.secret`` with a 32-byte secret, not a JWT."""
    issued = await _open(sessions)
    parsed = RefreshToken.parse(issued.refresh_token)
    assert len(parsed.secret) == 32
    assert parsed.uid == issued.uid
    assert parsed.sid == issued.sid
    assert not issued.refresh_token.startswith("eyJ")


async def test_two_logins_give_unrelated_tokens(sessions: Sessions) -> None:
    """Two logins of one user share nothing but the user id."""
    user = _user()
    a, b = await _open(sessions, user), await _open(sessions, user)
    ra, rb = RefreshToken.parse(a.refresh_token), RefreshToken.parse(b.refresh_token)
    assert ra.sid != rb.sid
    assert ra.secret != rb.secret
    differing = sum(bin(x ^ y).count("1") for x, y in zip(ra.secret, rb.secret, strict=True))
    assert 64 <= differing <= 192, "secrets should differ in about half their 256 bits"
    assert a.csrf_token != b.csrf_token
    assert a.access_token != b.access_token


async def test_a_thousand_refresh_tokens_are_distinct_and_high_entropy(
    sessions: Sessions,
) -> None:
    """1000 logins: all secrets and session ids distinct, secret bytes near 8 bits of entropy."""
    user = _user()
    issued = [await _open(sessions, user) for _ in range(1000)]
    secrets_ = [RefreshToken.parse(i.refresh_token).secret for i in issued]
    assert len(set(secrets_)) == 1000
    assert len({i.sid for i in issued}) == 1000
    counts = Counter(b for s in secrets_ for b in s)
    total = sum(counts.values())
    entropy = -sum(c / total * math.log2(c / total) for c in counts.values())
    assert entropy > 7.9, entropy
    ones = sum(bin(b).count("1") for s in secrets_ for b in s)
    assert abs(ones / (total * 8) - 0.5) < 0.01
    first_bytes = Counter(s[0] for s in secrets_)
    assert max(first_bytes.values()) < 20, "no favoured leading byte"


async def test_redis_holds_no_usable_token(sessions: Sessions, redis: aioredis.Redis) -> None:
    """No key or field holds a refresh, CSRF or access token (or a refresh secret)."""
    user = _user()
    first = await _open(sessions, user)
    second = await sessions.refresh(first.refresh_token, csrf_token=first.csrf_token, now=NOW + 1)
    other = await _open(sessions, user)
    await sessions.end(user.id, other.sid, EndReason.LOGOUT, now=NOW + 2)
    secrets_: list[str] = []
    for issued in (first, second, other):
        secrets_ += [*_secret_forms(issued.refresh_token), issued.access_token]
        secrets_.append(issued.access_token.rsplit(".", 1)[1])  # the signature alone
        if issued.csrf_token:
            secrets_.append(issued.csrf_token)
    keys = await _user_keys(redis, user.id)
    assert len(keys) >= 2
    stored = " ".join(keys) + " " + " ".join([await _dump(redis, k) for k in keys])
    for secret in secrets_:
        assert secret not in stored


# ---------------------------------------------------------------------------------- TTLs


async def test_every_key_has_a_ttl_through_the_whole_lifecycle(
    sessions: Sessions, redis: aioredis.Redis
) -> None:
    """After login, refresh, logout, reuse and logout-all every key of the user expires."""
    user = _user()
    a = await _open(sessions, user)
    await _assert_all_have_ttl(redis, await _user_keys(redis, user.id))
    a2 = await sessions.refresh(a.refresh_token, csrf_token=None, now=NOW + 1)
    await _assert_all_have_ttl(redis, await _user_keys(redis, user.id))
    b = await _open(sessions, user)
    await sessions.end(user.id, b.sid, EndReason.LOGOUT, now=NOW + 2)
    await _assert_all_have_ttl(redis, await _user_keys(redis, user.id))
    await sessions.refresh(a2.refresh_token, csrf_token=None, now=NOW + 3)
    with pytest.raises(RefreshReused):
        await sessions.refresh(a.refresh_token, csrf_token=None, now=NOW + 3 + GRACE + 1)
    await _assert_all_have_ttl(redis, await _user_keys(redis, user.id))
    await _open(sessions, user)
    await sessions.end_all(user.id, keep=None, reason=EndReason.LOGOUT_ALL, now=NOW + 20)
    await _assert_all_have_ttl(redis, await _user_keys(redis, user.id))


async def test_a_refresh_after_the_index_expired_gives_the_new_index_a_ttl(
    sessions: Sessions, redis: aioredis.Redis
) -> None:
    """The index expires with the absolute limit of the latest login, counted in whole
    seconds; a session can outlive it by a rounding. The refresh that re-creates it must
    not leave it immortal."""
    a = await _open(sessions)
    index = f"tw:{{u:{a.uid}}}:idx"
    assert await redis.delete(index) == 1  # as if it had just expired
    b = await sessions.refresh(a.refresh_token, csrf_token=None, now=NOW + 1)
    assert await redis.zrange(index, 0, -1) == [a.sid]
    assert 0 < await redis.ttl(index) <= b.refresh_expires_in


async def test_no_tokenward_key_anywhere_lacks_a_ttl(
    sessions: Sessions, redis: aioredis.Redis
) -> None:
    """Across everything the test run has stored, no ``tw:*`` key is immortal."""
    await _open(sessions)
    immortal = [
        k async for k in redis.scan_iter(match="tw:*", count=1000) if await redis.ttl(k) == -1
    ]
    assert not immortal


async def test_session_ttl_is_idle_timeout_capped_by_absolute_limit(redis: aioredis.Redis) -> None:
    """The session lives min(idle, time left to the absolute limit), renewed on refresh."""
    sessions = _sessions(redis, idle_ttl=1000, max_ttl=1500)
    a = await _open(sessions)
    assert a.refresh_expires_in == 1000
    key = f"tw:{{u:{a.uid}}}:s:{a.sid}"
    assert 990 <= await redis.ttl(key) <= 1000
    b = await sessions.refresh(a.refresh_token, csrf_token=None, now=NOW + 800)
    assert b.refresh_expires_in == 700  # 1500 - 800 < 1000
    assert 690 <= await redis.ttl(key) <= 700
    assert b.session_expires_at == NOW + 1500


async def test_session_past_absolute_limit_cannot_refresh(redis: aioredis.Redis) -> None:
    """At the absolute limit a refresh fails and the session is ended, not extended."""
    sessions = _sessions(redis, idle_ttl=1000, max_ttl=1000)
    a = await _open(sessions)
    b = await sessions.refresh(a.refresh_token, csrf_token=None, now=NOW + 999)
    assert b.refresh_expires_in == 1
    with pytest.raises(SessionEnded):
        await sessions.refresh(b.refresh_token, csrf_token=None, now=NOW + 1000)
    with pytest.raises(SessionEnded):
        await sessions.authenticate(b.access_token, now=NOW + 1000)
    assert await sessions.store.get(a.uid, a.sid, now=NOW + 1000) is None


# ----------------------------------------------------------------------- rotation & reuse


async def test_every_refresh_returns_a_new_token(sessions: Sessions) -> None:
    """Each rotation hands out a refresh token never seen before, in the same session."""
    issued = await _open(sessions)
    seen = {issued.refresh_token}
    token = issued.refresh_token
    for step in range(1, 6):
        nxt = await sessions.refresh(token, csrf_token=None, now=NOW + step)
        assert nxt.refresh_token not in seen
        assert nxt.sid == issued.sid
        seen.add(nxt.refresh_token)
        token = nxt.refresh_token


async def test_replay_within_grace_gets_the_same_successor(sessions: Sessions) -> None:
    """Concurrent tabs: the replaced token inside the grace window gets the same successor."""
    a = await _open(sessions)
    b = await sessions.refresh(a.refresh_token, csrf_token=None, now=NOW + 1)
    again = await sessions.refresh(a.refresh_token, csrf_token=None, now=NOW + 1 + GRACE)
    assert again.refresh_token == b.refresh_token


async def test_concurrent_refreshes_all_get_one_successor(sessions: Sessions) -> None:
    """Ten simultaneous refreshes with one token: all succeed with the same new token."""
    a = await _open(sessions)
    results = await asyncio.gather(
        *(sessions.refresh(a.refresh_token, csrf_token=None, now=NOW + 1) for _ in range(10))
    )
    assert len({r.refresh_token for r in results}) == 1
    assert results[0].refresh_token != a.refresh_token


async def test_replay_after_grace_ends_the_session(sessions: Sessions) -> None:
    """A replaced token after the grace window: RefreshReused, session and access tokens dead."""
    a = await _open(sessions)
    b = await sessions.refresh(a.refresh_token, csrf_token=None, now=NOW + 1)
    with pytest.raises(RefreshReused):
        await sessions.refresh(a.refresh_token, csrf_token=None, now=NOW + 2 + GRACE)
    with pytest.raises(SessionEnded):
        await sessions.refresh(b.refresh_token, csrf_token=None, now=NOW + 3 + GRACE)
    for access in (a.access_token, b.access_token):
        with pytest.raises(SessionEnded):
            await sessions.authenticate(access, now=NOW + 3 + GRACE)


async def test_older_ancestor_replay_is_also_theft(sessions: Sessions) -> None:
    """A token replaced two rotations ago, after its grace, is recognised as reuse too."""
    a = await _open(sessions)
    b = await sessions.refresh(a.refresh_token, csrf_token=None, now=NOW + 1)
    await sessions.refresh(b.refresh_token, csrf_token=None, now=NOW + 2)
    with pytest.raises(RefreshReused):
        await sessions.refresh(a.refresh_token, csrf_token=None, now=NOW + 2 + GRACE)


async def test_older_ancestor_inside_its_grace_gets_the_current_successor(
    sessions: Sessions, redis: aioredis.Redis
) -> None:
    """Tab A refreshes twice while tab B still holds the first token: B, inside the grace
    of that token, gets A's current token (one cookie jar, one token), not a theft alarm."""
    a0 = await _open(sessions)
    a1 = await sessions.refresh(a0.refresh_token, csrf_token=None, now=NOW)
    a2 = await sessions.refresh(a1.refresh_token, csrf_token=None, now=NOW + 2)
    a3 = await sessions.refresh(a2.refresh_token, csrf_token=None, now=NOW + 4)
    for token in (a0, a1, a2):
        b = await sessions.refresh(token.refresh_token, csrf_token=None, now=NOW + 5)
        assert b.refresh_token == a3.refresh_token
    await sessions.authenticate(a3.access_token, now=NOW + 5)
    # The grace chain holds digests only, and leaves with its grace.
    record = await _dump(redis, f"tw:{{u:{a0.uid}}}:s:{a0.sid}")
    for token in (a0, a1, a2, a3):
        for form in _secret_forms(token.refresh_token):
            assert form not in record
    a4 = await sessions.refresh(a3.refresh_token, csrf_token=None, now=NOW + 4 + GRACE + 1)
    assert "gch=" not in await _dump(redis, f"tw:{{u:{a0.uid}}}:s:{a0.sid}")
    assert a4.refresh_token != a3.refresh_token


async def test_each_token_keeps_the_grace_of_its_own_replacement(sessions: Sessions) -> None:
    """The first token's grace is counted from when it was replaced, not from the latest
    rotation: once it is over, that token is theft even while a newer one is in grace."""
    a0 = await _open(sessions)
    a1 = await sessions.refresh(a0.refresh_token, csrf_token=None, now=NOW)
    await sessions.refresh(a1.refresh_token, csrf_token=None, now=NOW + 5)
    with pytest.raises(RefreshReused):
        await sessions.refresh(a0.refresh_token, csrf_token=None, now=NOW + GRACE + 1)


async def test_the_grace_chain_is_bounded(redis: aioredis.Redis) -> None:
    """Past GRACE_CHAIN_MAX + 1 rotations inside one grace window, the oldest token is
    treated as theft: the record stays small whatever a client does."""
    sessions = _sessions(redis, refresh_rate_limit=100)
    tokens = [(await _open(sessions)).refresh_token]
    for _ in range(GRACE_CHAIN_MAX + 2):
        tokens.append((await sessions.refresh(tokens[-1], csrf_token=None, now=NOW)).refresh_token)
    # tokens[-2] is the one just replaced, tokens[1:-2] the chain, tokens[0] one too many.
    oldest_kept = await sessions.refresh(tokens[1], csrf_token=None, now=NOW)
    assert oldest_kept.refresh_token == tokens[-1]
    with pytest.raises(RefreshReused):
        await sessions.refresh(tokens[0], csrf_token=None, now=NOW)


async def test_strict_mode_has_no_grace(redis: aioredis.Redis) -> None:
    """With grace 0 even an immediate replay is reuse."""
    sessions = _sessions(redis, grace=0)
    a = await _open(sessions)
    await sessions.refresh(a.refresh_token, csrf_token=None, now=NOW + 1)
    with pytest.raises(RefreshReused):
        await sessions.refresh(a.refresh_token, csrf_token=None, now=NOW + 1)


async def test_forged_secret_for_a_real_session_is_refused(sessions: Sessions) -> None:
    """Knowing uid and sid is not enough: a made-up secret is refused, the session lives on."""
    a = await _open(sessions)
    forged = RefreshToken.new(a.uid, a.sid).encode()
    with pytest.raises(TokenInvalid):
        await sessions.refresh(forged, csrf_token=None, now=NOW + 1)
    assert (await sessions.refresh(a.refresh_token, csrf_token=None, now=NOW + 2)).sid == a.sid


async def test_csrf_token_of_another_session_cannot_refresh(sessions: Sessions) -> None:
    """In cookie mode the CSRF token must belong to the session being refreshed."""
    user = _user()
    a, b = await _open(sessions, user), await _open(sessions, user)
    with pytest.raises(CsrfError):
        await sessions.refresh(a.refresh_token, csrf_token=b.csrf_token, now=NOW + 1)
    assert await sessions.refresh(a.refresh_token, csrf_token=a.csrf_token, now=NOW + 1)


# ------------------------------------------------------------------------------ ending


async def test_logout_ends_only_the_current_session(sessions: Sessions) -> None:
    """Ending one session leaves the user's other session working."""
    user = _user()
    a, b = await _open(sessions, user), await _open(sessions, user)
    await sessions.end(user.id, a.sid, EndReason.LOGOUT, now=NOW + 1)
    with pytest.raises(SessionEnded):
        await sessions.authenticate(a.access_token, now=NOW + 1)
    assert (await sessions.authenticate(b.access_token, now=NOW + 1)).sid == b.sid
    assert (await sessions.refresh(b.refresh_token, csrf_token=None, now=NOW + 2)).sid == b.sid


async def test_ended_session_is_announced_to_other_processes(redis_url: str) -> None:
    """Another process's cache stops vouching for an ended session within a second."""
    clients = [connect_redis(redis_url), connect_redis(redis_url)]
    a_side, b_side = _sessions(clients[0]), _sessions(clients[1])
    b_side.tokens = a_side.tokens  # one deployment, one key set
    feed = RevocationFeed(clients[1], b_side.cache, ping_interval=0.2)
    try:
        await feed.start(wait=5)
        assert b_side.cache.healthy
        issued = await _open(a_side)
        await b_side.authenticate(issued.access_token, now=NOW)  # now cached in B
        assert len(b_side.cache) == 1
        await a_side.end(issued.uid, issued.sid, EndReason.LOGOUT, now=NOW)
        await await_until(
            lambda: b_side.cache.get(issued.sid, now=NOW) is None,
            within=1.0,
            what="B's cache stops vouching",
        )
        with pytest.raises(SessionEnded):
            await b_side.authenticate(issued.access_token, now=NOW)
    finally:
        await feed.stop()
        for c in clients:
            await c.aclose()


async def test_all_keys_of_a_user_share_one_hash_slot(
    sessions: Sessions, redis: aioredis.Redis
) -> None:
    """Every key a user has lands in one cluster hash slot (single-slot Lua scripts)."""
    user = _user()
    a = await _open(sessions, user)
    b = await _open(sessions, user)
    await sessions.refresh(a.refresh_token, csrf_token=None, now=NOW + 1)
    await sessions.end(user.id, b.sid, EndReason.LOGOUT, now=NOW + 2)
    keys = await _user_keys(redis, user.id)
    assert len(keys) >= 3, keys  # session, index, ended list
    slots = {key_slot(k.encode()) for k in keys}
    assert len(slots) == 1, dict(zip(keys, slots, strict=False))
    other = _user()
    await _open(sessions, other)
    assert {key_slot(k.encode()) for k in await _user_keys(redis, other.id)} == {
        key_slot(f"{{u:{other.id}}}".encode())
    }


@pytest.mark.parametrize("then", ["refresh", "rekey"])
async def test_records_hold_no_user_id_and_older_ones_drop_theirs(
    sessions: Sessions, redis: aioredis.Redis, then: str
) -> None:
    """The key names the user, so a new record has no ``uid`` field. A record written
    before (with its user's id) reads as before, and its next rotation or re-key deletes
    the field; one naming another user is corrupt (tests/sessions/test_sessions_corrupt.py)."""
    user = _user()
    issued = await _open(sessions, user)
    key = f"tw:{{u:{user.id}}}:s:{issued.sid}"
    assert not await redis.hexists(key, "uid")
    await redis.hset(key, "uid", user.id)  # as written before
    state = await sessions.store.get(user.id, issued.sid, now=NOW + 1)
    assert state is not None
    assert state.uid == user.id
    if then == "refresh":
        again = await sessions.refresh(issued.refresh_token, csrf_token=None, now=NOW + 60)
    else:
        again = await sessions.rekey(user.id, issued.sid, now=NOW + 60)
    assert (again.uid, again.access_claims.sub) == (user.id, user.id)
    assert not await redis.hexists(key, "uid")


async def _in_the_hex_form(redis: aioredis.Redis, key: str, tokens: list[str], csrf: str) -> None:
    """Rewrite the record at ``key`` as records were kept before digests were cut to 128
    bits: every digest whole in hex, an ancestor its first 16 hex characters (four to a
    field, up to ``anc3``), a grace-chain entry 96 characters."""
    stored = await redis.hgetall(key)
    whole = {RefreshToken.parse(t).digest: _hex(t) for t in tokens}
    fields = {"cur": whole[stored["cur"]], "prev": whole[stored["prev"]]}
    fields["csrf"] = hashlib.sha256(csrf.encode()).hexdigest()
    entries = [stored["gch"][i : i + 54] for i in range(0, len(stored["gch"]), 54)]
    fields["gch"] = "".join(whole[e[:22]] + e[22:] for e in entries)
    heads = {d[:10]: h[:16] for d, h in whole.items()}
    lineage = stored["anc"] + stored.get("anc2", "")
    old = "".join(heads[lineage[i : i + 10]] for i in range(0, len(lineage), 10))
    for n, name in enumerate(("anc", "anc2", "anc3")):
        fields[name] = old[64 * n : 64 * n + 64]
    await redis.hset(key, mapping=fields)


@pytest.mark.parametrize("rotated", [False, True])
async def test_a_record_with_whole_hex_digests_is_read_and_rewritten(
    sessions: Sessions, redis: aioredis.Redis, rotated: bool
) -> None:
    """Records written before held every digest whole, in hex. Such a record works as it
    is: its current token rotates, its replaced tokens inside their grace get the current
    one (through the grace chain too), its CSRF digest still checks, and an ancestor is
    theft; the first rotation rewrites it in today's form (22-character digests, 10 for an
    ancestor, two ancestor fields) and an ancestor is still theft after it."""
    user = _user()
    issued = await _open(sessions, user)
    assert issued.csrf_token is not None
    csrf = issued.csrf_token
    key = f"tw:{{u:{user.id}}}:s:{issued.sid}"
    tokens = [issued.refresh_token]
    # 9 rotations a minute apart (ancestors fill all three hex fields), then two inside
    # the grace (a grace chain of one entry)
    for now in [NOW + 60 * i for i in range(1, 10)] + [NOW + 600, NOW + 601]:
        tokens.append((await sessions.refresh(tokens[-1], csrf_token=csrf, now=now)).refresh_token)
    await _in_the_hex_form(redis, key, tokens, csrf)
    stored = await redis.hgetall(key)
    assert {len(stored[f]) for f in ("cur", "prev", "csrf")} == {64}
    assert (len(stored["gch"]), len(stored["anc3"])) == (96, 32)
    assert await sessions.store.matches_refresh(
        user.id, issued.sid, RefreshToken.parse(tokens[-1]).digest
    )
    with pytest.raises(CsrfError):
        await sessions.refresh(tokens[-1], csrf_token=new_csrf_token(), now=NOW + 602)
    for replayed in (tokens[-2], tokens[-3]):  # 'prev', then the grace chain's entry
        again = await sessions.refresh(replayed, csrf_token=csrf, now=NOW + 602)
        assert again.refresh_token == tokens[-1]
    if rotated:
        tokens.append(
            (await sessions.refresh(tokens[-1], csrf_token=csrf, now=NOW + 700)).refresh_token
        )
        stored = await redis.hgetall(key)
        assert {len(stored[f]) for f in ("cur", "prev", "csrf")} == {22}
        assert stored["anc"] + stored["anc2"] == "".join(
            RefreshToken.parse(t).digest[:10] for t in reversed(tokens[-14:-2])
        )
        assert "anc3" not in stored
        assert "gch" not in stored
        assert await sessions.state(user.id, issued.sid, now=NOW + 701)
    with pytest.raises(RefreshReused):
        await sessions.refresh(tokens[1], csrf_token=csrf, now=NOW + 800)
    assert await redis.exists(key) == 0


@pytest.mark.parametrize("upgraded", [False, True])
async def test_a_record_written_by_0_1_is_read_and_upgraded(
    sessions: Sessions, redis: aioredis.Redis, upgraded: bool
) -> None:
    """0.1 kept the agent itself in ``ua`` and 128-bit ancestor prefixes in ``old``: such a
    record lists its agent and its ancestors are theft, before and after the rotation that
    moves them to ``anc`` (the first 60 bits of each) and drops ``old``."""
    user = _user()
    issued = await _open(sessions, user)
    key = f"tw:{{u:{user.id}}}:s:{issued.sid}"
    tokens = [issued.refresh_token]
    for i in range(1, 4):
        now = NOW + 60 * i
        tokens.append((await sessions.refresh(tokens[-1], csrf_token=None, now=now)).refresh_token)
    digest = [RefreshToken.parse(t).digest for t in tokens]
    hexed = [_hex(t) for t in tokens]
    # As 0.1 wrote it: tokens[2] is 'prev', tokens[1] and tokens[0] the older ancestors.
    assert await redis.hdel(key, "anc", "uk") == 2
    await redis.hset(key, mapping={"old": hexed[1][:32] + hexed[0][:32], "ua": "Legacy/0.1"})
    listed = await sessions.list(user.id, current=None, now=NOW + 200)
    assert [info.record.user_agent for info in listed] == ["Legacy/0.1"]
    if upgraded:
        tokens.append(
            (await sessions.refresh(tokens[3], csrf_token=None, now=NOW + 240)).refresh_token
        )
        stored = await redis.hgetall(key)
        assert "old" not in stored
        assert stored["anc"] == digest[2][:10] + digest[1][:10] + digest[0][:10]
        assert stored["ua"] == "Legacy/0.1"  # kept until the session ends
    with pytest.raises(RefreshReused):
        await sessions.refresh(tokens[0], csrf_token=None, now=NOW + 300)


async def test_a_session_record_stays_a_compact_listpack(
    sessions: Sessions, redis: aioredis.Redis
) -> None:
    """After 20 refreshes (12 ancestors kept) and two rotations inside the grace window (a
    grace chain of one entry), every value of the record is at most 64 characters, so Redis
    keeps it as a listpack (docs/sessions.md, Bytes per session): digests of 22 characters,
    ancestors of 10, six to a field."""
    user = _user()
    issued = await _open(sessions, user)
    key = f"tw:{{u:{user.id}}}:s:{issued.sid}"
    token = issued.refresh_token
    for now in [NOW + 60 * i for i in range(1, 21)] + [NOW + 1300, NOW + 1301]:
        token = (await sessions.refresh(token, csrf_token=None, now=now)).refresh_token
    stored = await redis.hgetall(key)
    assert {len(stored[f]) for f in ("cur", "prev", "csrf")} == {22}
    assert (len(stored["anc"]), len(stored["anc2"]), len(stored["gch"])) == (60, 60, 54)
    assert max(len(v) for v in stored.values()) <= 64
    assert await redis.object("encoding", key) == "listpack"


async def test_user_agents_are_stored_once_per_user(
    sessions: Sessions, redis: aioredis.Redis
) -> None:
    """Sessions name their agent by a digest; the user's table keeps each agent once, for
    as long as a live session names it, and no longer than the index."""
    user = _user()
    agents = f"tw:{{u:{user.id}}}:ua"
    first = [
        await sessions.open(user, ip="192.0.2.1", user_agent="Agent/A", now=NOW) for _ in range(3)
    ]
    assert await redis.hvals(agents) == ["Agent/A"]
    for issued in first:
        await sessions.end(user.id, issued.sid, EndReason.LOGOUT, now=NOW + 1)
    await sessions.open(user, ip="192.0.2.1", user_agent="Agent/B", now=NOW + 2)
    assert await redis.hvals(agents) == ["Agent/B"]
    assert 0 < await redis.ttl(agents) <= 7200  # the index's TTL: the absolute limit
    listed = await sessions.list(user.id, current=None, now=NOW + 3)
    assert [info.record.user_agent for info in listed] == ["Agent/B"]


async def test_a_long_user_agent_is_stored_in_pieces_and_listed_whole(
    sessions: Sessions, redis: aioredis.Redis
) -> None:
    """An agent of up to 256 characters is kept in pieces of 64, so the table stays a
    compact listpack, and the listing puts it back together."""
    user = _user()
    agent = "".join(chr(ord("a") + i % 26) for i in range(300))
    await sessions.open(user, ip="192.0.2.1", user_agent=agent, now=NOW)
    table = f"tw:{{u:{user.id}}}:ua"
    assert await redis.hlen(table) == 4
    assert await redis.object("encoding", table) == "listpack"
    listed = await sessions.list(user.id, current=None, now=NOW + 1)
    assert [info.record.user_agent for info in listed] == [agent[:256]]
