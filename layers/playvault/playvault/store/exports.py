"""Exports aggregate: a user's export jobs. Table ExportsTable, key user_id + export_id; the file
itself is in the user-files bucket under exports/<user_id>/ (both expire after a day).

The job is resumable: it writes the file as an S3 multipart upload and checkpoints here after each
part (upload id, parts, the played_at of the last exported play, rows so far), so a crash or a
timeout resumes at the last checkpoint and never writes a play twice or skips one.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

from pynamodb.attributes import (
    ListAttribute,
    MapAttribute,
    NumberAttribute,
    TTLAttribute,
    UnicodeAttribute,
    UTCDateTimeAttribute,
)
from pynamodb.models import Model

from playvault.store.base import BaseMeta, table

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
FORMATS = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson; charset=utf-8",
           "listenbrainz": "application/zip", "spotify": "application/json; charset=utf-8"}
LABELS = {"csv": "CSV", "jsonl": "JSON Lines", "listenbrainz": "ListenBrainz listens",
          "spotify": "Spotify streaming history"}
LIFETIME = timedelta(days=1)  # the bucket's lifecycle rule for exports/ says the same


class Part(MapAttribute):
    number = NumberAttribute()
    etag = UnicodeAttribute()


@table("exports_table")
class ExportModel(Model):
    class Meta(BaseMeta):
        pass

    user_id = UnicodeAttribute(hash_key=True)
    export_id = UnicodeAttribute(range_key=True)
    format = UnicodeAttribute()
    status = UnicodeAttribute(default=QUEUED)
    created_at = UTCDateTimeAttribute()
    finished_at = UTCDateTimeAttribute(null=True)
    expires_at = TTLAttribute()
    total = NumberAttribute(null=True)  # plays in the archive when the job started
    rows = NumberAttribute(default=0)  # rows in the uploaded parts
    size_bytes = NumberAttribute(default=0)
    object_key = UnicodeAttribute()
    upload_id = UnicodeAttribute(null=True)
    parts = ListAttribute(of=Part, default=list)
    cursor = UnicodeAttribute(null=True)  # played_at of the last play in the uploaded parts
    crc32 = NumberAttribute(null=True)  # a zipped export: CRC-32 of its member's data in the uploaded parts


def object_key(user_id: str, export_id: str, fmt: str) -> str:
    return f"exports/{user_id}/{export_id}.{fmt}"


def create(user_id: str, export_id: str, fmt: str, now: datetime) -> ExportModel:
    job = ExportModel(user_id, export_id, format=fmt, status=QUEUED, created_at=now, expires_at=now + LIFETIME,
                      object_key=object_key(user_id, export_id, fmt))
    job.save(condition=ExportModel.export_id.does_not_exist())
    return job


def get(user_id: str, export_id: str) -> ExportModel | None:
    """Only ever by the pair: a job is found under its own user's key or not at all."""
    try:
        return ExportModel.get(user_id, export_id, consistent_read=True)
    except ExportModel.DoesNotExist:
        return None


def for_user(user_id: str, limit: int = 10) -> Iterator[ExportModel]:
    return ExportModel.query(user_id, scan_index_forward=False, limit=limit)


def delete_for_user(user_id: str) -> int:
    deleted = 0
    with ExportModel.batch_write() as batch:
        for job in ExportModel.query(user_id, attributes_to_get=["user_id", "export_id"]):
            batch.delete(job)
            deleted += 1
    return deleted
