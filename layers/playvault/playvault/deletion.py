"""Delete my data: everything keyed by the user, in every table of template.yaml and the bucket.

What goes: plays, gaps, sessions, export jobs and their files, import jobs and their resolve items
(the imports table), the rollups (every generation, the dirty marks, the rebuild state), imported
files (the bucket's imports/ and exports/ prefixes of the user), and
the user item with its sealed tokens and e-mail; the seat is freed in the same transaction, if the
user held one (store/seats.remove_user: a lapsed user gave it back already). What stays names
nobody: the catalog tables (tracks, albums, artists, episodes: Spotify's public data, shared), the
worker's idempotency records (keys are hashes, data are counts; they expire after a day), the
deletion receipt once done (counts and times, TTL 7 days). tests/unit/test_deletion_leaves_nothing.py
checks every table of template.yaml.

Final, against every writer in flight:
1. the request marks the user `deleting` (store/users.mark_deleting). From then on nothing writes
   the user's data anew: the dispatcher sends only active users and the worker's writes to the user
   item require status active; sign-in is refused (store/seats.reauthorize); the importer creates no
   job for the user and starts no chunk (store/imports.create and .hold check the user's status in
   the same transaction as their write);
2. what may still be writing was allowed before the mark: a poll that read the user just before it
   may BatchWrite plays until the worker's timeout, so the job deletes nothing before `grace_s`
   (>= the worker's Timeout) has passed since the mark; an import chunk started (held) before the
   mark writes only while its lease is live (the lease is longer than the importer's timeout), so
   the job also waits, requeueing itself through its queue, until no import job of the user holds a
   live lease;
3. then it deletes in bounded chunks (strongly consistent reads), sweeps plays, gaps and imports once
   more, and removes the user item last.
Resumable: every step is idempotent, progress (counts) is on the receipt item, and a crash means
SQS redelivers the message and the job carries on. A user half-deleted is still `deleting`, so it
is never polled, never imported for, and cannot sign in. The receipt keeps the counts (not the user
id) for the status page.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from playvault import clock
from playvault.jobs import Continue, JobMessage, JobQueue
from playvault.store import deletions, exports, gaps, imports, plays, rollups, seats, sessions, users

logger = Logger(child=True)

CHUNK = 1000  # plays deleted between budget checks
MIN_REMAINING_S = 10.0
LEASE_RECHECK_S = 30  # while an import of the user holds a lease: look again this often (it may release early)
PREFIXES = ("exports", "imports")  # the user-files bucket's per-user prefixes


class Deleter:
    def __init__(self, s3: Any, bucket: str, queue: JobQueue | None, grace_s: int, *,
                 min_remaining_s: float = MIN_REMAINING_S):
        self.s3 = s3
        self.bucket = bucket
        self.queue = queue
        self.grace_s = grace_s
        self.min_remaining_s = min_remaining_s

    # -- request side -------------------------------------------------------------------------
    def request(self, user_id: str) -> str | None:
        """Start deleting the user; returns the receipt for the status page (None: no such user).

        Order: receipt, then the message (delayed by the grace time), then the mark. A crash after
        any step leaves something that finishes: a job that finds the user not yet marked marks it
        and waits the grace time again."""
        if users.get(user_id) is None:
            return None
        now = clock.now()
        receipt = secrets.token_urlsafe(24)
        key = deletions.receipt_key(receipt)
        deletions.create(key, user_id, now)
        if self.queue is not None:
            self.queue.send(JobMessage(kind="delete", user_id=user_id, receipt_key=key), delay_s=self.grace_s)
        users.mark_deleting(user_id, now)
        logger.info("deletion requested", extra={"user_id": user_id})
        return receipt

    # -- the job ------------------------------------------------------------------------------
    def run(self, user_id: str, key: str, budget: Any) -> Continue | None:
        receipt = deletions.get(key)
        if receipt is None or receipt.status == deletions.DONE or receipt.user_id != user_id:
            return None
        user = users.get(user_id)
        if user is not None:
            marked_at = user.deletion_requested_at if user.status == users.DELETING else None
            if marked_at is None:
                marked_at = users.mark_deleting(user_id, clock.now())
            if marked_at is not None:
                wait = (marked_at + timedelta(seconds=self.grace_s) - clock.now()).total_seconds()
                if wait > 0:
                    return Continue(int(wait) + 1)
        now = clock.now()
        held_until = imports.lease_held_until(user_id, now)
        if held_until is not None:  # an import chunk of the user may still be writing
            return Continue(min(LEASE_RECHECK_S, int((held_until - now).total_seconds()) + 1))
        low = lambda: budget.remaining_s() < self.min_remaining_s  # noqa: E731
        if self._plays(user_id, key, low):
            return Continue(0)
        deletions.add_counts(key, gaps=gaps.delete_for_user(user_id))
        deletions.add_counts(key, sessions=sessions.delete_for_user(user_id))
        deletions.add_counts(key, exports=exports.delete_for_user(user_id))
        deletions.add_counts(key, imports=imports.delete_for_user(user_id))
        for prefix in PREFIXES:
            deletions.add_counts(key, files=self._delete_files(f"{prefix}/{user_id}/"))
        # The final sweep: nothing may have arrived after the waits above, but deleting is cheap.
        if self._plays(user_id, key, low):
            return Continue(0)
        deletions.add_counts(key, gaps=gaps.delete_for_user(user_id), imports=imports.delete_for_user(user_id))
        # Every rollup item (days, months, years, dirty marks, the rebuild state): after the last plays.
        rollups.delete_for_user(user_id)
        seats.remove_user(user_id)  # the user item (tokens included) and its seat, in one transaction
        deletions.finish(key, clock.now())
        logger.info("deletion done", extra={"user_id": user_id})
        return None

    def _plays(self, user_id: str, key: str, low: Callable[[], bool]) -> bool:
        """Delete the user's plays chunk by chunk; True if time ran out before the last one."""
        while deleted := plays.delete_some(user_id, CHUNK):
            deletions.add_counts(key, plays=deleted)
            if low():
                return True
        return False

    def _delete_files(self, prefix: str) -> int:
        deleted = 0
        for upload in self.s3.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix).get("Uploads") or []:
            try:
                self.s3.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            except ClientError as exc:
                # Completed by an export in flight since the listing: its file is listed below and deleted.
                if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                    raise
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            keys = [{"Key": item["Key"]} for item in page.get("Contents") or []]
            if keys:
                self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
                deleted += len(keys)
        return deleted
