"""Rendering of the archive's figures (playvault.web.stats_pages and stats_charts) from playvault.stats
values built here: what a person reads on /me, the top lists, the history, the item and year pages."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from html import unescape

import pytest

from playvault import stats
from playvault.web import stats_charts as charts
from playvault.web import stats_pages as sp
from playvault.web.pages import render


def period(kind: str = stats.MONTH, start: date = date(2024, 3, 1), end: date = date(2024, 4, 1),
           label: str = "March 2024", spec: str = "month", tz: str = "Europe/Paris") -> stats.Period:
    return stats.Period(kind, start, end, tz, label, spec)


def ranked(n: int, kind: str = "track", *, artists: tuple[str, ...] = ("Artist",)) -> list[stats.Ranked]:
    link = sp.track_url if kind == "track" else sp.artist_url
    return [stats.Ranked(f"id{i}", f"{kind.title()} {i}", artists, 100 - i, (100 - i) * 180_000,
                         link(f"id{i}") if kind in ("track", "artist") else None) for i in range(n)]


def figures(p: stats.Period | None = None, *, previous: stats.Totals | None = None, estimated: bool = False,
            tracks: int = 12, buckets: int = 31) -> stats.Figures:
    p = p or period()
    series = [stats.Bucket(str(p.start + timedelta(days=i)), p.start + timedelta(days=i), i, i * 200_000)
              for i in range(buckets)]
    heat = [[0] * 24 for _ in range(7)]
    heat[0][23] = 5
    heat[6][0] = 1
    total = stats.Totals(plays=sum(b.plays for b in series), ms=sum(b.ms for b in series), ms_estimated=estimated,
                         tracks=tracks, artists=7, albums=3)
    return stats.Figures(period=p, totals=total, previous=previous, top_tracks=ranked(tracks),
                         top_artists=ranked(7, "artist", artists=()), top_albums=ranked(3, "album"), top_shows=[],
                         series_unit=stats.DAY, series=series, heatmap=heat, first_play=date(2020, 1, 1),
                         last_play=date(2024, 3, 30))


def no_external_or_script(html: str) -> None:
    assert "<script" not in html and "<svg" not in html  # charts are HTML: their text keeps the page's size
    assert not re.search(r'(src|href)="(https?:)?//', html)


# ------------------------------------------------------------------ words and numbers
def test_durations_and_changes_read_as_words():
    assert sp.duration(0) == "0 min" and sp.duration(45 * 60_000) == "45 min"
    assert sp.duration(3 * 3_600_000 + 5 * 60_000) == "3 h 05 min"
    assert sp.duration(1204 * 3_600_000) == "1,204 h"
    assert sp.change(112, 100) == "+12 %" and sp.change(92, 100) == "\u22128 %"
    assert sp.change(5, 0) == "new" and sp.change(0, 0) == "no change" and sp.change(100, 100) == "no change"


@pytest.mark.parametrize("peak", [0, 1, 3, 7, 10, 11, 99, 101, 1234, 0.4, 5.5])
def test_axis_ticks_are_round_and_reach_the_peak(peak):
    ticks = charts.nice_ticks(peak)
    assert ticks[0] == 0 and ticks[-1] >= peak and 2 <= len(ticks) <= 6
    step = ticks[1] - ticks[0]
    mantissa = step / 10 ** int(f"{step:e}".split("e")[1])
    assert round(mantissa, 6) in (1, 2, 5)
    assert all(abs(b - a - step) < 1e-9 for a, b in zip(ticks, ticks[1:], strict=False))


# ------------------------------------------------------------------ charts
def test_bars_are_proportional_with_an_axis_and_values():
    points = [charts.Point(f"Day {i}", f"d{i}", v, f"2024-03-{i + 1:02d}") for i, v in enumerate([0, 5, 20, 13])]
    html = charts.columns("c", "Plays per day", points)
    heights = [float(h) for h in re.findall(r'class="bar" style="height:([0-9.]+)%"', html)]
    assert heights == [0, 25, 100, 65]  # ticks 0, 5, 10, 15, 20: the top tick is the peak here
    y_axis = html.split('<div class="y">')[1].split("</div>")[0]
    assert re.findall(r">(\d+)</span>", y_axis) == ["0", "5", "10", "15", "20"]
    assert 'title="Day 2: 20"' in html and '<span class="v">13</span>' in html  # few bars: values on them
    assert re.findall(r'<div class="x" aria-hidden="true">(.*?)</div>', html)[0].count("<span") == 3
    assert ">d0<" in html and ">d3<" in html and "<figcaption>Plays per day</figcaption>" in html


def test_values_over_bars_stay_short():
    assert [charts.compact(v) for v in (7, 0.44, 3.25, 12, 999, 1234, 35_400)] == \
        ["7", "0.4", "3.2", "12", "999", "1.2k", "35k"]
    hours = [charts.Point(f"M{i}", f"M{i}", h, f"2024-{i + 1:02d}-01") for i, h in enumerate([0.25, 3.5, 12.0])]
    html = charts.columns("t", "Hours", hours, unit=" h", value_text=lambda h: sp.duration(round(h * 3_600_000)))
    assert re.findall(r'<span class="v">([^<]+)</span>', html) == ["0.2", "3.5", "12"]
    assert 'title="M1: 3 h 30 min"' in html


def test_many_bars_keep_their_values_in_tooltips_and_the_table():
    buckets = [stats.Bucket(f"2024-W{i:02d}", date(2024, 1, 1) + timedelta(weeks=i), i, i * 60_000)
               for i in range(53)]
    html = sp.series("s", buckets, stats.WEEK)
    assert '<span class="v">' not in html  # 53 bars: no room on a phone
    assert html.count('class="bar"') == 106  # plays and time
    table = html.split('id="s-values"')[1]
    assert table.count("<tr>") == 54 and "Week of 8 Jan 2024</th><td>1</td><td>1 min</td>" in table
    assert "Plays per week" in html and "Listening time per week (hours)" in html


def test_heatmap_cells_hold_their_counts_and_stay_readable():
    plays = [[(d * 24 + h) % 17 for h in range(24)] for d in range(7)]
    html = charts.heatmap("h", "When", plays)
    cells = re.findall(r'data-day="(\d)" data-hour="(\d+)" data-plays="(\d+)"', html)
    assert len(cells) == 168 and all(int(n) == plays[int(d)][int(h)] for d, h, n in cells)
    assert html.count("<tr>") == 25 and "<th scope=\"col\">Mon</th>" in html and "23:00</th>" in html
    for share in [i / 50 for i in range(51)]:
        background, text = charts.heat_colors(share)
        rgb = tuple(int(background[i:i + 2], 16) for i in (1, 3, 5))
        lum = charts._luminance(rgb)
        assert charts._contrast(lum, 0.0 if text == "#000" else 1.0) >= 4.5, (share, background, text)


# ------------------------------------------------------------------ /me's figures
def test_totals_compare_with_the_previous_period_of_the_same_length():
    previous = stats.Totals(plays=400, ms=100 * 60_000, ms_estimated=False, tracks=12, artists=8, albums=0)
    html = sp.totals(figures(previous=previous, estimated=True))
    assert 'id="total-plays" data-value="465">465<' in html  # 0 + 1 + ... + 30
    assert "+16 %" in html and "(from 400)" in html
    assert "no change" in html and "\u221212 %" in html and ">new <" in html  # tracks, artists, albums
    assert "vs February 2024" in html  # a month against the month before
    week = period(stats.WEEK, date(2024, 3, 4), date(2024, 3, 11), "This week", "week")
    assert "vs 26 Feb 2024 to 3 Mar 2024" in sp.totals(figures(week, previous=previous, buckets=7))
    assert "about 25 h 50 min" in html and "(estimate)" in html and 'id="estimate-note"' in html


def test_all_time_has_no_comparison_and_a_measured_time_no_estimate():
    html = sp.totals(figures(period(stats.ALL, date(2015, 1, 1), date(2025, 1, 1), "All time", "all")))
    assert "vs " not in html and 'class="change"' not in html
    assert "estimate" not in html and "about" not in html


def test_top_lists_show_ten_with_artists_and_links_and_more_behind_a_link():
    f = figures(tracks=12)
    html = sp.top_lists(f)
    tracks = html.split('id="top-tracks"')[1].split("</table>")[0]
    assert tracks.count('<tr class="item"') == 10
    assert '<a href="/me/track?key=id0">Track 0</a><br><span class="muted">Artist</span>' in tracks
    assert '<a class="more" href="/me/top/tracks?period=month">All top 12</a>' in html
    assert 'href="/me/top/artists' not in html  # 7 artists: all on the page already
    assert '<a href="/me/artist?key=id0">Artist 0</a>' in html
    assert 'id="top-albums"' in html and "/me/album" not in html  # albums have no page
    assert 'id="top-shows"' not in html  # no podcast: no empty list


def test_names_are_escaped_and_keys_quoted():
    item = stats.Ranked("n:a/b\x1fc&d", "<b>Velvet & Garden</b>", ("A <i>", "B"), 3, 60_000,
                        sp.track_url("n:a/b\x1fc&d"))
    html = sp.top_table("tracks", [item], 10)
    assert "<b>" not in html and "&lt;b&gt;Velvet &amp; Garden&lt;/b&gt;" in html and "A &lt;i&gt;, B" in html
    assert 'href="/me/track?key=n%3Aa%2Fb%1Fc%26d"' in html


def test_a_custom_period_links_by_its_dates_and_the_picker_lists_years_with_plays():
    custom = period(stats.CUSTOM, date(2023, 12, 30), date(2024, 1, 3), "30 Dec 2023 to 2 Jan 2024",
                    "2023-12-30..2024-01-02")
    assert sp.period_query(custom) == "from=2023-12-30&to=2024-01-02"
    picker = sp.period_picker(custom, [2026, 2019, 2024], 2026)
    links = re.findall(r'<a href="/me\?period=([^"]+)"', picker)
    assert links == ["week", "month", "year", "2024", "2019", "all"]  # the current year is "This year"
    assert 'value="2023-12-30"' in picker and 'value="2024-01-02"' in picker and "aria-current" not in picker
    assert sp.period_picker(period(spec="2019"), [2019], 2026).count('aria-current="page"') == 1
    assert '<a href="/me?period=2019" aria-current="page">2019</a>' in sp.period_picker(period(spec="2019"), [2019],
                                                                                        2026)


def test_the_figures_section_holds_every_part_and_no_script():
    html = sp.figures_section(figures(), [2024], date(2024, 3, 31))
    for part in ('id="periods"', 'id="custom-period"', 'id="time-zone"', "Europe/Paris", 'id="totals"',
                 'id="series-plays"', 'id="series-time"', 'id="heatmap"', 'id="top-tracks"', 'id="history-link"'):
        assert part in html, part
    no_external_or_script(render("t", "h", html, style=charts.STYLE))


def test_an_empty_period_says_so_and_a_past_year_links_its_review():
    f = figures(period(stats.YEAR, date(2019, 1, 1), date(2020, 1, 1), "2019", "2019"), buckets=0)
    empty = stats.Figures(**{**f.__dict__, "totals": stats.Totals(0, 0, False, 0, 0, 0), "top_tracks": [],
                             "top_artists": [], "top_albums": []})
    html = sp.figures_section(empty, [2019], date(2024, 3, 31))
    assert 'id="no-plays"' in html and 'id="heatmap"' not in html
    assert '<a id="year-review" href="/me/years/2019">' in html


def test_the_more_page_lists_fifty():
    f = figures(tracks=60)
    html = sp.top_page(f, "tracks")
    assert html.split('id="top-tracks"')[1].count('<tr class="item"') == stats.TOP_MORE
    assert "Top 50 tracks, March 2024" in html and 'href="/me?period=month"' in html


# ------------------------------------------------------------------ history, items, year
def test_history_shows_local_times_newest_first_with_a_pager():
    near_midnight = datetime(2024, 3, 5, 23, 30, tzinfo=UTC)
    rows = [sp.HistoryRow(near_midnight, "Song", sp.track_url("t1"), (("Band", sp.artist_url("a1")), ("Solo", None)),
                          "Album", "export"),
            sp.HistoryRow(near_midnight - timedelta(hours=2), "Other", None, (), None, "api")]
    paris = sp.history_page(rows, "Europe/Paris", "/me/history?before=abc", first_page=True)
    assert "2024-03-06 00:30" in paris and "2024-03-05 22:30" in paris  # the first moved to the next day
    assert unescape(paris).index("Song") < unescape(paris).index("Other")
    assert '<a href="/me/artist?key=a1">Band</a>, Solo' in paris and "imported" in paris and "polled" in paris
    assert 'id="history-older"' in paris and 'id="history-newest"' not in paris
    last = sp.history_page(rows, "UTC", None, first_page=False)
    assert "2024-03-05 23:30" in last and 'id="history-older"' not in last and 'id="history-newest"' in last


def test_track_and_artist_pages():
    months = [stats.Bucket("2024-01", date(2024, 1, 1), 3, 540_000), stats.Bucket("2024-02", date(2024, 2, 1), 0, 0),
              stats.Bucket("2024-03", date(2024, 3, 1), 1, 180_000)]
    artist = stats.Ranked("a1", "Band", (), 4, 720_000, sp.artist_url("a1"))
    track = stats.ItemPage("track", "t1", "Song", (artist,), 4, 720_000, date(2024, 1, 3), date(2024, 3, 9), months)
    html = sp.item_page(track)
    assert 'by <a href="/me/artist?key=a1">Band</a>' in html
    assert 'id="item-first-play">3 Jan 2024<' in html and 'id="item-last-play">9 Mar 2024<' in html
    assert html.count('class="bar"') == 6 and "Plays per month" in html and "Feb 2024</th><td>0</td>" in html
    page = stats.ItemPage("artist", "a1", "Band", (), 4, 720_000, date(2024, 1, 3), date(2024, 3, 9), months,
                          top_tracks=ranked(3))
    assert page and 'id="by"' not in sp.item_page(page) and sp.item_page(page).count('<tr class="item"') == 3


def test_the_year_in_review():
    f = figures(period(stats.YEAR, date(2023, 1, 1), date(2024, 1, 1), "2023", "2023"), estimated=True)
    review = stats.YearReview(2023, f, ranked(2, "artist", artists=()), (date(2023, 3, 12), 41),
                              stats.Streak(9, date(2023, 5, 1), date(2023, 5, 9)), stats.Coverage(200, 100, 65))
    html = sp.year_page(review, [2023, 2021])
    assert 'id="year-minutes">about 1,550<' in html  # 93,000,000 ms
    assert "12 Mar 2023 (41 plays)" in html and "9 days, 1 May 2023 to 9 May 2023" in html
    assert "200 days polled, 100 imported, 65 neither (82 % covered)" in html
    assert html.split('id="top-tracks"')[1].split("</table>")[0].count('<tr class="item"') == 5
    assert html.split('id="new-artists"')[1].count('<tr class="item"') == 2
    assert '<a href="/me/years/2023" aria-current="page">2023</a>' in html and 'href="/me/years/2021"' in html
    no_external_or_script(html)


def test_the_time_zone_form_selects_the_current_zone_and_posts_with_csrf():
    html = sp.time_zone_form('<input type="hidden" name="csrf" value="x">', "Asia/Kolkata",
                             ["UTC", "Asia/Kolkata", "Europe/Paris"])
    assert '<form method="post" action="/me/time-zone"' in html and 'name="csrf"' in html
    assert "<option selected>Asia/Kolkata</option>" in html and html.count("<option") == 3
    assert '<optgroup label="Asia">' in html and '<optgroup label="Other"><option>UTC</option>' in html
