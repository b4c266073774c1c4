"""The importer's use of the identity rule (playvault.identity): its rows against the plays already
archived, before writing. Pure, no I/O.

A row is the same play as an archived one by playvault.identity's rule (same item, within the
tolerance, a minute-precision row standing for its whole minute), one to one, closest first. So the
same track played twice in a row (two rows, two archived plays) stays two plays, and a re-import
(every row at distance 0 of its own earlier copy) adds nothing. A row matched to a play that holds
this very row's `import_ref` (a retried chunk: the row's own earlier write, or the polled play it was
merged into) is "already imported", not a duplicate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from playvault import identity
from playvault.imports.formats import ImportRow
from playvault.normalize import canonical_played_at_ms

NEW = "new"
DUPLICATE = "duplicate"
ALREADY = "already"  # written by this row in an earlier attempt of the same chunk

SOURCE_API = "api"


@dataclass(frozen=True)
class ExistingPlay:
    played_at: str
    played_at_ms: int
    item_type: str
    track_id: str | None
    episode_id: str | None
    name_key: str | None
    import_ref: str | None = None
    source: str = SOURCE_API
    precision_ms: int = 1
    ms_played: int | None = None

    @property
    def stream(self) -> identity.Stream:
        return identity.Stream(self.played_at_ms, self.item_type, self.track_id, self.episode_id, self.name_key,
                               self.precision_ms, self.ms_played)

    @property
    def polled_without_import(self) -> bool:
        """A polled play no export row has been merged into yet (it can take one)."""
        return self.source == SOURCE_API and self.import_ref is None


@dataclass(frozen=True)
class Decision:
    row: ImportRow
    outcome: str
    played_at: str | None = None  # the key a NEW row is written under; the matched play's otherwise
    played_at_ms: int | None = None
    matched: ExistingPlay | None = None  # the archived play a DUPLICATE or ALREADY row is


def stream_of(row: ImportRow) -> identity.Stream:
    return identity.Stream(row.ended_ms, row.item_type, row.track_id, row.episode_id, row.name_key, row.precision_ms,
                           row.ms_played)


def decide(rows: Sequence[ImportRow], context: Sequence[ImportRow], existing: Sequence[ExistingPlay], *,
           tolerance_ms: int, ref_of) -> list[Decision]:
    """Decisions for `rows` (in their order). `context`: rows of the same file just before this chunk,
    already decided in an earlier chunk: they claim the plays they matched then, so a play is never
    absorbed twice across a chunk boundary. `ref_of(row)` is the row's import_ref."""
    everyone = [*context, *rows]
    refs = [ref_of(row) for row in everyone]
    row_match = identity.match(
        [stream_of(row) for row in everyone], [p.stream for p in existing], tolerance_ms,
        forced=lambda i, j: existing[j].import_ref is not None and existing[j].import_ref == refs[i])

    occupied = {p.played_at for p in existing}
    decisions = []
    offset = len(context)
    for slot, row in enumerate(rows, start=offset):
        if slot in row_match:
            play = existing[row_match[slot]]
            outcome = ALREADY if play.import_ref is not None and play.import_ref == refs[slot] else DUPLICATE
            decisions.append(Decision(row, outcome, play.played_at, play.played_at_ms, play))
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
