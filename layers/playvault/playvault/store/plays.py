"""Plays aggregate: one row per (user, played_at).

Access pattern: a user's plays by time range (Query on user_id with played_at BETWEEN). The key is
the play's identity, and a row's content is a pure function of the Spotify payload, so writing the
same play again (overlapping polls, redelivered messages) overwrites it with identical content:
never a second row.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pynamodb.attributes import BooleanAttribute, NumberAttribute, UnicodeAttribute
from pynamodb.models import Model

from playvault.normalize import Play
from playvault.store.base import BaseMeta, table

SOURCE_API = "api"
SOURCE_EXPORT = "export"
API_SOURCE = SOURCE_API


@table("plays_table")
class PlayModel(Model):
    class Meta(BaseMeta):
        pass

    user_id = UnicodeAttribute(hash_key=True)
    played_at = UnicodeAttribute(range_key=True)  # canonical ISO 8601 UTC with milliseconds
    played_at_ms = NumberAttribute()
    item_type = UnicodeAttribute(default="track")  # "track" | "episode"
    track_id = UnicodeAttribute(null=True)  # null for episodes and for export rows known only by name
    episode_id = UnicodeAttribute(null=True)  # podcast episodes
    context_type = UnicodeAttribute(null=True)
    context_uri = UnicodeAttribute(null=True)
    # Where the play came from: "api" (polled) or "export" (imported from Spotify's data export).
    source = UnicodeAttribute(default=SOURCE_API)
    # What an export row names (stored as given; the catalog is filled from GET /tracks/{id} later).
    track_name = UnicodeAttribute(null=True)
    artist_name = UnicodeAttribute(null=True)
    album_name = UnicodeAttribute(null=True)
    episode_name = UnicodeAttribute(null=True)
    show_name = UnicodeAttribute(null=True)
    ms_played = NumberAttribute(null=True)
    unresolved = BooleanAttribute(null=True)  # an export row without ids, kept by name
    # "<job id>:<file index>:<row index>": which export row wrote it, so a retried chunk knows its own rows.
    import_ref = UnicodeAttribute(null=True)


def write_plays(user_id: str, plays: Iterable[Play]) -> int:
    """Durably write the plays (BatchWriteItem, 25 a request, unprocessed items retried)."""
    written = 0
    with PlayModel.batch_write() as batch:
        for play in plays:
            batch.save(
                PlayModel(
                    user_id,
                    play.played_at,
                    played_at_ms=play.played_at_ms,
                    item_type=play.item_type,
                    track_id=play.track.track_id if play.track else None,
                    episode_id=play.episode.episode_id if play.episode else None,
                    context_type=play.context_type,
                    context_uri=play.context_uri,
                )
            )
            written += 1
    return written


def plays_between(user_id: str, start: str, end: str) -> Iterator[PlayModel]:
    """A user's plays with start <= played_at <= end (canonical strings), oldest first."""
    return PlayModel.query(user_id, PlayModel.played_at.between(start, end))


def all_plays(user_id: str) -> Iterator[PlayModel]:
    return PlayModel.query(user_id)


def write_rows(rows: Iterable[PlayModel]) -> int:
    """Durably write ready-made play rows (the importer's): BatchWriteItem, 25 a request."""
    written = 0
    with PlayModel.batch_write() as batch:
        for row in rows:
            batch.save(row)
            written += 1
    return written


def page(user_id: str, start: str, end: str, limit: int, after: str | None = None) -> list[PlayModel]:
    """Up to `limit` plays with start <= played_at <= end, oldest first, strictly after `after`.

    A cursor past `end` means nothing is left: an empty page (DynamoDB refuses BETWEEN a AND b
    with a > b as a ValidationException)."""
    lower = start if after is None or after < start else after
    if lower > end:
        return []
    condition = PlayModel.played_at.between(lower, end)
    rows = []
    for play in PlayModel.query(user_id, condition, page_size=limit + 1):
        if after is not None and play.played_at <= after:
            continue
        rows.append(play)
        if len(rows) == limit:
            break
    return rows


def plays_after(user_id: str, after: str | None) -> Iterator[PlayModel]:
    """Every play newer than `after` (all when None), oldest first, read page by page."""
    if after is None:
        return PlayModel.query(user_id, page_size=1000)
    return PlayModel.query(user_id, PlayModel.played_at > after, page_size=1000)


def first_and_last(user_id: str) -> tuple[PlayModel | None, PlayModel | None]:
    first = next(iter(PlayModel.query(user_id, limit=1)), None)
    last = next(iter(PlayModel.query(user_id, limit=1, scan_index_forward=False)), None)
    return first, last


def count(user_id: str) -> int:
    """Exact number of the user's plays (Query with Select COUNT: no item leaves DynamoDB)."""
    return PlayModel.count(user_id)


def delete_some(user_id: str, limit: int) -> int:
    """Delete up to `limit` of the user's plays (keys-only Query + BatchWriteItem); returns how many."""
    deleted = 0
    with PlayModel.batch_write() as batch:
        # Strongly consistent: a deletion's final sweep must see a play written just before it.
        for play in PlayModel.query(user_id, attributes_to_get=["user_id", "played_at"], limit=limit,
                                    page_size=min(limit, 1000), consistent_read=True):
            batch.delete(play)
            deleted += 1
    return deleted
