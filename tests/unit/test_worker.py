"""The worker: SQS work messages -> archive_batch, with real event shapes, moto and the Spotify emulator.

The helpers at the top (clock, users with real OAuth refresh tokens, SQS events) are shared by the
dispatch, rate-gate and pipeline tests.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import secrets
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
import requests
from botocore.exceptions import ClientError

from playvault import clock
from playvault.archive import SUCCESS, ArchiveResult
from playvault.batch import archive_batch
from playvault.crypto import TokenCipher
from playvault.queue import WorkMessage
from playvault.spotify import Budget
from playvault.store import plays, users
from playvault_local.lambda_runtime import LambdaContext
from tests.unit.helpers import sealed_fields

EVENTS = Path(__file__).resolve().parents[1] / "events"
REDIRECT_URI = "http://127.0.0.1:8765/auth/callback"
T0 = datetime(2025, 3, 14, 9, 5, tzinfo=UTC)


# ---------------------------------------------------------------- helpers (shared)
class FakeClock:
    """One clock for PlayVault (playvault.clock) and the emulator."""

    def __init__(self, start: datetime = T0):
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self.now

    def advance(self, **delta: float) -> datetime:
        with self._lock:
            self.now += timedelta(**delta)
            return self.now

    def set(self, moment: datetime) -> None:
        with self._lock:
            self.now = moment


def install_clock(emulator_state: Any, start: datetime = T0) -> FakeClock:
    fake = FakeClock(start)
    clock.set_clock(fake)
    emulator_state.clock = fake
    return fake


def refresh_token_for(accounts_url: str, user_id: str, client_id: str, client_secret: str,
                      session: requests.Session | None = None) -> str:
    """Scripted OAuth authorization-code flow with PKCE against the emulator: a real refresh token."""
    http = session or requests.Session()
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    answer = http.get(f"{accounts_url}/authorize", allow_redirects=False, timeout=10, params={
        "client_id": client_id, "response_type": "code", "redirect_uri": REDIRECT_URI,
        "code_challenge_method": "S256", "code_challenge": challenge, "scope": "user-read-recently-played",
        "state": "s", "login_as": user_id,
    })
    assert answer.status_code == 302, answer.text
    code = parse_qs(urlsplit(answer.headers["Location"]).query)["code"][0]
    grant = http.post(f"{accounts_url}/api/token", auth=(client_id, client_secret), timeout=10, data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI, "code_verifier": verifier,
    })
    assert grant.status_code == 200, grant.text
    return grant.json()["refresh_token"]


def make_cipher() -> TokenCipher:
    import os

    return TokenCipher(boto3.client("kms"), os.environ["TOKEN_KEY_ID"])


def create_user(user_id: str, refresh_token: str | None, cipher: TokenCipher, **fields: Any) -> users.UserModel:
    """A user record as sign-up writes it: the refresh token envelope-encrypted."""
    user = users.UserModel(
        user_id,
        display_name=user_id,
        status=fields.pop("status", users.ACTIVE),
        created_at=clock.now(),
        authorized_at=clock.now(),
        **(sealed_fields(cipher, user_id, refresh_token) if refresh_token else {}),
        **fields,
    )
    user.save()
    return user


def onboard(emulator: Any, stack: Any, user_ids: list[str], *, listen_hours: float = 2, plays_per_hour: float = 8,
            cipher: TokenCipher | None = None) -> None:
    """Emulated Spotify users with listening history, signed in, and their PlayVault user records."""
    from playvault_local import provision as prov

    cipher = cipher or make_cipher()
    http = requests.Session()
    now = clock.now()
    for user_id in user_ids:
        emulator.state.add_user(user_id)
        if listen_hours:
            emulator.state.simulate_listening(user_id, now - timedelta(hours=listen_hours), now, plays_per_hour)
        token = refresh_token_for(emulator.url, user_id, prov.DEV_CLIENT_ID, prov.DEV_CLIENT_SECRET, http)
        create_user(user_id, token, cipher)


def stored_play_ms(user_id: str) -> list[int]:
    return sorted(int(p.played_at_ms) for p in plays.all_plays(user_id))


def truth_ms(emulator: Any, user_id: str) -> list[int]:
    return sorted(p["played_at_ms"] for p in emulator.state.ground_truth(user_id))


def sqs_record(body: str, *, queue_arn: str = "arn:aws:sqs:us-east-1:123456789012:MyQueue",
               message_id: str | None = None, receive_count: int = 1) -> dict[str, Any]:
    """One record shaped like `sam local generate-event sqs receive-message`."""
    template = json.loads((EVENTS / "sqs_receive_message.json").read_text())["Records"][0]
    record = copy.deepcopy(template)
    record.update({
        "messageId": message_id or str(uuid.uuid4()),
        "receiptHandle": secrets.token_urlsafe(16),
        "body": body,
        "md5OfBody": hashlib.md5(body.encode()).hexdigest(),  # noqa: S324 - SQS's checksum, not security
        "eventSourceARN": queue_arn,
    })
    record["attributes"]["ApproximateReceiveCount"] = str(receive_count)
    return record


def sqs_event(*records: dict[str, Any]) -> dict[str, Any]:
    return {"Records": list(records)}


def work_body(user_ids: list[str], not_before: datetime | int | None = None, window_id: str = "test") -> str:
    moment = clock.now() if not_before is None else not_before
    epoch = moment if isinstance(moment, int) else int(moment.timestamp())
    return WorkMessage(users=user_ids, not_before=epoch, window_id=window_id).body()


class RecordingSQS:
    """Wraps a boto3 SQS client, remembering every message sent (with its DelaySeconds)."""

    def __init__(self, client: Any):
        self._client = client
        self.sent: list[dict[str, Any]] = []

    def send_message(self, **kwargs: Any) -> Any:
        self.sent.append({"body": kwargs["MessageBody"], "delay": kwargs.get("DelaySeconds", 0)})
        return self._client.send_message(**kwargs)

    def send_message_batch(self, **kwargs: Any) -> Any:
        for entry in kwargs["Entries"]:
            self.sent.append({"body": entry["MessageBody"], "delay": entry.get("DelaySeconds", 0)})
        return self._client.send_message_batch(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def failed_ids(response: dict[str, Any]) -> list[str]:
    return sorted(item["itemIdentifier"] for item in response["batchItemFailures"])


# ---------------------------------------------------------------- fixtures
@pytest.fixture
def fake_clock(emulator: Any) -> FakeClock:
    return install_clock(emulator.state)


@pytest.fixture
def worker(load_function: Any, fake_clock: FakeClock) -> Any:
    """The worker module, freshly imported (a cold start) with the template's environment."""
    import sys

    handler = load_function("WorkerFunction")
    module = sys.modules[handler.__module__]
    module.sqs = RecordingSQS(module.sqs)
    module.spotify._sleep = lambda _s: None  # retries back off without sleeping
    return module


@pytest.fixture
def context(lambda_context: Any) -> Any:
    return lambda_context("WorkerFunction")


def short_context(seconds: float) -> LambdaContext:
    return LambdaContext(function_name="WorkerFunction", memory_limit_in_mb=512, timeout_s=seconds)


# ---------------------------------------------------------------- tests
def test_every_user_of_a_message_is_archived(worker, context, emulator, aws_env, fake_clock):
    ids = ["ana", "ben", "cai"]
    onboard(emulator, aws_env, ids)
    response = worker.handler(sqs_event(sqs_record(work_body(ids))), context)
    assert response == {"batchItemFailures": []}
    for user_id in ids:
        assert stored_play_ms(user_id) == truth_ms(emulator, user_id)
        assert stored_play_ms(user_id), "the emulator simulated some listening"
        user = users.get(user_id)
        assert user.last_polled_at == fake_clock.now
        assert int(user.consecutive_failures) == 0


def _dead_letters(stack: Any) -> list[dict[str, Any]]:
    sqs = boto3.client("sqs")
    answer = sqs.receive_message(QueueUrl=stack.env["DEAD_LETTER_QUEUE_URL"], MaxNumberOfMessages=10,
                                 MessageAttributeNames=["All"], WaitTimeSeconds=0)
    return answer.get("Messages", [])


def test_malformed_messages_go_straight_to_the_dlq_with_the_reason(worker, context, emulator, aws_env, caplog,
                                                                    capsys, fake_clock, detailed_metrics):
    onboard(emulator, aws_env, ["ana", "ben"])
    good_1 = sqs_record(work_body(["ana"], window_id="w1"))
    not_json = sqs_record("Hello from SQS!")
    no_deadline = sqs_record(json.dumps({"users": ["ben"], "window_id": "w"}))
    empty_users = sqs_record(json.dumps({"users": [], "not_before": 0, "window_id": "w"}))
    empty_id = sqs_record(json.dumps({"users": ["ben", ""], "not_before": 0, "window_id": "w"}))
    far_ahead = sqs_record(work_body(["ben"], fake_clock.now + timedelta(hours=25), window_id="w"))
    good_2 = sqs_record(work_body(["ben"], window_id="w2"))
    bad = (not_json, no_deadline, empty_users, empty_id, far_ahead)
    response = worker.handler(sqs_event(good_1, *bad, good_2), context)
    # Not failed (a retry cannot fix them): each was moved to the DLQ once, with the reason.
    assert response == {"batchItemFailures": []}
    letters = _dead_letters(aws_env)
    assert sorted(m["Body"] for m in letters) == sorted(r["body"] for r in bad)
    reasons = " | ".join(m["MessageAttributes"]["rejected_because"]["StringValue"] for m in letters)
    assert "not_before: Field required" in reasons  # the error names what is wrong
    assert "users: List should have at least 1 item" in reasons
    assert "users.1: String should have at least 1 character" in reasons
    assert "more than 86400 s ahead" in reasons
    assert stored_play_ms("ana") == truth_ms(emulator, "ana")
    assert stored_play_ms("ben") == truth_ms(emulator, "ben")
    assert "moved to the dead-letter queue" in caplog.text
    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert sum(sum(b["MalformedMessages"]) if isinstance(b["MalformedMessages"], list) else b["MalformedMessages"]
               for b in blobs if "MalformedMessages" in b) == 5


def test_a_poison_user_does_not_fail_the_batch(worker, context, emulator, aws_env, monkeypatch, capsys,
                                               detailed_metrics):
    ids = ["ana", "ben", "poison", "dan"]
    onboard(emulator, aws_env, ids)
    real = worker.archiver.archive_user

    def archive_user(user_id: str, budget: Budget, **kwargs: Any) -> ArchiveResult:
        if user_id == "poison":
            raise KeyError("a bug only this user triggers")
        return real(user_id, budget, **kwargs)

    monkeypatch.setattr(worker.archiver, "archive_user", archive_user)
    response = worker.handler(sqs_event(sqs_record(work_body(ids))), context)
    assert response == {"batchItemFailures": []}
    for user_id in ("ana", "ben", "dan"):
        assert stored_play_ms(user_id) == truth_ms(emulator, user_id)
    assert stored_play_ms("poison") == []
    out = capsys.readouterr().out
    assert '"FailureType":"UNKNOWN"' in out.replace(" ", "")  # UsersFailed by type, from the handler


def test_spotify_garbage_fails_only_that_user(worker, context, emulator, aws_env, monkeypatch):
    ids = ["ana", "ben", "cai"]
    onboard(emulator, aws_env, ids)
    # One recently-played answer is JSON of the wrong shape (not retried: it is not a transport error).
    emulator.state.inject("/v1/me/player/recently-played", status=200, body={"items": "garbage"}, times=1)
    response = worker.handler(sqs_event(sqs_record(work_body(ids))), context)
    assert response == {"batchItemFailures": []}
    states = {u: users.get(u) for u in ids}
    failed = [u for u, s in states.items() if s.last_failure_type == "UNKNOWN"]
    assert len(failed) == 1
    assert int(states[failed[0]].consecutive_failures) == 1
    assert states[failed[0]].cooldown_until == clock.now() + timedelta(minutes=20)
    for user_id in set(ids) - set(failed):
        assert stored_play_ms(user_id) == truth_ms(emulator, user_id)


def test_duplicate_delivery_archives_once(worker, context, emulator, aws_env):
    ids = ["ana", "ben"]
    onboard(emulator, aws_env, ids)
    record = sqs_record(work_body(ids))
    assert worker.handler(sqs_event(record), context) == {"batchItemFailures": []}
    calls = emulator.state.request_counts()
    redelivered = dict(record, attributes=dict(record["attributes"], ApproximateReceiveCount="2"))
    assert worker.handler(sqs_event(redelivered), context) == {"batchItemFailures": []}
    assert emulator.state.request_counts() == calls, "the second delivery must not call Spotify"
    for user_id in ids:
        assert stored_play_ms(user_id) == truth_ms(emulator, user_id)
        assert int(users.get(user_id).plays_archived) == len(truth_ms(emulator, user_id))


def test_the_same_user_in_the_next_run_is_polled_again(worker, context, emulator, aws_env, fake_clock):
    onboard(emulator, aws_env, ["ana"])
    assert worker.handler(sqs_event(sqs_record(work_body(["ana"], window_id="r1"))), context) == {
        "batchItemFailures": []}
    fake_clock.advance(hours=1)
    emulator.state.simulate_listening("ana", fake_clock.now - timedelta(hours=1), fake_clock.now, 10)
    assert worker.handler(sqs_event(sqs_record(work_body(["ana"], window_id="r2"))), context) == {
        "batchItemFailures": []}
    assert stored_play_ms("ana") == truth_ms(emulator, "ana")
    assert users.get("ana").last_run == "r2"


def test_a_second_message_of_the_same_run_polls_nobody_again(worker, context, emulator, aws_env, fake_clock):
    onboard(emulator, aws_env, ["ana"])
    assert worker.handler(sqs_event(sqs_record(work_body(["ana"], window_id="r1"))), context) == {
        "batchItemFailures": []}
    calls = emulator.state.request_counts()
    fake_clock.advance(minutes=5)  # another message of run r1 (a different body): the run stamp stops it
    assert worker.handler(sqs_event(sqs_record(work_body(["ana"], window_id="r1"))), context) == {
        "batchItemFailures": []}
    assert emulator.state.request_counts() == calls


def test_a_message_not_yet_due_is_requeued_with_the_remaining_delay(worker, context, emulator, aws_env, fake_clock,
                                                                     capsys, detailed_metrics):
    onboard(emulator, aws_env, ["ana"])
    due = fake_clock.now + timedelta(minutes=50)
    record = sqs_record(work_body(["ana"], due, window_id="w1"))
    capsys.readouterr()
    assert worker.handler(sqs_event(record), context) == {"batchItemFailures": []}
    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    # A hop through the spread window is routine: counted apart from rate-limit deferrals.
    assert any(blob.get("MessagesNotYetDue") in (1.0, [1.0]) for blob in blobs)
    assert not any("DeferredMessages" in blob for blob in blobs)
    assert emulator.state.request_counts().get("recently_played", 0) == 0
    assert stored_play_ms("ana") == []
    (sent,) = worker.sqs.sent
    assert sent["delay"] == 900
    assert json.loads(sent["body"]) == {"users": ["ana"], "not_before": int(due.timestamp()), "window_id": "w1"}
    # 40 minutes later (three hops of 900 s minus what is left): the last hop is the remainder.
    fake_clock.advance(minutes=40)
    assert worker.handler(sqs_event(sqs_record(sent["body"])), context) == {"batchItemFailures": []}
    assert worker.sqs.sent[-1]["delay"] == 600
    fake_clock.advance(minutes=10)
    assert worker.handler(sqs_event(sqs_record(worker.sqs.sent[-1]["body"])), context) == {"batchItemFailures": []}
    assert len(worker.sqs.sent) == 2
    assert stored_play_ms("ana") == truth_ms(emulator, "ana")


def test_out_of_time_requeues_the_users_and_the_message_succeeds(worker, emulator, aws_env):
    ids = ["ana", "ben"]
    onboard(emulator, aws_env, ids)
    record = sqs_record(work_body(ids, window_id="r1"))
    # 10 s left is under min_remaining_ms (20 s): no user may start; they come back as a new message.
    response = worker.handler(sqs_event(record), short_context(10))
    assert response == {"batchItemFailures": []}, "a healthy message never fails into a redelivery"
    assert emulator.state.request_counts().get("recently_played", 0) == 0
    (requeued,) = worker.sqs.sent
    assert json.loads(requeued["body"])["users"] == ids and json.loads(requeued["body"])["window_id"] == "r1"
    assert worker.handler(sqs_event(sqs_record(requeued["body"])), short_context(120)) == {"batchItemFailures": []}
    for user_id in ids:
        assert stored_play_ms(user_id) == truth_ms(emulator, user_id)


def test_out_of_time_midway_reports_the_rest_unstarted(aws_env, fake_clock):
    done: list[str] = []

    class Archiver:
        def archive_user(self, user_id: str, budget: Budget, **kwargs: Any) -> ArchiveResult:
            done.append(user_id)
            return ArchiveResult(user_id, SUCCESS, plays_archived=1)

    remaining = iter([60_000, 60_000, 5_000, 5_000, 5_000])
    budget = Budget(lambda: next(remaining, 5_000))
    outcome = archive_batch(["a", "b", "c", "d"], budget=budget, archiver=Archiver(), run_id="r", concurrency=1,
                            min_remaining_ms=20_000)
    assert outcome.successful == len(done) >= 1
    assert outcome.unstarted == ["a", "b", "c", "d"][len(done):]


def test_a_user_whose_spotify_calls_run_out_of_time_is_unstarted_not_failed(aws_env, fake_clock):
    from playvault.failures import OutOfTime

    class Archiver:
        def archive_user(self, user_id: str, budget: Budget, **kwargs: Any) -> ArchiveResult:
            if user_id == "slow":
                raise OutOfTime("no time left for a Spotify call")
            return ArchiveResult(user_id, SUCCESS)

    outcome = archive_batch(["fast", "slow"], budget=Budget.seconds(60), archiver=Archiver(), run_id="r",
                            concurrency=2)
    assert (outcome.successful, outcome.failed, outcome.unstarted) == (1, 0, ["slow"])


def test_users_run_concurrently_and_in_isolation(aws_env, fake_clock):
    barrier = threading.Barrier(4, timeout=5)

    class Archiver:
        def archive_user(self, user_id: str, budget: Budget, **kwargs: Any) -> ArchiveResult:
            barrier.wait()  # only returns if 4 users are in flight at once
            if user_id == "u2":
                raise ValueError("boom")
            return ArchiveResult(user_id, SUCCESS, plays_archived=2, new_tracks=1)

    outcome = archive_batch([f"u{i}" for i in range(4)], archiver=Archiver(), budget=Budget.seconds(60),
                            run_id="r", concurrency=4)
    assert (outcome.successful, outcome.failed, outcome.plays_archived, outcome.new_tracks) == (3, 1, 6, 3)
    assert outcome.failures_by_type == {"UNKNOWN": 1}


def _throttled(operation: str) -> ClientError:
    return ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}},
                       operation)


def test_dynamodb_throttling_requeues_the_users_not_done_and_fails_the_message_only_when_it_persists(
        worker, context, emulator, aws_env, monkeypatch):
    """A throttle is not a reason for a 12-minute redelivery (five of them put healthy users in the
    DLQ, and a heavy listener goes an hour unpolled): the users not done come back as a new message
    15 s later, doubling; only an error that outlasts INFRA_REQUEUES requeues fails the message."""
    onboard(emulator, aws_env, ["ana", "ben"])
    real = plays.write_plays

    def write_plays(user_id: str, items: Any) -> int:
        if user_id == "ana":
            raise _throttled("BatchWriteItem")
        return real(user_id, items)

    monkeypatch.setattr("playvault.archive.plays.write_plays", write_plays)
    queue_url = aws_env.queue_url("WorkQueue")
    sqs = boto3.client("sqs")
    backoffs: list[int] = []
    real_requeue = worker.requeue

    def requeue_now(*args: Any, not_before: int, now: datetime, **kwargs: Any) -> int:
        """Records the backoff asked for, and sends at once (moto's DelaySeconds are real seconds)."""
        backoffs.append(int(not_before - now.timestamp()))  # not_before is rounded up
        return real_requeue(*args, not_before=int(now.timestamp()), now=now, **kwargs)

    monkeypatch.setattr(worker, "requeue", requeue_now)
    throttled = sqs_record(work_body(["ana"]))
    fine = sqs_record(work_body(["ben"]))
    assert worker.handler(sqs_event(throttled, fine), context) == {"batchItemFailures": []}
    ana = users.get("ana")
    assert int(ana.consecutive_failures) == 0 and ana.cooldown_until is None, "not the user's failure"
    assert stored_play_ms("ben") == truth_ms(emulator, "ben")
    for attempt in range(1, worker.INFRA_REQUEUES + 1):
        [requeued] = sqs.receive_message(QueueUrl=queue_url, AttributeNames=["All"],
                                         WaitTimeSeconds=0).get("Messages") or [None]
        assert requeued is not None, f"attempt {attempt}: ana was requeued"
        body = json.loads(requeued["Body"])
        assert body["users"] == ["ana"] and body["attempt"] == attempt
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=requeued["ReceiptHandle"])
        record = sqs_record(requeued["Body"])
        answer = worker.handler(sqs_event(record), context)
        if attempt < worker.INFRA_REQUEUES:
            assert answer == {"batchItemFailures": []}
    assert failed_ids(answer) == [record["messageId"]], "past INFRA_REQUEUES the message fails (SQS redelivers)"
    assert backoffs == [15, 30, 60, 120]
    # The failed delivery left no idempotency record: its redelivery, once DynamoDB answers, archives ana.
    monkeypatch.setattr("playvault.archive.plays.write_plays", real)
    assert worker.handler(sqs_event(record), context) == {"batchItemFailures": []}
    assert stored_play_ms("ana") == truth_ms(emulator, "ana")


def test_idempotency_store_throttling_fails_the_message(worker, context, emulator, aws_env, monkeypatch):
    onboard(emulator, aws_env, ["ana"])
    client = worker.persistence.client

    def put_item(**kwargs: Any) -> Any:
        raise _throttled("PutItem")

    monkeypatch.setattr(client, "put_item", put_item)
    record = sqs_record(work_body(["ana"]))
    assert failed_ids(worker.handler(sqs_event(record), context)) == [record["messageId"]]
    assert emulator.state.request_counts().get("recently_played", 0) == 0


def test_metrics_are_emitted_once_per_invocation(worker, context, emulator, aws_env, capsys, detailed_metrics):
    onboard(emulator, aws_env, ["ana", "ben"])
    worker.handler(sqs_event(sqs_record(work_body(["ana", "ben"]))), context)
    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    names = {m["Name"] for blob in blobs for d in blob["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]}
    assert {"UsersArchived", "UsersSkipped", "PlaysArchived", "NewTracks", "BatchDuration"} <= names
    archived = [blob["UsersArchived"] for blob in blobs if "UsersArchived" in blob]
    assert archived in ([2], [[2]])  # one flush per invocation
    assert all(blob["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "PlayVault" for blob in blobs)


def test_the_poll_records_the_run_it_belongs_to(worker, context, emulator, aws_env, fake_clock):
    from playvault.queue import window_id_of

    onboard(emulator, aws_env, ["ana"])
    dispatched = fake_clock.now - timedelta(minutes=50)  # its slot was late in the period
    record = sqs_record(work_body(["ana"], fake_clock.now, window_id=window_id_of(dispatched)))
    assert worker.handler(sqs_event(record), context) == {"batchItemFailures": []}
    user = users.UserModel.get("ana")
    assert user.last_run == window_id_of(dispatched)
    assert user.next_poll_at == fake_clock.now + timedelta(minutes=59)  # the default cadence, a minute early


def test_spotify_answering_just_before_its_timeout_never_pushes_the_writes_past_the_deadline(
        worker, emulator, aws_env, fake_clock, monkeypatch):
    """Scaled down: calls time out after 0.1 + 1.5 s and Spotify answers every one after 0.7 s. A user
    is started only with its worst case (2 calls at their timeout) plus the writes reserve left; the
    rest are requeued. Lambda would kill an invocation at its deadline and redeliver the whole batch:
    here every invocation must have returned before it."""
    ids = [f"u{i}" for i in range(5)]
    onboard(emulator, aws_env, ids, listen_hours=1)
    emulator.state.faults.update(latency_ms=700)
    monkeypatch.setattr(worker.spotify, "_timeouts", (0.1, 1.5))
    monkeypatch.setattr(worker, "settings", worker.settings.model_copy(update={"user_concurrency": 1,
                                                                              "min_remaining_ms": 1_000,
                                                                              "writes_reserve_ms": 1_500}))
    # The first message arrives with 1.2 s left (earlier messages of the invocation used the rest):
    # enough for min_remaining_ms, not for two answers at 0.7 s and the writes. Then 6 s invocations:
    # after one user (about 1.6 s) the time left no longer covers the next one's worst case (4.7 s).
    lifetimes = [1.2] + [6.0] * 10
    bodies = [work_body(ids, window_id="slow")]
    invocations = 0
    while bodies:
        assert invocations < len(lifetimes), "the work never finishes"
        lifetime = lifetimes[invocations]
        invocations += 1
        sent_before = len(worker.sqs.sent)
        started = time.monotonic()
        response = worker.handler(sqs_event(sqs_record(bodies.pop(0))), short_context(lifetime))
        overran_s = time.monotonic() - started - lifetime
        assert overran_s < 0, f"invocation {invocations} ran {overran_s:.2f} s past its deadline (Lambda kills it)"
        assert response == {"batchItemFailures": []}, "the whole message would be redelivered"
        bodies += [m["body"] for m in worker.sqs.sent[sent_before:]]  # users not started come back at once
    assert invocations > 2, "the time ran down at least twice (the case under test)"
    for user_id in ids:
        user = users.get(user_id)
        assert user.last_failure_type is None, f"{user_id} was charged {user.last_failure_type} for our deadline"
        assert stored_play_ms(user_id) == truth_ms(emulator, user_id), user_id
    # Each user polled exactly once: nobody started and given up, nobody polled twice.
    assert emulator.state.request_counts()["recently_played"] == len(ids)
    assert _dead_letters(aws_env) == []


def test_spotify_answering_everything_at_its_timeout_puts_no_healthy_message_in_the_dlq(
        worker, emulator, aws_env, fake_clock, monkeypatch):
    ids = [f"u{i}" for i in range(12)]
    onboard(emulator, aws_env, ids, listen_hours=0)
    emulator.state.faults.update(latency_ms=600)  # every answer comes after the client stopped waiting
    monkeypatch.setattr(worker.spotify, "_timeouts", (0.2, 0.2))
    monkeypatch.setattr(worker, "settings", worker.settings.model_copy(update={"user_concurrency": 1,
                                                                              "min_remaining_ms": 1_000,
                                                                              "writes_reserve_ms": 300}))
    bodies = [work_body(ids, window_id="slow")]
    invocations = 0
    while bodies:
        invocations += 1
        assert invocations < 20, "the work never finishes"
        sent_before = len(worker.sqs.sent)
        response = worker.handler(sqs_event(sqs_record(bodies.pop(0))), short_context(2.0))
        assert response == {"batchItemFailures": []}, "a healthy message must not go back for redelivery"
        bodies += [m["body"] for m in worker.sqs.sent[sent_before:]]  # users out of time come back at once
    assert invocations > 1, "the time budget ran out at least once (the case under test)"
    for user_id in ids:
        user = users.get(user_id)
        assert user.last_failure_type == "NETWORK" and int(user.consecutive_failures) == 1, user_id
    assert _dead_letters(aws_env) == []
