"""archive_batch: the users of one work message, archived concurrently.

Isolation: every user runs in its own task of a bounded ThreadPoolExecutor (size = concurrency; the
SpotifyClient's connection pool is sized to match). A user's own failure, even an unexpected
exception, is that user's result; it never touches another user. Only an infrastructure error
(DynamoDB throttled/unavailable) aborts the batch: no further user is started, the running ones
finish, and BatchAborted (an InfrastructureError carrying the partial outcome) is raised so the
message is redelivered.

At most once per dispatch run: each user's poll ends in one UpdateItem conditional on the run stamp
(`last_run`) and the version the poll read (store/users.py), and a user already stamped with this
run is skipped before Spotify is asked. So a redelivered or duplicated message re-archives nobody,
and two polls of one user at once record one result. (Whole duplicate deliveries of a message are
caught earlier, by Powertools Idempotency in the worker.)

Budget: a user is started only while the time left covers its worst case: every Spotify call of a
poll answering at its timeout, plus `writes_reserve_ms` for the writes after the last call (and at
least min_remaining_ms). The user's Spotify calls see the time left minus that reserve, so a slow
answer can use up the Spotify share but never the writes': a user whose calls run out of it is
given up before any write. Both come back `unstarted`, and the worker requeues them as a new
message; nothing runs past the Lambda deadline, which would redeliver the whole batch.
Gate: checked once before the first user; if Spotify limits the app (gate closed, or a user comes
back deferred) no further user is started and the rest are `deferred`. Deferred users are not
requeued: they stay due (next_poll_at unchanged) and the dispatcher sends them, spread over its
period, at its first run after the gate opens. So a long rate limit leaves each user one pending
poll, not one copy per window.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from aws_lambda_powertools import Logger

from playvault import clock
from playvault.archive import DEFERRED, FAILED, SKIPPED, SUCCESS, Archiver, ArchiveResult
from playvault.failures import FailureType, InfrastructureError, OutOfTime, is_infrastructure_error
from playvault.spotify import Budget
from playvault.store import state

logger = Logger(child=True)


@dataclass
class BatchOutcome:
    results: list[ArchiveResult] = field(default_factory=list)
    unstarted: list[str] = field(default_factory=list)  # out of time: the message must come back
    deferred: list[str] = field(default_factory=list)  # the app cannot poll now: left due
    deferred_until: datetime | None = None
    quota_exceeded: bool = False
    duration_ms: int = 0

    def _count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def processed(self) -> int:
        """Users that got a result other than deferred."""
        return sum(1 for r in self.results if r.status != DEFERRED)

    @property
    def successful(self) -> int:
        return self._count(SUCCESS)

    @property
    def skipped(self) -> int:
        return self._count(SKIPPED)

    @property
    def failed(self) -> int:
        return self._count(FAILED)

    @property
    def plays_archived(self) -> int:
        return sum(r.plays_archived for r in self.results if r.status == SUCCESS)

    @property
    def late_plays(self) -> int:
        return sum(r.late_plays for r in self.results if r.status == SUCCESS)

    @property
    def bad_items(self) -> int:
        return sum(r.bad_items for r in self.results)

    @property
    def new_tracks(self) -> int:
        return sum(r.new_tracks for r in self.results if r.status == SUCCESS)

    @property
    def gaps(self) -> int:
        return sum(1 for r in self.results if r.status == SUCCESS and r.gap_detected)

    @property
    def failures_by_type(self) -> dict[str, int]:
        return dict(Counter(r.failure_type or FailureType.UNKNOWN.value for r in self.results if r.status == FAILED))

    def report(self) -> dict[str, Any]:
        """The batch report logged by the worker (the seed's fields)."""
        return {
            "processed": self.processed,
            "successful": self.successful,
            "skipped": self.skipped,
            "failed": self.failed,
            "plays_archived": self.plays_archived,
            "late_plays": self.late_plays,
            "bad_items_skipped": self.bad_items,
            "new_tracks": self.new_tracks,
            "gaps_detected": self.gaps,
            "failures_by_type": self.failures_by_type,
            "unstarted": len(self.unstarted),
            "deferred": len(self.deferred),
            "deferred_until": self.deferred_until.isoformat() if self.deferred_until else None,
            "quota_exceeded": self.quota_exceeded,
            "duration_ms": self.duration_ms,
        }


class BatchAborted(InfrastructureError):
    """An infrastructure error stopped the batch; `outcome` holds what was done before it."""

    def __init__(self, cause: BaseException, outcome: BatchOutcome):
        super().__init__(f"batch aborted by an infrastructure error: {type(cause).__name__}: {cause}")
        self.outcome = outcome


def archive_batch(
    user_ids: list[str],
    *,
    archiver: Archiver,
    budget: Budget,
    run_id: str | None,
    due_by: datetime | None = None,
    concurrency: int,
    min_remaining_ms: int = 20_000,
    writes_reserve_ms: int = 0,
    poll_worst_case_ms: int = 0,
) -> BatchOutcome:
    """`poll_worst_case_ms`: a poll's Spotify calls each answering at its timeout (Archiver.poll_worst_case_s)."""
    started_at = time.monotonic()
    start_needs_ms = max(min_remaining_ms, poll_worst_case_ms + writes_reserve_ms)
    spotify_budget = Budget(lambda: int(budget.remaining_s() * 1000), reserve_ms=writes_reserve_ms)
    outcome = BatchOutcome()
    # Shared between the tasks: why to stop starting users.
    lock = threading.Lock()
    gate: dict[str, Any] = {"until": None, "quota": False}
    infra: list[BaseException] = []

    until = state.rate_limited_until(clock.now())
    if until is not None:
        outcome.deferred = list(user_ids)
        outcome.deferred_until = until
        outcome.duration_ms = int((time.monotonic() - started_at) * 1000)
        return outcome

    def run(user_id: str) -> tuple[str, ArchiveResult | None]:
        """('done', result) | ('unstarted', None) | ('deferred', None) | ('aborted', None)."""
        if infra:
            return "aborted", None
        if gate["until"] is not None:
            return "deferred", None
        if budget.remaining_s() * 1000 < start_needs_ms:
            return "unstarted", None
        try:
            result = archiver.archive_user(user_id, spotify_budget, run_id=run_id, due_by=due_by)
        except OutOfTime:
            return "unstarted", None  # gave up before writing anything: polled again from the requeue
        except Exception as exc:  # noqa: BLE001 - one user's failure must never affect another
            if is_infrastructure_error(exc):
                with lock:
                    infra.append(exc)
                return "aborted", None
            logger.exception("unexpected error archiving a user", extra={"user_id": user_id})
            result = ArchiveResult(user_id, FAILED, failure_type=FailureType.UNKNOWN.value,
                                   reason=type(exc).__name__)
        if result.status == DEFERRED:
            _note_gate(gate, lock, result)
        return "done", result

    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="archive") as pool:
        # map keeps the order of user_ids; tasks start in order, so "unstarted" is a suffix in practice.
        answers = list(pool.map(run, user_ids))

    for user_id, (kind, result) in zip(user_ids, answers, strict=True):
        if kind == "done" and result is not None:
            outcome.results.append(result)
            if result.status == DEFERRED:
                outcome.deferred.append(user_id)
        elif kind == "deferred":
            outcome.deferred.append(user_id)
        else:  # unstarted, or not started because the batch was aborted
            outcome.unstarted.append(user_id)
    if outcome.deferred:
        outcome.deferred_until = gate["until"] or state.rate_limited_until(clock.now()) or clock.now()
        outcome.quota_exceeded = bool(gate["quota"])
    outcome.duration_ms = int((time.monotonic() - started_at) * 1000)
    if infra:
        raise BatchAborted(infra[0], outcome) from infra[0]
    return outcome


def _note_gate(gate: dict[str, Any], lock: threading.Lock, result: ArchiveResult) -> None:
    """A user came back deferred: the archiver closed the gate; learn its deadline (latest wins)."""
    now = clock.now()
    try:
        until = state.rate_limited_until(now)
    except Exception:  # noqa: BLE001 - the result's own Retry-After is a fine fallback
        until = None
    if until is None:
        until = now + timedelta(seconds=result.retry_after_s or 60)
    with lock:
        if gate["until"] is None or until > gate["until"]:
            gate["until"] = until
        gate["quota"] = gate["quota"] or result.quota
