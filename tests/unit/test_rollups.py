"""Rollups (playvault.rollups): periods, and figures that always equal a recomputation straight from
the plays table, whatever the history, the writers, the time zone, crashes and concurrent recomputes.

The reference (`recount`) reads every play of the user and names it through history.enriched (the
readers' best_names), then counts by each play's own local date: nothing of the rollups' code."""

from __future__ import annotations

import threading
import uuid
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from playvault import clock, history, identity, rollups, stats
from playvault.normalize import Album, Artist, Episode, Play, Track, canonical_played_at, canonical_played_at_ms
from playvault.store import catalog, plays, users
from playvault.store import rollups as store

TODAY = date(2026, 12, 3)
ZONES = ["UTC", "Europe/London", "America/New_York", "Asia/Kolkata", "Australia/Adelaide", "America/St_Johns",
         "Pacific/Chatham", "Asia/Kathmandu", "Pacific/Kiritimati", "Etc/GMT+12", "America/Santiago"]


# ------------------------------------------------------------------------------------------- periods
def test_named_periods_in_the_users_zone():
    week = rollups.resolve_period("week", None, None, "Europe/Paris", date(2026, 12, 3))  # a Thursday
    assert (week.kind, week.start, week.end, week.label) == (stats.WEEK, date(2026, 11, 30), date(2026, 12, 7),
                                                             "This week")
    month = rollups.resolve_period(None, None, None, "UTC", date(2024, 2, 10))
    assert (month.kind, month.start, month.end, month.days) == (stats.MONTH, date(2024, 2, 1), date(2024, 3, 1), 29)
    year = rollups.resolve_period("2023", "", "", "UTC", TODAY)
    assert (year.kind, year.start, year.end, year.label, year.spec) == (stats.YEAR, date(2023, 1, 1),
                                                                        date(2024, 1, 1), "2023", "2023")
    assert rollups.resolve_period("all", None, None, "UTC", TODAY).kind == stats.ALL


def test_a_custom_period_is_inclusive_in_the_url_and_exclusive_in_the_period():
    custom = rollups.resolve_period(None, "2024-03-01", "2024-03-31", "Asia/Kolkata", TODAY)
    assert (custom.kind, custom.start, custom.end, custom.spec) == (stats.CUSTOM, date(2024, 3, 1),
                                                                    date(2024, 4, 1), "2024-03-01..2024-03-31")
    assert custom.label == "1 Mar 2024 to 31 Mar 2024"
    again = rollups.resolve_period(custom.spec, None, None, "Asia/Kolkata", TODAY)
    assert again == custom


@pytest.mark.parametrize(("spec", "from_", "to", "named"), [
    ("decade", None, None, "'decade'"),
    ("1800", None, None, "'1800'"),
    ("2031", None, None, "'2031'"),
    (None, "2024-02-30", "2024-03-01", "'2024-02-30'"),
    (None, "2024-03-02", "2024-03-01", "from 2024-03-02 is after to 2024-03-01"),
    (None, "2024-03-02", None, "both from and to"),
    ("week", "2024-03-01", "2024-03-02", "'week'"),
    (None, "1900-01-01", "2024-01-01", "more than 100 years"),
])
def test_a_bad_period_is_refused_naming_the_bad_value(spec, from_, to, named):
    with pytest.raises(rollups.BadPeriod) as refused:
        rollups.resolve_period(spec, from_, to, "UTC", TODAY)
    assert named in str(refused.value)


def test_a_bad_time_zone_is_refused_naming_it():
    with pytest.raises(rollups.BadTimeZone, match="'Mars/Olympus'"):
        rollups.zone("Mars/Olympus")
    with pytest.raises(rollups.BadPeriod, match="'Nowhere'"):
        rollups.resolve_period("month", None, None, "Nowhere", TODAY)


def test_previous_periods_and_series_units():
    month = rollups.resolve_period("month", None, None, "UTC", date(2024, 3, 15))
    assert rollups.previous_period(month).start == date(2024, 2, 1)
    assert rollups.previous_period(month).end == date(2024, 3, 1)
    custom = rollups.resolve_period(None, "2024-03-10", "2024-03-19", "UTC", TODAY)
    before = rollups.previous_period(custom)
    assert (before.start, before.end) == (date(2024, 2, 29), date(2024, 3, 10))
    assert rollups.previous_period(rollups.resolve_period("all", None, None, "UTC", TODAY)) is None
    assert [rollups.series_unit(n) for n in (7, 62, 63, 366, 372)] == [stats.DAY, stats.DAY, stats.WEEK,
                                                                      stats.WEEK, stats.MONTH]


def test_a_utc_date_overlaps_the_local_days_around_it():
    assert rollups.local_days_of_utc_date(date(2024, 3, 5), ZoneInfo("UTC")) == [date(2024, 3, 5)]
    assert rollups.local_days_of_utc_date(date(2024, 3, 5), ZoneInfo("Asia/Kolkata")) == [date(2024, 3, 5),
                                                                                         date(2024, 3, 6)]
    assert rollups.local_days_of_utc_date(date(2024, 3, 5), ZoneInfo("Etc/GMT+12")) == [date(2024, 3, 4),
                                                                                       date(2024, 3, 5)]


# ------------------------------------------------------------------------------------------- catalog
ARTISTS = [Artist("ar1", "Nia Vale", None), Artist("ar2", "The Lanterns", None), Artist("ar3", "Okobi", None)]
ALBUMS = [Album("al1", "First Light", None, "album", "2020", None, (ARTISTS[0],)),
          Album("al2", "Harbour", None, "album", "2021", None, (ARTISTS[1],))]
TRACKS = [Track("tr1", "Velvet Garden", None, 201_000, False, False, ALBUMS[0], (ARTISTS[0],)),
          Track("tr2", "Velvet Garden", None, 187_000, False, False, ALBUMS[1], (ARTISTS[1], ARTISTS[2])),
          Track("tr3", "Low Tide", None, 240_500, False, False, ALBUMS[1], (ARTISTS[1],))]
EPISODE = Episode("ep1", "Episode 12", None, 1_800_000, "sh1", "Night Radio")


def fill_catalog() -> None:
    catalog.upsert_tracks(TRACKS)
    catalog.upsert_episodes([EPISODE])


# A play: (offset from the start in minutes, what) with what in
#   ("poll", track index)          a polled play (write_plays)
#   ("export", track index, ms)    an export row with ids and ms_played
#   ("named", ms)                  an export row known only by names (no ids)
#   ("episode",)                   a polled podcast episode
WHAT = st.one_of(
    st.tuples(st.just("poll"), st.integers(0, 2)),
    st.tuples(st.just("export"), st.integers(0, 2), st.integers(30_000, 400_000)),
    st.tuples(st.just("named"), st.integers(30_000, 400_000)),
    st.tuples(st.just("episode")),
)
START = datetime(2023, 12, 29, 21, 30, tzinfo=UTC)


def _polled(ms: int, what: tuple) -> Play:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    if what[0] == "episode":
        return Play(canonical_played_at(moment), ms, None, episode=EPISODE)
    return Play(canonical_played_at(moment), ms, TRACKS[what[1]])


def _export_row(user_id: str, ms: int, what: tuple, ref: str) -> plays.PlayModel:
    key = canonical_played_at_ms(ms)
    if what[0] == "named":
        return plays.PlayModel(user_id, key, played_at_ms=ms, source=plays.SOURCE_EXPORT, track_name="Paper Boats",
                               artist_name="Mira Holt", album_name="Paper", ms_played=what[1], unresolved=True,
                               import_ref=ref, precision_ms=1000)
    track = TRACKS[what[1]]
    return plays.PlayModel(user_id, key, played_at_ms=ms, source=plays.SOURCE_EXPORT, track_id=track.track_id,
                           track_name=track.name, artist_name=track.artists[0].name, album_name=track.album.name,
                           ms_played=what[2], import_ref=ref, precision_ms=1000)


def write(user_id: str, batch: list[tuple[int, tuple]]) -> None:
    """The writers' own order: the dates marked dirty, then the plays written (no recompute)."""
    polled = [_polled(ms, what) for ms, what in batch if what[0] in ("poll", "episode")]
    rows, keys = [], set()
    for ms, what in batch:
        if what[0] in ("export", "named"):
            while ms in keys:  # two rows at one key: the second takes the next free millisecond, as the importer's
                ms += 1
            keys.add(ms)
            rows.append(_export_row(user_id, ms, what, f"job:0:{ms}"))
    rollups.mark(user_id, [p.played_at_ms for p in polled] + sorted(keys))
    plays.write_plays(user_id, polled)
    plays.write_rows(rows)
    if rows and polled:
        # Export rows the identity rule calls polled plays: merged (the reconcile marks its own dates).
        low, high = min(ms for ms, _ in batch), max(ms for ms, _ in batch) + len(rows)
        plays.reconcile(user_id, low, high, identity.DEFAULT_TOLERANCE_S * 1000)


# ------------------------------------------------------------------------------------------ reference
def recount(user_id: str, tz: str, start: date, end: date) -> dict[str, Any]:
    """Straight from the plays table: every play, named as readers name it, kept by its local date."""
    where = ZoneInfo(tz)
    out: dict[str, Any] = {"plays": 0, "ms": 0, "est": False, "series": Counter(), "heat": [[0] * 24 for _ in range(7)],
                           "tracks": defaultdict(lambda: [0, 0]), "artists": defaultdict(lambda: [0, 0]),
                           "albums": defaultdict(lambda: [0, 0]), "shows": defaultdict(lambda: [0, 0]),
                           "days": set()}
    everything = list(plays.all_plays(user_id))
    for play, row in zip(everything, history.enriched(everything), strict=True):
        moment = datetime.fromtimestamp(int(play.played_at_ms) // 1000, where)
        out["days"].add(moment.date())
        if not start <= moment.date() < end:
            continue
        ms = int(play.ms_played) if play.ms_played is not None else int(row.duration_ms or 0)
        out["plays"] += 1
        out["ms"] += ms
        out["est"] |= play.ms_played is None
        out["series"][moment.date()] += 1
        out["heat"][moment.weekday()][moment.hour] += 1
        if row.item_type == "episode":
            out["shows"][rollups.name_key(row.show_name)][0] += 1
            out["shows"][rollups.name_key(row.show_name)][1] += ms
            continue
        first = row.artist_names[0] if row.artist_names else None
        for kind, key in [("tracks", row.track_id or rollups.name_key(row.track_name, first)),
                          ("albums", row.album_id or rollups.name_key(row.album_name, first)),
                          *[("artists", a or rollups.name_key(n)) for a, n in
                            dict.fromkeys(zip(row.artist_ids, row.artist_names, strict=True))]]:
            out[kind][key][0] += 1
            out[kind][key][1] += ms
    return out


def assert_matches(figures: stats.Figures, user_id: str, tz: str) -> None:
    period = figures.period
    truth = recount(user_id, tz, period.start, period.end)
    totals = figures.totals
    assert (totals.plays, totals.ms, totals.ms_estimated) == (truth["plays"], truth["ms"], truth["est"]), period
    assert (totals.tracks, totals.artists, totals.albums) == (len(truth["tracks"]), len(truth["artists"]),
                                                              len(truth["albums"])), period
    for ranked, kind in ((figures.top_tracks, "tracks"), (figures.top_artists, "artists"),
                         (figures.top_albums, "albums"), (figures.top_shows, "shows")):
        assert {r.key: [r.plays, r.ms] for r in ranked} == dict(truth[kind]), (period, kind)
        assert [(r.plays, r.ms) for r in ranked] == sorted(((r.plays, r.ms) for r in ranked), reverse=True)
    per_day = Counter({b.start: b.plays for b in figures.series}) if figures.series_unit == stats.DAY else None
    if per_day is not None:
        assert +per_day == +truth["series"], period
    assert sum(b.plays for b in figures.series) == truth["plays"]
    assert figures.heatmap == truth["heat"], period
    assert figures.first_play == min(truth["days"], default=None)
    assert figures.last_play == max(truth["days"], default=None)
    before = rollups.previous_period(period)
    if before is not None:
        earlier = recount(user_id, tz, before.start, before.end)
        assert (figures.previous.plays, figures.previous.ms) == (earlier["plays"], earlier["ms"])


def new_user(tz: str = "UTC") -> users.UserModel:
    user = users.UserModel(f"u-{uuid.uuid4().hex[:10]}", status=users.ACTIVE, time_zone=tz)
    user.save()
    return user


def periods_for(tz: str) -> list[stats.Period]:
    return [rollups.resolve_period(spec, f, t, tz, date(2024, 1, 20)) for spec, f, t in (
        ("all", None, None), ("2023", None, None), ("2024", None, None), ("month", None, None),
        ("week", None, None), (None, "2023-12-30", "2024-01-02"), (None, "2023-12-31", "2023-12-31"))]


# ------------------------------------------------------------------------------------ the property
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(history_=st.lists(st.lists(st.tuples(st.integers(0, 6 * 24 * 60), WHAT), min_size=1, max_size=6),
                         min_size=1, max_size=5),
       tz=st.sampled_from(ZONES), settle_after=st.sets(st.integers(0, 4)), data=st.data())
def test_rollups_equal_a_recomputation_from_the_plays(aws_env, history_, tz, settle_after, data):
    """Random histories near a new year (both writers, merges, late plays, days near midnight) in a
    random zone: after any sequence of writes and recomputes, every figure of every period equals
    the plays table's. Batches written without a recompute after them are the crash case."""
    fill_catalog()
    user = new_user(tz)
    if tz != "UTC":
        rollups.change_time_zone(user.user_id, tz, queue=None)
        while rollups.rebuild(user.user_id, store.state(user.user_id).gen, _Plenty()) is not None:
            pass
    for index, batch in enumerate(history_):
        write(user.user_id, [(_ms(minutes), what) for minutes, what in batch])
        if index in settle_after:
            rollups.settle(user.user_id)
    period = data.draw(st.sampled_from(periods_for(tz)))
    assert_matches(rollups.figures(user, period, START), user.user_id, tz)


def _ms(minutes: int) -> int:
    return int((START + timedelta(minutes=minutes)).timestamp() * 1000) + minutes % 1000


class _Plenty:
    def remaining_s(self) -> float:
        return 600.0


# ----------------------------------------------------------------------------- crashes and races
class ProcessKilled(BaseException):
    """The process ends mid-recompute (a Lambda timeout): nothing after it runs."""


def _history(user_id: str) -> None:
    write(user_id, [(_ms(10), ("poll", 0)), (_ms(200), ("export", 1, 120_000)), (_ms(1500), ("named", 90_000))])
    write(user_id, [(_ms(1510), ("poll", 2)), (_ms(3000), ("episode",)), (_ms(3001), ("export", 0, 200_500))])


def test_a_crash_between_the_plays_and_the_recompute_leaves_the_dates_dirty(aws_env, monkeypatch):
    fill_catalog()
    user = new_user()
    _history(user.user_id)  # marked and written, never recomputed: a writer that died after its plays
    assert store.dirty(user.user_id)
    real_month = rollups.recompute_month
    calls = {"n": 0}

    def die_once(where, month):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ProcessKilled("timed out after the day items")
        return real_month(where, month)

    monkeypatch.setattr(rollups, "recompute_month", die_once)
    with pytest.raises(ProcessKilled):
        rollups.settle(user.user_id)
    assert store.dirty(user.user_id), "a recompute that did not finish clears nothing"
    for period in periods_for("UTC"):
        assert_matches(rollups.figures(user, period, START), user.user_id, "UTC")
    assert store.dirty(user.user_id) == {}


def test_a_recompute_that_read_older_plays_never_overwrites_a_newer_one(aws_env, monkeypatch):
    """A reads the day's plays; a writer adds one (marking the date) and B recomputes and clears;
    A's put is refused (B moved the version on) and A reads again: the day holds the new play."""
    fill_catalog()
    user = new_user()
    write(user.user_id, [(_ms(10), ("poll", 0))])
    real_rows = rollups._day_rows
    interleaved = {"done": False}

    def rows_then_interleave(user_id, day, where_zone, catalog_):
        rows = real_rows(user_id, day, where_zone, catalog_)
        if not interleaved["done"]:
            interleaved["done"] = True
            write(user.user_id, [(_ms(20), ("poll", 1))])
            assert rollups.settle(user.user_id) == 1  # B: recomputes and clears the new mark
        return rows

    monkeypatch.setattr(rollups, "_day_rows", rows_then_interleave)
    rollups.settle(user.user_id)  # A
    monkeypatch.setattr(rollups, "_day_rows", real_rows)
    day = store.get(user.user_id, "g0#day#" + START.date().isoformat())
    assert store.decode(day.data)["plays"] == 2 and int(day.version) == 2  # B put 1, A (refused, again) 2
    assert_matches(rollups.figures(user, periods_for("UTC")[0], START), user.user_id, "UTC")


def test_concurrent_recomputes_and_writers_end_equal_to_the_plays(aws_env):
    fill_catalog()
    user = new_user()
    _history(user.user_id)
    errors: list[BaseException] = []

    def settle_some() -> None:
        try:
            for _ in range(2):
                rollups.settle(user.user_id)
        except rollups.Contended:
            pass  # given up under contention: the date stays dirty, the view settles it
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def writer() -> None:
        try:
            write(user.user_id, [(_ms(1520), ("poll", 1)), (_ms(4000), ("export", 2, 61_000))])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=settle_some) for _ in range(3)] + [threading.Thread(target=writer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for period in periods_for("UTC"):
        assert_matches(rollups.figures(user, period, START), user.user_id, "UTC")


# ------------------------------------------------------------------------------- time zone, rebuild
def test_a_bad_time_zone_changes_nothing(aws_env):
    user = new_user()
    with pytest.raises(rollups.BadTimeZone, match="'Europe/Atlantis'"):
        rollups.change_time_zone(user.user_id, "Europe/Atlantis", queue=None)
    assert users.get(user.user_id).time_zone == "UTC"
    assert store.get(user.user_id, store.STATE_KEY, consistent=True) is None


def test_a_time_zone_change_rebuilds_the_rollups_and_a_play_near_midnight_moves_day(aws_env, load_function,
                                                                                     lambda_context):
    """Through the jobs function (its role checked): figures only once the rebuild is done; the old
    generation deleted after."""
    from playvault.jobs import JobQueue
    from tests.unit.test_account import Site

    fill_catalog()
    user = new_user()
    near_midnight = int(datetime(2024, 1, 5, 23, 30, tzinfo=UTC).timestamp() * 1000)
    write(user.user_id, [(near_midnight, ("poll", 0)), (near_midnight - 86_400_000, ("poll", 1))])
    custom = rollups.resolve_period(None, "2024-01-04", "2024-01-07", "UTC", TODAY)
    utc_days = {b.start: b.plays for b in rollups.figures(user, custom, START).series}
    assert (utc_days[date(2024, 1, 4)], utc_days[date(2024, 1, 5)], utc_days[date(2024, 1, 6)]) == (1, 1, 0)
    site = Site(load_function, lambda_context, aws_env)
    queue = JobQueue(site.sqs, site.jobs_queue)

    state = rollups.change_time_zone(user.user_id, "Asia/Tokyo", queue)
    assert (state.tz, state.rebuilding, state.percent) == ("Asia/Tokyo", True, 0)
    assert users.get(user.user_id).time_zone == "Asia/Tokyo"
    with pytest.raises(rollups.Recomputing, match="Asia/Tokyo"):
        rollups.figures(user, custom, START)
    assert rollups.change_time_zone(user.user_id, "Asia/Tokyo", queue).rebuilding  # no second rebuild
    assert site.run_jobs() == 1
    assert rollups.rebuild_state(user) == rollups.RebuildState("Asia/Tokyo", False, 100)
    tokyo = rollups.resolve_period(None, "2024-01-04", "2024-01-07", "Asia/Tokyo", TODAY)
    figures = rollups.figures(user, tokyo, START)
    days = {b.start: b.plays for b in figures.series}
    assert (days[date(2024, 1, 5)], days[date(2024, 1, 6)]) == (1, 1)  # 23:30 UTC is 08:30 the next day
    assert_matches(figures, user.user_id, "Asia/Tokyo")
    assert [i.bucket for i in store.under(user.user_id, "g0#", consistent=True)] == []
    assert rollups.change_time_zone(user.user_id, "Asia/Tokyo", queue).rebuilding is False  # nothing to do
    assert site.run_jobs() == 0


def test_a_rebuild_resumes_from_its_checkpoints(aws_env, monkeypatch):
    """Pages of 3 plays and a budget that runs out after two: several steps, each resuming where the
    last checkpoint says (never past a play of a day not yet written), days split across pages
    written whole."""
    fill_catalog()
    user = new_user()
    _history(user.user_id)
    write(user.user_id, [(_ms(m), ("poll", m % 3)) for m in range(3020, 3040, 2)])
    monkeypatch.setattr(rollups, "REBUILD_PAGE", 3)

    class OneStep:
        def __init__(self) -> None:
            self.calls = 0

        def remaining_s(self) -> float:
            self.calls += 1
            return 600.0 if self.calls == 1 else 0.0

    gen = rollups.start_rebuild(user.user_id, None, "America/St_Johns")
    steps = 1
    while rollups.rebuild(user.user_id, gen, OneStep()) is not None:
        steps += 1
        assert steps < 100
    assert steps >= 3
    for period in periods_for("America/St_Johns"):
        assert_matches(rollups.figures(user, period, START), user.user_id, "America/St_Johns")


def test_a_rollups_message_without_a_generation_starts_a_rebuild(aws_env, load_function, lambda_context):
    """The migration of a deployment without rollups: one message per user."""
    from playvault.jobs import JobMessage, JobQueue
    from tests.unit.test_account import Site

    fill_catalog()
    user = new_user()
    plays.write_plays(user.user_id, [_polled(_ms(5), ("poll", 0))])  # written before rollups existed: no mark
    site = Site(load_function, lambda_context, aws_env)
    JobQueue(site.sqs, site.jobs_queue).send(JobMessage(kind="rollups", user_id=user.user_id))
    assert site.run_jobs() == 1
    assert store.state(user.user_id).gen == 1
    assert_matches(rollups.figures(user, periods_for("UTC")[0], START), user.user_id, "UTC")


# ------------------------------------------------------------------------ year review, item pages
def test_year_review_and_item_pages_equal_the_plays(aws_env):
    from playvault import store as models
    from playvault.config import AccountSettings

    models.bind(AccountSettings.from_env())  # the account function's tables: coverage reads imports and gaps
    fill_catalog()
    user = new_user()
    _history(user.user_id)  # 29 Dec 2023 .. 31 Dec 2023
    write(user.user_id, [(_ms(m), ("poll", 1)) for m in (4400, 5800, 7200)])  # 1, 2 and 3 January 2024
    user.created_at = datetime(2024, 7, 1, tzinfo=UTC)  # polled from then on (no gap, no import)
    user.save()
    review = rollups.year_review(user, 2024, datetime(2025, 2, 1, tzinfo=UTC))
    assert review.figures.series_unit == stats.MONTH and len(review.figures.series) == 12
    assert_matches(review.figures, user.user_id, "UTC")
    # tr2's artists were heard in 2023 already (tr2 exported on 30 December): none is new in 2024.
    assert [a.key for a in review.new_artists] == []
    assert review.longest_streak == stats.Streak(3, date(2024, 1, 1), date(2024, 1, 3))
    assert review.busiest_day == (date(2024, 1, 1), 1)
    assert review.coverage == stats.Coverage(polled_days=184, imported_days=0, neither_days=182)
    earlier = rollups.year_review(user, 2023, START)
    assert {a.key for a in earlier.new_artists} == {"ar1", "ar2", "ar3", rollups.name_key("Mira Holt")}
    assert rollups.years_with_plays(user) == [2023, 2024]

    page = rollups.track_page(user, "tr2", START)
    everything = list(plays.all_plays(user.user_id))
    of_tr2 = [p for p in everything if p.track_id == "tr2"]
    assert page.plays == len(of_tr2) == 4
    assert (page.first_play, page.last_play) == (date(2023, 12, 30), date(2024, 1, 3))
    assert [(b.label, b.plays) for b in page.per_month] == [("2023-12", 1), ("2024-01", 3)]
    assert [a.name for a in page.artists] == ["The Lanterns", "Okobi"]
    assert page.artists[0].link == rollups.ARTIST_LINK.format("ar2")
    artist = rollups.artist_page(user, "ar2", START)
    assert artist.plays == len([p for p in everything if p.track_id in ("tr2", "tr3")])
    assert [(t.key, t.plays) for t in artist.top_tracks] == [("tr2", 4), ("tr3", 1)]
    assert rollups.track_page(user, "nope", START) is None


def test_an_import_that_looked_tracks_up_has_its_rollups_rebuilt(aws_env, load_function, lambda_context,
                                                                 lambda_invocations):
    """Through the importer and jobs functions: the chunks recompute their dates as they go, with the
    export's names (the tracks unknown yet); the lookups then give them albums and artist ids, so
    the import ends by starting a rebuild, after which the figures equal the plays again."""
    import boto3

    from playvault import imports
    from tests.unit.helpers import ImportContinuations, upload_export
    from tests.unit.test_account import Site
    from tests.unit.test_importer_function import export_zip

    clock.set_clock(lambda: START)
    importer = load_function("ImporterFunction")
    user = new_user()
    s3 = boto3.client("s3")
    bucket = aws_env.name("UserFilesBucket")
    _key, event = upload_export(s3, bucket, user.user_id, START, export_zip(12))
    context = lambda_context("ImporterFunction")
    importer(event, context)
    # The import's continuations, and nothing else yet: the rebuild starts when the import is done.
    delivery = ImportContinuations(aws_env, load_function, lambda_context, lambda_invocations, importer, context)
    while imports.status_for_user(user.user_id, START)[0]["state"] != "done":
        assert delivery.step(), "the import stopped before it was done"
    assert imports.status_for_user(user.user_id, START)[0]["state"] == "done"
    assert rollups.rebuild_state(user).rebuilding
    assert Site(load_function, lambda_context, aws_env).run_jobs() == 1
    figures = rollups.figures(user, rollups.resolve_period("all", None, None, "UTC", TODAY), START)
    assert figures.totals.plays == 12 and figures.top_albums and not figures.top_albums[0].key.startswith("n:")
    assert_matches(figures, user.user_id, "UTC")


def test_a_day_counts_as_covered_by_what_covered_any_of_it(monkeypatch):
    """Found on the year page: a user who signed up this morning read "0 days polled" (each day was
    judged by its local noon). A day counts as polled when polling covered any of it, else as
    imported when an import did, else neither."""
    where = ZoneInfo("Europe/Berlin")
    now = datetime(2026, 3, 10, 9, 30, tzinfo=UTC)  # 10:30 in Berlin
    signed_up = clock.to_ms(datetime(2026, 3, 10, 7, 0, tzinfo=UTC))
    imported = (clock.to_ms(datetime(2026, 3, 2, 20, 0, tzinfo=UTC)),
                clock.to_ms(datetime(2026, 3, 3, 1, 0, tzinfo=UTC)))
    segments = [{"from_ms": imported[0], "to_ms": imported[1], "kind": "import"},
                {"from_ms": signed_up, "to_ms": clock.to_ms(now), "kind": "polling"}]
    monkeypatch.setattr(rollups.coverage, "timeline", lambda user_id, now: {"segments": segments})
    got = rollups.year_coverage("u", 2026, where, now)
    # 1 Jan to 10 Mar in Berlin: 69 days; 10 Mar polled; 2 and 3 Mar (21:00 to 02:00 local) imported
    assert (got.polled_days, got.imported_days, got.neither_days) == (1, 2, 66)
