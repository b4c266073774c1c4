"""Sign-in end to end on real servers: moto_server (its own process, provisioned from template.yaml)
and the Spotify emulator over HTTP. The browser's part is played with requests: follow the 302 from
/auth/login to the emulator's /authorize (consenting with login_as), follow its 302 back to the
callback (the handler invoked with that query), then archive the new user and find the plays.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import boto3
import pytest
import requests

from playvault import store
from playvault.archive import SUCCESS, Archiver
from playvault.config import TableSettings
from playvault.crypto import TokenCipher
from playvault.spotify import Budget, SpotifyClient, ssm_credentials
from playvault.store import plays, seats, users
from playvault.store.state import StateModel
from playvault_local import provision as prov
from playvault_local.lambda_runtime import context_for, load_handler
from tests.conftest import REDIRECT_URI, stack_parameters

EVENT = json.loads((Path(__file__).resolve().parents[1] / "events" / "http_api_auth_login.json").read_text())


@pytest.fixture
def stack(moto_reset: str, emulator: Any, monkeypatch: pytest.MonkeyPatch) -> prov.Stack:
    stack = prov.provision(endpoint_url=moto_reset, parameters=stack_parameters(emulator.url, MaxUsers="2"))
    for key, value in stack.env.items():
        monkeypatch.setenv(key, value)
    store.bind(TableSettings.from_env())
    from aws_lambda_powertools.utilities import parameters

    parameters.clear_caches()
    return stack


class Browser:
    def __init__(self, stack: prov.Stack):
        self.functions = {}
        for logical_id in ("AuthFunction", "AccountFunction"):
            spec = stack.functions[logical_id]
            self.functions[logical_id] = (load_handler(spec, stack.layer_paths), context_for(spec))
        self.jar: dict[str, str] = {}

    def get(self, path: str, query: dict[str, str] | None = None) -> dict[str, Any]:
        event = copy.deepcopy(EVENT)
        event["routeKey"] = event["requestContext"]["routeKey"] = f"GET {path}"
        event["rawPath"] = event["requestContext"]["http"]["path"] = path
        event["rawQueryString"] = urlencode(query or {})
        if query:
            event["queryStringParameters"] = dict(query)
        if self.jar:
            event["cookies"] = [f"{k}={v}" for k, v in self.jar.items()]
        handler, context = self.functions["AuthFunction" if path.startswith("/auth/") else "AccountFunction"]
        response = handler(event, context)
        for cookie in response.get("cookies") or []:
            name, _, rest = cookie.partition("=")
            value = rest.split(";", 1)[0]
            if value:
                self.jar[name] = value
            else:
                self.jar.pop(name, None)
        return response

    def sign_in(self, user_id: str, *, reconnect: bool = False) -> dict[str, Any]:
        start = self.get("/auth/login", {"reconnect": "1"} if reconnect else None)
        assert start["statusCode"] == 302, start
        at_spotify = requests.get(f"{start['headers']['Location']}&{urlencode({'login_as': user_id})}",
                                  allow_redirects=False, timeout=10)
        assert at_spotify.status_code == 302, at_spotify.text
        back = urlsplit(at_spotify.headers["Location"])
        assert f"{back.scheme}://{back.netloc}{back.path}" == REDIRECT_URI
        return self.get(back.path, dict(parse_qsl(back.query)))


def archiver(stack: prov.Stack) -> Archiver:
    env = stack.env
    spotify = SpotifyClient(
        api_url=env["SPOTIFY_API_URL"],
        accounts_url=env["SPOTIFY_ACCOUNTS_URL"],
        credentials=ssm_credentials(env["SPOTIFY_CLIENT_ID_PARAM"], env["SPOTIFY_CLIENT_SECRET_PARAM"]),
    )
    return Archiver(spotify, TokenCipher(boto3.client("kms"), env["TOKEN_KEY_ID"]))


def stored_ms(user_id: str) -> list[int]:
    return sorted(int(p.played_at_ms) for p in plays.all_plays(user_id))


def test_sign_in_then_archive(stack: prov.Stack, emulator: Any) -> None:
    now = datetime.now(UTC)
    emulator.state.add_user("dana", display_name="Dana <3")
    emulator.state.simulate_listening("dana", now - timedelta(hours=3), now - timedelta(minutes=1), 10)
    truth = sorted(p["played_at_ms"] for p in emulator.state.ground_truth("dana"))
    assert 10 <= len(truth) <= 50

    browser = Browser(stack)
    welcome = browser.sign_in("dana")

    assert welcome["statusCode"] == 303 and welcome["headers"]["Location"] == "/me?welcome=new"
    page = browser.get("/me")
    assert page["statusCode"] == 200
    assert "Dana &lt;3" in page["body"]  # Spotify's display name, escaped
    assert seats.seats_taken() == 1
    assert [i.name for i in StateModel.scan()] == [seats.SEATS]
    result = archiver(stack).archive_user("dana", Budget.seconds(30))
    assert result.status == SUCCESS, result
    assert stored_ms("dana") == truth


def test_revoked_user_signs_in_again_and_archiving_resumes(stack: prov.Stack, emulator: Any) -> None:
    now = datetime.now(UTC)
    emulator.state.add_user("eve")
    emulator.state.simulate_listening("eve", now - timedelta(hours=2), now - timedelta(hours=1), 10)
    browser, work = Browser(stack), archiver(stack)
    browser.sign_in("eve")
    assert work.archive_user("eve", Budget.seconds(30)).status == SUCCESS

    emulator.state.revoke("eve")
    emulator.state.simulate_listening("eve", now - timedelta(minutes=50), now - timedelta(minutes=1), 10)
    work.archive_user("eve", Budget.seconds(30))
    assert users.get("eve").status == users.NEEDS_REAUTH

    again = browser.sign_in("eve", reconnect=True)

    assert again["statusCode"] == 303 and again["headers"]["Location"] == "/me?welcome=back"
    user = users.get("eve")
    assert user.status == users.ACTIVE and user.consecutive_failures == 0
    assert seats.seats_taken() == 1
    assert work.archive_user("eve", Budget.seconds(30)).status == SUCCESS
    assert stored_ms("eve") == sorted(p["played_at_ms"] for p in emulator.state.ground_truth("eve"))


def test_cap_reached_waitlist_over_real_servers(stack: prov.Stack, emulator: Any) -> None:
    assert Browser(stack).sign_in("one")["statusCode"] == 303
    assert Browser(stack).sign_in("two")["statusCode"] == 303
    browser = Browser(stack)  # a newcomer's (signed in, a browser would go straight to /me)
    full = browser.get("/auth/login")
    assert full["statusCode"] == 200 and 'action="/auth/waitlist"' in full["body"]
    assert seats.seats_taken() == 2
    assert seats.remove_user("one") is True
    assert seats.seats_taken() == 1
    assert browser.get("/auth/login")["statusCode"] == 302
