"""Seats: the counter of users holding a place (item `seats` on the state table, attribute `seats`)
and the transactions that keep it equal to the number of users.

- A new user takes a seat in the same TransactWriteItems that creates the user:
  Update `seats` SET seats = if_not_exists(seats, 0) + 1 IF attribute_not_exists(seats) OR seats < cap,
  Put the user IF attribute_not_exists(user_id).
  Either both happen or neither: the counter never drifts from the users table, and concurrent
  sign-ups cannot overshoot the cap (DynamoDB serializes transactions on the counter item).
- remove_user deletes the user and decrements the counter in one transaction.

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

from pynamodb.connection import Connection
from pynamodb.exceptions import TransactWriteError, UpdateError
from pynamodb.transactions import TransactWrite

from playvault.store.base import condition_failed
from playvault.store.state import StateModel
from playvault.store.users import ACTIVE, UserModel

if TYPE_CHECKING:
    from playvault.crypto import SealedTokens

SEATS = "seats"
MAX_ATTEMPTS = 8


class SeatOutcome(StrEnum):
    CREATED = "created"  # the user exists now and holds a seat
    CAP_REACHED = "cap_reached"  # every seat is taken: nothing written
    USER_EXISTS = "user_exists"  # the user already exists (and holds its seat): nothing written


class SeatsBusy(RuntimeError):
    """The counter stayed contended through every attempt (an infrastructure condition)."""


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


def _run(build: Callable[[TransactWrite], None], sleep: Callable[[float], None]) -> list[str | None]:
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
                    raise SeatsBusy("the seat counter stayed contended; try again") from None
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

    reasons = _run(build, sleep)
    if not reasons:
        return SeatOutcome.CREATED
    user_reason, seat_reason = (reasons + [None, None])[:2]
    if user_reason == "ConditionalCheckFailed":
        return SeatOutcome.USER_EXISTS
    if seat_reason == "ConditionalCheckFailed":
        return SeatOutcome.CAP_REACHED
    raise AssertionError(f"unexpected cancellation reasons {reasons}")


def remove_user(user_id: str, *, sleep: Callable[[float], None] = time.sleep) -> bool:
    """Delete the user and free its seat in one transaction; False if there was no such user."""
    counter = StateModel(SEATS)

    def build(transaction: TransactWrite) -> None:
        # No version condition: deletion wins over any poll in flight (whose own writes are versioned).
        transaction.delete(UserModel(user_id), condition=UserModel.user_id.exists(), add_version_condition=False)
        transaction.update(
            counter,
            actions=[StateModel.seats.add(-1)],
            condition=StateModel.seats > 0,
        )

    reasons = _run(build, sleep)
    if not reasons:
        return True
    user_reason, seat_reason = (reasons + [None, None])[:2]
    if user_reason == "ConditionalCheckFailed":
        return False
    raise RuntimeError("the seat counter is already 0 while a user exists: counter drifted")


def reauthorize(
    user_id: str,
    *,
    tokens: SealedTokens,
    access_token_expires_at: datetime | None,
    display_name: str | None,
    now: datetime,
) -> bool:
    """A returning user (needs_reauth, or its refresh token expired): new tokens, status active,
    circuit breaker reset; the seat it already holds is kept. False if the user does not exist
    (deleted meanwhile): the caller then takes the new-user path."""
    actions = [
        UserModel.token_key.set(tokens.token_key),
        UserModel.refresh_token_enc.set(tokens.refresh_token_enc),
        UserModel.status.set(ACTIVE),
        UserModel.authorized_at.set(now),
        UserModel.consecutive_failures.set(0),
        UserModel.last_failure_type.remove(),
        UserModel.cooldown_until.remove(),
        UserModel.next_poll_at.remove(),  # polled at the next dispatch run
    ]
    if tokens.access_token_enc is not None:
        actions += [
            UserModel.access_token_enc.set(tokens.access_token_enc),
            UserModel.access_token_expires_at.set(access_token_expires_at),
        ]
    else:
        actions += [UserModel.access_token_enc.remove(), UserModel.access_token_expires_at.remove()]
    if display_name is not None:
        actions.append(UserModel.display_name.set(display_name))
    try:
        # Last write wins, and the version moves on: a poll in flight cannot write its old tokens over these.
        UserModel(user_id).update(actions=actions, condition=UserModel.user_id.exists(), add_version_condition=False)
    except UpdateError as exc:
        if condition_failed(exc):
            return False
        raise
    return True
