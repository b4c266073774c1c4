"""Users aggregate: tokens (encrypted), polling cursor, status and circuit-breaker state.

Access patterns:
- get one user by id (worker, auth callback);
- scan all users with a small projection (dispatcher; filters status / cooldown / done-this-hour
  client-side so it can count why a user was filtered);
- one UpdateItem per poll outcome (success: cursor + tokens + last_polled_at; failure: breaker).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from pynamodb.attributes import BinaryAttribute, NumberAttribute, UnicodeAttribute, UTCDateTimeAttribute
from pynamodb.exceptions import UpdateError
from pynamodb.models import Model

from playvault.store.base import BaseMeta, condition_failed, table

ACTIVE = "active"
NEEDS_REAUTH = "needs_reauth"
DELETING = "deleting"  # the user asked to delete their data: never polled again, removed by the deletion job


@table("users_table")
class UserModel(Model):
    class Meta(BaseMeta):
        pass

    user_id = UnicodeAttribute(hash_key=True)  # the Spotify user id
    display_name = UnicodeAttribute(null=True)
    status = UnicodeAttribute(default=ACTIVE)
    created_at = UTCDateTimeAttribute(null=True)
    authorized_at = UTCDateTimeAttribute(null=True)
    # Tokens are envelope-encrypted (playvault.crypto): the KMS-encrypted data key once, each token
    # sealed with it; never stored or logged in clear. Binary, to keep the item under 1 KB (one WRU).
    token_key = BinaryAttribute(null=True, legacy_encoding=False)
    refresh_token_enc = BinaryAttribute(null=True, legacy_encoding=False)
    access_token_enc = BinaryAttribute(null=True, legacy_encoding=False)
    access_token_expires_at = UTCDateTimeAttribute(null=True)
    # Cursor: played_at (Unix ms) of the newest archived play; the next poll asks `after` it.
    cursor_ms = NumberAttribute(null=True)
    last_polled_at = UTCDateTimeAttribute(null=True)
    # The dispatch window (UTC hour of the dispatch, YYYY_MM_DD_HH) of the last successful poll. A
    # poll may land in the next clock hour (slots spread over the window), so "done this hour" is
    # judged by window, not by clock.
    last_window = UnicodeAttribute(null=True)
    plays_archived = NumberAttribute(default=0)
    # Circuit breaker (seed fields) plus the computed end of the cooldown the dispatcher filters on.
    consecutive_failures = NumberAttribute(default=0)
    last_failure_type = UnicodeAttribute(null=True)
    last_failed_at = UTCDateTimeAttribute(null=True)
    cooldown_until = UTCDateTimeAttribute(null=True)
    # Plays that fell out of Spotify's 50-play window between two polls: detected, not recoverable.
    gaps_detected = NumberAttribute(default=0)
    last_gap_from_ms = NumberAttribute(null=True)
    last_gap_to_ms = NumberAttribute(null=True)
    # When the user asked to delete their data (status DELETING); the deletion waits from here.
    deletion_requested_at = UTCDateTimeAttribute(null=True)


# Updates never resurrect a user deleted meanwhile (UpdateItem would otherwise create the item).
_EXISTS = UserModel.user_id.exists()


def get(user_id: str) -> UserModel | None:
    try:
        return UserModel.get(user_id, consistent_read=True)
    except UserModel.DoesNotExist:
        return None


@dataclass(frozen=True)
class PollSuccess:
    polled_at: datetime
    cursor_ms: int | None
    plays_archived: int
    access_token_enc: bytes | None
    access_token_expires_at: datetime | None
    refresh_token_enc: bytes | None = None  # only when Spotify rotated it
    gap_window_ms: tuple[int, int] | None = None
    window: str | None = None  # the dispatch window this poll belongs to


def record_success(user: UserModel, outcome: PollSuccess) -> None:
    """One UpdateItem: cursor, cached token, counters; resets the circuit breaker."""
    actions = [
        UserModel.last_polled_at.set(outcome.polled_at),
        UserModel.consecutive_failures.set(0),
        UserModel.plays_archived.add(outcome.plays_archived),
    ]
    if user.last_failure_type is not None or user.cooldown_until is not None:
        actions += [UserModel.last_failure_type.remove(), UserModel.cooldown_until.remove()]
    if outcome.window is not None:
        actions.append(UserModel.last_window.set(outcome.window))
    if outcome.cursor_ms is not None and (user.cursor_ms is None or outcome.cursor_ms > user.cursor_ms):
        actions.append(UserModel.cursor_ms.set(outcome.cursor_ms))
    if outcome.access_token_enc is not None:
        actions += [
            UserModel.access_token_enc.set(outcome.access_token_enc),
            UserModel.access_token_expires_at.set(outcome.access_token_expires_at),
        ]
    if outcome.refresh_token_enc is not None:
        actions.append(UserModel.refresh_token_enc.set(outcome.refresh_token_enc))
    if outcome.gap_window_ms is not None:
        actions += [
            UserModel.gaps_detected.add(1),
            UserModel.last_gap_from_ms.set(outcome.gap_window_ms[0]),
            UserModel.last_gap_to_ms.set(outcome.gap_window_ms[1]),
        ]
    user.update(actions=actions, condition=_EXISTS)


def store_rotated_refresh_token(user: UserModel, refresh_token_enc: bytes) -> None:
    """Saved at once: if Spotify rotated the token, the old one may already be dead."""
    user.update(actions=[UserModel.refresh_token_enc.set(refresh_token_enc)], condition=_EXISTS)


def record_failure(
    user: UserModel, failure_type: str, failed_at: datetime, cooldown_until: datetime | None
) -> None:
    user.update(
        actions=[
            UserModel.consecutive_failures.add(1),
            UserModel.last_failure_type.set(failure_type),
            UserModel.last_failed_at.set(failed_at),
            UserModel.last_polled_at.set(failed_at),
            UserModel.cooldown_until.set(cooldown_until) if cooldown_until else UserModel.cooldown_until.remove(),
        ],
        condition=_EXISTS,
    )


def mark_needs_reauth(user: UserModel, failed_at: datetime) -> None:
    user.update(
        actions=[
            UserModel.status.set(NEEDS_REAUTH),
            UserModel.last_failure_type.set("AUTH_REVOKED"),
            UserModel.last_failed_at.set(failed_at),
            UserModel.last_polled_at.set(failed_at),
            UserModel.access_token_enc.remove(),
            UserModel.access_token_expires_at.remove(),
        ],
        condition=_EXISTS,
    )


def mark_deleting(user_id: str, now: datetime) -> datetime | None:
    """status = deleting (pynamodb update: once the poll path checks status and version, a poll in
    flight can no longer write this user). Keeps the first request time if already deleting.
    Returns when the deletion was requested; None if there is no such user."""
    user = get(user_id)
    if user is None:
        return None
    if user.status == DELETING and user.deletion_requested_at is not None:
        return user.deletion_requested_at
    try:
        user.update(actions=[UserModel.status.set(DELETING), UserModel.deletion_requested_at.set(now)],
                    condition=_EXISTS)
    except UpdateError as exc:
        if condition_failed(exc):
            return None
        raise
    return now


@dataclass(frozen=True)
class PollingState:
    """The few attributes the dispatcher needs, read with a projection."""

    user_id: str
    status: str
    cooldown_until: datetime | None
    last_window: str | None


_POLLING_ATTRIBUTES = ["user_id", "status", "cooldown_until", "last_window"]


def scan_polling_state(page_size: int = 1000) -> Iterator[PollingState]:
    """Every user's polling state, paginated, projecting only what the dispatcher reads."""
    for user in UserModel.scan(attributes_to_get=_POLLING_ATTRIBUTES, page_size=page_size):
        yield PollingState(user.user_id, user.status, user.cooldown_until, user.last_window)
