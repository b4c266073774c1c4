"""Full export of a user's archive as CSV or JSON Lines: every play with played_at, track, album,
artists (names and ids), duration and source.

The file goes to the user-files bucket (exports/<user_id>/<export_id>.<fmt>, expiring after a day)
as an S3 multipart upload written while the plays are read: one part (PART_BYTES) in memory at a
time, however large the archive. After each part the job checkpoints (store/exports.py), so a crash
or the end of an invocation's time resumes after the last uploaded play. The user gets it through
a short-lived presigned URL.
"""

from __future__ import annotations

import csv
import io
import json
import secrets
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError
from pynamodb.exceptions import UpdateError

from playvault import clock, history
from playvault.jobs import Continue, JobMessage, JobQueue
from playvault.store import exports, plays, users
from playvault.store.base import condition_failed
from playvault.store.exports import ExportModel, Part

logger = Logger(child=True)

PART_BYTES = 6 * 1024 * 1024  # S3 parts are at least 5 MiB, except the last
MIN_REMAINING_S = 20.0  # stop after a part when less than this remains
URL_SECONDS = 300
CSV_COLUMNS = ["played_at", "item_type", "track_id", "track_name", "album_id", "album_name", "artist_ids",
               "artist_names", "duration_ms", "source", "episode_id", "episode_name", "show_name"]


def csv_header() -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(CSV_COLUMNS)
    return out.getvalue().encode()


def csv_line(row: history.PlayRow) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow([
        row.played_at, row.item_type, row.track_id or "", row.track_name or "", row.album_id or "",
        row.album_name or "", ";".join(i or "" for i in row.artist_ids), ";".join(row.artist_names),
        "" if row.duration_ms is None else row.duration_ms, row.source, row.episode_id or "",
        row.episode_name or "", row.show_name or "",
    ])
    return out.getvalue().encode()


def jsonl_line(row: history.PlayRow) -> bytes:
    return (json.dumps(row.as_dict(), ensure_ascii=False, separators=(",", ":")) + "\n").encode()


ENCODERS: dict[str, tuple[Callable[[], bytes], Callable[[history.PlayRow], bytes]]] = {
    "csv": (csv_header, csv_line),
    "jsonl": (lambda: b"", jsonl_line),
}


def new_export_id(now: datetime) -> str:
    return f"{now:%Y%m%dT%H%M%S}Z-{secrets.token_hex(4)}"


class Exporter:
    def __init__(self, s3: Any, bucket: str, queue: JobQueue | None = None, *, part_bytes: int = PART_BYTES,
                 min_remaining_s: float = MIN_REMAINING_S):
        self.s3 = s3
        self.bucket = bucket
        self.queue = queue
        self.part_bytes = part_bytes
        self.min_remaining_s = min_remaining_s

    # -- request side -------------------------------------------------------------------------
    def start(self, user_id: str, fmt: str) -> ExportModel:
        if fmt not in exports.FORMATS:
            raise ValueError(f"unknown export format {fmt!r}")
        now = clock.now()
        job = exports.create(user_id, new_export_id(now), fmt, now)
        if self.queue is not None:
            self.queue.send(JobMessage(kind="export", user_id=user_id, export_id=job.export_id))
        logger.info("export requested", extra={"user_id": user_id, "export_id": job.export_id, "format": fmt})
        return job

    def download_url(self, job: ExportModel) -> str:
        filename = f"playvault-{job.export_id}.{job.format}"
        return self.s3.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": job.object_key,
                    "ResponseContentDisposition": f'attachment; filename="{filename}"',
                    "ResponseContentType": exports.FORMATS[job.format]},
            ExpiresIn=URL_SECONDS,
        )

    # -- the job ------------------------------------------------------------------------------
    def run(self, user_id: str, export_id: str, budget: Any) -> Continue | None:
        job = exports.get(user_id, export_id)
        if job is None or job.status in (exports.DONE, exports.FAILED):
            return None
        user = users.get(user_id)
        if user is None or user.status == users.DELETING:
            self._abandon(job)
            return None
        if job.upload_id is None and not self._begin(job):
            return None
        if job.upload_id is not None and self._file_exists(job):
            return self._settle(job)  # the upload was completed just before a crash
        try:
            return self._continue(job, budget)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise
            # Completed just before a crash (or aborted): the file is there, or the job is lost.
            return self._settle(job)

    def _file_exists(self, job: ExportModel) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=job.object_key)
        except ClientError:
            return False
        return True

    def _settle(self, job: ExportModel) -> None:
        try:
            size = self.s3.head_object(Bucket=self.bucket, Key=job.object_key)["ContentLength"]
        except ClientError:
            self._abandon(job)
            return None
        self._finish(job, [ExportModel.status.set(exports.DONE), ExportModel.finished_at.set(clock.now()),
                           ExportModel.rows.set(int(job.total or job.rows)), ExportModel.size_bytes.set(size)])
        return None

    @staticmethod
    def _finish(job: ExportModel, actions: list[Any]) -> None:
        # On the row as it is: a row a deletion removed meanwhile is not written back (UpdateItem would).
        try:
            job.update(actions=actions, condition=ExportModel.export_id.exists())
        except UpdateError as exc:
            if not condition_failed(exc):
                raise

    def _begin(self, job: ExportModel) -> bool:
        upload = self.s3.create_multipart_upload(Bucket=self.bucket, Key=job.object_key,
                                                 ContentType=exports.FORMATS[job.format])
        try:
            job.update(actions=[ExportModel.upload_id.set(upload["UploadId"]),
                                ExportModel.status.set(exports.RUNNING),
                                ExportModel.total.set(plays.count(job.user_id))],
                       condition=ExportModel.export_id.exists() & ExportModel.upload_id.does_not_exist())
        except UpdateError as exc:
            self.s3.abort_multipart_upload(Bucket=self.bucket, Key=job.object_key, UploadId=upload["UploadId"])
            if condition_failed(exc):
                return False  # a duplicate delivery began it (that one carries on), or a deletion removed the row
            raise
        return True

    def _continue(self, job: ExportModel, budget: Any) -> Continue | None:
        header, encode = ENCODERS[job.format]
        parts = [{"PartNumber": int(p.number), "ETag": p.etag} for p in job.parts]
        rows, size, cursor = int(job.rows), int(job.size_bytes), job.cursor
        buffer = bytearray(header() if not parts else b"")
        pending = 0
        part_started = time.monotonic()
        for row in history.enriched(plays.plays_after(job.user_id, cursor)):
            buffer += encode(row)
            pending += 1
            cursor = row.played_at
            if len(buffer) >= self.part_bytes:
                parts.append(self._upload(job, len(parts) + 1, bytes(buffer)))
                if not self._checkpoint(job, parts, rows, rows + pending, size + len(buffer), cursor):
                    return None
                rows, size = rows + pending, size + len(buffer)
                buffer, pending = bytearray(), 0
                # Another part fits only if the time left exceeds what the last one took, with margin:
                # a part cut by the timeout is redone from the checkpoint (safe, but wasted).
                part_s, part_started = time.monotonic() - part_started, time.monotonic()
                if budget.remaining_s() < max(self.min_remaining_s, 1.5 * part_s):
                    return Continue(0)
        if buffer or not parts:
            parts.append(self._upload(job, len(parts) + 1, bytes(buffer)))
            rows, size = rows + pending, size + len(buffer)
        self.s3.complete_multipart_upload(Bucket=self.bucket, Key=job.object_key, UploadId=job.upload_id,
                                          MultipartUpload={"Parts": parts})
        self._finish(job, [ExportModel.status.set(exports.DONE), ExportModel.finished_at.set(clock.now()),
                           ExportModel.rows.set(rows), ExportModel.size_bytes.set(size),
                           ExportModel.cursor.set(cursor) if cursor else ExportModel.cursor.remove(),
                           ExportModel.parts.set([])])
        logger.info("export done", extra={"user_id": job.user_id, "export_id": job.export_id, "rows": rows})
        return None

    def _upload(self, job: ExportModel, number: int, body: bytes) -> dict[str, Any]:
        answer = self.s3.upload_part(Bucket=self.bucket, Key=job.object_key, UploadId=job.upload_id,
                                     PartNumber=number, Body=body)
        return {"PartNumber": number, "ETag": answer["ETag"]}

    def _checkpoint(self, job: ExportModel, parts: list[dict[str, Any]], rows_before: int, rows: int, size: int,
                    cursor: str) -> bool:
        """Record the uploaded parts; False if another delivery of this job got there first."""
        try:
            job.update(actions=[ExportModel.parts.set([Part(number=p["PartNumber"], etag=p["ETag"]) for p in parts]),
                                ExportModel.rows.set(rows), ExportModel.size_bytes.set(size),
                                ExportModel.cursor.set(cursor)],
                       condition=ExportModel.rows == rows_before)
        except UpdateError as exc:
            if condition_failed(exc):
                return False
            raise
        return True

    def _abandon(self, job: ExportModel) -> None:
        if job.upload_id:
            try:
                self.s3.abort_multipart_upload(Bucket=self.bucket, Key=job.object_key, UploadId=job.upload_id)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                    raise  # NoSuchUpload: aborted already (a deletion's sweep) or completed and settled
        try:
            job.update(actions=[ExportModel.status.set(exports.FAILED)], condition=ExportModel.export_id.exists())
        except UpdateError as exc:
            if not condition_failed(exc):
                raise
