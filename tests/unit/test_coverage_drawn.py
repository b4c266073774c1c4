"""The coverage timeline as a person reads it: import coverage only where an import read streams,
nothing "archived by polling" before the first play, and every mark drawn inside its box with text
that keeps its size on a phone."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from playvault import clock, coverage, store
from playvault.store import imports as imports_store
from playvault.store import plays, users
from tests.unit.test_importer import history, world, zipped  # noqa: F401 - the importer's fixture

DAY = 86_400_000
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def test_polling_coverage_begins_at_the_first_play():
    # signed up on day 10, first play on day 14: nothing before day 14 is drawn as archived by polling
    data = coverage.build((10 * DAY, 20 * DAY), [], [], 20 * DAY, first_play_ms=14 * DAY)
    assert [(s["kind"], s["from_ms"] // DAY, s["to_ms"] // DAY) for s in data["segments"]] == [("polling", 14, 20)]
    # no play at all: nothing archived yet
    assert coverage.build((10 * DAY, 20 * DAY), [], [], 20 * DAY, first_play_ms=None)["segments"] == []


def test_a_user_without_plays_has_nothing_archived_yet(aws_env):
    from playvault.config import ImportStatusSettings

    store.bind(ImportStatusSettings.from_env())
    users.UserModel("alice", status=users.ACTIVE, created_at=NOW - timedelta(days=30)).save()
    assert coverage.timeline("alice", NOW)["segments"] == []
    moment = NOW - timedelta(days=3)
    plays.PlayModel("alice", moment.strftime("%Y-%m-%dT%H:%M:%S.000Z"), played_at_ms=clock.to_ms(moment),
                    track_id="t" * 22).save()
    [segment] = coverage.timeline("alice", NOW)["segments"]
    assert segment["kind"] == "polling" and segment["from_ms"] == clock.to_ms(moment)


def test_an_import_covers_only_the_weeks_it_read_streams_in(world):  # noqa: F811
    # two bursts of listening a year apart: the year between is not covered by the import
    rows = history(datetime(2021, 1, 4, 10, tzinfo=UTC), 5) + history(datetime(2022, 1, 5, 10, tzinfo=UTC), 5)
    key = world.upload(zipped({"Spotify Extended Streaming History/Streaming_History_Audio_2021_0.json": rows}))
    world.run(key)
    job = world.job(key)
    assert job.stream_weeks == {"2021-01-04", "2022-01-03"}  # Mondays (UTC) of the weeks with a stream
    data = coverage.timeline("alice", world.now)
    imported = [(s["from_ms"], s["to_ms"]) for s in data["segments"] if s["kind"] == coverage.IMPORT]
    assert len(imported) == 2, data["segments"]
    assert imported[0][1] - imported[0][0] <= 7 * DAY and imported[1][1] - imported[1][0] <= 7 * DAY
    assert data["segments"][1]["kind"] == coverage.NONE  # the year between


def test_a_job_from_before_stream_weeks_covers_its_whole_span():
    job = imports_store.ImportModel("alice", "job#x", state="done", first_ms=0, last_ms=30 * DAY)
    assert coverage.import_intervals([job]) == [(0, 30 * DAY + 1)]


def _percent(value: str) -> float:
    assert value.endswith("%"), value
    return float(value[:-1])


def test_the_timeline_is_drawn_inside_its_box_with_text_of_a_fixed_size():
    start = clock.to_ms(datetime(2016, 3, 1, tzinfo=UTC))
    end = clock.to_ms(NOW)
    data = coverage.build((end - 400 * DAY, end), [(end - 100 * DAY, end - 99 * DAY)],
                          [(start, start + DAY), (start + 30 * DAY, end - 500 * DAY)], end, first_play_ms=start)
    svg = coverage.render_svg(data)
    assert 'width="100%"' in svg and "viewBox" not in svg  # stretched to the page, text never scaled down
    rects = re.findall(r'<rect class="segment [a-z]+" x="([^"]+)" y="[^"]+" width="([^"]+)"', svg)
    assert len(rects) == len(data["segments"]) >= 4
    for x, width in rects:
        assert 0 <= _percent(x) and _percent(x) + _percent(width) <= 100.0001, (x, width)
    for x, anchor in re.findall(r'<text x="([^"]+)"[^>]*text-anchor="([a-z]+)"', svg):
        where = _percent(x)
        assert 0 <= where <= 100
        assert anchor == ("start" if where < 6 else "end" if where > 94 else "middle"), (x, anchor)
    assert len(re.findall(r"<text ", svg)) <= 6  # year ticks a phone can tell apart
    legend = coverage.render(data)
    for label in coverage.LABELS.values():  # the legend is text of the page, readable at any width
        assert label in re.sub(r"<svg.*</svg>", "", legend, flags=re.S)
