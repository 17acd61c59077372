"""Second factors on a real Redis Cluster: challenges, TOTP steps and session auth levels
each live in one slot, and a two-step login and its refreshes work there."""

from __future__ import annotations

import time

import pytest

from tokenward.authn import AuthLevel
from tokenward.clock import FrozenClock
from tokenward.errors import InvalidCode, MfaChallengeInvalid
from tokenward.mfa import TOTP_PERIOD, challenge_binding, totp_code
from tokenward.runtime import Tokenward
from tokenward.sessions import UserRef


async def test_two_step_login_and_refresh_on_cluster(cluster_tw: Tokenward) -> None:
    tw = cluster_tw
    clock = tw.clock
    assert isinstance(clock, FrozenClock)
    binding = challenge_binding("10.0.0.1", "agent", None)
    for n in range(8):  # users spread over the slots
        user = await tw.users.register(
            f"c{n}-{time.time_ns()}@example.com", "violet tractor 42 umbrella", now=clock.now()
        )
        enrolment = await tw.mfa.start_enrolment(user.id, user.email, now=clock.now())
        code = totp_code(enrolment.secret, clock.now() // TOTP_PERIOD)
        await tw.mfa.confirm_enrolment(user.id, user.email, code, ip="10.0.0.1", now=clock.now())
        challenge = await tw.mfa.begin_login(
            user.id, user.email, user_created_at=user.created_at, epoch=0,
            binding=binding, now=clock.now(),
        )  # fmt: skip
        assert challenge is not None
        with pytest.raises(InvalidCode):  # replayed: the confirmation used this step
            await tw.mfa.redeem(
                challenge.token, code, binding=binding, ip="10.0.0.1", now=clock.now()
            )
        clock.advance(TOTP_PERIOD)
        code = totp_code(enrolment.secret, clock.now() // TOTP_PERIOD)
        done = await tw.mfa.redeem(
            challenge.token, code, binding=binding, ip="10.0.0.1", now=clock.now()
        )
        with pytest.raises(MfaChallengeInvalid):
            await tw.mfa.redeem(
                challenge.token, code, binding=binding, ip="10.0.0.1", now=clock.now()
            )
        issued = await tw.sessions.open(
            UserRef(user.id, user.email, user.created_at),
            ip="10.0.0.1", user_agent="agent", now=clock.now(), level=done.level,
        )  # fmt: skip
        refreshed = await tw.sessions.refresh(
            issued.refresh_token, csrf_token=None, now=clock.now()
        )
        assert refreshed.access_claims.amr == ("pwd", "otp", "mfa")
        assert await tw.mfa_state.get_level(user.id, issued.sid) == AuthLevel(
            ("pwd", "otp", "mfa"), done.level.auth_time, "totp"
        )
        # The listing's script reads the level beside each session (same slot).
        (listed,) = await tw.sessions.list(user.id, current=None, now=clock.now())
        assert listed.record.level == done.level
