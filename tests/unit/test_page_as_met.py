"""The pages as a person meets them (issue 21, item 6): the landing page, sign-in when already
signed in and the browser's back button, the next poll, the import notice and table in words, and
why a deletion waits. Every function is called as Lambda calls it, on moto with template.yaml's
resources (the account tests' Browser and Site)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
import requests

from playvault import clock
from playvault.imports.job import job_for_key
from playvault.store import deletions, sessions, users
from playvault.store import imports as imports_store
from tests.unit.test_account import SESSION, Browser, Site, signed_in


@pytest.fixture
def stack_overrides() -> dict[str, str]:
    return {"DeletionGraceSeconds": "150", "DispatchPeriodMinutes": "15"}


@pytest.fixture
def site(load_function, lambda_context, aws_env) -> Site:
    return Site(load_function, lambda_context, aws_env)


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()


# ------------------------------------------------------------------ landing, sign-in, back button
def test_a_signed_out_visitor_gets_a_landing_page_that_says_what_is_kept(site):
    landing = Browser(site).get("/")
    assert landing["statusCode"] == 200, landing
    body = landing["body"]
    assert 'href="/auth/login"' in body  # sign in from here
    text = _text(body).lower()
    assert "every play" in text and "import" in text and "export" in text and "delete" in text
    assert "<script" not in body and landing["headers"]["Cache-Control"] == "no-store"


def test_the_landing_page_sends_a_signed_in_user_to_their_archive(site, aws_env, emulator):
    browser = signed_in(site, aws_env, emulator, "alice")
    answer = browser.get("/")
    assert answer["statusCode"] == 303 and answer["headers"]["Location"] == "/me"


def test_sign_in_when_signed_in_goes_to_my_archive(site, aws_env, emulator):
    browser = signed_in(site, aws_env, emulator, "alice")
    again = browser.get("/auth/login")
    assert again["statusCode"] == 303 and again["headers"]["Location"] == "/me"
    # a reconnect still goes to Spotify (the reconnect button, the reminder e-mail's link)
    assert browser.get("/auth/login", {"reconnect": "1"})["statusCode"] == 302


def test_sign_in_when_signed_in_renews_the_session_cookie_as_every_answer_does(site, aws_env, emulator):
    browser = signed_in(site, aws_env, emulator, "alice")
    start = clock.now()
    clock.set_clock(lambda: start + timedelta(days=2))  # reading the session moves its idle expiry
    again = browser.get("/auth/login")
    assert again["statusCode"] == 303
    renewed = [c for c in again.get("cookies") or [] if c.startswith(SESSION + "=")]
    assert len(renewed) == 1 and "Max-Age=0" not in renewed[0], again


def test_sign_in_when_signed_in_but_access_lost_goes_to_spotify(site, aws_env, emulator):
    browser = signed_in(site, aws_env, emulator, "alice")
    users.get("alice").update(actions=[users.UserModel.status.set(users.NEEDS_REAUTH)])
    assert browser.get("/auth/login")["statusCode"] == 302  # they need Spotify's consent again


def _consent_and_back(browser: Browser, user_id: str) -> dict[str, str]:
    """/auth/login -> Spotify's consent -> the callback's query (code and state), not yet sent."""
    start = browser.get("/auth/login")
    answer = requests.get(f"{start['headers']['Location']}&login_as={user_id}", allow_redirects=False, timeout=10)
    back = urlsplit(answer.headers["Location"])
    return dict(p.split("=", 1) for p in back.query.split("&"))


def test_back_to_the_consent_page_after_signing_in_lands_on_my_archive(site, emulator):
    """Back from /me to Spotify's consent page and on again: the callback comes with a used state.
    Signed in, that is the archive again, not an error page, and no second session."""
    emulator.state.add_user("alice")
    browser = Browser(site)
    query = _consent_and_back(browser, "alice")
    assert browser.get("/auth/callback", query)["statusCode"] == 303
    again = browser.get("/auth/callback", query)
    assert again["statusCode"] == 303 and again["headers"]["Location"] == "/me", again
    assert len(list(sessions.SessionModel.scan())) == 1


def test_a_used_sign_in_link_when_signed_out_offers_a_fresh_sign_in(site, emulator):
    emulator.state.add_user("alice")
    browser = Browser(site)
    query = _consent_and_back(browser, "alice")
    assert browser.get("/auth/callback", query)["statusCode"] == 303
    token = browser.csrf()
    assert browser.post("/auth/logout", {"csrf": token})["statusCode"] == 303
    again = browser.get("/auth/callback", query)  # back, back, back to the consent page, and on
    assert again["statusCode"] == 200 and 'href="/auth/login"' in again["body"], again  # a way on, no error
    assert "already used" in again["body"]
    assert list(sessions.SessionModel.scan()) == []  # nothing was signed in by the used link


# ------------------------------------------------------------------ next poll
def _next_poll(browser: Browser) -> str:
    return _text(re.search(r'<td id="next-poll">(.*?)</td>', browser.get("/me")["body"], re.S).group(1))


def test_next_poll_before_the_first_poll_says_the_dispatchers_period(site, aws_env, emulator):
    browser = signed_in(site, aws_env, emulator, "alice")
    assert users.get("alice").next_poll_at is None
    said = _next_poll(browser)
    assert "within 15 minutes" in said and "hour" not in said, said


def test_next_poll_when_due_says_the_time(site, aws_env, emulator):
    browser = signed_in(site, aws_env, emulator, "alice")
    due = clock.now().replace(microsecond=0) + timedelta(minutes=40)
    users.get("alice").update(actions=[users.UserModel.next_poll_at.set(due)])
    assert due.strftime("%Y-%m-%d %H:%M UTC") in _next_poll(browser)
    overdue = clock.now() - timedelta(minutes=3)
    users.get("alice").update(actions=[users.UserModel.next_poll_at.set(overdue)])
    assert "within 15 minutes" in _next_poll(browser)


def test_next_poll_after_failures_waits_for_the_cooldown(site, aws_env, emulator):
    browser = signed_in(site, aws_env, emulator, "alice")
    cooldown = clock.now().replace(microsecond=0) + timedelta(hours=2)
    users.get("alice").update(actions=[users.UserModel.next_poll_at.set(clock.now() + timedelta(minutes=5)),
                                       users.UserModel.cooldown_until.set(cooldown)])
    said = _next_poll(browser)
    assert cooldown.strftime("%Y-%m-%d %H:%M UTC") in said and "fail" in said, said


def test_next_poll_of_a_user_who_is_not_polled_says_so(site, aws_env, emulator):
    browser = signed_in(site, aws_env, emulator, "alice")
    users.get("alice").update(actions=[users.UserModel.status.set(users.NEEDS_REAUTH)])
    said = _next_poll(browser)
    assert "not polled" in said.lower() and "reconnect" in said.lower(), said


# ------------------------------------------------------------------ imports in words
UPLOAD_KEY = "imports/alice/20261201T000000Z-0a1b2c3d-" + "a" * 32 + "/export"


def _job(user_id: str = "alice") -> imports_store.ImportModel:
    _, job_id = job_for_key(UPLOAD_KEY)
    imports_store.create(user_id, job_id, UPLOAD_KEY, 10, datetime.now(UTC), file_name="my_spotify_data.zip")
    return imports_store.ImportModel.get(user_id, imports_store.job_key(job_id))


def test_the_upload_notice_ends_when_its_job_is_done(site, aws_env, emulator):
    browser = signed_in(site, aws_env, emulator, "alice")
    query = {"uploaded": "1", "key": UPLOAD_KEY}
    job = _job()
    assert 'id="upload-received"' in browser.get("/me", query)["body"]  # queued: the notice says it arrived
    job.update(actions=[imports_store.ImportModel.state.set(imports_store.DONE)])
    assert 'id="upload-received"' not in browser.get("/me", query)["body"]  # a reload once done: no notice


def test_import_states_and_skip_reasons_are_in_words(site, aws_env, emulator):
    browser = signed_in(site, aws_env, emulator, "alice")
    job = _job()
    job.update(actions=[imports_store.ImportModel.state.set(imports_store.DONE),
                        imports_store.ImportModel.skipped.set({"too_short": 3, "incognito": 1, "bad_uri": 2})])
    row = re.search(r'<tr class="import" data-state="done">(.*?)</tr>', browser.get("/me")["body"], re.S)
    assert row, "the job's row"
    text = _text(row.group(1))
    assert "Done" in text and "done " not in text
    assert "too_short" not in text and "incognito" not in text and "bad_uri" not in text
    assert "3 too short to count as a play" in text and "1 in a private session" in text, text
    assert "2 with an unreadable Spotify link" in text, text


def test_every_skip_reason_and_import_state_has_words():
    from playvault.imports.formats import Skip
    from playvault.web.account_pages import IMPORT_STATES, SKIP_WORDS

    assert set(SKIP_WORDS) == set(Skip)
    assert set(IMPORT_STATES) == {imports_store.QUEUED, imports_store.RUNNING, imports_store.PAUSED,
                                  imports_store.DONE, imports_store.FAILED}


# ------------------------------------------------------------------ why a deletion waits
def test_the_deletion_page_says_why_it_waits(site, aws_env, emulator):
    browser = signed_in(site, aws_env, emulator, "alice")
    job = _job()  # an import of the user, created before the request (none can be created after)
    token = browser.csrf()
    answer = browser.post("/me/delete", {"csrf": token})
    receipt_path = answer["headers"]["Location"]
    requested = deletions.get(deletions.receipt_key(receipt_path.rsplit("/", 1)[1])).created_at
    text = _text(browser.get(receipt_path)["body"])
    assert "poll" in text and "about 3 minutes" in text, text  # 150 s of grace time
    assert (requested + timedelta(seconds=150)).strftime("%H:%M:%S") in text, text

    # past the grace time, an import of the user still holding its lease
    clock.set_clock(lambda: requested + timedelta(seconds=200))
    until = clock.now() + timedelta(minutes=4)
    job.update(actions=[imports_store.ImportModel.lease_until.set(until),
                        imports_store.ImportModel.lease_token.set("t")])
    text = _text(browser.get(receipt_path)["body"])
    assert "import" in text and until.strftime("%H:%M:%S") in text and "poll" not in text, text
    assert deletions.get(deletions.receipt_key(receipt_path.rsplit("/", 1)[1])).status == deletions.RUNNING
