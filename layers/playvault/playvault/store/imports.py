"""Imports aggregate: one status item per import job, plus the job's list of tracks to resolve.

Keys (ImportsTable, user_id + item): `job#<job id>` is the job's status (what /me shows: files,
rows read, plays added, duplicates, skipped by reason, tracks to resolve, state, error with file and
row, progress for the ETA) and its position (file index + row index of the next row to read);
`resolve#<job id>#<n>` holds the ids of tracks the catalog did not know, found by chunk n (written
once; the job item records how far the catalog phase got: resolve_position, resolve_offset);
`lock` is the user's import lock: the job whose delivery may write plays now (holder_job, its lease
token and lease_until), present only while a job holds its lease.

One job per user writes at a time: a job's pre-check (playvault.imports.dedup) reads the plays
already archived and the post-write merge (store/plays.reconcile) pairs export rows only with polled
plays, so two jobs of one user that both pre-checked before either wrote would each write a row for
the same stream. `claim` takes the lock with the job's lease in one transaction, `hold` extends both,
and releasing the lease releases the lock; a crashed holder's lock lapses with its lease. A job that
finds the lock taken raises UserBusy and waits (the importer continues it later through the queue).

Every progress write is conditional on the caller's lease and on the position it started from, so
two deliveries of the same job cannot both count a chunk, and a retried chunk (crash, timeout) is
counted once: its rows are rewritten under the same keys and recognised (playvault.imports.dedup).

Deletion (playvault.deletion): a job is created only while its user exists and is not `deleting`
(one transaction with a condition check on the user), a lease is never taken on a job item that is
gone (an update would create it), and before any chunk writes, `hold` checks the user in the same
transaction that extends the lease: once the user is marked deleting no chunk starts, and the
deletion knows every chunk that may still be writing from the live leases (`lease_held_until`).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pynamodb.attributes import (
    JSONAttribute,
    NumberAttribute,
    UnicodeAttribute,
    UnicodeSetAttribute,
    UTCDateTimeAttribute,
)
from pynamodb.exceptions import DeleteError, UpdateError
from pynamodb.models import Model
from pynamodb.transactions import TransactWrite

from playvault.store import seats
from playvault.store.base import BaseMeta, condition_failed, table
from playvault.store.users import DELETING, UserModel

QUEUED = "queued"
RUNNING = "running"
PAUSED = "paused"  # Spotify rate-limits the app: resumes by itself at paused_until
DONE = "done"
FAILED = "failed"
TERMINAL = (DONE, FAILED)

PHASE_IMPORT = "import"
PHASE_RESOLVE = "resolve"

JOB_PREFIX = "job#"
RESOLVE_PREFIX = "resolve#"
LOCK_KEY = "lock"


@table("imports_table")
class ImportModel(Model):
    class Meta(BaseMeta):
        pass

    user_id = UnicodeAttribute(hash_key=True)
    item = UnicodeAttribute(range_key=True)
    # job status
    object_key = UnicodeAttribute(null=True)
    file_name = UnicodeAttribute(null=True)  # as the browser named the file (the key never carries it)
    upload_bytes = NumberAttribute(null=True)
    state = UnicodeAttribute(null=True)
    phase = UnicodeAttribute(null=True)
    created_at = UTCDateTimeAttribute(null=True)
    started_at = UTCDateTimeAttribute(null=True)
    updated_at = UTCDateTimeAttribute(null=True)
    finished_at = UTCDateTimeAttribute(null=True)
    files = JSONAttribute(null=True)  # [{name, kind, size, state, rows_read, error}]
    file_index = NumberAttribute(null=True)
    row_index = NumberAttribute(null=True)
    bytes_done = NumberAttribute(null=True)
    rows_read = NumberAttribute(null=True)
    plays_added = NumberAttribute(null=True)
    duplicates = NumberAttribute(null=True)
    skipped = JSONAttribute(null=True)  # reason -> count
    episodes_added = NumberAttribute(null=True)
    tracks_to_resolve = NumberAttribute(null=True)
    tracks_resolved = NumberAttribute(null=True)
    resolve_chunks = NumberAttribute(null=True)
    resolve_position = NumberAttribute(null=True)  # resolve items fully done
    resolve_offset = NumberAttribute(null=True)  # ids (sorted) of the next resolve item already done
    first_ms = NumberAttribute(null=True)  # the oldest and newest stream read: what the import covers
    last_ms = NumberAttribute(null=True)
    # Mondays (YYYY-MM-DD, UTC) of the weeks with a stream read: the coverage timeline draws import
    # coverage only there (a set: ADD is a union, so a retried chunk adds nothing). ~11 bytes a week.
    stream_weeks = UnicodeSetAttribute(null=True)
    error = UnicodeAttribute(null=True)
    error_file = UnicodeAttribute(null=True)
    error_row = NumberAttribute(null=True)
    paused_until = UTCDateTimeAttribute(null=True)
    # AWS failures in a row at one position (attempt_at): bounded, then the job fails
    attempts = NumberAttribute(null=True)
    attempt_at = UnicodeAttribute(null=True)
    last_failure = UnicodeAttribute(null=True)
    lookup_failures = NumberAttribute(null=True)  # failed lookups of the track at resolve_position/offset
    lease_token = UnicodeAttribute(null=True)
    lease_until = UTCDateTimeAttribute(null=True)
    # lock item (with lease_token, lease_until): the job holding the user's import lock
    holder_job = UnicodeAttribute(null=True)
    # resolve item
    track_ids = UnicodeSetAttribute(null=True)

    @property
    def job_id(self) -> str:
        return self.item[len(JOB_PREFIX):]


def week_of(ms: int) -> str:
    """The Monday (YYYY-MM-DD, UTC) of the week holding the moment `ms` (a stream_weeks member)."""
    day = datetime.fromtimestamp(ms / 1000, UTC).date()
    return (day - timedelta(days=day.weekday())).isoformat()


def job_key(job_id: str) -> str:
    return JOB_PREFIX + job_id


class UserBeingDeleted(RuntimeError):
    """The job's user is being deleted (or is gone): the importer writes nothing more for it."""


# The user a job may write for: it exists and no deletion of it runs.
_USER_IMPORTABLE = UserModel.user_id.exists() & (UserModel.status != DELETING)


def create(user_id: str, job_id: str, object_key: str, upload_bytes: int, now: datetime, *,
           file_name: str | None = None, refused: str | None = None) -> bool:
    """The job's status item, once: False if this object's job exists (a redelivered S3 event).
    `refused`: the job is created FAILED with that reason (nothing of the object is read).
    Raises UserBeingDeleted (nothing written) when the user is gone or being deleted: checked in the
    same transaction, so a deletion's sweep never misses a job created during it."""
    item = ImportModel(
        user_id, job_key(job_id), object_key=object_key, file_name=file_name or None, upload_bytes=upload_bytes,
        state=FAILED if refused else QUEUED, phase=PHASE_IMPORT, created_at=now, updated_at=now,
        finished_at=now if refused else None, error=refused[:500] if refused else None, files=[], file_index=0,
        row_index=0, bytes_done=0, rows_read=0, plays_added=0, duplicates=0, skipped={}, episodes_added=0,
        tracks_to_resolve=0, tracks_resolved=0, resolve_chunks=0, resolve_position=0)

    def build(transaction: TransactWrite) -> None:
        # Condition checks are sent first: reasons[0] is the user, reasons[1] the job.
        transaction.condition_check(UserModel, user_id, condition=_USER_IMPORTABLE)
        transaction.save(item, condition=ImportModel.item.does_not_exist())

    user_reason, job_reason = (seats.transact(build, time.sleep) + [None, None])[:2]
    if user_reason == "ConditionalCheckFailed":
        raise UserBeingDeleted("the user is being deleted or is gone: no import job")
    return job_reason != "ConditionalCheckFailed"


def put_if_absent_range(item: ImportModel) -> bool:
    # The hash key alone does not identify an item here: condition on the range key too.
    from pynamodb.exceptions import PutError

    try:
        item.save(condition=ImportModel.item.does_not_exist())
    except PutError as exc:
        if condition_failed(exc):
            return False
        raise
    return True


def get(user_id: str, job_id: str) -> ImportModel | None:
    try:
        return ImportModel.get(user_id, job_key(job_id), consistent_read=True)
    except ImportModel.DoesNotExist:
        return None


def for_user(user_id: str) -> Iterator[ImportModel]:
    """A user's jobs, oldest job id first (ids start with the upload time)."""
    return ImportModel.query(user_id, ImportModel.item.startswith(JOB_PREFIX))


class LeaseLost(RuntimeError):
    """Another delivery holds the job, or moved it on: this one stops without writing."""


class UserBusy(RuntimeError):
    """Another job of the user holds the user's import lock (until `until`, None if it just ended):
    this job writes nothing now and waits."""

    def __init__(self, until: datetime | None) -> None:
        super().__init__("another import job of the user is running")
        self.until = until


def _lock(user_id: str) -> ImportModel:
    return ImportModel(user_id, LOCK_KEY)


def lock_held_until(user_id: str) -> datetime | None:
    """When the user's import lock ends (None: no lock item)."""
    try:
        return ImportModel.get(user_id, LOCK_KEY, consistent_read=True).lease_until
    except ImportModel.DoesNotExist:
        return None


def claim(job: ImportModel, now: datetime, lease: timedelta) -> str:
    """Take the job and the user's import lock for `lease` (a Lambda timeout), in one transaction.
    Raises LeaseLost if another delivery of the job is live, UserBusy if another job holds the lock."""
    token = secrets.token_hex(8)
    # The item must exist: an update would otherwise create one (a job a deletion just removed).
    job_free = ImportModel.item.exists() & (ImportModel.lease_until.does_not_exist() | (ImportModel.lease_until < now))
    # The lock: absent, lapsed (a crashed holder), or this job's (a retried delivery of it).
    lock_free = (ImportModel.item.does_not_exist() | ImportModel.lease_until.does_not_exist()
                 | (ImportModel.lease_until < now) | (ImportModel.holder_job == job.job_id))

    def build(transaction: TransactWrite) -> None:
        # Both updates, in this order: reasons[0] is the job, reasons[1] the lock.
        transaction.update(job, actions=[ImportModel.lease_token.set(token), ImportModel.lease_until.set(now + lease),
                                         ImportModel.updated_at.set(now)], condition=job_free)
        transaction.update(_lock(job.user_id), actions=[
            ImportModel.holder_job.set(job.job_id), ImportModel.lease_token.set(token),
            ImportModel.lease_until.set(now + lease), ImportModel.updated_at.set(now)], condition=lock_free)

    job_reason, lock_reason = (seats.transact(build, time.sleep) + [None, None])[:2]
    if job_reason == "ConditionalCheckFailed":
        raise LeaseLost("the job is being processed by another delivery")
    if lock_reason == "ConditionalCheckFailed":
        raise UserBusy(lock_held_until(job.user_id))
    return token


def hold(job: ImportModel, token: str, now: datetime, lease: timedelta) -> None:
    """Before a chunk writes: in one transaction, check that the user exists and is not being
    deleted, and extend this holder's lease and the user's import lock by `lease` (over the
    function's timeout). Raises UserBeingDeleted (the importer stops), LeaseLost or UserBusy. Every
    write of a chunk follows a hold, so after a deletion's mark the only writes still possible are
    those of leases live at that moment, and only the lock's holder writes plays."""

    def build(transaction: TransactWrite) -> None:
        transaction.condition_check(UserModel, job.user_id, condition=_USER_IMPORTABLE)
        transaction.update(job, actions=[ImportModel.lease_until.set(now + lease), ImportModel.updated_at.set(now)],
                           condition=ImportModel.lease_token == token)
        transaction.update(_lock(job.user_id), actions=[ImportModel.lease_until.set(now + lease)],
                           condition=ImportModel.lease_token == token)

    user_reason, job_reason, lock_reason = (seats.transact(build, time.sleep) + [None, None, None])[:3]
    if user_reason == "ConditionalCheckFailed":
        raise UserBeingDeleted("the user is being deleted or is gone: the import stops")
    if job_reason == "ConditionalCheckFailed":
        raise LeaseLost("the job moved on under another delivery")
    if lock_reason == "ConditionalCheckFailed":  # it lapsed and another job took it
        raise UserBusy(lock_held_until(job.user_id))


def release_lock(user_id: str, token: str) -> None:
    """Give the user's import lock back if this delivery holds it (after its lease went)."""
    try:
        _lock(user_id).delete(condition=ImportModel.lease_token == token)
    except DeleteError as exc:
        if not condition_failed(exc):  # another job's lock, or none: nothing of this holder's to give back
            raise


def lease_held_until(user_id: str, now: datetime) -> datetime | None:
    """The end of the latest live lease on the user's jobs (None: no import of the user is running)."""
    ends = [job.lease_until for job in ImportModel.query(user_id, ImportModel.item.startswith(JOB_PREFIX),
                                                         consistent_read=True)
            if job.lease_until is not None and job.lease_until >= now]
    return max(ends, default=None)


def delete_for_user(user_id: str) -> int:
    """Delete every item of the user (job statuses, resolve items, the import lock); returns how many
    jobs there were. The lock goes last: a claim needs its job item, so none can take it after."""
    jobs = 0
    with ImportModel.batch_write() as batch:
        for item in ImportModel.query(user_id, consistent_read=True, attributes_to_get=["user_id", "item"]):
            if item.item != LOCK_KEY:
                batch.delete(item)
                jobs += item.item.startswith(JOB_PREFIX)
    with ImportModel.batch_write() as batch:
        batch.delete(_lock(user_id))
    return jobs


@dataclass
class Progress:
    """What one chunk changed, applied in one conditional UpdateItem."""

    file_index: int
    row_index: int
    bytes_done: int
    rows_read: int = 0
    plays_added: int = 0
    duplicates: int = 0
    episodes_added: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    new_resolve_chunk: bool = False
    tracks_to_resolve: int = 0
    files: list[dict[str, Any]] | None = None
    state: str | None = None
    phase: str | None = None
    error: tuple[str, str | None, int | None] | None = None
    first_ms: int | None = None
    last_ms: int | None = None
    stream_weeks: set[str] = field(default_factory=set)


def advance(job: ImportModel, token: str, progress: Progress, now: datetime) -> None:
    """Apply a chunk's progress if this caller still holds the lease at the position it read from."""
    merged = dict(job.skipped or {})
    for reason, count in progress.skipped.items():
        merged[reason] = merged.get(reason, 0) + count
    actions = [
        ImportModel.file_index.set(progress.file_index),
        ImportModel.row_index.set(progress.row_index),
        ImportModel.bytes_done.set(progress.bytes_done),
        ImportModel.rows_read.add(progress.rows_read),
        ImportModel.plays_added.add(progress.plays_added),
        ImportModel.duplicates.add(progress.duplicates),
        ImportModel.episodes_added.add(progress.episodes_added),
        ImportModel.tracks_to_resolve.add(progress.tracks_to_resolve),
        ImportModel.skipped.set(merged),
        ImportModel.updated_at.set(now),
    ]
    if progress.first_ms is not None:
        actions.append(ImportModel.first_ms.set(min(progress.first_ms, job.first_ms or progress.first_ms)))
    if progress.last_ms is not None:
        actions.append(ImportModel.last_ms.set(max(progress.last_ms, job.last_ms or progress.last_ms)))
    if progress.stream_weeks:
        actions.append(ImportModel.stream_weeks.add(progress.stream_weeks))
    if progress.new_resolve_chunk:
        actions.append(ImportModel.resolve_chunks.add(1))
    if progress.files is not None:
        actions.append(ImportModel.files.set(progress.files))
    if progress.state is not None:
        actions.append(ImportModel.state.set(progress.state))
        if job.started_at is None:
            actions.append(ImportModel.started_at.set(now))
    if progress.phase is not None:
        actions.append(ImportModel.phase.set(progress.phase))
    if progress.error is not None and job.error is None:
        message, file_name, row = progress.error
        actions.append(ImportModel.error.set(message[:500]))
        if file_name is not None:
            actions.append(ImportModel.error_file.set(file_name))
        if row is not None:
            actions.append(ImportModel.error_row.set(row))
    condition = ((ImportModel.lease_token == token) & (ImportModel.file_index == job.file_index)
                 & (ImportModel.row_index == job.row_index))
    _update(job, actions, condition)


def _update(job: ImportModel, actions: list[Any], condition: Any) -> None:
    try:
        job.update(actions=actions, condition=condition)
    except UpdateError as exc:
        if condition_failed(exc):
            raise LeaseLost("the job moved on under another delivery") from None
        raise


def set_state(job: ImportModel, token: str, now: datetime, state: str, *, phase: str | None = None,
              paused_until: datetime | None = None, error: str | None = None, release: bool = False,
              resolved: int = 0, resolve_position: int | None = None, resolve_offset: int | None = None,
              error_file: str | None = None, error_row: int | None = None,
              lookup_failures: int | None = None) -> None:
    """`error` is kept if the job has none yet, or when it fails (a failed job says why it failed)."""
    actions = [ImportModel.state.set(state), ImportModel.updated_at.set(now)]
    if phase is not None:
        actions.append(ImportModel.phase.set(phase))
    if job.started_at is None:
        actions.append(ImportModel.started_at.set(now))
    actions.append(ImportModel.paused_until.set(paused_until) if paused_until else ImportModel.paused_until.remove())
    if error is not None and (job.error is None or state == FAILED):
        actions.append(ImportModel.error.set(error[:500]))
        actions.append(ImportModel.error_file.set(error_file) if error_file else ImportModel.error_file.remove())
        actions.append(ImportModel.error_row.set(error_row) if error_row is not None
                       else ImportModel.error_row.remove())
    if lookup_failures is not None:
        actions.append(ImportModel.lookup_failures.set(lookup_failures))
    if state in TERMINAL:
        actions.append(ImportModel.finished_at.set(now))
    if resolved:
        actions.append(ImportModel.tracks_resolved.add(resolved))
    if resolve_position is not None:
        actions.append(ImportModel.resolve_position.set(resolve_position))
    if resolve_offset is not None:
        actions.append(ImportModel.resolve_offset.set(resolve_offset))
    if release:
        actions += [ImportModel.lease_token.remove(), ImportModel.lease_until.remove()]
    _update(job, actions, ImportModel.lease_token == token)
    if release:
        release_lock(job.user_id, token)


def next_attempt(job: ImportModel, position: str) -> int:
    """How many AWS failures in a row at `position` another one makes (progress starts the count again)."""
    return int(job.attempts or 0) + 1 if job.attempt_at == position else 1


def record_attempt(job: ImportModel, token: str, now: datetime, position: str, failure: str) -> int:
    """An AWS failure at `position`, noted on the job, the lease released (the redelivery need not
    wait for it); returns how many in a row happened there."""
    attempts = next_attempt(job, position)
    _update(job, [ImportModel.attempts.set(attempts), ImportModel.attempt_at.set(position),
                  ImportModel.last_failure.set(failure[:500]), ImportModel.updated_at.set(now),
                  ImportModel.lease_token.remove(), ImportModel.lease_until.remove()], ImportModel.lease_token == token)
    release_lock(job.user_id, token)
    return attempts


def release(job: ImportModel, token: str, now: datetime) -> None:
    _update(job, [ImportModel.lease_token.remove(), ImportModel.lease_until.remove(),
                  ImportModel.updated_at.set(now)], ImportModel.lease_token == token)
    release_lock(job.user_id, token)


# -- tracks to resolve -----------------------------------------------------------------------------
def resolve_key(job_id: str, chunk: int) -> str:
    return f"{RESOLVE_PREFIX}{job_id}#{chunk:06d}"


def put_resolve_chunk(user_id: str, job_id: str, chunk: int, track_ids: set[str]) -> None:
    """The chunk's unknown track ids (written before the progress that counts them; a retry rewrites it)."""
    ImportModel(user_id, resolve_key(job_id, chunk), track_ids=set(track_ids)).save()


def resolve_chunk(user_id: str, job_id: str, chunk: int) -> set[str]:
    try:
        item = ImportModel.get(user_id, resolve_key(job_id, chunk), consistent_read=True)
    except ImportModel.DoesNotExist:
        return set()
    return set(item.track_ids or ())
