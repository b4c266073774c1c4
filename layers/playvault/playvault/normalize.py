"""Spotify play-history payloads -> normalized records. Pure functions, no I/O.

A track references one album and many artists; a play references a user and a track (or, for a
podcast episode, an episode). Local files (`is_local: true`) may lack ids on the track, the album
and the artists: they get stable synthetic ids derived from what identifies them (URI, names), so
they are archived like any other play.

Items are read one by one. The real service sends damaged items now and then (`track: null`,
`artists: [null]`, `images: [null]`, a non-numeric `duration_ms`, an episode object where a track
is expected). What can be read is kept: null artists and images are dropped, an unreadable
duration becomes 0, an episode becomes an episode play. What cannot (no track object, no
`played_at`) is a BadItem: skipped and reported, never a reason to drop the rest of the page.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from playvault.clock import from_ms, to_ms

LOCAL_PREFIX = "local:"


class PayloadError(ValueError):
    """Spotify sent a play we cannot read; names the field."""


@dataclass(frozen=True)
class Artist:
    artist_id: str
    name: str
    uri: str | None


@dataclass(frozen=True)
class Album:
    album_id: str
    name: str
    uri: str | None
    album_type: str | None
    release_date: str | None
    image_url: str | None
    artists: tuple[Artist, ...]

    @property
    def artist_ids(self) -> tuple[str, ...]:
        return tuple(a.artist_id for a in self.artists)


@dataclass(frozen=True)
class Track:
    track_id: str
    name: str
    uri: str | None
    duration_ms: int
    explicit: bool
    is_local: bool
    album: Album
    artists: tuple[Artist, ...]
    isrc: str | None = None


@dataclass(frozen=True)
class Episode:
    episode_id: str
    name: str
    uri: str | None
    duration_ms: int
    show_id: str | None
    show_name: str | None


@dataclass(frozen=True)
class Play:
    played_at: str  # canonical: YYYY-MM-DDTHH:MM:SS.mmmZ
    played_at_ms: int
    track: Track | None  # None for an episode play
    context_type: str | None = None
    context_uri: str | None = None
    episode: Episode | None = None

    @property
    def item_type(self) -> str:
        return "episode" if self.episode is not None else "track"


@dataclass(frozen=True)
class BadItem:
    """An item that cannot be archived: why, and its played_at when it has one."""

    reason: str
    played_at: str | None = None


@dataclass
class Page:
    plays: list[Play] = field(default_factory=list)
    next_url: str | None = None
    bad_items: list[BadItem] = field(default_factory=list)


def parse_played_at(value: str) -> datetime:
    """ISO 8601 UTC with or without fractional seconds ('...04.589Z' or '...04Z')."""
    if not isinstance(value, str) or not value:
        raise PayloadError("played_at is missing")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise PayloadError(f"played_at is not an ISO 8601 timestamp: {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def canonical_played_at(moment: datetime) -> str:
    """One canonical form with millisecond precision, so a play has exactly one key."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def canonical_played_at_ms(ms: int) -> str:
    """The key of a play at this Unix millisecond."""
    return canonical_played_at(from_ms(ms))


def synthetic_id(*parts: str | None) -> str:
    digest = hashlib.sha256("\x1f".join(p or "" for p in parts).encode()).hexdigest()[:22]
    return LOCAL_PREFIX + digest


def _artist(raw: dict[str, Any]) -> Artist:
    name = raw.get("name") or ""
    return Artist(artist_id=raw.get("id") or synthetic_id("artist", name), name=name, uri=raw.get("uri"))


def _artists(raw: Any) -> tuple[Artist, ...]:
    """Artists of a track or album; null or malformed entries (seen: `artists: [null]`) are dropped."""
    return tuple(_artist(a) for a in (raw if isinstance(raw, list) else []) if isinstance(a, dict))


def _duration_ms(raw: Any) -> int:
    """duration_ms as an int; the real service has sent strings and nulls: those read as 0."""
    if isinstance(raw, bool):
        return 0
    if isinstance(raw, int | float):
        return max(0, int(raw))
    if isinstance(raw, str) and raw.strip().isdigit():
        return int(raw.strip())
    return 0


def _episode(raw: dict[str, Any]) -> Episode:
    show = raw.get("show") if isinstance(raw.get("show"), dict) else {}
    name = raw.get("name") or ""
    uri = raw.get("uri")
    return Episode(
        episode_id=raw.get("id") or synthetic_id("episode", uri or "", name, show.get("name")),
        name=name,
        uri=uri,
        duration_ms=_duration_ms(raw.get("duration_ms")),
        show_id=show.get("id"),
        show_name=show.get("name"),
    )


def _track(raw: dict[str, Any]) -> Track:
    if not isinstance(raw, dict):
        raise PayloadError("track is missing")
    artists = _artists(raw.get("artists"))
    album_raw = raw.get("album") if isinstance(raw.get("album"), dict) else {}
    album_artists = _artists(album_raw.get("artists")) or artists
    album_name = album_raw.get("name") or ""
    images = [i for i in (album_raw.get("images") or []) if isinstance(i, dict) and i.get("url")]
    album = Album(
        album_id=album_raw.get("id") or synthetic_id("album", album_name, *(a.name for a in album_artists)),
        name=album_name,
        uri=album_raw.get("uri"),
        album_type=album_raw.get("album_type"),
        release_date=album_raw.get("release_date"),
        image_url=images[0].get("url") if images else None,
        artists=album_artists,
    )
    name = raw.get("name") or ""
    uri = raw.get("uri")
    track_id = raw.get("id") or synthetic_id("track", uri or "", name, album.name, *(a.name for a in artists))
    return Track(
        track_id=track_id,
        name=name,
        uri=uri,
        duration_ms=_duration_ms(raw.get("duration_ms")),
        explicit=bool(raw.get("explicit")),
        is_local=bool(raw.get("is_local")),
        album=album,
        artists=artists,
        isrc=(raw.get("external_ids") or {}).get("isrc"),
    )


def parse_track(raw: dict[str, Any]) -> Track:
    """A TrackObject (GET /tracks/{id}) -> Track with its album and artists."""
    return _track(raw)


def parse_play(raw: dict[str, Any]) -> Play:
    if not isinstance(raw, dict):
        raise PayloadError("item is not an object")
    moment = parse_played_at(raw.get("played_at"))  # type: ignore[arg-type]
    context = raw.get("context") if isinstance(raw.get("context"), dict) else {}
    item = raw.get("track")
    if isinstance(item, dict) and item.get("type") == "episode":
        return Play(played_at=canonical_played_at(moment), played_at_ms=to_ms(moment), track=None,
                    context_type=context.get("type"), context_uri=context.get("uri"), episode=_episode(item))
    return Play(
        played_at=canonical_played_at(moment),
        played_at_ms=to_ms(moment),
        track=_track(item),  # type: ignore[arg-type]
        context_type=context.get("type"),
        context_uri=context.get("uri"),
    )


def parse_page(body: Any) -> Page:
    """A CursorPagingPlayHistoryObject -> plays (deduplicated by played_at), bad items, next URL.

    Only the envelope can fail the page; each item is read on its own."""
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        raise PayloadError("recently-played response has no items list")
    plays: dict[str, Play] = {}
    bad: list[BadItem] = []
    for raw in body["items"]:
        try:
            play = parse_play(raw)
        except PayloadError as exc:
            played_at = raw.get("played_at") if isinstance(raw, dict) else None
            bad.append(BadItem(str(exc), played_at if isinstance(played_at, str) else None))
            continue
        plays[play.played_at] = play
    return Page(plays=sorted(plays.values(), key=lambda p: p.played_at_ms), next_url=body.get("next"),
                bad_items=bad)
