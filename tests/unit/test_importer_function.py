"""functions/importer as Lambda calls it (real event shapes), the upload API the account page
calls (presigned POST, status) and the coverage timeline."""

from __future__ import annotations

import base64
import json
import zipfile
from datetime import UTC, datetime, timedelta
from io import BytesIO

import boto3

from playvault import clock, coverage, imports, store
from playvault.config import ImporterSettings
from playvault.store import gaps, plays, users
from playvault_local.events import s3_object_created_event, sqs_event
from spotify_emulator import catalog as emulator_catalog
from tests.unit.helpers import UPLOAD_ID_KEY, upload_export

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


def test_an_s3_event_starts_the_job_and_continuations_finish_it(aws_env, load_function, lambda_context):
    clock.set_clock(lambda: NOW)
    handler = load_function("ImporterFunction")
    store.bind(ImporterSettings.from_env())
    users.UserModel("alice", status=users.ACTIVE, created_at=NOW).save()
    s3, sqs = boto3.client("s3"), boto3.client("sqs")
    bucket = aws_env.name("UserFilesBucket")
    _key, event = upload_export(s3, bucket, "alice", NOW, export_zip(30), "my_spotify_data.zip")
    # Under MIN_REMAINING_MS from the start: one step (a chunk, a track) per invocation, the rest
    # continued through the import queue.
    context = lambda_context("ImporterFunction")
    context.get_remaining_time_in_millis = lambda: 29_000
    answer = handler(event, context)
    assert answer["status"] == "continue"
    queue_url, queue_arn = aws_env.queue_url("ImportQueue"), aws_env.physical["ImportQueue"]["Arn"]
    continued = 0
    for _ in range(60):
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1, AttributeNames=["All"]).get("Messages")
        if not got:
            break
        continued += 1
        result = handler(sqs_event(got, queue_arn), context)
        assert result == {"batchItemFailures": []}
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=got[0]["ReceiptHandle"])
    [status] = imports.status_for_user("alice", NOW)
    assert status["state"] == "done" and status["plays_added"] == 30 and status["tracks_resolved"] == 30
    assert status["file_name"] == "my_spotify_data.zip"
    assert continued >= 29
    assert len(list(plays.all_plays("alice"))) == 30
    # The same event again (EventBridge delivers at least once): the job exists, nothing changes.
    handler(event, lambda_context("ImporterFunction"))
    assert len(list(plays.all_plays("alice"))) == 30
    assert imports.status_for_user("alice", NOW)[0]["plays_added"] == 30


def test_an_upload_event_redriven_from_the_dead_letter_queue_starts_its_job(aws_env, load_function, lambda_context):
    """Lambda sends its record of an upload event whose invocations all failed to the importer's
    dead-letter queue (template: EventInvokeConfig OnFailure); an operator redrives it to the import
    queue, which starts the job."""
    from playvault_local.eventsource import on_failure_record

    clock.set_clock(lambda: NOW)
    handler = load_function("ImporterFunction")
    store.bind(ImporterSettings.from_env())
    users.UserModel("alice", status=users.ACTIVE, created_at=NOW).save()
    s3, bucket = boto3.client("s3"), aws_env.name("UserFilesBucket")
    key = f"imports/alice/{imports.issue_upload_id('alice', NOW, UPLOAD_ID_KEY)}/export"
    put = s3.put_object(Bucket=bucket, Key=key, Body=export_zip(3))
    event = s3_object_created_event(bucket, key, 10, put["ETag"], NOW)
    record = on_failure_record(event, RuntimeError("DynamoDB unavailable"), 3, "ImporterFunction")
    redriven = {"MessageId": "m1", "ReceiptHandle": "r1", "Body": json.dumps(record), "Attributes": {},
                "MD5OfBody": "x"}
    answer = handler(sqs_event([redriven], aws_env.physical["ImportQueue"]["Arn"]), lambda_context("ImporterFunction"))
    assert answer == {"batchItemFailures": []}
    [job] = imports.status_for_user("alice", NOW)
    assert job["state"] != "failed" and job["rows_read"] == 3


def test_the_importer_dead_letters_its_upload_events_where_the_alarm_looks():
    from playvault_local import template as tpl

    resources = tpl.load()["Resources"]
    on_failure = resources["ImporterFunction"]["Properties"]["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]
    assert on_failure == {"Type": "SQS", "Destination": {"Fn::GetAtt": ["ImportDeadLetterQueue", "Arn"]}}
    watched = [m["MetricStat"]["Metric"]["Dimensions"][0]["Value"]
               for m in resources["DeadLetterQueueAlarm"]["Properties"]["Metrics"] if "MetricStat" in m]
    assert {"Fn::GetAtt": ["ImportDeadLetterQueue", "QueueName"]} in watched


def test_a_malformed_continuation_fails_only_its_record(aws_env, load_function, lambda_context):
    handler = load_function("ImporterFunction")
    message = {"MessageId": "m1", "ReceiptHandle": "r1", "Body": '{"user_id": "alice"}', "Attributes": {},
               "MD5OfBody": "x"}
    answer = handler(sqs_event([message], aws_env.physical["ImportQueue"]["Arn"]), lambda_context("ImporterFunction"))
    assert answer == {"batchItemFailures": [{"itemIdentifier": "m1"}]}


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
    assert sqs.receive_message(QueueUrl=aws_env.queue_url("ImportQueue")).get("Messages") is None


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
