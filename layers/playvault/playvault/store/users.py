"""Users aggregate: sealed tokens, polling state, status and circuit-breaker state.

Access patterns:
- get one user by id (worker, auth callback);
- scan all users with a small projection (dispatcher; filters status / cooldown / next poll
  client-side so it can count why a user was left out);
- one conditional UpdateItem per poll outcome.

Every worker write is conditional: on the user still existing and active, and on `version` (a
pynamodb VersionAttribute, bumped by every write) still being the one the poll read. So a poll never
writes over a reconnect, a deletion, or a concurrent poll of the same user: the loser's write is
refused and it reports the user skipped (its plays, written by key, are identical rows).

`recent_played`: the played_at (Unix ms) of every play on the last page a poll saw, all of them
archived. The next poll writes only the plays of its page that are not in this set: a known play
costs no write unit, a late play (one that appears after newer ones) is written when it shows up.
Stored as sorted deltas in LEB128 varints (about 3 bytes a play) to keep the item under 1 KB.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from pynamodb.attributes import (
    BinaryAttribute,
    BooleanAttribute,
    NumberAttribute,
    UnicodeAttribute,
    UnicodeSetAttribute,
    UTCDateTimeAttribute,
    VersionAttribute,
)
from pynamodb.exceptions import UpdateError
from pynamodb.expressions.condition import Condition
from pynamodb.models import Model

from playvault.store.base import BaseMeta, condition_failed, table

ACTIVE = "active"
NEEDS_REAUTH = "needs_reauth"
LAPSED = "lapsed"  # gave its seat back after ReclaimSeatAfterDays in needs_reauth; archive kept
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
    version = VersionAttribute(null=True)  # optimistic lock: every write checks and bumps it
    # Cursor: played_at (Unix ms) of the newest archived play (only ever moves forward).
    cursor_ms = NumberAttribute(null=True)
    recent_played = BinaryAttribute(null=True, legacy_encoding=False)  # see module docstring
    last_polled_at = UTCDateTimeAttribute(null=True)
    # When the dispatcher should send the user next (absent: at the next run). Set by each poll.
    next_poll_at = UTCDateTimeAttribute(null=True)
    # The dispatch run (window id) of the last successful poll: a user is archived once per run.
    last_run = UnicodeAttribute(null=True)
    plays_archived = NumberAttribute(default=0)
    # Circuit breaker (seed fields) plus the computed end of the cooldown the dispatcher filters on.
    consecutive_failures = NumberAttribute(default=0)
    last_failure_type = UnicodeAttribute(null=True)
    last_failed_at = UTCDateTimeAttribute(null=True)
    cooldown_until = UTCDateTimeAttribute(null=True)
    # Windows where plays may have fallen out of Spotify's 50-play window (store/gaps.py has each).
    gaps_detected = NumberAttribute(default=0)
    # When the user asked to delete their data (status DELETING); the deletion waits from here.
    deletion_requested_at = UTCDateTimeAttribute(null=True)
    # Whether the user held a seat when it was marked deleting (a lapsed user gave it back already):
    # the deletion frees a seat only if this is true (absent on older marks: taken as held).
    deletion_holds_seat = BooleanAttribute(null=True)
    # Set (bumping `version`) before an import's first write: from then on every poll merges the
    # export rows that are the plays it wrote (store/plays.reconcile); a poll that read the user
    # before the flag cannot record its poll.
    has_imports = BooleanAttribute(null=True)
    # The IANA time zone the user picked for their pages (absent: UTC); playvault.rollups validates it
    # and rebuilds the rollups in it.
    time_zone = UnicodeAttribute(null=True)


# Worker writes: never resurrect a deleted user (UpdateItem would create it), never touch a user
# who is no longer active (reconnect in progress, deleting, lapsed); the version check is added by
# pynamodb itself.
_EXISTS = UserModel.user_id.exists()
_ACTIVE = _EXISTS & (UserModel.status == ACTIVE)


def get(user_id: str) -> UserModel | None:
    try:
        return UserModel.get(user_id, consistent_read=True)
    except UserModel.DoesNotExist:
        return None


def encode_played(values: Iterable[int]) -> bytes:
    """Sorted, de-duplicated Unix-ms values as LEB128 varints of their successive differences."""
    out = bytearray()
    previous = 0
    for value in sorted(set(int(v) for v in values)):
        delta = value - previous
        previous = value
        while True:
            byte = delta & 0x7F
            delta >>= 7
            if delta:
                out.append(byte | 0x80)
            else:
                out.append(byte)
                break
    return bytes(out)


def decode_played(data: bytes | None) -> frozenset[int]:
    values: list[int] = []
    current = shift = total = 0
    for byte in data or b"":
        current |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
            continue
        total += current
        values.append(total)
        current = shift = 0
    return frozenset(values)


def _conditional(user: UserModel, actions: list, condition=_ACTIVE) -> bool:
    """Apply the update if the user is still as this poll read it; False if another writer won."""
    try:
        user.update(actions=actions, condition=condition)
    except UpdateError as exc:
        if condition_failed(exc):
            return False
        raise
    return True


@dataclass(frozen=True)
class PollSuccess:
    polled_at: datetime
    run_id: str | None  # the dispatch run this poll belongs to
    next_poll_at: datetime
    plays_archived: int
    recent_played: frozenset[int]  # the page's played_at values, all archived now
    cursor_ms: int | None = None  # newest played_at seen on the page
    gap_detected: bool = False


def record_success(user: UserModel, outcome: PollSuccess) -> bool:
    """One conditional UpdateItem: polling state and counters; resets the circuit breaker.
    False when the user changed since it was read (concurrent poll, reconnect, deletion)."""
    actions = [
        UserModel.last_polled_at.set(outcome.polled_at),
        UserModel.next_poll_at.set(outcome.next_poll_at),
        UserModel.consecutive_failures.set(0),
    ]
    if outcome.plays_archived:
        actions.append(UserModel.plays_archived.add(outcome.plays_archived))
    if user.last_failure_type is not None or user.cooldown_until is not None:
        actions += [UserModel.last_failure_type.remove(), UserModel.cooldown_until.remove()]
    if outcome.run_id is not None:
        actions.append(UserModel.last_run.set(outcome.run_id))
    if outcome.recent_played != decode_played(user.recent_played):
        actions.append(UserModel.recent_played.set(encode_played(outcome.recent_played)))
    if outcome.cursor_ms is not None and (user.cursor_ms is None or outcome.cursor_ms > user.cursor_ms):
        actions.append(UserModel.cursor_ms.set(outcome.cursor_ms))
    if outcome.gap_detected:
        actions.append(UserModel.gaps_detected.add(1))
    condition = _ACTIVE
    if outcome.run_id is not None:  # the run stamp: archived at most once per dispatch run
        condition = condition & (UserModel.last_run.does_not_exist() | (UserModel.last_run != outcome.run_id))
    return _conditional(user, actions, condition)


def store_rotated_refresh_token(user: UserModel, refresh_token_enc: bytes) -> bool:
    """Saved at once: if Spotify rotated the token, the old one may already be dead. Conditional on
    the version read, so a reconnect's new token (and data key) is never overwritten."""
    return _conditional(user, [UserModel.refresh_token_enc.set(refresh_token_enc)])


def record_failure(
    user: UserModel, failure_type: str, failed_at: datetime, cooldown_until: datetime | None
) -> bool:
    return _conditional(
        user,
        [
            UserModel.consecutive_failures.add(1),
            UserModel.last_failure_type.set(failure_type),
            UserModel.last_failed_at.set(failed_at),
            UserModel.last_polled_at.set(failed_at),
            UserModel.cooldown_until.set(cooldown_until) if cooldown_until else UserModel.cooldown_until.remove(),
        ],
    )


def mark_needs_reauth(user: UserModel, failed_at: datetime) -> bool:
    return _conditional(
        user,
        [
            UserModel.status.set(NEEDS_REAUTH),
            UserModel.last_failure_type.set("AUTH_REVOKED"),
            UserModel.last_failed_at.set(failed_at),
            UserModel.last_polled_at.set(failed_at),
            UserModel.access_token_enc.remove(),
            UserModel.access_token_expires_at.remove(),
            # The seat-reclaim clock (playvault.lifecycle) starts at the first mark, not at a later one.
            UserModel.needs_reauth_since.set(UserModel.needs_reauth_since | failed_at),
        ],
    )


def mark_deleting(user_id: str, now: datetime) -> datetime | None:
    """status = deleting, written on the user as read (its version checked: a poll, a lapse or a
    reconnect in between makes the write fail, and it is read and tried again), so that
    `deletion_holds_seat` says truly whether the user held a seat at the mark: a lapsed user holds
    none, and nothing gives a deleting user a seat or takes one from it afterwards (resume_lapsed and
    lapse_user need status lapsed / needs_reauth). Keeps the first request time if already deleting.
    Returns when the deletion was requested; None if there is no such user."""
    for _attempt in range(UPDATE_ATTEMPTS):
        user = get(user_id)
        if user is None:
            return None
        if user.status == DELETING and user.deletion_requested_at is not None:
            return user.deletion_requested_at
        holds_seat = user.status != LAPSED if user.status != DELETING else user.deletion_holds_seat is not False
        try:
            user.update(actions=[UserModel.status.set(DELETING), UserModel.deletion_requested_at.set(now),
                                 UserModel.deletion_holds_seat.set(holds_seat)],
                        condition=_EXISTS & (UserModel.status == user.status))
        except UpdateError as exc:
            if not condition_failed(exc):
                raise
            continue  # changed since the read (or gone): read again
        return now
    raise RuntimeError("the user item kept changing while it was being marked deleting; try again")


def holds_seat(user: UserModel) -> bool:
    """Whether this user counts on the seat counter: active and needs_reauth users do, lapsed ones do
    not, a deleting one if it did when marked."""
    if user.status == LAPSED:
        return False
    if user.status == DELETING:
        return user.deletion_holds_seat is not False
    return True


def deleting(user_id: str) -> bool:
    """True while a deletion of the user runs (marked, not yet removed)."""
    user = get(user_id)
    return user is not None and user.status == DELETING


@dataclass(frozen=True)
class PollingState:
    """The few attributes the dispatcher needs, read with a projection."""

    user_id: str
    status: str
    cooldown_until: datetime | None
    next_poll_at: datetime | None
    # the authorization lifecycle (playvault.lifecycle)
    authorized_at: datetime | None = None
    authorization_expires_at: datetime | None = None
    reminders_sent: frozenset[str] = frozenset()
    needs_reauth_since: datetime | None = None


_POLLING_ATTRIBUTES = ["user_id", "status", "cooldown_until", "next_poll_at", "authorized_at",
                       "authorization_expires_at", "reminders_sent", "needs_reauth_since"]


def scan_polling_state(page_size: int = 1000) -> Iterator[PollingState]:
    """Every user's polling state, paginated, projecting only what the dispatcher reads."""
    for user in UserModel.scan(attributes_to_get=_POLLING_ATTRIBUTES, page_size=page_size):
        yield PollingState(user.user_id, user.status, user.cooldown_until, user.next_poll_at,
                           user.authorized_at, user.authorization_expires_at,
                           frozenset(user.reminders_sent or ()), user.needs_reauth_since)


def flag_imports(user_id: str) -> None:
    """Before an import's first write: set `has_imports` with an update that bumps `version` (a poll
    that read the user before it fails its conditional record and the next poll, seeing the flag,
    redoes the merge). Nothing when already set or the user is gone."""
    if update_current(user_id, [UserModel.has_imports.set(True)], UserModel.has_imports.does_not_exist(),
                      lambda user: not user.has_imports):
        return
    user = get(user_id)
    if user is not None and not user.has_imports:  # polls kept winning the version race: try again later
        raise RuntimeError("the user item stayed contended: has_imports not set")


def set_time_zone(user_id: str, tz: str) -> bool:
    """Store the user's time zone (validated by the caller); False when the user is gone."""
    return update_current(user_id, [UserModel.time_zone.set(tz)], UserModel.user_id.exists(), lambda user: True)


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
            user.update(actions=list(actions), condition=_EXISTS & condition)  # a copy: pynamodb appends to it
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
