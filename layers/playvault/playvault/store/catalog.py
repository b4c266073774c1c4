"""Catalog aggregate: artists, albums, tracks and podcast episodes — normalized metadata written once.

Access patterns: get many tracks by Spotify id (BatchGetItem, to learn which are new); put a new
track/album/artist only if absent (conditional put), so concurrent workers race safely to one row
and known metadata is never rewritten by a poll. Rows are never deleted, so a container remembers
the ids it has seen stored and asks DynamoDB only about the others: a poll whose tracks this
container already met needs no lookup at all.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

from pynamodb.attributes import BooleanAttribute, ListAttribute, NumberAttribute, UnicodeAttribute
from pynamodb.models import Model

from playvault.normalize import Album, Artist, Episode, Track
from playvault.store.base import BaseMeta, binding, put_if_absent, table

# Ids remembered per model: ~100 bytes each, so ~5 MB per model at most in a 512 MB container.
KNOWN_IDS_CAPACITY = 50_000


@table("artists_table")
class ArtistModel(Model):
    class Meta(BaseMeta):
        pass

    artist_id = UnicodeAttribute(hash_key=True)
    name = UnicodeAttribute()
    uri = UnicodeAttribute(null=True)


@table("albums_table")
class AlbumModel(Model):
    class Meta(BaseMeta):
        pass

    album_id = UnicodeAttribute(hash_key=True)
    name = UnicodeAttribute()
    uri = UnicodeAttribute(null=True)
    album_type = UnicodeAttribute(null=True)
    release_date = UnicodeAttribute(null=True)
    image_url = UnicodeAttribute(null=True)
    artist_ids = ListAttribute(of=UnicodeAttribute, default=list)


@table("tracks_table")
class TrackModel(Model):
    class Meta(BaseMeta):
        pass

    track_id = UnicodeAttribute(hash_key=True)
    name = UnicodeAttribute()
    uri = UnicodeAttribute(null=True)
    album_id = UnicodeAttribute()
    artist_ids = ListAttribute(of=UnicodeAttribute, default=list)
    duration_ms = NumberAttribute(default=0)
    explicit = BooleanAttribute(default=False)
    is_local = BooleanAttribute(default=False)
    isrc = UnicodeAttribute(null=True)


@table("episodes_table")
class EpisodeModel(Model):
    """A podcast episode: kept apart from tracks (no album, no artists; a show instead)."""

    class Meta(BaseMeta):
        pass

    episode_id = UnicodeAttribute(hash_key=True)
    name = UnicodeAttribute()
    uri = UnicodeAttribute(null=True)
    duration_ms = NumberAttribute(default=0)
    show_id = UnicodeAttribute(null=True)
    show_name = UnicodeAttribute(null=True)


class _KnownIds:
    """Ids of rows this container has seen stored in one table (least recently used out first)."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._filled_under: tuple[str, int] | None = None
        self._lock = threading.Lock()

    def _check_binding(self, model: type[Model]) -> None:
        current = (model.Meta.table_name, binding())
        if current != self._filled_under:
            self._ids.clear()
            self._filled_under = current

    def unknown(self, model: type[Model], ids: set[str]) -> set[str]:
        with self._lock:
            self._check_binding(model)
            for known in ids & self._ids.keys():
                self._ids.move_to_end(known)
            return ids - self._ids.keys()

    def add(self, model: type[Model], ids: Iterable[str]) -> None:
        with self._lock:
            self._check_binding(model)
            for row_id in ids:
                self._ids[row_id] = None
                self._ids.move_to_end(row_id)
            while len(self._ids) > self._capacity:
                self._ids.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._ids.clear()


_KNOWN: dict[type[Model], _KnownIds] = {}


def _known(model: type[Model]) -> _KnownIds:
    return _KNOWN.setdefault(model, _KnownIds(KNOWN_IDS_CAPACITY))


def forget_known_ids() -> None:
    """What a new container knows: nothing (the bench and tests measure that case too)."""
    for known in _KNOWN.values():
        known.clear()


def _existing_ids(model: type[Model], ids: set[str]) -> set[str]:
    known = _known(model)
    to_ask = known.unknown(model, ids)
    if not to_ask:
        return ids
    # Only the key comes back: we ask "is it there", not "what is in it".
    hash_key = model._hash_key_attribute().attr_name
    found = {getattr(item, hash_key) for item in model.batch_get(list(to_ask), attributes_to_get=[hash_key])}
    known.add(model, found)
    return (ids - to_ask) | found


def _put_and_remember(row: Model) -> bool:
    """put_if_absent; either way the row exists afterwards."""
    created = put_if_absent(row)
    model = type(row)
    _known(model).add(model, [getattr(row, model._hash_key_attribute().attr_name)])
    return created


def _artist_row(artist: Artist) -> ArtistModel:
    return ArtistModel(artist.artist_id, name=artist.name, uri=artist.uri)


def _album_row(album: Album) -> AlbumModel:
    return AlbumModel(
        album.album_id,
        name=album.name,
        uri=album.uri,
        album_type=album.album_type,
        release_date=album.release_date,
        image_url=album.image_url,
        artist_ids=list(album.artist_ids),
    )


def _track_row(track: Track) -> TrackModel:
    return TrackModel(
        track.track_id,
        name=track.name,
        uri=track.uri,
        album_id=track.album.album_id,
        artist_ids=[a.artist_id for a in track.artists],
        duration_ms=track.duration_ms,
        explicit=track.explicit,
        is_local=track.is_local,
        isrc=track.isrc,
    )


def upsert_tracks(tracks: Iterable[Track]) -> int:
    """Store the tracks (with their albums and artists) not yet known; returns how many tracks are new.

    Albums and artists go in before the track that references them, so a reader never finds a track
    whose album is missing.
    """
    by_id = {t.track_id: t for t in tracks}
    unknown = [by_id[i] for i in sorted(set(by_id) - _existing_ids(TrackModel, set(by_id)))]
    if not unknown:
        return 0
    albums = {t.album.album_id: t.album for t in unknown}
    # Album artists may differ from track artists (compilations): both are stored.
    artists = {a.artist_id: a for t in unknown for a in (*t.artists, *t.album.artists)}
    for artist_id in sorted(set(artists) - _existing_ids(ArtistModel, set(artists))):
        _put_and_remember(_artist_row(artists[artist_id]))
    for album_id in sorted(set(albums) - _existing_ids(AlbumModel, set(albums))):
        _put_and_remember(_album_row(albums[album_id]))
    return sum(_put_and_remember(_track_row(track)) for track in unknown)


def upsert_episodes(episodes: Iterable[Episode]) -> int:
    """Store the episodes not yet known; returns how many are new."""
    by_id = {e.episode_id: e for e in episodes}
    unknown = sorted(set(by_id) - _existing_ids(EpisodeModel, set(by_id)))
    return sum(
        _put_and_remember(EpisodeModel(i, name=by_id[i].name, uri=by_id[i].uri, duration_ms=by_id[i].duration_ms,
                                       show_id=by_id[i].show_id, show_name=by_id[i].show_name))
        for i in unknown
    )


def unknown_track_ids(ids: Iterable[str]) -> set[str]:
    """The ids among `ids` that the tracks table does not hold (the container's cache first)."""
    wanted = set(ids)
    return wanted - _existing_ids(TrackModel, wanted) if wanted else set()


# A track id Spotify answered 404 (or 400) for is remembered as a row `gone#<id>` of the tracks table:
# no import asks for it again, and no reader of tracks (they ask by track id) ever meets the row.
GONE_PREFIX = "gone#"


def mark_gone(track_id: str) -> None:
    """Remember that Spotify no longer has this track (its plays keep the export's names)."""
    _put_and_remember(TrackModel(GONE_PREFIX + track_id, name="", album_id=""))


def is_gone(track_id: str) -> bool:
    return bool(_existing_ids(TrackModel, {GONE_PREFIX + track_id}))


def tracks_to_look_up(ids: Iterable[str]) -> set[str]:
    """The ids among `ids` neither stored nor known to be gone: what an import asks Spotify for."""
    unknown = unknown_track_ids(ids)
    if not unknown:
        return unknown
    gone = _existing_ids(TrackModel, {GONE_PREFIX + i for i in unknown})
    return unknown - {g[len(GONE_PREFIX):] for g in gone}


def track_names(ids: Iterable[str]) -> dict[str, tuple[str, str | None]]:
    """track id -> (track name, first artist's name), for matching export rows known only by name."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    tracks = {t.track_id: t for t in TrackModel.batch_get(wanted, attributes_to_get=["track_id", "name", "artist_ids"])}
    artist_ids = sorted({t.artist_ids[0] for t in tracks.values() if t.artist_ids})
    artists = {a.artist_id: a.name for a in ArtistModel.batch_get(artist_ids, attributes_to_get=["artist_id", "name"])}
    return {tid: (t.name, artists.get(t.artist_ids[0]) if t.artist_ids else None) for tid, t in tracks.items()}


def put_new_episode_rows(episodes: Iterable[EpisodeModel]) -> int:
    """Store the episode rows (from an export) not yet known (conditional put); returns how many are new."""
    by_id = {e.episode_id: e for e in episodes}
    unknown = sorted(set(by_id) - _existing_ids(EpisodeModel, set(by_id)))
    return sum(_put_and_remember(by_id[i]) for i in unknown)
