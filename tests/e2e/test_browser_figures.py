"""Chromium against `serve`: ten years of listening imported from /me, then the figures pages as a
person reads them: all time, one past year, a custom range, a changed time zone (a play near
midnight moves day), the year in review, a track's and an artist's page reached from the lists, the
history list page by page, and the 390 px layout. Every figure is recomputed from the plays table.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from tests.e2e.test_browser import (
    CHROMIUM,
    LAUNCH_ARGS,
    _accessible,
    _aws,
    _browser_or_fail,
    _plays,
    _serve,
    _sign_in,
    _wait_for,
)

pytestmark = pytest.mark.browser

USER = "e2e-decade"
ZONE = "Pacific/Kiritimati"  # UTC+14 all year: an evening in UTC is the next day there
NEW_YEAR_EVE = datetime(2019, 12, 31, 20, 0, tzinfo=UTC)  # 2019 in UTC, 2020 in Kiritimati


@pytest.fixture
def served() -> Iterator[dict[str, str]]:
    yield from _serve()


@pytest.fixture
def browser():
    with _browser_or_fail()() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            yield instance
        finally:
            instance.close()


def _decade_zip() -> bytes:
    """Spotify's extended streaming history, 2016-2025: a play about every nine days at varying
    hours (40 catalog tracks), and one on New Year's Eve 2019 in the UTC evening."""
    from spotify_emulator import catalog

    tracks = [catalog.track(0, 500 + i) for i in range(40)]
    rows = []
    start = datetime(2016, 1, 1, 0, 30, tzinfo=UTC)
    moments = [start + timedelta(days=9 * n, hours=(n * 7) % 24) for n in range(406)] + [NEW_YEAR_EVE]
    for n, started in enumerate(moments):
        track = tracks[n % len(tracks)]
        ms = 150_000 + (n % 5) * 10_000
        rows.append({"ts": (started + timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                     "platform": "android", "ms_played": ms, "conn_country": "SE", "ip_addr": "192.0.2.7",
                     "master_metadata_track_name": track["name"],
                     "master_metadata_album_artist_name": track["artists"][0]["name"],
                     "master_metadata_album_album_name": track["album"]["name"],
                     "spotify_track_uri": f"spotify:track:{track['id']}", "episode_name": None,
                     "episode_show_name": None, "spotify_episode_uri": None, "reason_start": "trackdone",
                     "reason_end": "trackdone", "shuffle": False, "skipped": False, "offline": False,
                     "offline_timestamp": None, "incognito_mode": False})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("Spotify Extended Streaming History/Streaming_History_Audio_2016-2025_0.json",
                         json.dumps(rows))
    return buffer.getvalue()


class Table:
    """The user's plays as stored, with what the figures need of each."""

    def __init__(self, info: dict[str, str]):
        items = _plays(info, USER)
        ddb = _aws(info, "dynamodb")
        ids = sorted({p["track_id"]["S"] for p in items if p.get("track_id", {}).get("S")})
        self.tracks = {}
        for i in range(0, len(ids), 100):
            answer = ddb.batch_get_item(RequestItems={"playvault-local-TracksTable": {
                "Keys": [{"track_id": {"S": t}} for t in ids[i:i + 100]]}})
            for row in answer["Responses"]["playvault-local-TracksTable"]:
                self.tracks[row["track_id"]["S"]] = row
        self.plays = []  # (start in ms, track id, ms listened)
        for p in items:
            track_id = p.get("track_id", {}).get("S")
            if "ms_played" in p:
                ms = int(p["ms_played"]["N"])
            else:
                ms = int(self.tracks[track_id]["duration_ms"]["N"]) if track_id in self.tracks else 0
            self.plays.append((int(p["played_at_ms"]["N"]), track_id, ms))

    def local(self, tz: str) -> list[tuple[datetime, str | None, int]]:
        zone = ZoneInfo(tz)
        return [(datetime.fromtimestamp(ms / 1000, UTC).astimezone(zone), t, n) for ms, t, n in self.plays]

    def between(self, tz: str, first: date, last: date) -> list[tuple[datetime, str | None, int]]:
        return [p for p in self.local(tz) if first <= p[0].date() <= last]


def _total(page, name: str) -> int:
    return int(page.locator(f"#total-{name}").get_attribute("data-value"))


def test_ten_years_on_the_figures_pages(browser, served):
    login_url = served["sign in"]
    base = login_url.rsplit("/auth/login", 1)[0]
    page = browser.new_page()
    page.set_default_timeout(120_000)  # a page waits while `serve` runs the importer (one function at a time)
    _sign_in(page, login_url, USER)
    _wait_for(page, lambda: int(page.locator("#plays-total").inner_text()) > 0, "the first poll")
    page.set_input_files("#import-file", files=[{"name": "my_spotify_data.zip", "mimeType": "application/zip",
                                                "buffer": _decade_zip()}])
    page.click("#import-upload")
    page.wait_for_load_state()
    _wait_for(page, lambda: page.locator("#imports tr.import").count() > 0
              and page.locator("#imports tr.import").first.get_attribute("data-state") == "done", "the import", 240)
    # All time (once the rollups are recomputed with the names the import looked up): every play,
    # every millisecond, and the ten years in the picker.
    page.goto(f"{base}/me?period=all")
    _wait_for(page, lambda: page.locator("#totals").count() == 1, "the figures after the import", 180)
    table = Table(served)
    assert len(table.plays) > 400
    assert _total(page, "plays") == len(table.plays)
    assert _total(page, "ms") == sum(ms for _, _, ms in table.plays)
    years = page.locator("#periods a").all_inner_texts()
    assert [str(y) for y in range(2025, 2015, -1)] <= years
    assert page.locator("#series-plays .bar").count() > 100  # per month
    _accessible(page, "all time")

    # One past year, picked from the links.
    page.click("#periods a:text-is('2019')")
    page.wait_for_load_state()
    in_2019 = table.between("UTC", date(2019, 1, 1), date(2019, 12, 31))
    assert _total(page, "plays") == len(in_2019) and page.locator("#series-plays .bar").count() == 53  # weeks
    # The year in review of 2019.
    page.click("#year-review")
    page.wait_for_load_state()
    minutes = round(sum(ms for _, _, ms in in_2019) / 60_000)
    assert page.locator("#year-minutes").inner_text() == f"{minutes:,}"
    busiest = max(sum(1 for p in in_2019 if p[0].date() == d) for d in {p[0].date() for p in in_2019})
    assert f"({busiest:,} plays)" in page.locator("#year-busiest-day").inner_text()
    _accessible(page, "the year in review")

    # A custom range through the form.
    page.goto(f"{base}/me")
    page.fill("#custom-period input[name=from]", "2020-02-01")
    page.fill("#custom-period input[name=to]", "2020-02-29")
    page.click("#custom-period button")
    page.wait_for_load_state()
    assert _total(page, "plays") == len(table.between("UTC", date(2020, 2, 1), date(2020, 2, 29)))
    assert page.locator("#series-plays .bar").count() == 29

    # A track's page from the top list, and its artist's page from there.
    page.goto(f"{base}/me?period=all")
    first = page.locator("#top-tracks tr.item").first
    track_id = first.get_attribute("data-key")
    first.locator("a").first.click()
    page.wait_for_load_state()
    assert int(page.locator("#item-plays").inner_text().replace(",", "")) == sum(
        1 for _, t, _ in table.plays if t == track_id)
    _accessible(page, "a track's page")
    artist_id = table.tracks[track_id]["artist_ids"]["L"][0]["S"]
    page.locator("#by a").first.click()
    page.wait_for_load_state()
    heard = sum(1 for _, t, _ in table.plays if t in table.tracks
                and artist_id in [a["S"] for a in table.tracks[t]["artist_ids"]["L"]])
    assert int(page.locator("#item-plays").inner_text().replace(",", "")) == heard
    _accessible(page, "an artist's page")

    # The history list, three pages back: newest first, contiguous.
    page.goto(f"{base}/me/history")
    _accessible(page, "the history")
    seen: list[str] = []
    for _ in range(3):
        seen += [row.get_attribute("data-played-at") for row in page.locator("#history tr.play").all()]
        page.click("#history-older")
        page.wait_for_load_state()
    shown = [int(datetime.fromisoformat(s).timestamp() * 1000) for s in seen]
    stored = sorted((ms for ms, _, _ in Table(served).plays), reverse=True)  # polling goes on meanwhile
    assert len(shown) == 150 and shown == [ms for ms in stored if shown[-1] <= ms <= shown[0]]

    # 390 px: the figures fit the screen and their text stays readable.
    phone = page
    phone.set_viewport_size({"width": 390, "height": 800})
    phone.goto(f"{base}/me?period=all")
    for selector in ("#periods", "#custom-period", "#totals", "#series-plays", "#series-time", "#heatmap",
                     "#top-tracks", "#top-artists"):
        box = phone.locator(selector).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, (selector, box)
    sizes = phone.eval_on_selector_all(".chart .y span, .chart .x span, #heatmap td, #top-tracks td",
                                       "nodes => nodes.map(n => parseFloat(getComputedStyle(n).fontSize))")
    assert sizes and min(sizes) >= 11, min(sizes)

    page.set_viewport_size({"width": 1280, "height": 800})
    # A time zone far east: the New Year's Eve play moves into 2020, once the figures are recomputed.
    page.goto(f"{base}/me/time-zone")
    _accessible(page, "the time zone form")
    page.select_option("#zone", ZONE)
    page.click("#time-zone-form button")
    page.wait_for_load_state()
    assert page.locator("#rebuilding").count() == 1 or page.locator("#totals").count() == 1
    page.goto(f"{base}/me?period=2019")
    _wait_for(page, lambda: page.locator("#totals").count() == 1, "the figures in the new zone", 120)
    assert ZONE in page.locator("#time-zone").inner_text()
    kiritimati_2019 = table.between(ZONE, date(2019, 1, 1), date(2019, 12, 31))
    assert _total(page, "plays") == len(kiritimati_2019) != len(in_2019)
    page.goto(f"{base}/me?from=2020-01-01&to=2020-01-01")
    assert _total(page, "plays") == len(table.between(ZONE, date(2020, 1, 1), date(2020, 1, 1))) >= 1
    hours = [int(re.match(r"\d+", h).group()) for h in page.locator("#heatmap td[data-plays]:not([data-plays='0'])")
             .evaluate_all("cells => cells.map(c => c.dataset.hour)")]
    expected = {p[0].hour for p in table.between(ZONE, date(2020, 1, 1), date(2020, 1, 1))}
    assert set(hours) == expected
