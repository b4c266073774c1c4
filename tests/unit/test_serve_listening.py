"""`make serve`'s simulated listening: every emulator user plays at the rate README states (about 15
an hour), however often the listening thread ticks, and a new user has the hour before too."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from playvault_local.gateway import LISTEN_PER_HOUR, LISTEN_TICK_S, Listening
from spotify_emulator import EmulatorState

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_serve_listens_at_the_stated_rate_whatever_the_tick():
    clock = Clock(T0)
    state = EmulatorState(clock=clock, seed=3)
    state.add_user("browser-user")
    listening = Listening(state)
    hours = 6
    while clock.now < T0 + timedelta(hours=hours):
        listening.tick()
        clock.now += timedelta(seconds=LISTEN_TICK_S)
    listening.tick()
    played = state.ground_truth("browser-user")  # only plays up to now: the emulator never lists later ones
    expected = LISTEN_PER_HOUR * (hours + 1)  # the hour before the user appeared too
    assert 0.75 * expected < len(played) < 1.25 * expected, len(played)
    times = [p["played_at_ms"] for p in played]
    assert times[0] >= (T0 - timedelta(hours=1)).timestamp() * 1000
    assert times[-1] <= clock.now.timestamp() * 1000
    in_last_hour = [t for t in times if t >= (clock.now - timedelta(hours=1)).timestamp() * 1000]
    assert 0.5 * LISTEN_PER_HOUR <= len(in_last_hour) <= 1.6 * LISTEN_PER_HOUR, len(in_last_hour)
