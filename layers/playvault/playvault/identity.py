"""When two records are the same play: the one rule both writers apply (README, Import: the
de-duplication rule). Pure, no I/O.

A play polled from recently-played and a stream of Spotify's data export are the same play when
they are the same item (same track or episode id when both carry one; otherwise the same title and
artist, or episode and show, case- and width-folded) and their times are within the tolerance
(DEDUP_TOLERANCE_S, default 20 s). A minute-precision record (Account data, "HH:MM") stands for its
whole minute, and the distance is measured to that interval. Matching is one to one, closest pairs
first: a play absorbs at most one stream, so a track played twice in a row stays two plays.

The importer applies it to its rows against the archived plays before writing (imports/dedup.py);
both the importer and the worker apply it after writing, to the export rows and the polled plays of
the window they wrote (store/plays.reconcile), so whichever writes last sees both.
"""

from __future__ import annotations

import bisect
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

TRACK = "track"
EPISODE = "episode"
POINT_PRECISION_MS = 1000  # whole seconds (the extended export) are compared as instants
# Both exports report one stream's ms_played from the same log; two records of the same item whose
# ms_played differ by more are two streams (a short track repeated within the tolerance).
MS_PLAYED_SLACK_MS = 1000
# Below the shortest play (30 s): one account plays one stream at a time and each play lasts 30 s or
# more, so two plays end at least 30 s apart; a wider tolerance would merge a repeat heard in between
# when polling saw only one of them (a late feed). The planes themselves differ by a few seconds.
DEFAULT_TOLERANCE_S = 20
MAX_TOLERANCE_S = 29
NAME_SEPARATOR = "\x1f"


@dataclass(frozen=True)
class Stream:
    """What the rule needs of a play or an export row."""

    ms: int  # played_at, Unix ms (a stream's end)
    item_type: str  # "track" | "episode"
    track_id: str | None = None
    episode_id: str | None = None
    name_key: str | None = None
    precision_ms: int = 1  # 1 (polled), 1000 (extended export), 60000 (Account data: the minute)
    ms_played: int | None = None  # how long it played, when an export said so (polled plays: unknown)


def name_key(title: str | None, by: str | None) -> str | None:
    """What identifies a play without ids: title and artist (or show), case- and width-folded."""
    if not title:
        return None
    fold = lambda s: unicodedata.normalize("NFKC", s or "").casefold().strip()  # noqa: E731
    return f"{fold(title)}{NAME_SEPARATOR}{fold(by)}"


def same_item(a: Stream, b: Stream) -> bool:
    if (a.item_type == EPISODE) != (b.item_type == EPISODE):
        return False
    ids = (a.episode_id, b.episode_id) if a.item_type == EPISODE else (a.track_id, b.track_id)
    if ids[0] and ids[1]:
        return ids[0] == ids[1]
    return a.name_key is not None and b.name_key is not None and same_names(a.name_key, b.name_key)


def same_names(a: str, b: str) -> bool:
    """Same title and artist; or the same title where one side lacks the artist (recently-played
    sometimes serves `artists: null`, and a local file has no id to fall back on). A title alone is
    enough within the tolerance: two plays of one account are never that close."""
    if a == b:
        return True
    title_a, _, by_a = a.partition(NAME_SEPARATOR)
    title_b, _, by_b = b.partition(NAME_SEPARATOR)
    return title_a == title_b and (not by_a or not by_b)


def same_length(a: Stream, b: Stream) -> bool:
    """False only when both say how long they played and the lengths differ: two streams."""
    return a.ms_played is None or b.ms_played is None or abs(a.ms_played - b.ms_played) <= MS_PLAYED_SLACK_MS


def _interval(s: Stream) -> tuple[int, int]:
    return (s.ms, s.ms) if s.precision_ms <= POINT_PRECISION_MS else (s.ms, s.ms + s.precision_ms - 1)


def distance_ms(a: Stream, b: Stream) -> int:
    """0 when the two overlap (a minute holds the instant), else the gap between them."""
    (a0, a1), (b0, b1) = _interval(a), _interval(b)
    if a1 < b0:
        return b0 - a1
    if b1 < a0:
        return a0 - b1
    return 0


def candidate_pairs(left: Sequence[Stream], right: Sequence[Stream], tolerance_ms: int,
                    forced: Callable[[int, int], bool] | None = None) -> list[tuple[int, int, int, int]]:
    """(priority, distance, left index, right index) of every pair the rule allows, sorted: closest
    first. `forced(i, j)`: pairs known to be the same record (priority 0, whatever the rule says)."""
    by_time = sorted(range(len(right)), key=lambda j: right[j].ms)
    times = [right[j].ms for j in by_time]
    widest = max((s.precision_ms for s in right), default=1)
    pairs = []
    for i, a in enumerate(left):
        low = bisect.bisect_left(times, a.ms - tolerance_ms - widest)
        high = bisect.bisect_right(times, a.ms + a.precision_ms - 1 + tolerance_ms)
        for position in range(low, high):
            j = by_time[position]
            if forced is not None and forced(i, j):
                pairs.append((0, 0, i, j))
                continue
            if not same_item(a, right[j]) or not same_length(a, right[j]):
                continue
            gap = distance_ms(a, right[j])
            if gap <= tolerance_ms:
                pairs.append((1, gap, i, j))
    pairs.sort()
    return pairs


def match(left: Sequence[Stream], right: Sequence[Stream], tolerance_ms: int,
          forced: Callable[[int, int], bool] | None = None, taken_left: frozenset[int] = frozenset(),
          taken_right: frozenset[int] = frozenset()) -> dict[int, int]:
    """The one-to-one matching, closest pairs first: left index -> right index. `taken_*`: records
    already matched elsewhere (they match nothing here)."""
    matched: dict[int, int] = {}
    claimed = set(taken_right)
    for _priority, _gap, i, j in candidate_pairs(left, right, tolerance_ms, forced):
        if i in matched or i in taken_left or j in claimed:
            continue
        matched[i] = j
        claimed.add(j)
    return matched
