"""archive_batch: the users of one work message, archived concurrently, each idempotent per hour.

Isolation: every user runs in its own task of a bounded ThreadPoolExecutor (size = concurrency; the
SpotifyClient's connection pool is sized to match). A user's own failure, even an unexpected
exception, is that user's result; it never touches another user. Only an infrastructure error
(DynamoDB throttled/unavailable, the idempotency store failing) aborts the batch: no further user
is started, the running ones finish, and BatchAborted (an InfrastructureError carrying the partial
outcome) is raised so the message is redelivered.

Idempotency (Powertools): each user's poll is an `idempotent_function` whose payload carries the
key `archive_{user_id}_{YYYY_MM_DD_HH}` (the hour from playvault.clock), stored in the
IDEMPOTENCY_TABLE through DynamoDBPersistenceLayer with a 24 h expiry.
- success or skip: the record is COMPLETED with the result; a second delivery in the same hour
  gets that result back and reports the user skipped ("already archived this hour");
- failed or deferred: the function raises, so Powertools deletes the record and a retry (the next
  delivery, or the requeue after a rate limit) is not blocked; the result is recovered from the
  exception;
- IdempotencyAlreadyInProgressError: another worker is polling that user right now: skipped.
  An in-progress record expires with the invocation's time budget, so a crashed worker does not
  block the user for the rest of the hour.
The persistence layer is shared by the threads. Its per-call state lives in the IdempotencyHandler
each call creates; the layer itself holds only configuration (set once, here, before any thread
starts), a boto3 client (thread-safe) and an optional local cache, which is the one unsynchronized
structure and stays disabled (use_local_cache=False).

Budget: a user is started only while budget.remaining >= min_remaining_ms; the others are returned
`unstarted` (the message then fails and is redelivered; idempotency skips the users already done).
Rate gate: checked once before the first user; if Spotify rate-limits the app (gate closed, or a
user comes back deferred) no further user is started and the rest are returned `deferred` with
the gate's deadline.
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
from aws_lambda_powertools.utilities.idempotency import (
    BasePersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyInconsistentStateError,
    IdempotencyPersistenceLayerError,
)

from playvault import clock
from playvault.archive import DEFERRED, FAILED, SKIPPED, SUCCESS, Archiver, ArchiveResult
from playvault.failures import FailureType, InfrastructureError, is_infrastructure_error
from playvault.spotify import Budget
from playvault.store import state

logger = Logger(child=True)

IDEMPOTENCY_EXPIRY_S = 86_400
IDEMPOTENCY_KEY_PREFIX = "playvault.archive_user"
ALREADY_ARCHIVED = "already archived this hour"
IN_PROGRESS = "being archived by another worker"


def idempotency_key(user_id: str, hour_key: str) -> str:
    return f"archive_{user_id}_{hour_key}"


@dataclass
class BatchOutcome:
    results: list[ArchiveResult] = field(default_factory=list)
    unstarted: list[str] = field(default_factory=list)  # out of time: the message must come back
    deferred: list[str] = field(default_factory=list)  # rate limited: requeue at deferred_until
    deferred_until: datetime | None = None
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
            "new_tracks": self.new_tracks,
            "gaps_detected": self.gaps,
            "failures_by_type": self.failures_by_type,
            "unstarted": len(self.unstarted),
            "deferred": len(self.deferred),
            "deferred_until": self.deferred_until.isoformat() if self.deferred_until else None,
            "duration_ms": self.duration_ms,
        }


class BatchAborted(InfrastructureError):
    """An infrastructure error stopped the batch; `outcome` holds what was done before it."""

    def __init__(self, cause: BaseException, outcome: BatchOutcome):
        super().__init__(f"batch aborted by an infrastructure error: {type(cause).__name__}: {cause}")
        self.outcome = outcome


class _NotDone(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised inside the idempotent function so Powertools deletes the record; carries the result."""

    def __init__(self, result: ArchiveResult):
        super().__init__(result.status)
        self.result = result


class _BudgetContext:
    """Lets Powertools expire an in-progress record when this invocation's time runs out."""

    def __init__(self, budget: Budget):
        self._budget = budget

    def get_remaining_time_in_millis(self) -> int:
        return int(self._budget.remaining_s() * 1000)


def _mark_replayed(response: Any, _record: Any) -> Any:
    return {**(response or {}), "_replayed": True}


_configure_lock = threading.Lock()


def archive_batch(
    user_ids: list[str],
    *,
    archiver: Archiver,
    budget: Budget,
    hour_key: str,
    persistence: BasePersistenceLayer,
    concurrency: int,
    min_remaining_ms: int = 20_000,
) -> BatchOutcome:
    started_at = time.monotonic()
    outcome = BatchOutcome()
    config = IdempotencyConfig(
        event_key_jmespath="idempotency_key",
        expires_after_seconds=IDEMPOTENCY_EXPIRY_S,
        raise_on_no_idempotency_key=True,
        use_local_cache=False,
        response_hook=_mark_replayed,
        lambda_context=_BudgetContext(budget),  # type: ignore[arg-type]
    )
    with _configure_lock:  # configure once, before threads share the layer
        persistence.configure(config, key_prefix=IDEMPOTENCY_KEY_PREFIX)

    @idempotent_function(
        data_keyword_argument="payload",
        persistence_store=persistence,
        config=config,
        key_prefix=IDEMPOTENCY_KEY_PREFIX,
    )
    def archive_once(*, payload: dict[str, str]) -> dict[str, Any]:
        result = archiver.archive_user(payload["user_id"], budget, window=hour_key)
        if result.status in (FAILED, DEFERRED):
            raise _NotDone(result)
        return result.to_dict()

    # Shared between the tasks: why to stop starting users.
    lock = threading.Lock()
    gate: dict[str, Any] = {"until": None}
    infra: list[BaseException] = []

    now = clock.now()
    until = state.rate_limited_until(now)
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
        if budget.remaining_s() * 1000 < min_remaining_ms:
            return "unstarted", None
        payload = {"user_id": user_id, "idempotency_key": idempotency_key(user_id, hour_key)}
        try:
            answer = archive_once(payload=payload)
        except _NotDone as not_done:
            result = not_done.result
        except IdempotencyAlreadyInProgressError:
            result = ArchiveResult(user_id, SKIPPED, reason=IN_PROGRESS)
        except (IdempotencyPersistenceLayerError, IdempotencyInconsistentStateError) as exc:
            with lock:
                infra.append(exc)
            return "aborted", None
        except Exception as exc:  # noqa: BLE001 - one user's failure must never affect another
            if is_infrastructure_error(exc):
                with lock:
                    infra.append(exc)
                return "aborted", None
            logger.exception("unexpected error archiving a user", extra={"user_id": user_id})
            result = ArchiveResult(user_id, FAILED, failure_type=FailureType.UNKNOWN.value,
                                   reason=type(exc).__name__)
        else:
            if answer.pop("_replayed", False):
                result = ArchiveResult(user_id, SKIPPED, reason=ALREADY_ARCHIVED)
            else:
                result = ArchiveResult.from_dict(answer)
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
        else:  # unstarted, or not started because the batch was aborted: both come back by redelivery
            outcome.unstarted.append(user_id)
    if outcome.deferred:
        outcome.deferred_until = gate["until"] or state.rate_limited_until(clock.now()) or clock.now()
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
