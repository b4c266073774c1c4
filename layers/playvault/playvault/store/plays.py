"""Plays aggregate: one row per (user, played_at).

Access pattern: a user's plays by time range (Query on user_id with played_at BETWEEN). A polled play
is written at its exact played_at, conditionally (a put that never replaces a row): writing the same
play again (overlapping polls, redelivered messages) finds it there and changes nothing, a play an
import merged into keeps what the import gave it, and an imported play of another item at exactly
that key keeps it (the polled play takes the next free millisecond; played_at_ms stays exact).

An export row and a polled play that playvault.identity calls the same play are merged
(`reconcile`): the polled play takes the export's ms_played, names, platform and import_ref, the
export row is deleted, in one transaction conditional on both being still as read.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from pynamodb.attributes import BooleanAttribute, NumberAttribute, UnicodeAttribute
from pynamodb.exceptions import PutError, TransactWriteError, UpdateError
from pynamodb.models import Model
from pynamodb.transactions import TransactWrite

from playvault import identity
from playvault.normalize import Play, canonical_played_at_ms
from playvault.store import rollups
from playvault.store.base import BaseMeta, condition_failed, table

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
    # "<job id>:<file index>:<row index>": which export row wrote it or was merged into it (a polled
    # play), so a retried chunk knows its own rows.
    import_ref = UnicodeAttribute(null=True)
    platform = UnicodeAttribute(null=True)  # the export's device platform
    precision_ms = NumberAttribute(null=True)  # export rows: 1000 (whole seconds) or 60000 (Account data)

    @property
    def stream(self) -> identity.Stream:
        """What the identity rule needs of this row: ids, and the names it carries."""
        if self.item_type == identity.EPISODE:
            key = identity.name_key(self.episode_name, self.show_name)
        else:
            key = identity.name_key(self.track_name, self.artist_name)
        precision = int(self.precision_ms or 1000) if self.source == SOURCE_EXPORT else 1
        return identity.Stream(int(self.played_at_ms), self.item_type or identity.TRACK, self.track_id,
                               self.episode_id, key, precision,
                               int(self.ms_played) if self.ms_played is not None else None)


# Written again by a concurrent transaction on the same rows: tried again this often.
MERGE_ATTEMPTS = 3
# How far around the rows it wrote a writer looks for their counterparts: the tolerance, plus a
# minute (a minute-precision row stands for the minute after its key).
WINDOW_MARGIN_MS = 60_000


def _polled_row(user_id: str, play: Play, played_at: str) -> PlayModel:
    track, episode = play.track, play.episode
    return PlayModel(
        user_id,
        played_at,
        played_at_ms=play.played_at_ms,
        item_type=play.item_type,
        track_id=track.track_id if track else None,
        episode_id=episode.episode_id if episode else None,
        context_type=play.context_type,
        context_uri=play.context_uri,
        # The names the identity rule matches an export row without ids by (and what reads show
        # when the catalog cannot answer).
        track_name=track.name if track else None,
        artist_name=track.artists[0].name if track and track.artists else None,
        album_name=track.album.name if track and track.album.name else None,
        episode_name=episode.name if episode else None,
        show_name=episode.show_name if episode else None,
    )


def _same_polled_play(row: PlayModel, play: Play) -> bool:
    return (row.source == SOURCE_API and int(row.played_at_ms) == play.played_at_ms
            and row.track_id == (play.track.track_id if play.track else None)
            and row.episode_id == (play.episode.episode_id if play.episode else None))


def write_plays(user_id: str, plays: Iterable[Play]) -> int:
    """Durably write polled plays (a conditional PutItem each: never over an existing row).

    A row already at the play's key is this play (written before: nothing to do), an export row of
    the same item (it becomes this play, keeping what the export gave it), or another play (kept;
    this play takes the next free millisecond, as imports do). Returns how many plays were given."""
    written = 0
    for play in plays:
        ms = play.played_at_ms
        while True:
            key = canonical_played_at_ms(ms)
            row = _polled_row(user_id, play, key)
            try:
                row.save(condition=PlayModel.played_at.does_not_exist())
                break
            except PutError as exc:
                if not condition_failed(exc):
                    raise
            there = _get(user_id, key)
            if there is None:
                continue  # deleted meanwhile (a merge): the key is free again
            if _same_polled_play(there, play):
                break
            if (there.source == SOURCE_EXPORT and there.import_ref
                    and identity.same_item(there.stream, row.stream) and _adopt(there, play)):
                break
            ms += 1
        written += 1
    return written


# The names a play can carry (an export row's, or a polled play's own).
_NAME_ATTRIBUTES = (PlayModel.track_name, PlayModel.artist_name, PlayModel.album_name, PlayModel.episode_name,
                    PlayModel.show_name)


def _get(user_id: str, played_at: str) -> PlayModel | None:
    try:
        return PlayModel.get(user_id, played_at, consistent_read=True)
    except PlayModel.DoesNotExist:
        return None


def _adopt(export_row: PlayModel, play: Play) -> bool:
    """The export row at this play's very key becomes the polled play (one conditional UpdateItem):
    the poll's exact played_at, ids and context; the export's ms_played, names and import_ref stay.
    False when the row changed meanwhile (merged or deleted by another writer)."""
    polled = _polled_row(export_row.user_id, play, export_row.played_at)
    actions = [PlayModel.source.set(SOURCE_API), PlayModel.played_at_ms.set(play.played_at_ms),
               PlayModel.item_type.set(play.item_type), PlayModel.unresolved.remove(),
               PlayModel.precision_ms.remove()]
    for attribute in (PlayModel.track_id, PlayModel.episode_id, PlayModel.context_type, PlayModel.context_uri):
        value = getattr(polled, attribute.attr_name)
        if value is not None:
            actions.append(attribute.set(value))
    for attribute in _NAME_ATTRIBUTES:
        if getattr(export_row, attribute.attr_name) is None and getattr(polled, attribute.attr_name) is not None:
            actions.append(attribute.set(getattr(polled, attribute.attr_name)))
    try:
        export_row.update(actions=actions, condition=(PlayModel.source == SOURCE_EXPORT)
                          & (PlayModel.import_ref == export_row.import_ref))
    except UpdateError as exc:
        if condition_failed(exc):
            return False
        raise
    return True


def _export_fields(export_row: PlayModel) -> list:
    """What a polled play takes from the export row it is merged with."""
    actions = [PlayModel.import_ref.set(export_row.import_ref)]
    for attribute in (PlayModel.ms_played, PlayModel.platform, *_NAME_ATTRIBUTES):
        value = getattr(export_row, attribute.attr_name)
        if value is not None:
            actions.append(attribute.set(value))
    return actions


_POLLED_WITHOUT_IMPORT = (PlayModel.played_at.exists() & (PlayModel.source == SOURCE_API)
                          & PlayModel.import_ref.does_not_exist())


def enrich(polled: PlayModel, export_row: PlayModel) -> bool:
    """A polled play takes what an export row (not written: a duplicate) knows. False when it holds
    an import already or is gone (another writer got there first)."""
    try:
        polled.update(actions=_export_fields(export_row), condition=_POLLED_WITHOUT_IMPORT)
    except UpdateError as exc:
        if condition_failed(exc):
            return False
        raise
    return True


def merge(export_row: PlayModel, polled: PlayModel) -> bool:
    """One TransactWriteItems: the export row is deleted (if still that export row) and the polled
    play takes its fields (if it holds no import yet). False when a condition failed: another writer
    merged one of them meanwhile."""
    for attempt in range(1, MERGE_ATTEMPTS + 1):
        try:
            with TransactWrite(connection=PlayModel._get_connection().connection) as transaction:
                transaction.delete(export_row, condition=PlayModel.played_at.exists()
                                   & (PlayModel.source == SOURCE_EXPORT)
                                   & (PlayModel.import_ref == export_row.import_ref))
                transaction.update(polled, actions=_export_fields(export_row), condition=_POLLED_WITHOUT_IMPORT)
            return True
        except TransactWriteError as exc:
            reasons = [r.code if r is not None else None for r in (exc.cancellation_reasons or [])]
            if "ConditionalCheckFailed" in reasons:
                return False
            if attempt == MERGE_ATTEMPTS or not ("TransactionConflict" in reasons or exc.cause_response_code in (
                    "TransactionConflictException", "TransactionInProgressException")):
                raise
            time.sleep(0.02 * attempt)
    return False


def reconcile(user_id: str, low_ms: int, high_ms: int, tolerance_ms: int) -> list[str]:
    """Merge every export row and polled play (holding no import) that the identity rule calls the
    same play, around [low_ms, high_ms]: one strongly consistent Query, then a transaction per pair.
    Returns the import_ref of each export row merged (by this call)."""
    margin = tolerance_ms + WINDOW_MARGIN_MS
    window = list(PlayModel.query(user_id, PlayModel.played_at.between(
        canonical_played_at_ms(low_ms - margin), canonical_played_at_ms(high_ms + margin)),
        consistent_read=True))
    exported = [p for p in window if p.source == SOURCE_EXPORT and p.import_ref]
    polled = [p for p in window if p.source != SOURCE_EXPORT and not p.import_ref]
    if not exported or not polled:
        return []
    pairs = identity.match([p.stream for p in exported], [p.stream for p in polled], tolerance_ms)
    if pairs:
        # The rollups of both rows' dates are recomputed from the plays: marked before the merge.
        rollups.mark_dirty(user_id, {p.played_at[:10] for i, j in pairs.items() for p in (exported[i], polled[j])})
    return [exported[i].import_ref for i, j in sorted(pairs.items()) if merge(exported[i], polled[j])]


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


def newest_first(user_id: str, limit: int, before: str | None = None) -> list[PlayModel]:
    """Up to `limit` of the user's plays strictly before `before` (all when None), newest first: one
    Query reading `limit` items (the history list's page)."""
    condition = PlayModel.played_at < before if before is not None else None
    return list(PlayModel.query(user_id, condition, scan_index_forward=False, limit=limit, page_size=limit))


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
