"""SpotifyClient against the in-process emulator: grants, rotation, failure mapping, retries and
Retry-After, request counts. Waits go through an injected sleep, never the real clock."""

from __future__ import annotations

from datetime import timedelta

import pytest

from playvault import clock
from playvault.failures import AuthFailed, AuthRevoked, NetworkFailure, OutOfTime, RateLimited, UnknownFailure
from playvault.spotify import Budget, Credentials
from tests.unit.helpers import make_spotify, sign_in

RP = "/v1/me/player/recently-played"


class FakeSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def sleep() -> FakeSleep:
    return FakeSleep()


@pytest.fixture
def client(emulator, sleep):
    return make_spotify(emulator, sleep=sleep)


def budget() -> Budget:
    return Budget.seconds(60)


def signed_in(emulator, user_id: str = "alice", *, rotate: bool = False, plays: int = 3) -> str:
    emulator.state.add_user(user_id, rotate_refresh_tokens=rotate)
    now = emulator.state.now()
    for i in range(plays):
        emulator.state.add_play(user_id, now - timedelta(minutes=10 * (plays - i)), track_index=i)
    return sign_in(emulator, user_id)


def counts(emulator) -> dict[str, int]:
    return emulator.state.request_counts()


# ---------------------------------------------------------------- tokens
def test_refresh_without_rotation_keeps_the_old_refresh_token(emulator, client):
    refresh_token = signed_in(emulator)
    grant = client.refresh(refresh_token, budget())
    assert grant.refresh_token is None
    assert grant.access_token
    assert grant.expires_at > clock.now() + timedelta(minutes=55)
    # the old refresh token still works
    assert client.refresh(refresh_token, budget()).access_token != grant.access_token
    assert "access_token" not in repr(grant) and grant.access_token not in repr(grant)


def test_refresh_with_rotation_returns_the_new_refresh_token(emulator, client):
    refresh_token = signed_in(emulator, rotate=True)
    grant = client.refresh(refresh_token, budget())
    assert grant.refresh_token is not None and grant.refresh_token != refresh_token
    with pytest.raises(AuthRevoked):  # the emulator (like Spotify may) retires the old one
        client.refresh(refresh_token, budget())
    assert client.refresh(grant.refresh_token, budget()).access_token


def test_exchange_code_returns_a_refresh_token(emulator, client):
    # sign_in does the same by hand; here the client's own exchange is checked end to end.
    import base64
    import hashlib
    import secrets
    from urllib.parse import parse_qs, urlsplit

    import requests

    from playvault_local.provision import DEV_CLIENT_ID
    from tests.conftest import REDIRECT_URI

    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    answer = requests.get(f"{emulator.url}/authorize", allow_redirects=False, timeout=10, params={
        "client_id": DEV_CLIENT_ID, "response_type": "code", "redirect_uri": REDIRECT_URI, "state": "s",
        "code_challenge_method": "S256", "code_challenge": challenge, "login_as": "bob"})
    code = parse_qs(urlsplit(answer.headers["Location"]).query)["code"][0]
    grant = client.exchange_code(code, verifier, REDIRECT_URI, budget())
    assert grant.refresh_token and grant.access_token
    assert client.me(grant.access_token, budget())["id"] == "bob"
    with pytest.raises(AuthRevoked):  # a code is single-use: invalid_grant
        client.exchange_code(code, verifier, REDIRECT_URI, budget())


def test_invalid_grant_is_auth_revoked(emulator, client):
    refresh_token = signed_in(emulator)
    emulator.state.revoke("alice")
    with pytest.raises(AuthRevoked) as caught:
        client.refresh(refresh_token, budget())
    assert refresh_token not in str(caught.value)


def test_unknown_refresh_token_is_auth_revoked(emulator, client):
    with pytest.raises(AuthRevoked):
        client.refresh("AQ-not-a-token", budget())


def test_wrong_client_secret_is_the_apps_failure_and_never_shows_the_secret(emulator, sleep):
    from playvault.failures import AppCredentialsRejected

    refresh_token = signed_in(emulator)
    bad = make_spotify(emulator, sleep=sleep, credentials=lambda: Credentials("playvault-local-client", "s3cr3t-x"))
    with pytest.raises(AppCredentialsRejected) as caught:  # invalid_client: not the user's failure
        bad.refresh(refresh_token, budget())
    assert "s3cr3t-x" not in str(caught.value)
    assert "s3cr3t-x" not in repr(Credentials("id", "s3cr3t-x"))


# ---------------------------------------------------------------- Web API
def test_recently_played_returns_the_visible_plays(emulator, client):
    refresh_token = signed_in(emulator, plays=5)
    access = client.refresh(refresh_token, budget()).access_token
    page = client.recently_played(access, budget())
    truth = emulator.state.ground_truth("alice")
    assert [p.played_at_ms for p in page.plays] == [t["played_at_ms"] for t in truth]


def test_a_poll_is_exactly_one_request_for_the_whole_window(emulator, client):
    refresh_token = signed_in(emulator, plays=5)
    access = client.refresh(refresh_token, budget()).access_token
    emulator.state.reset_counts()
    page = client.recently_played(access, budget())
    assert len(page.plays) == 5
    assert counts(emulator) == {"token": 0, "me": 0, "recently_played": 1, "authorize": 0}


def test_api_401_is_auth_failed(emulator, client):
    signed_in(emulator)
    emulator.state.reset_counts()
    with pytest.raises(AuthFailed):
        client.recently_played("BQ-not-a-token", budget())
    assert counts(emulator)["recently_played"] == 1  # a 401 is not retried by the client


def test_expired_access_token_is_auth_failed(emulator, client):
    refresh_token = signed_in(emulator)
    access = client.refresh(refresh_token, budget()).access_token
    emulator.state.expire_access_token(access)
    with pytest.raises(AuthFailed):
        client.me(access, budget())


# ---------------------------------------------------------------- 429
def test_short_429_is_waited_in_process_then_succeeds(emulator, client, sleep):
    refresh_token = signed_in(emulator)
    access = client.refresh(refresh_token, budget()).access_token
    emulator.state.reset_counts()
    emulator.state.inject(RP, status=429, retry_after=1)
    page = client.recently_played(access, budget())
    assert len(page.plays) == 3
    assert sleep.calls == [1.0]
    assert counts(emulator)["recently_played"] == 2


def test_long_429_is_rate_limited_with_retry_after(emulator, client, sleep):
    refresh_token = signed_in(emulator)
    access = client.refresh(refresh_token, budget()).access_token
    emulator.state.reset_counts()
    emulator.state.inject(RP, status=429, retry_after=3600)
    with pytest.raises(RateLimited) as caught:
        client.recently_played(access, budget())
    assert caught.value.retry_after_s == 3600
    assert sleep.calls == []
    assert counts(emulator)["recently_played"] == 1


def test_short_429_that_does_not_fit_the_budget_is_rate_limited(emulator, client, sleep):
    refresh_token = signed_in(emulator)
    access = client.refresh(refresh_token, budget()).access_token
    emulator.state.inject(RP, status=429, retry_after=3)
    with pytest.raises(RateLimited) as caught:
        client.recently_played(access, Budget(lambda: 2_000))
    assert caught.value.retry_after_s == 3
    assert sleep.calls == []


def test_a_429_that_outlasts_every_attempt_is_rate_limited_not_network(emulator, client, sleep):
    # Spotify keeps answering a short 429: that is the app being rate limited (deferred app-wide),
    # not the user's network failing (which would count against the user in the breaker).
    refresh_token = signed_in(emulator)
    access = client.refresh(refresh_token, budget()).access_token
    emulator.state.reset_counts()
    emulator.state.inject(RP, status=429, retry_after=1, times=10)
    with pytest.raises(RateLimited) as caught:
        client.recently_played(access, budget())
    assert caught.value.retry_after_s == 1
    assert counts(emulator)["recently_played"] == 3
    assert sleep.calls == [1.0, 1.0]


# ---------------------------------------------------------------- 5xx, timeouts, malformed JSON
@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_retried_then_network_failure(emulator, client, sleep, status):
    refresh_token = signed_in(emulator)
    access = client.refresh(refresh_token, budget()).access_token
    emulator.state.reset_counts()
    emulator.state.inject(RP, status=status, times=10)
    with pytest.raises(NetworkFailure):
        client.recently_played(access, budget())
    assert counts(emulator)["recently_played"] == 3  # max_attempts
    assert len(sleep.calls) == 2
    # full jitter: each backoff within its exponential cap
    assert 0 <= sleep.calls[0] <= 0.25 and 0 <= sleep.calls[1] <= 0.5


def test_5xx_then_success(emulator, client, sleep):
    refresh_token = signed_in(emulator)
    access = client.refresh(refresh_token, budget()).access_token
    emulator.state.reset_counts()
    emulator.state.inject(RP, status=503, times=2)
    assert len(client.recently_played(access, budget()).plays) == 3
    assert counts(emulator)["recently_played"] == 3


def test_max_attempts_is_honoured(emulator, sleep):
    client = make_spotify(emulator, sleep=sleep, max_attempts=5)
    refresh_token = signed_in(emulator)
    access = client.refresh(refresh_token, budget()).access_token
    emulator.state.reset_counts()
    emulator.state.inject(RP, status=500, times=10)
    with pytest.raises(NetworkFailure):
        client.recently_played(access, budget())
    assert counts(emulator)["recently_played"] == 5


def test_token_endpoint_5xx_is_retried_then_network(emulator, client):
    refresh_token = signed_in(emulator)
    emulator.state.reset_counts()
    emulator.state.inject("/api/token", status=503, times=10)
    with pytest.raises(NetworkFailure):
        client.refresh(refresh_token, budget())
    assert counts(emulator)["token"] == 3


def test_timeout_is_network_failure(emulator, sleep):
    client = make_spotify(emulator, sleep=sleep, read_timeout_s=0.1, max_attempts=2)
    refresh_token = signed_in(emulator)
    access = client.refresh(refresh_token, budget()).access_token
    emulator.state.reset_counts()
    emulator.state.inject(RP, delay_s=0.4, times=2)
    with pytest.raises(NetworkFailure, match="timed out"):
        client.recently_played(access, budget())
    assert counts(emulator)["recently_played"] == 2


def test_malformed_json_is_retried_then_network(emulator, client):
    refresh_token = signed_in(emulator)
    access = client.refresh(refresh_token, budget()).access_token
    emulator.state.reset_counts()
    emulator.state.inject(RP, status=200, body="not json", times=10)
    with pytest.raises(NetworkFailure, match="malformed JSON"):
        client.recently_played(access, budget())
    assert counts(emulator)["recently_played"] == 3


def test_malformed_json_once_then_success(emulator, client):
    refresh_token = signed_in(emulator)
    access = client.refresh(refresh_token, budget()).access_token
    emulator.state.reset_counts()
    emulator.state.inject(RP, status=200, body="not json")
    assert len(client.recently_played(access, budget()).plays) == 3
    assert counts(emulator)["recently_played"] == 2


def test_json_without_items_is_unknown(emulator, client):
    refresh_token = signed_in(emulator)
    access = client.refresh(refresh_token, budget()).access_token
    emulator.state.inject(RP, status=200, body={"nope": []})
    with pytest.raises(UnknownFailure):
        client.recently_played(access, budget())


def test_no_budget_left_makes_no_request_and_is_not_the_users_fault(emulator, client):
    refresh_token = signed_in(emulator)
    emulator.state.reset_counts()
    # Out of time is infrastructure (the message comes back), not a NETWORK failure of the user.
    with pytest.raises(OutOfTime):
        client.refresh(refresh_token, Budget(lambda: 0))
    assert counts(emulator)["token"] == 0


# ---------------------------------------------------------------- refresh safety and quota
def test_a_refresh_whose_answer_may_be_lost_is_never_resent(emulator, sleep):
    from playvault.failures import RefreshOutcomeUnknown

    client = make_spotify(emulator, sleep=sleep, read_timeout_s=0.1, max_attempts=3)
    refresh_token = signed_in(emulator, rotate=True)
    emulator.state.reset_counts()
    emulator.state.inject("/api/token", delay_s=0.4, times=1)  # Spotify answers, we stop listening
    with pytest.raises(RefreshOutcomeUnknown):
        client.refresh(refresh_token, budget())
    assert counts(emulator)["token"] == 1  # one grant sent, not three


def test_api_read_timeouts_are_still_retried(emulator, sleep):
    client = make_spotify(emulator, sleep=sleep, read_timeout_s=0.1, max_attempts=2)
    access = client.refresh(signed_in(emulator), budget()).access_token
    emulator.state.reset_counts()
    emulator.state.inject(RP, delay_s=0.4, times=1)
    assert len(client.recently_played(access, budget()).plays) == 3  # a GET is safe to send again
    assert counts(emulator)["recently_played"] == 2


def test_a_quota_429_is_told_apart_from_a_rate_limit(emulator, client):
    access = client.refresh(signed_in(emulator), budget()).access_token
    emulator.state.rate_limit_app(emulator.state.now() + timedelta(hours=20))
    with pytest.raises(RateLimited) as plain:
        client.recently_played(access, budget())
    assert not plain.value.quota
    emulator.state.quota_exceeded = True
    with pytest.raises(RateLimited) as quota:
        client.recently_played(access, budget())
    assert quota.value.quota and quota.value.retry_after_s == 20 * 3600
    assert "quota exceeded" in str(quota.value)
