"""Users aggregate: tokens (encrypted), polling cursor, status and circuit-breaker state.

Access patterns:
- get one user by id (worker, auth callback);
- scan all users with a small projection (dispatcher; filters status / cooldown / done-this-hour
  client-side so it can count why a user was filtered);
- one UpdateItem per poll outcome (success: cursor + tokens + last_polled_at; failure: breaker).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from pynamodb.attributes import (
    BinaryAttribute,
    NumberAttribute,
    UnicodeAttribute,
    UnicodeSetAttribute,
    UTCDateTimeAttribute,
)
from pynamodb.exceptions import UpdateError
from pynamodb.expressions.condition import Condition
from pynamodb.models import Model

from playvault.store.base import BaseMeta, condition_failed, table

ACTIVE = "active"
NEEDS_REAUTH = "needs_reauth"
LAPSED = "lapsed"  # gave its seat back after ReclaimSeatAfterDays in needs_reauth; archive kept


@table("users_table")
class UserModel(Model):
    class Meta(BaseMeta):
        pass

    user_id = UnicodeAttribute(hash_key=True)  # the Spotify user id
    display_name = UnicodeAttribute(null=True)
    status = UnicodeAttribute(default=ACTIVE)
    created_at = UTCDateTimeAttribute(null=True)
    authorized_at = UTCDateTimeAttribute(null=True)
    # Authorization lifecycle (playvault.lifecycle): Spotify's refresh token dies this long after the
    # sign-in (6 months), whatever the refreshes; a sign-in or reconnect sets both and clears the rest.
    authorization_expires_at = UTCDateTimeAttribute(null=True)
    email_enc = BinaryAttribute(null=True, legacy_encoding=False)  # /me e-mail, sealed like the tokens
    reminders_sent = UnicodeSetAttribute(null=True)  # reminder stages e-mailed for this authorization
    needs_reauth_since = UTCDateTimeAttribute(null=True)
    lapsed_at = UTCDateTimeAttribute(null=True)
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
            # The seat-reclaim clock (playvault.lifecycle) starts at the first mark, not at a later one.
            UserModel.needs_reauth_since.set(UserModel.needs_reauth_since | failed_at),
        ],
        condition=_EXISTS,
    )


@dataclass(frozen=True)
class PollingState:
    """The few attributes the dispatcher needs, read with a projection."""

    user_id: str
    status: str
    cooldown_until: datetime | None
    last_window: str | None
    # the authorization lifecycle (playvault.lifecycle)
    authorized_at: datetime | None = None
    authorization_expires_at: datetime | None = None
    reminders_sent: frozenset[str] = frozenset()
    needs_reauth_since: datetime | None = None


_POLLING_ATTRIBUTES = ["user_id", "status", "cooldown_until", "last_window", "authorized_at",
                       "authorization_expires_at", "reminders_sent", "needs_reauth_since"]


def scan_polling_state(page_size: int = 1000) -> Iterator[PollingState]:
    """Every user's polling state, paginated, projecting only what the dispatcher reads."""
    for user in UserModel.scan(attributes_to_get=_POLLING_ATTRIBUTES, page_size=page_size):
        yield PollingState(user.user_id, user.status, user.cooldown_until, user.last_window,
                           user.authorized_at, user.authorization_expires_at,
                           frozenset(user.reminders_sent or ()), user.needs_reauth_since)


# -- authorization lifecycle (playvault.lifecycle) ----------------------------------------------------
UPDATE_ATTEMPTS = 3


def update_current(user_id: str, actions: list, condition: Condition, holds: Callable[[UserModel], bool]) -> bool:
    """Apply `actions` to the user as stored now, if `condition` holds for it.

    The write goes through update() on the item just read, so once the model has a
    VersionAttribute (the worker's optimistic lock) it is checked and bumped like every other
    writer's. `holds` is `condition` evaluated on the read item: False at once when it does not hold;
    a write refused anyway means the item changed between the read and the write (a poll wrote
    meanwhile): read again and retry. False when the user is gone or the condition does not hold.
    """
    for _attempt in range(UPDATE_ATTEMPTS):
        user = get(user_id)
        if user is None or not holds(user):
            return False
        try:
            user.update(actions=actions, condition=_EXISTS & condition)
            return True
        except UpdateError as exc:
            if not condition_failed(exc):
                raise
    return False


def _same_authorization(authorized_at: datetime | None) -> Condition:
    # A reconnect between the scan and this write changes authorized_at: the write then does nothing.
    if authorized_at is None:
        return UserModel.authorized_at.does_not_exist()
    return UserModel.authorized_at == authorized_at


def claim_reminder(user_id: str, stage: str, authorized_at: datetime | None) -> bool:
    """Record that `stage` is being e-mailed for this authorization; False if it already was (a retry
    or a concurrent dispatcher run claimed it) or the user reconnected or is gone meanwhile. Claimed
    before sending: a reminder goes out at most once."""
    return update_current(
        user_id,
        [UserModel.reminders_sent.add({stage})],
        _same_authorization(authorized_at) & ~UserModel.reminders_sent.contains(stage),
        lambda user: user.authorized_at == authorized_at and stage not in (user.reminders_sent or ()),
    )


def release_reminder(user_id: str, stage: str, authorized_at: datetime | None) -> None:
    """The e-mail could not be handed to SES: let a later run try again."""
    update_current(
        user_id,
        [UserModel.reminders_sent.delete({stage})],
        _same_authorization(authorized_at) & UserModel.reminders_sent.contains(stage),
        lambda user: user.authorized_at == authorized_at and stage in (user.reminders_sent or ()),
    )


def start_reclaim_clock(user_id: str, now: datetime) -> None:
    """A needs_reauth user marked before needs_reauth_since existed: its reclaim clock starts now."""
    update_current(
        user_id,
        [UserModel.needs_reauth_since.set(now)],
        (UserModel.status == NEEDS_REAUTH) & UserModel.needs_reauth_since.does_not_exist(),
        lambda user: user.status == NEEDS_REAUTH and user.needs_reauth_since is None,
    )
