"""The read side of a user's archive: plays with their track, album and artists; the summary of the
account page (its figures: playvault.rollups). Reads are per user by key (the user id always comes
from the caller's session).

Every reader (/me, /me/plays, the exports) names a play through best_names: the catalog's names when
it holds the track (episode), else the names stored on the play (an import keeps the export's names
on the rows it writes: rows without ids, local files, tracks not looked up yet or unknown to Spotify).

Catalog rows are looked up in batches (BatchGetItem, 100 keys) with a bounded per-call cache, so
a stream of plays of any length holds at most CACHE_LIMIT catalog rows in memory.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from playvault.store import gaps, plays, users
from playvault.store.catalog import AlbumModel, ArtistModel, EpisodeModel, TrackModel
from playvault.store.plays import PlayModel

CACHE_LIMIT = 20_000  # catalog rows kept while streaming (~100 bytes each)
CHUNK = 500  # plays enriched at a time


@dataclass(frozen=True)
class PlayRow:
    """One exported play: everything a user needs to read it without PlayVault."""

    played_at: str
    item_type: str  # "track" | "episode"
    track_id: str | None
    track_name: str | None
    album_id: str | None
    album_name: str | None
    artist_ids: tuple[str | None, ...]  # None: an artist known only by the name the play stores
    artist_names: tuple[str, ...]
    duration_ms: int | None
    source: str
    episode_id: str | None = None
    episode_name: str | None = None
    show_name: str | None = None
    ms_played: int | None = None  # how long it played, when an export said so (polled plays: unknown)
    platform: str | None = None  # the export's device platform, when imported

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "played_at": self.played_at,
            "item_type": self.item_type,
            "track": {"id": self.track_id, "name": self.track_name},
            "album": {"id": self.album_id, "name": self.album_name},
            "artists": [{"id": i, "name": n} for i, n in zip(self.artist_ids, self.artist_names, strict=True)],
            "duration_ms": self.duration_ms,
            "source": self.source,
        }
        if self.item_type == "episode":
            out["episode"] = {"id": self.episode_id, "name": self.episode_name, "show": self.show_name}
        return out


@dataclass(frozen=True)
class Names:
    """The names best_names chose for one play (artist ids None where only the play's name is known)."""

    track_name: str | None
    album_name: str | None
    artist_ids: tuple[str | None, ...]
    artist_names: tuple[str, ...]
    episode_name: str | None
    show_name: str | None

    def title(self, item_type: str | None) -> str | None:
        """What the play is called: the episode's name for an episode, else the track's."""
        return self.episode_name if item_type == "episode" else self.track_name


def best_names(play: PlayModel, track: TrackModel | None, album: AlbumModel | None,
               artists: Mapping[str, ArtistModel | None], episode: EpisodeModel | None) -> Names:
    """The best names known for one play: the catalog's rows (given, or None where the catalog has
    none) first, each missing or empty name then taken from the play itself. The one place readers
    name a play."""
    if track is not None and track.artist_ids:
        artist_ids: tuple[str | None, ...] = tuple(track.artist_ids)
        found = [artists.get(a) for a in track.artist_ids]
        artist_names = tuple(a.name if a else "" for a in found)
        if not artist_names[0] and play.artist_name:
            artist_names = (play.artist_name, *artist_names[1:])
    elif play.artist_name:
        artist_ids, artist_names = (None,), (play.artist_name,)
    else:
        artist_ids, artist_names = (), ()
    return Names(
        track_name=(track.name if track else None) or play.track_name,
        album_name=(album.name if album else None) or play.album_name,
        artist_ids=artist_ids,
        artist_names=artist_names,
        episode_name=(episode.name if episode else None) or play.episode_name,
        show_name=(episode.show_name if episode else None) or play.show_name,
    )


class _Lru(OrderedDict):
    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def put(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


class Catalog:
    """Batched, cached catalog lookups for one read (an export, a page)."""

    def __init__(self, limit: int = CACHE_LIMIT):
        self._rows: dict[type, _Lru] = {m: _Lru(limit) for m in (TrackModel, AlbumModel, ArtistModel, EpisodeModel)}

    def _load(self, model: type, ids: Iterable[str]) -> dict[str, Any]:
        cache = self._rows[model]
        wanted = {i for i in ids if i}
        missing = [i for i in wanted if i not in cache]
        for start in range(0, len(missing), 100):
            found = {getattr(row, model._hash_key_attribute().attr_name): row
                     for row in model.batch_get(missing[start:start + 100])}
            for key in missing[start:start + 100]:
                cache.put(key, found.get(key))  # None: not in the catalog (should not happen)
        return {i: cache.get(i) for i in wanted}

    def rows(self, chunk: list[PlayModel]) -> list[PlayRow]:
        tracks = self._load(TrackModel, (p.track_id for p in chunk))
        albums = self._load(AlbumModel, (t.album_id for t in tracks.values() if t))
        artists = self._load(ArtistModel, (a for t in tracks.values() if t for a in t.artist_ids))
        episodes = self._load(EpisodeModel, (p.episode_id for p in chunk if p.episode_id))
        out = []
        for play in chunk:
            track = tracks.get(play.track_id) if play.track_id else None
            episode = episodes.get(play.episode_id) if play.episode_id else None
            album = albums.get(track.album_id) if track else None
            names = best_names(play, track, album, artists, episode)
            out.append(PlayRow(
                played_at=play.played_at,
                item_type=play.item_type or "track",
                track_id=play.track_id,
                track_name=names.track_name,
                album_id=track.album_id if track else None,
                album_name=names.album_name,
                artist_ids=names.artist_ids,
                artist_names=names.artist_names,
                duration_ms=int(track.duration_ms) if track else int(episode.duration_ms) if episode else None,
                source=play.source or "api",
                episode_id=play.episode_id,
                episode_name=names.episode_name,
                show_name=names.show_name,
                ms_played=int(play.ms_played) if play.ms_played is not None else None,
                platform=play.platform,
            ))
        return out

    def track_names(self, track_ids: Iterable[str]) -> dict[str, str]:
        return {i: t.name for i, t in self._load(TrackModel, track_ids).items() if t}

    def tracks(self, track_ids: Iterable[str]) -> dict[str, TrackModel]:
        return {i: t for i, t in self._load(TrackModel, track_ids).items() if t}

    def artist_names(self, artist_ids: Iterable[str]) -> dict[str, str]:
        return {i: a.name for i, a in self._load(ArtistModel, artist_ids).items() if a}


def enriched(source: Iterable[PlayModel], catalog: Catalog | None = None) -> Iterator[PlayRow]:
    """PlayRows for a stream of plays, CHUNK at a time: memory does not grow with the stream."""
    catalog = catalog or Catalog()
    iterator = iter(source)
    while chunk := list(islice(iterator, CHUNK)):
        yield from catalog.rows(chunk)


# -- the account page --------------------------------------------------------------------------
def iso_ms(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass
class Overview:
    """The summary of /me (its figures come from playvault.rollups, never from the plays)."""

    user: users.UserModel
    plays_total: int
    first_play: str | None
    last_play: str | None
    gaps: list[gaps.GapModel] = field(default_factory=list)


def overview(user: users.UserModel, plays_total: int | None) -> Overview:
    """Two one-item Queries (first and last play) and up to 100 gaps. `plays_total`: from the rollups;
    None (they are being rebuilt) counts the plays, a COUNT that reads every play."""
    first, last = plays.first_and_last(user.user_id)
    return Overview(
        user=user,
        plays_total=plays_total if plays_total is not None else plays.count(user.user_id),
        first_play=first.played_at if first else None,
        last_play=last.played_at if last else None,
        gaps=list(islice(gaps.for_user(user.user_id), 100)),
    )
