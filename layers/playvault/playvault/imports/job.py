"""The import job: an uploaded export -> plays, in bounded chunks, resumable, idempotent per chunk.

One job per uploaded object (`imports/<user id>/<upload id>/export`; refused unread, as a failed job,
when the upload id was not issued to that user). Phases:
1. import: every streaming-history file of the upload, streamed item by item; each chunk of
   `chunk_rows` rows is validated, de-duplicated against the plays already archived
   (playvault.imports.dedup: a duplicate of a polled play gives that play its ms_played and names),
   written (BatchWriteItem, one write per new play), merged with plays polling wrote meanwhile (the
   window is read again: store/plays.reconcile), and only then counted on the job (one conditional
   UpdateItem that also moves the job's position). A crash in between re-reads the chunk: its rows
   are found by their import_ref, where they were written or in the polled play they were merged
   into, and counted once. Every qualifying row is imported, whatever the user's polling cursor or
   status: polling never lists podcast episodes, and a reconnected or lapsed user's cursor says
   nothing of what Spotify still shows. Before the first write the user is flagged `has_imports`
   (store/users.flag_imports), from when on polls merge too.
2. resolve: tracks the catalog did not know are fetched one at a time with GET /tracks/{id}
   (the batch endpoints are gone for development-mode apps), throttled, and only while the
   app-wide rate gate is open: polling comes first. A 429 closes the gate for everyone and pauses
   the job until it reopens (hours, if Spotify says so); a paused job is not done.
When the invocation's time runs short, or the job pauses, it asks to be continued later (a message
on the jobs queue, handed back to the importer when due) and releases its lease.

One job per user writes at a time (store/imports: the user's import lock, taken with the job's
lease): a job started while another of its user runs writes nothing and is continued later through
the queue (WAITING, never failed), so its pre-check sees every row the other wrote.
"""

from __future__ import annotations

import re
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field

from playvault import clock, identity, jobs, rollups
from playvault.failures import (
    AppFailure,
    RateLimited,
    SpotifyFailure,
    import_failure_reason,
    import_retries,
)
from playvault.imports import (
    SAFE_KEY,
    UPLOAD_OBJECT,
    dedup,
    file_name_from_metadata,
    formats,
    job_id_for,
    upload_issued_to,
    upload_key_parts,
)
from playvault.imports.jsonstream import CountingReader, NotJsonArray, iter_items
from playvault.imports.sources import Caps, UploadRejected, open_upload
from playvault.normalize import PayloadError, canonical_played_at_ms, parse_track
from playvault.spotify import Budget, SpotifyClient
from playvault.store import catalog, imports, plays, state, users

logger = Logger(child=True)

# Rows of the previous chunk that may claim plays near this chunk's first rows.
CONTEXT_ROWS = 200
# A cluster of rows queried as one time range: rows further apart start a new range.
CLUSTER_GAP_MS = 3600 * 1000
MAX_QUERIES_PER_CHUNK = 4
RESOLVE_SAVE_EVERY = 20
QUEUED_IDS_CAPACITY = 100_000
# AWS failures in a row at one position before the job fails (under the queue's MaxReceiveCount, 5 by
# default: the job says why before its message could reach the dead-letter queue).
JOB_ATTEMPTS = 3
LOOKUP_ATTEMPTS = 3  # failed lookups of one track (a minute, two, three apart); then its plays keep the export's names
MAX_FILE_ERROR_CHARS = 300  # per file on the status item (DynamoDB's 400 KB item limit)
FILE_DONE, FILE_REJECTED, FILE_FAILED, FILE_SKIPPED, FILE_PENDING = "done", "rejected", "failed", "skipped", "pending"

_USER_ID_SEGMENT = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
CONTINUE = "continue"  # more to do: continued by a later invocation
PAUSED = "paused"
DONE = "done"
FAILED = "failed"
BUSY = "busy"  # another delivery holds the job
WAITING = "waiting"  # another job of the user holds the user's import lock: continued later
NOTHING = "nothing"  # unknown or finished job
WAIT_POLL_S = 30  # a waiting job looks again at most this far apart (the holder often ends before its lease)


@dataclass(frozen=True)
class ImportSettings:
    rule: formats.ListeningRule = field(default_factory=formats.ListeningRule)
    tolerance_s: int = identity.DEFAULT_TOLERANCE_S
    chunk_rows: int = 1000
    caps: Caps = field(default_factory=Caps)
    lease: timedelta = timedelta(minutes=6)  # over the function's timeout: a crashed holder's lease lapses
    min_remaining_ms: int = 30_000
    resolve_interval_s: float = 0.2  # at most 5 catalog lookups a second from one import
    retry_network_s: int = 60


@dataclass
class RunOutcome:
    status: str
    delay_s: float = 0
    chunks: int = 0
    plays_added: int = 0
    duplicates: int = 0
    tracks_resolved: int = 0
    reason: str | None = None


def job_for_key(key: str) -> tuple[str, str] | None:
    """`imports/<user id>/<upload id>/<name>` -> (user id, job id), None for any other key."""
    parts = upload_key_parts(key)
    if parts is None:
        return None
    user_id, upload_id, name = parts
    return user_id, job_id_for(upload_id, name)


NOT_ISSUED = ("this upload was not issued to this user (its key does not carry an upload id of this "
              "account): refused, nothing of it was read or imported")


class Importer:
    def __init__(self, s3: Any, bucket: str, spotify: SpotifyClient | None, settings: ImportSettings,
                 continue_later: Callable[[str, str, float], None], sleep: Callable[[float], None] = time.sleep,
                 *, upload_id_key: Callable[[], bytes], after_import: Callable[[str], Any] | None = None):
        self.s3 = s3
        self.upload_id_key = upload_id_key  # playvault.imports.upload_id_key of the client secret
        self.bucket = bucket
        self.spotify = spotify
        self.settings = settings
        self.continue_later = continue_later
        # Called before a job that added plays or looked tracks up is done (playvault.rollups
        # .start_rebuild): the rollups are recomputed from the plays, with the names, albums and
        # artists the lookups found. Again if the job is retried.
        self.after_import = after_import
        self.sleep = sleep
        self._app_token: tuple[str, datetime] | None = None
        self._last_lookup = 0.0
        # Per run (reset by run): a warm container keeps nothing of a job; what a retry needs is in DynamoDB.
        self._names: dict[str, tuple[str, str | None]] = {}
        self._queued: set[str] = set()  # track ids this run's counted chunks queued for lookup
        self._reading: tuple[str, int] | None = None  # the file and row being read

    # ------------------------------------------------------------------ entry points
    def start(self, key: str, size: int, budget: Budget) -> RunOutcome:
        """An object was created in the bucket: create its job (once) and run it."""
        parts = upload_key_parts(key)
        if parts is None or not _USER_ID_SEGMENT.match(parts[0]):
            logger.warning("object outside imports/<user>/<upload>/<name>: ignored", extra={"key": key})
            return RunOutcome(NOTHING, reason="not an import key")
        user_id, upload_id, name = parts
        job_id = job_id_for(upload_id, name)
        now = clock.now()
        # Exactly the key presigned_upload issued: its characters, its last segment, its MAC.
        if (not SAFE_KEY.match(key) or name != UPLOAD_OBJECT
                or not upload_issued_to(user_id, upload_id, self.upload_id_key())):
            # Planted under this user's prefix (a mis-set policy, a copied key): a failed job says so,
            # the object is not read, nothing is written anywhere else. Not an error: nothing to retry.
            try:
                created = imports.create(user_id, job_id, key, size, now, refused=NOT_ISSUED)
            except imports.UserBeingDeleted:
                return self._discard(key, user_id)
            logger.warning("upload refused: not issued to this user",
                           extra={"user_id": user_id, "job_id": job_id, "key": key, "new_job": created})
            return RunOutcome(FAILED, reason=NOT_ISSUED)
        created = False
        if imports.get(user_id, job_id) is None:
            try:
                created = imports.create(user_id, job_id, key, size, now, file_name=self._file_name(key))
            except imports.UserBeingDeleted:
                return self._discard(key, user_id)
        logger.info("import job", extra={"user_id": user_id, "job_id": job_id, "new_job": created, "bytes": size})
        return self.run(user_id, job_id, budget)

    def _discard(self, key: str, user_id: str) -> RunOutcome:
        """An upload of a user being deleted or gone (a presigned POST used late): no job, and the
        object goes, since the deletion's sweep of the user's prefix may already be past."""
        self.s3.delete_object(Bucket=self.bucket, Key=key)
        logger.info("upload of a user being deleted or gone: removed, no job", extra={"user_id": user_id})
        return RunOutcome(NOTHING, reason="user being deleted or gone")

    def _file_name(self, key: str) -> str:
        """The name the browser gave the file (the object's metadata); "" when S3 has none."""
        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError:  # gone already: the run reports it when it opens the upload
            return ""
        return file_name_from_metadata(head.get("Metadata"))

    def run(self, user_id: str, job_id: str, budget: Budget) -> RunOutcome:
        job = imports.get(user_id, job_id)
        if job is None or job.state in imports.TERMINAL:
            return RunOutcome(NOTHING, reason="no such job" if job is None else f"job {job.state}")
        now = clock.now()
        if job.state == imports.PAUSED and job.paused_until and job.paused_until > now:
            delay = (job.paused_until - now).total_seconds()
            self.continue_later(user_id, job_id, delay)
            return RunOutcome(PAUSED, delay_s=delay)
        try:
            token = imports.claim(job, now, self.settings.lease)
        except imports.UserBusy as busy:
            return self._wait(job, busy.until)
        except imports.LeaseLost:
            # A live holder continues it; if that holder crashed, its lease lapses and this retry takes over.
            delay = max(1.0, ((job.lease_until or now) - now).total_seconds() + 1)
            self.continue_later(user_id, job_id, delay)
            return RunOutcome(BUSY, delay_s=delay)
        job = imports.get(user_id, job_id)
        assert job is not None
        outcome = RunOutcome(CONTINUE)
        self._names, self._queued, self._reading = {}, set(), None
        try:
            if users.get(user_id) is None:
                imports.set_state(job, token, clock.now(), imports.FAILED, error="unknown user", release=True)
                return RunOutcome(FAILED, reason="unknown user")
            finished_import = True
            if job.phase == imports.PHASE_IMPORT:
                finished_import = self._import(job, token, budget, outcome)
            if finished_import:
                self._resolve(job, token, budget, outcome)
        except imports.UserBeingDeleted:
            # Stopped before the chunk wrote anything; the deletion removes the job, waiting for this lease.
            try:
                imports.release(job, token, clock.now())
            except imports.LeaseLost:
                pass  # the deletion removed the job already
            logger.info("import stopped: the user is being deleted", extra={"user_id": user_id, "job_id": job_id})
            return RunOutcome(NOTHING, reason="user being deleted")
        except imports.UserBusy as busy:
            # The lock lapsed under this run and another job took it: this chunk wrote nothing.
            try:
                imports.release(job, token, clock.now())
            except imports.LeaseLost:
                pass
            return self._wait(job, busy.until, outcome)
        except imports.LeaseLost:
            return RunOutcome(BUSY, reason="lease lost")
        except Exception as exc:  # noqa: BLE001  every job ends: failed with a reason, or retried (AWS)
            try:
                return self._ended_by(job, token, exc)
            except imports.LeaseLost:
                return RunOutcome(BUSY, reason="lease lost")
        finally:
            self._names, self._queued, self._reading = {}, set(), None
        if outcome.status in (CONTINUE, PAUSED):
            self.continue_later(user_id, job_id, outcome.delay_s)
        return outcome

    def _wait(self, job: imports.ImportModel, until: datetime | None,
              outcome: RunOutcome | None = None) -> RunOutcome:
        """Another job of the user holds the lock: continued when it ends (a crashed holder's lock
        lapses with its lease), or sooner to look again. Nothing of this job changes meanwhile."""
        now = clock.now()
        delay = max(1.0, min(WAIT_POLL_S, ((until or now) - now).total_seconds() + 1))
        self.continue_later(job.user_id, job.job_id, delay)
        logger.info("import waits for another import of the user",
                    extra={"user_id": job.user_id, "job_id": job.job_id, "delay_s": delay})
        outcome = outcome or RunOutcome(WAITING)
        outcome.status, outcome.delay_s = WAITING, delay
        return outcome

    def _ended_by(self, job: imports.ImportModel, token: str, exc: Exception) -> RunOutcome:
        """An exception in a job: it ends `failed`, naming file and row, and the function returns (a
        user's upload is no reason to retry, dead-letter or alarm). AWS failing (throttling,
        unavailable) is re-raised for the delivery to be retried, the lease released, the failure noted
        on the job; the JOB_ATTEMPTS-th in a row at the same position fails the job too."""
        aws = import_retries(exc)
        stored = self._stored_position(job)
        file_name, row = stored if aws or self._reading is None else self._reading
        reason = str(exc) if isinstance(exc, UploadRejected) else import_failure_reason(exc)
        if file_name:
            message = f"{file_name}, row {row}: {reason}"
        elif job.phase == imports.PHASE_RESOLVE:
            message = f"looking up track metadata: {reason}"
        else:
            message = reason
        extra = {"user_id": job.user_id, "job_id": job.job_id, "file": file_name, "row": row,
                 "error_type": type(exc).__name__}
        if aws:
            position = f"{job.phase}:{job.file_index}:{job.row_index}:{job.resolve_position}:{job.resolve_offset}"
            attempts = imports.next_attempt(job, position)
            if attempts < JOB_ATTEMPTS:
                imports.record_attempt(job, token, clock.now(), position, message)
                logger.warning("import interrupted by AWS: the delivery is retried",
                               extra={**extra, "attempt": attempts})
                raise exc
            message = f"{message} ({attempts} attempts)"
            logger.warning("import failed: AWS kept failing", extra=extra)
        else:
            logger.exception("import failed", extra=extra)
        imports.set_state(job, token, clock.now(), imports.FAILED, error=message, error_file=file_name, error_row=row,
                          release=True)
        return RunOutcome(FAILED, reason=message)

    @staticmethod
    def _stored_position(job: imports.ImportModel) -> tuple[str | None, int | None]:
        """The file and row the job goes on from (the first row of the chunk at stake)."""
        files = job.files or []
        index = int(job.file_index or 0)
        if job.phase == imports.PHASE_IMPORT and index < len(files):
            return str(files[index]["name"]), int(job.row_index or 0)
        if job.phase == imports.PHASE_IMPORT and job.file_name:
            return job.file_name, None
        return None, None

    # ------------------------------------------------------------------ phase 1: rows -> plays
    def _import(self, job: imports.ImportModel, token: str, budget: Budget, outcome: RunOutcome) -> bool:
        """True when every file is through (go on to resolving); False when stopped (outcome says why)."""
        try:
            upload = open_upload(self.s3, self.bucket, job.object_key or "", self.settings.caps, name=job.file_name)
        except UploadRejected as exc:
            imports.set_state(job, token, clock.now(), imports.FAILED, error=str(exc), release=True)
            outcome.status, outcome.reason = FAILED, str(exc)
            logger.warning("import rejected", extra={"user_id": job.user_id, "job_id": job.job_id, "error": str(exc)})
            return False
        files = list(job.files or [])
        if not files:
            files = [{"name": f.name, "kind": f.kind, "size": f.size, "state": FILE_PENDING, "rows_read": 0,
                      "error": None} for f in upload.files]
            self._advance(job, token, imports.Progress(0, 0, 0, files=files, state=imports.RUNNING))
        users.flag_imports(job.user_id)
        while int(job.file_index or 0) < len(files):
            index = int(job.file_index or 0)
            if not self._import_file(job, token, upload, files, index, budget, outcome):
                return False
        read = [f for f in files if f["state"] != FILE_SKIPPED]
        if read and all(f["state"] == FILE_REJECTED or (f["state"] == FILE_FAILED and not f.get("rows_read"))
                        for f in read):
            # Nothing of the upload could be read: the job fails, with the first file's reason (its error).
            imports.set_state(job, token, clock.now(), imports.FAILED, error=job.error, error_file=job.error_file,
                              error_row=int(job.error_row) if job.error_row is not None else None, release=True)
            outcome.status, outcome.reason = FAILED, job.error
            return False
        return True

    def _import_file(self, job: imports.ImportModel, token: str, upload: Any, files: list[dict[str, Any]],
                     file_index: int, budget: Budget, outcome: RunOutcome) -> bool:
        entry = files[file_index]
        name = entry["name"]
        done_before = sum(int(f["size"]) for f in files[:file_index])
        if entry["kind"] == formats.VIDEO:
            entry.update(state=FILE_SKIPPED, error="video streaming history is not imported")
            after = done_before + int(entry["size"])
            self._advance(job, token, imports.Progress(file_index + 1, 0, after, files=files))
            return True
        start_row = int(job.row_index or 0)
        stream = CountingReader(upload.open(name))
        kind = entry["kind"]
        context: deque[formats.ImportRow] = deque(maxlen=CONTEXT_ROWS)
        chunk: list[formats.ImportRow] = []
        skipped: Counter[str] = Counter()
        read = 0
        accepted_any = False
        now = clock.now()
        position = start_row

        def finish(state_: str, error: str | None = None, row: int | None = None) -> None:
            error = error[:MAX_FILE_ERROR_CHARS] if error else error
            entry.update(state=state_, error=error, rows_read=int(entry.get("rows_read") or 0) + read)
            self._flush(job, token, files, file_index, chunk, list(context), skipped, read,
                        next_position=(file_index + 1, 0), bytes_done=done_before + int(entry["size"]),
                        error=(f"{name}: {error}", name, row) if error else None, outcome=outcome)

        try:
            lines = None if kind is None else kind == formats.LISTENBRAINZ  # None: by its first character
            for row_index, raw in enumerate(iter_items(stream, lines=lines)):
                self._reading = (name, row_index)
                if row_index == 0:
                    kind = kind or formats.sniff(raw)
                    problem = ("not a Spotify streaming history nor ListenBrainz listens (unknown file name and "
                               "content)" if kind is None
                               else formats.shape_problem(kind, raw))
                    if problem:
                        finish(FILE_REJECTED, problem, 0)
                        return True
                    if entry["kind"] is None:
                        entry["kind"] = kind
                try:
                    row = formats.parse_row(kind, raw, row_index, user_id=job.user_id, now=now, rule=self.settings.rule)
                except formats.RowError as exc:
                    if exc.reason == formats.Skip.OTHER_ACCOUNT and not accepted_any:
                        read = 0 if row_index < start_row else read
                        finish(FILE_REJECTED, "this file belongs to another Spotify account (its username "
                                              "is not yours): nothing of it was imported", row_index)
                        return True
                    if row_index >= start_row:
                        skipped[exc.reason.value] += 1
                        read += 1
                else:
                    accepted_any = True
                    if row_index < start_row:
                        context.append(row)
                        continue
                    read += 1
                    chunk.append(row)
                position = row_index + 1
                if read and read % self.settings.chunk_rows == 0 and position > start_row:
                    entry["rows_read"] = int(entry.get("rows_read") or 0) + self.settings.chunk_rows
                    self._flush(job, token, files, file_index, chunk, list(context), skipped, self.settings.chunk_rows,
                                next_position=(file_index, position),
                                bytes_done=done_before + stream.bytes_read, outcome=outcome)
                    context.extend(chunk)
                    chunk, skipped = [], Counter()
                    read = 0
                    if budget.remaining_s() * 1000 < self.settings.min_remaining_ms:
                        imports.release(job, token, clock.now())
                        outcome.status = CONTINUE
                        return False
        except NotJsonArray as exc:
            row = exc.item_index if exc.item_index is not None else None
            finish(FILE_FAILED if accepted_any else FILE_REJECTED, str(exc), row)
            return True
        except UploadRejected as exc:
            finish(FILE_FAILED, str(exc), None)
            return True
        finish(FILE_DONE)
        return True

    def _flush(self, job: imports.ImportModel, token: str, files: list[dict[str, Any]], file_index: int,
               rows: list[formats.ImportRow], context: list[formats.ImportRow], skipped: Counter[str], read: int, *,
               next_position: tuple[int, int], bytes_done: int, outcome: RunOutcome,
               error: tuple[str, str | None, int | None] | None = None) -> None:
        """De-duplicate, write, merge, then count: the chunk's plays are durable before the job moves on."""
        imports.hold(job, token, clock.now(), self.settings.lease)  # stops here for a user being deleted
        tolerance_ms = self.settings.tolerance_s * 1000
        existing = self._existing(job.user_id, rows, needs_names=any(not r.resolved for r in rows))
        ref_prefix = f"{job.job_id}:{file_index}:"
        near = [r for r in context if rows and r.ended_ms >= min(x.ended_ms for x in rows) - 2 * tolerance_ms - 60_000]
        decisions = dedup.decide(rows, near, existing, tolerance_ms=tolerance_ms,
                                 ref_of=lambda r: ref_prefix + str(r.index))
        new = [d for d in decisions if d.outcome == dedup.NEW]
        # Rows this chunk wrote in a crashed attempt count as its own: their tracks and episodes too.
        own = [d for d in decisions if d.outcome != dedup.DUPLICATE]
        track_ids = {d.row.track_id for d in own if d.row.track_id}
        # Queued by an earlier counted chunk of this run: once is enough (neither stored nor known gone).
        unknown = catalog.tracks_to_look_up(track_ids) - self._queued
        episodes = [catalog.EpisodeModel(d.row.episode_id, name=d.row.episode_name or "", show_name=d.row.show_name)
                    for d in own if d.row.episode_id]
        episodes_added = catalog.put_new_episode_rows(episodes) if episodes else 0
        # Rollups: the dates of every play this chunk writes or enriches are marked dirty first (a
        # page view settles them meanwhile; the job ends by rebuilding the user's rollups).
        touched = [d.played_at_ms for d in new] + [d.matched.played_at_ms for d in decisions if d.outcome ==
                                                    dedup.DUPLICATE and d.matched is not None]
        if touched:
            rollups.mark(job.user_id, touched)
        # A duplicate of a polled play that holds no import yet: that play keeps the export's
        # ms_played and names (first, so the merge below never hands it a second row).
        for d in decisions:
            if d.outcome == dedup.DUPLICATE and d.matched is not None and d.matched.polled_without_import:
                plays.enrich(plays.PlayModel(job.user_id, d.played_at), self._play_row(job.user_id, d, ref_prefix))
        plays.write_rows(self._play_row(job.user_id, d, ref_prefix) for d in new)
        # Plays polling wrote since the read above: the window is read again, pairs merged.
        merged = set()
        for low, high in self._ranges(rows):
            merged.update(plays.reconcile(job.user_id, low, high, tolerance_ms))
        # A row that ended in a polled play (merged now or in a crashed attempt) added no play.
        into_polled = sum(1 for d in decisions if d.outcome == dedup.NEW and ref_prefix + str(d.row.index) in merged)
        into_polled += sum(1 for d in decisions if d.outcome == dedup.ALREADY and d.matched is not None
                           and d.matched.source != plays.SOURCE_EXPORT)
        duplicates = sum(d.outcome == dedup.DUPLICATE for d in decisions) + into_polled
        progress = imports.Progress(next_position[0], next_position[1], bytes_done, rows_read=read,
                                    plays_added=len(decisions) - duplicates, duplicates=duplicates,
                                    skipped=dict(skipped), files=files, error=error)
        if rows:
            progress.first_ms = min(r.ended_ms for r in rows)
            progress.last_ms = max(r.ended_ms for r in rows)
            progress.stream_weeks = {imports.week_of(r.ended_ms) for r in rows}
        if unknown:
            imports.put_resolve_chunk(job.user_id, job.job_id, int(job.resolve_chunks or 0), unknown)
            progress.new_resolve_chunk = True
            progress.tracks_to_resolve = len(unknown)
        progress.episodes_added = episodes_added
        self._advance(job, token, progress)
        if len(self._queued) < QUEUED_IDS_CAPACITY:  # only once counted: a retried chunk queues them again
            self._queued.update(unknown)
        outcome.chunks += 1
        outcome.plays_added += progress.plays_added
        outcome.duplicates += progress.duplicates

    @staticmethod
    def _play_row(user_id: str, decision: dedup.Decision, ref_prefix: str) -> plays.PlayModel:
        row = decision.row
        return plays.PlayModel(
            user_id, decision.played_at, played_at_ms=decision.played_at_ms, track_id=row.track_id,
            source=plays.SOURCE_EXPORT, item_type=row.item_type, episode_id=row.episode_id,
            track_name=row.track_name, artist_name=row.artist_name, album_name=row.album_name,
            episode_name=row.episode_name, show_name=row.show_name, ms_played=row.ms_played,
            unresolved=None if row.resolved else True, import_ref=ref_prefix + str(row.index),
            platform=row.platform, precision_ms=row.precision_ms)

    def _existing(self, user_id: str, rows: list[formats.ImportRow], needs_names: bool) -> list[dedup.ExistingPlay]:
        """Plays already archived near the rows: one Query per cluster of rows close in time."""
        if not rows:
            return []
        margin = self.settings.tolerance_s * 1000 + plays.WINDOW_MARGIN_MS
        found = []
        for low, high in self._ranges(rows):
            start = canonical_played_at_ms(low - margin)
            end = canonical_played_at_ms(high + margin)
            found.extend(plays.plays_between(user_id, start, end))
        if needs_names:
            missing = {p.track_id for p in found if p.track_id and not p.track_name and p.track_id not in self._names}
            if missing:
                self._names.update(catalog.track_names(missing))
        out = []
        for p in found:
            if p.item_type == formats.EPISODE:
                key = formats.name_key(p.episode_name, p.show_name)
            elif p.track_name:
                key = formats.name_key(p.track_name, p.artist_name)
            else:
                title, by = self._names.get(p.track_id or "", (None, None))
                key = formats.name_key(title, by)
            out.append(dedup.ExistingPlay(p.played_at, int(p.played_at_ms), p.item_type or formats.TRACK, p.track_id,
                                          p.episode_id, key, p.import_ref, p.source or plays.SOURCE_API,
                                          p.stream.precision_ms, p.stream.ms_played))
        return out

    @staticmethod
    def _ranges(rows: list[formats.ImportRow]) -> list[tuple[int, int]]:
        """The rows' times as at most MAX_QUERIES_PER_CHUNK ranges: split at the widest silences (over
        an hour), so sparse rows (years of light listening in one chunk) cost a few Queries, not one per row."""
        if not rows:
            return []
        times = sorted(r.ended_ms for r in rows)
        splits = sorted(sorted(range(1, len(times)), key=lambda i: times[i] - times[i - 1], reverse=True)
                        [:MAX_QUERIES_PER_CHUNK - 1])
        splits = [i for i in splits if times[i] - times[i - 1] > CLUSTER_GAP_MS]
        return [(times[a], times[b - 1]) for a, b in zip([0, *splits], [*splits, len(times)], strict=True)]

    @staticmethod
    def _advance(job: imports.ImportModel, token: str, progress: imports.Progress) -> None:
        # pynamodb refreshes `job` from the answer (ALL_NEW): the next conditional write starts from there.
        imports.advance(job, token, progress, clock.now())

    # ------------------------------------------------------------------ phase 2: the catalog
    def _resolve(self, job: imports.ImportModel, token: str, budget: Budget, outcome: RunOutcome) -> None:
        self._reading = None
        if job.phase != imports.PHASE_RESOLVE:
            imports.set_state(job, token, clock.now(), imports.RUNNING, phase=imports.PHASE_RESOLVE)
            job.phase = imports.PHASE_RESOLVE
        first_chunk = int(job.resolve_position or 0)
        # Failed lookups of the track the job stopped at (stored with its position): bounded per track.
        failed_at = (first_chunk, int(job.resolve_offset or 0), int(job.lookup_failures or 0))
        for chunk in range(first_chunk, int(job.resolve_chunks or 0)):
            imports.hold(job, token, clock.now(), self.settings.lease)
            ids = sorted(imports.resolve_chunk(job.user_id, job.job_id, chunk))
            index = int(job.resolve_offset or 0) if chunk == first_chunk else 0
            # Another chunk, another import or polling may have stored some meanwhile (or found them gone).
            known = set(ids[index:]) - catalog.tracks_to_look_up(set(ids[index:]))
            since_saved = 0
            while index < len(ids):
                track_id = ids[index]
                if track_id not in known:
                    # Checked after a lookup, not before the first: every invocation makes progress.
                    if outcome.tracks_resolved and budget.remaining_s() * 1000 < self.settings.min_remaining_ms:
                        self._save_resolved(job, token, imports.RUNNING, since_saved, chunk, index, release=True)
                        outcome.status = CONTINUE
                        return
                    stop = self._lookup(track_id, budget)
                    failures = 0
                    if stop is not None and stop[2]:  # this track's own lookup failed
                        failures = 1 + (failed_at[2] if (chunk, index) == failed_at[:2] else 0)
                        if failures >= LOOKUP_ATTEMPTS:
                            logger.warning("track lookup given up: its plays keep the export's names",
                                           extra={"job_id": job.job_id, "track_id": track_id, "why": stop[1]})
                            stop = None
                    if stop is not None:
                        until, why, _ = stop
                        until += timedelta(seconds=self.settings.retry_network_s * max(0, failures - 1))  # backs off
                        delay = max(1.0, (until - clock.now()).total_seconds())
                        self._save_resolved(job, token, imports.PAUSED, since_saved, chunk, index,
                                            paused_until=until, release=True, lookup_failures=failures)
                        outcome.status, outcome.delay_s, outcome.reason = PAUSED, delay, why
                        logger.warning("import paused", extra={"user_id": job.user_id, "job_id": job.job_id,
                                                               "until": until.isoformat(), "why": why})
                        return
                    outcome.tracks_resolved += 1
                index += 1
                since_saved += 1
                if since_saved >= RESOLVE_SAVE_EVERY:
                    self._save_resolved(job, token, imports.RUNNING, since_saved, chunk, index)
                    since_saved = 0
            self._save_resolved(job, token, imports.RUNNING, since_saved, chunk + 1, 0)
        if self.after_import is not None and (int(job.resolve_chunks or 0) or int(job.plays_added or 0)):
            self.after_import(job.user_id)
        imports.set_state(job, token, clock.now(), imports.DONE, release=True)
        outcome.status = DONE
        logger.info("import done", extra={"user_id": job.user_id, "job_id": job.job_id})

    @staticmethod
    def _save_resolved(job: imports.ImportModel, token: str, state_: str, resolved: int, position: int,
                       offset: int, *, paused_until: datetime | None = None, release: bool = False,
                       lookup_failures: int = 0) -> None:
        """Progress of the catalog phase on the job item (small): the resolve items are never rewritten."""
        imports.set_state(job, token, clock.now(), state_, paused_until=paused_until, release=release,
                          resolved=resolved, resolve_position=position, resolve_offset=offset,
                          lookup_failures=lookup_failures)

    def _lookup(self, track_id: str, budget: Budget) -> tuple[datetime, str, bool] | None:
        """Fetch and store one track; (until, why, the track's own failure) when the job must pause instead."""
        now = clock.now()
        gate = state.rate_limited_until(now)
        if gate is not None:
            return gate, "Spotify rate-limits the app (polling goes first)", False
        if self.spotify is None:
            return now + timedelta(seconds=self.settings.retry_network_s), "no Spotify client", False
        wait = self._last_lookup + self.settings.resolve_interval_s - time.monotonic()
        if wait > 0:
            self.sleep(wait)
        self._last_lookup = time.monotonic()
        try:
            raw = self.spotify.track(self._token(budget), track_id, budget)
        except RateLimited as exc:
            until = now + timedelta(seconds=exc.retry_after_s)
            state.close_rate_gate(until, now)  # the workers defer too: one limit for the whole app
            return until, f"Spotify answered 429 (Retry-After {exc.retry_after_s:.0f} s)", False
        except AppFailure as exc:  # the app's own (credentials unreadable or rejected): no job's fault
            return (now + timedelta(seconds=max(exc.defer_s, self.settings.retry_network_s)), f"app failure: {exc}",
                    False)
        except SpotifyFailure as exc:
            return now + timedelta(seconds=self.settings.retry_network_s), f"catalog lookup failed: {exc}", True
        if raw is None:
            # Spotify does not know it (removed track): its plays keep the export's names, and the
            # catalog remembers it so that no job asks again.
            catalog.mark_gone(track_id)
            return None
        try:
            catalog.upsert_tracks([parse_track(raw)])
        except PayloadError:
            return None
        return None

    def _token(self, budget: Budget) -> str:
        now = clock.now()
        if self._app_token is None or self._app_token[1] - now < timedelta(minutes=5):
            assert self.spotify is not None
            grant = self.spotify.app_token(budget)
            self._app_token = (grant.access_token, grant.expires_at)
        return self._app_token[0]


# ---------------------------------------------------------------------- continuations (the jobs queue)
class ContinueMessage(BaseModel):
    """What the importer is invoked with to continue a job (besides S3's "Object Created" event): run
    this job again, not before `not_before` (Unix s). The jobs function sends it when the job's
    message on the jobs queue is due (playvault.jobs, kind "import")."""

    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(min_length=1, max_length=64)
    job_id: str = Field(min_length=1, max_length=80)
    not_before: int = Field(default=0, ge=0)


def continuation_sender(queue: Any) -> Callable[[str, str, float], None]:
    """continue_later for the Importer: a delayed "import" message on the jobs queue (a
    playvault.jobs.JobQueue). A pause longer than SQS's 15-minute delay cap is carried by not_before:
    the jobs function sends the message on until it is due, then hands it to the importer."""
    def send(user_id: str, job_id: str, delay_s: float) -> None:
        not_before = int(clock.now().timestamp() + max(0.0, delay_s) + 0.999)
        queue.send(jobs.JobMessage(kind="import", user_id=user_id, import_job_id=job_id, not_before=not_before),
                   delay_s=not_before - int(clock.now().timestamp()))  # JobQueue.send clamps to SQS's 0..900

    return send
