"""Dispatch: who is due, how batches spread over the window, and windows past SQS's 15-minute cap."""

from __future__ import annotations

import heapq
import json
import sys
import tracemalloc
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from playvault import clock, dispatch, queue
from playvault.archive import SUCCESS, ArchiveResult
from playvault.config import DispatcherSettings
from playvault.failures import InfrastructureError
from playvault.queue import MAX_DELAY_S, WorkMessage, send_batches
from playvault.store import plays, users
from tests.unit.test_worker import (
    RecordingSQS,
    create_user,
    install_clock,
    make_cipher,
    sqs_event,
    sqs_record,
)

EVENTS = Path(__file__).resolve().parents[1] / "events"
NOW = datetime(2025, 3, 14, 10, 0, 7, tzinfo=UTC)


def settings(**overrides: Any) -> DispatcherSettings:
    values = {name: f"tbl-{name}" for name in ("users_table", "artists_table", "albums_table", "tracks_table",
                                               "plays_table", "state_table", "gaps_table",
                                               "episodes_table", "rollups_table")}
    values.update(work_queue_url="https://sqs.local/q", batch_size=10, dispatch_period_minutes=60)
    values.update(overrides)
    return DispatcherSettings(**values)


class FakeSQS:
    """SendMessageBatch as SQS answers it; can fail chosen entries a number of times."""

    def __init__(self, fail: dict[int, int] | None = None, sender_fault: bool = False):
        self.calls: list[list[dict[str, Any]]] = []
        self.sent: list[dict[str, Any]] = []
        self._fail = dict(fail or {})  # global entry index -> how many more times it fails
        self._sender_fault = sender_fault

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
        assert len(Entries) <= 10
        self.calls.append(Entries)
        ok, failed = [], []
        for entry in Entries:
            index = int(entry["Id"])
            if self._fail.get(index, 0) > 0:
                self._fail[index] -= 1
                failed.append({"Id": entry["Id"], "SenderFault": self._sender_fault, "Code": "InternalError",
                               "Message": "try again"})
            else:
                self.sent.append(entry)
                ok.append({"Id": entry["Id"], "MessageId": f"m{index}"})
        return {"Successful": ok, "Failed": failed}


def polling_states(count: int, **fields: Any):
    def scan(page_size: int = 1000):
        for index in range(count):
            yield users.PollingState(f"user{index:06d}", fields.get("status", users.ACTIVE),
                                     fields.get("cooldown_until"), fields.get("next_poll_at"))
    return scan


def _fake_users(monkeypatch: Any, scan: Any, gate_until: datetime | None = None) -> None:
    """Users from `scan` instead of DynamoDB, and the app's rate gate open (or closed until gate_until)."""
    monkeypatch.setattr(users, "scan_polling_state", scan)
    monkeypatch.setattr(dispatch.state, "rate_limited_until", lambda now: gate_until)


# ---------------------------------------------------------------- spread and delays
@pytest.mark.parametrize(("due", "batch_size", "window"), [(95, 10, 3600), (1, 50, 3600), (500, 50, 600),
                                                            (1000, 7, 86400), (3, 1, 120)])
def test_batches_spread_evenly_over_the_window_and_no_delay_exceeds_900(monkeypatch, due, batch_size, window):
    _fake_users(monkeypatch, polling_states(due))
    sqs = FakeSQS()
    report = dispatch.dispatch(NOW, settings(batch_size=batch_size, dispatch_period_minutes=window // 60), sqs)
    messages = [WorkMessage.model_validate_json(e["MessageBody"]) for e in sqs.sent]
    batches = -(-due // batch_size)
    assert report.messages_sent == len(messages) == batches
    assert sorted(u for m in messages for u in m.users) == [f"user{i:06d}" for i in range(due)]
    assert all(len(m.users) <= batch_size for m in messages)
    start = int(NOW.timestamp())
    offsets = sorted(m.not_before - start for m in messages)
    assert offsets[-1] < window
    # Overdue users (all of them here) are past their moment: their batches are spread evenly, batch i
    # at i * window / batches (floored), the first at once.
    assert offsets == [index * window // batches for index in range(batches)]
    assert [len(m.users) for m in messages] == [batch_size] * (due // batch_size) + ([due % batch_size]
                                                                                     if due % batch_size else [])
    for entry, message in zip(sqs.sent, messages, strict=True):
        assert 0 <= entry["DelaySeconds"] <= MAX_DELAY_S
        assert entry["DelaySeconds"] == min(message.not_before - start, MAX_DELAY_S)
    assert report.max_delay_seconds == min(offsets[-1], MAX_DELAY_S)


def test_an_overdue_user_never_waits_for_a_later_users_slot(monkeypatch):
    """A new sign-up (no next_poll_at) and a user due in 14 minutes fit one batch of 50; sent together
    the batch would wait for the later slot, and the newcomer's first poll with it."""
    later = NOW + timedelta(minutes=14)

    def scan(page_size: int = 1000):
        yield users.PollingState("newcomer", users.ACTIVE, None, None)
        yield users.PollingState("regular", users.ACTIVE, None, later)
        yield users.PollingState("overdue", users.ACTIVE, None, NOW - timedelta(minutes=3))

    _fake_users(monkeypatch, scan)
    sqs = FakeSQS()
    report = dispatch.dispatch(NOW, settings(batch_size=50, dispatch_period_minutes=15), sqs)
    start = int(NOW.timestamp())
    bodies = [(WorkMessage.model_validate_json(e["MessageBody"]), e["DelaySeconds"]) for e in sqs.sent]
    sent = sorted((m.not_before - start, sorted(m.users), delay) for m, delay in bodies)
    assert sent == [(0, ["newcomer", "overdue"], 0), (14 * 60, ["regular"], 14 * 60)]
    assert (report.dispatched, report.overdue, report.messages_sent) == (3, 2, 2)


def test_users_due_later_are_batched_by_moment_and_none_is_polled_early(monkeypatch):
    def scan(page_size: int = 1000):
        for k in range(25, 0, -1):  # the scan's order is not the moments' order
            yield users.PollingState(f"u{k:02d}", users.ACTIVE, None, NOW + timedelta(seconds=10 * k))

    _fake_users(monkeypatch, scan)
    sqs = FakeSQS()
    dispatch.dispatch(NOW, settings(batch_size=10, dispatch_period_minutes=15), sqs)
    start = int(NOW.timestamp())
    sent = [WorkMessage.model_validate_json(e["MessageBody"]) for e in sqs.sent]
    assert [(m.not_before - start, m.users) for m in sent] == [
        (100, [f"u{k:02d}" for k in range(1, 11)]), (200, [f"u{k:02d}" for k in range(11, 21)]),
        (250, [f"u{k:02d}" for k in range(21, 26)])]


def test_nobody_due_sends_nothing(monkeypatch):
    _fake_users(monkeypatch, polling_states(0))
    sqs = FakeSQS()
    report = dispatch.dispatch(NOW, settings(), sqs)
    assert (report.considered, report.dispatched, report.messages_sent, sqs.calls) == (0, 0, 0, [])


def test_a_hundred_thousand_users_in_one_invocation(monkeypatch):
    _fake_users(monkeypatch, polling_states(100_000))

    class CountingSQS(FakeSQS):
        def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803
            self.calls.append(len(Entries))  # remember only counts: the test must not hold the messages
            self.sent.append(json.loads(Entries[-1]["MessageBody"])["not_before"])
            return {"Successful": [{"Id": e["Id"], "MessageId": "m"} for e in Entries], "Failed": []}

    sqs = CountingSQS()
    tracemalloc.start()
    try:
        report = dispatch.dispatch(NOW, settings(batch_size=50), sqs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (report.considered, report.dispatched, report.messages_sent) == (100_000, 100_000, 2_000)
    assert sum(sqs.calls) == 2_000 and max(sqs.calls) == 10 and len(sqs.calls) == 200
    assert max(sqs.sent) - int(NOW.timestamp()) < 3600
    assert peak < 40 * 1024 * 1024, f"dispatch held {peak / 2**20:.1f} MiB for 100k users"


# ---------------------------------------------------------------- SendMessageBatch failures
def test_only_the_entries_sqs_reports_failed_are_retried():
    sqs = FakeSQS(fail={3: 1, 12: 2})
    messages = [WorkMessage(users=[f"u{i}"], not_before=i, window_id="w") for i in range(15)]
    sent = send_batches(sqs, "q", messages, [0] * 15, sleep=lambda _s: None)
    assert sent == 15
    assert [len(call) for call in sqs.calls] == [10, 1, 5, 1, 1]
    assert [c[0]["Id"] for c in sqs.calls if len(c) == 1] == ["3", "12", "12"]
    assert sorted(int(e["Id"]) for e in sqs.sent) == list(range(15))


def test_entries_failing_past_the_bound_raise_naming_how_many_were_left():
    sqs = FakeSQS(fail={1: 99, 4: 99})
    messages = [WorkMessage(users=[f"u{i}"], not_before=i, window_id="w") for i in range(6)]
    with pytest.raises(InfrastructureError, match=r"^2 work message\(s\) left unsent after 4"):
        send_batches(sqs, "q", messages, [0] * 6, sleep=lambda _s: None)
    assert len(sqs.calls) == 4


def test_a_sender_fault_is_not_retried():
    sqs = FakeSQS(fail={0: 1}, sender_fault=True)
    with pytest.raises(InfrastructureError, match="SQS refused"):
        send_batches(sqs, "q", [WorkMessage(users=["u"], not_before=0, window_id="w")], [0], sleep=lambda _s: None)
    assert len(sqs.calls) == 1


def test_a_delay_over_the_cap_is_refused_not_clamped():
    with pytest.raises(ValueError, match="DelaySeconds"):
        send_batches(FakeSQS(), "q", [WorkMessage(users=["u"], not_before=0, window_id="w")], [901])


# ---------------------------------------------------------------- who is due (moto + template)
@pytest.fixture
def clocked(emulator: Any, aws_env: Any) -> Any:
    return install_clock(emulator.state, NOW)


def _dispatch_settings(**overrides: Any) -> DispatcherSettings:
    return DispatcherSettings.from_env().model_copy(update=overrides)


def _dispatched_ids(sqs: RecordingSQS) -> list[str]:
    return sorted(u for s in sqs.sent for u in json.loads(s["body"])["users"])


def test_only_active_users_out_of_cooldown_whose_poll_has_come_are_dispatched(clocked, aws_env):
    import boto3

    cipher = make_cipher()
    create_user("active", "rt", cipher)  # never polled: due now
    create_user("reauth", None, cipher, status=users.NEEDS_REAUTH)
    create_user("resting", "rt", cipher, cooldown_until=NOW + timedelta(minutes=10))
    create_user("rested", "rt", cipher, cooldown_until=NOW - timedelta(seconds=1))
    create_user("done", "rt", cipher, next_poll_at=NOW + timedelta(minutes=40))  # after the next run
    create_user("overdue", "rt", cipher, next_poll_at=NOW - timedelta(minutes=3))
    create_user("soon", "rt", cipher, next_poll_at=NOW + timedelta(minutes=7))  # before the next run
    create_user("paused", "rt", cipher, status="paused")
    sqs = RecordingSQS(boto3.client("sqs"))
    report = dispatch.dispatch(NOW, _dispatch_settings(batch_size=1), sqs)
    assert _dispatched_ids(sqs) == ["active", "overdue", "rested", "soon"]
    assert (report.considered, report.dispatched, report.overdue, report.needs_reauth, report.in_cooldown,
            report.not_due, report.other_status) == (8, 4, 3, 1, 1, 1, 1)
    assert report.statuses == {"paused": 1}
    # The user due in 7 minutes is sent for that moment: its polls keep their rhythm.
    soon = next(WorkMessage.model_validate_json(m["body"]) for m in sqs.sent if "soon" in m["body"])
    assert soon.not_before == int((NOW + timedelta(minutes=7)).timestamp())


def test_while_the_gate_is_closed_nobody_is_dispatched(clocked, aws_env):
    import boto3

    from playvault.store import state

    cipher = make_cipher()
    for index in range(3):
        create_user(f"u{index}", "rt", cipher)
    state.close_rate_gate(NOW + timedelta(hours=2), NOW)
    sqs = RecordingSQS(boto3.client("sqs"))
    report = dispatch.dispatch(NOW, _dispatch_settings(), sqs)
    assert (report.dispatched, report.waiting_for_gate, sqs.sent) == (0, 3, [])
    assert report.gate_closed_until == (NOW + timedelta(hours=2)).isoformat()
    after = dispatch.dispatch(NOW + timedelta(hours=2, seconds=1), _dispatch_settings(), sqs)
    assert after.dispatched == 3 and _dispatched_ids(sqs) == ["u0", "u1", "u2"]


def test_needs_reauth_users_are_never_dispatched(clocked, aws_env):
    import boto3

    cipher = make_cipher()
    for index in range(5):
        create_user(f"gone{index}", None, cipher, status=users.NEEDS_REAUTH)
    sqs = RecordingSQS(boto3.client("sqs"))
    for hour in range(3):
        report = dispatch.dispatch(NOW + timedelta(hours=hour), _dispatch_settings(), sqs)
        assert (report.needs_reauth, report.dispatched) == (5, 0)
    assert sqs.sent == []


def test_a_user_in_cooldown_is_dispatched_once_the_cooldown_ends(clocked, aws_env):
    import boto3

    create_user("resting", "rt", make_cipher(), cooldown_until=NOW + timedelta(minutes=40))
    sqs = RecordingSQS(boto3.client("sqs"))
    assert dispatch.dispatch(NOW, _dispatch_settings(), sqs).in_cooldown == 1
    assert dispatch.dispatch(NOW + timedelta(minutes=39, seconds=59), _dispatch_settings(), sqs).dispatched == 0
    report = dispatch.dispatch(NOW + timedelta(minutes=40, seconds=1), _dispatch_settings(), sqs)
    assert (report.in_cooldown, report.dispatched) == (0, 1)
    assert _dispatched_ids(sqs) == ["resting"]


def test_dispatch_emits_its_metrics(clocked, aws_env, capsys, detailed_metrics):
    import boto3

    from playvault.metrics import metrics

    metrics.clear_metrics()  # the buffer is per container (module), shared by every test
    cipher = make_cipher()
    create_user("a", "rt", cipher)
    create_user("b", None, cipher, status=users.NEEDS_REAUTH)
    dispatch.dispatch(NOW, _dispatch_settings(), boto3.client("sqs"))
    metrics.flush_metrics()
    (blob,) = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    got = {k: blob[k] for k in ("UsersConsidered", "UsersDispatched", "UsersInCooldown", "UsersNeedingReauth",
                                "MessagesSent")}
    assert got == {"UsersConsidered": [2.0], "UsersDispatched": [1.0], "UsersInCooldown": [0.0],
                   "UsersNeedingReauth": [1.0], "MessagesSent": [1.0]}


def test_dispatcher_handler_takes_the_scheduled_event(load_function, lambda_context, clocked, aws_env):
    import boto3

    create_user("a", "rt", make_cipher())
    handler = load_function("DispatcherFunction")
    event = json.loads((EVENTS / "eventbridge_scheduled.json").read_text())
    report = handler(event, lambda_context("DispatcherFunction"))
    assert (report["considered"], report["dispatched"], report["messages_sent"]) == (1, 1, 1)
    sqs = boto3.client("sqs")
    got = sqs.receive_message(QueueUrl=aws_env.env["WORK_QUEUE_URL"], MaxNumberOfMessages=10)["Messages"]
    assert json.loads(got[0]["Body"]) == {"users": ["a"], "not_before": int(NOW.timestamp()),
                                          "window_id": report["window_id"]}


def test_dispatcher_handler_rejects_what_is_not_a_scheduled_event(load_function, lambda_context, aws_env):
    from aws_lambda_powertools.utilities.parser import ValidationError

    handler = load_function("DispatcherFunction")
    with pytest.raises(ValidationError):
        handler({"Records": []}, lambda_context("DispatcherFunction"))


# ---------------------------------------------------------------- a 60-minute window, simulated
def test_a_60_minute_window_polls_every_user_exactly_once(load_function, lambda_context, clocked, aws_env,
                                                          monkeypatch):
    """Dispatch 40 users in 20 batches over 60 min, then play SQS: each message becomes visible after
    its DelaySeconds; the worker bounces early ones with the remaining delay until not_before."""
    cipher = make_cipher()
    ids = [f"user{i:02d}" for i in range(40)]
    for user_id in ids:
        create_user(user_id, "rt", cipher)

    handler = load_function("WorkerFunction")
    worker = sys.modules[handler.__module__]
    polled: list[tuple[str, datetime]] = []

    class Archiver:
        def poll_worst_case_s(self) -> float:
            return 0.0  # no Spotify call

        def archive_user(self, user_id: str, budget: Any, **kwargs: Any) -> ArchiveResult:
            polled.append((user_id, clock.now()))
            return ArchiveResult(user_id, SUCCESS)

    monkeypatch.setattr(worker, "archiver", Archiver())

    class SimulatedSQS:
        """Messages become visible DelaySeconds after they are sent (by the injected clock)."""

        def __init__(self) -> None:
            self.visible: list[tuple[datetime, int, str]] = []
            self.delays: list[int] = []

        def _put(self, body: str, delay: int) -> None:
            assert 0 <= delay <= MAX_DELAY_S
            self.delays.append(delay)
            heapq.heappush(self.visible, (clock.now() + timedelta(seconds=delay), len(self.delays), body))

        def send_message_batch(self, QueueUrl: str, Entries: list[dict]) -> dict:  # noqa: N803
            for entry in Entries:
                self._put(entry["MessageBody"], entry["DelaySeconds"])
            return {"Successful": [{"Id": e["Id"], "MessageId": "m"} for e in Entries], "Failed": []}

        def send_message(self, QueueUrl: str, MessageBody: str, DelaySeconds: int = 0) -> dict:  # noqa: N803
            self._put(MessageBody, DelaySeconds)
            return {"MessageId": "m"}

    sqs = SimulatedSQS()
    monkeypatch.setattr(worker, "sqs", sqs)
    report = dispatch.dispatch(NOW, _dispatch_settings(batch_size=2, dispatch_period_minutes=60), sqs)
    assert report.messages_sent == 20
    not_before = {u: m.not_before for b in [e[2] for e in sqs.visible]
                  for m in [WorkMessage.model_validate_json(b)] for u in m.users}

    deliveries = 0
    while sqs.visible:
        visible_at, _, body = heapq.heappop(sqs.visible)
        clocked.set(max(clocked.now, visible_at))
        response = handler(sqs_event(sqs_record(body)), lambda_context("WorkerFunction"))
        assert response == {"batchItemFailures": []}
        deliveries += 1
        assert deliveries < 200, "messages keep bouncing"

    assert Counter(u for u, _ in polled) == Counter(ids), "every user exactly once"
    for user_id, at in polled:
        assert int(at.timestamp()) >= not_before[user_id] - worker.NOT_BEFORE_SLACK_S
        assert at < NOW + timedelta(seconds=3600)
    assert max(sqs.delays) == MAX_DELAY_S
    # A batch due at 57 min needs 3 bounces of 900 s and a last one: more deliveries than messages.
    assert deliveries > report.messages_sent
    assert queue.MAX_DELAY_S == 900


def test_a_15_minute_schedule_polls_a_heavy_listener_every_run_and_a_light_one_hourly(
        load_function, lambda_context, clocked, emulator, aws_env):
    """Three hours of a 15-minute dispatcher: the heavy listener (70 plays an hour) fills 25+ new
    plays a run and is polled every run; the light one (6 an hour) once an hour, in batches of its own."""
    from tests.unit.test_worker import onboard

    onboard(emulator, aws_env, ["heavy", "light"], listen_hours=0)
    start = clocked.now
    emulator.state.simulate_listening("heavy", start - timedelta(hours=1), start + timedelta(hours=3), 70)
    emulator.state.simulate_listening("light", start, start + timedelta(hours=3), 6)
    handler = load_function("WorkerFunction")
    worker = sys.modules[handler.__module__]
    worker.spotify._sleep = lambda _s: None
    import boto3

    sqs = RecordingSQS(boto3.client("sqs"))
    settings = _dispatch_settings(dispatch_period_minutes=15)
    for run in range(12):
        run_at = start + timedelta(minutes=15 * run)
        clocked.set(run_at)
        sent = len(sqs.sent)
        dispatch.dispatch(run_at, settings, sqs)
        for message in sorted((WorkMessage.model_validate_json(m["body"]) for m in sqs.sent[sent:]),
                              key=lambda m: m.not_before):
            clocked.set(max(clocked.now, datetime.fromtimestamp(message.not_before, UTC)))
            assert handler(sqs_event(sqs_record(message.body())), lambda_context("WorkerFunction")) == {
                "batchItemFailures": []}
    stored = sorted(int(p.played_at_ms) for p in plays.all_plays("heavy"))
    truth = [p["played_at_ms"] for p in emulator.state.ground_truth("heavy")]
    # up to its last poll (later plays wait for the next one): the light listener's batch is now its
    # own, so the clock ends at the light listener's last moment, after the heavy one's last poll
    last_poll_ms = int(users.get("heavy").last_polled_at.timestamp() * 1000)
    assert stored == [t for t in truth if stored[0] <= t <= last_poll_ms], "after the first poll nothing lost"
    assert users.get("heavy").gaps_detected == 0
    runs_polled = Counter(u for m in sqs.sent for u in WorkMessage.model_validate_json(m["body"]).users)
    assert runs_polled["heavy"] == 12  # every 15 minutes
    # once an hour, each poll at its moment (a minute early: Cadence), whatever the heavy one does
    light = [m.not_before for m in (WorkMessage.model_validate_json(x["body"]) for x in sqs.sent) if "light" in m.users]
    assert [b - a for a, b in zip(light, light[1:], strict=False)] == [3540] * (runs_polled["light"] - 1)
    assert runs_polled["light"] == 4  # at 0, 59, 118 and 177 minutes
