"""One dead-letter queue for everything that can fail every delivery: the work queue, the jobs queue
(exports, deletions, rollups, import continuations) and the importer's asynchronous invocations (its
on-failure destination). Each message in it still says where it came from, and the importer's record
replays as README.md, Redrive the dead-letter queue says."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace

import boto3

from playvault import clock, imports, store
from playvault.config import ImporterSettings
from playvault.jobs import JobMessage
from playvault.queue import WorkMessage
from playvault.store import users
from playvault_local import template as tpl
from playvault_local.eventsource import ASYNC_RETRY_DELAYS_S, AsyncInvocations
from playvault_local.system import LocalSystem
from tests.unit.helpers import upload_export
from tests.unit.test_importer_function import export_zip

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def _deliveries_fail(sqs, url: str, times: int) -> None:
    for _ in range(times):  # received and never deleted: every delivery failed
        sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0)


def _async_invocations(aws_env, handlers: dict, now) -> AsyncInvocations:
    """The local system's asynchronous invocations over this stack (no moto_server, no runner)."""
    sqs = boto3.client("sqs")
    system = SimpleNamespace(stack=aws_env, handlers=handlers, sqs=sqs, now=now,
                             context=lambda function: None)
    system.on_failure_target = lambda function: LocalSystem.on_failure_target(system, function)  # the template's
    return AsyncInvocations(system)  # type: ignore[arg-type]


def test_every_queue_and_the_importer_fail_into_the_one_dead_letter_queue_which_one_metric_watches():
    resources = tpl.load()["Resources"]
    queues = tpl.resources_of_type({"Resources": resources}, "AWS::SQS::Queue")
    redrives = {q: (r.get("Properties") or {}).get("RedrivePolicy", {}).get("deadLetterTargetArn")
                for q, r in queues.items() if q != "DeadLetterQueue"}
    assert redrives == {"WorkQueue": {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]},
                        "JobsQueue": {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}}
    destinations = {f: r["Properties"]["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]["Destination"]
                    for f, r in tpl.resources_of_type({"Resources": resources}, "AWS::Serverless::Function").items()
                    if "EventInvokeConfig" in r["Properties"]}
    assert destinations == {"ImporterFunction": {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}}
    alarm = resources["DeadLetterQueueAlarm"]["Properties"]
    assert "Metrics" not in alarm  # one metric, not a metric-math sum of several (each billed)
    assert (alarm["Namespace"], alarm["MetricName"]) == ("AWS/SQS", "ApproximateNumberOfMessagesVisible")
    assert alarm["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["DeadLetterQueue", "QueueName"]}}]
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanThreshold", 0)


def test_the_dead_letter_queue_receives_failures_from_each_source_and_each_says_where_it_came_from(
        aws_env, load_function, lambda_context):
    clock.set_clock(lambda: NOW)
    sqs = boto3.client("sqs")
    max_receives = int(aws_env.resolver.parameters["MaxReceiveCount"])
    work = WorkMessage(users=["alice"], not_before=0, window_id="2026-05-01T12:00Z").body()
    job = JobMessage(kind="import", user_id="alice", import_job_id="job#1", not_before=0).model_dump_json()
    sqs.send_message(QueueUrl=aws_env.queue_url("WorkQueue"), MessageBody=work)
    sqs.send_message(QueueUrl=aws_env.queue_url("JobsQueue"), MessageBody=job)
    for queue in ("WorkQueue", "JobsQueue"):
        _deliveries_fail(sqs, aws_env.queue_url(queue), max_receives + 1)  # SQS moves it on the next receive

    # An upload event the importer failed on three times (DynamoDB down): Lambda's record goes there too.
    store.bind(ImporterSettings.from_env())
    users.UserModel("alice", status=users.ACTIVE, created_at=NOW).save()
    _key, event = upload_export(boto3.client("s3"), aws_env.name("UserFilesBucket"), "alice", NOW, export_zip(3))
    now = [NOW.timestamp()]
    calls = []

    def failing(event, context):
        calls.append(now[0])
        raise RuntimeError("DynamoDB unavailable")

    invocations = _async_invocations(aws_env, {"ImporterFunction": failing},
                                     lambda: datetime.fromtimestamp(now[0], UTC))
    assert invocations.accept(aws_env.name("ImporterFunction"), "Event", json.dumps(event).encode()) == 202
    while invocations.next_due() is not None:
        now[0] = max(now[0], invocations.next_due())
        invocations.poll_once()
    assert [round(c - NOW.timestamp()) for c in calls] == [0, *[round(sum(ASYNC_RETRY_DELAYS_S[:k + 1]))
                                                               for k in range(2)]]

    got = sqs.receive_message(QueueUrl=aws_env.queue_url("DeadLetterQueue"), MaxNumberOfMessages=10,
                              AttributeNames=["All"])["Messages"]
    bodies = [json.loads(m["Body"]) for m in got]
    assert sorted(json.dumps(b, sort_keys=True) for b in bodies if "requestPayload" not in b) == sorted(
        json.dumps(json.loads(b), sort_keys=True) for b in (work, job))  # their bodies, as sent
    [record] = [b for b in bodies if "requestPayload" in b]
    assert record["requestPayload"] == event and record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["responsePayload"]["errorMessage"] == "DynamoDB unavailable"

    # README: an importer's record is replayed by invoking the importer with its requestPayload.
    importer = load_function("ImporterFunction")
    answer = importer(record["requestPayload"], lambda_context("ImporterFunction"))
    assert answer["status"] in ("continue", "done")
    [status] = imports.status_for_user("alice", NOW)
    assert status["rows_read"] == 3
