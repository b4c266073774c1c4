"""Seats: the counter of users holding a place (item `seats` on the state table, attribute `seats`)
and the transactions that keep it equal to the number of users.

- A new user takes a seat in the same TransactWriteItems that creates the user:
  Update `seats` SET seats = if_not_exists(seats, 0) + 1 IF attribute_not_exists(seats) OR seats < cap,
  Put the user IF attribute_not_exists(user_id).
  Either both happen or neither: the counter never drifts from the users table, and concurrent
  sign-ups cannot overshoot the cap (DynamoDB serializes transactions on the counter item).
- remove_user deletes the user and decrements the counter in one transaction, if the user holds a
  seat (a lapsed user, or a deleting one marked while lapsed, holds none).
- lapse_user (a user needs_reauth for ReclaimSeatAfterDays) sets status lapsed and decrements the
  counter in one transaction; resume_lapsed (that user signs in again) sets it active and takes a
  seat in one transaction, if one is free.

Concurrent transactions on the same item may be cancelled with TransactionConflict; those are
retried here with jittered backoff (botocore does not retry a cancelled transaction).
"""

from __future__ import annotations

import functools
import os
import random
import time
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from aws_lambda_powertools import Logger
from pynamodb.connection import Connection
from pynamodb.exceptions import TransactWriteError, UpdateError
from pynamodb.transactions import TransactWrite

from playvault.store.base import condition_failed
from playvault.store.state import StateModel
from playvault.store.users import ACTIVE, DELETING, LAPSED, NEEDS_REAUTH, UPDATE_ATTEMPTS, UserModel, holds_seat
from playvault.store.users import get as get_user

if TYPE_CHECKING:
    from playvault.crypto import SealedTokens

logger = Logger(child=True)

SEATS = "seats"
MAX_ATTEMPTS = 8


class SeatOutcome(StrEnum):
    CREATED = "created"  # the user exists now and holds a seat
    CAP_REACHED = "cap_reached"  # every seat is taken: nothing written
    USER_EXISTS = "user_exists"  # the user already exists (and holds its seat): nothing written


class SeatsBusy(RuntimeError):
    """A transaction on the seat counter or a user item stayed contended through every attempt (an
    infrastructure condition)."""


def _connection() -> Connection:
    # One client per (region, endpoint): bind() may repoint the models (tests, local runner).
    return _cached_connection(UserModel.Meta.region, os.environ.get("AWS_ENDPOINT_URL"))


@functools.lru_cache(maxsize=4)
def _cached_connection(region: str, endpoint: str | None) -> Connection:
    meta = UserModel.Meta
    return Connection(
        region=region,
        connect_timeout_seconds=meta.connect_timeout_seconds,
        read_timeout_seconds=meta.read_timeout_seconds,
        max_retry_attempts=meta.max_retry_attempts,
    )


def seats_taken() -> int:
    """The current counter (strongly consistent read); 0 before the first sign-up."""
    try:
        item = StateModel.get(SEATS, consistent_read=True, attributes_to_get=["seats"])
    except StateModel.DoesNotExist:
        return 0
    return int(item.seats or 0)


def has_free_seat(cap: int) -> bool:
    return seats_taken() < cap


def _reasons(exc: TransactWriteError) -> list[str | None]:
    return [reason.code if reason is not None else None for reason in (exc.cancellation_reasons or [])]


def transact(build: Callable[[TransactWrite], None], sleep: Callable[[float], None]) -> list[str | None]:
    """Commit the transaction; returns [] on success or the cancellation reasons (per item, in the
    order pynamodb sends them: condition checks, deletes, puts, updates) when a condition failed."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            with TransactWrite(connection=_connection()) as transaction:
                build(transaction)
            return []
        except TransactWriteError as exc:
            reasons = _reasons(exc)
            if "ConditionalCheckFailed" in reasons:
                return reasons
            conflicted = exc.cause_response_code in ("TransactionConflictException", "TransactionInProgressException")
            conflicted = conflicted or any(r in ("TransactionConflict", "ThrottlingError") for r in reasons)
            if not conflicted or attempt == MAX_ATTEMPTS:
                if conflicted:
                    raise SeatsBusy("the transaction stayed contended (seat counter or user item); try again") from None
                raise
            sleep(random.uniform(0, 0.05 * 2 ** (attempt - 1)))
    raise AssertionError("unreachable")


def create_user_with_seat(user: UserModel, cap: int, *, sleep: Callable[[float], None] = time.sleep) -> SeatOutcome:
    """Create `user` and take a seat atomically; nothing is written unless both succeed."""
    counter = StateModel(SEATS)

    def build(transaction: TransactWrite) -> None:
        # Order in the request: puts, then updates (pynamodb groups them): reasons[0] is the user.
        transaction.save(user, condition=UserModel.user_id.does_not_exist())
        transaction.update(
            counter,
            actions=[StateModel.seats.set((StateModel.seats | 0) + 1)],
            condition=StateModel.seats.does_not_exist() | (StateModel.seats < cap),
        )

    reasons = transact(build, sleep)
    if not reasons:
        return SeatOutcome.CREATED
    user_reason, seat_reason = (reasons + [None, None])[:2]
    if user_reason == "ConditionalCheckFailed":
        return SeatOutcome.USER_EXISTS
    if seat_reason == "ConditionalCheckFailed":
        return SeatOutcome.CAP_REACHED
    raise AssertionError(f"unexpected cancellation reasons {reasons}")


def remove_user(user_id: str, *, sleep: Callable[[float], None] = time.sleep) -> bool:
    """Delete the user and free its seat if it holds one (users.holds_seat: a lapsed user gave its
    seat back already), in one transaction; False if there was no such user.

    The delete is conditioned on the status read, so a lapse or a resume in between cannot make the
    seat decision stale (it is read and decided again). A counter already at 0 while the user holds a
    seat has drifted (an operator's edit, a restore): the user is deleted all the same and the
    counter left at 0, which is nearer the truth than before; a warning says so. Never an error that
    would leave the user (tokens, e-mail) stored."""
    counter = StateModel(SEATS)
    for _attempt in range(UPDATE_ATTEMPTS):
        user = get_user(user_id)
        if user is None:
            return False
        decrement = holds_seat(user)

        def build(transaction: TransactWrite, status: str | None = user.status, decrement: bool = decrement) -> None:
            # No version condition: deletion wins over any poll in flight (whose own writes are versioned).
            transaction.delete(UserModel(user_id), condition=UserModel.user_id.exists() & (UserModel.status == status),
                               add_version_condition=False)
            if decrement:
                transaction.update(counter, actions=[StateModel.seats.add(-1)], condition=StateModel.seats > 0)

        reasons = transact(build, sleep)
        if not reasons:
            return True
        user_reason, seat_reason = (reasons + [None, None])[:2]
        if user_reason == "ConditionalCheckFailed":
            continue  # gone, or its status changed since the read: look again
        if seat_reason == "ConditionalCheckFailed":
            logger.warning("the seat counter was already 0 while the removed user held a seat: counter drifted; "
                           "the user is removed and the counter left at 0", extra={"user_id": user_id})
            if not transact(lambda transaction, build=build: build(transaction, decrement=False), sleep):
                return True
            continue  # changed meanwhile: decided again
        raise AssertionError(f"unexpected cancellation reasons {reasons}")
    raise SeatsBusy("the user item kept changing during its removal; try again")


class ReauthOutcome(StrEnum):
    REAUTHORIZED = "reauthorized"  # new tokens, status active; the seat it held is kept
    GONE = "gone"  # no such user (deleted meanwhile): the caller takes the new-user path
    LAPSED = "lapsed"  # the user gave its seat back: it needs a seat again (resume_lapsed)
    DELETING = "deleting"  # a deletion of the user runs: nothing written, the sign-in is refused


def _reauthorize_actions(tokens: SealedTokens, access_token_expires_at: datetime | None, display_name: str | None,
                         now: datetime, authorization_expires_at: datetime | None, email_enc: bytes | None
                         ) -> list:
    actions = [
        UserModel.token_key.set(tokens.token_key),
        UserModel.refresh_token_enc.set(tokens.refresh_token_enc),
        UserModel.status.set(ACTIVE),
        UserModel.authorized_at.set(now),
        UserModel.consecutive_failures.set(0),
        UserModel.last_failure_type.remove(),
        UserModel.cooldown_until.remove(),
        UserModel.next_poll_at.remove(),  # polled at the next dispatch run
        # A new authorization: a new 6-month clock, its reminders not sent yet, no reclaim pending.
        UserModel.reminders_sent.remove(),
        UserModel.needs_reauth_since.remove(),
        UserModel.lapsed_at.remove(),
    ]
    if authorization_expires_at is not None:
        actions.append(UserModel.authorization_expires_at.set(authorization_expires_at))
    # The address is replaced or, when /me gave none this time, dropped (it may be stale).
    actions.append(UserModel.email_enc.set(email_enc) if email_enc is not None else UserModel.email_enc.remove())
    if tokens.access_token_enc is not None:
        actions += [
            UserModel.access_token_enc.set(tokens.access_token_enc),
            UserModel.access_token_expires_at.set(access_token_expires_at),
        ]
    else:
        actions += [UserModel.access_token_enc.remove(), UserModel.access_token_expires_at.remove()]
    if display_name is not None:
        actions.append(UserModel.display_name.set(display_name))
    return actions


def reauthorize(
    user_id: str,
    *,
    tokens: SealedTokens,
    access_token_expires_at: datetime | None,
    display_name: str | None,
    now: datetime,
    authorization_expires_at: datetime | None = None,
    email_enc: bytes | None = None,
) -> ReauthOutcome:
    """A returning user (needs_reauth, or its refresh token expired): new tokens, status active,
    circuit breaker reset; the seat it already holds is kept. A lapsed user holds no seat: it is
    left alone here (LAPSED) and resume_lapsed gives it one if there is one. A user being deleted is
    left alone too (DELETING): its tokens are not stored and it stays `deleting`.

    Written through update() on the item as just read (a VersionAttribute, once the model has one,
    is checked and bumped); a write refused because a poll wrote in between is read and tried again."""
    actions = _reauthorize_actions(tokens, access_token_expires_at, display_name, now, authorization_expires_at,
                                   email_enc)
    for _attempt in range(UPDATE_ATTEMPTS):
        user = get_user(user_id)
        if user is None:
            return ReauthOutcome.GONE
        if user.status == LAPSED:
            return ReauthOutcome.LAPSED
        if user.status == DELETING:
            return ReauthOutcome.DELETING
        try:
            # A copy each attempt: pynamodb appends the version increment to the list it is given. The
            # status condition: a deletion marked since the read is never turned back to active.
            user.update(actions=list(actions), condition=UserModel.user_id.exists() & (UserModel.status == user.status))
            return ReauthOutcome.REAUTHORIZED
        except UpdateError as exc:
            if not condition_failed(exc):
                raise
    raise SeatsBusy("the user item kept changing during the sign-in; try again")


def resume_lapsed(
    user_id: str,
    cap: int,
    *,
    tokens: SealedTokens,
    access_token_expires_at: datetime | None,
    display_name: str | None,
    now: datetime,
    authorization_expires_at: datetime | None = None,
    email_enc: bytes | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> SeatOutcome | None:
    """A lapsed user signs in again: active with new tokens and a seat again, in one transaction, if
    a seat is free (its cursor and plays were kept: archiving continues where it stopped).
    CREATED: resumed; CAP_REACHED: every seat is taken, nothing written; None: the user is no longer
    lapsed (reauthorized or deleted meanwhile)."""
    actions = _reauthorize_actions(tokens, access_token_expires_at, display_name, now, authorization_expires_at,
                                   email_enc)
    counter = StateModel(SEATS)
    for _attempt in range(UPDATE_ATTEMPTS):
        user = get_user(user_id)
        if user is None or user.status != LAPSED:
            return None

        def build(transaction: TransactWrite, user: UserModel = user) -> None:
            # Both are updates, sent in this order: reasons[0] is the user, reasons[1] the counter.
            transaction.update(user, actions=list(actions),
                               condition=UserModel.user_id.exists() & (UserModel.status == LAPSED))
            transaction.update(
                counter,
                actions=[StateModel.seats.set((StateModel.seats | 0) + 1)],
                condition=StateModel.seats.does_not_exist() | (StateModel.seats < cap),
            )

        reasons = transact(build, sleep)
        if not reasons:
            return SeatOutcome.CREATED
        user_reason, seat_reason = (reasons + [None, None])[:2]
        if user_reason == "ConditionalCheckFailed":
            continue  # the user changed since the read: look again
        if seat_reason == "ConditionalCheckFailed":
            return SeatOutcome.CAP_REACHED
        raise AssertionError(f"unexpected cancellation reasons {reasons}")
    raise SeatsBusy("the user item kept changing during the sign-in; try again")


def lapse_user(user_id: str, needs_reauth_since: datetime, now: datetime, *,
               sleep: Callable[[float], None] = time.sleep) -> bool:
    """A user needs_reauth since `needs_reauth_since` gives its seat back: status lapsed and the
    counter decremented in one transaction. Its archive (plays, cursor) stays. False when the user
    changed meanwhile (reconnected, deleted): nothing written."""
    counter = StateModel(SEATS)
    for _attempt in range(UPDATE_ATTEMPTS):
        user = get_user(user_id)
        if user is None or user.status != NEEDS_REAUTH or user.needs_reauth_since != needs_reauth_since:
            return False

        def build(transaction: TransactWrite, user: UserModel = user) -> None:
            transaction.update(
                user,
                actions=[UserModel.status.set(LAPSED), UserModel.lapsed_at.set(now)],
                condition=(UserModel.user_id.exists() & (UserModel.status == NEEDS_REAUTH)
                           & (UserModel.needs_reauth_since == needs_reauth_since)),
            )
            transaction.update(counter, actions=[StateModel.seats.add(-1)], condition=StateModel.seats > 0)

        reasons = transact(build, sleep)
        if not reasons:
            return True
        user_reason, _seat_reason = (reasons + [None, None])[:2]
        if user_reason != "ConditionalCheckFailed":
            raise RuntimeError("the seat counter is already 0 while a user holds a seat: counter drifted")
    return False
