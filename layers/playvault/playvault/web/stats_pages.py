"""The figures of a user's archive as HTML: the period picker, totals against the previous period,
top lists, the series charts, the heatmap, the history list, track and artist pages and the year in
review. Renders playvault.stats values only (never reads a table); every value is escaped.

URLs: /me?period=<spec> (or ?from=&to= for a custom range), /me/top/<list>?period=, /me/history,
/me/track?key=, /me/artist?key=, /me/years/<year>, /me/time-zone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

from playvault import stats
from playvault.rollups import previous_period
from playvault.web.pages import esc
from playvault.web.stats_charts import Point, columns, heatmap, values_table

LISTS = {  # list name in the URL -> (heading, the Figures field, what one row is)
    "tracks": ("Tracks", "top_tracks", "Track"),
    "artists": ("Artists", "top_artists", "Artist"),
    "albums": ("Albums", "top_albums", "Album"),
    "shows": ("Shows", "top_shows", "Show"),
}
ESTIMATE_NOTE = ("Listening time is estimated: for plays whose time played is unknown (polled plays; "
                 "imports give it), the track's length counts.")
UNIT_WORDS = {stats.DAY: "day", stats.WEEK: "week", stats.MONTH: "month"}
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


# -- words and numbers --------------------------------------------------------------------------
def duration(ms: int) -> str:
    """Listening time as people read it: "45 min", "3 h 05 min", "1,204 h"."""
    minutes = round(ms / 60_000)
    hours, rest = divmod(minutes, 60)
    if hours >= 100:
        return f"{hours:,} h"
    if hours:
        return f"{hours} h {rest:02d} min"
    return f"{rest} min"


def change(current: int, previous: int) -> str:
    """The change from the previous period: "+12 %", "−8 %", "no change", "new" (none before)."""
    if previous == 0:
        return "no change" if current == 0 else "new"
    percent = round(100 * (current - previous) / previous)
    if percent == 0:
        return "no change"
    return f"+{percent:,} %" if percent > 0 else f"\u2212{-percent:,} %"


def day_text(day: date) -> str:
    return f"{day.day} {MONTHS[day.month - 1]} {day.year}"


def _bucket_label(bucket: stats.Bucket, unit: str) -> tuple[str, str]:
    """(full label, short axis label) of a series bucket."""
    start = bucket.start
    if unit == stats.MONTH:
        return f"{MONTHS[start.month - 1]} {start.year}", f"{MONTHS[start.month - 1]} {start.year}"
    if unit == stats.WEEK:
        return f"Week of {day_text(start)}", f"{start.day} {MONTHS[start.month - 1]} {start.year}"
    return day_text(start), f"{start.day} {MONTHS[start.month - 1]}"


# -- URLs ---------------------------------------------------------------------------------------
def period_query(period: stats.Period) -> str:
    """The query string that names `period` again (a custom range by its inclusive dates)."""
    if period.kind == stats.CUSTOM:
        return urlencode({"from": period.start.isoformat(), "to": (period.end - timedelta(days=1)).isoformat()})
    return urlencode({"period": period.spec})


def track_url(key: str) -> str:
    return "/me/track?key=" + quote(key, safe="")


def artist_url(key: str) -> str:
    return "/me/artist?key=" + quote(key, safe="")


def year_url(year: int) -> str:
    return f"/me/years/{year}"


def _name(item: stats.Ranked) -> str:
    name = esc(item.name or "(unnamed)")
    return f'<a href="{esc(item.link)}">{name}</a>' if item.link else name


# -- the period picker and the time zone ---------------------------------------------------------
def period_picker(current: stats.Period, years: Sequence[int], this_year: int) -> str:
    """This week / month / year, each earlier year with plays, all time, and a from-to form."""
    choices = [("week", "This week"), ("month", "This month"), ("year", "This year")]
    choices += [(str(y), str(y)) for y in sorted(years, reverse=True) if y != this_year]
    choices.append(("all", "All time"))
    links = " ".join(
        f'<a href="/me?{urlencode({"period": spec})}"{" aria-current=\"page\"" if spec == current.spec else ""}>'
        f"{esc(text)}</a>" for spec, text in choices)
    start = current.start.isoformat() if current.kind == stats.CUSTOM else ""
    end = (current.end - timedelta(days=1)).isoformat() if current.kind == stats.CUSTOM else ""
    return (f'<nav class="periods" id="periods" aria-label="Period">{links}</nav>'
            '<form class="custom-period" id="custom-period" method="get" action="/me">'
            f'<label>From <input type="date" name="from" value="{esc(start)}" required></label> '
            f'<label>to <input type="date" name="to" value="{esc(end)}" required></label> '
            '<button type="submit">Show</button></form>')


def time_zone_line(tz: str) -> str:
    return (f'<p id="time-zone" class="muted">Days and hours are in <strong>{esc(tz)}</strong>. '
            '<a href="/me/time-zone">Change time zone</a></p>')


def time_zone_form(csrf_field: str, current: str, zones: Sequence[str]) -> str:
    """A list of IANA zones grouped by region (the server validates whatever comes back anyway)."""
    groups: dict[str, list[str]] = {}
    for zone in sorted(zones):
        groups.setdefault(zone.split("/", 1)[0] if "/" in zone else "Other", []).append(zone)
    options = "".join(
        f'<optgroup label="{esc(region)}">' + "".join(
            f'<option{" selected" if z == current else ""}>{esc(z)}</option>' for z in names) + "</optgroup>"
        for region, names in groups.items())
    return (f"<p>Your days, weeks and hours of listening are counted in this time zone (now "
            f"<strong>{esc(current)}</strong>). Changing it recomputes your figures; the page shows them again "
            "when that is done.</p>"
            f'<form method="post" action="/me/time-zone" id="time-zone-form">{csrf_field}'
            f'<label for="zone">Time zone</label> <select name="zone" id="zone">{options}</select> '
            '<button type="submit">Save</button></form><p><a href="/me">Back to my archive</a></p>')


def rebuilding(tz: str, percent: int) -> str:
    return (f'<p id="rebuilding">Recomputing your figures for {esc(tz)}: {int(percent)} %. This page shows '
            "them when that is done; reload it to follow.</p>")


# -- figures ------------------------------------------------------------------------------------
def totals(figures: stats.Figures) -> str:
    t, p = figures.totals, figures.previous
    rows = [("Plays", "plays", t.plays, p.plays if p else None, f"{t.plays:,}"),
            ("Listening time", "ms", t.ms, p.ms if p else None,
             ("about " if t.ms_estimated else "") + duration(t.ms)),
            ("Tracks", "tracks", t.tracks, p.tracks if p else None, f"{t.tracks:,}"),
            ("Artists", "artists", t.artists, p.artists if p else None, f"{t.artists:,}"),
            ("Albums", "albums", t.albums, p.albums if p else None, f"{t.albums:,}")]
    corner = '<th scope="col"><span class="sr-only">Figure</span></th>'
    head = f'<tr>{corner}<th scope="col">{esc(figures.period.label)}</th>'
    before = previous_period(figures.period) if p is not None else None
    if before is not None:
        head += f'<th scope="col">vs {esc(before.label)}</th>'
    head += "</tr>"
    body = []
    for label, name, value, previous, text in rows:
        estimate = ' <span class="estimate">(estimate)</span>' if name == "ms" and t.ms_estimated else ""
        was = "" if previous is None else (
            f'<td class="change" data-change="{esc(change(value, previous))}">{esc(change(value, previous))} '
            f'<span class="muted">(from {esc(duration(previous) if name == "ms" else f"{previous:,}")})</span></td>')
        body.append(f'<tr><th scope="row">{label}</th><td id="total-{name}" data-value="{value}">{esc(text)}'
                    f"{estimate}</td>{was}</tr>")
    note = f'<p class="muted" id="estimate-note">{esc(ESTIMATE_NOTE)}</p>' if t.ms_estimated else ""
    return f'<table id="totals"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>{note}'


def top_table(list_name: str, items: Sequence[stats.Ranked], limit: int, *, caption: str | None = None,
              element_id: str | None = None) -> str:
    """A top list: rank, name (linked to its page when it has one) with its artists, plays, time."""
    heading, _, what = LISTS[list_name]
    element_id = element_id or f"top-{list_name}"
    if not items:
        return f'<p id="{element_id}" class="muted">No {heading.lower()} in this period.</p>'
    rows = []
    for rank, item in enumerate(items[:limit], 1):
        by = f'<br><span class="muted">{esc(", ".join(item.artists))}</span>' if item.artists else ""
        rows.append(f'<tr class="item" data-key="{esc(item.key)}" data-plays="{item.plays}"><td>{rank}</td>'
                    f"<td>{_name(item)}{by}</td><td>{item.plays:,}</td><td>{esc(duration(item.ms))}</td></tr>")
    caption_html = f"<caption>{esc(caption)}</caption>" if caption else ""
    return (f'<table class="top" id="{element_id}">{caption_html}<thead><tr><th scope="col">#</th>'
            f'<th scope="col">{what}</th><th scope="col">Plays</th><th scope="col">Time</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def top_lists(figures: stats.Figures, limit: int = stats.TOP_ON_PAGE, *, more: bool = True) -> str:
    out = []
    query = period_query(figures.period)
    for list_name, (heading, attribute, _) in LISTS.items():
        items: list[stats.Ranked] = getattr(figures, attribute)
        if list_name == "shows" and not items:
            continue  # most archives hold no podcast
        link = (f' <a class="more" href="/me/top/{list_name}?{esc(query)}">All top {min(len(items), stats.TOP_MORE)}'
                f"</a>" if more and len(items) > limit else "")
        out.append(f"<h3>Top {heading.lower()}{link}</h3>{top_table(list_name, items, limit)}")
    return "".join(out)


def series(element_id: str, buckets: Sequence[stats.Bucket], unit: str, *, what: str = "") -> str:
    """Plays and listening time per bucket: two bar charts and the table of their values."""
    word = UNIT_WORDS.get(unit, unit)
    labels = [_bucket_label(b, unit) for b in buckets]
    plays = [Point(full, short, b.plays, b.start.isoformat()) for b, (full, short) in zip(buckets, labels, strict=True)]
    hours = [Point(full, short, b.ms / 3_600_000, b.start.isoformat())
             for b, (full, short) in zip(buckets, labels, strict=True)]
    suffix = f", {what}" if what else ""
    rows = [(full, f"{b.plays:,}", duration(b.ms)) for b, (full, _) in zip(buckets, labels, strict=True)]
    return (columns(f"{element_id}-plays", f"Plays per {word}{suffix}", plays)
            + columns(f"{element_id}-time", f"Listening time per {word} (hours){suffix}", hours, unit=" h",
                      value_text=lambda h: duration(round(h * 3_600_000)))
            + values_table(f"{element_id}-values", f"Plays and time per {word}", (word.capitalize(), "Plays", "Time"),
                           rows))


def figures_section(figures: stats.Figures, years: Sequence[int], today: date) -> str:
    """The figures part of /me: the picker, totals, the series, the heatmap and the top lists."""
    period = figures.period
    empty = figures.totals.plays == 0
    body = (f'<p class="muted" id="no-plays">No plays in this period ({esc(period.label)}).</p>' if empty else
            series("series", figures.series, figures.series_unit, what=period.label)
            + "<h3>When you listen</h3>"
            + heatmap("heatmap", f"Plays by hour and weekday, {period.label} ({period.tz})", figures.heatmap)
            + top_lists(figures))
    year_link = (f'<p><a id="year-review" href="{year_url(int(period.spec))}">Your {esc(period.spec)} in review</a></p>'
                 if period.spec.isdigit() else "")
    return (f'<h2 id="figures">{esc(period.label)}</h2>'
            + period_picker(period, years, today.year)
            + time_zone_line(period.tz)
            + totals(figures) + year_link + body
            + '<p><a href="/me/history" id="history-link">Every play, newest first</a></p>')


def top_page(figures: stats.Figures, list_name: str) -> str:
    heading, attribute, _ = LISTS[list_name]
    items = getattr(figures, attribute)
    others = " ".join(f'<a href="/me/top/{n}?{esc(period_query(figures.period))}"'
                      f'{" aria-current=\"page\"" if n == list_name else ""}>{h}</a>' for n, (h, _, _) in LISTS.items())
    return (f'<nav aria-label="Lists">{others}</nav>'
            + top_table(list_name, items, stats.TOP_MORE, caption=f"Top {len(items[:stats.TOP_MORE])} "
                        f"{heading.lower()}, {figures.period.label}")
            + f'<p><a href="/me?{esc(period_query(figures.period))}">Back to {esc(figures.period.label)}</a></p>')


# -- history ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HistoryRow:
    """One play as the history list shows it (names from history.best_names)."""

    played_at: datetime  # aware
    title: str
    title_link: str | None
    artists: tuple[tuple[str, str | None], ...]  # (name, link)
    album: str | None
    source: str  # "api" | "export"


def history_page(rows: Sequence[HistoryRow], tz: str, older: str | None, first_page: bool) -> str:
    """Plays newest first, in the user's time zone; `older`: the URL of the next page (None: no more)."""
    zone = ZoneInfo(tz)
    if not rows:
        listing = '<p id="history" class="muted">No plays here.</p>'
    else:
        items = []
        for row in rows:
            local = row.played_at.astimezone(zone)
            title = (f'<a href="{esc(row.title_link)}">{esc(row.title)}</a>' if row.title_link else esc(row.title))
            artists = ", ".join(f'<a href="{esc(link)}">{esc(name)}</a>' if link else esc(name)
                                for name, link in row.artists)
            album = f' <span class="muted">· {esc(row.album)}</span>' if row.album else ""
            source = "imported" if row.source == "export" else "polled"
            items.append(f'<tr class="play" data-played-at="{esc(row.played_at.isoformat())}">'
                         f'<td><time datetime="{esc(local.isoformat())}">{local:%Y-%m-%d %H:%M}</time></td>'
                         f"<td>{title}<br>{artists}{album}</td><td class=\"muted\">{source}</td></tr>")
        listing = (f'<table id="history"><caption>Plays, newest first (times in {esc(tz)})</caption><thead><tr>'
                   '<th scope="col">When</th><th scope="col">Play</th><th scope="col">From</th></tr></thead>'
                   f'<tbody>{"".join(items)}</tbody></table>')
    links = []
    if not first_page:
        links.append('<a href="/me/history" id="history-newest">Newest</a>')
    if older:
        links.append(f'<a href="{esc(older)}" id="history-older" rel="next">Older plays</a>')
    return (listing + f'<nav class="pager" aria-label="Pages">{" ".join(links)}</nav>'
            + '<p><a href="/me">Back to my archive</a></p>')


# -- track and artist pages ----------------------------------------------------------------------
def item_page(item: stats.ItemPage) -> str:
    facts = [("Plays", f"{item.plays:,}", "plays"), ("Listening time", duration(item.ms), "ms"),
             ("First play", day_text(item.first_play) if item.first_play else "never", "first-play"),
             ("Last play", day_text(item.last_play) if item.last_play else "never", "last-play")]
    by = ""
    if item.artists:
        by = '<p id="by">by ' + ", ".join(_name(a) for a in item.artists) + "</p>"
    table = "".join(f'<tr><th scope="row">{label}</th><td id="item-{key}">{esc(text)}</td></tr>'
                    for label, text, key in facts)
    chart = series("per-month", item.per_month, stats.MONTH) if item.per_month else ""
    top = ""
    if item.kind == "artist" and item.top_tracks:
        top = "<h2>Most played tracks</h2>" + top_table("tracks", item.top_tracks, stats.TOP_MORE)
    note = ('<p class="muted">Listening time counts the time played where an import gave it, else the '
            "track's length (an estimate).</p>")
    return (f'{by}<table id="item-facts">{table}</table>{note}{chart}{top}'
            '<p><a href="/me">Back to my archive</a></p>')


# -- the year in review -------------------------------------------------------------------------
def year_page(review: stats.YearReview, years: Sequence[int]) -> str:
    f = review.figures
    minutes = round(f.totals.ms / 60_000)
    others = " ".join(f'<a href="{year_url(y)}"{" aria-current=\"page\"" if y == review.year else ""}>{y}</a>'
                      for y in sorted(years, reverse=True))
    busiest = (f"{day_text(review.busiest_day[0])} ({review.busiest_day[1]:,} plays)" if review.busiest_day
               else "none")
    streak = review.longest_streak
    streak_text = (f"{streak.days} day{'s' if streak.days != 1 else ''}"
                   + (f", {day_text(streak.start)} to {day_text(streak.end)}" if streak.start and streak.end else ""))
    c = review.coverage
    covered = c.polled_days + c.imported_days + c.neither_days or 1
    facts = [
        ("Minutes listened", ("about " if f.totals.ms_estimated else "") + f"{minutes:,}", "minutes"),
        ("Plays", f"{f.totals.plays:,}", "plays"),
        ("Tracks, artists, albums", f"{f.totals.tracks:,}, {f.totals.artists:,}, {f.totals.albums:,}", "distinct"),
        ("Busiest day", busiest, "busiest-day"),
        ("Longest streak", streak_text, "streak"),
        ("Archive coverage", f"{c.polled_days} days polled, {c.imported_days} imported, {c.neither_days} neither "
                             f"({round(100 * (c.polled_days + c.imported_days) / covered)} % covered)", "coverage"),
    ]
    table = "".join(f'<tr><th scope="row">{label}</th><td id="year-{key}">{esc(text)}</td></tr>'
                    for label, text, key in facts)
    note = f'<p class="muted">{esc(ESTIMATE_NOTE)}</p>' if f.totals.ms_estimated else ""
    tops = "".join(f"<h2>Top 5 {heading.lower()}</h2>{top_table(name, getattr(f, attribute), 5)}"
                   for name, (heading, attribute, _) in LISTS.items() if name != "shows" or getattr(f, attribute))
    new = (top_table("artists", review.new_artists, 10, caption="Artists heard for the first time this year",
                     element_id="new-artists") if review.new_artists
           else '<p id="new-artists" class="muted">No artist was new this year.</p>')
    return (f'<nav class="periods" aria-label="Years">{others}</nav>'
            f'<table id="year-facts">{table}</table>{note}'
            + series("year-series", f.series, f.series_unit, what=str(review.year))
            + tops + "<h2>New this year</h2>" + new
            + f'<p><a href="/me?period={review.year}">{review.year} on my archive page</a> · '
            '<a href="/me">Back to my archive</a></p>')

