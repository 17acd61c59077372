"""The per-process profile cache (:class:`tokenward.users.Profiles`) over a real user store."""

from __future__ import annotations

import asyncio
import uuid

from tokenward.runtime import Tokenward
from tokenward.users import Profiles, User, UserStore


async def _user(tw: Tokenward) -> tuple[str, str]:
    email = f"profile-{uuid.uuid4().hex[:10]}@example.com"
    user = await tw.users.register(email, "violet tractor 42 umbrella", now=tw.clock.now())
    return user.id, email


async def test_a_fresh_entry_is_served_without_the_store_and_forget_rereads(tw: Tokenward) -> None:
    """Within its lifetime the cache answers with what it read, even after the store
    changed; ``forget`` (what the process making a change calls) reads the change."""
    profiles = Profiles(tw.user_store, ttl=3600)
    uid, email = await _user(tw)
    assert (await profiles.by_id(uid)).email == email  # type: ignore[union-attr]
    new = f"moved-{uuid.uuid4().hex[:10]}@example.com"
    assert await tw.user_store.set_email(uid, new, expected_email=email, now=tw.clock.now())
    assert (await profiles.by_id(uid)).email == email  # type: ignore[union-attr]
    profiles.forget(uid)
    assert (await profiles.by_id(uid)).email == new  # type: ignore[union-attr]


async def test_an_expired_entry_is_read_again(tw: Tokenward) -> None:
    """With a lifetime of 0 every read goes to the store: a change shows at once."""
    profiles = Profiles(tw.user_store, ttl=0)
    uid, email = await _user(tw)
    assert (await profiles.by_id(uid)).email == email  # type: ignore[union-attr]
    new = f"moved-{uuid.uuid4().hex[:10]}@example.com"
    assert await tw.user_store.set_email(uid, new, expected_email=email, now=tw.clock.now())
    assert (await profiles.by_id(uid)).email == new  # type: ignore[union-attr]


async def test_the_cache_is_bounded_and_remembers_unknown_users(tw: Tokenward) -> None:
    """At most ``max_entries`` are kept, the least recently used going first; a user that
    does not exist is remembered as such (no store read per request for a deleted one)."""
    profiles = Profiles(tw.user_store, ttl=3600, max_entries=2)
    ids = [(await _user(tw))[0] for _ in range(3)]
    for uid in ids:
        await profiles.by_id(uid)
    assert list(profiles._entries) == ids[1:]
    assert await profiles.by_id("no-such-user") is None
    assert profiles._entries["no-such-user"][2] is None


async def test_entries_live_long_only_while_the_feed_vouches(tw: Tokenward) -> None:
    """While ``vouched()`` holds an entry is kept ``vouched_ttl``; once it does not, the
    short ``ttl`` applies to the same entry, and :meth:`reset` drops every entry."""
    up = True
    profiles = Profiles(tw.user_store, ttl=0, vouched_ttl=3600, vouched=lambda: up)
    uid, email = await _user(tw)
    assert (await profiles.by_id(uid)).email == email  # type: ignore[union-attr]
    new = f"moved-{uuid.uuid4().hex[:10]}@example.com"
    assert await tw.user_store.set_email(uid, new, expected_email=email, now=tw.clock.now())
    assert (await profiles.by_id(uid)).email == email  # type: ignore[union-attr]
    up = False
    assert (await profiles.by_id(uid)).email == new  # type: ignore[union-attr]
    up = True
    newer = f"again-{uuid.uuid4().hex[:10]}@example.com"
    assert await tw.user_store.set_email(uid, newer, expected_email=new, now=tw.clock.now())
    assert (await profiles.by_id(uid)).email == new  # type: ignore[union-attr]
    profiles.reset()
    assert (await profiles.by_id(uid)).email == newer  # type: ignore[union-attr]


class _HeldStore:
    """The real user store, whose next ``by_id`` waits until released (to put a change
    announcement in the middle of a read)."""

    def __init__(self, store: UserStore) -> None:
        self.store = store
        self.reading = asyncio.Event()
        self.release = asyncio.Event()

    async def by_id(self, user_id: str) -> User | None:
        user = await self.store.by_id(user_id)
        self.reading.set()
        await self.release.wait()
        return user


async def test_a_read_overtaken_by_an_announcement_is_not_kept(tw: Tokenward) -> None:
    """A read that returned before an address change committed, but whose answer arrives
    after the change's announcement, is answered once and not cached (else the old address
    would be shown for the whole long lifetime)."""
    held = _HeldStore(tw.user_store)
    profiles = Profiles(held, ttl=3600, vouched_ttl=3600, vouched=lambda: True)  # type: ignore[arg-type]
    uid, email = await _user(tw)
    read = asyncio.create_task(profiles.by_id(uid))
    await asyncio.wait_for(held.reading.wait(), 5)
    new = f"moved-{uuid.uuid4().hex[:10]}@example.com"
    assert await tw.user_store.set_email(uid, new, expected_email=email, now=tw.clock.now())
    profiles.forget(uid)
    held.release.set()
    assert (await read).email == email  # type: ignore[union-attr]
    assert (await profiles.by_id(uid)).email == new  # type: ignore[union-attr]


async def test_the_runtime_trusts_profiles_long_only_while_its_feed_is_up(tw: Tokenward) -> None:
    """Wired in the runtime: vouched while the revocation feed is up, dropped when it
    changes state (announcements may have been missed)."""
    uid, _ = await _user(tw)
    assert tw.profiles.vouched()
    await tw.profiles.by_id(uid)
    assert uid in tw.profiles._entries
    tw._feed_changed(False)
    assert uid not in tw.profiles._entries


async def test_an_entry_is_trusted_for_75_to_100_percent_of_its_ttl(tw: Tokenward) -> None:
    """Users read together (a worker's first requests) must not all go back to the store in
    the same second: each entry loses a random share of up to a quarter of the TTL, vouched
    or not. Pinned draws give the bounds; a change shows after them and not before."""
    uid, email = await _user(tw)
    now = [0.0]
    for draw, vouched, trusted_until in (
        (0.0, False, 100.0), (0.999, False, 75.025), (0.5, True, 875.0),
    ):  # fmt: skip
        profiles = Profiles(
            tw.user_store, ttl=100, vouched_ttl=1000, vouched=lambda v=vouched: v,
            clock=lambda: now[0], rng=lambda d=draw: d,
        )  # fmt: skip
        now[0] = 0.0
        current = (await profiles.by_id(uid)).email  # type: ignore[union-attr]
        new = f"moved-{uuid.uuid4().hex[:10]}@example.com"
        assert await tw.user_store.set_email(uid, new, expected_email=current, now=tw.clock.now())
        now[0] = trusted_until - 0.01
        assert (await profiles.by_id(uid)).email == current  # type: ignore[union-attr]
        now[0] = trusted_until
        assert (await profiles.by_id(uid)).email == new  # type: ignore[union-attr]
    assert email != new
