"""The account plane as a browser uses it: sessions, /me, the plays API, exports, delete-my-data,
CSRF, 404/405, and isolation between users. Every function is called as Lambda calls it (HttpApi
2.0 events, SQS events for the jobs function) on moto with template.yaml's resources.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
import requests

from playvault import clock, imports
from playvault.history import Catalog
from playvault.imports.job import job_for_key
from playvault.store import deletions, exports, gaps, plays, seats, sessions, users
from playvault.web import http as web_http
from playvault_local import template as tpl
from playvault_local.events import sqs_event
from playvault_local.provision import DEV_CLIENT_SECRET
from tests.unit.helpers import make_archiver
from tests.unit.test_auth import http_event

SESSION = "__Host-playvault_session"
HOST = "playvault.example"


class Browser:
    """One browser: a cookie jar, and the functions behind the API's routes."""

    def __init__(self, site: Site):
        self.site = site
        self.jar: dict[str, str] = {}
        self.expires: dict[str, datetime] = {}  # as a browser keeps Max-Age, on playvault's clock
        self.set_cookies: list[str] = []  # every Set-Cookie received, in order

    def call(self, method: str, path: str, query: Any = None, *, form: dict[str, str] | None = None,
             headers: dict[str, str] | None = None, cookies: list[str] | None = None) -> dict[str, Any]:
        body = "&".join(f"{k}={requests.utils.quote(v)}" for k, v in form.items()) if form is not None else None
        sent_headers = {"host": HOST, **({"content-type": "application/x-www-form-urlencoded"} if form else {}),
                        **(headers or {})}
        if cookies is None:
            for name in [n for n, at in self.expires.items() if at <= clock.now()]:
                self.jar.pop(name, None)  # the browser dropped it
                self.expires.pop(name)
            cookies = [f"{k}={v}" for k, v in self.jar.items()]
        event = http_event(method, path, query, body=body, headers=sent_headers, cookies=cookies)
        response = self.site.invoke(method, path, event)
        for cookie in response.get("cookies") or []:
            self.set_cookies.append(cookie)
            name, _, rest = cookie.partition("=")
            value = rest.split(";", 1)[0]
            max_age = re.search(r"Max-Age=(-?\d+)", cookie)
            if value and "Max-Age=0" not in cookie:
                self.jar[name] = value
                if max_age:
                    self.expires[name] = clock.now() + timedelta(seconds=int(max_age.group(1)))
            else:
                self.jar.pop(name, None)
                self.expires.pop(name, None)
        return response

    def get(self, path: str, query: Any = None, **kwargs: Any) -> dict[str, Any]:
        return self.call("GET", path, query, **kwargs)

    def post(self, path: str, form: dict[str, str], **kwargs: Any) -> dict[str, Any]:
        return self.call("POST", path, form=form, headers={"origin": f"https://{HOST}", **kwargs.pop("headers", {})},
                         **kwargs)

    def sign_in(self, user_id: str) -> dict[str, Any]:
        start = self.get("/auth/login")
        assert start["statusCode"] == 302, start
        answer = requests.get(f"{start['headers']['Location']}&login_as={user_id}", allow_redirects=False, timeout=10)
        back = urlsplit(answer.headers["Location"])
        return self.get(back.path, dict(p.split("=", 1) for p in back.query.split("&")))

    def csrf(self) -> str:
        page = self.get("/me")
        return re.search(r'name="csrf" value="([0-9a-f]+)"', page["body"]).group(1)


class Site:
    def __init__(self, load_function: Callable, lambda_context: Callable, aws_env: Any):
        self.env = aws_env
        self.handlers = {name: (load_function(name), lambda_context(name))
                         for name in ("AuthFunction", "AccountFunction", "JobsFunction")}
        self.sqs = boto3.client("sqs")
        self.s3 = boto3.client("s3")
        self.bucket = aws_env.name("UserFilesBucket")
        self.jobs_queue = aws_env.queue_url("JobsQueue")

    def invoke(self, method: str, path: str, event: dict[str, Any]) -> dict[str, Any]:
        exact = path in web_http.API_ROUTES and method in web_http.API_ROUTES[path]
        function = "AuthFunction" if exact and path.startswith("/auth/") else "AccountFunction"
        handler, context = self.handlers[function]
        return handler(event, context)

    def run_jobs(self, max_rounds: int = 50) -> int:
        """The jobs queue's event source: deliver until the queue is empty; returns messages handled."""
        handler, context = self.handlers["JobsFunction"]
        handled = 0
        for _ in range(max_rounds):
            answer = self.sqs.receive_message(QueueUrl=self.jobs_queue, MaxNumberOfMessages=1,
                                              AttributeNames=["All"])
            messages = answer.get("Messages") or []
            if not messages:
                return handled
            result = handler(sqs_event(messages, self.env.physical["JobsQueue"]["Arn"]), context)
            assert result == {"batchItemFailures": []}, result
            self.sqs.delete_message(QueueUrl=self.jobs_queue, ReceiptHandle=messages[0]["ReceiptHandle"])
            handled += 1
        raise AssertionError("the jobs queue did not drain")

    def file(self, url: str) -> bytes:
        parts = urlsplit(url)
        key = parts.path.split(f"/{self.bucket}/", 1)[-1] if f"/{self.bucket}/" in parts.path else parts.path[1:]
        return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()


@pytest.fixture
def stack_overrides() -> dict[str, str]:
    return {"DeletionGraceSeconds": "0"}


@pytest.fixture
def bound(aws_env: Any) -> Any:
    """Every model bound (the account tables too), as the jobs function binds them."""
    from playvault import store
    from playvault.config import AccountSettings

    store.bind(AccountSettings.from_env())
    return aws_env


@pytest.fixture
def site(load_function, lambda_context, aws_env) -> Site:
    return Site(load_function, lambda_context, aws_env)


def listen_and_archive(aws_env: Any, emulator: Any, user_id: str, hours: float = 3, per_hour: float = 12) -> int:
    now = datetime.now(UTC)
    emulator.state.add_user(user_id)
    emulator.state.simulate_listening(user_id, now - timedelta(hours=hours), now - timedelta(minutes=1), per_hour)
    result = make_archiver(aws_env, emulator).archive_user(user_id, _budget())
    assert result.status == "success", result
    return plays.count(user_id)


def _budget() -> Any:
    from playvault.spotify import Budget

    return Budget.seconds(30)


def signed_in(site: Site, aws_env: Any, emulator: Any, user_id: str) -> Browser:
    emulator.state.add_user(user_id)
    browser = Browser(site)
    assert browser.sign_in(user_id)["statusCode"] == 303
    return browser


def seated_user(aws_env: Any, emulator: Any, user_id: str) -> None:
    """A signed-up user holding a seat, as the callback leaves it (without a browser)."""
    from tests.unit.helpers import make_cipher, sealed_fields, sign_in

    emulator.state.add_user(user_id)
    refresh = sign_in(emulator, user_id)
    now = datetime.now(UTC)
    user = users.UserModel(user_id, status=users.ACTIVE, created_at=now, authorized_at=now,
                           **sealed_fields(make_cipher(aws_env), user_id, refresh))
    assert seats.create_user_with_seat(user, 5) is seats.SeatOutcome.CREATED


def add_gap(user_id: str) -> None:
    gaps.GapModel(user_id, "2026-01-02T03:04:05.000Z", to_at="2026-01-02T05:00:00.000Z", from_ms=1, to_ms=2,
                  detected_at=datetime.now(UTC)).save()


# ------------------------------------------------------------------ sessions and sign-in
def test_callback_ends_in_a_session_and_a_reload_is_harmless(site, emulator):
    emulator.state.add_user("alice")
    browser = Browser(site)
    start = browser.get("/auth/login")
    login_cookie = [c for c in start["cookies"] if c.startswith("__Host-playvault_login=")]
    assert len(login_cookie) == 1 and "HttpOnly" in login_cookie[0] and "Secure" in login_cookie[0]
    answer = requests.get(f"{start['headers']['Location']}&login_as=alice", allow_redirects=False, timeout=10)
    back = urlsplit(answer.headers["Location"])
    query = dict(p.split("=", 1) for p in back.query.split("&"))

    done = browser.get("/auth/callback", query)
    assert done["statusCode"] == 303 and done["headers"]["Location"].startswith("/me")
    stored = list(sessions.SessionModel.scan())
    assert [s.user_id for s in stored] == ["alice"]
    assert browser.jar[SESSION] not in json.dumps([s.attribute_values for s in stored], default=str)  # only its hash

    reload = browser.get("/auth/callback", query)  # the used state: back to the archive, no new session
    assert reload["statusCode"] == 303 and reload["headers"]["Location"] == "/me"
    assert not any(c.startswith(SESSION + "=") and "Max-Age=0" not in c for c in reload.get("cookies") or [])
    assert len(list(sessions.SessionModel.scan())) == 1
    assert browser.get("/me")["statusCode"] == 200


def test_a_sign_in_link_cannot_be_completed_in_another_browser(site, emulator):
    emulator.state.add_user("mallory-victim")
    attacker = Browser(site)
    start = attacker.get("/auth/login")
    answer = requests.get(f"{start['headers']['Location']}&login_as=mallory-victim", allow_redirects=False,
                          timeout=10)
    back = urlsplit(answer.headers["Location"])
    query = dict(p.split("=", 1) for p in back.query.split("&"))

    victim = Browser(site)  # no login cookie, or another one
    refused = victim.get("/auth/callback", query)
    assert refused["statusCode"] == 400 and "another browser" in refused["body"]
    assert users.get("mallory-victim") is None and list(sessions.SessionModel.scan()) == []


def test_root_redirects_to_me_or_shows_the_landing_page(site, aws_env, emulator):
    anonymous = Browser(site).get("/")
    assert anonymous["statusCode"] == 200 and 'href="/auth/login"' in anonymous["body"]
    browser = signed_in(site, aws_env, emulator, "alice")
    assert browser.get("/")["headers"]["Location"] == "/me"
    assert Browser(site).get("/me")["headers"]["Location"] == "/auth/login"


def test_sign_out_ends_the_session_and_needs_csrf(site, aws_env, emulator):
    browser = signed_in(site, aws_env, emulator, "alice")
    token = browser.csrf()
    assert browser.post("/auth/logout", {"csrf": "0" * 64})["statusCode"] == 403
    assert browser.post("/auth/logout", {"csrf": token}, headers={"origin": "https://evil.example"}
                        )["statusCode"] == 403
    assert len(list(sessions.SessionModel.scan())) == 1

    out = browser.post("/auth/logout", {"csrf": token})
    assert out["statusCode"] == 303
    assert list(sessions.SessionModel.scan()) == []
    assert browser.get("/me")["headers"]["Location"] == "/auth/login"


def test_sessions_expire_after_the_idle_time(site, aws_env, emulator):
    browser = signed_in(site, aws_env, emulator, "alice")
    start = datetime.now(UTC)
    clock.set_clock(lambda: start + timedelta(days=29))
    assert browser.get("/me")["statusCode"] == 200  # used: the idle expiry moves on
    clock.set_clock(lambda: start + timedelta(days=29 + 29))
    assert browser.get("/me")["statusCode"] == 200
    clock.set_clock(lambda: start + timedelta(days=29 + 29 + 31))
    assert browser.get("/me")["headers"]["Location"] == "/auth/login"


# ------------------------------------------------------------------ /me
def test_me_shows_status_counts_chart_top_lists_and_gaps(site, aws_env, emulator):
    browser = signed_in(site, aws_env, emulator, "alice")
    total = listen_and_archive(aws_env, emulator, "alice")
    add_gap("alice")
    first, last = plays.first_and_last("alice")

    page = browser.get("/me", {"period": "all"})
    body = page["body"]
    assert page["statusCode"] == 200
    assert 'id="status">Archiving<' in body
    assert f'id="plays-total">{total}<' in body and total > 10
    assert first.played_at[:16].replace("T", " ") in body and last.played_at[:16].replace("T", " ") in body
    assert f'id="total-plays" data-value="{total}"' in body
    days = re.findall(r'data-start="([0-9-]{10})" data-value="(\d+)"', body.split('id="series-plays"')[1])
    assert sum(int(n) for _, n in days) == total
    track_counts: dict[str, int] = {}
    for play in plays.all_plays("alice"):
        if play.track_id:
            track_counts[play.track_id] = track_counts.get(play.track_id, 0) + 1
    best = max(track_counts.values())
    top_tracks = body.split('id="top-tracks"', 1)[1].split("</table>", 1)[0]
    assert top_tracks.count('<tr class="item"') == min(10, len(track_counts))
    assert f'data-plays="{best}"><td>1</td>' in top_tracks
    assert 'id="top-artists"' in body
    assert "2026-01-02 03:04 UTC" in body  # the gap
    assert 'href="/me/delete"' in body and 'value="csv"' in body and 'value="jsonl"' in body
    assert "<script" not in body


def test_me_offers_reconnect_when_spotify_access_is_lost(site, aws_env, emulator):
    browser = signed_in(site, aws_env, emulator, "alice")
    users.get("alice").update(actions=[users.UserModel.status.set(users.NEEDS_REAUTH)])
    body = browser.get("/me")["body"]
    assert "Needs reconnect" in body and 'action="/auth/login"' in body and 'name="reconnect"' in body


def test_a_bad_period_is_a_400_naming_it(site, aws_env, emulator):
    browser = signed_in(site, aws_env, emulator, "alice")
    answer = browser.get("/me", {"period": "forever"})
    assert answer["statusCode"] == 400 and "period" in answer["body"]


@pytest.mark.parametrize(("query", "named"), [
    ({"welcome": "<b>soon</b>"}, ["welcome", "&#x27;&lt;b&gt;soon&lt;/b&gt;&#x27;"]),
    ({"period": "2024-13"}, ["period", "&#x27;2024-13&#x27;"]),
    ({"from": "2024-01-01"}, ["from", " to "]),  # what is missing
])
def test_a_bad_parameter_names_its_value_never_a_pattern_and_a_signed_in_user_is_sent_back_not_to_sign_in(
        site, aws_env, emulator, query, named):
    browser = signed_in(site, aws_env, emulator, "alice")
    answer = browser.get("/me", query)
    body = answer["body"].split("<main", 1)[1]
    assert answer["statusCode"] == 400
    assert all(part in body for part in named), body
    assert "<b>" not in body
    assert "^" not in body and "pattern" not in body  # what was wrong, not how the check is written
    assert "/auth/login" not in body and 'href="/me"' in body
    signed_out = Browser(site).get("/me", {"welcome": "x"})
    assert signed_out["statusCode"] == 400 and "/auth/login" in signed_out["body"]


def test_an_active_session_outlives_its_first_cookie(site, aws_env, emulator, capsys, caplog):
    """The server moves the idle expiry (at most hourly) when a session is used; the cookie's Max-Age
    must move with it, or the browser drops an active session 30 days after sign-in."""
    from tests.unit.test_worker import install_clock

    fake = install_clock(emulator.state, datetime.now(UTC).replace(microsecond=0))
    signed_in_at = fake.now
    browser = signed_in(site, aws_env, emulator, "alice")
    session_id = browser.jar[SESSION]
    idle = timedelta(days=int(aws_env.env["SESSION_IDLE_DAYS"]))
    assert browser.expires[SESSION] == signed_in_at + idle

    fake.set(signed_in_at + timedelta(days=29))
    browser.set_cookies.clear()
    assert browser.get("/me")["statusCode"] == 200
    (renewed,) = [c for c in browser.set_cookies if c.startswith(f"{SESSION}=")]
    attributes = {part.strip().split("=", 1)[0].lower() for part in renewed.split(";")[1:]}
    assert renewed.startswith(f"{SESSION}={session_id};"), "the same session, not a new one"
    assert {"secure", "httponly", "path", "samesite", "max-age"} <= attributes and "domain" not in attributes
    assert "Path=/" in renewed and "SameSite=Lax" in renewed
    assert browser.expires[SESSION] == fake.now + idle

    # Within the hour: no write, so no cookie either (a page view is not a write).
    fake.set(signed_in_at + timedelta(days=29, minutes=30))
    browser.set_cookies.clear()
    assert browser.get("/me")["statusCode"] == 200 and browser.set_cookies == []

    fake.set(signed_in_at + timedelta(days=45))  # past the first cookie's Max-Age, within the moved expiry
    assert SESSION in [name for name, at in browser.expires.items() if at > fake.now]
    answer = browser.get("/me/plays")
    assert answer["statusCode"] == 200, answer
    assert browser.get("/me")["statusCode"] == 200

    # The session id never shows outside its cookie: not in a log line, not in a Location.
    logged = capsys.readouterr().out + capsys.readouterr().err + caplog.text
    assert session_id not in logged
    assert all(session_id not in c for c in browser.set_cookies if not c.startswith(f"{SESSION}="))


def test_signing_out_after_a_renewal_ends_the_cookie(site, aws_env, emulator):
    """Deleting one's data ends the session in the same answer that would renew it: the end wins."""
    from tests.unit.test_worker import install_clock

    fake = install_clock(emulator.state, datetime.now(UTC).replace(microsecond=0))
    browser = signed_in(site, aws_env, emulator, "alice")
    csrf = browser.csrf()
    fake.advance(hours=2)  # the next use moves the expiry
    browser.set_cookies.clear()
    answer = browser.post("/me/delete", {"csrf": csrf})
    assert answer["statusCode"] == 303, answer
    mine = [c for c in browser.set_cookies if c.startswith(f"{SESSION}=")]
    assert mine and "Max-Age=0" in mine[-1] and SESSION not in browser.jar


# ------------------------------------------------------------------ the plays API
def test_plays_api_pages_through_every_play_once(site, aws_env, emulator):
    browser = signed_in(site, aws_env, emulator, "alice")
    total = listen_and_archive(aws_env, emulator, "alice")
    seen, cursor = [], None
    while True:
        answer = browser.get("/me/plays", {"limit": "7", **({"cursor": cursor} if cursor else {})})
        assert answer["statusCode"] == 200, answer
        page = json.loads(answer["body"])
        seen += [p["played_at"] for p in page["plays"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [p.played_at for p in plays.all_plays("alice")] and len(seen) == total
    one = json.loads(browser.get("/me/plays", {"limit": "1"})["body"])["plays"][0]
    assert set(one) == {"played_at", "item_type", "track", "album", "artists", "duration_ms", "source"}
    assert one["track"]["name"] and one["artists"][0]["id"] and one["source"] == "api"


def test_plays_api_time_range(site, aws_env, emulator):
    browser = signed_in(site, aws_env, emulator, "alice")
    listen_and_archive(aws_env, emulator, "alice")
    every = [p.played_at for p in plays.all_plays("alice")]
    start, end = every[2], every[-3]
    answer = json.loads(browser.get("/me/plays", {"from": start, "to": end, "limit": "500"})["body"])
    assert [p["played_at"] for p in answer["plays"]] == every[2:-2]


def test_a_cursor_past_to_is_an_empty_last_page_not_a_reversed_range(site, aws_env, emulator):
    """A client paging through [from, to] may hold a cursor past `to` (the range shrank, or the last
    page ended exactly at it): real DynamoDB refuses BETWEEN a AND b with a > b (conftest makes the
    emulator refuse it too), so the answer must be an empty page with no next cursor, not a 500."""
    browser = signed_in(site, aws_env, emulator, "alice")
    listen_and_archive(aws_env, emulator, "alice")
    every = [p.played_at for p in plays.all_plays("alice")]
    first = json.loads(browser.get("/me/plays", {"limit": "3"})["body"])
    cursor = first["next_cursor"]
    assert cursor and [p["played_at"] for p in first["plays"]] == every[:3]
    for to in (every[1], every[0]):  # a `to` before the cursor's play
        answer = browser.get("/me/plays", {"cursor": cursor, "to": to, "limit": "3"})
        assert answer["statusCode"] == 200, answer
        assert json.loads(answer["body"]) == {"plays": [], "next_cursor": None}
    # The cursor exactly at `to`: the next page starts strictly after it, so it is empty too.
    answer = browser.get("/me/plays", {"cursor": cursor, "to": every[2], "limit": "3"})
    assert json.loads(answer["body"]) == {"plays": [], "next_cursor": None}


def test_the_emulator_refuses_a_reversed_between_as_dynamodb_does(aws_env):
    """What makes the test above meaningful on moto (local/playvault_local/strict_dynamodb.py)."""
    from pynamodb.exceptions import QueryError

    with pytest.raises(QueryError) as refused:
        next(plays.PlayModel.query("alice", plays.PlayModel.played_at.between("2026-01-02", "2026-01-01")))
    error = refused.value.cause.response["Error"]
    assert error["Code"] == "ValidationException"
    assert error["Message"] == (
        "Invalid KeyConditionExpression: The BETWEEN operator requires upper bound to be greater than or equal "
        "to lower bound; lower bound operand: AttributeValue: {S:2026-01-02}, upper bound operand: "
        "AttributeValue: {S:2026-01-01}")
    assert list(plays.PlayModel.query("alice", plays.PlayModel.played_at.between("2026-01-01", "2026-01-01"))) == []


@pytest.mark.parametrize(("query", "named"), [
    ({"limit": "0"}, "limit"), ({"limit": "501"}, "limit"), ({"limit": "ten"}, "limit"),
    ({"from": "yesterday"}, "from"), ({"to": "2026-13-45"}, "to"), ({"from": "2026-01-01T00:00:00"}, "from"),
    ({"cursor": "not-a-cursor"}, "cursor"), ({"cursor": "x" * 100}, "cursor"),
    ({"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "from"),
])
def test_plays_api_rejects_malformed_parameters_naming_them(site, aws_env, emulator, query, named):
    browser = signed_in(site, aws_env, emulator, "alice")
    answer = browser.get("/me/plays", query, headers={"accept": "application/json"})
    assert answer["statusCode"] == 400, answer
    assert f"'{named}'" in json.loads(answer["body"])["error"]


def test_plays_api_without_a_session_is_401(site):
    answer = Browser(site).get("/me/plays")
    assert answer["statusCode"] == 401 and "error" in json.loads(answer["body"])


# ------------------------------------------------------------------ 404 / 405
def test_unknown_routes_are_an_html_404_or_json_when_asked(site):
    browser = Browser(site)
    page = browser.get("/nothing/here")
    assert page["statusCode"] == 404 and page["headers"]["Content-Type"].startswith("text/html")
    assert "There is nothing here" in page["body"]
    data = browser.get("/nothing/here", headers={"accept": "application/json"})
    assert data["statusCode"] == 404 and json.loads(data["body"]) == {"error": "There is nothing here."}


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("GET", "/auth/logout", "POST"), ("DELETE", "/me", "GET"), ("PUT", "/me/delete", "GET, POST"),
    ("POST", "/me/exports/20260101T000000Z-0123abcd", "GET"), ("GET", "/auth/waitlist", "POST"),
])
def test_a_wrong_method_is_a_405_with_allow(site, method, path, allow):
    answer = Browser(site).call(method, path)
    assert answer["statusCode"] == 405 and answer["headers"]["Allow"] == allow


def test_the_route_table_is_the_templates():
    template = tpl.load()
    routes: dict[str, set[str]] = {}
    for resource in tpl.resources_of_type(template, "AWS::Serverless::Function").values():
        for event in (resource["Properties"].get("Events") or {}).values():
            if event["Type"] == "HttpApi" and event["Properties"]["Path"] != web_http.CATCH_ALL:
                routes.setdefault(event["Properties"]["Path"], set()).add(event["Properties"]["Method"])
    assert routes == {path: set(methods) for path, methods in web_http.API_ROUTES.items()}


# ------------------------------------------------------------------ exports
def _export(browser: Browser, site: Site, fmt: str) -> bytes:
    started = browser.post("/me/exports", {"csrf": browser.csrf(), "format": fmt})
    assert started["statusCode"] == 303, started
    status_path = started["headers"]["Location"]
    running = browser.get(status_path)
    assert 'http-equiv="refresh"' in running["body"]  # the page shows progress until done
    site.run_jobs()
    done = browser.get(status_path)
    assert 'id="download"' in done["body"], done["body"]
    link = browser.get(status_path + "/file")
    assert link["statusCode"] == 303
    url = link["headers"]["Location"]
    assert "X-Amz-Expires=300" in url and "X-Amz-Signature=" in url
    return site.file(url)


def _expected_rows() -> list[dict[str, Any]]:
    return [r.as_dict() for r in Catalog().rows(list(plays.all_plays("alice")))]


def test_csv_and_json_lines_exports_hold_every_play(site, aws_env, emulator):
    browser = signed_in(site, aws_env, emulator, "alice")
    from playvault.store.catalog import EpisodeModel

    listen_and_archive(aws_env, emulator, "alice")
    EpisodeModel("ep1", name="Episode One", duration_ms=1_800_000, show_id="sh1", show_name="The Show").save()
    plays.PlayModel("alice", "2020-01-01T00:00:00.000Z", played_at_ms=1577836800000, item_type="episode",
                    episode_id="ep1", source="api").save()
    total = plays.count("alice")
    expected = _expected_rows()
    assert len(expected) == total
    assert expected[0]["episode"] == {"id": "ep1", "name": "Episode One", "show": "The Show"}

    lines = _export(browser, site, "jsonl").decode().splitlines()
    assert [json.loads(line) for line in lines] == expected

    rows = list(csv.DictReader(io.StringIO(_export(browser, site, "csv").decode())))
    assert [r["played_at"] for r in rows] == [e["played_at"] for e in expected]
    assert rows[0]["item_type"] == "episode" and rows[0]["episode_name"] == "Episode One"
    for row, want in zip(rows[1:], expected[1:], strict=True):
        assert row["track_id"] == want["track"]["id"] and row["track_name"] == want["track"]["name"]
        assert row["album_name"] == want["album"]["name"]
        assert row["artist_ids"].split(";") == [a["id"] for a in want["artists"]]
        assert int(row["duration_ms"]) == want["duration_ms"] and row["source"] == "api"
    objects = site.s3.list_objects_v2(Bucket=site.bucket)["Contents"]
    assert all(o["Key"].startswith("exports/alice/") for o in objects) and len(objects) == 2


def test_an_export_resumes_after_each_part_without_losing_or_repeating_a_play(site, aws_env, emulator,
                                                                                monkeypatch):
    import moto.s3.models

    from playvault.export import Exporter

    monkeypatch.setattr(moto.s3.models, "S3_UPLOAD_PART_MIN_SIZE", 256)
    signed_in(site, aws_env, emulator, "alice")
    listen_and_archive(aws_env, emulator, "alice")
    exporter = Exporter(site.s3, site.bucket, None, part_bytes=1024, min_remaining_s=30)
    job = exporter.start("alice", "jsonl")

    class NoTime:
        def remaining_s(self) -> float:
            return 0.0  # stop after every part

    rounds = 0
    while exporter.run("alice", job.export_id, NoTime()) is not None:
        rounds += 1
        assert rounds < 100
    finished = exports.get("alice", job.export_id)
    assert rounds >= 3 and finished.status == exports.DONE
    body = site.s3.get_object(Bucket=site.bucket, Key=finished.object_key)["Body"].read().decode()
    assert [json.loads(line) for line in body.splitlines()] == _expected_rows()
    assert int(finished.rows) == len(body.splitlines())


# ------------------------------------------------------------------ isolation
def test_no_route_reaches_another_users_data(site, aws_env, emulator):
    alice = signed_in(site, aws_env, emulator, "alice")
    bob = signed_in(site, aws_env, emulator, "bob")
    listen_and_archive(aws_env, emulator, "alice")
    listen_and_archive(aws_env, emulator, "bob")
    bob_export = bob.post("/me/exports", {"csrf": bob.csrf(), "format": "csv"})["headers"]["Location"]
    site.run_jobs()
    bob_export_id = bob_export.rsplit("/", 1)[1]
    bobs = {p.played_at for p in plays.all_plays("bob")}

    # bob's id in every parameter alice can send
    for query in ({"user_id": "bob"}, {"user": "bob"}, {"user_id": "bob", "limit": "500"}):
        got = json.loads(alice.get("/me/plays", query)["body"])["plays"]
        assert got and not ({p["played_at"] for p in got} & bobs - {p.played_at for p in plays.all_plays("alice")})
        assert len(got) <= plays.count("alice")
    assert "bob" not in alice.get("/me", {"user_id": "bob"})["body"].split("<h1>", 1)[1].split("</h1>")[0]
    for path in (bob_export, bob_export + "/file"):
        refused = alice.get(path)
        assert refused["statusCode"] == 404, path
    assert alice.post("/me/exports", {"csrf": alice.csrf(), "format": "csv", "user_id": "bob"}
                      )["statusCode"] == 303
    assert exports.get("bob", bob_export_id) is not None and len(list(exports.for_user("bob"))) == 1

    # a forged cookie, another browser's cookie shape, an expired session
    for forged in ([f"{SESSION}={'A' * 43}"], [f"{SESSION}=bob"], [f"{SESSION}={alice.jar[SESSION]}x"]):
        assert alice.get("/me", cookies=forged)["headers"]["Location"] == "/auth/login"
        assert alice.get("/me/plays", cookies=forged)["statusCode"] == 401
    session = sessions.SessionModel.get(sessions.session_hash(bob.jar[SESSION]))
    session.update(actions=[sessions.SessionModel.expires_at.set(datetime.now(UTC) - timedelta(seconds=1))])
    assert bob.get("/me")["headers"]["Location"] == "/auth/login"
    assert bob.post("/me/delete", {"csrf": "x"})["headers"]["Location"] == "/auth/login"
    assert users.get("bob").status == users.ACTIVE


def test_a_session_of_a_deleted_user_is_worth_nothing(site, aws_env, emulator):
    browser = signed_in(site, aws_env, emulator, "alice")
    seats.remove_user("alice")  # removed without its sessions (an operator's removal)
    assert browser.get("/me")["headers"]["Location"] == "/auth/login"
    assert browser.get("/me/plays")["statusCode"] == 401


# ------------------------------------------------------------------ delete my data
def test_delete_my_data_removes_everything_of_the_user_and_nothing_else(site, aws_env, emulator):
    alice = signed_in(site, aws_env, emulator, "alice")
    other_browser = signed_in(site, aws_env, emulator, "alice")  # a second session of alice
    bob = signed_in(site, aws_env, emulator, "bob")
    alice_plays = listen_and_archive(aws_env, emulator, "alice")
    listen_and_archive(aws_env, emulator, "bob")
    add_gap("alice")
    add_gap("bob")
    alice.post("/me/exports", {"csrf": alice.csrf(), "format": "csv"})
    bob.post("/me/exports", {"csrf": bob.csrf(), "format": "jsonl"})
    site.run_jobs()
    site.s3.put_object(Bucket=site.bucket, Key="imports/alice/my_spotify_data.zip", Body=b"zip")
    site.s3.put_object(Bucket=site.bucket, Key="imports/bob/my_spotify_data.zip", Body=b"zip")
    bob_before = {p.played_at for p in plays.all_plays("bob")}

    confirm = alice.get("/me/delete")
    assert confirm["statusCode"] == 200 and "35 days" in confirm["body"] and str(alice_plays) in confirm["body"]
    assert alice.post("/me/delete", {"csrf": "wrong"})["statusCode"] == 403
    assert users.get("alice").status == users.ACTIVE  # a rejected request changes nothing

    done = alice.post("/me/delete", {"csrf": alice.csrf()})
    assert done["statusCode"] == 303 and done["headers"]["Location"].startswith("/deletions/")
    assert SESSION not in alice.jar  # this browser is signed out at once
    assert users.get("alice").status == users.DELETING
    receipt_page = done["headers"]["Location"]
    assert "Deleting your data" in alice.get(receipt_page)["body"]
    site.run_jobs()

    final = alice.get(receipt_page)["body"]
    assert "Done" in final and f'id="deleted-plays">{alice_plays}<' in final and "35 days" in final
    assert users.get("alice") is None and seats.seats_taken() == 1
    assert plays.count("alice") == 0 and list(gaps.for_user("alice")) == []
    assert list(exports.for_user("alice")) == [] and other_browser.get("/me")["headers"]["Location"] == "/auth/login"
    assert all("alice" not in json.dumps(s.attribute_values, default=str) for s in sessions.SessionModel.scan())
    keys = [o["Key"] for o in site.s3.list_objects_v2(Bucket=site.bucket).get("Contents", [])]
    assert not [k for k in keys if "/alice/" in k]
    assert "imports/bob/my_spotify_data.zip" in keys and any(k.startswith("exports/bob/") for k in keys)
    receipt = [i for i in deletions.StateModel.scan() if i.name.startswith(deletions.PREFIX)]
    assert len(receipt) == 1 and receipt[0].user_id is None  # the receipt names nobody
    # bob is untouched
    assert {p.played_at for p in plays.all_plays("bob")} == bob_before
    assert users.get("bob").status == users.ACTIVE and len(list(gaps.for_user("bob"))) == 1
    assert bob.get("/me")["statusCode"] == 200


def test_deletion_waits_for_polls_in_flight_and_sweeps_their_plays(bound, aws_env, emulator):
    from playvault.deletion import Deleter

    seated_user(aws_env, emulator, "alice")
    listen_and_archive(aws_env, emulator, "alice")
    user = users.get("alice")
    s3 = boto3.client("s3")
    deleter = Deleter(s3, aws_env.name("UserFilesBucket"), None, grace_s=150)
    start = datetime.now(UTC)
    clock.set_clock(lambda: start)
    receipt = deleter.request("alice")
    key = deletions.receipt_key(receipt)
    assert users.get("alice").status == users.DELETING

    # A poll that read the user before the mark still writes plays during the grace time.
    late = plays.PlayModel("alice", "2030-01-01T00:00:00.000Z", played_at_ms=1, track_id="t")
    late.save()
    waiting = deleter.run("alice", key, _budget())
    assert waiting is not None and 140 <= waiting.delay_s <= 151
    assert plays.count("alice") > 0 and users.get("alice") is not None  # nothing deleted yet

    clock.set_clock(lambda: start + timedelta(seconds=151))
    assert deleter.run("alice", key, _budget()) is None
    assert plays.count("alice") == 0 and users.get("alice") is None
    assert user.user_id not in json.dumps([u.attribute_values for u in users.UserModel.scan()], default=str)


def test_a_deletion_that_crashes_half_way_resumes_and_the_user_is_never_polled_meanwhile(
        bound, aws_env, emulator, monkeypatch):
    from playvault import deletion
    from playvault.config import DispatcherSettings
    from playvault.dispatch import dispatch

    seated_user(aws_env, emulator, "alice")
    seated_user(aws_env, emulator, "bob")
    total = listen_and_archive(aws_env, emulator, "alice")
    deleter = deletion.Deleter(boto3.client("s3"), aws_env.name("UserFilesBucket"), None, grace_s=0)
    key = deletions.receipt_key(deleter.request("alice"))
    monkeypatch.setattr(deletion, "CHUNK", 5)
    real = gaps.delete_for_user

    def crash(user_id: str) -> int:
        raise RuntimeError("the function died here")

    monkeypatch.setattr(deletion.gaps, "delete_for_user", crash)
    with pytest.raises(RuntimeError):
        deleter.run("alice", key, _budget())
    assert 0 == plays.count("alice") and users.get("alice").status == users.DELETING
    report = dispatch(datetime.now(UTC), DispatcherSettings.from_env(), boto3.client("sqs"))
    assert report.dispatched == 1  # bob only: alice is not polled
    monkeypatch.setattr(deletion.gaps, "delete_for_user", real)

    assert deleter.run("alice", key, _budget()) is None
    assert users.get("alice") is None and seats.seats_taken() == 1
    assert deletions.get(key).counts["plays"] == total and deletions.get(key).status == deletions.DONE


@pytest.mark.parametrize(("headers", "allowed"), [
    ({"origin": f"https://{HOST}"}, True),
    ({"origin": "null", "sec-fetch-site": "same-origin"}, True),  # what Chromium sends under no-referrer
    ({}, True),  # not a browser: the CSRF token alone
    ({"origin": "https://evil.example"}, False),
    ({"origin": f"https://{HOST}.evil.example"}, False),
    ({"origin": "null"}, False),
    ({"origin": "null", "sec-fetch-site": "cross-site"}, False),
    ({"sec-fetch-site": "same-site"}, False),
])
def test_state_changing_requests_check_where_they_come_from(site, aws_env, emulator, headers, allowed):
    browser = signed_in(site, aws_env, emulator, "alice")
    token = browser.csrf()
    answer = browser.call("POST", "/me/exports", form={"csrf": token, "format": "csv"}, headers=headers)
    assert answer["statusCode"] == (303 if allowed else 403), answer
    assert len(list(exports.for_user("alice"))) == (1 if allowed else 0)


def test_the_waitlist_refuses_a_form_posted_from_another_site(site):
    browser = Browser(site)
    refused = browser.call("POST", "/auth/waitlist", form={"email": "a@example.com"},
                           headers={"origin": "https://evil.example"})
    assert refused["statusCode"] == 403
    assert [i for i in deletions.StateModel.scan() if i.name.startswith("waitlist#")] == []
    same_site = browser.call("POST", "/auth/waitlist", form={"email": "a@example.com"},
                             headers={"origin": f"https://{HOST}"})
    # Past the origin check; refused only because a seat is free (the waitlist takes addresses at the cap).
    assert same_site["statusCode"] == 409 and "seat" in same_site["body"].lower()


def test_an_export_that_crashed_after_completing_its_upload_is_settled(site, aws_env, emulator):
    from playvault.export import Exporter

    signed_in(site, aws_env, emulator, "alice")
    total = listen_and_archive(aws_env, emulator, "alice")
    exporter = Exporter(site.s3, site.bucket, None)
    job = exporter.start("alice", "csv")
    real_update = exports.ExportModel.update
    calls = []

    def crash_on_the_final_update(self, actions, condition=None, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # after _begin's update: the one that records DONE
            raise RuntimeError("the function died")
        return real_update(self, actions=actions, condition=condition, **kwargs)

    exports.ExportModel.update = crash_on_the_final_update
    try:
        with pytest.raises(RuntimeError):
            exporter.run("alice", job.export_id, _budget())
    finally:
        exports.ExportModel.update = real_update
    assert exporter.run("alice", job.export_id, _budget()) is None  # redelivered
    done = exports.get("alice", job.export_id)
    assert done.status == exports.DONE and int(done.rows) == total


# ---------------------------------------------------------------- import from /me (issue 14's page)
def test_me_offers_the_import_upload_and_shows_its_progress_and_the_coverage(site, aws_env, emulator):
    import html as html_mod
    import zipfile

    from playvault.config import ImporterSettings
    from playvault.imports.job import Importer, ImportSettings
    from playvault.spotify import Budget
    from tests.unit.helpers import make_spotify

    browser = signed_in(site, aws_env, emulator, "alice")
    page = browser.call("GET", "/me")
    body = page["body"]
    bucket = aws_env.name("UserFilesBucket")
    form = re.search(r'<form id="import-form" method="post" action="([^"]+)" '
                     r'enctype="multipart/form-data">(.*?)</form>', body, re.S)
    assert form, "the upload form"
    assert bucket in html_mod.unescape(form.group(1))  # posted straight to S3, never through the API
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form.group(2)))
    key = html_mod.unescape(fields["key"])
    assert key.startswith("imports/alice/") and key.endswith("/export")  # fixed: no file name in the key
    assert html_mod.unescape(fields["x-amz-meta-file-name"]) == "${filename}"
    assert html_mod.unescape(fields["success_action_redirect"]) == f"https://{HOST}/me?uploaded=1"
    origin = "/".join(html_mod.unescape(form.group(1)).split("/")[:3])
    assert f"form-action 'self' {origin}" in page["headers"]["Content-Security-Policy"]
    assert 'id="imports" class="muted">No import yet.' in body and '<svg' in body.split('id="coverage"')[1]

    # The file arrives in the bucket (as the browser's POST puts it) and the importer takes it in.
    export = io.BytesIO()
    with zipfile.ZipFile(export, "w") as archive:
        archive.writestr("Streaming_History_Audio_2024.json", json.dumps([{
            "ts": "2024-05-01T10:00:00Z", "ms_played": 200000, "master_metadata_track_name": "Song",
            "master_metadata_album_artist_name": "Band", "master_metadata_album_album_name": "Album",
            "spotify_track_uri": "spotify:track:4uLU6hMCjMI75M1A2tKUQC", "spotify_episode_uri": None,
            "incognito_mode": False, "platform": "ios", "reason_start": "trackdone", "reason_end": "trackdone",
            "skipped": False, "shuffle": False, "offline": False}]))
    upload_key = key
    boto3.client("s3").put_object(Bucket=bucket, Key=upload_key, Body=export.getvalue(),
                                  Metadata={"file-name": "my_spotify_data.zip"})
    from playvault import store

    store.bind(ImporterSettings.from_env())
    importer = Importer(boto3.client("s3"), bucket, make_spotify(emulator, sleep=lambda s: None),
                        ImportSettings(resolve_interval_s=0, min_remaining_ms=1000),
                        continue_later=lambda *_: None, sleep=lambda s: None,
                        upload_id_key=lambda: imports.upload_id_key(DEV_CLIENT_SECRET))
    importer.start(upload_key, len(export.getvalue()), Budget.seconds(60))
    after = browser.call("GET", "/me")["body"]
    row = re.search(r'<tr class="import" data-state="([a-z]+)">(.*?)</tr>', after, re.S)
    assert row and "my_spotify_data.zip" in row.group(2)
    assert re.search(r'class="import-added"[^>]*>1<', row.group(2)), row.group(2)  # the one play, added


def test_back_from_an_upload_me_says_the_file_arrived(site, aws_env, emulator):
    from playvault.store import imports as imports_store

    browser = signed_in(site, aws_env, emulator, "alice")
    assert 'id="upload-received"' not in browser.call("GET", "/me")["body"]
    key = "imports/alice/20261201T000000Z-0a1b2c3d-" + "a" * 32 + "/export"
    # S3's 303 after a presigned POST appends bucket, key and etag to success_action_redirect.
    query = {"uploaded": "1", "bucket": aws_env.name("UserFilesBucket"), "key": key,
             "etag": '"d41d8cd98f00b204e9800998ecf8427e"'}
    back = browser.call("GET", "/me", query)
    assert back["statusCode"] == 200
    notice = re.search(r'<p id="upload-received">(.*?)</p>', back["body"], re.S)
    assert notice and "Your file is uploaded" in notice.group(1) and "import" in notice.group(1)
    # Once the importer has the job, the page names the file as the browser sent it.
    _, job_id = job_for_key(key)
    imports_store.create("alice", job_id, key, 10, datetime.now(UTC), file_name="my_spotify_data (1).zip")
    notice = re.search(r'<p id="upload-received">(.*?)</p>', browser.call("GET", "/me", query)["body"], re.S)
    assert notice and "my_spotify_data (1).zip is uploaded" in notice.group(1)
    assert "imports/alice" not in notice.group(1)  # the file's name, not the bucket's key
    # a key outside the user's own prefix is not named back
    other = browser.call("GET", "/me", {"uploaded": "1", "key": "imports/bob/x/<b>theirs</b>.zip"})["body"]
    assert "theirs" not in other and 'id="upload-received"' in other


def test_me_without_the_client_secret_leaves_out_only_the_upload_form(site, aws_env, emulator):
    """The upload form is signed with a key derived from the client secret (SSM): when SSM cannot
    answer, /me still shows the archive, says uploading waits a reload, and comes back with it."""
    from aws_lambda_powertools.utilities import parameters

    browser = signed_in(site, aws_env, emulator, "alice")
    ssm = boto3.client("ssm")
    name = aws_env.env["SPOTIFY_CLIENT_SECRET_PARAM"]
    secret = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    ssm.delete_parameter(Name=name)
    parameters.clear_caches()
    page = browser.call("GET", "/me")
    assert page["statusCode"] == 200 and 'id="plays-total"' in page["body"]
    assert 'id="import-unavailable"' in page["body"] and 'id="import-form"' not in page["body"]
    assert "form-action 'self';" in page["headers"]["Content-Security-Policy"]
    assert secret not in page["body"]
    ssm.put_parameter(Name=name, Value=secret, Type="SecureString")
    parameters.clear_caches()
    again = browser.call("GET", "/me")["body"]
    assert 'id="import-form"' in again and 'id="import-unavailable"' not in again
