"""The scheduled pipeline end to end on real servers: moto_server (its own process, provisioned from
template.yaml) and the Spotify emulator over HTTP.

dispatcher (scheduled event) -> SQS work queue (DelaySeconds, redrive to the DLQ) -> worker, invoked
with the messages received from the queue the way Lambda's SQS poller does: successful ones are
deleted, the ones named in batchItemFailures come back (their visibility timeout is cut short here
so the test does not wait 12 minutes) and, after maxReceiveCount receives, land in the DLQ.
"""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from playvault import store
from playvault.config import TableSettings
from playvault_local import provision as prov
from playvault_local.lambda_runtime import context_for, load_handler
from tests.conftest import stack_parameters
from tests.unit.test_worker import make_cipher, onboard, truth_ms

EVENTS = Path(__file__).resolve().parents[1] / "events"
USERS = 200
PARAMETERS = {
    "DispatchPeriodMinutes": "2",  # the shortest period: two batches of 100, due at ~60 s and ~120 s
    "BatchSize": "100",
    "MaxReceiveCount": "2",
}


@pytest.fixture
def stack(moto_reset: str, emulator: Any, monkeypatch: pytest.MonkeyPatch) -> prov.Stack:
    stack = prov.provision(endpoint_url=moto_reset, parameters=stack_parameters(emulator.url, **PARAMETERS))
    for key, value in stack.env.items():
        monkeypatch.setenv(key, value)
    store.bind(TableSettings.from_env())
    from aws_lambda_powertools.utilities import parameters

    parameters.clear_caches()
    return stack


def _listen(state: Any, user_ids: list[str], seed: int = 3) -> None:
    """Up to ~2 hours of listening per user (at most 40 plays: all inside Spotify's 50-play window).

    Tracks come from a pool of 60 so the shared catalog fills quickly: this test is about the
    pipeline, and moto_server takes ~10 ms a write.
    """
    rng = random.Random(seed)
    now = datetime.now(UTC)
    for user_id in user_ids:
        at = now - timedelta(hours=2)
        for _ in range(rng.randrange(5, 41)):
            at += timedelta(seconds=rng.uniform(35, 170))
            state.add_play(user_id, at, track_index=rng.randrange(60), local=rng.random() < 0.05,
                           whole_second=rng.random() < 0.3)


def _lambda_event(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    """What Lambda's SQS poller hands the function for these received messages."""
    return {"Records": [{
        "messageId": m["MessageId"],
        "receiptHandle": m["ReceiptHandle"],
        "body": m["Body"],
        "attributes": {k: m["Attributes"][k] for k in ("ApproximateReceiveCount", "SentTimestamp", "SenderId",
                                                       "ApproximateFirstReceiveTimestamp")},
        "messageAttributes": {},
        "md5OfBody": m["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": prov.LOCAL_REGION,
    } for m in messages]}


def _stored_plays(table: str) -> dict[str, list[int]]:
    """Every stored play, by user (one paginated scan: faster than a query per user here)."""
    stored: dict[str, list[int]] = {}
    pages = boto3.client("dynamodb").get_paginator("scan").paginate(
        TableName=table, ProjectionExpression="user_id, played_at_ms")
    for page in pages:
        for item in page["Items"]:
            stored.setdefault(item["user_id"]["S"], []).append(int(item["played_at_ms"]["N"]))
    return {user: sorted(ms) for user, ms in stored.items()}


def _queue_empty(sqs: Any, url: str) -> bool:
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
             "ApproximateNumberOfMessagesDelayed"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return all(int(attrs.get(name, 0)) == 0 for name in names)


def test_every_emulated_play_is_archived_exactly_once(stack, emulator):
    ids = [f"listener{i:03d}" for i in range(USERS)]
    onboard(emulator, stack, ids, listen_hours=0, cipher=make_cipher())
    _listen(emulator.state, ids)
    emulator.state.reset_counts()

    sqs = boto3.client("sqs")
    queue_url = stack.queue_url("WorkQueue")
    queue_arn = stack.physical["WorkQueue"]["Arn"]
    dlq_url = stack.queue_url("DeadLetterQueue")

    dispatcher = load_handler(stack.functions["DispatcherFunction"], stack.layer_paths)
    worker = load_handler(stack.functions["WorkerFunction"], stack.layer_paths)

    scheduled = json.loads((EVENTS / "eventbridge_scheduled.json").read_text())
    scheduled["time"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    report = dispatcher(scheduled, context_for(stack.functions["DispatcherFunction"]))
    assert (report["considered"], report["dispatched"], report["messages_sent"]) == (USERS, USERS, 2)

    poison = "this is not a work message"
    sqs.send_message(QueueUrl=queue_url, MessageBody=poison)
    duplicated = False
    deadline = time.monotonic() + 240  # the second batch is due at the end of the 2-minute period
    while time.monotonic() < deadline:
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=5, WaitTimeSeconds=1,
                                  AttributeNames=["All"]).get("Messages", [])
        if not got:
            if _queue_empty(sqs, queue_url):
                break
            continue
        response = worker(_lambda_event(got, queue_arn), context_for(stack.functions["WorkerFunction"]))
        failed = {item["itemIdentifier"] for item in response["batchItemFailures"]}
        assert not failed, "no message fails: the poison one goes straight to the DLQ"
        done = [m for m in got if m["MessageId"] not in failed]
        if done:
            sqs.delete_message_batch(QueueUrl=queue_url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)])
        for message in got:
            if message["MessageId"] in failed:  # its visibility timeout "expires" now
                sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"],
                                              VisibilityTimeout=0)
        if not duplicated:
            work = next((m for m in done if m["Body"] != poison), None)
            if work is not None:  # at-least-once delivery: the same work message arrives again
                sqs.send_message(QueueUrl=queue_url, MessageBody=work["Body"])
                duplicated = True
    else:
        pytest.fail("the queue did not drain in time")

    assert duplicated
    stored = _stored_plays(stack.name("PlaysTable"))
    for user_id in ids:
        truth = truth_ms(emulator, user_id)
        assert truth, f"{user_id} listened to nothing"
        assert stored.get(user_id) == truth, user_id
    assert sorted(stored) == ids
    counts = emulator.state.request_counts()
    assert counts["recently_played"] == USERS, "each user polled once: the duplicate was skipped"
    assert counts["token"] == USERS

    dead = sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
    assert [m["Body"] for m in dead] == [poison]
