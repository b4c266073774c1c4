"""Behaviour of the Spotify emulator: recently-played window and cursors, OAuth (PKCE, codes,
refresh, rotation, revocation, expiry), faults, ground truth, control API and the CLI."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from spotify_emulator import EmulatorServer, EmulatorState, FaultConfig
from spotify_emulator.client import EmulatorControl

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CLIENT_ID, CLIENT_SECRET, REDIRECT = "pv-client", "pv-secret", "http://127.0.0.1:9/callback"
RP = "/me/player/recently-played"
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ISO_S = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize_params(challenge: str, **extra: str) -> dict:
    return {"client_id": CLIENT_ID, "response_type": "code", "redirect_uri": REDIRECT, "state": "st-1",
            "scope": "user-read-recently-played", "code_challenge_method": "S256", "code_challenge": challenge,
            **extra}


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def state(clock: Clock) -> EmulatorState:
    st = EmulatorState(clock=clock, seed=1)
    st.register_client(CLIENT_ID, CLIENT_SECRET, [REDIRECT])
    st.add_user("alice")
    return st


@pytest.fixture
def server(state: EmulatorState):
    with EmulatorServer(state) as srv:
        yield srv


def get_code(server, user: str = "alice", challenge: str | None = None) -> tuple[str, str]:
    verifier, ch = pkce()
    r = requests.get(f"{server.url}/authorize", params=authorize_params(challenge or ch, login_as=user),
                     allow_redirects=False, timeout=10)
    assert r.status_code == 302, r.text
    loc = urlsplit(r.headers["Location"])
    q = parse_qs(loc.query)
    assert f"{loc.scheme}://{loc.netloc}{loc.path}" == REDIRECT and q["state"] == ["st-1"]
    return q["code"][0], verifier


def token_call(server, auth=(CLIENT_ID, CLIENT_SECRET), **form):
    return requests.post(f"{server.url}/api/token", data=form, auth=auth, timeout=10)


def sign_in(server, user: str = "alice") -> dict:
    code, verifier = get_code(server, user)
    r = token_call(server, grant_type="authorization_code", code=code, redirect_uri=REDIRECT, code_verifier=verifier)
    assert r.status_code == 200, r.text
    return r.json()


def api(server, token: str, path: str = RP, **params):
    return requests.get(f"{server.url}/v1{path}", params=params, headers={"Authorization": f"Bearer {token}"},
                        timeout=10)


def add_plays(state, n: int, end: datetime = T0, user: str = "alice") -> list[int]:
    """n plays, 3 minutes apart, the last one at `end`. Returns their ms, oldest first."""
    out = []
    for i in range(n):
        item = state.add_play(user, end - timedelta(minutes=3 * (n - 1 - i)), track_index=i)
        out.append(ms(datetime.fromisoformat(item["played_at"].replace("Z", "+00:00"))))
    return out


def item_ms(page: dict) -> list[int]:
    return [ms(datetime.fromisoformat(i["played_at"].replace("Z", "+00:00"))) for i in page["items"]]


# ----------------------------------------------------------------------------- recently-played
def test_only_last_50_plays_exist(state, server):
    all_ms = add_plays(state, 60)
    tok = sign_in(server)["access_token"]
    page = api(server, tok, limit=50).json()
    assert item_ms(page) == list(reversed(all_ms[-50:]))  # newest first, oldest 10 gone
    assert page["next"] is None
    assert page["cursors"] == {"after": str(all_ms[-1]), "before": str(all_ms[-50])}
    # the 10 older plays are gone forever, also by cursor
    assert api(server, tok, before=all_ms[-50]).json()["items"] == []
    assert item_ms(api(server, tok, after=0, limit=50).json()) == list(reversed(all_ms[-50:]))


def test_default_limit_and_limit_bounds(state, server):
    add_plays(state, 30)
    tok = sign_in(server)["access_token"]
    page = api(server, tok).json()
    assert page["limit"] == 20 and len(page["items"]) == 20
    assert len(api(server, tok, limit=1).json()["items"]) == 1
    assert len(api(server, tok, limit=50).json()["items"]) == 30
    for bad in ("0", "51", "-1", "abc", "2.5"):
        r = api(server, tok, limit=bad)
        assert r.status_code == 400 and r.json()["error"]["status"] == 400, bad
    for params in ({"after": "x"}, {"before": "1.5"}, {"after": "1", "before": "2"}):
        r = api(server, tok, **params)
        assert r.status_code == 400, params


def test_paging_backwards_with_before_cursor_and_next(state, server):
    all_ms = add_plays(state, 45)
    tok = sign_in(server)["access_token"]
    page = api(server, tok, limit=20).json()
    assert page["href"].startswith(f"{server.url}/v1{RP}?") and "limit=20" in page["href"]
    seen = []
    while True:
        got = item_ms(page)
        assert got == sorted(got, reverse=True)
        assert page["cursors"]["before"] == str(got[-1]) and page["cursors"]["after"] == str(got[0])
        seen += got
        if page["next"] is None:
            break
        assert f"before={page['cursors']['before']}" in page["next"]
        page = requests.get(page["next"], headers={"Authorization": f"Bearer {tok}"}, timeout=10).json()
    assert seen == list(reversed(all_ms))  # each play exactly once


def test_paging_forward_with_after_cursor(state, server):
    all_ms = add_plays(state, 45)
    tok = sign_in(server)["access_token"]
    page = api(server, tok, limit=20, after=all_ms[4]).json()  # exclusive: starts at all_ms[5]
    assert item_ms(page) == list(reversed(all_ms[5:25]))  # the 20 OLDEST newer than after, newest first
    assert page["next"] and f"after={all_ms[24]}" in page["next"]
    page2 = requests.get(page["next"], headers={"Authorization": f"Bearer {tok}"}, timeout=10).json()
    assert item_ms(page2) == list(reversed(all_ms[25:45]))
    assert page2["next"] is None
    # before is exclusive too
    assert item_ms(api(server, tok, before=all_ms[10], limit=3).json()) == [all_ms[9], all_ms[8], all_ms[7]]
    # nothing newer than the newest play
    empty = api(server, tok, after=all_ms[-1]).json()
    assert empty["items"] == [] and empty["next"] is None and not empty["cursors"]


def test_played_at_with_and_without_milliseconds(state, server):
    t = datetime(2016, 12, 13, 20, 44, 4, 589000, tzinfo=UTC)
    state.add_play("alice", t, whole_second=True)
    item = state.add_play("alice", t + timedelta(minutes=5))
    assert item["played_at"] == "2016-12-13T20:49:04.589Z"
    tok = sign_in(server)["access_token"]
    items = api(server, tok).json()["items"]
    assert items[0]["played_at"] == "2016-12-13T20:49:04.589Z" and ISO_MS.match(items[0]["played_at"])
    assert items[1]["played_at"] == "2016-12-13T20:44:04Z" and ISO_S.match(items[1]["played_at"])
    truth = state.ground_truth("alice")
    assert [p["played_at_ms"] for p in truth] == [ms(t) - 589, ms(t) + 300_000]
    assert truth[0]["track_uri"].startswith("spotify:track:") and len(truth[0]["track_id"]) == 22
    # a play with 0 ms but not whole_second still renders .000
    state.add_play("alice", datetime(2016, 12, 13, 21, 0, tzinfo=UTC))
    assert api(server, tok, limit=1).json()["items"][0]["played_at"] == "2016-12-13T21:00:00.000Z"


def test_future_plays_become_visible_with_the_clock(state, server, clock):
    add_plays(state, 3)
    state.add_play("alice", T0 + timedelta(minutes=10))
    tok = sign_in(server)["access_token"]
    assert len(api(server, tok).json()["items"]) == 3
    assert len(state.ground_truth("alice")) == 3
    clock.advance(minutes=10)
    assert len(api(server, tok).json()["items"]) == 4
    assert len(state.ground_truth("alice")) == 4


def test_local_file_play(state):
    item = state.add_play("alice", T0, local=True)
    track = item["track"]
    assert track["is_local"] is True and track["id"] is None and track["href"] is None
    assert re.match(r"^spotify:local:[^:]+:[^:]+:[^:]+:\d+$", track["uri"])
    truth = state.ground_truth("alice")[0]
    assert truth == {"played_at_ms": ms(T0), "track_id": None, "track_uri": track["uri"], "is_local": True,
                     "late_s": 0.0, "bad_kind": None, "episode": False, "in_feed": True}


def test_catalog_ids_are_base62_and_deterministic(clock):
    a, b = EmulatorState(clock=clock, seed=3), EmulatorState(clock=clock, seed=3)
    for st in (a, b):
        st.add_user("u")
    ta = a.add_play("u", T0, track_index=42)["track"]
    tb = b.add_play("u", T0, track_index=42)["track"]
    assert ta == tb
    for obj_id in [ta["id"], ta["album"]["id"], *(x["id"] for x in ta["artists"])]:
        assert re.fullmatch(r"[0-9A-Za-z]{22}", obj_id)
    assert ta["uri"] == f"spotify:track:{ta['id']}"
    # a different seed gives different ids
    c = EmulatorState(clock=clock, seed=4)
    c.add_user("u")
    assert c.add_play("u", T0, track_index=42)["track"]["id"] != ta["id"]


# ----------------------------------------------------------------------------- authorize
def test_authorize_rejects_bad_requests_without_redirect(state, server):
    _, ch = pkce()
    cases = [
        ({"client_id": "nope"}, "Invalid client"),
        ({"redirect_uri": "http://evil.example/cb"}, "redirect"),
        ({"response_type": "token"}, "response_type"),
        ({"code_challenge_method": "plain"}, "S256"),
        ({"code_challenge": ""}, "code_challenge"),
    ]
    for override, text in cases:
        r = requests.get(f"{server.url}/authorize", params={**authorize_params(ch), **override},
                         allow_redirects=False, timeout=10)
        assert r.status_code == 400 and "Location" not in r.headers, override
        assert "text/html" in r.headers["Content-Type"] and text in r.text, (override, r.text)


def test_consent_page_agree_and_cancel(state, server):
    verifier, ch = pkce()
    r = requests.get(f"{server.url}/authorize", params=authorize_params(ch), timeout=10)
    assert r.status_code == 200 and "<form" in r.text and "Agree" in r.text and "Cancel" in r.text
    hidden = dict(re.findall(r"type='hidden' name='(\w+)' value='([^']*)'", r.text))
    assert hidden["code_challenge"] == ch and hidden["redirect_uri"] == REDIRECT and hidden["state"] == "st-1"
    user_id = re.search(r"name='user_id' id='user_id' value='(\w+)'", r.text).group(1)
    r = requests.post(f"{server.url}/authorize", data={**hidden, "user_id": "bob", "action": "agree"},
                      allow_redirects=False, timeout=10)
    assert r.status_code == 302
    q = parse_qs(urlsplit(r.headers["Location"]).query)
    assert q["state"] == ["st-1"] and "code" in q
    assert state.has_user("bob") and not state.has_user(user_id)
    r = token_call(server, grant_type="authorization_code", code=q["code"][0], redirect_uri=REDIRECT,
                   code_verifier=verifier)
    assert r.status_code == 200
    assert api(server, r.json()["access_token"], "/me").json()["id"] == "bob"

    r = requests.post(f"{server.url}/authorize", data={**hidden, "user_id": "bob", "action": "cancel"},
                      allow_redirects=False, timeout=10)
    assert r.status_code == 302
    assert parse_qs(urlsplit(r.headers["Location"]).query) == {"error": ["access_denied"], "state": ["st-1"]}
    r = requests.get(f"{server.url}/authorize", params=authorize_params(ch, deny="1"), allow_redirects=False,
                     timeout=10)
    assert r.status_code == 302 and "error=access_denied" in r.headers["Location"]


# ----------------------------------------------------------------------------- token endpoint
def test_token_response_shape_and_public_client(state, server):
    body = sign_in(server)
    assert set(body) == {"access_token", "token_type", "scope", "expires_in", "refresh_token"}
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert body["scope"] == "user-read-recently-played"
    # PKCE public client: client_id in the body, no secret
    code, verifier = get_code(server)
    r = requests.post(f"{server.url}/api/token", data={"grant_type": "authorization_code", "code": code,
                                                       "redirect_uri": REDIRECT, "code_verifier": verifier,
                                                       "client_id": CLIENT_ID}, timeout=10)
    assert r.status_code == 200, r.text


def test_pkce_wrong_verifier_and_single_use_codes(state, server, clock):
    code, verifier = get_code(server)
    r = token_call(server, grant_type="authorization_code", code=code, redirect_uri=REDIRECT,
                   code_verifier=pkce()[0])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    # single use
    code, verifier = get_code(server)
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier}
    assert token_call(server, **form).status_code == 200
    r = token_call(server, **form)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    # redirect_uri must match
    code, verifier = get_code(server)
    r = token_call(server, grant_type="authorization_code", code=code, redirect_uri=REDIRECT + "x",
                   code_verifier=verifier)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    # codes expire after 10 minutes
    code, verifier = get_code(server)
    clock.advance(minutes=10)
    r = token_call(server, grant_type="authorization_code", code=code, redirect_uri=REDIRECT, code_verifier=verifier)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_bad_client_and_bad_input(state, server):
    code, verifier = get_code(server)
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier}
    r = token_call(server, auth=(CLIENT_ID, "wrong"), **form)
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    r = token_call(server, auth=("unknown", CLIENT_SECRET), **form)
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    r = token_call(server, grant_type="password", username="x")
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"
    r = token_call(server, grant_type="refresh_token")
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    r = token_call(server, grant_type="refresh_token", refresh_token="made-up")
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant" and r.json()["error_description"]


def test_refresh_without_rotation_keeps_token(state, server):
    rt = sign_in(server)["refresh_token"]
    for _ in range(2):
        r = token_call(server, grant_type="refresh_token", refresh_token=rt)
        assert r.status_code == 200
        body = r.json()
        assert "refresh_token" not in body and body["expires_in"] == 3600
        assert api(server, body["access_token"], "/me").status_code == 200


def test_refresh_with_rotation(state, server):
    state.add_user("rot", rotate_refresh_tokens=True)
    rt = sign_in(server, "rot")["refresh_token"]
    r = token_call(server, grant_type="refresh_token", refresh_token=rt)
    assert r.status_code == 200
    new_rt = r.json()["refresh_token"]
    assert new_rt != rt
    # Until the new token is used, the old one still works and answers the same new token (an answer
    # lost on the way, or two refreshes at once, are not fatal).
    r = token_call(server, grant_type="refresh_token", refresh_token=rt)
    assert r.status_code == 200 and r.json()["refresh_token"] == new_rt
    assert token_call(server, grant_type="refresh_token", refresh_token=new_rt).status_code == 200
    # Once the new one is used, the old one is dead.
    r = token_call(server, grant_type="refresh_token", refresh_token=rt)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_revoke_invalidates_refresh_and_access_tokens(state, server):
    body = sign_in(server)
    assert api(server, body["access_token"]).status_code == 200
    state.revoke("alice")
    r = token_call(server, grant_type="refresh_token", refresh_token=body["refresh_token"])
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"
    r = api(server, body["access_token"])
    assert r.status_code == 401 and r.json() == {"error": {"status": 401, "message": "Invalid access token"}}
    # signing in again is the cure
    assert api(server, sign_in(server)["access_token"]).status_code == 200


def test_refresh_token_expires_six_months_after_authorization(state, server, clock):
    state.add_user("rot", rotate_refresh_tokens=True)
    rt_alice = sign_in(server)["refresh_token"]
    rt_rot = sign_in(server, "rot")["refresh_token"]
    clock.advance(days=182)
    assert token_call(server, grant_type="refresh_token", refresh_token=rt_alice).status_code == 200
    r = token_call(server, grant_type="refresh_token", refresh_token=rt_rot)  # rotation does not extend it
    assert r.status_code == 200
    rt_rot = r.json()["refresh_token"]
    clock.advance(days=1)
    for rt in (rt_alice, rt_rot):
        r = token_call(server, grant_type="refresh_token", refresh_token=rt)
        assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_lost_rotation_answer_leaves_only_a_token_the_client_never_saw(state, server):
    state.add_user("rot", rotate_refresh_tokens=True)
    rt = sign_in(server, "rot")["refresh_token"]
    state.faults.timeout_s = 0.05
    EmulatorControl(server.url).lose_rotation_responses(1)
    r = token_call(server, grant_type="refresh_token", refresh_token=rt)
    assert r.status_code == 504 and "refresh_token" not in r.text  # rotated, answer lost
    # The old one still works until its successor is used (the lost answer is not fatal)...
    r = token_call(server, grant_type="refresh_token", refresh_token=rt)
    assert r.status_code == 200 and r.json()["refresh_token"] != rt  # ...and hands over the lost one
    alice_rt = sign_in(server)["refresh_token"]  # a user without rotation is never affected
    state.lose_rotation_responses(1)
    assert token_call(server, grant_type="refresh_token", refresh_token=alice_rt).status_code == 200


def test_rotated_client_secret_answers_invalid_client_until_the_new_one_is_used(state, server):
    rt = sign_in(server)["refresh_token"]
    EmulatorControl(server.url).rotate_client_secret(CLIENT_ID, "new-secret")
    r = token_call(server, grant_type="refresh_token", refresh_token=rt)
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    r = token_call(server, auth=(CLIENT_ID, "new-secret"), grant_type="refresh_token", refresh_token=rt)
    assert r.status_code == 200  # the user's refresh token was never the problem


def test_allow_list_of_a_development_mode_client(state, server):
    token = sign_in(server)["access_token"]
    EmulatorControl(server.url).set_allow_list(CLIENT_ID, ["bob"])
    assert api(server, token, "/me").status_code == 403
    assert api(server, token).status_code == 403
    EmulatorControl(server.url).set_allow_list(CLIENT_ID, None)
    assert api(server, token, "/me").status_code == 200


def test_access_token_expires_after_one_hour(state, server, clock):
    tok = sign_in(server)["access_token"]
    clock.advance(minutes=59, seconds=59)
    assert api(server, tok).status_code == 200
    clock.advance(seconds=1)
    r = api(server, tok)
    assert r.status_code == 401 and r.json() == {"error": {"status": 401, "message": "The access token expired"}}
    r = requests.get(f"{server.url}/v1{RP}", timeout=10)
    assert r.status_code == 401 and r.json()["error"]["status"] == 401


# ----------------------------------------------------------------------------- faults & counters
def test_fault_config_defaults():
    assert FaultConfig() == FaultConfig(latency_ms=0, error_5xx_rate=0.0, rate_429_rate=0.0, retry_after_s=1,
                                        timeout_rate=0.0, timeout_s=5.0, expire_token_rate=0.0,
                                        lost_rotation_rate=0.0)


def test_injected_errors_and_delays(state, server):
    tok = sign_in(server)["access_token"]
    state.inject("/v1/me/player", 503, times=2)
    assert api(server, tok, "/me").status_code == 200  # prefix does not match
    assert [api(server, tok).status_code for _ in range(3)] == [503, 503, 200]
    state.inject("/v1/", 429, retry_after=3600)
    r = api(server, tok)
    assert r.status_code == 429 and r.headers["Retry-After"] == "3600"
    state.inject("/api/token", 500)
    r = token_call(server, grant_type="refresh_token", refresh_token="x")
    assert r.status_code == 500 and r.json()["error"] == "server_error"
    state.inject("/v1/me", None, delay_s=0.6)
    started = time.monotonic()
    assert api(server, tok, "/me").status_code == 200
    assert time.monotonic() - started >= 0.6
    with pytest.raises(requests.exceptions.Timeout):
        state.inject("/v1/me", None, delay_s=1.0)
        requests.get(f"{server.url}/v1/me", headers={"Authorization": f"Bearer {tok}"}, timeout=0.3)
    state.inject("/v1/", 502, body={"error": {"status": 502, "message": "custom"}})
    assert api(server, tok).json()["error"]["message"] == "custom"


def test_random_faults(state, server):
    tok = sign_in(server)["access_token"]
    state.faults = FaultConfig(error_5xx_rate=1.0)
    r = api(server, tok)
    assert 500 <= r.status_code <= 599 and r.json()["error"]["status"] == r.status_code
    assert token_call(server, grant_type="refresh_token", refresh_token="x").status_code >= 500
    state.faults = FaultConfig(rate_429_rate=1.0, retry_after_s=9)
    r = api(server, tok)
    assert r.status_code == 429 and r.headers["Retry-After"] == "9"
    assert token_call(server, grant_type="refresh_token", refresh_token="x").status_code == 400  # 429 only on /v1
    state.faults = FaultConfig(expire_token_rate=1.0)
    r = api(server, tok)
    assert r.status_code == 401 and r.json()["error"]["message"] == "The access token expired"
    state.faults = FaultConfig()
    assert api(server, tok).status_code == 401  # that token stays expired
    state.faults = FaultConfig(latency_ms=300)
    started = time.monotonic()
    api(server, sign_in(server)["access_token"])
    assert time.monotonic() - started >= 0.3
    # seeded: half the calls fail, deterministic per seed
    state.faults = FaultConfig(error_5xx_rate=0.5)
    statuses = [api(server, tok, "/me").status_code for _ in range(40)]
    assert 5 < sum(s >= 500 for s in statuses) < 35


def test_app_wide_rate_limit_window(state, server, clock):
    tok = sign_in(server)["access_token"]
    state.rate_limit_app(T0 + timedelta(seconds=90.2))
    r = api(server, tok)
    assert r.status_code == 429 and r.headers["Retry-After"] == "91"
    assert api(server, tok, "/me").status_code == 429
    clock.advance(seconds=60)
    assert api(server, tok).headers["Retry-After"] == "31"
    clock.advance(seconds=31)
    assert api(server, tok).status_code == 200


def test_request_counts(state, server):
    state.reset_counts()
    tok = sign_in(server)["access_token"]
    api(server, tok)
    api(server, tok)
    api(server, tok, "/me")
    assert state.request_counts() == {"token": 1, "me": 1, "recently_played": 2, "authorize": 1}
    state.reset_counts()
    assert state.request_counts() == {"token": 0, "me": 0, "recently_played": 0, "authorize": 0}


# ----------------------------------------------------------------------------- ground truth & simulation
def test_ground_truth_and_exposed_plays(state, server, clock):
    base = T0
    plays = [base + timedelta(minutes=3 * i) for i in range(120)]
    for t in plays:
        state.add_play("alice", t)
    clock.now = plays[59]  # 60 plays visible
    tok = sign_in(server)["access_token"]
    # one request exposes the whole last-50 window, not just the returned item
    assert api(server, tok, limit=1).status_code == 200
    clock.now = plays[119]  # 60 more: 10 of them fell out of the window unseen
    tok = sign_in(server)["access_token"]
    assert api(server, tok, limit=1).status_code == 200
    truth = state.ground_truth("alice")
    assert len(truth) == 120
    exposed = state.exposed_play_ms("alice")
    expected = {ms(t) for t in plays[10:60]} | {ms(t) for t in plays[70:120]}
    assert exposed == expected
    gaps = {p["played_at_ms"] for p in truth} - exposed
    assert gaps == {ms(t) for t in plays[:10]} | {ms(t) for t in plays[60:70]}


def test_simulate_listening(clock):
    def run(seed):
        st = EmulatorState(clock=clock, seed=seed)
        st.add_user("u")
        n = st.simulate_listening("u", T0 - timedelta(hours=48), T0, 15, local_share=0.1, whole_second_share=0.5)
        return n, st.ground_truth("u"), st
    n, truth, st = run(5)
    assert n == len(truth) and 15 * 48 * 0.7 < n < 15 * 48 * 1.3
    times = [p["played_at_ms"] for p in truth]
    assert times == sorted(times) and min(b - a for a, b in zip(times, times[1:], strict=False)) >= 31_000
    assert ms(T0 - timedelta(hours=48)) <= times[0] and times[-1] < ms(T0)
    assert any(p["is_local"] for p in truth) and not all(p["is_local"] for p in truth)
    assert run(5)[1] == truth and run(6)[1] != truth
    assert st.simulate_listening("u", T0, T0, 10) == 0


# ----------------------------------------------------------------------------- control API & CLI
def test_control_api_in_process(state, server):
    ctl = EmulatorControl(server.url)
    ctl.register_client("other", "sec", ["http://127.0.0.1:9/other"])
    ctl.add_user("carol", rotate_refresh_tokens=True)
    n = ctl.listen("carol", T0 - timedelta(hours=3), T0, 10)
    truth = ctl.truth("carol")
    assert n == len(truth) == len(state.ground_truth("carol")) and n > 0
    ctl.faults(rate_429_rate=1.0, retry_after_s=4)
    assert state.faults.rate_429_rate == 1.0 and state.faults.retry_after_s == 4
    ctl.faults(rate_429_rate=0.0)
    ctl.inject("/v1/me", 500, times=1)
    tok = sign_in(server, "carol")["access_token"]
    assert api(server, tok, "/me").status_code == 500
    assert ctl.counts()["me"] == 1
    ctl.revoke("carol")
    assert api(server, tok, "/me").status_code == 401
    ctl.reset_counts()
    assert ctl.counts() == {"token": 0, "me": 0, "recently_played": 0, "authorize": 0}


def test_cli_subprocess_starts_answers_and_stops():
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo / "local"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "spotify_emulator", "--host", "127.0.0.1", "--port", "0",
                             "--seed", "3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline().strip()
        m = re.fullmatch(r"listening on (http://127\.0\.0\.1:(\d+))", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        base = m.group(1)
        ctl = EmulatorControl(base)
        ctl.register_client(CLIENT_ID, CLIENT_SECRET, [REDIRECT])
        ctl.add_user("dave")
        now = ctl.now()
        ctl.listen("dave", now - timedelta(hours=2), now, 20)
        verifier, ch = pkce()
        r = requests.get(f"{base}/authorize", params=authorize_params(ch, login_as="dave"), allow_redirects=False,
                         timeout=10)
        code = parse_qs(urlsplit(r.headers["Location"]).query)["code"][0]
        r = requests.post(f"{base}/api/token", data={"grant_type": "authorization_code", "code": code,
                                                     "redirect_uri": REDIRECT, "code_verifier": verifier},
                          auth=(CLIENT_ID, CLIENT_SECRET), timeout=10)
        tok = r.json()["access_token"]
        page = requests.get(f"{base}/v1{RP}", params={"limit": 50}, headers={"Authorization": f"Bearer {tok}"},
                            timeout=10).json()
        assert len(page["items"]) == min(50, len(ctl.truth("dave"))) > 0
        assert ctl.exposed("dave") == {p["played_at_ms"] for p in ctl.truth("dave")[-50:]}
        ctl.advance_clock(3600)
        assert requests.get(f"{base}/v1/me", headers={"Authorization": f"Bearer {tok}"}, timeout=10).status_code == 401
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            rc = proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.stdout.close()
            proc.stderr.close()
    assert rc == 0


@pytest.mark.parametrize("episode", [False, True])
def test_every_bad_item_kind_damages_tracks_and_episodes_alike(state, clock, episode):
    """The chaos run damages any play, podcast episodes included (no album: their own images)."""
    from spotify_emulator.state import BAD_KINDS

    for k, kind in enumerate(BAD_KINDS):
        item = state.add_play("alice", T0 - timedelta(minutes=k + 1), bad_kind=kind, episode=episode)
        if kind == "track_null":
            assert item["track"] is None
        elif kind == "artists_null" and not episode:
            assert item["track"]["artists"] == [None]
        elif kind == "images_null":
            images = item["track"]["images"] if episode else item["track"]["album"]["images"]
            assert images == [None]
        elif kind == "duration_not_numeric":
            assert item["track"]["duration_ms"] == "unknown"


def test_podcast_episodes_are_never_listed_and_take_no_place_among_the_50(state, clock):
    """Shared notes: "Podcast episodes never appear in recently-played; only the data export has them"."""
    for k in range(50):
        state.add_play("alice", T0 - timedelta(minutes=10 * k + 5))
    episode = state.add_play("alice", T0 - timedelta(minutes=1), episode=True)
    items, *_ = state.recently_played("alice", 50, None, None)
    assert len(items) == 50 and all(i["track"]["type"] == "track" for i in items)
    truth = {p["played_at_ms"]: p for p in state.ground_truth("alice")}
    episode_ms = ms(datetime.fromisoformat(episode["played_at"].replace("Z", "+00:00")))
    assert truth[episode_ms]["episode"] and not truth[episode_ms]["in_feed"]
    state.listening.update(episodes_in_feed=1)  # only for tests of an episode in the feed
    items, *_ = state.recently_played("alice", 50, None, None)
    assert items[0]["track"]["type"] == "episode"
