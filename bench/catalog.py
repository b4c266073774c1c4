"""The synthetic catalog the benchmarks' users listen to: `tracks` tracks, each on an album of its
own, with two artists (the first chosen by `first_artist`, so a bench can make artists recur)."""

from __future__ import annotations

from collections.abc import Callable


def seed(tracks: int, first_artist: Callable[[int], int] = lambda i: i) -> None:
    from playvault.store.catalog import AlbumModel, ArtistModel, TrackModel

    with ArtistModel.batch_write() as artists, AlbumModel.batch_write() as albums, \
            TrackModel.batch_write() as batch:
        for i in range(tracks):
            artists.save(ArtistModel(f"artist{i:05d}", name=f"Artist {i}"))
            albums.save(AlbumModel(f"album{i:05d}", name=f"Album {i}", artist_ids=[f"artist{i:05d}"]))
            batch.save(TrackModel(f"track{i:05d}", name=f"Track number {i}", album_id=f"album{i:05d}",
                                  artist_ids=[f"artist{first_artist(i):05d}", f"artist{(i * 7) % tracks:05d}"],
                                  duration_ms=180_000 + i))
