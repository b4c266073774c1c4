"""SimClock: the one clock of a local run (domain, Spotify emulator, SQS on the AWS emulator).

It stands still unless the runner moves it: everything that happens "at the same moment" sees the
same instant, and simulated hours pass as fast as the machine can process them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta


class SimClock:
    def __init__(self, start: datetime, on_change: Callable[[datetime], None] | None = None):
        if start.tzinfo is None:
            raise ValueError("SimClock needs an aware datetime")
        self._now = start.astimezone(UTC)
        self._lock = threading.Lock()
        self._listeners: list[Callable[[datetime], None]] = [on_change] if on_change else []

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    now = __call__

    def timestamp(self) -> float:
        return self().timestamp()

    def subscribe(self, listener: Callable[[datetime], None]) -> None:
        self._listeners.append(listener)
        listener(self())

    def set(self, moment: datetime) -> datetime:
        with self._lock:
            moment = moment.astimezone(UTC)
            if moment < self._now:
                raise ValueError(f"the simulated clock only moves forward ({moment} < {self._now})")
            self._now = moment
        for listener in self._listeners:
            listener(moment)
        return moment

    def advance(self, seconds: float) -> datetime:
        return self.set(self() + timedelta(seconds=seconds))


class RealClock:
    """Wall-clock time with the SimClock interface (serve mode)."""

    def __call__(self) -> datetime:
        return datetime.now(UTC)

    now = __call__

    def timestamp(self) -> float:
        return self().timestamp()

    def subscribe(self, listener: Callable[[datetime], None]) -> None:
        pass
