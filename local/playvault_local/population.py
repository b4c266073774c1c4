"""Who listens how much: a seeded population of users with varied listening.

Profiles: light (a few plays an hour, idle hours), moderate, heavy (25-45 an hour), very heavy
(70 an hour, all day: more than Spotify's window holds between two hourly polls), burst (a
moderate listener with a party of ~100 plays/hour lasting 1.5 h: a real gap), local-files (a
third of plays are local files). One user
revokes access midway, one has Spotify rotate its refresh token on every refresh.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta


@dataclass
class SimUser:
    user_id: str
    profile: str
    plays_per_hour: list[float]  # index 0 = the hour of history before the first dispatch
    local_share: float = 0.05
    rotate_refresh_tokens: bool = False
    revoke_at_hour: int | None = None
    burst_hour: int | None = None
    # where this user's listening hours begin past the clock's hours (0-59 minutes): real listening
    # does not start on the hour, and a burst that did would favour polls made just after it
    offset_minutes: int = 0
    tags: list[str] = field(default_factory=list)
    # the authorization lifecycle (--days): a late sign-up, and sign-ins again ("reconnect" links)
    sign_up_at_hour: int | None = None  # None: signs up before the first dispatch
    sign_in_again_at_hours: list[int] = field(default_factory=list)


def build_population(users: int, hours: int, seed: int) -> list[SimUser]:
    rng = random.Random(f"population:{seed}")
    population: list[SimUser] = []
    burst_users = max(1, round(users * 0.05)) if users >= 3 and hours >= 5 else 0
    very_heavy = 2 if users >= 20 else 0
    for index in range(users):
        user_id = f"user{index:04d}"
        if index < burst_users:
            profile = "burst"
        elif index < burst_users + very_heavy:
            profile = "very-heavy"
        else:
            draw = rng.random()
            profile = "light" if draw < 0.45 else "moderate" if draw < 0.8 else "heavy"
        rates: list[float] = []
        for _hour in range(hours + 1):
            if profile == "light":
                rates.append(0.0 if rng.random() < 0.3 else rng.uniform(1, 6))
            elif profile in ("moderate", "burst"):
                rates.append(0.0 if rng.random() < 0.1 else rng.uniform(8, 20))
            elif profile == "very-heavy":
                rates.append(70.0)
            else:
                rates.append(rng.uniform(25, 45))
        user = SimUser(user_id, profile, rates,
                       offset_minutes=random.Random(f"offset:{seed}:{user_id}").randrange(60))
        if profile == "burst":
            # After the first archived plays (hour >= 3): a cursor exists, so the gap is detectable.
            user.burst_hour = rng.randint(3, max(3, hours - 2))
            user.plays_per_hour[user.burst_hour] = 100.0
            if user.burst_hour + 1 <= hours:
                user.plays_per_hour[user.burst_hour + 1] = max(user.plays_per_hour[user.burst_hour + 1], 50.0)
        population.append(user)
    if users >= 4:
        first = burst_users + very_heavy
        population[first].local_share = 0.35
        population[first].tags.append("local-files")
        population[first + 1].local_share = 0.35
        population[first + 1].tags.append("local-files")
    if users >= 2:
        population[-1].rotate_refresh_tokens = True
        population[-1].tags.append("rotating-refresh-token")
    if users >= 3 and hours >= 2:
        population[-2].revoke_at_hour = max(1, hours // 2)
        population[-2].tags.append("revokes-access")
    return population


def simulate(state: object, population: list[SimUser], start: datetime) -> int:
    """Schedule every user's plays in the emulator: hour 0 is history before `start`, then one
    segment per simulated hour, each shifted by the user's offset_minutes (the last one cut at the
    run's end). Plays become visible only when the clock reaches them."""
    total = 0
    for user in population:
        end = start + timedelta(hours=len(user.plays_per_hour) - 1)  # the run's end: nothing played later
        for index, rate in enumerate(user.plays_per_hour):
            if rate <= 0:
                continue
            segment_start = start + timedelta(hours=index - 1, minutes=user.offset_minutes)
            segment_end = min(end, segment_start + timedelta(hours=1))
            if segment_end > segment_start:
                total += state.simulate_listening(user.user_id, segment_start, segment_end,  # type: ignore[attr-defined]
                                                  rate, local_share=user.local_share)
    return total


# -- the authorization lifecycle (`run --days N`) ------------------------------------------------------
DAY = 24


def build_lifecycle_population(users: int, days: int, seed: int, *, lifetime_days: int = 182,
                               reclaim_days: int = 30) -> list[SimUser]:
    """Months of light listening (one session a day, under Spotify's 50-play window, so a daily
    poll misses nothing) and the lifecycle's cast, all on the simulated calendar:

    - most users ignore the reminders: their authorization ends at `lifetime_days` (Spotify then
      answers invalid_grant) and they become needs_reauth;
    - one reconnects after the 14-day reminder, one after the 2-day reminder (a new 6 months);
    - one revokes access early: needs_reauth, then after `reclaim_days` it lapses and gives its
      seat back; a newcomer takes that seat; the lapsed user signing in again later meets the
      waitlist (every seat taken);
    - one has Spotify rotate its refresh token on every refresh.
    The seat cap is the number of users who sign up at the start (the runner sets MaxUsers).
    """
    rng = random.Random(f"lifecycle-population:{seed}")
    hours = days * DAY
    population: list[SimUser] = []
    for index in range(users):
        rates = [0.0] * (hours + 1)
        for day in range(days + 1):
            session = day * DAY + rng.randrange(1, DAY)  # never the tick hour itself
            if session <= hours:
                rates[session] = rng.uniform(4, 30)
        population.append(SimUser(f"user{index:04d}", "daily", rates))
    if users >= 1:
        population[-1].rotate_refresh_tokens = True
        population[-1].tags.append("rotating-refresh-token")
    cast = population[:-1] if users >= 2 else []
    if len(cast) >= 1:
        cast[0].sign_in_again_at_hours.append((lifetime_days - 13) * DAY)
        cast[0].tags.append("reconnects-after-14-day-reminder")
    if len(cast) >= 2:
        cast[1].sign_in_again_at_hours.append((lifetime_days - 1) * DAY + 12)
        cast[1].tags.append("reconnects-after-2-day-reminder")
    revoke_day = min(5, max(1, days // 4))
    lapse_day = revoke_day + reclaim_days + 1
    if len(cast) >= 3 and lapse_day + 2 < days:
        quitter = cast[2]
        quitter.revoke_at_hour = revoke_day * DAY
        quitter.sign_in_again_at_hours.append((lapse_day + 10) * DAY + 6)
        quitter.tags += ["revokes-access", "lapses", "signs-in-again-at-the-cap"]
        rates = [0.0] * (hours + 1)
        for day in range(lapse_day + 1, days):
            rates[day * DAY + 15] = rng.uniform(4, 30)
        newcomer = SimUser(f"user{users:04d}", "daily", rates, sign_up_at_hour=(lapse_day + 1) * DAY + 3,
                           tags=["signs-up-into-a-lapsed-seat"])
        population.append(newcomer)
    for user in population:
        if not user.sign_in_again_at_hours and user.sign_up_at_hour is None:
            user.tags.append("ignores-reminders")
    return population
