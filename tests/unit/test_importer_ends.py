"""The importer always ends (issue 20, item 5): whatever an upload holds, its job ends `done` or
`failed` with a reason naming the file and row, and the function returns normally; AWS failing is
retried (bounded), a track whose lookup keeps failing is given up on, a track Spotify no longer has is
asked for once by the whole app, and a warm container keeps nothing of a job between runs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from pynamodb.exceptions import PutError

from playvault.imports import job as job_mod
from playvault.spotify import Budget
from playvault.store import catalog, imports, plays
from tests.unit.helpers import ProcessKilled, kill_at_advance
from tests.unit.test_importer import history, stream, track, zipped
from tests.unit.test_importer import world as world  # noqa: F401  (the fixture, shared)

START = datetime(2021, 1, 1, tzinfo=UTC)
NAME = "Streaming_History_Audio_2021.json"


def ids(world, key):
    return job_mod.job_for_key(key)


def assert_ended(job, state, *, file=NAME, row=None, says=""):
    assert job.state == state, (job.state, job.error)
    assert job.lease_token is None and job.finished_at is not None  # released: nothing holds it
    assert says in (job.error or ""), job.error
    assert job.error_file == file, job.error_file
    if row is not None:
        assert job.error_row == row, job.error_row


# ---------------------------------------------------------------- what the JSON reader could not parse
def test_a_number_of_5000_digits_fails_its_file_at_its_row_and_keeps_the_rows_before(world):
    rows = history(START, 3)
    body = json.dumps(rows)[:-1] + ', {"ts": "2021-01-02T00:00:00Z", "ms_played": ' + "9" * 5000 + "}]"
    assert len(body) < 8000  # a 5 KB upload
    key = world.upload(body.encode(), name=NAME)
    outcome = world.run(key)  # returns: no exception for Lambda to retry
    job = world.job(key)
    assert outcome.status == job_mod.DONE
    assert_ended(job, "done", row=3, says="item 3")
    assert "digits" in job.error and job.files[0]["state"] == "failed"
    assert len(world.stored()) == 3


def test_3000_nested_arrays_fail_the_job_naming_the_row(world):
    body = b"[" + b"[" * 3000 + b"]" * 3000 + b"]"
    key = world.upload(body, name=NAME)
    outcome = world.run(key)
    job = world.job(key)
    assert outcome.status == job_mod.FAILED
    assert_ended(job, "failed", row=0, says="nested")
    assert world.stored() == []


def test_invalid_utf8_mid_file_keeps_every_row_before_it_and_names_its_row(world):
    rows = history(START, 400)  # ~200 KB: the bad byte is in a later 64 KB chunk than the rows before it
    text = json.dumps(rows)
    at = text.index('"ts"', text.index(json.dumps(rows[300])[:20]))  # inside row 300
    body = text[:at].encode() + b"\xff\xfe" + text[at:].encode()
    key = world.upload(body, name=NAME)
    world.run(key)
    job = world.job(key)
    assert_ended(job, "done", row=300, says="UTF-8")
    assert job.files[0]["state"] == "failed"
    assert len(world.stored()) == 300  # every valid row before the bad byte, none after


def test_a_plain_text_upload_fails(world):
    key = world.upload(b"Dear diary, today I listened to music.\n", name="notes.txt")
    outcome = world.run(key)
    job = world.job(key)
    assert outcome.status == job_mod.FAILED
    assert_ended(job, "failed", file="notes.txt", row=0, says="not JSON")
    assert job.error.startswith("notes.txt: ")


def test_an_upload_with_every_file_rejected_fails_and_one_with_a_good_file_is_done(world):
    bad = world.upload(zipped({"Streaming_History_Audio_2020.json": {"playlists": []},
                               "Streaming_History_Audio_2021.json": b"not json"}))
    world.run(bad)
    assert_ended(world.job(bad), "failed", file="Streaming_History_Audio_2020.json", says="found an object")
    mixed = world.upload(zipped({"Streaming_History_Audio_2020.json": b"not json",
                                 "Streaming_History_Audio_2021.json": history(START, 2)}))
    world.run(mixed)
    job = world.job(mixed)
    assert job.state == "done" and job.plays_added == 2 and job.error_file == "Streaming_History_Audio_2020.json"


# ---------------------------------------------------------------- any exception ends the job
def test_an_unexpected_error_fails_the_job_with_a_readable_reason_and_returns(world, monkeypatch):
    def broken(*args, **kwargs):
        raise TypeError("secret-token-abc123 should never be shown")

    monkeypatch.setattr(job_mod.formats, "parse_row", broken)
    key = world.upload(json.dumps(history(START, 3)).encode(), name=NAME)
    outcome = world.run(key)
    job = world.job(key)
    assert outcome.status == job_mod.FAILED
    assert_ended(job, "failed", row=0, says="internal error")
    assert "secret-token" not in job.error and "secret-token" not in (outcome.reason or "")


def test_a_files_list_past_the_item_limit_is_refused_before_anything_is_written(world):
    long = "x" * 200
    members = {f"{long}/{k:04d}/Streaming_History_Audio_{k}.json": b"[]" for k in range(2000)}
    key = world.upload(zipped(members))
    outcome = world.run(key)
    job = world.job(key)
    assert outcome.status == job_mod.FAILED and job.state == "failed", job.error
    assert "streaming-history files" in job.error and job.lease_token is None
    assert world.stored() == []


def test_the_files_list_stays_far_under_the_item_limit_at_the_caps(world):
    # At most MAX_HISTORY_FILES entries, names and errors cut: the status item fits in 400 KB.
    from playvault.imports.sources import MAX_HISTORY_FILES, MAX_MEMBER_NAME_CHARS

    entry = {"name": "n" * MAX_MEMBER_NAME_CHARS, "kind": "extended", "size": 10 ** 12, "state": "rejected",
             "rows_read": 10 ** 9, "error": "e" * job_mod.MAX_FILE_ERROR_CHARS}
    assert len(json.dumps([entry] * MAX_HISTORY_FILES)) < 300_000


def test_writes_throttled_past_their_retries_are_retried_then_end_the_job(world, monkeypatch):
    """BatchWriteItem's unprocessed items after pynamodb's retries: AWS, not the user, so the
    delivery fails and is retried, the lease is released and the job says why; a few deliveries
    later (fewer than MaxReceiveCount) the job ends `failed`, naming file and row, and returns."""
    def throttled(rows):
        list(rows)
        raise PutError("Failed to batch write items: max_retry_attempts exceeded")

    monkeypatch.setattr(plays, "write_rows", throttled)
    key = world.upload(json.dumps(history(START, 6)).encode(), name=NAME)
    user_id, job_id = ids(world, key)
    with pytest.raises(PutError):
        world.run(key)
    job = world.job(key)
    assert job.state == "running" and job.lease_token is None  # the redelivery need not wait for the lease
    assert job.attempts == 1 and "throttl" in job.last_failure
    for _ in range(job_mod.JOB_ATTEMPTS - 2):
        with pytest.raises(PutError):
            world.importer().run(user_id, job_id, Budget.seconds(60))
    outcome = world.importer().run(user_id, job_id, Budget.seconds(60))  # the last one: no exception
    assert outcome.status == job_mod.FAILED
    assert_ended(world.job(key), "failed", row=0, says="throttl")
    assert job_mod.JOB_ATTEMPTS < 5  # the template's MaxReceiveCount default: the job ends before the DLQ


def test_a_transient_aws_failure_retried_once_does_not_end_the_job(world, monkeypatch):
    real = plays.write_rows
    calls = {"n": 0}

    def once(rows):
        calls["n"] += 1
        if calls["n"] == 1:
            list(rows)
            raise PutError("Failed to batch write items: max_retry_attempts exceeded")
        return real(rows)

    monkeypatch.setattr(plays, "write_rows", once)
    key = world.upload(json.dumps(history(START, 6)).encode(), name=NAME)
    with pytest.raises(PutError):
        world.run(key)
    user_id, job_id = ids(world, key)
    assert world.importer().run(user_id, job_id, Budget.seconds(60)).status == job_mod.DONE
    job = world.job(key)
    assert job.state == "done" and job.plays_added == 6 and job.error is None and len(world.stored()) == 6


# ---------------------------------------------------------------- the catalog phase
def test_a_track_whose_lookup_keeps_failing_is_given_up_after_bounded_attempts(world):
    rows = history(START, 3)
    failing = track(1)["id"]
    world.state.inject(f"/v1/tracks/{failing}", 500, times=10_000)
    key = world.upload(json.dumps(rows).encode(), name=NAME)
    user_id, job_id = ids(world, key)
    outcome = world.run(key)
    runs = 1
    while outcome.status != job_mod.DONE:
        assert outcome.status == job_mod.PAUSED, outcome
        world.now += timedelta(seconds=outcome.delay_s + 1)
        outcome = world.importer().run(user_id, job_id, Budget.seconds(60))
        runs += 1
        assert runs <= job_mod.LOOKUP_ATTEMPTS + 1, "retried without bound"
    job = world.job(key)
    assert job.state == "done" and job.tracks_resolved == 3
    assert catalog.unknown_track_ids({track(0)["id"], track(2)["id"]}) == set()
    assert catalog.unknown_track_ids({failing}) == {failing}  # not known: a later import may try again
    [play] = [p for p in world.stored() if p.track_id == failing]
    assert (play.track_name, play.artist_name) == (track(1)["name"], track(1)["artists"][0]["name"])  # the export's


def test_a_track_spotify_no_longer_has_is_asked_for_once_by_the_whole_app(world):
    gone = "0" * 22
    rows = [stream(START, 0, spotify_track_uri=f"spotify:track:{gone}"), *history(START + timedelta(hours=1), 2)]
    world.state.inject(f"/v1/tracks/{gone}", 404, times=10)
    first = world.upload(json.dumps(rows).encode(), name=NAME)
    assert world.run(first).status == job_mod.DONE
    asked = world.state.request_counts()["track"]
    catalog.forget_known_ids()  # another container
    second = world.upload(json.dumps(rows).encode() + b" ", name=NAME)
    assert world.run(second).status == job_mod.DONE
    assert world.state.request_counts()["track"] == asked  # nothing asked again
    assert world.job(second).tracks_to_resolve == 0
    assert catalog.is_gone(gone) and not catalog.is_gone(track(0)["id"])


# ---------------------------------------------------------------- warm containers
def test_a_chunk_retried_in_the_same_warm_container_still_resolves_its_tracks(world, monkeypatch):
    rows = history(START, 10)
    key = world.upload(zipped({NAME: rows}))
    kill_at_advance(monkeypatch, 3)  # the files list, chunk 1, then chunk 2: its plays written, its count not
    warm = world.importer()
    with pytest.raises(ProcessKilled):
        world.run(key, warm)
    monkeypatch.undo()
    world.now += timedelta(minutes=7)
    user_id, job_id = ids(world, key)
    assert warm.run(user_id, job_id, Budget.seconds(60)).status == job_mod.DONE
    job = world.job(key)
    assert job.tracks_resolved == 10, job.tracks_resolved
    assert catalog.unknown_track_ids({track(k)["id"] for k in range(10)}) == set()


def test_a_warm_container_keeps_nothing_of_a_finished_job(world):
    warm = world.importer()
    for n in range(3):
        rows = [stream(START + timedelta(days=n, minutes=4 * k), 10 * n + k) for k in range(5)]
        key = world.upload(json.dumps(rows).encode(), name=NAME)
        assert world.run(key, warm).status == job_mod.DONE
        _, job_id = ids(world, key)
        held = repr(vars(warm))
        assert job_id not in held
        assert not any(track(10 * n + k)["id"] in held for k in range(5))


# ---------------------------------------------------------------- the template
def test_the_importers_concurrency_is_bounded_so_imports_cannot_starve_polling():
    """Each running import looks tracks up at most once per RESOLVE_INTERVAL_MS: bounding how many
    run bounds their share of Spotify's rate budget. Uploads and continuations both arrive as
    asynchronous invocations (the EventBridge rule; the jobs function), which the reserved
    concurrency caps; Lambda retries a throttled asynchronous event for up to six hours. No queue
    event source: its pollers would be throttled by the reservation instead."""
    from playvault_local import template as tpl

    importer = tpl.load()["Resources"]["ImporterFunction"]["Properties"]
    assert 2 <= importer["ReservedConcurrentExecutions"] <= 5
    assert [event["Type"] for event in importer["Events"].values()] == ["EventBridgeRule"]


# ---------------------------------------------------------------- through the function, as Lambda calls it
def test_the_function_returns_normally_for_a_bad_upload_and_retries_later_when_aws_fails(
        aws_env, load_function, lambda_context, monkeypatch):
    import boto3

    from playvault import clock, store
    from playvault.config import ImporterSettings
    from playvault.store import users
    from tests.unit.helpers import upload_export
    from tests.unit.test_importer import NOW

    clock.set_clock(lambda: NOW)
    handler = load_function("ImporterFunction")
    store.bind(ImporterSettings.from_env())
    users.UserModel("alice", status=users.ACTIVE, created_at=NOW).save()
    s3 = boto3.client("s3")
    bucket = aws_env.name("UserFilesBucket")

    def upload(body: bytes) -> tuple[str, dict]:
        return upload_export(s3, bucket, "alice", NOW, body, NAME)

    key, event = upload(b"[" + b"[" * 3000 + b"]" * 3000 + b"]")
    answer = handler(event, lambda_context("ImporterFunction"))  # no exception: Lambda does not retry it
    assert answer["status"] == "failed" and "nested" in answer["reason"]
    # A continuation whose job AWS fails: tried again later (the jobs queue), the job released, saying why.
    key, event = upload(json.dumps(history(START, 3)).encode())
    user_id, job_id = job_mod.job_for_key(key)
    imports.create(user_id, job_id, key, 10, NOW, file_name=NAME)
    monkeypatch.setattr(plays, "write_rows", lambda rows: (_ for _ in ()).throw(
        PutError("Failed to batch write items: max_retry_attempts exceeded")))
    continuation = job_mod.ContinueMessage(user_id=user_id, job_id=job_id).model_dump()
    answer = handler(continuation, lambda_context("ImporterFunction"))
    assert answer["status"] == "retry"
    job = imports.get(user_id, job_id)
    assert job.state == "running" and job.lease_token is None and job.attempts == 1


def test_an_upload_gone_before_its_job_ran_fails_the_job_at_once(world):
    key = world.upload(json.dumps(history(START, 3)).encode(), name=NAME)
    user_id, job_id = ids(world, key)
    imports.create(user_id, job_id, key, 10, world.now, file_name=NAME)
    world.s3.delete_object(Bucket=world.bucket, Key=key)  # past the bucket's 7-day expiry of uploads
    outcome = world.importer().run(user_id, job_id, Budget.seconds(60))  # no retry: it will not come back
    assert outcome.status == job_mod.FAILED
    assert_ended(world.job(key), "failed", says="upload it again")


# ---------------------------------------------------------------- failures.py: the one mapping
def test_what_an_exception_means_for_an_import_job():
    from botocore.exceptions import ClientError, EndpointConnectionError

    from playvault.failures import import_failure_reason, import_retries

    def client_error(code: str, message: str = "token=abc") -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": message}}, "UpdateItem")

    unprocessed = PutError("Failed to batch write items: max_retry_attempts exceeded")
    assert import_retries(unprocessed) and "throttling" in import_failure_reason(unprocessed)
    for aws in (client_error("ProvisionedThroughputExceededException"), client_error("ServiceUnavailable"),
                EndpointConnectionError(endpoint_url="https://dynamodb")):
        assert import_retries(aws) and import_failure_reason(aws).startswith("AWS failed (")
    too_big = client_error("ValidationException", "Item size to update has exceeded the maximum allowed size")
    assert not import_retries(too_big) and "400 KB" in import_failure_reason(too_big)
    gone = client_error("NoSuchKey")
    assert not import_retries(gone) and "upload it again" in import_failure_reason(gone)
    for bug in (TypeError("token=abc"), KeyError("token=abc"), ValueError("token=abc")):
        assert not import_retries(bug) and "token" not in import_failure_reason(bug)
    assert "token" not in import_failure_reason(client_error("ThrottlingException"))
