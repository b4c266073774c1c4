"""Dispatch: pick the users due for a poll, batch them, spread the batches over the window, send.

Who is due: status active, not resting in the circuit breaker (cooldown_until > now), and not
already archived in this dispatch window (the UTC hour of the dispatch; a user polled late in the
previous window, i.e. in this clock hour, is due again). Everyone else is counted by the reason they were left
out (needs_reauth, cooldown, already archived, other status), so the dispatcher's metrics explain
every user.

Spreading past SQS's 15-minute DelaySeconds cap
-----------------------------------------------
The n batches of one dispatch are spread evenly over `spread_window_seconds` (W): batch i gets the
offset floor(i * W / n), so the work (and the Spotify request rate) is flat across the window.
SQS caps DelaySeconds at 900 s, and clamping silently would pile every batch with an offset over
15 minutes onto minute 15. Instead each message carries `not_before` = dispatch time + its offset
(Unix seconds) and is sent with DelaySeconds = min(offset, 900). A worker receiving a message whose
`not_before` is still in the future does not process it: it sends it back with DelaySeconds =
min(remaining, 900) and deletes the original. So a batch due 50 minutes into a 60-minute window
travels 900 + 900 + 900 + 300 s and is processed once, on time; no user is dropped or duplicated,
whatever the window (up to a day). Each hop costs one SendMessage and one short worker invocation.

Scale: the users table is scanned with a 4-attribute projection, page by page, and only the ids of
due users are kept (they are needed to know n before the first offset can be computed: about
100 bytes per user, ~10 MB at 100,000 users). Messages are built and sent 10 at a time, never all
at once.

Redelivery safety: if sending fails half-way the invocation fails and EventBridge retries it; users
already sent are sent again, and the worker's per-user-per-hour idempotency makes the second poll
a no-op.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from aws_lambda_powertools import Logger

from playvault import clock, metrics
from playvault.config import DispatcherSettings
from playvault.queue import MAX_DELAY_S, WorkMessage, delay_for, send_batches, window_id_of
from playvault.store import users

logger = Logger(child=True)


@dataclass
class DispatchReport:
    dispatched_at: str
    window_id: str
    spread_window_seconds: int
    batch_size: int
    considered: int = 0
    dispatched: int = 0
    in_cooldown: int = 0
    needs_reauth: int = 0
    already_archived: int = 0
    other_status: int = 0
    messages_sent: int = 0
    max_delay_seconds: int = 0
    last_offset_seconds: int = 0
    statuses: dict[str, int] = field(default_factory=dict)  # other statuses by name

    def to_dict(self) -> dict:
        return asdict(self)


def offsets(batches: int, window_s: int) -> Iterator[int]:
    """Evenly spread offsets (seconds after dispatch) of `batches` batches over [0, window_s)."""
    for index in range(batches):
        yield index * window_s // batches


def _due_user_ids(now: datetime, report: DispatchReport) -> list[str]:
    this_window = clock.hour_key(now)
    due: list[str] = []
    for user in users.scan_polling_state():
        report.considered += 1
        if user.status != users.ACTIVE:
            if user.status == users.NEEDS_REAUTH:
                report.needs_reauth += 1
            else:
                report.other_status += 1
                report.statuses[user.status] = report.statuses.get(user.status, 0) + 1
        elif user.cooldown_until is not None and user.cooldown_until > now:
            report.in_cooldown += 1
        elif user.last_window == this_window:
            report.already_archived += 1
        else:
            due.append(user.user_id)
    return due


def dispatch(now: datetime, settings: DispatcherSettings, sqs_client) -> DispatchReport:
    """Send every due user to the work queue, batched and spread over the window."""
    window_s = settings.spread_window_seconds
    report = DispatchReport(
        dispatched_at=now.astimezone(UTC).isoformat(),
        window_id=window_id_of(now),
        spread_window_seconds=window_s,
        batch_size=settings.batch_size,
    )
    due = _due_user_ids(now, report)
    report.dispatched = len(due)
    size = settings.batch_size
    batches = -(-len(due) // size)
    start_s = int(now.timestamp())
    plan = list(offsets(batches, window_s)) if batches else []

    def messages() -> Iterator[WorkMessage]:
        for index, offset in enumerate(plan):
            yield WorkMessage(users=due[index * size : (index + 1) * size], not_before=start_s + offset,
                              window_id=report.window_id)

    report.messages_sent = send_batches(sqs_client, settings.work_queue_url, messages(),
                                        (delay_for(offset) for offset in plan))
    report.last_offset_seconds = plan[-1] if plan else 0
    report.max_delay_seconds = min(report.last_offset_seconds, MAX_DELAY_S)

    metrics.count(metrics.USERS_CONSIDERED, report.considered)
    metrics.count(metrics.USERS_DISPATCHED, report.dispatched)
    metrics.count(metrics.USERS_IN_COOLDOWN, report.in_cooldown)
    metrics.count(metrics.USERS_NEEDING_REAUTH, report.needs_reauth)
    metrics.count(metrics.MESSAGES_SENT, report.messages_sent)
    logger.info("dispatch report", extra={"report": report.to_dict()})
    return report
