"""Dispatch: pick the users due for a poll, batch them, spread them over the period, send.

The dispatcher runs every `dispatch_period_minutes` (15 by default). Each user carries
`next_poll_at`, set by the worker from what the last poll saw (store/users.py, archive.Cadence):
an hour later normally, at the next run after a gap or a busy poll. A run sends every active user,
not resting in the circuit breaker, whose next poll falls before the next run; everyone else is
counted by the reason they were left out (needs_reauth, cooldown, not due, other status), so the
dispatcher's metrics explain every user.

When: a user due later in the period is sent for that moment (its offset from now), so a user's
polls keep their rhythm: those users are grouped in batches of `batch_size` in order of their
moment, and a batch is due at its last member's moment (nobody is polled early). Users already
overdue (new, deferred, late) are batched apart and their batches spread evenly over the period,
the first at once: a newcomer never waits for another user's later moment.

While Spotify limits the app (the rate gate is closed), nobody is sent: deferred users keep their
one pending poll (next_poll_at is not moved) and the first run after the gate opens spreads them
over its period. Backlogs therefore collapse instead of piling up a copy per run. Every run reports
the gate as `RateLimited` (1 closed, 0 open): with nobody sent no worker reports it, and the
sustained-rate-limit alarm needs a datapoint in every period of a long limit.

Spreading past SQS's 15-minute DelaySeconds cap: each message carries `not_before` = dispatch time
+ its offset and is sent with DelaySeconds = min(offset, 900); a worker receiving it early sends it
back with the rest of the delay. Periods over 15 minutes therefore still poll everyone on time.

Scale: the users table is scanned with a projection, page by page, once per run (the dispatcher
passes the same Scan through `Lifecycle.set_aside`: a second Scan would bill every user item's read
units again); only the due users' ids and offsets are kept (about 100 bytes a user). Messages are
built and sent 10 at a time.

Redelivery safety: if sending fails half-way the invocation fails and EventBridge retries it;
users already sent are sent again, and the worker's run stamp on each user makes the second poll a
no-op.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from aws_lambda_powertools import Logger

from playvault import metrics
from playvault.config import DispatcherSettings
from playvault.queue import MAX_DELAY_S, WorkMessage, delay_for, send_batches, window_id_of
from playvault.store import state, users

logger = Logger(child=True)


@dataclass
class DispatchReport:
    dispatched_at: str
    window_id: str
    period_seconds: int
    batch_size: int
    considered: int = 0
    dispatched: int = 0
    overdue: int = 0  # of dispatched: their poll was already due (spread over the period)
    in_cooldown: int = 0
    needs_reauth: int = 0
    not_due: int = 0
    other_status: int = 0
    gate_closed_until: str | None = None  # Spotify limits the app: nobody was sent
    waiting_for_gate: int = 0
    messages_sent: int = 0
    max_delay_seconds: int = 0
    last_offset_seconds: int = 0
    statuses: dict[str, int] = field(default_factory=dict)  # other statuses by name

    def to_dict(self) -> dict:
        return asdict(self)


def offsets(batches: int, window_s: int) -> Iterator[int]:
    """Evenly spread offsets (seconds after dispatch) of `batches` slots over [0, window_s)."""
    for index in range(batches):
        yield index * window_s // batches


def _due_users(now: datetime, period_s: int, report: DispatchReport,
               states: Iterable[users.PollingState]) -> tuple[list[tuple[int, str]], list[str]]:
    """(timed, overdue): (offset, user id) of the users due later in the period, in order of offset,
    and the ids of those already due."""
    horizon = now.timestamp() + period_s
    timed: list[tuple[int, str]] = []
    overdue: list[str] = []
    for user in states:
        report.considered += 1
        if user.status != users.ACTIVE:
            if user.status == users.NEEDS_REAUTH:
                report.needs_reauth += 1
            else:
                report.other_status += 1
                report.statuses[user.status] = report.statuses.get(user.status, 0) + 1
        elif user.cooldown_until is not None and user.cooldown_until > now:
            report.in_cooldown += 1
        elif user.next_poll_at is None or user.next_poll_at <= now:
            overdue.append(user.user_id)
        elif user.next_poll_at.timestamp() < horizon:
            timed.append((int(user.next_poll_at.timestamp() - now.timestamp()), user.user_id))
        else:
            report.not_due += 1
    report.overdue = len(overdue)
    return sorted(timed), overdue


def plan_batches(timed: list[tuple[int, str]], overdue: list[str], size: int,
                 period_s: int) -> list[tuple[int, list[str]]]:
    """(offset, user ids) of each message, in order of offset: timed users in batches due at their
    last member's moment, overdue users in batches of their own spread evenly over the period."""
    plan = []
    for start in range(0, len(timed), size):
        batch = timed[start:start + size]
        plan.append((batch[-1][0], [user_id for _, user_id in batch]))
    overdue_batches = [overdue[i:i + size] for i in range(0, len(overdue), size)]
    plan += zip(offsets(len(overdue_batches), period_s), overdue_batches, strict=True)
    return sorted(plan, key=lambda entry: entry[0])


def dispatch(now: datetime, settings: DispatcherSettings, sqs_client,
             states: Iterable[users.PollingState] | None = None) -> DispatchReport:
    """Send every due user to the work queue, batched and spread over the period. `states`: every
    user's polling state (default: a Scan of the users table), read to the end even when the gate is
    closed."""
    period_s = settings.dispatch_period_minutes * 60
    report = DispatchReport(
        dispatched_at=now.astimezone(UTC).isoformat(),
        window_id=window_id_of(now),
        period_seconds=period_s,
        batch_size=settings.batch_size,
    )
    timed, overdue = _due_users(now, period_s, report,
                                users.scan_polling_state() if states is None else states)
    gate = state.rate_limited_until(now)
    if gate is not None:
        report.gate_closed_until = gate.isoformat()
        report.waiting_for_gate = len(timed) + len(overdue)
        timed, overdue = [], []
        logger.warning("Spotify limits the app: nobody dispatched this run",
                       extra={"gate_closed_until": report.gate_closed_until, "users_waiting": report.waiting_for_gate})
    report.dispatched = len(timed) + len(overdue)
    plan = plan_batches(timed, overdue, settings.batch_size, period_s)
    start_s = int(now.timestamp())

    def messages() -> Iterator[WorkMessage]:
        for offset, user_ids in plan:
            yield WorkMessage(users=user_ids, not_before=start_s + offset, window_id=report.window_id)

    report.messages_sent = send_batches(sqs_client, settings.work_queue_url, messages(),
                                        (delay_for(offset) for offset, _ in plan))
    report.last_offset_seconds = plan[-1][0] if plan else 0
    report.max_delay_seconds = min(report.last_offset_seconds, MAX_DELAY_S)

    metrics.count(metrics.RATE_LIMITED, 1 if gate is not None else 0)
    metrics.count(metrics.USERS_CONSIDERED, report.considered)
    metrics.count(metrics.USERS_DISPATCHED, report.dispatched)
    metrics.count(metrics.USERS_IN_COOLDOWN, report.in_cooldown)
    metrics.count(metrics.USERS_NEEDING_REAUTH, report.needs_reauth)
    metrics.count(metrics.MESSAGES_SENT, report.messages_sent)
    logger.info("dispatch report", extra={"report": report.to_dict()})
    return report
