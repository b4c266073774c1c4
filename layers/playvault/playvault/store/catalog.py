"""Catalog aggregate: artists, albums, tracks — normalized metadata written once.

Access patterns: get many tracks by Spotify id (BatchGetItem, to learn which are new); put a new
track/album/artist only if absent (conditional put), so concurrent workers race safely to one row
and known metadata is never rewritten by a poll.
"""

from __future__ import annotations

from collections.abc import Iterable

from pynamodb.attributes import BooleanAttribute, ListAttribute, NumberAttribute, UnicodeAttribute
from pynamodb.models import Model

from playvault.normalize import Album, Artist, Track
from playvault.store.base import BaseMeta, put_if_absent, table


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


def _existing_ids(model: type[Model], ids: set[str]) -> set[str]:
    if not ids:
        return set()
    # Only the key comes back: we ask "is it there", not "what is in it".
    hash_key = model._hash_key_attribute().attr_name
    return {getattr(item, hash_key) for item in model.batch_get(list(ids), attributes_to_get=[hash_key])}


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
        put_if_absent(_artist_row(artists[artist_id]))
    for album_id in sorted(set(albums) - _existing_ids(AlbumModel, set(albums))):
        put_if_absent(_album_row(albums[album_id]))
    return sum(put_if_absent(_track_row(track)) for track in unknown)
