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
    tags: list[str] = field(default_factory=list)


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
        user = SimUser(user_id, profile, rates)
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
    segment per simulated hour. Plays become visible only when the clock reaches them."""
    total = 0
    for user in population:
        for index, rate in enumerate(user.plays_per_hour):
            if rate <= 0:
                continue
            segment_start = start + timedelta(hours=index - 1)
            total += state.simulate_listening(user.user_id, segment_start, segment_start + timedelta(hours=1),  # type: ignore[attr-defined]
                                              rate, local_share=user.local_share)
    return total
