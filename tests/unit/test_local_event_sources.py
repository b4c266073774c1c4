"""The local runner's EventBridge rule on S3 (moto sends no S3 events): the template's pattern
decides which objects start the importer, and a function error is retried as Lambda retries an
asynchronous invocation (twice, after 1 and 2 minutes), then put in the function's dead-letter
queue as Lambda's on-failure record (dropped without a destination) and said."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import boto3
import pytest

from playvault_local import template as tpl
from playvault_local.events import s3_object_created_event
from playvault_local.eventsource import S3EventRule, check_pattern, matches
from playvault_local.system import LocalSystem, S3RuleSpec, StartupError, SystemConfig

BUCKET = "playvault-local-userfilesbucket"
MOMENT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _importer_rule() -> dict[str, Any]:
    """The importer's "Uploaded" rule from template.yaml, its !Ref resolved to the local bucket."""
    template = tpl.load()
    event = template["Resources"]["ImporterFunction"]["Properties"]["Events"]["Uploaded"]["Properties"]
    resolver = tpl.Resolver(template, {"UserFilesBucket": {"Ref": BUCKET}})
    return resolver.value(event["Pattern"])


def test_the_importer_rule_matches_uploads_only():
    pattern = _importer_rule()
    upload = s3_object_created_event(BUCKET, "imports/alice/20261201T120000Z-0a1b2c3d/my_spotify_data.zip", 10,
                                     '"etag"', MOMENT)
    assert matches(pattern, upload)
    assert not matches(pattern, s3_object_created_event(BUCKET, "exports/alice/e1.csv", 10, "e", MOMENT))
    assert not matches(pattern, s3_object_created_event("another-bucket", upload["detail"]["object"]["key"], 10,
                                                        "e", MOMENT))
    assert not matches(pattern, {**upload, "detail-type": "Object Deleted"})


def test_pattern_operators():
    event = {"source": "aws.s3", "detail": {"object": {"key": "a/b.zip", "size": 3}, "tags": ["x", "y"]}}
    assert matches({"detail": {"object": {"key": [{"suffix": ".zip"}]}}}, event)
    assert not matches({"detail": {"object": {"key": [{"suffix": ".json"}]}}}, event)
    assert matches({"detail": {"object": {"etag": [{"exists": False}]}}}, event)
    assert not matches({"detail": {"object": {"key": [{"exists": False}]}}}, event)
    assert matches({"source": [{"anything-but": ["aws.ec2"]}]}, event)
    assert not matches({"source": [{"anything-but": "aws.s3"}]}, event)
    assert matches({"detail": {"tags": [{"anything-but": "x"}]}}, event)  # an array: one value outside will do
    assert not matches({"detail": {"tags": [{"anything-but": ["x", "y"]}]}}, event)
    assert not matches({"detail": {"bucket": {"name": ["x"]}}}, event)  # a field the event lacks


@pytest.mark.parametrize("pattern", [{"detail": {"size": [{"numeric": [">", 1]}]}},
                                     {"source": [{"anything-but": {"prefix": "aws."}}]},
                                     {"source": "aws.s3"}])
def test_a_pattern_the_local_rule_cannot_evaluate_fails_the_start(pattern):
    with pytest.raises(StartupError, match="not supported locally|neither an object"):
        check_pattern(pattern)
    system = SimpleNamespace(stack=SimpleNamespace(resolver=tpl.Resolver({}, {})), handlers={"F": None}, s3=None)
    with pytest.raises(StartupError):
        S3EventRule(system, S3RuleSpec("F", {**pattern, "detail": {**pattern.get("detail", {}),  # type: ignore[arg-type]
                                                                   "bucket": {"name": [BUCKET]}}}))


class _Clock:
    def __init__(self):
        self.at = MOMENT

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


def _rule_on(s3: Any, handler: Any, now: _Clock, on_failure_arn: str | None = None) -> S3EventRule:
    system = SimpleNamespace(stack=SimpleNamespace(resolver=tpl.Resolver({}, {})), handlers={"Importer": handler},
                             s3=s3, sqs=boto3.client("sqs"), now=now, context=lambda _logical_id: None)
    spec = S3RuleSpec("Importer", _importer_rule(), on_failure_arn)
    return S3EventRule(system, spec)  # type: ignore[arg-type]


def test_each_new_upload_is_delivered_once_and_a_failure_is_retried_as_lambda_retries(aws_env):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="imports/alice/old/before.zip", Body=b"x")  # there before the rule
    delivered: list[str] = []
    failing = {"imports/bob/u2/export.zip": 2}  # fails twice, then succeeds

    def handler(event: dict[str, Any], _context: Any) -> None:
        key = event["detail"]["object"]["key"]
        delivered.append(key)
        if failing.get(key):
            failing[key] -= 1
            raise RuntimeError("the importer crashed")

    clock = _Clock()
    rule = _rule_on(s3, handler, clock)
    assert rule.poll_once() == 0
    s3.put_object(Bucket=BUCKET, Key="imports/alice/u1/my_spotify_data.zip", Body=b"zip")
    s3.put_object(Bucket=BUCKET, Key="exports/alice/e1.csv", Body=b"csv")  # not the rule's prefix
    s3.put_object(Bucket=BUCKET, Key="imports/bob/u2/export.zip", Body=b"zip")
    assert rule.poll_once() == 1  # alice's; bob's failed
    assert rule.poll_once() == 0 and len(delivered) == 2  # the retry waits a minute
    clock.advance(60)
    assert rule.poll_once() == 0 and len(delivered) == 3  # failed again; the next retry in two minutes
    clock.advance(119)
    assert rule.poll_once() == 0 and len(delivered) == 3
    clock.advance(1)
    assert rule.poll_once() == 1
    clock.advance(3600)
    assert rule.poll_once() == 0
    assert delivered == ["imports/alice/u1/my_spotify_data.zip"] + ["imports/bob/u2/export.zip"] * 3
    assert rule.failures == ["imports/bob/u2/export.zip: RuntimeError: the importer crashed"] * 2


def test_an_event_failing_its_retries_goes_to_the_dead_letter_queue_and_is_said(aws_env):
    s3, sqs = boto3.client("s3"), boto3.client("sqs")
    s3.create_bucket(Bucket=BUCKET)
    dlq_url = sqs.create_queue(QueueName="importer-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    def handler(event: dict[str, Any], _context: Any) -> None:
        raise RuntimeError("DynamoDB unavailable")

    clock = _Clock()
    rule = _rule_on(s3, handler, clock, on_failure_arn=dlq_arn)
    s3.put_object(Bucket=BUCKET, Key="imports/alice/u1/export", Body=b"zip")
    for _ in range(2):
        rule.poll_once()
        clock.advance(120)
    assert sqs.receive_message(QueueUrl=dlq_url).get("Messages") is None  # retries still to come
    for _ in range(4):
        rule.poll_once()
        clock.advance(120)
    [message] = sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10)["Messages"]
    record = json.loads(message["Body"])  # Lambda's on-failure record: the event and the error
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["responsePayload"]["errorMessage"] == "DynamoDB unavailable"
    event = record["requestPayload"]
    assert event["detail-type"] == "Object Created" and event["detail"]["object"]["key"] == "imports/alice/u1/export"
    assert rule.dead_lettered == ["imports/alice/u1/export"] and len(rule.failures) == 3


def test_an_event_failing_its_retries_is_dropped_and_said(aws_env):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    calls: list[str] = []

    def handler(event: dict[str, Any], _context: Any) -> None:
        calls.append(event["detail"]["object"]["key"])
        raise ValueError("not a ZIP")

    clock = _Clock()
    rule = _rule_on(s3, handler, clock)
    s3.put_object(Bucket=BUCKET, Key="imports/alice/u1/a.zip", Body=b"zip")
    outcomes = []
    for _ in range(6):
        outcomes.append(rule.poll_once())
        clock.advance(120)
    assert outcomes == [0] * 6 and len(calls) == 3  # the first attempt and Lambda's two retries
    assert len(rule.failures) == 3 and rule.stats.function_errors == {"ValueError": 3}


def test_a_rule_naming_no_bucket_is_a_startup_error():
    system = SimpleNamespace(stack=SimpleNamespace(resolver=tpl.Resolver({}, {})), handlers={"F": None}, s3=None)
    with pytest.raises(StartupError, match="names no bucket"):
        S3EventRule(system, S3RuleSpec("F", {"source": ["aws.s3"]}))  # type: ignore[arg-type]


def test_the_local_system_reads_the_importer_rule_from_the_template():
    system = LocalSystem(SystemConfig())  # nothing started: the template is only read
    system._read_event_sources(tpl.load())
    assert [r.function for r in system.s3_rules] == ["ImporterFunction"]
    assert system.import_function == "ImporterFunction"
    # Its continuations travel on the queue it sends to, whose function hands them back (jobs).
    assert (system.import_source.queue_logical_id, system.import_source.function) == ("JobsQueue", "JobsFunction")
    assert system.event_source.function == "WorkerFunction"
