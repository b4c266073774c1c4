"""Circuit breaker (EC-QUEUE-001): how long a failing user rests before the next poll.

cooldown minutes = base * 2^(consecutive_failures - 1), capped per failure type; success resets.
AUTH_REVOKED is no cooldown: the user needs to sign in again (status needs_reauth).
RATE_LIMITED is the app's problem, not the user's: it never counts against a user.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from playvault.failures import FailureType


@dataclass(frozen=True)
class Backoff:
    base_minutes: int
    cap_minutes: int


COOLDOWNS: dict[FailureType, Backoff] = {
    FailureType.AUTH: Backoff(30, 240),
    FailureType.NETWORK: Backoff(10, 60),
    FailureType.UNKNOWN: Backoff(20, 180),
}


def counts_against_user(failure_type: FailureType) -> bool:
    return failure_type in COOLDOWNS


def cooldown_minutes(failure_type: FailureType, consecutive_failures: int) -> int:
    if consecutive_failures < 1:
        raise ValueError("consecutive_failures must be >= 1")
    backoff = COOLDOWNS[failure_type]
    # Bound the exponent so a long failure streak cannot build a huge integer.
    exponent = min(consecutive_failures - 1, 16)
    return min(backoff.base_minutes * 2**exponent, backoff.cap_minutes)


def cooldown_until(failure_type: FailureType, consecutive_failures: int, failed_at: datetime) -> datetime:
    return failed_at + timedelta(minutes=cooldown_minutes(failure_type, consecutive_failures))
