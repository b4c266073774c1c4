"""Importing Spotify's data export: the upload API the account page calls, and the job's status.

- `presigned_upload(s3, bucket, user_id, now)`: a presigned S3 POST for the browser (no file passes
  through API Gateway): key under `imports/<user id>/<upload id>/`, 1 byte to 200 MB, SSE required.
  The object's size and content are checked again after upload (sources.open_upload), never trusted.
- `status_for_user(user_id, now)`: every import job of the user, ready to render (newest first).
- The job itself: playvault.imports.job.Importer, driven by functions/importer.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timedelta
from typing import Any

from playvault.store import imports as store

MAX_UPLOAD_BYTES = 200 * 1024 * 1024
UPLOAD_URL_TTL = timedelta(minutes=15)
_USER_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class BadUserId(ValueError):
    """The user id cannot be part of an S3 key (the page only passes its session's user)."""


def presigned_upload(s3: Any, bucket: str, user_id: str, now: datetime, *, max_bytes: int = MAX_UPLOAD_BYTES,
                     expires: timedelta = UPLOAD_URL_TTL, redirect_to: str | None = None) -> dict[str, Any]:
    """A presigned POST for one upload (a ZIP, or several JSON files: each file is its own object).

    Returns {"url", "fields", "key_prefix", "max_bytes", "expires_at", "upload_id"}: the page posts
    a multipart form with `fields` first and the file last (field name "file"); S3 puts the file's
    name where the key says `${filename}`.
    """
    if not _USER_ID.match(user_id):
        raise BadUserId("user id is not a Spotify id")
    upload_id = now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(4)
    prefix = f"{UPLOADS}/{user_id}/{upload_id}/"
    fields = {"x-amz-server-side-encryption": "AES256"}
    conditions: list[Any] = [
        ["starts-with", "$key", prefix],
        ["content-length-range", 1, max_bytes],
        {"x-amz-server-side-encryption": "AES256"},
    ]
    if redirect_to is not None:  # the browser comes back to the page after the upload (S3 answers 303)
        fields["success_action_redirect"] = redirect_to
        conditions.append({"success_action_redirect": redirect_to})
    post = s3.generate_presigned_post(bucket, prefix + "${filename}", Fields=fields, Conditions=conditions,
                                      ExpiresIn=int(expires.total_seconds()))
    return {"url": post["url"], "fields": post["fields"], "key_prefix": prefix, "max_bytes": max_bytes,
            "expires_at": (now + expires).isoformat(), "upload_id": upload_id}


MAX_FILE_NAME = 255  # what file systems allow
UPLOADS = "imports"  # the bucket's prefix of uploads: imports/<user id>/<upload id>/<file name>


def upload_key_parts(key: str) -> tuple[str, str, str] | None:
    """`imports/<user id>/<upload id>/<file name>` (as presigned_upload lays it out) -> its three
    parts, None for any other key."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != UPLOADS or not all(parts[1:]):
        return None
    return parts[1], parts[2], parts[3]


def uploaded_file_name(user_id: str, key: str | None) -> str:
    """The file's name in an upload key S3 reports back, when the key is under this user's own
    prefix and the name is one a file could have; "" otherwise (the page only names back what the
    link says: it never claims more than "your file")."""
    parts = upload_key_parts(key or "")
    if parts is None or parts[0] != user_id or len(parts[2]) > MAX_FILE_NAME:
        return ""
    return parts[2]


def _eta_s(job: store.ImportModel, now: datetime) -> float | None:
    if job.state not in (store.RUNNING, store.PAUSED) or job.started_at is None:
        return None
    if job.state == store.PAUSED and job.paused_until:
        return max(0.0, (job.paused_until - now).total_seconds())
    elapsed = (now - job.started_at).total_seconds()
    fraction = progress_fraction(job)
    if fraction <= 0 or elapsed <= 0:
        return None
    return round(elapsed * (1 - fraction) / fraction, 1)


def progress_fraction(job: store.ImportModel) -> float:
    """0..1: bytes of the files read in the import phase (90 %), tracks resolved after (10 %)."""
    total = sum(int(f.get("size") or 0) for f in (job.files or []))
    read = min(1.0, int(job.bytes_done or 0) / total) if total else (1.0 if job.phase == store.PHASE_RESOLVE else 0.0)
    if job.phase != store.PHASE_RESOLVE:
        return 0.9 * read
    to_resolve = int(job.tracks_to_resolve or 0)
    resolved = min(1.0, int(job.tracks_resolved or 0) / to_resolve) if to_resolve else 1.0
    return 1.0 if job.state == store.DONE else 0.9 + 0.1 * resolved


def job_status(job: store.ImportModel, now: datetime) -> dict[str, Any]:
    """One job as the page renders it (no internal fields: lease, keys of other items)."""
    to_resolve = int(job.tracks_to_resolve or 0)
    return {
        "job_id": job.job_id,
        "file_name": (job.object_key or "").rsplit("/", 1)[-1],
        "state": job.state,
        "phase": job.phase,
        "files": [{k: f.get(k) for k in ("name", "kind", "state", "rows_read", "error")} for f in (job.files or [])],
        "rows_read": int(job.rows_read or 0),
        "plays_added": int(job.plays_added or 0),
        "duplicates": int(job.duplicates or 0),
        "skipped": dict(sorted((job.skipped or {}).items())),
        "episodes_added": int(job.episodes_added or 0),
        "tracks_to_resolve": max(0, to_resolve - int(job.tracks_resolved or 0)),
        "tracks_resolved": int(job.tracks_resolved or 0),
        "progress": round(progress_fraction(job), 3),
        "eta_s": _eta_s(job, now),
        "paused_until": job.paused_until.isoformat() if job.paused_until else None,
        "error": ({"message": job.error, "file": job.error_file,
                   "row": int(job.error_row) if job.error_row is not None else None} if job.error else None),
        "covers": ({"from_ms": int(job.first_ms), "to_ms": int(job.last_ms)}
                   if job.first_ms is not None and job.last_ms is not None else None),
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def status_for_user(user_id: str, now: datetime) -> list[dict[str, Any]]:
    """Every import of the user, newest first."""
    return [job_status(job, now) for job in reversed(list(store.for_user(user_id)))]
