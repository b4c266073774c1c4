"""The app-wide Spotify rate-limit gate: work is deferred (requeued, never failed, never a user's
failure), then resumes when the gate opens."""

from __future__ import annotations

import json
from datetime import timedelta

from playvault import clock
from playvault.store import state, users
from playvault_local.provision import DEV_CLIENT_SECRET
from tests.unit import test_worker as shared
from tests.unit.helpers import ssm_refusing
from tests.unit.test_worker import onboard, sqs_event, sqs_record, stored_play_ms, work_body

# The worker's fixtures, shared with its tests.
worker = shared.worker
context = shared.context
fake_clock = shared.fake_clock


def _emf(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if '"_aws"' in line]


def _count(blobs: list[dict], name: str) -> float:
    total = 0.0
    for blob in blobs:
        value = blob.get(name)
        total += sum(value) if isinstance(value, list) else (value or 0)
    return total


def test_a_closed_gate_defers_the_whole_message_and_leaves_the_users_due(worker, context, emulator, aws_env,
                                                                          fake_clock, capsys, detailed_metrics):
    ids = ["ana", "ben"]
    onboard(emulator, aws_env, ids)
    state.close_rate_gate(fake_clock.now + timedelta(minutes=25), fake_clock.now)
    worker.metrics.clear_metrics()
    capsys.readouterr()

    record = sqs_record(work_body(ids, window_id="w7"))
    assert worker.handler(sqs_event(record), context) == {"batchItemFailures": []}, "not a failure"
    assert emulator.state.request_counts()["recently_played"] == 0, "nobody polled while the gate is closed"
    assert worker.sqs.sent == [], "no copy requeued: the users keep their one pending poll"
    blobs = _emf(capsys.readouterr().out)
    assert not any("UsersFailed" in blob for blob in blobs), "a rate limit is no user's failure"
    assert _count(blobs, "RateLimited") == 2
    for user_id in ids:
        user = users.get(user_id)
        assert int(user.consecutive_failures) == 0 and user.next_poll_at is None  # still due


def test_a_429_mid_batch_closes_the_gate_and_charges_nobody(worker, context, emulator, aws_env, fake_clock, capsys,
                                                            detailed_metrics):
    ids = [f"user{i}" for i in range(6)]
    onboard(emulator, aws_env, ids)
    limited_until = fake_clock.now + timedelta(hours=1)
    emulator.state.rate_limit_app(limited_until)  # Spotify answers 429 with Retry-After 3600
    emulator.state.quota_exceeded = True
    capsys.readouterr()

    record = sqs_record(work_body(ids, window_id="w8"))
    assert worker.handler(sqs_event(record), context) == {"batchItemFailures": []}
    gate = state.rate_limited_until(clock.now())
    assert gate is not None and gate >= limited_until
    assert state.StateModel.get(state.RATE_GATE).reason == "QUOTA_EXCEEDED"
    assert worker.sqs.sent == []
    blobs = _emf(capsys.readouterr().out)
    # A quota 429 is a rate limit (RateLimited: core, alarmed); QuotaExceeded (detailed) tells it apart.
    assert _count(blobs, "QuotaExceeded") == 6 and _count(blobs, "RateLimited") == 6
    for user_id in ids:
        user = users.get(user_id)
        assert (int(user.consecutive_failures), user.cooldown_until, user.status) == (0, None, users.ACTIVE)
        assert stored_play_ms(user_id) == []


def test_a_gate_spanning_three_runs_leaves_each_user_one_poll_spread_over_the_next_period(
        worker, context, emulator, aws_env, fake_clock, monkeypatch):
    """Every 15 minutes the dispatcher runs; Spotify rate-limits the app for 40 minutes. Nobody is sent
    during the gate, and the first run after it sends each user once, spread over its period."""
    from playvault import dispatch
    from playvault.config import DispatcherSettings
    from playvault.queue import WorkMessage

    ids = [f"u{i:02d}" for i in range(12)]
    onboard(emulator, aws_env, ids, listen_hours=1)  # light listeners: one poll an hour is their cadence
    settings = DispatcherSettings.from_env().model_copy(update={"batch_size": 2, "dispatch_period_minutes": 15})
    start = fake_clock.now
    state.close_rate_gate(start + timedelta(minutes=40), start)
    polls: list[tuple[str, float]] = []
    real = worker.archiver.archive_user

    def counting(user_id, budget, **kwargs):
        result = real(user_id, budget, **kwargs)
        if result.status == "success":
            polls.append((user_id, clock.now().timestamp()))
        return result

    monkeypatch.setattr(worker.archiver, "archive_user", counting)
    pending: list[WorkMessage] = []
    for run in range(5):  # 0, 15, 30 (gate closed), 45 (open), 60
        fake_clock.set(start + timedelta(minutes=15 * run))
        sent_before = len(worker.sqs.sent)
        report = dispatch.dispatch(clock.now(), settings, worker.sqs)
        if run < 3:
            assert report.dispatched == 0 and report.waiting_for_gate == len(ids)
        pending += [WorkMessage.model_validate_json(m["body"]) for m in worker.sqs.sent[sent_before:]]
        for message in sorted(pending, key=lambda m: m.not_before):
            if message.not_before <= (start + timedelta(minutes=15 * (run + 1))).timestamp():
                fake_clock.set(max(clock.now(), clock.from_ms(message.not_before * 1000)))
                worker.handler(sqs_event(sqs_record(message.body())), context)
                pending.remove(message)
    per_user = {u: sum(1 for p, _ in polls if p == u) for u in ids}
    assert per_user == dict.fromkeys(ids, 1), "each user polled exactly once after the gate"
    moments = sorted(t for _, t in polls)
    opened = (start + timedelta(minutes=45)).timestamp()
    assert moments[0] >= opened and moments[-1] < opened + 900
    assert moments[-1] - moments[0] >= 600, "spread over the period, not released at one second"


def test_rejected_client_credentials_charge_no_user_and_count_for_the_app_alarm(worker, context, emulator, aws_env,
                                                                               fake_clock, capsys, monkeypatch):
    from playvault.spotify import Credentials

    ids = ["ana", "ben", "cai"]
    onboard(emulator, aws_env, ids)
    # The operator rotated the secret at Spotify but SSM still has the old one: invalid_client.
    monkeypatch.setattr(worker.spotify, "_credentials", lambda: Credentials("playvault-local-client", "old-secret"))
    capsys.readouterr()
    assert worker.handler(sqs_event(sqs_record(work_body(ids, window_id="w9"))), context) == {"batchItemFailures": []}
    blobs = _emf(capsys.readouterr().out)
    assert _count(blobs, "SpotifyAppFailures") >= 1
    assert not any("UsersFailed" in blob for blob in blobs)
    assert state.rate_limited_until(clock.now()) is not None  # work deferred app-wide
    for user_id in ids:
        user = users.get(user_id)
        assert (int(user.consecutive_failures), user.cooldown_until, user.status) == (0, None, users.ACTIVE)


def test_a_throttled_ssm_defers_the_users_charges_nobody_and_counts_for_the_app_alarm(
        worker, context, emulator, aws_env, fake_clock, capsys, caplog, detailed_metrics):
    """SSM throttles GetParameter (its 40 TPS are shared by the account): the app's problem, not the users'."""
    ids = [f"user{i}" for i in range(6)]
    onboard(emulator, aws_env, ids)
    asked = ssm_refusing("ThrottlingException", "Rate exceeded")
    capsys.readouterr()

    assert worker.handler(sqs_event(sqs_record(work_body(ids, window_id="w11"))), context) == {"batchItemFailures": []}
    out = capsys.readouterr().out
    blobs = _emf(out)
    assert not any("UsersFailed" in blob for blob in blobs), "nobody is charged for the app's SSM problem"
    assert _count(blobs, "SpotifyAppFailures") >= 1
    assert emulator.state.request_counts()["recently_played"] == 0
    assert state.rate_limited_until(clock.now()) is not None, "the gate closes: no other container asks SSM now"
    for user_id in ids:
        user = users.get(user_id)
        assert (int(user.consecutive_failures), user.cooldown_until, user.last_failure_type, user.status,
                user.next_poll_at) == (0, None, None, users.ACTIVE, None), user_id  # left due, uncharged
    assert asked, "SSM was asked"
    app_lines = [r for r in caplog.records if "app-level failure" in r.getMessage()]
    assert app_lines and all(r.failure == "CredentialsUnavailable" for r in app_lines)
    assert "ThrottlingException" in app_lines[0].reason
    assert aws_env.env["SPOTIFY_CLIENT_ID_PARAM"] in app_lines[0].reason  # names the parameter, not its value
    assert DEV_CLIENT_SECRET not in out + caplog.text
