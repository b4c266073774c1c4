"""The browser's upload path on the real local AWS server (playvault_local.aws_server: moto behind the
POST policy check): a form presigned by playvault.imports.presigned_upload is held to its policy as S3
holds it, and files named as people's downloads are (spaces, parentheses, '+', '%', non-ASCII) go
through the upload and the importer function to a done job that names them."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
import requests
from botocore.config import Config

from playvault import clock, imports, store
from playvault.config import ImporterSettings
from playvault.store import plays, users
from playvault_local.aws_server import AwsServer
from playvault_local.events import s3_object_created_event
from playvault_local.lambda_runtime import context_for, load_handler
from playvault_local.provision import DEV_CLIENT_SECRET
from spotify_emulator import catalog as emulator_catalog
from tests.conftest import stack_on_server

UPLOAD_ID_KEY = imports.upload_id_key(DEV_CLIENT_SECRET)  # the stack's client secret, as the functions derive it
NAMES = ["my_spotify_data (1).zip", "Streaming_History_Audio_2023 Müller+Søn (1) 100%.json",
         "a+b %41 c.json", "Streaming_History_Audio_été 2022.json"]


@pytest.fixture
def local_s3(emulator: Any, monkeypatch: pytest.MonkeyPatch):
    with AwsServer() as server, stack_on_server(server.url, emulator.url, monkeypatch) as stack:
        from aws_lambda_powertools.utilities import parameters

        parameters.clear_caches()
        store.bind(ImporterSettings.from_env())
        s3 = boto3.client("s3", endpoint_url=server.url, config=Config(signature_version="s3v4"))
        yield stack, s3


def _rows(n: int, year: int) -> list[dict[str, Any]]:
    start = datetime(year, 3, 1, tzinfo=UTC)
    return [{"ts": (start + timedelta(minutes=5 * k)).strftime("%Y-%m-%dT%H:%M:%SZ"), "ms_played": 150_000,
             "spotify_track_uri": emulator_catalog.track(7, k)["uri"], "incognito_mode": False,
             "master_metadata_track_name": emulator_catalog.track(7, k)["name"],
             "master_metadata_album_artist_name": emulator_catalog.track(7, k)["artists"][0]["name"]}
            for k in range(n)]


def _body(name: str, rows: list[dict[str, Any]]) -> bytes:
    if not name.endswith(".zip"):
        return json.dumps(rows).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("Spotify Extended Streaming History/Streaming_History_Audio_2021.json", json.dumps(rows))
    return buffer.getvalue()


def _post(upload: dict[str, Any], name: str, body: bytes, **changed: str) -> requests.Response:
    return requests.post(upload["url"], data={**upload["fields"], **changed}, files={"file": (name, body)},
                         timeout=30, allow_redirects=False)


def _keys(s3: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents") or []]


def test_the_local_s3_refuses_what_s3_refuses_and_writes_nothing(local_s3):
    stack, s3 = local_s3
    bucket = stack.name("UserFilesBucket")
    now = datetime.now(UTC)
    upload = imports.presigned_upload(s3, bucket, "bob", now, upload_key=UPLOAD_ID_KEY, max_bytes=1000,
                                      redirect_to="http://127.0.0.1:9/me?uploaded=1")
    body = b'[{"ts": "2021-01-01T00:00:00Z"}]'
    cases = {
        "another user's key": ({"key": "imports/alice/x/evil.json"}, body,
                               403, "AccessDenied", f'["eq", "$key", "{upload["key"]}"]'),
        "no encryption": ({"x-amz-server-side-encryption": ""}, body, 403, "AccessDenied",
                          '["eq", "$x-amz-server-side-encryption", "AES256"]'),
        "redirect elsewhere": ({"success_action_redirect": "https://attacker.test/"}, body, 403, "AccessDenied",
                               "success_action_redirect"),
        "an extra field": ({"x-amz-meta-owner": "alice"}, body, 403, "AccessDenied",
                           "Extra input fields: x-amz-meta-owner"),
        "a forged signature": ({"x-amz-signature": "0" * 64}, body, 403, "SignatureDoesNotMatch", ""),
        "too large": ({}, b"x" * 1001, 400, "EntityTooLarge", ""),
        "empty": ({}, b"", 400, "EntityTooSmall", ""),
    }
    for what, (changed, data, status, code, message) in cases.items():
        answer = _post(upload, "evil.json", data, **changed)
        assert answer.status_code == status, (what, answer.status_code, answer.text)
        assert f"<Code>{code}</Code>" in answer.text and message in answer.text, (what, answer.text)
    # Field names differ only in case (a signed `Key` first, another `key` after it): moto reads `key`.
    fields = dict(upload["fields"])
    fields["Key"] = fields.pop("key")
    smuggled = requests.post(upload["url"], data=[*fields.items(), ("key", "imports/alice/x/export")],
                             files={"file": ("evil.json", body)}, timeout=30, allow_redirects=False)
    assert smuggled.status_code == 400 and "<Code>InvalidArgument</Code>" in smuggled.text, smuggled.text
    # The same fields in another encoding, or with a query string, are no upload S3 takes either.
    as_urlencoded = requests.post(upload["url"], data={**upload["fields"], "file": "evil"}, timeout=30)
    assert as_urlencoded.status_code in (400, 412) and "<Error>" in as_urlencoded.text, as_urlencoded.text
    with_query = requests.post(upload["url"] + "?acl", data=upload["fields"], files={"file": ("e.json", body)},
                               timeout=30, allow_redirects=False)
    assert with_query.status_code >= 400 and "<Error>" in with_query.text, with_query.text
    expired = imports.presigned_upload(s3, bucket, "bob", now, upload_key=UPLOAD_ID_KEY,
                                       expires=timedelta(seconds=1))
    import time

    time.sleep(1.5)
    late = _post(expired, "late.json", body)
    assert late.status_code == 403 and "Policy expired" in late.text
    assert _keys(s3, bucket) == []  # nothing was written by any of them

    accepted = _post(upload, "fine.json", body)
    assert accepted.status_code == 303, accepted.text  # back to the page, as S3 sends the browser
    assert accepted.headers["Location"].startswith("http://127.0.0.1:9/me?uploaded=1")
    assert _keys(s3, bucket) == [upload["key"]]


def test_file_names_people_have_go_through_upload_and_import(local_s3, emulator):
    stack, s3 = local_s3
    bucket = stack.name("UserFilesBucket")
    now = datetime.now(UTC)
    clock.set_clock(lambda: now)
    users.UserModel("alice", status=users.ACTIVE, created_at=now - timedelta(days=1)).save()
    handler = load_handler(stack.functions["ImporterFunction"], stack.layer_paths)
    expected = {}
    for index, name in enumerate(NAMES):
        upload = imports.presigned_upload(s3, bucket, "alice", now, upload_key=UPLOAD_ID_KEY)
        assert imports.SAFE_KEY.fullmatch(upload["key"])
        rows = _rows(3 + index, 2015 + index)
        answer = _post(upload, name, _body(name, rows))
        assert answer.status_code == 204, answer.text
        head = s3.head_object(Bucket=bucket, Key=upload["key"])
        assert imports.file_name_from_metadata(head["Metadata"]) == name
        # The event in either encoding: EventBridge's as stored, a classic notification's URL-encoded
        # (identical for these keys: nothing in them is encoded).
        event = s3_object_created_event(bucket, upload["key"], head["ContentLength"], head["ETag"], now)
        outcome = handler(event, context_for(stack.functions["ImporterFunction"]))
        assert outcome["status"] == "done", (name, outcome)
        expected[name] = len(rows)
    jobs = {job["file_name"]: job for job in imports.status_for_user("alice", now)}
    assert set(jobs) == set(NAMES)  # /me lists each upload under the name the browser sent
    for name, rows in expected.items():
        assert jobs[name]["state"] == "done" and jobs[name]["plays_added"] == rows, jobs[name]
    assert len(list(plays.all_plays("alice"))) == sum(expected.values())
