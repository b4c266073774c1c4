"""Circuit breaker: exact cooldowns per failure type and streak, caps, and the reset on success."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from playvault import breaker
from playvault.archive import FAILED, SUCCESS, Archiver
from playvault.failures import FailureType
from playvault.spotify import Budget, SpotifyClient, ssm_credentials
from playvault.store import users
from tests.unit.test_worker import install_clock, make_cipher, onboard

# consecutive failures 1..6 -> cooldown minutes (base * 2^(n-1), capped)
EXPECTED = {
    FailureType.AUTH: [30, 60, 120, 240, 240, 240],  # cap 240
    FailureType.NETWORK: [10, 20, 40, 60, 60, 60],  # cap 60
    FailureType.UNKNOWN: [20, 40, 80, 160, 180, 180],  # cap 180
}
CASES = [(ft, n, minutes) for ft, row in EXPECTED.items() for n, minutes in enumerate(row, start=1)]


@pytest.mark.parametrize(("failure_type", "failures", "minutes"), CASES)
def test_cooldown_minutes(failure_type, failures, minutes):
    assert breaker.cooldown_minutes(failure_type, failures) == minutes
    failed_at = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)
    assert breaker.cooldown_until(failure_type, failures, failed_at) == failed_at + timedelta(minutes=minutes)


@pytest.mark.parametrize("failure_type", [FailureType.AUTH, FailureType.NETWORK, FailureType.UNKNOWN])
def test_a_long_streak_stays_at_the_cap(failure_type):
    assert breaker.cooldown_minutes(failure_type, 10_000) == EXPECTED[failure_type][-1]


def test_zero_failures_is_not_a_cooldown():
    with pytest.raises(ValueError):
        breaker.cooldown_minutes(FailureType.NETWORK, 0)


@pytest.mark.parametrize("failure_type", [FailureType.RATE_LIMITED, FailureType.AUTH_REVOKED])
def test_rate_limits_and_revocations_never_count_against_a_user(failure_type):
    assert not breaker.counts_against_user(failure_type)


def test_failures_escalate_to_the_cap_and_a_success_resets_the_streak(aws_env, emulator):
    """Through archive_user: NETWORK failures (recently-played answering 503) then a success."""
    fake = install_clock(emulator.state)
    onboard(emulator, aws_env, ["ana"])
    spotify = SpotifyClient(api_url=emulator.url + "/v1", accounts_url=emulator.url,
                            credentials=ssm_credentials(aws_env.env["SPOTIFY_CLIENT_ID_PARAM"],
                                                        aws_env.env["SPOTIFY_CLIENT_SECRET_PARAM"]),
                            sleep=lambda _s: None)
    archiver = Archiver(spotify, make_cipher())

    def poll_failing() -> users.UserModel:
        emulator.state.inject("/v1/me/player/recently-played", status=503, times=3)  # all 3 attempts
        result = archiver.archive_user("ana", Budget.seconds(30))
        assert (result.status, result.failure_type) == (FAILED, "NETWORK")
        return users.get("ana")

    for failures, minutes in enumerate(EXPECTED[FailureType.NETWORK], start=1):
        user = poll_failing()
        assert int(user.consecutive_failures) == failures
        assert user.cooldown_until == fake.now + timedelta(minutes=minutes)
        fake.set(user.cooldown_until)

    assert archiver.archive_user("ana", Budget.seconds(30)).status == SUCCESS
    user = users.get("ana")
    assert (int(user.consecutive_failures), user.cooldown_until, user.last_failure_type) == (0, None, None)
    assert poll_failing().cooldown_until == fake.now + timedelta(minutes=10), "the streak starts over"
