"""The de-duplication rule between imported streams and plays already archived. Pure, no I/O.

An imported row is the same play as an archived one when both are the same item (same track or
episode id; without ids on either side, the same title and artist/show) and their times are within
the tolerance (default +-90 s). For minute-precision rows (account data, "HH:MM") the row stands for
the whole minute [HH:MM:00, HH:MM:59.999], and the distance is measured to that interval.

Matching is one to one: an archived play absorbs at most one row, and the closest pairs are matched
first. So the same track played twice in a row (two rows, two archived plays) stays two plays, and
a re-import (every row at distance 0 of its own earlier copy) adds nothing. A row matched to a play
that this very row wrote before (`import_ref` equal: a retried chunk) is "already imported", not a
duplicate.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from playvault.imports.formats import EPISODE, ImportRow
from playvault.normalize import canonical_played_at

NEW = "new"
DUPLICATE = "duplicate"
ALREADY = "already"  # written by this row in an earlier attempt of the same chunk


@dataclass(frozen=True)
class ExistingPlay:
    played_at: str
    played_at_ms: int
    item_type: str
    track_id: str | None
    episode_id: str | None
    name_key: str | None
    import_ref: str | None = None


@dataclass(frozen=True)
class Decision:
    row: ImportRow
    outcome: str
    played_at: str | None = None  # the key a NEW row is written under
    played_at_ms: int | None = None


def distance_ms(row: ImportRow, played_at_ms: int) -> int:
    start, end = row.ended_ms, row.ended_ms + row.precision_ms - 1
    if row.precision_ms <= 1000:
        return abs(played_at_ms - row.ended_ms)
    if start <= played_at_ms <= end:
        return 0
    return start - played_at_ms if played_at_ms < start else played_at_ms - end


def same_item(row: ImportRow, play: ExistingPlay) -> bool:
    if (row.item_type == EPISODE) != (play.item_type == EPISODE):
        return False
    ids = (row.episode_id, play.episode_id) if row.item_type == EPISODE else (row.track_id, play.track_id)
    if ids[0] and ids[1]:
        return ids[0] == ids[1]
    key = row.name_key
    return key is not None and key == play.name_key


def decide(rows: Sequence[ImportRow], context: Sequence[ImportRow], existing: Sequence[ExistingPlay], *,
           tolerance_ms: int, ref_of) -> list[Decision]:
    """Decisions for `rows` (in their order). `context`: rows of the same file just before this chunk,
    already decided in an earlier chunk: they claim the plays they matched then, so a play is never
    absorbed twice across a chunk boundary. `ref_of(row)` is the row's import_ref."""
    everyone = [*context, *rows]
    pairs: list[tuple[int, int, int, int]] = []  # (priority, distance, row slot, play slot)
    by_time = sorted(range(len(existing)), key=lambda i: existing[i].played_at_ms)
    times = [existing[i].played_at_ms for i in by_time]
    for slot, row in enumerate(everyone):
        low = bisect.bisect_left(times, row.ended_ms - tolerance_ms)
        high = bisect.bisect_right(times, row.ended_ms + row.precision_ms - 1 + tolerance_ms)
        ref = ref_of(row)
        for position in range(low, high):
            play_slot = by_time[position]
            play = existing[play_slot]
            if play.import_ref is not None and play.import_ref == ref:
                pairs.append((0, 0, slot, play_slot))
                continue
            if not same_item(row, play):
                continue
            gap = distance_ms(row, play.played_at_ms)
            if gap <= tolerance_ms:
                pairs.append((1, gap, slot, play_slot))
    pairs.sort()
    row_match: dict[int, int] = {}
    claimed: set[int] = set()
    for _priority, _gap, slot, play_slot in pairs:
        if slot in row_match or play_slot in claimed:
            continue
        row_match[slot] = play_slot
        claimed.add(play_slot)

    occupied = {p.played_at for p in existing}
    decisions = []
    offset = len(context)
    for slot, row in enumerate(rows, start=offset):
        if slot in row_match:
            play = existing[row_match[slot]]
            ref = ref_of(row)
            outcome = ALREADY if play.import_ref is not None and play.import_ref == ref else DUPLICATE
            decisions.append(Decision(row, outcome, play.played_at, play.played_at_ms))
            continue
        # A key already taken by another play (a different track at the same instant, or two
        # streams in the same minute) moves on by a millisecond: a write never replaces a play.
        ms = row.ended_ms
        key = canonical_played_at_ms(ms)
        while key in occupied:
            ms += 1
            key = canonical_played_at_ms(ms)
        occupied.add(key)
        decisions.append(Decision(row, NEW, key, ms))
    return decisions


def canonical_played_at_ms(ms: int) -> str:
    # Integer arithmetic: a float timestamp turns .589 into .58899... and loses a millisecond.
    moment = datetime.fromtimestamp(ms // 1000, UTC) + timedelta(milliseconds=ms % 1000)
    return canonical_played_at(moment)
