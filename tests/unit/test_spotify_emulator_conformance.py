"""Every payload the Spotify emulator serves must validate against Spotify's published OpenAPI schema.

The only relaxations are the ones the shared README documents as places where the live service
is looser than the schema:
  * ``next: null`` on the last page of a cursor-paged response;
  * local files (``is_local: true``) carry ``null`` id/href (track) and id/href/uri (album, artists).
They are applied as a narrow patch of exactly those properties (see ``_relaxed``), and the local-file
relaxation is used only for items that are local files; everything else is checked against the schema
as published.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from spotify_emulator import EmulatorServer, EmulatorState

SCHEMA_PATH = Path("/work/shared/spotify/spotify-open-api.yml")
if not SCHEMA_PATH.exists():  # same file, repo-relative fallback
    SCHEMA_PATH = Path(__file__).resolve().parents[3] / "shared" / "spotify" / "spotify-open-api.yml"
DOC_URI = "urn:spotify-open-api"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CLIENT_ID, CLIENT_SECRET, REDIRECT = "conformance-client", "s3cret", "http://127.0.0.1:9/cb"


def _openapi30_to_jsonschema(node):
    """OpenAPI 3.0 `nullable: true` means the type also admits null; express that in JSON Schema."""
    if isinstance(node, dict):
        out = {k: _openapi30_to_jsonschema(v) for k, v in node.items()}
        if out.pop("nullable", False) is True and "type" in out:
            out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else [*out["type"], "null"]
        return out
    if isinstance(node, list):
        return [_openapi30_to_jsonschema(v) for v in node]
    return node


def _allow_null(schema: dict) -> None:
    schema["type"] = [schema["type"], "null"]


def _relaxed(doc: dict, *, local_files: bool) -> dict:
    """Copy of the document with only the documented exceptions patched in."""
    doc = copy.deepcopy(doc)
    schemas = doc["components"]["schemas"]
    # Documented exception 1: the live API sends `next: null` on the last page.
    _allow_null(schemas["CursorPagingObject"]["properties"]["next"])
    if local_files:
        # Documented exception 2: local files have null ids/hrefs/uris for track, album and artists.
        for prop in ("id", "href"):
            _allow_null(schemas["TrackObject"]["properties"][prop])
        for prop in ("id", "href", "uri"):
            _allow_null(schemas["AlbumBase"]["properties"][prop])
            _allow_null(schemas["SimplifiedArtistObject"]["properties"][prop])
    return doc


@pytest.fixture(scope="module")
def openapi() -> dict:
    with SCHEMA_PATH.open() as fh:
        return _openapi30_to_jsonschema(yaml.safe_load(fh))


def _validator(doc: dict, pointer: str) -> Draft202012Validator:
    registry = Registry().with_resource(DOC_URI, Resource(contents=doc, specification=DRAFT202012))
    return Draft202012Validator({"$ref": f"{DOC_URI}#{pointer}"}, registry=registry)


def assert_valid(doc: dict, pointer: str, payload) -> None:
    errors = sorted(_validator(doc, pointer).iter_errors(payload), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:10])


def _response_schema_pointer(doc: dict, path: str, status: str) -> str:
    ref = doc["paths"][path]["get"]["responses"][status]["$ref"]
    name = ref.rsplit("/", 1)[1]
    return f"/components/responses/{name}/content/application~1json/schema"


def assert_page_valid(doc: dict, page: dict) -> None:
    """Whole page against the operation's 200 schema; local-file items get the local relaxation only."""
    pointer = _response_schema_pointer(doc, "/me/player/recently-played", "200")
    strict = _relaxed(doc, local_files=False)
    normal = {**page, "items": [i for i in page["items"] if not i["track"]["is_local"]]}
    assert_valid(strict, pointer, normal)
    local_items = [i for i in page["items"] if i["track"]["is_local"]]
    if local_items:
        assert_valid(_relaxed(doc, local_files=True), pointer, {**page, "items": local_items})
    # And each non-local item validates against the untouched component schemas too.
    for item in normal["items"]:
        assert_valid(doc, "/components/schemas/PlayHistoryObject", item)


# ----------------------------------------------------------------------------- emulator fixture
class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def env():
    clock = Clock(T0)
    state = EmulatorState(clock=clock, seed=7)
    state.register_client(CLIENT_ID, CLIENT_SECRET, [REDIRECT])
    state.add_user("alice")
    for i in range(30):
        state.add_play("alice", T0 - timedelta(minutes=4 * (30 - i)), local=(i % 7 == 3), whole_second=(i % 3 == 0))
    with EmulatorServer(state) as server:
        token = _sign_in(server.url, "alice")
        yield state, server, token, clock


def _sign_in(base: str, user: str, scope: str = "user-read-recently-played user-read-private") -> str:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    r = requests.get(f"{base}/authorize", params={
        "client_id": CLIENT_ID, "response_type": "code", "redirect_uri": REDIRECT, "state": "xyz",
        "scope": scope, "code_challenge_method": "S256",
        "code_challenge": challenge, "login_as": user}, allow_redirects=False, timeout=10)
    assert r.status_code == 302
    code = parse_qs(urlsplit(r.headers["Location"]).query)["code"][0]
    r = requests.post(f"{base}/api/token", data={"grant_type": "authorization_code", "code": code,
                                                 "redirect_uri": REDIRECT, "code_verifier": verifier},
                      auth=(CLIENT_ID, CLIENT_SECRET), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def _get(server, token, path, **params):
    return requests.get(f"{server.url}/v1{path}", params=params, headers={"Authorization": f"Bearer {token}"},
                        timeout=10)


# ----------------------------------------------------------------------------- tests
def test_schema_relaxation_is_narrow(openapi):
    """The relaxed documents differ from the original only in the documented properties."""
    strict = _relaxed(openapi, local_files=False)
    local = _relaxed(openapi, local_files=True)
    assert strict["components"]["schemas"]["CursorPagingObject"]["properties"]["next"]["type"] == ["string", "null"]
    changed = []
    for name, schema in local["components"]["schemas"].items():
        if schema != openapi["components"]["schemas"][name]:
            changed.append(name)
    assert sorted(changed) == ["AlbumBase", "CursorPagingObject", "SimplifiedArtistObject", "TrackObject"]
    assert local["paths"] == openapi["paths"]
    # a local file's null uri on the *track* is still rejected
    assert "null" not in str(local["components"]["schemas"]["TrackObject"]["properties"]["uri"]["type"])


def test_normal_page_validates(env, openapi):
    state, server, token, _ = env
    r = _get(server, token, "/me/player/recently-played", limit=5)
    assert r.status_code == 200
    page = r.json()
    assert len(page["items"]) == 5 and page["next"]
    assert not any(i["track"]["is_local"] for i in page["items"])  # newest 5 contain no local file
    assert_valid(openapi, _response_schema_pointer(openapi, "/me/player/recently-played", "200"), page)
    # Full track objects, not just the required minimum
    track = page["items"][0]["track"]
    for key in ("album", "artists", "available_markets", "external_urls", "href", "uri", "duration_ms", "explicit",
                "popularity", "id", "name", "is_local", "external_ids", "track_number", "disc_number", "type"):
        assert key in track
    assert set(track) <= set(openapi["components"]["schemas"]["TrackObject"]["properties"])


def test_page_with_local_files_validates(env, openapi):
    _, server, token, _ = env
    page = _get(server, token, "/me/player/recently-played", limit=50).json()
    local = [i for i in page["items"] if i["track"]["is_local"]]
    assert local, "fixture should include local files"
    for item in local:
        t = item["track"]
        assert t["id"] is None and t["href"] is None and t["uri"].startswith("spotify:local:")
        assert t["album"]["id"] is None and t["album"]["uri"] is None and t["album"]["href"] is None
        assert all(a["id"] is None and a["uri"] is None for a in t["artists"])
    assert page["next"] is None
    assert_page_valid(openapi, page)
    # Without the local-file relaxation those items are rejected, so the relaxation is doing real work.
    pointer = _response_schema_pointer(openapi, "/me/player/recently-played", "200")
    errors = list(_validator(_relaxed(openapi, local_files=False), pointer).iter_errors(page))
    assert errors


def test_after_and_before_pages_validate(env, openapi):
    _, server, token, _ = env
    first = _get(server, token, "/me/player/recently-played", limit=10).json()
    assert_page_valid(openapi, first)
    before_page = requests.get(first["next"], headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
    assert_page_valid(openapi, before_page)
    after_page = _get(server, token, "/me/player/recently-played", limit=10, after=0).json()
    assert after_page["next"] and "after=" in after_page["next"]
    assert_page_valid(openapi, after_page)
    assert_valid(openapi, "/components/schemas/CursorObject", after_page["cursors"])


def test_empty_page_validates(env, openapi):
    _, server, token, _ = env
    now_ms = int(T0.timestamp() * 1000)
    page = _get(server, token, "/me/player/recently-played", after=now_ms).json()
    assert page["items"] == [] and page["next"] is None
    assert_page_valid(openapi, page)


def test_me_validates(env, openapi):
    _, server, token, _ = env
    r = _get(server, token, "/me")
    assert r.status_code == 200
    me = r.json()
    assert me["id"] == "alice" and me["uri"] == "spotify:user:alice" and me["type"] == "user"
    assert_valid(openapi, _response_schema_pointer(openapi, "/me", "200"), me)
    assert_valid(openapi, "/components/schemas/PrivateUserObject", me)


def test_error_objects_validate(env, openapi):
    state, server, token, clock = env
    rp = "/me/player/recently-played"
    unauthorized = _response_schema_pointer(openapi, rp, "401")
    too_many = _response_schema_pointer(openapi, rp, "429")
    bad_request = "/components/responses/BadRequest/content/application~1json/schema"

    r = _get(server, "not-a-token", rp)
    assert r.status_code == 401
    assert_valid(openapi, unauthorized, r.json())
    r = _get(server, token, "/me")
    assert r.status_code == 200
    clock.now = T0 + timedelta(hours=1)
    r = _get(server, token, rp)
    assert r.status_code == 401 and r.json()["error"]["message"] == "The access token expired"
    assert_valid(openapi, _response_schema_pointer(openapi, "/me", "401"), r.json())
    clock.now = T0
    r = _get(server, token, rp, limit=51)
    assert r.status_code == 400
    assert_valid(openapi, bad_request, r.json())
    r = _get(server, token, rp, after=1, before=2)
    assert r.status_code == 400
    assert_valid(openapi, bad_request, r.json())

    state.inject("/v1/me/player/recently-played", 429, retry_after=7)
    r = _get(server, token, rp)
    assert r.status_code == 429 and r.headers["Retry-After"] == "7"
    assert_valid(openapi, too_many, r.json())
    state.faults.rate_429_rate = 1.0
    state.faults.retry_after_s = 3
    r = _get(server, token, "/me")
    assert r.status_code == 429 and r.headers["Retry-After"] == "3"
    assert_valid(openapi, _response_schema_pointer(openapi, "/me", "429"), r.json())
    state.faults.rate_429_rate = 0.0
    state.rate_limit_app(T0 + timedelta(hours=2))
    r = _get(server, token, rp)
    assert r.status_code == 429 and r.headers["Retry-After"] == "7200"
    assert_valid(openapi, too_many, r.json())
    state.rate_limit_app(T0)

    for status in (500, 502, 503):
        state.inject("/v1/", status)
        r = _get(server, token, rp)
        assert r.status_code == status
        assert_valid(openapi, too_many.replace("TooManyRequests", "NotFound"), r.json())
        assert r.json()["error"]["status"] == status
    state.faults.error_5xx_rate = 1.0
    r = _get(server, token, rp)
    assert 500 <= r.status_code <= 599
    assert_valid(openapi, "/components/schemas/ErrorObject", r.json()["error"])


def test_me_has_the_email_only_with_its_scope(env, openapi):
    _, server, token, _ = env
    assert "email" not in _get(server, token, "/me").json()  # signed in without user-read-email
    with_email = _sign_in(server.url, "alice", "user-read-recently-played user-read-email")
    me = _get(server, with_email, "/me").json()
    assert me["email"] == "alice@example.com"
    assert_valid(openapi, "/components/schemas/PrivateUserObject", me)


def test_account_not_on_the_allow_list_gets_a_valid_403(env, openapi):
    state, server, token, _ = env
    state.set_allow_list(CLIENT_ID, ["bob"])
    r = _get(server, token, "/me")
    assert r.status_code == 403 and r.json()["error"]["status"] == 403
    assert_valid(openapi, _response_schema_pointer(openapi, "/me", "403"), r.json())
    r = _get(server, token, "/me/player/recently-played")
    assert r.status_code == 403
    state.set_allow_list(CLIENT_ID, ["alice"])
    assert _get(server, token, "/me").status_code == 200
    state.set_allow_list(CLIENT_ID, None)
    assert _get(server, token, "/me").status_code == 200


def _app_token(base: str) -> str:
    r = requests.post(f"{base}/api/token", data={"grant_type": "client_credentials"},
                      auth=(CLIENT_ID, CLIENT_SECRET), timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def test_get_track_validates_with_a_user_or_an_app_token(env, openapi):
    """GET /tracks/{id} (the importer's catalog lookup) answers OneTrack with either kind of token;
    an app token is refused where a user is needed."""
    from spotify_emulator import catalog

    state, server, token, _ = env
    wanted = catalog.track(7, 42)
    pointer = _response_schema_pointer(openapi, "/tracks/{id}", "200")
    for bearer in (token, _app_token(server.url)):
        r = _get(server, bearer, f"/tracks/{wanted['id']}")
        assert r.status_code == 200, r.text
        assert r.json() == wanted
        assert_valid(openapi, pointer, r.json())
        assert_valid(openapi, "/components/schemas/TrackObject", r.json())
    assert _get(server, _app_token(server.url), "/me").status_code == 401
    assert state.request_counts()["track"] == 2


def test_get_track_errors_validate(env, openapi):
    _, server, token, _ = env
    r = _get(server, token, "/tracks/" + "0" * 22)
    assert r.status_code == 404
    assert_valid(openapi, "/components/schemas/ErrorObject", r.json()["error"])
    r = _get(server, token, "/tracks/not-an-id")
    assert r.status_code == 400
    assert_valid(openapi, "/components/responses/BadRequest/content/application~1json/schema", r.json())
    r = _get(server, "not-a-token", "/tracks/" + "0" * 22)
    assert r.status_code == 401
    assert_valid(openapi, _response_schema_pointer(openapi, "/tracks/{id}", "401"), r.json())
