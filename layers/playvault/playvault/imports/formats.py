"""Spotify's two export formats -> validated import rows, and the listening rule. Pure, no I/O.

- Extended streaming history (`Streaming_History_Audio_<years>_<n>.json`, older `endsong_<n>.json`):
  `ts` is when the stream ended (UTC, whole seconds), `ms_played`, `spotify_track_uri` or
  `spotify_episode_uri`, names, `incognito_mode`, `username` (old files only).
  `Streaming_History_Video_*.json` is video and is not imported.
- Account data (`StreamingHistory<n>.json`, `StreamingHistory_music_<n>.json`,
  `StreamingHistory_podcast_<n>.json`): `endTime` "YYYY-MM-DD HH:MM" (UTC, minute precision),
  `artistName`/`trackName` or `podcastName`/`episodeName`, `msPlayed`; no ids.
- ListenBrainz listens (JSON Lines: its export's `listens/<year>/<month>.jsonl`, or PlayVault's
  `listenbrainz` export): `listened_at` (Unix seconds, the start), `track_metadata` with
  `artist_name`, `track_name`, `release_name` and `additional_info` (Spotify URLs, `duration_ms`,
  `ms_played`, PlayVault's `playvault_played_at` and `playvault_item_type`). See parse_listenbrainz.

A row that cannot be read is counted under its reason and never fails the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from playvault.clock import to_ms
from playvault.identity import name_key

EXTENDED = "extended"
ACCOUNT_MUSIC = "account_music"
ACCOUNT_PODCAST = "account_podcast"
VIDEO = "video"
LISTENBRAINZ = "listenbrainz"

TRACK = "track"
EPISODE = "episode"

_NAME_PATTERNS = (
    (re.compile(r"(^|/)Streaming_History_Video_[^/]*\.json$", re.I), VIDEO),
    (re.compile(r"(^|/)Streaming_History_Audio_[^/]*\.json$", re.I), EXTENDED),
    (re.compile(r"(^|/)endsong(_\d+)?\.json$", re.I), EXTENDED),
    (re.compile(r"(^|/)StreamingHistory_podcast_?\d*\.json$", re.I), ACCOUNT_PODCAST),
    (re.compile(r"(^|/)StreamingHistory(_music_)?\d*\.json$", re.I), ACCOUNT_MUSIC),
    # Every JSON Lines file but the two of ListenBrainz's export that hold no listens.
    (re.compile(r"(^|/)(?!feedback\.jsonl$|pinned_recording\.jsonl$)[^/]+\.jsonl$", re.I), LISTENBRAINZ),
)
_TRACK_URI = re.compile(r"^spotify:track:([0-9A-Za-z]{22})$")
_EPISODE_URI = re.compile(r"^spotify:episode:([0-9A-Za-z]{22})$")
# Spotify launched in 2008; a stream before that, or tomorrow, is not a stream.
EARLIEST = datetime(2008, 1, 1, tzinfo=UTC)
MAX_MS_PLAYED = 24 * 3600 * 1000


class Skip(StrEnum):
    """Why a row was not imported (the counts on the job are keyed by these)."""

    NOT_AN_OBJECT = "not_an_object"
    MISSING_TIME = "missing_time"
    BAD_TIME = "bad_time"
    IMPLAUSIBLE_TIME = "implausible_time"
    BAD_MS_PLAYED = "bad_ms_played"
    BAD_URI = "bad_uri"
    MISSING_NAME = "missing_name"
    NO_ITEM = "no_item"  # neither a track nor an episode (e.g. a stream with no metadata)
    AUDIOBOOK = "audiobook"
    OTHER_ACCOUNT = "other_account"  # `username` names someone else
    INCOGNITO = "incognito"  # listening rule
    TOO_SHORT = "too_short"  # listening rule: ms_played under the minimum


@dataclass(frozen=True)
class ListeningRule:
    """A stream counts as a play when it lasted `min_ms_played` or more and was not private."""

    min_ms_played: int = 30_000
    skip_incognito: bool = True


@dataclass(frozen=True)
class ImportRow:
    """One stream that passed validation and the listening rule."""

    index: int  # position in its file
    ended_ms: int  # stream end (Unix ms); the play's played_at
    precision_ms: int  # 1000 (extended: whole seconds) or 60000 (account data: minutes)
    item_type: str  # "track" | "episode"
    ms_played: int | None  # None: the file does not say (a polled play in PlayVault's own exports)
    track_id: str | None = None
    episode_id: str | None = None
    track_name: str | None = None
    artist_name: str | None = None
    album_name: str | None = None
    episode_name: str | None = None
    show_name: str | None = None
    platform: str | None = None  # the extended export's device platform ("ios", "linux", ...)

    @property
    def resolved(self) -> bool:
        return bool(self.track_id or self.episode_id)

    @property
    def name_key(self) -> str | None:
        if self.item_type == EPISODE:
            return name_key(self.episode_name, self.show_name)
        return name_key(self.track_name, self.artist_name)


def classify(name: str) -> str | None:
    """The export format a file name belongs to, or None for other files (Userdata.json, ...)."""
    for pattern, kind in _NAME_PATTERNS:
        if pattern.search(name):
            return kind
    return None


def sniff(first: Any) -> str | None:
    """The format of a file by its first row (a single upload under another name)."""
    if not isinstance(first, dict):
        return None
    if "ts" in first and "ms_played" in first:
        return EXTENDED
    if "endTime" in first and "msPlayed" in first:
        return ACCOUNT_PODCAST if "episodeName" in first or "podcastName" in first else ACCOUNT_MUSIC
    if "listened_at" in first and "track_metadata" in first:
        return LISTENBRAINZ
    return None


def shape_problem(kind: str, first: Any) -> str | None:
    """Why the first row says this file is not of `kind` (JSON of another shape), or None."""
    if not isinstance(first, dict):
        return f"the first item is {type(first).__name__}, not an object"
    required = {EXTENDED: ("ts", "ms_played"), ACCOUNT_MUSIC: ("endTime", "msPlayed"),
                ACCOUNT_PODCAST: ("endTime", "msPlayed"), LISTENBRAINZ: ("listened_at", "track_metadata")}[kind]
    missing = [k for k in required if k not in first]
    if missing:
        found = ", ".join(sorted(str(k) for k in first)[:6]) or "none"
        what = "ListenBrainz listens" if kind == LISTENBRAINZ else "a Spotify streaming history"
        return f"not {what}: the first item lacks {', '.join(missing)} (its keys: {found})"
    return None


class RowError(ValueError):
    def __init__(self, reason: Skip):
        super().__init__(reason.value)
        self.reason = reason


def _text(row: dict[str, Any], key: str) -> str | None:
    value = row.get(key)
    return value.strip() or None if isinstance(value, str) else None


def _ms_played(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:  # NaN
        raise RowError(Skip.BAD_MS_PLAYED)
    if value < 0 or value > MAX_MS_PLAYED:
        raise RowError(Skip.BAD_MS_PLAYED)
    return int(value)


def _plausible(moment: datetime, now: datetime) -> int:
    if moment < EARLIEST or moment > now + timedelta(days=1):
        raise RowError(Skip.IMPLAUSIBLE_TIME)
    return to_ms(moment)


def parse_extended(row: Any, index: int, *, user_id: str, now: datetime, rule: ListeningRule) -> ImportRow:
    if not isinstance(row, dict):
        raise RowError(Skip.NOT_AN_OBJECT)
    ts = row.get("ts")
    if not isinstance(ts, str) or not ts:
        raise RowError(Skip.MISSING_TIME)
    try:
        moment = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        raise RowError(Skip.BAD_TIME) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    ended_ms = _plausible(moment.astimezone(UTC), now)
    # Spotify's files always say; null is PlayVault's own export of a polled play (not known).
    ms_played = None if row.get("ms_played", 0) is None else _ms_played(row.get("ms_played"))
    username = row.get("username")
    if isinstance(username, str) and username and username != user_id:
        raise RowError(Skip.OTHER_ACCOUNT)
    track_uri, episode_uri = row.get("spotify_track_uri"), row.get("spotify_episode_uri")
    track_id = episode_id = None
    if track_uri:
        match = _TRACK_URI.match(track_uri) if isinstance(track_uri, str) else None
        if match is None and not (isinstance(track_uri, str) and track_uri.startswith("spotify:local:")):
            raise RowError(Skip.BAD_URI)
        track_id = match.group(1) if match else None
    elif episode_uri:
        match = _EPISODE_URI.match(episode_uri) if isinstance(episode_uri, str) else None
        if match is None:
            raise RowError(Skip.BAD_URI)
        episode_id = match.group(1)
    elif row.get("audiobook_uri") or row.get("audiobook_chapter_uri"):
        raise RowError(Skip.AUDIOBOOK)
    if rule.skip_incognito and row.get("incognito_mode") is True:
        raise RowError(Skip.INCOGNITO)
    if ms_played is not None and ms_played < rule.min_ms_played:
        raise RowError(Skip.TOO_SHORT)
    if episode_id or (not track_uri and _text(row, "episode_name")):
        return ImportRow(index, ended_ms, 1000, EPISODE, ms_played, episode_id=episode_id,
                         episode_name=_text(row, "episode_name"), show_name=_text(row, "episode_show_name"),
                         platform=_text(row, "platform"))
    track_name = _text(row, "master_metadata_track_name")
    if not track_id and not track_name:
        raise RowError(Skip.NO_ITEM)
    return ImportRow(index, ended_ms, 1000, TRACK, ms_played, track_id=track_id, track_name=track_name,
                     artist_name=_text(row, "master_metadata_album_artist_name"),
                     album_name=_text(row, "master_metadata_album_album_name"), platform=_text(row, "platform"))


_END_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d$")


def parse_account(row: Any, index: int, *, kind: str, now: datetime, rule: ListeningRule) -> ImportRow:
    if not isinstance(row, dict):
        raise RowError(Skip.NOT_AN_OBJECT)
    end_time = row.get("endTime")
    if not isinstance(end_time, str) or not end_time:
        raise RowError(Skip.MISSING_TIME)
    if not _END_TIME.match(end_time):
        raise RowError(Skip.BAD_TIME)
    try:
        moment = datetime.strptime(end_time, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
    except ValueError:
        raise RowError(Skip.BAD_TIME) from None
    ended_ms = _plausible(moment, now)
    ms_played = _ms_played(row.get("msPlayed"))
    if kind == ACCOUNT_PODCAST or "episodeName" in row:
        title, by = _text(row, "episodeName"), _text(row, "podcastName")
    else:
        title, by = _text(row, "trackName"), _text(row, "artistName")
    if not title:
        raise RowError(Skip.MISSING_NAME)
    if ms_played < rule.min_ms_played:
        raise RowError(Skip.TOO_SHORT)
    if kind == ACCOUNT_PODCAST or "episodeName" in row:
        return ImportRow(index, ended_ms, 60_000, EPISODE, ms_played, episode_name=title, show_name=by)
    return ImportRow(index, ended_ms, 60_000, TRACK, ms_played, track_name=title, artist_name=by)


_OPEN_SPOTIFY = re.compile(r"^(?:https?://open\.spotify\.com/(?:intl-[a-z-]+/)?(track|episode)/([0-9A-Za-z]{22})"
                           r"(?:[/?#].*)?|spotify:(track|episode):([0-9A-Za-z]{22}))$")
# ListenBrainz's own readers of Spotify put Spotify's timestamp in listened_at as it comes: its
# Spotify reader the recently-played played_at (submission_client "listenbrainz"; before 2022,
# listening_from "spotify"), its importer of Spotify's export (the archive importer, the only one
# writing ms_played) the export's ts. Both are the stream's end, as PlayVault's played_at.
_LB_ARCHIVE_IMPORTER = "ListenBrainz Archive Importer"


def _ends_at_listened_at(info: dict[str, Any], ms_played: int | None) -> bool:
    return (info.get("submission_client") == "listenbrainz" or info.get("listening_from") == "spotify"
            or (info.get("submission_client") == _LB_ARCHIVE_IMPORTER and info.get("music_service") == "spotify.com"
                and ms_played is not None))


def _spotify_item(value: Any) -> tuple[str, str]:
    """("track" | "episode", id) of an open.spotify.com URL or a spotify: URI; BAD_URI otherwise."""
    match = _OPEN_SPOTIFY.match(value) if isinstance(value, str) else None
    if match is None:
        raise RowError(Skip.BAD_URI)
    return (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))


def _whole_ms(value: Any) -> int | None:
    """A positive whole number of milliseconds, or None (absent or not a number: not used)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or value <= 0:
        return None
    return int(value) if value <= MAX_MS_PLAYED else None


def parse_listenbrainz(row: Any, index: int, *, now: datetime, rule: ListeningRule) -> ImportRow:
    """One ListenBrainz listen -> an import row.

    The play's end (PlayVault's played_at): `additional_info.playvault_played_at` when PlayVault
    wrote the listen (exact to the millisecond, within a day of listened_at); else `listened_at`
    itself for a listen of Spotify that ListenBrainz's own readers wrote (they put Spotify's end time
    there: see _ends_at_listened_at); else listened_at (the start, as
    ListenBrainz's clients submit it) plus ms_played, or the duration, when the listen says one.
    Episodes: `playvault_item_type: episode` or an episode URL, the track name being the episode's
    and the artist name the show's.
    """
    if not isinstance(row, dict):
        raise RowError(Skip.NOT_AN_OBJECT)
    listened_at = row.get("listened_at")
    if listened_at is None:
        raise RowError(Skip.MISSING_TIME)
    if isinstance(listened_at, bool) or not isinstance(listened_at, int | float) or listened_at != listened_at:
        raise RowError(Skip.BAD_TIME)
    metadata = row.get("track_metadata")
    if not isinstance(metadata, dict):
        raise RowError(Skip.NO_ITEM)
    info = metadata.get("additional_info")
    info = info if isinstance(info, dict) else {}
    ms_played = None if info.get("ms_played") is None else _ms_played(info.get("ms_played"))
    duration_ms = _whole_ms(info.get("duration_ms"))
    if duration_ms is None and _whole_ms(info.get("duration")):
        duration_ms = _whole_ms(info["duration"] * 1000)
    try:
        start = datetime.fromtimestamp(listened_at, UTC)
    except (OverflowError, OSError, ValueError):
        raise RowError(Skip.IMPLAUSIBLE_TIME) from None
    exact = info.get("playvault_played_at")
    if exact is not None:
        try:
            end = datetime.fromisoformat(exact.replace("Z", "+00:00")) if isinstance(exact, str) else None
        except ValueError:
            end = None
        if end is None or end.tzinfo is None or not timedelta(seconds=-1) <= end - start <= timedelta(days=1):
            raise RowError(Skip.BAD_TIME)
    elif _ends_at_listened_at(info, ms_played):
        end = start
    else:
        end = start + timedelta(milliseconds=ms_played if ms_played is not None else duration_ms or 0)
    ended_ms = _plausible(end.astimezone(UTC), now)
    origin = info.get("origin_url")
    url = info.get("spotify_id") or (origin if isinstance(origin, str) and "spotify" in origin else None)
    item = _spotify_item(url) if url else None
    title = _text(metadata, "track_name")
    if not title:
        raise RowError(Skip.MISSING_NAME)
    if ms_played is not None and ms_played < rule.min_ms_played:
        raise RowError(Skip.TOO_SHORT)
    if info.get("playvault_item_type") == EPISODE or (item and item[0] == EPISODE):
        return ImportRow(index, ended_ms, 1000, EPISODE, ms_played,
                         episode_id=item[1] if item and item[0] == EPISODE else None,
                         episode_name=title, show_name=_text(metadata, "artist_name"))
    # The first artist, as polled plays carry it (artist_name joins them all: "A, B").
    names = info.get("artist_names")
    first_artist = (names[0].strip() or None if isinstance(names, list) and names and isinstance(names[0], str)
                    else _text(metadata, "artist_name"))
    return ImportRow(index, ended_ms, 1000, TRACK, ms_played, track_id=item[1] if item else None,
                     track_name=title, artist_name=first_artist, album_name=_text(metadata, "release_name"))


def parse_row(kind: str, row: Any, index: int, *, user_id: str, now: datetime, rule: ListeningRule) -> ImportRow:
    if kind == EXTENDED:
        return parse_extended(row, index, user_id=user_id, now=now, rule=rule)
    if kind == LISTENBRAINZ:
        return parse_listenbrainz(row, index, now=now, rule=rule)
    return parse_account(row, index, kind=kind, now=now, rule=rule)
