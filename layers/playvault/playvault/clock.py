"""The one source of "now" for the whole domain.

The local runner replaces it (set_clock) to make simulated hours pass in seconds; everything that
depends on time (idempotency hour keys, cooldowns, token expiry, cursors) reads it from here.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

_source: Callable[[], datetime] = lambda: datetime.now(UTC)  # noqa: E731


def now() -> datetime:
    """Current time, timezone-aware UTC."""
    return _source()


def now_ms() -> int:
    return to_ms(now())


def to_ms(moment: datetime) -> int:
    # Integer arithmetic: float timestamps turn .589 into .58899... and lose a millisecond.
    whole = int(moment.replace(microsecond=0).timestamp())
    return whole * 1000 + moment.microsecond // 1000


def from_ms(ms: int) -> datetime:
    # Integer arithmetic, as to_ms: exact for every millisecond, whatever float rounding would do.
    return datetime.fromtimestamp(ms // 1000, tz=UTC) + timedelta(milliseconds=ms % 1000)


def hour_key(moment: datetime) -> str:
    """YYYY_MM_DD_HH of the UTC hour, as in the idempotency key archive_{user}_{hour}."""
    return moment.astimezone(UTC).strftime("%Y_%m_%d_%H")


def set_clock(source: Callable[[], datetime]) -> None:
    global _source
    _source = source


def reset_clock() -> None:
    set_clock(lambda: datetime.now(UTC))
