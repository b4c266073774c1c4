"""The auth function (functions/auth/app.py) called as Lambda calls it, with HttpApi 2.0 events.

AWS: moto in-process with template.yaml's resources (conftest aws_env); Spotify: the emulator.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

import pytest
import requests

from playvault import clock
from playvault.onboarding import pkce_challenge
from playvault.store import oauth_states, plays, seats, users, waitlist
from playvault.store.state import StateModel
from playvault_local import provision as prov
from tests.unit.helpers import open_token, ssm_refusing

EVENT = json.loads((Path(__file__).parents[1] / "events" / "http_api_auth_login.json").read_text())
REDIRECT_URI = "http://127.0.0.1:8765/auth/callback"
SCOPES = "user-read-recently-played user-read-email"


def http_event(
    method: str,
    path: str,
    query: dict[str, str] | list[tuple[str, str]] | None = None,
    *,
    body: str | bytes | None = None,
    headers: dict[str, str] | None = None,
    base64_body: bool = False,
    raw_query: str | None = None,
    cookies: list[str] | None = None,
) -> dict[str, Any]:
    """An HttpApi payload-2.0 event as API Gateway builds it (from the captured fixture)."""
    event = copy.deepcopy(EVENT)
    route_key = f"{method} {path}"
    event["routeKey"] = event["requestContext"]["routeKey"] = route_key
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["requestContext"]["http"]["method"] = method
    pairs = list(query.items()) if isinstance(query, dict) else list(query or [])
    event["rawQueryString"] = raw_query if raw_query is not None else urlencode(pairs)
    if raw_query is not None:
        pairs = parse_qsl(raw_query, keep_blank_values=True)
    if pairs:
        joined: dict[str, str] = {}
        for key, value in pairs:  # API Gateway joins repeated parameters with commas
            joined[key] = f"{joined[key]},{value}" if key in joined else value
        event["queryStringParameters"] = joined
    event["headers"].update({k.lower(): v for k, v in (headers or {}).items()})
    if cookies:
        event["cookies"] = list(cookies)
    if body is not None:
        raw = body.encode() if isinstance(body, str) else body
        event["body"] = base64.b64encode(raw).decode() if base64_body else raw.decode()
        event["isBase64Encoded"] = base64_body
        event["headers"]["content-length"] = str(len(raw))
    return event


class Auth:
    """The loaded handler plus the plumbing of a browser walking the OAuth dance."""

    def __init__(self, handler: Callable[[dict, Any], dict], context: Any, emulator: Any, module: Any = None):
        self.handler = handler
        self.context = context
        self.emulator = emulator
        self.responses: list[dict[str, Any]] = []
        self.jar: dict[str, str] = {}  # the browser's cookies

    def call(self, method: str, path: str, query: Any = None, **kwargs: Any) -> dict[str, Any]:
        kwargs.setdefault("cookies", [f"{k}={v}" for k, v in self.jar.items()])
        response = self.handler(http_event(method, path, query, **kwargs), self.context)
        self.responses.append(response)
        for cookie in response.get("cookies") or []:
            name, _, rest = cookie.partition("=")
            value = rest.split(";", 1)[0]
            if "Max-Age=0" in cookie or not value:
                self.jar.pop(name, None)
            else:
                self.jar[name] = value
        return response

    def login(self, **query: str) -> dict[str, Any]:
        return self.call("GET", "/auth/login", query or None)

    def consent(self, location: str, user_id: str, *, deny: bool = False) -> dict[str, str]:
        """The browser at Spotify's /authorize: consent as user_id (or deny); returns the callback query."""
        extra = {"deny": "1"} if deny else {"login_as": user_id}
        answer = requests.get(f"{location}&{urlencode(extra)}", allow_redirects=False, timeout=10)
        assert answer.status_code == 302, answer.text
        back = urlsplit(answer.headers["Location"])
        assert f"{back.scheme}://{back.netloc}{back.path}" == REDIRECT_URI
        return dict(parse_qsl(back.query))

    def sign_in(self, user_id: str, *, reconnect: bool = False) -> dict[str, Any]:
        """Sign in as user_id from a browser without a session (a signed-in one would be sent to /me
        by /auth/login, unless it reconnects): the session cookie is dropped first, as signing out would."""
        if not reconnect:
            self.jar.pop("__Host-playvault_session", None)
        start = self.login(**({"reconnect": "1"} if reconnect else {}))
        assert start["statusCode"] == 302, start
        return self.call("GET", "/auth/callback", self.consent(start["headers"]["Location"], user_id))


@pytest.fixture
def auth(load_function, lambda_context, emulator) -> Auth:
    return Auth(load_function("AuthFunction"), lambda_context("AuthFunction"), emulator)


def state_items() -> list[StateModel]:
    return list(StateModel.scan())


def all_users() -> list[users.UserModel]:
    return list(users.UserModel.scan())


def assert_signed_in(response: dict[str, Any], welcome: str) -> str:
    """The callback's success: a session cookie and 303 to /me (the code leaves the address bar)."""
    assert response["statusCode"] == 303, response
    assert response["headers"]["Location"] == f"/me?welcome={welcome}"
    session = [c for c in response["cookies"] if c.startswith("__Host-playvault_session=")]
    assert len(session) == 1
    for attribute in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/"):
        assert attribute in session[0], session
    assert "Domain" not in session[0]
    assert "code=" not in json.dumps(response)
    return session[0].split(";", 1)[0].split("=", 1)[1]


def assert_html(response: dict[str, Any], status: int, *needles: str) -> str:
    assert response["statusCode"] == status, response
    assert response["headers"]["Content-Type"].startswith("text/html")
    assert response["headers"]["Cache-Control"] == "no-store"
    body = response["body"]
    assert "Traceback" not in body
    for needle in needles:
        assert needle in body, (needle, body)
    return body


# ------------------------------------------------------------------------------------ login
def test_login_redirects_to_spotify_with_pkce(auth: Auth, emulator) -> None:
    response = auth.login()

    assert response["statusCode"] == 302
    assert response["headers"]["Cache-Control"] == "no-store"
    location = urlsplit(response["headers"]["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == f"{emulator.url}/authorize"
    params = parse_qs(location.query)
    assert all(len(v) == 1 for v in params.values())
    q = {k: v[0] for k, v in params.items()}
    assert set(q) == {"client_id", "response_type", "redirect_uri", "scope", "state",
                      "code_challenge_method", "code_challenge"}
    assert q["client_id"] == prov.DEV_CLIENT_ID
    assert q["response_type"] == "code"
    assert q["redirect_uri"] == REDIRECT_URI
    assert q["scope"] == SCOPES
    assert q["code_challenge_method"] == "S256"
    # The state is stored hashed, with the verifier (server side only) and a 10-minute TTL.
    item = StateModel.get(oauth_states.state_key(q["state"]))
    assert 43 <= len(item.code_verifier) <= 128
    assert q["code_challenge"] == pkce_challenge(item.code_verifier)
    assert timedelta(minutes=9) < item.expires_at - datetime.now(UTC) <= timedelta(minutes=10)
    assert [i.name for i in state_items()] == [oauth_states.state_key(q["state"])]  # never the state itself
    assert item.code_verifier not in json.dumps(response)


def test_each_login_gets_its_own_state(auth: Auth) -> None:
    first = parse_qs(urlsplit(auth.login()["headers"]["Location"]).query)
    second = parse_qs(urlsplit(auth.login()["headers"]["Location"]).query)
    assert first["state"] != second["state"]
    assert first["code_challenge"] != second["code_challenge"]
    assert len(state_items()) == 2


# ------------------------------------------------------------------------------------ callback
def test_new_user_signs_up(auth: Auth, capsys) -> None:
    response = auth.sign_in("alice")

    assert_signed_in(response, "new")
    (user,) = all_users()
    assert user.user_id == "alice"
    assert user.status == users.ACTIVE
    assert user.consecutive_failures == 0
    assert user.token_key and user.refresh_token_enc  # sealed (see the next test)
    assert user.access_token_enc is None and user.access_token_expires_at is None  # never at rest
    assert seats.seats_taken() == 1
    assert [i.name for i in state_items()] == [seats.SEATS]  # the one-time state is gone
    assert '"SignUps"' in capsys.readouterr().out  # EMF metric flushed by log_metrics


def test_tokens_are_sealed_for_the_user(auth: Auth, aws_env) -> None:
    import boto3

    from playvault.crypto import REFRESH_TOKEN, TokenCipher

    auth.sign_in("alice")
    user = users.get("alice")
    cipher = TokenCipher(boto3.client("kms"), aws_env.env["TOKEN_KEY_ID"])
    refresh = open_token(cipher, user, REFRESH_TOKEN)
    # The emulator accepts it: it is the refresh token Spotify issued.
    grant = requests.post(f"{auth.emulator.url}/api/token", data={"grant_type": "refresh_token",
                          "refresh_token": refresh}, auth=(prov.DEV_CLIENT_ID, prov.DEV_CLIENT_SECRET), timeout=5)
    assert grant.status_code == 200 and grant.json()["access_token"]
    assert refresh not in json.dumps(auth.responses)


def test_returning_user_is_reauthorized_without_a_second_seat(auth: Auth) -> None:
    auth.sign_in("alice")
    before = users.get("alice")
    # The worker later found the refresh token revoked and the breaker open.
    before.update(actions=[
        users.UserModel.status.set(users.NEEDS_REAUTH),
        users.UserModel.consecutive_failures.set(4),
        users.UserModel.last_failure_type.set("AUTH_REVOKED"),
        users.UserModel.cooldown_until.set(datetime.now(UTC) + timedelta(hours=6)),
        users.UserModel.cursor_ms.set(1_700_000_000_000),
        users.UserModel.next_poll_at.set(datetime.now(UTC) + timedelta(hours=6)),
    ])

    response = auth.sign_in("alice", reconnect=True)

    assert_signed_in(response, "back")
    after = users.get("alice")
    assert after.status == users.ACTIVE
    assert after.consecutive_failures == 0
    assert after.last_failure_type is None and after.cooldown_until is None
    assert after.refresh_token_enc != before.refresh_token_enc
    assert after.access_token_enc is None
    assert after.next_poll_at is None  # polled at the next dispatch run
    assert after.cursor_ms == 1_700_000_000_000  # the archive continues where it stopped
    assert after.created_at == before.created_at
    assert len(all_users()) == 1
    assert seats.seats_taken() == 1


def test_returning_user_without_reconnect_flag_also_keeps_its_seat(auth: Auth) -> None:
    auth.sign_in("alice")
    auth.jar.clear()  # another browser (signed in, this one would go straight to /me)
    assert_signed_in(auth.sign_in("alice"), "back")
    assert seats.seats_taken() == 1


def test_replayed_state_is_refused_and_writes_nothing(auth: Auth) -> None:
    start = auth.login()
    query = auth.consent(start["headers"]["Location"], "alice")
    assert auth.call("GET", "/auth/callback", query)["statusCode"] == 303
    snapshot = users.get("alice").attribute_values

    replay = auth.call("GET", "/auth/callback", query)

    # The back button to the consent page and on again: this browser is signed in, so its archive.
    assert replay["statusCode"] == 303 and replay["headers"]["Location"] == "/me", replay
    assert users.get("alice").attribute_values == snapshot
    assert seats.seats_taken() == 1


def test_unknown_state_is_refused_and_writes_nothing(auth: Auth, emulator) -> None:
    response = auth.call("GET", "/auth/callback", {"state": "x" * 43, "code": "whatever"})
    assert_html(response, 200, "unknown, expired or already used", 'href="/auth/login"')
    assert all_users() == [] and state_items() == []
    assert emulator.state.request_counts().get("token", 0) == 0


def test_expired_state_is_refused(auth: Auth) -> None:
    start = auth.login()
    query = auth.consent(start["headers"]["Location"], "alice")
    later = datetime.now(UTC) + timedelta(minutes=11)
    clock.set_clock(lambda: later)  # TTL deletion is lazy: the expiry is checked on use

    assert_html(auth.call("GET", "/auth/callback", query), 200, 'href="/auth/login"')
    assert all_users() == []


def test_access_denied_consumes_the_state(auth: Auth) -> None:
    start = auth.login()
    query = auth.consent(start["headers"]["Location"], "alice", deny=True)
    assert query["error"] == "access_denied"

    assert_html(auth.call("GET", "/auth/callback", query), 200, "chose not to connect")
    assert state_items() == [] and all_users() == []
    assert "already used" in auth.call("GET", "/auth/callback", query)["body"]  # consumed


def test_token_endpoint_failing_answers_502_and_writes_nothing(auth: Auth, emulator) -> None:
    emulator.state.inject("/api/token", status=503, times=10)
    start = auth.login()
    query = auth.consent(start["headers"]["Location"], "alice")

    response = auth.call("GET", "/auth/callback", query)

    body = assert_html(response, 502, "Spotify could not be reached")
    assert query["code"] not in body
    assert all_users() == [] and seats.seats_taken() == 0
    assert state_items() == []  # the state was used up; the visitor starts again


def test_unreadable_app_credentials_at_login_answer_503_and_store_nothing(auth: Auth, aws_env, caplog) -> None:
    asked = ssm_refusing("AccessDeniedException", "not authorized to perform ssm:GetParameter")

    response = auth.login()

    body = assert_html(response, 503, "a problem on our side", "Nothing was stored")
    assert response["headers"]["Retry-After"] == "60"
    assert asked and state_items() == [] and all_users() == []
    for name in ("SPOTIFY_CLIENT_ID_PARAM", "SPOTIFY_CLIENT_SECRET_PARAM"):
        assert aws_env.env[name] not in body  # the visitor is told nothing about the app's settings
    (logged,) = [r for r in caplog.records if "credentials are unreadable" in r.getMessage()]
    assert "AccessDeniedException" in logged.reason and prov.DEV_CLIENT_SECRET not in logged.reason + body


def test_unreadable_app_credentials_at_the_callback_answer_503_and_store_nothing(auth: Auth, emulator) -> None:
    start = auth.login()
    query = auth.consent(start["headers"]["Location"], "alice")
    ssm_refusing("ThrottlingException", "Rate exceeded")  # the cached credentials expired meanwhile

    response = auth.call("GET", "/auth/callback", query)

    body = assert_html(response, 503, "a problem on our side")
    assert query["code"] not in body and prov.DEV_CLIENT_SECRET not in body
    assert all_users() == [] and seats.seats_taken() == 0
    assert emulator.state.request_counts().get("token", 0) == 0, "nothing was sent to Spotify"


def test_rejected_code_answers_400(auth: Auth, emulator) -> None:
    start = auth.login()
    query = auth.consent(start["headers"]["Location"], "alice")
    emulator.state.inject("/api/token", status=400, body={"error": "invalid_grant"})
    assert_html(auth.call("GET", "/auth/callback", query), 400, "refused")
    assert all_users() == []


# ------------------------------------------------------------------------------------ the cap
@pytest.mark.parametrize("stack_overrides", [{"MaxUsers": "1"}])
def test_cap_reached_offers_the_waitlist(auth: Auth) -> None:
    auth.sign_in("alice")

    auth.jar.clear()  # a newcomer's browser
    full = auth.login()
    assert_html(full, 200, 'action="/auth/waitlist"', 'name="email"', "reconnect=1")
    assert len(state_items()) == 1  # no state created: only the seat counter

    # A newcomer through the reconnect link still meets the seat transaction.
    late = auth.sign_in("bob", reconnect=True)
    assert_html(late, 200, 'action="/auth/waitlist"')
    assert [u.user_id for u in all_users()] == ["alice"]
    assert seats.seats_taken() == 1

    # A member re-authorizing at the cap gets in.
    assert_signed_in(auth.sign_in("alice", reconnect=True), "back")


@pytest.mark.parametrize("stack_overrides", [{"MaxUsers": "1"}])
def test_seat_taken_between_login_and_callback(auth: Auth) -> None:
    start = auth.login()  # a seat was free here
    bobs_browser = dict(auth.jar)
    auth.sign_in("alice")  # ... and alice took it meanwhile (in her browser)
    auth.jar = bobs_browser
    query = auth.consent(start["headers"]["Location"], "bob")
    assert_html(auth.call("GET", "/auth/callback", query), 200, "PlayVault is full")
    assert users.get("bob") is None


# ------------------------------------------------------------------------------------ waitlist
FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize("stack_overrides", [{"MaxUsers": "1"}])
def test_waitlist_form_stores_the_address_once(auth: Auth, capsys, detailed_metrics) -> None:
    auth.sign_in("zed")  # every seat taken: the only time the waitlist takes addresses
    capsys.readouterr()
    first = auth.call("POST", "/auth/waitlist", body="email=Ada%40Example.org", headers=FORM)
    again = auth.call("POST", "/auth/waitlist", body=urlencode({"email": "  ada@example.ORG "}), headers=FORM)

    assert_html(first, 200, "on the list")
    assert again["body"] == first["body"]
    items = [i for i in state_items() if i.name.startswith(waitlist.PREFIX)]
    assert [i.email for i in items] == ["ada@example.org"]
    assert "ada@example.org" not in items[0].name
    out = capsys.readouterr().out
    assert out.count('"Waitlisted":[1.0]') == 1  # counted once, for the one new entry
    assert "ada@example" not in out.lower()  # the address never reaches the logs


@pytest.mark.parametrize("stack_overrides", [{"MaxUsers": "1"}])
def test_waitlist_accepts_json_and_base64_bodies(auth: Auth) -> None:
    auth.sign_in("zed")
    answer = auth.call("POST", "/auth/waitlist", body=json.dumps({"email": "grace@example.com"}),
                       headers={"content-type": "application/json"})
    assert answer["statusCode"] == 200 and json.loads(answer["body"]) == {"status": "listed"}
    encoded = auth.call("POST", "/auth/waitlist", body="email=linus%40example.net", headers=FORM, base64_body=True)
    assert_html(encoded, 200, "on the list")
    now = clock.now()
    assert waitlist.is_listed("grace@example.com", now) and waitlist.is_listed("linus@example.net", now)


@pytest.mark.parametrize(
    "body",
    [
        "email=not-an-address",
        "email=",
        "email=a%40b",
        "email=%3Cscript%3E%40example.com",
        "email=" + "a" * 240 + "%40example.com",  # 252 + 4 > 254
        "name=x",
        "email=a%40example.com&email=b%40example.com",
    ],
)
def test_waitlist_rejects_bad_addresses(auth: Auth, body: str) -> None:
    response = auth.call("POST", "/auth/waitlist", body=body, headers=FORM)
    assert_html(response, 400)
    assert state_items() == []


def test_waitlist_rejects_bad_bodies(auth: Auth) -> None:
    huge = auth.call("POST", "/auth/waitlist", body="email=" + "a" * 9000, headers=FORM)
    assert huge["statusCode"] == 413
    xml = auth.call("POST", "/auth/waitlist", body="<email/>", headers={"content-type": "text/xml"})
    assert xml["statusCode"] == 415
    broken = auth.call("POST", "/auth/waitlist", body="{nope", headers={"content-type": "application/json"})
    assert broken["statusCode"] == 400 and "error" in json.loads(broken["body"])
    not_object = auth.call("POST", "/auth/waitlist", body='["a@b.co"]', headers={"content-type": "application/json"})
    assert not_object["statusCode"] == 400
    assert state_items() == []


# ------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("method", "path", "query", "status"),
    [
        ("GET", "/auth/callback", {}, 400),
        ("GET", "/auth/callback", {"code": "abc"}, 400),
        ("GET", "/auth/callback", {"state": "s" * 43}, 400),
        ("GET", "/auth/callback", {"state": "short", "code": "abc"}, 400),
        ("GET", "/auth/callback", {"state": "s" * 43, "code": "c" * 3000}, 400),
        ("GET", "/auth/callback", {"state": "s" * 43, "error": "<b>"}, 400),
        ("GET", "/auth/callback", [("state", "s" * 43), ("state", "t" * 43), ("code", "c")], 400),
        ("GET", "/auth/login", {"pad": "x" * 5000}, 400),
        ("POST", "/auth/login", {}, 405),
        ("DELETE", "/auth/callback", {}, 405),
        ("GET", "/auth/waitlist", {}, 405),
        ("GET", "/auth/nope", {}, 404),
        ("GET", "/", {}, 404),
    ],
)
def test_bad_requests_get_a_short_4xx_and_change_nothing(auth: Auth, emulator, method, path, query, status) -> None:
    response = auth.call(method, path, query)
    assert_html(response, status)
    assert len(response["body"]) < 3000
    if status == 405:
        assert response["headers"]["Allow"] in ("GET", "POST")
    assert state_items() == [] and all_users() == []
    assert emulator.state.request_counts().get("token", 0) == 0


def test_unexpected_failure_is_a_plain_500(auth: Auth, monkeypatch) -> None:
    def broken(*_: Any, **__: Any) -> bool:
        raise RuntimeError("DynamoDB said something with internal detail")

    monkeypatch.setattr(seats, "has_free_seat", broken)
    response = auth.login()
    body = assert_html(response, 500, "Something went wrong")
    assert "internal detail" not in body and "RuntimeError" not in body


# ------------------------------------------------------------------------------------ secrets
def test_no_secret_reaches_a_log_line_or_a_response(
    load_function, lambda_context, emulator, capsys, caplog, monkeypatch
) -> None:
    monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "DEBUG")
    caplog.set_level(logging.DEBUG, logger="playvault")
    caplog.set_level(logging.INFO)
    auth = Auth(load_function("AuthFunction"), lambda_context("AuthFunction"), emulator)
    emulator.state.add_user("alice")

    start = auth.login()
    state = parse_qs(urlsplit(start["headers"]["Location"]).query)["state"][0]
    verifier = StateModel.get(oauth_states.state_key(state)).code_verifier
    query = auth.consent(start["headers"]["Location"], "alice")
    assert auth.call("GET", "/auth/callback", query)["statusCode"] == 303
    auth.sign_in("alice", reconnect=True)  # a re-authorization as well (signed in: a reconnect)
    emulator.state.inject("/api/token", status=500, times=10)
    auth.sign_in("alice", reconnect=True)  # and a failed exchange
    emulator.state.clear_injections()

    # ...then an archive run of that user through the worker, with a token refresh on the way.
    from tests.unit.test_worker import sqs_event, sqs_record, work_body

    emulator.state.simulate_listening("alice", datetime.now(UTC) - timedelta(hours=2), datetime.now(UTC), 8)
    worker = load_function("WorkerFunction")
    answer = worker(sqs_event(sqs_record(work_body(["alice"]))), lambda_context("WorkerFunction"))
    assert answer == {"batchItemFailures": []}
    assert list(plays.all_plays("alice")), "the archive run stored nothing"

    secrets_seen = {"code": query["code"], "verifier": verifier, "client secret": prov.DEV_CLIENT_SECRET}
    for i, token in enumerate(list(emulator.state._access) + list(emulator.state._refresh)):
        secrets_seen[f"token {i}"] = token
    assert len(secrets_seen) >= 7  # code, verifier, secret, and the tokens of two grants

    logs = capsys.readouterr()
    text = logs.out + logs.err + "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    assert "user signed up" in text and "token endpoint failed" in text  # the logs were captured
    assert "batch archived" in text
    responses = json.dumps(auth.responses)
    for what, value in secrets_seen.items():
        assert value not in text, f"{what} appears in a log line"
        assert value not in responses, f"{what} appears in a response"


# ------------------------------------------------------------------------------------ allow-list, waitlist rules
def test_account_not_on_the_allow_list_gets_the_allow_list_page_not_a_502(auth: Auth, emulator) -> None:
    emulator.state.set_allow_list(prov.DEV_CLIENT_ID, ["someone-else"])  # development mode
    response = auth.sign_in("mallory")
    body = assert_html(response, 403, "not on this PlayVault&#x27;s allow-list", "User Management",
                       "developer.spotify.com/dashboard", "5 users")
    assert "could not be reached" not in body
    assert all_users() == [] and seats.seats_taken() == 0  # nothing stored
    emulator.state.set_allow_list(prov.DEV_CLIENT_ID, ["mallory"])
    assert_signed_in(auth.sign_in("mallory"), "new")  # once added by the operator


def test_waitlist_takes_no_address_while_a_seat_is_free(auth: Auth) -> None:
    response = auth.call("POST", "/auth/waitlist", body="email=ada%40example.org", headers=FORM)
    assert_html(response, 409, "A seat is free", 'href="/auth/login"')
    assert state_items() == []
    answer = auth.call("POST", "/auth/waitlist", body=json.dumps({"email": "ada@example.org"}),
                       headers={"content-type": "application/json"})
    assert answer["statusCode"] == 409 and "seat is free" in json.loads(answer["body"])["error"]


@pytest.mark.parametrize("stack_overrides", [{"MaxUsers": "1"}])
def test_waitlist_entries_expire_after_90_days_and_leave_when_the_person_signs_up(auth: Auth) -> None:
    auth.sign_in("zed")
    now = clock.now()
    auth.call("POST", "/auth/waitlist", body="email=alice%40example.com", headers=FORM)
    (entry,) = [i for i in state_items() if i.name.startswith(waitlist.PREFIX)]
    assert timedelta(days=89, hours=23) < entry.expires_at - now <= timedelta(days=90)
    assert waitlist.is_listed("alice@example.com", now)
    assert not waitlist.is_listed("alice@example.com", now + timedelta(days=91))  # TTL deletion lags
    seats.remove_user("zed")  # a seat opens; alice (alice@example.com at Spotify) signs up
    assert_signed_in(auth.sign_in("alice"), "new")
    assert not waitlist.is_listed("alice@example.com", now)
