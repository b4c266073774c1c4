"""functions/importer as Lambda calls it (real event shapes), the upload API the account page
calls (presigned POST, status) and the coverage timeline."""

from __future__ import annotations

import base64
import json
import zipfile
from datetime import UTC, datetime, timedelta
from io import BytesIO

import boto3
import pytest
from aws_lambda_powertools.utilities.parser import ValidationError

from playvault import clock, coverage, imports, jobs, store
from playvault.config import ImporterSettings
from playvault.store import gaps, plays, users
from playvault_local.events import s3_object_created_event
from spotify_emulator import catalog as emulator_catalog
from tests.unit.helpers import UPLOAD_ID_KEY, ImportContinuations, sqs_follows, upload_export

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def export_zip(n: int) -> bytes:
    rows = []
    for k in range(n):
        t = emulator_catalog.track(7, k)
        rows.append({"ts": (datetime(2020, 1, 1, tzinfo=UTC) + timedelta(minutes=4 * k)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                     "ms_played": 120_000, "spotify_track_uri": t["uri"], "master_metadata_track_name": t["name"],
                     "master_metadata_album_artist_name": t["artists"][0]["name"], "incognito_mode": False})
    buffer = BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("Spotify Extended Streaming History/Streaming_History_Audio_2020.json", json.dumps(rows))
    return buffer.getvalue()


def test_an_s3_event_starts_the_job_and_continuations_finish_it(aws_env, load_function, lambda_context,
                                                                lambda_invocations):
    clock.set_clock(lambda: NOW)
    handler = load_function("ImporterFunction")
    store.bind(ImporterSettings.from_env())
    users.UserModel("alice", status=users.ACTIVE, created_at=NOW).save()
    s3 = boto3.client("s3")
    bucket = aws_env.name("UserFilesBucket")
    _key, event = upload_export(s3, bucket, "alice", NOW, export_zip(30), "my_spotify_data.zip")
    # Under MIN_REMAINING_MS from the start: one step (a chunk, a track) per invocation, the rest
    # continued through the jobs queue, whose function hands each continuation back to the importer.
    context = lambda_context("ImporterFunction")
    context.get_remaining_time_in_millis = lambda: 29_000
    answer = handler(event, context)
    assert answer["status"] == "continue"
    delivery = ImportContinuations(aws_env, load_function, lambda_context, lambda_invocations, handler, context)
    continued = delivery.drain()
    [status] = imports.status_for_user("alice", NOW)
    assert status["state"] == "done" and status["plays_added"] == 30 and status["tracks_resolved"] == 30
    assert status["file_name"] == "my_spotify_data.zip"
    assert continued >= 29 and delivery.outcomes[-1]["status"] == "done"
    assert delivery.messages == continued + 1  # and the rebuild of the rollups the import started
    assert len(list(plays.all_plays("alice"))) == 30
    # The same event again (EventBridge delivers at least once): the job exists, nothing changes.
    handler(event, lambda_context("ImporterFunction"))
    assert len(list(plays.all_plays("alice"))) == 30
    assert imports.status_for_user("alice", NOW)[0]["plays_added"] == 30


def test_an_import_paused_for_hours_by_a_429_resumes_through_the_jobs_queue(aws_env, load_function, lambda_context,
                                                                              lambda_invocations, emulator,
                                                                              monkeypatch):
    """Spotify answers a catalog lookup 429 with Retry-After: 2 hours. The job pauses; its continuation
    waits on the jobs queue past SQS's 15-minute delay cap (not_before: the jobs function sends it on
    at each delivery), and the importer is invoked only when the pause is over: it resumes, looks
    each track up once, and ends done."""
    now = [NOW]
    clock.set_clock(lambda: now[0])
    sqs_follows(monkeypatch, lambda: now[0])
    handler = load_function("ImporterFunction")
    store.bind(ImporterSettings.from_env())
    users.UserModel("alice", status=users.ACTIVE, created_at=NOW).save()
    emulator.state.inject("/v1/tracks/", 429, times=1, retry_after=7200)
    _key, event = upload_export(boto3.client("s3"), aws_env.name("UserFilesBucket"), "alice", NOW, export_zip(3))
    assert handler(event, lambda_context("ImporterFunction"))["status"] == "paused"
    delivery = ImportContinuations(aws_env, load_function, lambda_context, lambda_invocations, handler)
    while imports.status_for_user("alice", now[0])[0]["state"] != "done":
        assert now[0] < NOW + timedelta(hours=3), "the paused import never resumed"
        before = delivery.handed_over
        if not delivery.step():  # nothing visible: SQS's delay runs (at most 15 minutes a time)
            now[0] += timedelta(minutes=5)
        elif delivery.handed_over > before:
            assert now[0] >= NOW + timedelta(seconds=7200 - jobs.NOT_BEFORE_SLACK_S)  # never invoked early
    assert delivery.handed_over == 1 and delivery.outcomes == [delivery.outcomes[0]]
    assert delivery.outcomes[0]["status"] == "done" and delivery.messages >= 8  # 2 hours, 15 minutes a hop
    [status] = imports.status_for_user("alice", now[0])
    assert status["plays_added"] == 3 and status["tracks_resolved"] == 3
    assert emulator.state.request_counts()["track"] == 4  # the refused lookup again, then the rest: none twice


def test_an_event_that_is_neither_an_upload_nor_a_continuation_fails_naming_the_problem(aws_env, load_function,
                                                                                        lambda_context):
    """Lambda retries a failed asynchronous event twice, then its record goes to the dead-letter
    queue: the error must say what was wrong, and nothing is written."""
    handler = load_function("ImporterFunction")
    with pytest.raises(ValidationError, match="job_id"):
        handler({"user_id": "alice"}, lambda_context("ImporterFunction"))
    with pytest.raises(ValidationError, match="kind"):
        handler({"user_id": "alice", "job_id": "j", "kind": "import"}, lambda_context("ImporterFunction"))
    assert imports.status_for_user("alice", NOW) == []


def test_a_continuation_aws_interrupts_is_tried_again_later_through_the_jobs_queue(aws_env, load_function,
                                                                                  lambda_context, monkeypatch):
    """Not by Lambda's two retries a minute or two apart: the job notes the attempt (the third in a row
    fails it, naming why) and its next try comes AWS_RETRY_DELAY_S later."""
    from botocore.exceptions import ClientError

    clock.set_clock(lambda: NOW)
    handler = load_function("ImporterFunction")
    store.bind(ImporterSettings.from_env())
    users.UserModel("alice", status=users.ACTIVE, created_at=NOW).save()
    key, event = upload_export(boto3.client("s3"), aws_env.name("UserFilesBucket"), "alice", NOW, export_zip(3))
    from playvault.imports.job import job_for_key
    from playvault.store import imports as import_jobs

    user_id, job_id = job_for_key(key)
    import_jobs.create(user_id, job_id, key, 10, NOW, file_name="x.zip")
    throttled = ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}},
                            "BatchWriteItem")
    monkeypatch.setattr(plays, "write_rows", lambda rows: (_ for _ in ()).throw(throttled))
    answer = handler({"user_id": user_id, "job_id": job_id}, lambda_context("ImporterFunction"))
    assert answer == {"status": "retry", "delay_s": 600}
    job = import_jobs.get(user_id, job_id)
    assert job.state == "running" and job.lease_token is None and job.attempts == 1
    sqs = boto3.client("sqs")
    attributes = sqs.get_queue_attributes(QueueUrl=aws_env.queue_url("JobsQueue"),
                                          AttributeNames=["ApproximateNumberOfMessagesDelayed"])["Attributes"]
    assert attributes["ApproximateNumberOfMessagesDelayed"] == "1"


def test_the_presigned_post_fixes_the_key_and_caps_size_and_encryption(aws_env):
    s3 = boto3.client("s3")
    upload = imports.presigned_upload(s3, aws_env.name("UserFilesBucket"), "alice", NOW, upload_key=UPLOAD_ID_KEY)
    assert upload["key"] == f"imports/alice/{upload['upload_id']}/export"
    assert imports.SAFE_KEY.fullmatch(upload["key"])  # nothing any encoding changes
    assert imports.upload_issued_to("alice", upload["upload_id"], UPLOAD_ID_KEY)
    assert upload["fields"]["key"] == upload["key"]
    assert upload["fields"]["x-amz-server-side-encryption"] == "AES256"
    assert upload["fields"]["x-amz-meta-file-name"] == "${filename}"  # S3 fills in the file's name
    policy = json.loads(base64.b64decode(upload["fields"]["policy"]))
    assert ["content-length-range", 1, 200 * 1024 * 1024] in policy["conditions"]
    assert {"key": upload["key"]} in policy["conditions"]
    assert {"x-amz-server-side-encryption": "AES256"} in policy["conditions"]
    for bad in ("../bob", "a/b", ""):
        try:
            imports.presigned_upload(s3, aws_env.name("UserFilesBucket"), bad, NOW, upload_key=UPLOAD_ID_KEY)
        except imports.BadUserId:
            continue
        raise AssertionError(f"{bad!r} accepted")


def test_a_planted_object_in_a_classic_notification_encoding_fails_its_job(aws_env, load_function, lambda_context):
    """An object under alice's prefix whose upload id is not hers: the function answers normally (no
    retry, nothing for an alarm), the job is failed with the reason, nothing is imported."""
    clock.set_clock(lambda: NOW)
    handler = load_function("ImporterFunction")
    store.bind(ImporterSettings.from_env())
    users.UserModel("alice", status=users.ACTIVE, created_at=NOW).save()
    s3, bucket = boto3.client("s3"), aws_env.name("UserFilesBucket")
    stolen = imports.issue_upload_id("bob", NOW, UPLOAD_ID_KEY)
    key = f"imports/alice/{stolen}/evil data.json"
    put = s3.put_object(Bucket=bucket, Key=key, Body=b"[]")
    event = s3_object_created_event(bucket, key.replace(" ", "+"), 2, put["ETag"], NOW)
    answer = handler(event, lambda_context("ImporterFunction"))
    assert answer["status"] == "failed" and "not issued to this user" in answer["reason"]
    [job] = imports.status_for_user("alice", NOW)
    assert job["state"] == "failed" and "not issued to this user" in job["error"]["message"]
    assert list(plays.all_plays("alice")) == []
    sqs = boto3.client("sqs")
    assert sqs.receive_message(QueueUrl=aws_env.queue_url("JobsQueue")).get("Messages") is None


def test_coverage_shows_polling_import_and_neither(aws_env, monkeypatch):
    from playvault.config import ImportStatusSettings

    # The page's function gets these from the template (the poll path sets GAPS_TABLE).
    monkeypatch.setenv("GAPS_TABLE", aws_env.name("GapsTable"))
    store.bind(ImportStatusSettings.from_env())
    signed_up = datetime(2026, 1, 1, tzinfo=UTC)
    users.UserModel("alice", status=users.ACTIVE, created_at=signed_up).save()
    plays.PlayModel("alice", "2026-01-01T00:00:00.000Z", played_at_ms=clock.to_ms(signed_up), track_id="t" * 22).save()
    gap = (clock.to_ms(datetime(2026, 2, 1, tzinfo=UTC)), clock.to_ms(datetime(2026, 2, 3, tzinfo=UTC)))
    gaps.GapModel("alice", "2026-02-01T00:00:00.000Z", to_at="2026-02-03T00:00:00.000Z", from_ms=gap[0],
                  to_ms=gap[1]).save()
    data = coverage.timeline("alice", NOW)
    assert [s["kind"] for s in data["segments"]] == ["polling", "none", "polling"]
    from playvault.store import imports as imports_store

    imports_store.ImportModel("alice", "job#x", state="done", first_ms=clock.to_ms(datetime(2024, 1, 1, tzinfo=UTC)),
                              last_ms=clock.to_ms(datetime(2026, 2, 10, tzinfo=UTC))).save()
    data = coverage.timeline("alice", NOW)
    assert [s["kind"] for s in data["segments"]] == ["import", "polling", "import", "polling"]
    assert data["gaps"] == [{"from_ms": gap[0], "to_ms": gap[1], "filled_by_import": True}]
    svg = coverage.render_svg(data)
    assert svg.startswith("<svg") and svg.count('class="segment') == 4 and "2025" in svg


def test_coverage_build_marks_uncovered_time_between_an_import_and_sign_up():
    day = 86_400_000
    data = coverage.build((10 * day, 20 * day), [], [(0, 5 * day)], 20 * day)
    assert [(s["kind"], s["from_ms"] // day, s["to_ms"] // day) for s in data["segments"]] == [
        ("import", 0, 5), ("none", 5, 10), ("polling", 10, 20)]
    assert data["totals_ms"] == {"import": 5 * day, "none": 5 * day, "polling": 10 * day}
    assert coverage.render_svg(coverage.build(None, [], [], 0)).count("nothing archived yet") == 1
