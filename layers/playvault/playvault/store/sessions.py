"""Sessions aggregate: signed-in browsers. Table SessionsTable, key `session_hash` (sha256 hex of
the random id the browser holds in its cookie: the id itself is never stored), GSI `by_user`
(user_id, keys only) to end all of a user's sessions.

Expiry is idle time: `expires_at` (TTL) moves forward when a session is used, at most once per
REFRESH_EVERY so a page view is not a write. TTL deletion lags, so every read checks expires_at.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from pynamodb.attributes import TTLAttribute, UnicodeAttribute, UTCDateTimeAttribute
from pynamodb.exceptions import UpdateError
from pynamodb.indexes import GlobalSecondaryIndex, KeysOnlyProjection
from pynamodb.models import Model

from playvault.store.base import BaseMeta, condition_failed, put_if_absent, table

REFRESH_EVERY = timedelta(hours=1)


class SessionsByUser(GlobalSecondaryIndex):
    class Meta:
        index_name = "by_user"
        projection = KeysOnlyProjection()

    user_id = UnicodeAttribute(hash_key=True)


@table("sessions_table")
class SessionModel(Model):
    class Meta(BaseMeta):
        pass

    session_hash = UnicodeAttribute(hash_key=True)
    user_id = UnicodeAttribute()
    created_at = UTCDateTimeAttribute()
    refreshed_at = UTCDateTimeAttribute()
    expires_at = TTLAttribute()
    by_user = SessionsByUser()


class SessionCollision(RuntimeError):
    """The hash of a fresh random session id already exists (practically impossible)."""


def session_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def create(session_id: str, user_id: str, now: datetime, idle: timedelta) -> None:
    item = SessionModel(session_hash(session_id), user_id=user_id, created_at=now, refreshed_at=now,
                        expires_at=now + idle)
    if not put_if_absent(item):
        raise SessionCollision("a new session id collided with an existing one")


def find(session_id: str, now: datetime, idle: timedelta) -> SessionModel | None:
    """The live session for this id (None when unknown or expired); extends its idle expiry (then
    its refreshed_at is `now`: the caller re-issues the cookie with the new lifetime)."""
    try:
        session = SessionModel.get(session_hash(session_id), consistent_read=True)
    except SessionModel.DoesNotExist:
        return None
    if session.expires_at <= now:
        return None
    if now - session.refreshed_at >= REFRESH_EVERY:
        try:
            session.update(actions=[SessionModel.refreshed_at.set(now), SessionModel.expires_at.set(now + idle)],
                           condition=SessionModel.session_hash.exists())
        except UpdateError as exc:
            if condition_failed(exc):
                return None  # ended meanwhile (sign-out, deletion)
            raise
    return session


def delete(session_id: str) -> None:
    SessionModel(session_hash(session_id)).delete()


def delete_for_user(user_id: str) -> int:
    """End every session of the user; returns how many were deleted."""
    deleted = 0
    with SessionModel.batch_write() as batch:
        for session in SessionModel.by_user.query(user_id):
            batch.delete(SessionModel(session.session_hash))
            deleted += 1
    return deleted
