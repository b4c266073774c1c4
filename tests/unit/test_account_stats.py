"""The figures pages as a browser uses them (HttpApi events to the account function on moto): periods,
the time zone, top lists and their "more" page, the history list, track, artist and year pages.
Every figure checked is recomputed here straight from the plays table."""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from html import unescape
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo

import pytest

from playvault import clock
from playvault.history import Catalog
from playvault.spotify import Budget
from playvault.store import plays, users
from tests.unit.helpers import make_archiver
from tests.unit.test_account import Browser, Site, signed_in


@pytest.fixture
def site(load_function, lambda_context, aws_env) -> Site:
    return Site(load_function, lambda_context, aws_env)


def archive(user_id: str, tz: str = "UTC") -> list[tuple[datetime, Any, Any]]:
    """Every play of the user: (local time, the play, its names), oldest first."""
    rows = list(plays.all_plays(user_id))
    zone = ZoneInfo(tz)
    return [(clock.from_ms(int(p.played_at_ms)).astimezone(zone), p, r)
            for p, r in zip(rows, Catalog().rows(rows), strict=True)]


def ms_of(play: Any, row: Any) -> int:
    return int(play.ms_played) if play.ms_played is not None else int(row.duration_ms or 0)


def get(browser: Browser, url: str) -> dict[str, Any]:
    parts = urlsplit(unescape(url))
    return browser.get(parts.path, dict(parse_qsl(parts.query)))


def total(body: str, name: str) -> int:
    return int(re.search(rf'id="total-{name}" data-value="(\d+)"', body).group(1))


def bars(body: str, element_id: str) -> list[tuple[str, float]]:
    chart = body.split(f'id="{element_id}"', 1)[1].split("</figure>", 1)[0]
    return [(start, float(v)) for start, v in re.findall(r'data-start="([0-9-]+)" data-value="([0-9.e+-]+)"', chart)]


def top_rows(body: str, element_id: str) -> list[tuple[str, int]]:
    table = body.split(f'id="{element_id}"', 1)[1].split("</table>", 1)[0]
    return [(unescape(k), int(n)) for k, n in re.findall(r'<tr class="item" data-key="([^"]*)" data-plays="(\d+)"',
                                                          table)]


@pytest.fixture
def alice(site, aws_env, emulator) -> Browser:
    """Alice with more than one history page of plays (Spotify answers the last 50: two polls)."""
    browser = signed_in(site, aws_env, emulator, "alice")
    now = datetime.now(UTC)
    for start, end in ((now - timedelta(hours=8), now - timedelta(hours=4)), (now - timedelta(hours=4), now)):
        emulator.state.simulate_listening("alice", start, end - timedelta(minutes=1), 11)
        assert make_archiver(aws_env, emulator).archive_user("alice", Budget.seconds(30)).status == "success"
    assert plays.count("alice") > 50
    return browser


def test_all_time_figures_top_lists_and_their_pages_match_the_plays(alice):
    everything = archive("alice")
    page = alice.get("/me", {"period": "all"})
    body = page["body"]
    assert page["statusCode"] == 200 and "<script" not in body
    assert 'aria-current="page">All time<' in body
    assert total(body, "plays") == len(everything)
    assert total(body, "ms") == sum(ms_of(p, r) for _, p, r in everything)
    track_plays = Counter((r.track_id or None) for _, p, r in everything if r.item_type == "track")
    assert total(body, "tracks") == len({r.track_id or r.track_name for _, _, r in everything})
    assert sum(v for _, v in bars(body, "series-plays")) == len(everything)
    heat = [[0] * 24 for _ in range(7)]
    for moment, _, _ in everything:
        heat[moment.weekday()][moment.hour] += 1
    cells = re.findall(r'data-day="(\d)" data-hour="(\d+)" data-plays="(\d+)"', body)
    assert {(int(d), int(h)): int(n) for d, h, n in cells} == {(d, h): heat[d][h] for d in range(7) for h in range(24)}

    listed = top_rows(body, "top-tracks")
    assert 0 < len(listed) <= 10
    assert [n for _, n in listed] == sorted((n for _, n in listed), reverse=True)
    assert listed[0][1] == max(track_plays.values())
    # The first track's page, reached from the list, says the same.
    link = re.search(r'<tr class="item" data-key="[^"]*" data-plays="\d+"><td>1</td><td><a href="([^"]+)"',
                     body.split('id="top-tracks"', 1)[1]).group(1)
    track = get(alice, link)
    assert track["statusCode"] == 200 and f'id="item-plays">{listed[0][1]}<' in track["body"]
    artist_link = re.search(r'id="by">by <a href="([^"]+)"', track["body"]).group(1)
    artist = get(alice, artist_link)
    assert artist["statusCode"] == 200 and 'id="top-tracks"' in artist["body"]
    name = unescape(re.search(r"<h1>(.*?)</h1>", artist["body"]).group(1))
    heard = sum(1 for _, _, r in everything if name in r.artist_names)
    assert f'id="item-plays">{heard}<' in artist["body"]

    more = alice.get("/me/top/tracks", {"period": "all"})
    assert more["statusCode"] == 200
    assert len(top_rows(more["body"], "top-tracks")) == min(50, len({r.track_id or r.track_name
                                                                       for _, _, r in everything}))
    assert alice.get("/me/top/genres")["statusCode"] == 404
    missing = alice.get("/me/track", {"key": "0000000000000000000000"})
    assert missing["statusCode"] == 404 and "/auth/login" not in missing["body"]


def test_me_reads_the_rollups_not_every_play(alice, monkeypatch):
    """Its totals come from the rollups: a COUNT of the plays (which reads all of them) never runs."""
    expected = plays.count("alice")
    monkeypatch.setattr(plays, "count", lambda user_id: pytest.fail("/me counted every play"))
    page = alice.get("/me")
    assert page["statusCode"] == 200 and f'id="plays-total">{expected}<' in page["body"]


def test_each_period_counts_the_plays_of_its_local_days(alice):
    everything = archive("alice")
    today = datetime.now(UTC).date()
    monday = today - timedelta(days=today.weekday())
    for query, start, end in [
        ({}, today.replace(day=1), None),  # the default: this month
        ({"period": "week"}, monday, monday + timedelta(days=7)),
        ({"period": "year"}, date(today.year, 1, 1), date(today.year + 1, 1, 1)),
        ({"from": (today - timedelta(days=1)).isoformat(), "to": today.isoformat()}, today - timedelta(days=1),
         today + timedelta(days=1)),
        ({"period": str(today.year - 3)}, date(today.year - 3, 1, 1), date(today.year - 2, 1, 1)),
    ]:
        page = alice.get("/me", query)
        assert page["statusCode"] == 200, (query, page["body"][-600:])
        expected = sum(1 for moment, _, _ in everything
                       if start <= moment.date() and (end is None or moment.date() < end))
        assert total(page["body"], "plays") == expected, query
    month_ago = (today - timedelta(days=30)).isoformat()
    custom = alice.get("/me", {"from": month_ago, "to": today.isoformat()})["body"]
    assert f'name="from" value="{month_ago}"' in custom and len(bars(custom, "series-plays")) == 31
    empty = alice.get("/me", {"from": "2024-01-01", "to": "2024-01-31"})["body"]
    assert 'id="no-plays"' in empty and 'name="to" value="2024-01-31"' in empty and total(empty, "plays") == 0
    for query, bad in [({"period": "fortnight"}, "fortnight"), ({"from": "2024-02-30", "to": "2024-03-01"},
                                                                "2024-02-30"),
                       ({"from": "2024-03-02", "to": "2024-03-01"}, "2024-03-0")]:
        answer = alice.get("/me", query)
        assert answer["statusCode"] == 400 and bad in answer["body"], answer["body"]
        assert "/auth/login" not in answer["body"]


def test_a_time_zone_change_moves_days_and_hours_once_recomputed(alice, site):
    answer = alice.post("/me/time-zone", {"csrf": alice.csrf(), "zone": "Mars/Olympus_Mons"})
    assert answer["statusCode"] == 400 and "Mars/Olympus_Mons" in answer["body"]
    assert users.get("alice").time_zone in (None, "UTC")
    assert alice.post("/me/time-zone", {"csrf": "0" * 64, "zone": "Asia/Kolkata"})["statusCode"] == 403
    form = alice.get("/me/time-zone")["body"]
    assert "<option selected>UTC</option>" in form and "<option>Asia/Kolkata</option>" in form

    changed = alice.post("/me/time-zone", {"csrf": alice.csrf(), "zone": "Asia/Kolkata"})
    assert changed["statusCode"] == 303 and changed["headers"]["Location"] == "/me"
    waiting = alice.get("/me", {"period": "all"})["body"]
    assert 'id="rebuilding"' in waiting and "Asia/Kolkata" in waiting and 'id="totals"' not in waiting
    site.run_jobs()

    body = alice.get("/me", {"period": "all"})["body"]
    assert "<strong>Asia/Kolkata</strong>" in body
    everything = archive("alice", "Asia/Kolkata")
    days = Counter(moment.date().isoformat() for moment, _, _ in everything)
    shown = {start: int(v) for start, v in bars(body, "series-plays") if v}
    assert shown == dict(days) or len(days) > 62  # per day when the archive spans 62 days at most
    cells = re.findall(r'data-day="(\d)" data-hour="(\d+)" data-plays="(\d+)"', body)
    heat = Counter((m.weekday(), m.hour) for m, _, _ in everything)
    assert {(int(d), int(h)): int(n) for d, h, n in cells if int(n)} == dict(heat)
    history = alice.get("/me/history")["body"]
    newest = everything[-1][0]
    assert f"{newest:%Y-%m-%d %H:%M}" in history  # the history list is in the zone too


def test_the_history_lists_every_play_newest_first_page_by_page(alice):
    everything = archive("alice")
    seen: list[str] = []
    page = alice.get("/me/history")
    pages = 0
    while True:
        pages += 1
        assert page["statusCode"] == 200
        seen += re.findall(r'<tr class="play" data-played-at="([^"]+)"', page["body"])
        older = re.search(r'<a href="([^"]+)" id="history-older"', page["body"])
        if older is None:
            break
        assert 'id="history-newest"' in page["body"] or pages == 1
        page = get(alice, older.group(1))
    expected = [clock.from_ms(int(p.played_at_ms)).isoformat() for _, p, _ in reversed(everything)]
    assert seen == expected and pages == -(-len(everything) // 50)
    first = alice.get("/me/history")["body"]
    names = re.findall(r'<tr class="play"[^>]*><td>.*?</td><td>(?:<a href="([^"]+)">)?([^<]+)', first)
    linked = [(link, name) for link, name in names if link]
    assert linked, "tracks link to their pages"
    for link, name in linked[:3]:
        track = get(alice, link)
        assert track["statusCode"] == 200 and unescape(name) in unescape(track["body"])
    bad = alice.get("/me/history", {"before": "not-a-cursor"})
    assert bad["statusCode"] == 400 and "before" in bad["body"]


def test_the_year_in_review_is_the_signed_in_users_own(alice, site, aws_env, emulator):
    everything = archive("alice")
    year = everything[-1][0].year
    page = alice.get(f"/me/years/{year}")
    assert page["statusCode"] == 200
    in_year = [(m, p, r) for m, p, r in everything if m.year == year]
    minutes = round(sum(ms_of(p, r) for _, p, r in in_year) / 60_000)
    assert re.search(rf'id="year-minutes">(about )?{minutes:,}<', page["body"])
    busiest = Counter(m.date() for m, _, _ in in_year).most_common(1)[0][1]
    assert f"({busiest:,} plays)" in page["body"]
    assert alice.get("/me/years/1999")["statusCode"] == 404
    bad = alice.get("/me/years/nineteen")
    assert bad["statusCode"] == 400 and "nineteen" in bad["body"] and "/auth/login" not in bad["body"]
    bob = signed_in(site, aws_env, emulator, "bob")
    assert bob.get(f"/me/years/{year}")["statusCode"] == 404  # bob has no plays: alice's year is not his
    assert Browser(site).get(f"/me/years/{year}")["headers"]["Location"] == "/auth/login"
