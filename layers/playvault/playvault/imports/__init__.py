"""Importing Spotify's data export: the upload API the account page calls, and the job's status.

- `presigned_upload(s3, bucket, user_id, now, upload_key=...)`: a presigned S3 POST for the browser
  (no file passes through API Gateway): one fixed key `imports/<user id>/<upload id>/export`, 1 byte to
  200 MB, SSE required. The key is built from characters no encoding changes (S3 event notifications
  URL-encode keys, EventBridge does not); the file's own name travels in the object's metadata
  (`x-amz-meta-file-name: ${filename}`, filled in by S3) and is shown on the job.
- The upload id carries a MAC over (user id, upload id) with a key derived from the Spotify client
  secret (HKDF-SHA256): the importer refuses an object whose upload id was not issued to the user of
  its key, without any write per page view. The object's size and content are checked again after
  upload (sources.open_upload), never trusted.
- `status_for_user(user_id, now)`: every import job of the user, ready to render (newest first).
- The job itself: playvault.imports.job.Importer, driven by functions/importer.
"""

from __future__ import annotations

import email.header
import hashlib
import hmac
import re
import secrets
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import unquote_plus

from playvault.store import imports as store

MAX_UPLOAD_BYTES = 200 * 1024 * 1024
UPLOAD_URL_TTL = timedelta(minutes=15)
_USER_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
UPLOADS = "imports"  # the bucket's prefix of uploads: imports/<user id>/<upload id>/export
UPLOAD_OBJECT = "export"  # the last segment of every upload key (the file's name is in its metadata)
FILE_NAME_META = "file-name"  # x-amz-meta-file-name: ${filename}; boto3 reports it without the prefix
MAX_FILE_NAME = 255  # what file systems allow
UPLOAD_ID_INFO = b"playvault upload id v1"  # HKDF info: this key signs upload ids and nothing else
_UPLOAD_ID = re.compile(r"^(\d{8}T\d{6}Z-[0-9a-f]{8})-([0-9a-f]{32})$")
# Every character of a key S3 or EventBridge could re-encode is outside this set.
SAFE_KEY = re.compile(r"^[A-Za-z0-9._/-]+$")


class BadUserId(ValueError):
    """The user id cannot be part of an S3 key (the page only passes its session's user)."""


def hkdf_sha256(secret: bytes, info: bytes, length: int = 32, salt: bytes = b"") -> bytes:
    """RFC 5869 HKDF with SHA-256 (cryptography's, the layer's AES-GCM library)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    if not secret:
        raise ValueError("HKDF needs a non-empty secret")
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info).derive(secret)


def upload_id_key(client_secret: str) -> bytes:
    """The key that signs upload ids, derived from the Spotify client secret the functions already
    read (no KMS key: it would double a personal deployment's cost). Rotating the secret invalidates
    upload forms issued before (they live 15 minutes). Never log it."""
    return hkdf_sha256(client_secret.encode(), UPLOAD_ID_INFO)


def _upload_mac(key: bytes, user_id: str, base: str) -> str:
    return hmac.new(key, f"{user_id}/{base}".encode(), hashlib.sha256).hexdigest()[:32]


def issue_upload_id(user_id: str, now: datetime, key: bytes) -> str:
    """`<UTC time>-<8 random hex>-<MAC over user id and both>`: only [0-9A-Za-z-]."""
    if not _USER_ID.match(user_id):
        raise BadUserId("user id is not a Spotify id")
    base = now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(4)
    return f"{base}-{_upload_mac(key, user_id, base)}"


def upload_issued_to(user_id: str, upload_id: str, key: bytes) -> bool:
    """True when this upload id was issued to this user (constant-time comparison of the MAC)."""
    found = _UPLOAD_ID.match(upload_id)
    if found is None or not _USER_ID.match(user_id):
        return False
    return hmac.compare_digest(found.group(2), _upload_mac(key, user_id, found.group(1)))


def presigned_upload(s3: Any, bucket: str, user_id: str, now: datetime, *, upload_key: bytes,
                     max_bytes: int = MAX_UPLOAD_BYTES, expires: timedelta = UPLOAD_URL_TTL,
                     redirect_to: str | None = None) -> dict[str, Any]:
    """A presigned POST for one upload (a ZIP, or one JSON file: each file is its own upload).

    Returns {"url", "fields", "key", "max_bytes", "expires_at", "upload_id"}: the page posts a
    multipart form with `fields` first and the file last (field name "file"). The key is exact (the
    policy's `eq`); S3 puts the file's name where the metadata field says `${filename}`.
    """
    upload_id = issue_upload_id(user_id, now, upload_key)
    key = f"{UPLOADS}/{user_id}/{upload_id}/{UPLOAD_OBJECT}"
    fields = {"x-amz-server-side-encryption": "AES256", f"x-amz-meta-{FILE_NAME_META}": "${filename}"}
    conditions: list[Any] = [
        {"key": key},
        ["content-length-range", 1, max_bytes],
        {"x-amz-server-side-encryption": "AES256"},
        ["starts-with", f"$x-amz-meta-{FILE_NAME_META}", ""],
    ]
    if redirect_to is not None:  # the browser comes back to the page after the upload (S3 answers 303)
        fields["success_action_redirect"] = redirect_to
        conditions.append({"success_action_redirect": redirect_to})
    post = s3.generate_presigned_post(bucket, key, Fields=fields, Conditions=conditions,
                                      ExpiresIn=int(expires.total_seconds()))
    return {"url": post["url"], "fields": post["fields"], "key": key, "max_bytes": max_bytes,
            "expires_at": (now + expires).isoformat(), "upload_id": upload_id}


def event_key(key: str) -> str:
    """An object key as an S3 event carries it -> the key. EventBridge's "Object Created" sends the
    key as is; classic S3 notifications URL-encode it ('+' for a space, %XX). Upload keys are made of
    characters neither form changes, so a key with '%' or '+' is the encoded form of another key."""
    return unquote_plus(key) if ("%" in key or "+" in key) else key


def upload_key_parts(key: str) -> tuple[str, str, str] | None:
    """`imports/<user id>/<upload id>/<name>` (as presigned_upload lays it out) -> its three
    parts, None for any other key."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != UPLOADS or not all(parts[1:]):
        return None
    return parts[1], parts[2], parts[3]


def job_id_for(upload_id: str, name: str) -> str:
    """The import job of one uploaded object (one per key)."""
    return f"{upload_id}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def file_name_from_metadata(metadata: dict[str, str] | None) -> str:
    """The file's name as the browser sent it (x-amz-meta-file-name); S3 returns a non-ASCII value
    RFC 2047-encoded (=?UTF-8?B?...?=). Only the text after the last slash or backslash, at most
    255 characters, no control characters; "" when absent."""
    raw = (metadata or {}).get(FILE_NAME_META) or ""
    try:
        name = str(email.header.make_header(email.header.decode_header(raw))) if "=?" in raw else raw
    except (ValueError, LookupError, UnicodeDecodeError):
        name = raw
    name = re.split(r"[/\\]", name)[-1]
    return "".join(c for c in name if c.isprintable())[:MAX_FILE_NAME]


def _uploaded_job(user_id: str, key: str | None, jobs: list[dict[str, Any]]) -> dict[str, Any] | None:
    parts = upload_key_parts(key or "")
    if parts is None or parts[0] != user_id:
        return None
    job_id = job_id_for(parts[1], parts[2])
    return next((job for job in jobs if job.get("job_id") == job_id), None)


def uploaded_file_name(user_id: str, key: str | None, jobs: list[dict[str, Any]]) -> str:
    """The name of the file S3 reports back (by its key) when the key is the user's own upload and
    its job has started (the page only names back what it knows); "" otherwise."""
    job = _uploaded_job(user_id, key, jobs)
    return str(job.get("file_name") or "") if job else ""


def upload_notice(user_id: str, key: str | None, jobs: list[dict[str, Any]]) -> str | None:
    """What /me says when S3 sends the browser back after an upload: the file's name ("" when not
    known yet), or None once the upload's job is over (done or failed: its row says how it went), so
    a reload of that address later does not announce the upload again."""
    job = _uploaded_job(user_id, key, jobs)
    if job is not None and job.get("state") in store.TERMINAL:
        return None
    return str(job.get("file_name") or "") if job else ""


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
        "file_name": job.file_name or "",
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
