"""The app-wide Spotify rate-limit gate: work is deferred (requeued, never failed, never a user's
failure), then resumes when the gate opens."""

from __future__ import annotations

import json
from datetime import timedelta

from playvault import clock
from playvault.store import state, users
from tests.unit import test_worker as shared
from tests.unit.test_worker import onboard, sqs_event, sqs_record, stored_play_ms, truth_ms, work_body

# The worker's fixtures, shared with its tests.
worker = shared.worker
context = shared.context
fake_clock = shared.fake_clock


def _emf(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if '"_aws"' in line]


def test_a_closed_gate_defers_the_whole_message_then_work_resumes(worker, context, emulator, aws_env, fake_clock,
                                                                   capsys, detailed_metrics):
    ids = ["ana", "ben"]
    onboard(emulator, aws_env, ids)
    until = fake_clock.now + timedelta(minutes=25)
    state.close_rate_gate(until, fake_clock.now)
    worker.metrics.clear_metrics()
    capsys.readouterr()

    record = sqs_record(work_body(ids, window_id="w7"))
    assert worker.handler(sqs_event(record), context) == {"batchItemFailures": []}, "not a failure"
    assert emulator.state.request_counts()["recently_played"] == 0, "nobody polled while the gate is closed"
    (requeued,) = worker.sqs.sent
    assert requeued["delay"] == 900  # 25 min away: the first hop of two
    assert json.loads(requeued["body"]) == {"users": ids, "not_before": int(until.timestamp()), "window_id": "w7"}
    blobs = _emf(capsys.readouterr().out)
    assert not any("UsersFailed" in blob for blob in blobs), "a rate limit is no user's failure"
    assert any(blob.get("DeferredMessages") in (1.0, [1.0]) for blob in blobs)
    for user_id in ids:
        assert int(users.get(user_id).consecutive_failures) == 0

    # 15 minutes later the message is back; its not_before is 10 minutes ahead: bounced with the rest.
    fake_clock.advance(minutes=15)
    assert worker.handler(sqs_event(sqs_record(requeued["body"])), context) == {"batchItemFailures": []}
    assert worker.sqs.sent[-1]["delay"] == 600
    # Then the gate is open: everyone is archived.
    fake_clock.advance(minutes=10)
    assert worker.handler(sqs_event(sqs_record(worker.sqs.sent[-1]["body"])), context) == {"batchItemFailures": []}
    for user_id in ids:
        assert stored_play_ms(user_id) == truth_ms(emulator, user_id)


def test_a_429_mid_batch_closes_the_gate_and_requeues_the_users_not_done(worker, context, emulator, aws_env,
                                                                          fake_clock):
    ids = [f"user{i}" for i in range(6)]
    onboard(emulator, aws_env, ids)
    limited_until = fake_clock.now + timedelta(hours=1)
    emulator.state.rate_limit_app(limited_until)  # Spotify answers 429 with Retry-After 3600

    record = sqs_record(work_body(ids, window_id="w8"))
    assert worker.handler(sqs_event(record), context) == {"batchItemFailures": []}
    gate = state.rate_limited_until(clock.now())
    assert gate is not None and gate >= limited_until
    (requeued,) = worker.sqs.sent
    body = json.loads(requeued["body"])
    assert sorted(body["users"]) == ids and body["not_before"] >= int(limited_until.timestamp())
    assert requeued["delay"] == 900
    for user_id in ids:
        user = users.get(user_id)
        assert (int(user.consecutive_failures), user.cooldown_until, user.status) == (0, None, users.ACTIVE)
        assert stored_play_ms(user_id) == []

    # After the deadline (the requeued message has hopped its way there) the users are archived.
    fake_clock.set(limited_until + timedelta(seconds=5))
    resumed = json.dumps(dict(body, not_before=body["not_before"]))
    assert worker.handler(sqs_event(sqs_record(resumed)), context) == {"batchItemFailures": []}
    for user_id in ids:
        assert stored_play_ms(user_id) == truth_ms(emulator, user_id)
