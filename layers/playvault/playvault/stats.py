"""What the account pages show of a user's archive: figures of a period, a year in review, a track's or
an artist's page. Plain values, computed by playvault.rollups from the user's rollups (never from the
raw plays, whose number grows without bound) and rendered by playvault.web; neither side knows how
the other works.

Every date here is a day in the user's time zone (`Period.tz`, an IANA name); every duration is in
milliseconds. A key names a track, artist, album or show: its Spotify id, or "n:" + the name key for
items known only by name (local files, export rows without ids); `link` is the page of that key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

WEEK = "week"
MONTH = "month"
YEAR = "year"
ALL = "all"
CUSTOM = "custom"
PERIOD_KINDS = (WEEK, MONTH, YEAR, ALL, CUSTOM)

DAY = "day"  # series units, chosen by the period's length
TOP_ON_PAGE = 10
TOP_MORE = 50


@dataclass(frozen=True)
class Period:
    """[start, end) in the user's time zone. `spec` is what the page's URL carries to name it again
    ("week", "month", "year", "2024", "all", "2024-03-01..2024-03-31")."""

    kind: str
    start: date
    end: date  # exclusive
    tz: str
    label: str  # "This week", "2024", "All time", "1 Mar 2024 to 31 Mar 2024"
    spec: str

    @property
    def days(self) -> int:
        return (self.end - self.start).days


@dataclass(frozen=True)
class Ranked:
    """One row of a top list."""

    key: str
    name: str
    artists: tuple[str, ...]  # tracks and albums: their artists' names; artists and shows: ()
    plays: int
    ms: int
    link: str | None  # the track's or artist's page; None where there is no page (albums, shows)


@dataclass(frozen=True)
class Bucket:
    """One bar of a series: a day, an ISO week (starting Monday) or a month, local."""

    label: str  # "2024-03-05", "2024-W10", "2024-03"
    start: date
    plays: int
    ms: int


@dataclass(frozen=True)
class Totals:
    plays: int
    ms: int
    ms_estimated: bool  # some plays' time is the track's duration (no ms_played known): an estimate
    tracks: int  # distinct
    artists: int
    albums: int


@dataclass(frozen=True)
class Figures:
    period: Period
    totals: Totals
    previous: Totals | None  # the period of the same length just before (None for all time)
    top_tracks: list[Ranked]  # up to TOP_MORE, most played first (ties: most time, then name)
    top_artists: list[Ranked]
    top_albums: list[Ranked]
    top_shows: list[Ranked]
    series_unit: str  # DAY | WEEK | MONTH
    series: list[Bucket]  # every bucket of the period, empty ones included, oldest first
    heatmap: list[list[int]]  # [weekday 0=Monday..6][local hour 0..23] -> plays
    first_play: date | None  # of the whole archive (local day)
    last_play: date | None
    archive_plays: int | None = None  # every play of the archive (the /me summary), None where not known


@dataclass(frozen=True)
class Streak:
    days: int
    start: date | None
    end: date | None  # inclusive


@dataclass(frozen=True)
class Coverage:
    """How much of a year the archive covers, in days: polled, imported (and not polled), neither."""

    polled_days: int
    imported_days: int
    neither_days: int


@dataclass(frozen=True)
class YearReview:
    year: int
    figures: Figures  # the year as a period: totals, top lists (first 5 shown), series by month
    new_artists: list[Ranked]  # artists whose first play in the archive is in this year, most played first
    busiest_day: tuple[date, int] | None  # (day, plays)
    longest_streak: Streak  # consecutive days with at least one play
    coverage: Coverage


@dataclass(frozen=True)
class ItemPage:
    """A track's or an artist's page."""

    kind: str  # "track" | "artist"
    key: str
    name: str
    artists: tuple[Ranked, ...]  # a track's artists (with links); () for an artist
    plays: int
    ms: int
    first_play: date | None
    last_play: date | None
    per_month: list[Bucket]  # from the first play's month to the last's, empty months included
    top_tracks: list[Ranked] = field(default_factory=list)  # an artist's most played tracks
