"""The reference model of throttling (tokenward.ratelimit), pure: no Redis, no clock."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tokenward
from tokenward.ratelimit import KeyState, Limit, acquire, release
from tokenward.throttle import Limits, account_digest, address_bucket, address_digest

PAIR = Limit("pair", 10, 900, 3600)
T0 = 1_800_000_000


def _run(limit: Limit, times: list[int]) -> tuple[list[bool], KeyState]:
    state, out = KeyState(), []
    for i, t in enumerate(times):
        decision, (state,) = acquire([state], [limit], now=t, event=f"e{i}")
        out.append(decision.allowed)
    return out, state


def test_limit_events_pass_and_the_next_is_refused_with_a_lock_of_one_window() -> None:
    """Ten failures in a row pass; the eleventh is refused and locks for the window."""
    state = KeyState()
    for i in range(10):
        d, (state,) = acquire([state], [PAIR], now=T0 + i, event=f"e{i}")
        assert d.allowed
        assert d.remaining == 9 - i
    d, (state,) = acquire([state], [PAIR], now=T0 + 10, event="e10")
    assert not d.allowed
    assert d.retry_after == 900
    assert d.blocked == ("pair",)
    assert d.locked == ("pair",)


def test_never_more_than_limit_events_in_any_window() -> None:
    """The window slides exactly: at most 10 accepted in any 900 s, whatever the rhythm."""
    times = [T0 + 37 * i for i in range(400)]
    allowed, _ = _run(PAIR, times)
    accepted = [t for t, ok in zip(times, allowed, strict=True) if ok]
    for t in accepted:
        assert sum(1 for u in accepted if t <= u < t + 900) <= 10


def test_refused_attempts_during_a_lock_do_not_extend_it() -> None:
    """Hammering a locked key gains nothing and costs the owner nothing more."""
    _, state = _run(PAIR, [T0] * 11)
    for t in range(T0 + 1, T0 + 900, 7):
        d, (state,) = acquire([state], [PAIR], now=t, event="x")
        assert not d.allowed
        assert d.locked == ()
    d, _ = acquire([state], [PAIR], now=T0 + 900, event="y")
    assert d.allowed


def test_repeated_locks_double_up_to_the_cap_then_are_forgotten() -> None:
    """Back-off grows 900, 1800, 3600, 3600 s; a quiet max_block later it starts over."""
    state, now, locks = KeyState(), T0, []
    for _ in range(4):
        for i in range(10):
            d, (state,) = acquire([state], [PAIR], now=now, event=f"{now}-{i}")
            assert d.allowed
        d, (state,) = acquire([state], [PAIR], now=now, event="refused")
        locks.append(d.retry_after)
        now += d.retry_after
    assert locks == [900, 1800, 3600, 3600]
    quiet = now + PAIR.max_block
    for i in range(10):
        d, (state,) = acquire([state], [PAIR], now=quiet, event=f"q{i}")
    d, _ = acquire([state], [PAIR], now=quiet, event="q")
    assert d.retry_after == 900


def test_several_keys_are_all_or_nothing() -> None:
    """When one key refuses, the other records nothing."""
    tight, loose = Limit("tight", 1, 60), Limit("loose", 5, 60)
    d, states = acquire([KeyState(), KeyState()], [tight, loose], now=T0, event="a")
    assert d.allowed
    assert d.remaining == 0
    d, states = acquire(states, [tight, loose], now=T0 + 1, event="b")
    assert not d.allowed
    assert d.blocked == ("tight",)
    assert [e[1] for e in states[1].events] == ["a"]


def test_release_refunds_one_event() -> None:
    """A refunded event no longer counts."""
    lim = Limit("one", 1, 60)
    d, (state,) = acquire([KeyState()], [lim], now=T0, event="a")
    state = release(state, "a")
    d, _ = acquire([state], [lim], now=T0 + 1, event="b")
    assert d.allowed


def test_max_block_is_never_shorter_than_the_window() -> None:
    """A lock outlives the events that caused it."""
    assert Limit("x", 3, 600, 10).max_block == 600
    with pytest.raises(ValueError, match="positive"):
        Limit("x", 0, 600)


def test_default_limits_meet_the_contract() -> None:
    """docs/abuse.md: 429 after at most 10 failures of one account from one address in 15 min."""
    limits = Limits()
    assert limits.login_pair.limit <= 10
    assert limits.login_pair.window >= 900
    # The account-wide lock holds the owner back too: it never grows past one window.
    assert limits.login_account.max_block == limits.login_account.window


def test_digests_hide_emails_and_share_spellings() -> None:
    """Keys name accounts by digest; case, spaces and NFKC forms share one bucket."""
    d = account_digest("Alice@Example.com ")
    assert (
        d
        == account_digest("alice@example.com")
        == account_digest("\uff41\uff4c\uff49\uff43\uff45@example.com")
    )
    assert "alice" not in d
    assert len(d) == 32
    assert address_digest("192.0.2.1") != address_digest("192.0.2.2")


def test_ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() -> None:
    """One IPv6 host holds a /64: all of it is one bucket."""
    assert address_bucket("2001:db8:1:2::1") == address_bucket("2001:db8:1:2:ffff::9")
    assert address_bucket("2001:db8:1:3::1") != address_bucket("2001:db8:1:2::1")
    assert address_bucket("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_bucket("unknown") == "unknown"


@pytest.mark.parametrize("module", ["ratelimit", "throttle", "events", "logs"])
def test_abuse_core_modules_import_no_framework_or_backend(module: str) -> None:
    """The throttling, events and log-format cores import no web framework, Redis or SQL."""
    source = (Path(tokenward.__file__).parent / f"{module}.py").read_text()
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
            if node.module.startswith("tokenward."):
                assert not node.module.startswith(("tokenward.stores", "tokenward.http"))
    assert not imported & {"starlette", "redis", "sqlalchemy", "httpx", "fastapi", "time"}
