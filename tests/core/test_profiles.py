"""The per-process profile cache (:class:`tokenward.users.Profiles`) over a real user store."""

from __future__ import annotations

import uuid

from tokenward.runtime import Tokenward
from tokenward.users import Profiles


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
    assert profiles._entries["no-such-user"][1] is None
