"""Spotify play-history payloads -> normalized records. Pure functions, no I/O.

A track references one album and many artists; a play references a user and a track. Local files
(`is_local: true`) may lack ids on the track, the album and the artists: they get stable synthetic
ids derived from what identifies them (URI, names), so they are archived like any other play.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from playvault.clock import to_ms

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
class Play:
    played_at: str  # canonical: YYYY-MM-DDTHH:MM:SS.mmmZ
    played_at_ms: int
    track: Track
    context_type: str | None = None
    context_uri: str | None = None


@dataclass
class Page:
    plays: list[Play] = field(default_factory=list)
    next_url: str | None = None


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


def synthetic_id(*parts: str | None) -> str:
    digest = hashlib.sha256("\x1f".join(p or "" for p in parts).encode()).hexdigest()[:22]
    return LOCAL_PREFIX + digest


def _artist(raw: dict[str, Any]) -> Artist:
    name = raw.get("name") or ""
    return Artist(artist_id=raw.get("id") or synthetic_id("artist", name), name=name, uri=raw.get("uri"))


def _track(raw: dict[str, Any]) -> Track:
    if not isinstance(raw, dict):
        raise PayloadError("track is missing")
    artists = tuple(_artist(a) for a in raw.get("artists") or [])
    album_raw = raw.get("album") or {}
    album_artists = tuple(_artist(a) for a in album_raw.get("artists") or []) or artists
    album_name = album_raw.get("name") or ""
    images = album_raw.get("images") or []
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
        duration_ms=int(raw.get("duration_ms") or 0),
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
    moment = parse_played_at(raw.get("played_at"))  # type: ignore[arg-type]
    context = raw.get("context") or {}
    return Play(
        played_at=canonical_played_at(moment),
        played_at_ms=to_ms(moment),
        track=_track(raw.get("track")),  # type: ignore[arg-type]
        context_type=context.get("type"),
        context_uri=context.get("uri"),
    )


def parse_page(body: Any) -> Page:
    """A CursorPagingPlayHistoryObject -> plays (deduplicated by played_at) and the next URL."""
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        raise PayloadError("recently-played response has no items list")
    plays = {}
    for raw in body["items"]:
        play = parse_play(raw)
        plays[play.played_at] = play
    return Page(plays=sorted(plays.values(), key=lambda p: p.played_at_ms), next_url=body.get("next"))
