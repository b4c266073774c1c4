"""Rollups: the figures of a user's archive, kept as read models so a page costs reads proportional to
the buckets it shows, never to the number of plays (README, Rollups).

Buckets are local to the user's time zone: a day item holds that day's plays summed (plays, listening
time, hours, per track/artist/album/show plays and time, and the names to show them); a month item
sums its days, a year item its months, the `all` item the years (its top lists cut to TOP_MORE, its
distinct counts kept). Every level keeps the series of its days, so a chart never reads day items.

Exactly once by recomputation, not by deltas: a writer marks the UTC dates it is about to change
(store/rollups.mark_dirty) before it writes plays; `settle` recomputes the local days of the dirty
dates straight from the plays (strongly consistent), then their months, years and the `all` item
from the level below, each put conditional on the version read before its inputs were read, and only
then clears each date, if nobody marked it again meanwhile. A replayed write recomputes to the same
item; a crash between the plays and the recompute leaves the date dirty. Who settles: a page view
(everything dirty, before it reads), the importer (the dates of each chunk) and the worker (once a
UTC day per user, the dirty dates before the user's local today).

A time zone change starts a new generation, filled by a rebuild job from the plays (`rebuild`), while
the page says so; the old generation is deleted after. The same rebuild is the migration of a
deployment that had no rollups (`python -m playvault_local rebuild-rollups`, or a job message).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from playvault import clock, coverage, history, stats
from playvault.normalize import canonical_played_at_ms
from playvault.store import plays
from playvault.store import rollups as store
from playvault.store.plays import PlayModel

DEFAULT_TZ = "UTC"
MAX_YEARS = 100  # a custom period spans at most this
ALL_START = date(1970, 1, 1)  # "all" before the archive's first play is known
RECOMPUTE_ATTEMPTS = 4
WINDOW_MARGIN = timedelta(hours=3)  # around a local day's midnights (DST moves them by an hour at most)
SWEEP_LIMIT = 7  # dirty dates the worker settles at once
# Dirty dates a page view settles before reading (oldest first). More are left only by an import
# still running (its chunks mark their dates; it ends with a rebuild, which clears them).
VIEW_SETTLE_LIMIT = 62
KINDS = ("tracks", "artists", "albums", "shows")
TRACK_LINK = "/me/track?key={}"  # routes of functions/account: a key may hold "/", so it is a query value
ARTIST_LINK = "/me/artist?key={}"
SERIES_DAY_MAX = 62
SERIES_WEEK_MAX = 371
PLAYS, MS, FIRST, LAST, MASK = range(5)  # a key's value: [plays, ms, first day, last day (ordinals), months]


class BadPeriod(ValueError):
    """A period the page cannot show; the message names the bad value."""


class BadTimeZone(ValueError):
    """Not an IANA time zone name; the message names it."""


class Recomputing(RuntimeError):
    """The rollups are being rebuilt (a time zone change): no figures until it is done."""


# ---------------------------------------------------------------------------------------------- zones
def zone(tz: str | None) -> ZoneInfo:
    """The IANA zone named `tz` (validated); BadTimeZone naming it otherwise."""
    name = (tz or "").strip()
    if not name or len(name) > 64 or name not in _zone_names():
        raise BadTimeZone(f"unknown time zone {tz!r}: give an IANA name such as Europe/Paris")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise BadTimeZone(f"unknown time zone {tz!r}: give an IANA name such as Europe/Paris") from exc


_ZONES: set[str] = set()


def _zone_names() -> set[str]:
    if not _ZONES:
        _ZONES.update(available_timezones())
        _ZONES.add("UTC")
    return _ZONES


def local_day(ms: int, where: ZoneInfo) -> date:
    return datetime.fromtimestamp(ms // 1000, where).date()


def _midnight_ms(day: date, where: ZoneInfo, fold: int) -> int:
    return clock.to_ms(datetime(day.year, day.month, day.day, tzinfo=where, fold=fold).astimezone(UTC))


def day_window(day: date, where: ZoneInfo) -> tuple[int, int]:
    """A UTC range (ms, inclusive) holding every instant whose local date is `day`, with margin: the
    plays read are then kept by their own local date (a midnight that DST repeats or skips)."""
    margin = int(WINDOW_MARGIN.total_seconds() * 1000)
    return (_midnight_ms(day, where, 0) - margin, _midnight_ms(day + timedelta(days=1), where, 1) + margin)


def local_days_of_utc_date(utc_date: date, where: ZoneInfo) -> list[date]:
    """The local days an UTC date overlaps (two at most, three around odd transitions)."""
    start = clock.to_ms(datetime(utc_date.year, utc_date.month, utc_date.day, tzinfo=UTC))
    samples = [local_day(start + step * 60_000, where) for step in range(0, 24 * 60, 15)]
    samples.append(local_day(start + 86_400_000 - 1, where))
    low, high = min(samples), max(samples)
    return [low + timedelta(days=i) for i in range((high - low).days + 1)]


def utc_dates(ms_values: Iterable[int]) -> set[str]:
    """The UTC dates (YYYY-MM-DD) of these instants: what a writer marks dirty."""
    return {datetime.fromtimestamp(ms // 1000, UTC).date().isoformat() for ms in ms_values}


# -------------------------------------------------------------------------------------------- periods
def _parse_day(value: str, what: str) -> date:
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise BadPeriod(f"{what} {value!r} is not a date (YYYY-MM-DD)") from None


def _label_day(day: date) -> str:
    return f"{day.day} {day:%b %Y}"


def resolve_period(spec: str | None, from_: str | None, to: str | None, tz: str, today: date) -> stats.Period:
    """The period a page asks for, in the user's time zone: "week" (this ISO week, from Monday),
    "month" (the default), "year", "YYYY", "all", or a custom from-to (inclusive dates in the URL,
    also as spec "YYYY-MM-DD..YYYY-MM-DD"). BadPeriod naming the bad value otherwise."""
    try:
        zone(tz)
    except BadTimeZone as exc:
        raise BadPeriod(str(exc)) from None
    spec = (spec or "").strip() or None
    from_ = (from_ or "").strip() or None
    to = (to or "").strip() or None
    if spec is not None and ".." in spec and from_ is None and to is None:
        from_, _, to = spec.partition("..")
        spec = stats.CUSTOM
    if from_ is not None or to is not None:
        if spec not in (None, stats.CUSTOM):
            raise BadPeriod(f"period {spec!r} cannot have from/to dates: choose one or the other")
        if from_ is None or to is None:
            raise BadPeriod("a custom period needs both from and to dates")
        start, last = _parse_day(from_, "from"), _parse_day(to, "to")
        if last < start:
            raise BadPeriod(f"from {start.isoformat()} is after to {last.isoformat()}")
        end = last + timedelta(days=1)
        if end > date(start.year + MAX_YEARS, start.month, 1):
            raise BadPeriod(f"from {start.isoformat()} to {last.isoformat()} spans more than {MAX_YEARS} years")
        return stats.Period(stats.CUSTOM, start, end, tz, f"{_label_day(start)} to {_label_day(last)}",
                            f"{start.isoformat()}..{last.isoformat()}")
    spec = spec or stats.MONTH
    if spec == stats.WEEK:
        start = today - timedelta(days=today.weekday())
        return stats.Period(stats.WEEK, start, start + timedelta(days=7), tz, "This week", spec)
    if spec == stats.MONTH:
        start = today.replace(day=1)
        return stats.Period(stats.MONTH, start, _next_month(start), tz, "This month", spec)
    if spec == stats.YEAR:
        start = date(today.year, 1, 1)
        return stats.Period(stats.YEAR, start, date(today.year + 1, 1, 1), tz, "This year", spec)
    if spec == stats.ALL:
        return stats.Period(stats.ALL, ALL_START, today + timedelta(days=1), tz, "All time", spec)
    if len(spec) == 4 and spec.isascii() and spec.isdigit():
        year = int(spec)
        if not ALL_START.year <= year <= today.year:
            raise BadPeriod(f"year {spec!r} is outside {ALL_START.year} to {today.year}")
        return stats.Period(stats.YEAR, date(year, 1, 1), date(year + 1, 1, 1), tz, spec, spec)
    raise BadPeriod(f"unknown period {spec[:40]!r}: use week, month, year, a year such as 2024, all, "
                    "or from and to dates")


def _next_month(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def previous_period(period: stats.Period) -> stats.Period | None:
    """The period of the same kind just before (the month, year or week before; a custom period's
    same number of days); None for all time."""
    if period.kind == stats.ALL:
        return None
    if period.kind == stats.MONTH:
        start = (period.start - timedelta(days=1)).replace(day=1)
        return stats.Period(stats.MONTH, start, period.start, period.tz, f"{start:%B %Y}", start.strftime("%Y-%m"))
    if period.kind == stats.YEAR and period.start.month == 1 and period.start.day == 1:
        start = date(period.start.year - 1, 1, 1)
        return stats.Period(stats.YEAR, start, period.start, period.tz, str(start.year), str(start.year))
    start = period.start - timedelta(days=period.days)
    last = period.start - timedelta(days=1)
    return stats.Period(stats.CUSTOM, start, period.start, period.tz, f"{_label_day(start)} to {_label_day(last)}",
                        f"{start.isoformat()}..{last.isoformat()}")


def series_unit(days: int) -> str:
    if days <= SERIES_DAY_MAX:
        return stats.DAY
    if days <= SERIES_WEEK_MAX:
        return stats.WEEK
    return stats.MONTH


# ----------------------------------------------------------------------------------------------- keys
def _fold(value: str | None) -> str:
    return unicodedata.normalize("NFKC", value or "").casefold().strip()


def name_key(*names: str | None) -> str:
    """The key of an item known only by name: "n:" + its folded names (never a Spotify id)."""
    return "n:" + "\x1f".join(_fold(n) for n in names)


# ------------------------------------------------------------------------------------------ aggregates
# An aggregate is plain JSON (it is what the items store): totals, `heat` [weekday][hour], `series`
# {YYYY-MM-DD: [plays, ms, polled plays]}, per kind {key: [plays, ms, first, last, month mask]} and
# `meta` {key: [name, [artist names], [artist keys]]}; the all item adds `distinct` {kind: n}.
def empty() -> dict[str, Any]:
    return {"plays": 0, "ms": 0, "est": 0, "heat": [[0] * 24 for _ in range(7)], "series": {},
            **{kind: {} for kind in KINDS}, "meta": {}}


def _bump(values: dict[str, list[int]], key: str, ms: int, ordinal: int, mask: int) -> None:
    value = values.get(key)
    if value is None:
        values[key] = [1, ms, ordinal, ordinal, mask]
    else:
        value[PLAYS] += 1
        value[MS] += ms
        value[FIRST] = min(value[FIRST], ordinal)
        value[LAST] = max(value[LAST], ordinal)
        value[MASK] |= mask


def day_aggregate(rows: list[tuple[PlayModel, history.PlayRow]], where: ZoneInfo) -> dict[str, Any]:
    """One local day's aggregate from its plays (each with the names best_names chose)."""
    agg = empty()
    for play, row in rows:
        moment = datetime.fromtimestamp(int(play.played_at_ms) // 1000, where)
        day = moment.date()
        estimated = play.ms_played is None
        ms = int(play.ms_played) if not estimated else int(row.duration_ms or 0)
        agg["plays"] += 1
        agg["ms"] += ms
        agg["est"] += estimated
        agg["heat"][moment.weekday()][moment.hour] += 1
        point = agg["series"].setdefault(day.isoformat(), [0, 0, 0])
        point[0] += 1
        point[1] += ms
        point[2] += play.source != plays.SOURCE_EXPORT
        ordinal, mask = day.toordinal(), 1 << (day.month - 1)
        meta = agg["meta"]
        if row.item_type == "episode":
            show = name_key(row.show_name or row.episode_name)
            _bump(agg["shows"], show, ms, ordinal, mask)
            meta.setdefault(show, [row.show_name or row.episode_name or "", [], []])
            continue
        if not (row.track_id or row.track_name):
            continue
        artist_names = [n for n in row.artist_names]
        artist_keys = [a or name_key(n) for a, n in zip(row.artist_ids, row.artist_names, strict=True)]
        first_artist = artist_names[0] if artist_names else None
        track = row.track_id or name_key(row.track_name, first_artist)
        _bump(agg["tracks"], track, ms, ordinal, mask)
        meta.setdefault(track, [row.track_name or "", artist_names, artist_keys])
        for key, name in dict.fromkeys(zip(artist_keys, artist_names, strict=True)):
            if name or not key.startswith("n:"):
                _bump(agg["artists"], key, ms, ordinal, mask)
                meta.setdefault(key, [name, [], []])
        if row.album_id or row.album_name:
            album = row.album_id or name_key(row.album_name, first_artist)
            _bump(agg["albums"], album, ms, ordinal, mask)
            meta.setdefault(album, [row.album_name or "", artist_names, artist_keys])
    return fold_names(agg)


def merge(aggregates: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The sum of aggregates of disjoint buckets (days, months, years)."""
    out = empty()
    for agg in aggregates:
        out["plays"] += agg["plays"]
        out["ms"] += agg["ms"]
        out["est"] += agg["est"]
        for weekday in range(7):
            for hour in range(24):
                out["heat"][weekday][hour] += agg["heat"][weekday][hour]
        for label, point in agg["series"].items():
            mine = out["series"].setdefault(label, [0, 0, 0])
            for i in range(3):
                mine[i] += point[i]
        for kind in KINDS:
            values = out[kind]
            for key, value in agg[kind].items():
                mine = values.get(key)
                if mine is None:
                    values[key] = list(value)
                else:
                    _add(mine, value)
        for key, meta in agg["meta"].items():
            out["meta"].setdefault(key, meta)
        if "distinct" in agg:  # an all item is never merged with another bucket
            out["distinct"] = dict(agg["distinct"])
    return fold_names(out)


def _add(mine: list[int], value: list[int]) -> None:
    mine[PLAYS] += value[PLAYS]
    mine[MS] += value[MS]
    mine[FIRST] = min(mine[FIRST], value[FIRST])
    mine[LAST] = max(mine[LAST], value[LAST])
    mine[MASK] |= value[MASK]


def fold_names(agg: dict[str, Any]) -> dict[str, Any]:
    """Plays kept by name count with the catalog item of that name (README, My archive): an "n:" key
    whose names are those of an id key of the aggregate is added to it. Each bucket names its own
    keys, so the fold happens wherever buckets meet."""
    meta = agg["meta"]
    for kind in ("tracks", "artists", "albums"):
        values = agg[kind]
        by_name: dict[str, str] = {}
        for key in values:
            if key.startswith("n:") or key not in meta:
                continue
            name, artist_names = meta[key][0], meta[key][1]
            names = (name,) if kind == "artists" else (name, artist_names[0] if artist_names else None)
            by_name.setdefault(name_key(*names), key)
        for key in [k for k in values if k.startswith("n:") and k in by_name]:
            target = by_name[key]
            _add(values[target], values.pop(key))
            meta.pop(key, None)
    return agg


def _ranked_keys(values: dict[str, list[int]], meta: dict[str, list], limit: int) -> list[str]:
    return sorted(values, key=lambda k: (-values[k][PLAYS], -values[k][MS], (meta.get(k) or [""])[0], k))[:limit]


def cut(agg: dict[str, Any], limit: int = stats.TOP_MORE) -> dict[str, Any]:
    """The all item: every total and series, the distinct counts, and only the top `limit` per kind."""
    out = {k: v for k, v in agg.items() if k not in (*KINDS, "meta")}
    out["distinct"] = {kind: len(agg[kind]) for kind in KINDS}
    out["meta"] = {}
    for kind in KINDS:
        keys = _ranked_keys(agg[kind], agg["meta"], limit)
        out[kind] = {k: agg[kind][k] for k in keys}
        out["meta"].update({k: agg["meta"][k] for k in keys if k in agg["meta"]})
    return out


# ------------------------------------------------------------------------------------- recomputation
@dataclass(frozen=True)
class Where:
    """Which generation a recompute writes, in which zone."""

    user_id: str
    gen: int
    tz: str

    @property
    def zone(self) -> ZoneInfo:
        return zone(self.tz)

    def day(self, day: date) -> str:
        return store.bucket_key(self.gen, "day", day.isoformat())

    def month(self, month: str) -> str:
        return store.bucket_key(self.gen, "month", month)

    def year(self, year: int | str) -> str:
        return store.bucket_key(self.gen, "year", str(year))

    @property
    def all(self) -> str:
        return store.bucket_key(self.gen, "all")

    @property
    def firsts(self) -> str:
        return store.bucket_key(self.gen, "firsts")


class Contended(RuntimeError):
    """A bucket kept being recomputed by others: left dirty, settled by a later recompute."""


def _versioned(where: Where, bucket: str, compute: Callable[[], dict[str, Any] | None]) -> None:
    """Read the version, compute from the inputs (read after it), put conditional on that version."""
    for _attempt in range(RECOMPUTE_ATTEMPTS):
        item = store.get(where.user_id, bucket, consistent=True)
        version = int(item.version) if item is not None and item.version is not None else None
        if store.put_versioned(where.user_id, bucket, compute(), version):
            return
    raise Contended(f"rollup {bucket} kept changing")


def _day_rows(user_id: str, day: date, where_zone: ZoneInfo, catalog: history.Catalog
              ) -> list[tuple[PlayModel, history.PlayRow]]:
    low, high = day_window(day, where_zone)
    found = [p for p in plays.PlayModel.query(
        user_id, PlayModel.played_at.between(canonical_played_at_ms(low),
                                             canonical_played_at_ms(high)), consistent_read=True)
        if local_day(int(p.played_at_ms), where_zone) == day]
    return list(zip(found, catalog.rows(found), strict=True)) if found else []


def recompute_day(where: Where, day: date, catalog: history.Catalog | None = None) -> None:
    catalog = catalog or history.Catalog()
    where_zone = where.zone

    def compute() -> dict[str, Any] | None:
        rows = _day_rows(where.user_id, day, where_zone, catalog)
        return day_aggregate(rows, where_zone) if rows else None

    _versioned(where, where.day(day), compute)


def _children(where: Where, prefix: str) -> list[dict[str, Any]]:
    return [store.decode(item.data) for item in store.under(where.user_id, prefix, consistent=True) if item.data]


def recompute_month(where: Where, month: str) -> None:
    """YYYY-MM from its day items."""
    prefix = store.bucket_key(where.gen, "day", month + "-")
    _versioned(where, where.month(month), lambda: _merged_or_none(_children(where, prefix)))


def recompute_year(where: Where, year: int) -> None:
    prefix = store.bucket_key(where.gen, "month", f"{year:04d}-")
    _versioned(where, where.year(year), lambda: _merged_or_none(_children(where, prefix)))


def recompute_all(where: Where) -> None:
    """The all item (top lists cut) and the firsts item (each artist's first and last day, plays and
    time) from the year items, read once for both, each put on the version read before."""
    prefix = store.bucket_key(where.gen, "year", "")
    for _attempt in range(RECOMPUTE_ATTEMPTS):
        found = store.get_many(where.user_id, [where.all, where.firsts], consistent=True)
        versions = {b: int(found[b].version) if b in found and found[b].version is not None else None
                    for b in (where.all, where.firsts)}
        merged = _merged_or_none(_children(where, prefix))
        everything = None if merged is None else cut(merged)
        firsts = None if merged is None else {"artists": {k: v[:4] for k, v in merged["artists"].items()}}
        if (store.put_versioned(where.user_id, where.all, everything, versions[where.all])
                and store.put_versioned(where.user_id, where.firsts, firsts, versions[where.firsts])):
            return
    raise Contended("the all item kept changing")


def _merged_or_none(children: list[dict[str, Any]]) -> dict[str, Any] | None:
    return merge(children) if children else None


def recompute(where: Where, days: Iterable[date], catalog: history.Catalog | None = None) -> None:
    """The days from the plays, then every level above them, bottom up."""
    days = sorted(set(days))
    if not days:
        return
    catalog = catalog or history.Catalog()
    for day in days:
        recompute_day(where, day, catalog)
    for month in sorted({d.strftime("%Y-%m") for d in days}):
        recompute_month(where, month)
    for year in sorted({d.year for d in days}):
        recompute_year(where, year)
    recompute_all(where)


def current(user_id: str) -> tuple[Where, store.RollupModel]:
    state = store.state(user_id)
    return Where(user_id, int(state.gen or 0), state.tz or DEFAULT_TZ), state


def settle(user_id: str, *, before_today_at: datetime | None = None, only: Iterable[str] | None = None,
           limit: int | None = None, known: tuple[Where, store.RollupModel] | None = None) -> int:
    """Recompute the user's dirty dates (those wholly before the user's local today at
    `before_today_at`, those in `only`, at most `limit`, oldest first) and clear them. Nothing while a
    rebuild runs. Returns how many dates were cleared. `known`: current(user_id), read already."""
    where, state = known or current(user_id)
    if state.status == store.REBUILDING:
        return 0
    marks = store.dirty(user_id)
    if only is not None:
        wanted = set(only)
        marks = {d: m for d, m in marks.items() if d in wanted}
    where_zone = where.zone
    before = before_today_at.astimezone(where_zone).date() if before_today_at is not None else None
    chosen: dict[str, tuple[int, list[date]]] = {}
    for utc_date in sorted(marks):
        days = local_days_of_utc_date(date.fromisoformat(utc_date), where_zone)
        if before is not None and max(days) >= before:
            continue
        chosen[utc_date] = (marks[utc_date], days)
        if limit is not None and len(chosen) >= limit:
            break
    if not chosen:
        return 0
    recompute(where, [d for _, days in chosen.values() for d in days])
    return sum(store.clear_dirty(user_id, utc_date, seen, where.gen) for utc_date, (seen, _) in chosen.items())


def mark(user_id: str, ms_values: Iterable[int]) -> list[str]:
    """A writer's intent, before it writes plays at these instants (a play may land a few ms later:
    the next free millisecond). Returns the dates freshly marked."""
    values = list(ms_values)
    return store.mark_dirty(user_id, utc_dates(values) | utc_dates(v + 1000 for v in values))


def sweep(user_id: str, fresh: list[str], now: datetime) -> int:
    """The worker's share, after a poll whose marks were fresh (at most about once a UTC day per
    user while nobody views): the dirty dates before the user's local today, SWEEP_LIMIT at most.
    A GetItem (the state) and a Query (the marks) when nothing is due."""
    if not fresh:
        return 0
    return settle(user_id, before_today_at=now, limit=SWEEP_LIMIT)


# ------------------------------------------------------------------------------------------- reading
def _decode(item: store.RollupModel | None) -> dict[str, Any] | None:
    return None if item is None else store.decode(item.data)


def _cover(start: date, end: date) -> list[tuple[str, str]]:
    """[start, end) as the fewest whole years, months and days: (level, label) pairs."""
    parts = []
    day = start
    while day < end:
        if day.month == 1 and day.day == 1 and date(day.year + 1, 1, 1) <= end:
            parts.append(("year", str(day.year)))
            day = date(day.year + 1, 1, 1)
        elif day.day == 1 and _next_month(day) <= end:
            parts.append(("month", day.strftime("%Y-%m")))
            day = _next_month(day)
        else:
            parts.append(("day", day.isoformat()))
            day += timedelta(days=1)
    return parts


def _bucket(where: Where, level: str, label: str) -> str:
    return store.bucket_key(where.gen, level, label)


class _View:
    """What one page view reads, after settling: items fetched once, by BatchGetItem."""

    def __init__(self, where: Where, consistent: bool):
        self.where = where
        self.consistent = consistent
        self._items: dict[str, dict[str, Any] | None] = {}

    def fetch(self, buckets: Iterable[str]) -> None:
        wanted = [b for b in dict.fromkeys(buckets) if b not in self._items]
        if not wanted:
            return
        found = store.get_many(self.where.user_id, wanted, consistent=self.consistent)
        for bucket in wanted:
            self._items[bucket] = _decode(found.get(bucket))

    def item(self, bucket: str) -> dict[str, Any] | None:
        self.fetch([bucket])
        return self._items[bucket]

    def buckets(self, start: date, end: date) -> list[str]:
        return [_bucket(self.where, level, label) for level, label in _cover(start, end)]

    def period(self, start: date, end: date) -> dict[str, Any]:
        buckets = self.buckets(start, end)
        # Years of a long period that hold no play are absent: asking for them costs nothing per item.
        self.fetch(buckets)
        return merge(agg for agg in (self._items[b] for b in buckets) if agg is not None)


def _open(user_id: str) -> tuple[Where, bool]:
    """Settle what is dirty (before reading), refuse while rebuilding. (where, settled anything)."""
    where, state = current(user_id)
    if state.status == store.REBUILDING:
        raise Recomputing(f"the rollups are being recomputed for {state.tz}")
    settled = settle(user_id, known=(where, state), limit=VIEW_SETTLE_LIMIT)
    return where, settled > 0


def _totals(agg: dict[str, Any]) -> stats.Totals:
    distinct = agg.get("distinct") or {kind: len(agg[kind]) for kind in KINDS}
    return stats.Totals(plays=agg["plays"], ms=agg["ms"], ms_estimated=agg["est"] > 0, tracks=distinct["tracks"],
                        artists=distinct["artists"], albums=distinct["albums"])


def _ranked(agg: dict[str, Any], kind: str, limit: int = stats.TOP_MORE) -> list[stats.Ranked]:
    out = []
    for key in _ranked_keys(agg[kind], agg["meta"], limit):
        meta = agg["meta"].get(key) or [key, [], []]
        value = agg[kind][key]
        link = (TRACK_LINK.format(quote(key, safe="")) if kind == "tracks"
                else ARTIST_LINK.format(quote(key, safe="")) if kind == "artists" else None)
        out.append(stats.Ranked(key=key, name=meta[0] or "", artists=tuple(meta[1]) if kind in ("tracks", "albums")
                                else (), plays=value[PLAYS], ms=value[MS], link=link))
    return out


def _week_start(day: date) -> date:
    return day - timedelta(days=day.weekday())


def _series(agg: dict[str, Any], start: date, end: date, unit: str) -> list[stats.Bucket]:
    buckets: dict[date, list[int]] = {}
    labels: dict[date, str] = {}
    day = start if unit == stats.DAY else _week_start(start) if unit == stats.WEEK else start.replace(day=1)
    while day < end:
        buckets[day] = [0, 0]
        if unit == stats.DAY:
            labels[day] = day.isoformat()
            day += timedelta(days=1)
        elif unit == stats.WEEK:
            iso = day.isocalendar()
            labels[day] = f"{iso.year}-W{iso.week:02d}"
            day += timedelta(days=7)
        else:
            labels[day] = day.strftime("%Y-%m")
            day = _next_month(day)
    for label, point in agg["series"].items():
        day = date.fromisoformat(label)
        if not start <= day < end:
            continue
        key = day if unit == stats.DAY else _week_start(day) if unit == stats.WEEK else day.replace(day=1)
        buckets[key][0] += point[0]
        buckets[key][1] += point[1]
    return [stats.Bucket(labels[d], d, v[0], v[1]) for d, v in sorted(buckets.items())]


def _figures(view: _View, period: stats.Period, unit: str | None = None) -> stats.Figures:
    if period.kind != stats.ALL:  # everything this view reads, in one BatchGetItem (100 keys a request)
        before = previous_period(period)
        view.fetch([view.where.all, *view.buckets(period.start, period.end),
                    *(view.buckets(before.start, before.end) if before is not None else [])])
    everything = view.item(view.where.all) or empty()
    first = min((date.fromisoformat(d) for d in everything["series"]), default=None)
    last = max((date.fromisoformat(d) for d in everything["series"]), default=None)
    if period.kind == stats.ALL:
        start = first or period.end - timedelta(days=1)
        period = stats.Period(period.kind, start, period.end, period.tz, period.label, period.spec)
        agg = everything
        previous = None
    else:
        before = previous_period(period)
        agg = view.period(period.start, period.end)
        previous = _totals(view.period(before.start, before.end)) if before is not None else None
    unit = unit or series_unit(period.days)
    return stats.Figures(
        period=period, totals=_totals(agg), previous=previous,
        top_tracks=_ranked(agg, "tracks"), top_artists=_ranked(agg, "artists"), top_albums=_ranked(agg, "albums"),
        top_shows=_ranked(agg, "shows"), series_unit=unit, series=_series(agg, period.start, period.end, unit),
        heatmap=[list(row) for row in agg["heat"]], first_play=first, last_play=last,
        archive_plays=everything["plays"])


def figures(user: Any, period: stats.Period, now: datetime) -> stats.Figures:
    """The figures of `period` (resolve_period's) for the user, from the rollups. Recomputing while a
    rebuild runs (rebuild_state says how far it is)."""
    where, settled = _open(user.user_id)
    if where.tz != period.tz:
        raise BadPeriod(f"the period is in {period.tz}, the rollups in {where.tz}")
    return _figures(_View(where, consistent=settled), period)


def years_with_plays(user: Any) -> list[int]:
    """The years (local) that hold plays, oldest first."""
    where, settled = _open(user.user_id)
    everything = _View(where, settled).item(where.all) or empty()
    return sorted({int(label[:4]) for label, point in everything["series"].items() if point[0]})


def _streak(days: list[date]) -> stats.Streak:
    best = stats.Streak(0, None, None)
    run_start = previous = None
    for day in sorted(days):
        if previous is None or day != previous + timedelta(days=1):
            run_start = day
        previous = day
        length = (day - run_start).days + 1
        if length > best.days:
            best = stats.Streak(length, run_start, day)
    return best


def year_coverage(user_id: str, year: int, where_zone: ZoneInfo, now: datetime) -> stats.Coverage:
    """Days of the year (up to today) by what covered any of the local day: polling first, then an
    import, else neither."""
    timeline = coverage.timeline(user_id, now)
    segments = timeline["segments"]
    counts = {coverage.POLLING: 0, coverage.IMPORT: 0, coverage.NONE: 0}
    day = date(year, 1, 1)
    end = min(date(year + 1, 1, 1), now.astimezone(where_zone).date() + timedelta(days=1))
    while day < end:
        start_ms = _midnight_ms(day, where_zone, 0)
        end_ms = _midnight_ms(day + timedelta(days=1), where_zone, 0)
        kinds = {s["kind"] for s in segments if s["from_ms"] < end_ms and start_ms < s["to_ms"]}
        kind = next((k for k in (coverage.POLLING, coverage.IMPORT) if k in kinds), coverage.NONE)
        counts[kind] += 1
        day += timedelta(days=1)
    return stats.Coverage(counts[coverage.POLLING], counts[coverage.IMPORT], counts[coverage.NONE])


def year_review(user: Any, year: int, now: datetime) -> stats.YearReview:
    where, settled = _open(user.user_id)
    view = _View(where, settled)
    period = stats.Period(stats.YEAR, date(year, 1, 1), date(year + 1, 1, 1), where.tz, str(year), str(year))
    figs = _figures(view, period, unit=stats.MONTH)
    agg = view.item(where.year(year)) or empty()
    firsts = (view.item(where.firsts) or {"artists": {}})["artists"]
    new = {k: v for k, v in agg["artists"].items() if k in firsts and date.fromordinal(firsts[k][FIRST]).year == year}
    new_artists = _ranked({**agg, "artists": new}, "artists")
    played = {date.fromisoformat(d): p[0] for d, p in agg["series"].items() if p[0]}
    busiest = min(played.items(), key=lambda kv: (-kv[1], kv[0])) if played else None
    return stats.YearReview(year=year, figures=figs, new_artists=new_artists, busiest_day=busiest,
                            longest_streak=_streak(list(played)),
                            coverage=year_coverage(user.user_id, year, where.zone, now))


def _item_page(user: Any, kind: str, key: str) -> stats.ItemPage | None:
    where, settled = _open(user.user_id)
    view = _View(where, settled)
    everything = view.item(where.all) or empty()
    years = sorted({int(label[:4]) for label, point in everything["series"].items() if point[0]})
    view.fetch(where.year(y) for y in years)
    values, meta = [], None
    for year in years:
        agg = view.item(where.year(year))
        if agg is not None and key in agg[kind]:
            values.append((year, agg[kind][key], agg))
            meta = meta or agg["meta"].get(key)
    if not values:
        return None
    months = [f"{year:04d}-{m:02d}" for year, value, _ in values for m in range(1, 13) if value[MASK] & (1 << (m - 1))]
    view.fetch(where.month(m) for m in months)
    per_month: dict[str, list[int]] = {}
    tracks: dict[str, list[int]] = {}
    track_meta: dict[str, list] = {}
    for month in months:
        agg = view.item(where.month(month)) or empty()
        value = agg[kind].get(key)
        if value is not None:
            per_month[month] = [value[PLAYS], value[MS]]
        if kind == "artists":
            for track, track_value in agg["tracks"].items():
                if key in (agg["meta"].get(track) or ["", [], []])[2]:
                    mine = tracks.setdefault(track, [0, 0, 0, 0, 0])
                    mine[PLAYS] += track_value[PLAYS]
                    mine[MS] += track_value[MS]
                    track_meta.setdefault(track, agg["meta"][track])
    first = date.fromordinal(min(v[FIRST] for _, v, _ in values))
    last = date.fromordinal(max(v[LAST] for _, v, _ in values))
    series = []
    month = first.replace(day=1)
    while month <= last:
        label = month.strftime("%Y-%m")
        point = per_month.get(label, [0, 0])
        series.append(stats.Bucket(label, month, point[0], point[1]))
        month = _next_month(month)
    meta = meta or [key, [], []]
    artists: tuple[stats.Ranked, ...] = ()
    if kind == "tracks":
        artists = tuple(stats.Ranked(key=k, name=n, artists=(), plays=0, ms=0,
                                     link=ARTIST_LINK.format(quote(k, safe="")))
                        for k, n in zip(meta[2], meta[1], strict=True))
    top = _ranked({"tracks": tracks, "meta": track_meta}, "tracks") if kind == "artists" else []
    return stats.ItemPage(kind="track" if kind == "tracks" else "artist", key=key, name=meta[0] or "",
                          artists=artists, plays=sum(v[PLAYS] for _, v, _ in values),
                          ms=sum(v[MS] for _, v, _ in values), first_play=first, last_play=last,
                          per_month=series, top_tracks=top)


def track_page(user: Any, key: str, now: datetime) -> stats.ItemPage | None:
    """A track's page (None: no play of it); its artists with their links."""
    return _item_page(user, "tracks", key)


def artist_page(user: Any, key: str, now: datetime) -> stats.ItemPage | None:
    """An artist's page (None: no play of it), with the artist's most played tracks."""
    return _item_page(user, "artists", key)


# ------------------------------------------------------------------------------ time zone and rebuild
REBUILD_PAGE = 1000  # plays read per step of a rebuild
REBUILD_MIN_REMAINING_S = 10.0
STALLED_AFTER = timedelta(minutes=15)  # a rebuild without progress this long is started again on request


@dataclass(frozen=True)
class RebuildState:
    """What the page says of the rollups: the zone they are in, and a rebuild's progress."""

    tz: str
    rebuilding: bool
    percent: int  # 0..100 while rebuilding
    stalled: bool = False  # no progress for STALLED_AFTER: changing the zone again restarts it


def rebuild_state(user: Any, now: datetime | None = None) -> RebuildState:
    state = store.state(user.user_id)
    tz = state.tz or DEFAULT_TZ
    if state.status != store.REBUILDING:
        return RebuildState(tz, False, 100)
    now = now or clock.now()
    total = int(state.plays_total or 0)
    done = int(state.plays_done or 0)
    # Reading the plays is most of the work; the levels after them are the last 10 %.
    percent = 90 if state.phase == store.PHASE_LEVELS else (min(89, done * 90 // total) if total else 0)
    stalled = state.updated_at is None or now - state.updated_at > STALLED_AFTER
    return RebuildState(tz, True, percent, stalled)


def start_rebuild(user_id: str, queue: Any | None, tz: str | None = None, now: datetime | None = None) -> int | None:
    """A new generation (in `tz`, else the current zone) rebuilt from the plays by a job; the old
    one is deleted after. Returns the new generation (None: another change won the race)."""
    from playvault.store import users

    user = users.get(user_id)
    if user is None or user.status == users.DELETING:
        return None
    state = store.state(user_id)
    tz = tz or state.tz or DEFAULT_TZ
    zone(tz)
    new = store.start_generation(state, tz, now or clock.now())
    if new is None:
        return None
    if queue is not None:
        from playvault.jobs import JobMessage

        queue.send(JobMessage(kind="rollups", user_id=user_id, rollup_gen=int(new.gen)))
    return int(new.gen)


def change_time_zone(user_id: str, tz: str, queue: Any, now: datetime | None = None) -> RebuildState:
    """The user picks a time zone (BadTimeZone naming a bad one, nothing changed): stored on the
    user, and the rollups rebuilt in it (nothing when they already are, or a rebuild into it runs)."""
    from playvault.store import users

    zone(tz)
    now = now or clock.now()
    state = store.state(user_id)
    user = users.get(user_id)
    if user is None:
        raise LookupError("no such user")
    if user.time_zone != tz:
        users.set_time_zone(user_id, tz)
    unchanged = state.tz == tz and state.status == store.READY and state.updated_at is not None
    if (state.tz or DEFAULT_TZ) == tz and state.status == store.READY:
        unchanged = True
    running = state.tz == tz and state.status == store.REBUILDING and not rebuild_state(user, now).stalled
    if not (unchanged or running):
        start_rebuild(user_id, queue, tz, now)
    return rebuild_state(user, now)


def rebuild(user_id: str, gen: int, budget: Any, now: Callable[[], datetime] = clock.now) -> Any:
    """One bounded step of the rebuild of generation `gen` (a job: playvault.jobs). Returns
    jobs.Continue while there is more, None when done (or superseded by another generation)."""
    from playvault.jobs import Continue
    from playvault.store import users

    user = users.get(user_id)
    if user is None or user.status == users.DELETING:
        return None  # the deletion removes every rollup item: nothing is written for a user going away
    state = store.state(user_id)
    if int(state.gen or 0) != gen or (state.status != store.REBUILDING and state.phase != store.PHASE_CLEANUP):
        return None
    where = Where(user_id, gen, state.tz or DEFAULT_TZ)
    low = lambda: budget.remaining_s() < REBUILD_MIN_REMAINING_S  # noqa: E731
    if state.phase == store.PHASE_DAYS:
        if not _rebuild_days(where, state, low, now):
            return Continue(0)
    if state.phase == store.PHASE_LEVELS:
        if not _rebuild_levels(where, state, low, now):
            return Continue(0)
    if state.phase == store.PHASE_CLEANUP:
        for utc_date, marks in (store.decode(state.covered) or {}).items():
            store.clear_dirty(user_id, utc_date, marks, gen)  # refused where marked again meanwhile
        old = int(state.old_gen) if state.old_gen is not None else None
        while old is not None and store.delete_prefix(user_id, store.bucket_key(old, ""), limit=1000):
            if low():
                return Continue(0)
        store.save_progress(state, now(), phase=None, old_gen=None, covered=None)
    return None


def _rebuild_days(where: Where, state: store.RollupModel, low: Callable[[], bool],
                  now: Callable[[], datetime]) -> bool:
    """Every local day with plays, from the plays in order: a day is written once the plays read
    reach past its window (so it is whole), and a checkpoint never passes a play of an unwritten
    day (a resumed run reads those again). True when every day is written."""
    where_zone = where.zone
    catalog = history.Catalog()
    if state.plays_total is None:
        # Before the first play is read: every mark made so far is covered by what this rebuild reads.
        store.save_progress(state, now(), plays_total=plays.count(where.user_id),
                            covered=store.encode(store.dirty(where.user_id)))
    checkpoint = cursor = state.cursor
    closed = date.fromisoformat(state.closed_through) if state.closed_through else None
    first = date.fromisoformat(state.first_day) if state.first_day else None
    last = date.fromisoformat(state.last_day) if state.last_day else None
    done = int(state.plays_done or 0)
    pending: dict[date, list[PlayModel]] = {}
    read: list[str] = []  # played_at of every play read this run, in order
    closed_at_start = closed

    def progress(**more: Any) -> bool:
        return store.save_progress(state, now(), plays_done=done, closed_through=closed.isoformat() if closed else None,
                                   first_day=first.isoformat() if first else None,
                                   last_day=last.isoformat() if last else None, **more)

    while True:
        condition = PlayModel.played_at > cursor if cursor else None
        page = list(PlayModel.query(where.user_id, condition, limit=REBUILD_PAGE, page_size=REBUILD_PAGE,
                                    consistent_read=True))
        for play in page:
            read.append(play.played_at)
            day = local_day(int(play.played_at_ms), where_zone)
            if closed is None or day > closed:
                pending.setdefault(day, []).append(play)
        whole = len(page) == REBUILD_PAGE
        horizon = int(page[-1].played_at_ms) if whole else None
        for day in sorted(pending):
            if horizon is not None and day_window(day, where_zone)[1] >= horizon:
                break
            rows = pending.pop(day)
            store.put_plain(where.user_id, where.day(day), day_aggregate(
                list(zip(rows, catalog.rows(rows), strict=True)), where_zone))
            done += len(rows)
            closed = day
            first = min(first, day) if first else day
            last = max(last, day) if last else day
        if not whole:
            return progress(phase=store.PHASE_LEVELS, cursor=None)
        cursor = page[-1].played_at
        # Out of time, and at least one day written by this run (else the next would read the same again).
        if low() and closed != closed_at_start:
            oldest = min((p.played_at for rows in pending.values() for p in rows), default=None)
            if oldest is not None:
                earlier = [r for r in read if r < oldest]
                cursor = earlier[-1] if earlier else checkpoint
            progress(cursor=cursor)
            return False


def _rebuild_levels(where: Where, state: store.RollupModel, low: Callable[[], bool],
                    now: Callable[[], datetime]) -> bool:
    """Months from the days, years from the months, then the all item; then the generation is ready."""
    if state.first_day and state.last_day:
        first, last = date.fromisoformat(state.first_day), date.fromisoformat(state.last_day)
        months = []
        month = first.replace(day=1)
        while month <= last:
            months.append(month.strftime("%Y-%m"))
            month = _next_month(month)
        steps = [f"month:{m}" for m in months] + [f"year:{y}" for y in range(first.year, last.year + 1)] + ["all"]
        done = state.cursor
        for step in steps:
            if done is not None and _step_order(step) <= _step_order(done):
                continue
            level, _, label = step.partition(":")
            if level == "month":
                recompute_month(where, label)
            elif level == "year":
                recompute_year(where, int(label))
            else:
                recompute_all(where)
            done = step
            if low() and step != "all":
                store.save_progress(state, now(), cursor=step)
                return False
    return store.save_progress(state, now(), status=store.READY, phase=store.PHASE_CLEANUP, cursor=None)


def _step_order(step: str) -> tuple[int, str]:
    level, _, label = step.partition(":")
    return ({"month": 0, "year": 1, "all": 2}[level], label)
