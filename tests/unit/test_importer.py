"""The import job on moto (every resource of template.yaml) and the in-process Spotify emulator:
plays written once, duplicates with polling avoided, re-imports inert, crash and 429 safe, bad
input refused with a clear status and nothing written."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters

from playvault import clock, store
from playvault import imports as import_ids
from playvault.config import ImporterSettings
from playvault.imports import issue_upload_id, status_for_user, upload_id_key
from playvault.imports import job as job_mod
from playvault.imports.job import Importer, ImportSettings
from playvault.imports.sources import Caps
from playvault.normalize import canonical_played_at, parse_track
from playvault.spotify import Budget
from playvault.store import catalog, imports, plays, state, users
from spotify_emulator import catalog as emulator_catalog
from tests.unit.helpers import UPLOAD_ID_KEY, ProcessKilled, kill_at_advance, make_spotify, ssm_refusing

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
SEED = 7  # the conftest emulator's seed


def track(i: int) -> dict:
    return emulator_catalog.track(SEED, i)


def stream(moment: datetime, i: int, ms_played: int = 200_000, **extra) -> dict:
    t = track(i)
    row = {"ts": moment.strftime("%Y-%m-%dT%H:%M:%SZ"), "platform": "linux", "ms_played": ms_played,
           "conn_country": "SE", "ip_addr": "192.0.2.7", "master_metadata_track_name": t["name"],
           "master_metadata_album_artist_name": t["artists"][0]["name"],
           "master_metadata_album_album_name": t["album"]["name"], "spotify_track_uri": t["uri"],
           "episode_name": None, "episode_show_name": None, "spotify_episode_uri": None, "reason_start": "trackdone",
           "reason_end": "trackdone", "shuffle": False, "skipped": False, "offline": False,
           "offline_timestamp": int(moment.timestamp()), "incognito_mode": False}
    row.update(extra)
    return row


def zipped(files: dict[str, object]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content if isinstance(content, bytes | str) else json.dumps(content))
    return buffer.getvalue()


class World:
    def __init__(self, aws_env, emulator, monkeypatch):
        settings = ImporterSettings.from_env()
        store.bind(settings)
        catalog.forget_known_ids()
        self.state = emulator.state
        self.s3 = boto3.client("s3")
        self.bucket = aws_env.name("UserFilesBucket")
        self.continued: list[tuple[str, str, float]] = []
        self.settings = ImportSettings(chunk_rows=4, resolve_interval_s=0, min_remaining_ms=1000)
        self.spotify = make_spotify(emulator, sleep=lambda s: None)
        self.uploads = 0
        self.now = NOW
        clock.set_clock(lambda: self.now)

    def importer(self, **overrides) -> Importer:
        settings = ImportSettings(**{**self.settings.__dict__, **overrides})
        return Importer(self.s3, self.bucket, self.spotify, settings,
                        continue_later=lambda u, j, d: self.continued.append((u, j, d)), sleep=lambda s: None,
                        upload_id_key=lambda: UPLOAD_ID_KEY)

    def user(self, user_id="alice", **fields) -> None:
        # Written over whatever is there (a versioned item: no version condition for a fixture).
        users.UserModel(user_id, status=fields.pop("status", users.ACTIVE), created_at=NOW - timedelta(days=30),
                        **fields).save(add_version_condition=False)

    def upload(self, body: bytes, name="my_spotify_data.zip", user_id="alice") -> str:
        """As the browser's presigned POST stores it: the key fixed per upload, the name in metadata."""
        self.uploads += 1
        key = f"imports/{user_id}/{issue_upload_id(user_id, self.now, UPLOAD_ID_KEY)}/export"
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, Metadata={"file-name": name})
        return key

    def run(self, key: str, importer: Importer | None = None, seconds: float = 120) -> job_mod.RunOutcome:
        size = self.s3.head_object(Bucket=self.bucket, Key=key)["ContentLength"]
        return (importer or self.importer()).start(key, size, Budget.seconds(seconds))

    def job(self, key: str) -> imports.ImportModel:
        user_id, job_id = job_mod.job_for_key(key)
        found = imports.get(user_id, job_id)
        assert found is not None
        return found

    def poll(self, moment: datetime, i: int, user_id="alice") -> None:
        """A play archived by polling (as the worker writes it), with its track in the catalog."""
        t = parse_track(track(i))
        catalog.upsert_tracks([t])
        plays.PlayModel(user_id, canonical_played_at(moment), played_at_ms=clock.to_ms(moment),
                        track_id=t.track_id).save()

    def stored(self, user_id="alice") -> list[plays.PlayModel]:
        return list(plays.all_plays(user_id))


@pytest.fixture
def world(aws_env, emulator, monkeypatch) -> World:
    w = World(aws_env, emulator, monkeypatch)
    w.user()
    return w


def history(start: datetime, n: int, step_s: int = 240) -> list[dict]:
    return [stream(start + timedelta(seconds=step_s * k), k) for k in range(n)]


def test_an_export_becomes_plays_with_names_and_the_catalog_fills(world):
    rows = history(datetime(2021, 1, 1, tzinfo=UTC), 10)
    key = world.upload(zipped({"Spotify Extended Streaming History/Streaming_History_Audio_2021_0.json": rows,
                               "Spotify Extended Streaming History/Userdata.json": {"username": "alice"}}))
    outcome = world.run(key)
    assert outcome.status == job_mod.DONE
    stored = world.stored()
    assert len(stored) == 10
    first = stored[0]
    assert (first.source, first.item_type, first.track_id, first.track_name) == (
        "export", "track", track(0)["id"], track(0)["name"])
    assert first.played_at == "2021-01-01T00:00:00.000Z"  # played_at = the stream's end (ts)
    job = world.job(key)
    assert (job.state, job.rows_read, job.plays_added, job.duplicates) == ("done", 10, 10, 0)
    assert job.tracks_to_resolve == 10 and job.tracks_resolved == 10
    assert not catalog.unknown_track_ids({track(k)["id"] for k in range(10)})
    assert world.state.request_counts()["track"] == 10  # one track at a time, each once
    [status] = status_for_user("alice", world.now)
    assert status["state"] == "done" and status["progress"] == 1.0 and status["tracks_to_resolve"] == 0
    assert status["files"] == [{"name": "Spotify Extended Streaming History/Streaming_History_Audio_2021_0.json",
                                "kind": "extended", "state": "done", "rows_read": 10, "error": None}]


def test_plays_already_polled_are_not_written_again(world):
    start = datetime(2026, 4, 1, tzinfo=UTC)
    rows = history(start, 8)
    for k in (2, 3, 4):  # polling archived these, a second and a half off the export's whole seconds
        world.poll(start + timedelta(seconds=240 * k, milliseconds=1500), k)
    key = world.upload(zipped({"Streaming_History_Audio_2026.json": rows}))
    world.run(key)
    job = world.job(key)
    assert (job.plays_added, job.duplicates) == (5, 3)
    stored = world.stored()
    assert len(stored) == 8
    assert sorted(p.source for p in stored) == ["api"] * 3 + ["export"] * 5


def test_a_re_import_and_an_overlapping_export_change_nothing(world):
    rows = history(datetime(2022, 1, 1, tzinfo=UTC), 12)
    world.run(world.upload(zipped({"Streaming_History_Audio_2022_0.json": rows})))
    before = [(p.played_at, p.track_id) for p in world.stored()]
    again = world.upload(zipped({"Streaming_History_Audio_2022_0.json": rows}))
    world.run(again)
    assert (world.job(again).plays_added, world.job(again).duplicates) == (0, 12)
    overlapping = world.upload(json.dumps(rows[6:] + history(datetime(2022, 2, 1, tzinfo=UTC), 3)).encode(),
                               name="Streaming_History_Audio_2022_1.json")
    world.run(overlapping)
    assert (world.job(overlapping).plays_added, world.job(overlapping).duplicates) == (3, 6)
    after = [(p.played_at, p.track_id) for p in world.stored()]
    assert len(after) == 15 and set(before) <= set(after)


def test_a_chunk_retried_after_a_crash_adds_nothing_twice(world, monkeypatch):
    rows = history(datetime(2021, 6, 1, tzinfo=UTC), 10)
    key = world.upload(zipped({"Streaming_History_Audio_2021.json": rows}))
    kill_at_advance(monkeypatch, 3)  # the files list, chunk 1, then chunk 2: its plays written, its count not
    with pytest.raises(ProcessKilled):
        world.run(key)
    assert len(world.stored()) == 8  # chunks 1 and 2 are durable
    world.now += timedelta(minutes=7)  # the crashed holder's lease lapses
    user_id, job_id = job_mod.job_for_key(key)
    assert world.importer().run(user_id, job_id, Budget.seconds(60)).status == job_mod.DONE
    job = world.job(key)
    assert (job.rows_read, job.plays_added, job.duplicates) == (10, 10, 0)
    assert len(world.stored()) == 10
    # the retried chunk's tracks are still resolved, although its rows were written before the crash
    assert job.tracks_resolved == 10 and not catalog.unknown_track_ids({track(k)["id"] for k in range(10)})


def test_a_second_delivery_while_the_first_runs_writes_nothing(world):
    key = world.upload(zipped({"Streaming_History_Audio_2021.json": history(datetime(2021, 1, 1, tzinfo=UTC), 3)}))
    user_id, job_id = job_mod.job_for_key(key)
    imports.create(user_id, job_id, key, 10, world.now)
    imports.claim(imports.get(user_id, job_id), world.now, timedelta(minutes=6))
    outcome = world.run(key)
    assert outcome.status == job_mod.BUSY and world.stored() == []
    assert world.continued and world.continued[-1][2] > 300  # retried after the holder's lease


def test_out_of_time_continues_later_from_where_it_stopped(world):
    rows = history(datetime(2021, 1, 1, tzinfo=UTC), 10)
    key = world.upload(zipped({"Streaming_History_Audio_2021.json": rows}))
    outcome = world.run(key, world.importer(min_remaining_ms=10 ** 9))  # "no time" after each step
    assert outcome.status == job_mod.CONTINUE and world.continued
    job = world.job(key)
    assert (job.state, job.row_index, job.plays_added) == ("running", 4, 4)
    user_id, job_id = job_mod.job_for_key(key)
    runs = 1
    while world.importer(min_remaining_ms=10 ** 9).run(user_id, job_id, Budget.seconds(60)).status != job_mod.DONE:
        runs += 1
        assert runs < 30, "no progress"
    assert runs > 3  # three chunks, then the catalog a track at a time
    assert world.state.request_counts()["track"] == 10  # resumed where it stopped: no track fetched twice
    assert (world.job(key).plays_added, len(world.stored())) == (10, 10)


def test_a_429_lasting_hours_pauses_the_job_without_reporting_success(world):
    rows = history(datetime(2021, 1, 1, tzinfo=UTC), 6)
    key = world.upload(zipped({"Streaming_History_Audio_2021.json": rows}))
    world.state.inject("/v1/tracks/", 429, times=1, retry_after=7200)
    outcome = world.run(key)
    assert outcome.status == job_mod.PAUSED and 7100 < outcome.delay_s <= 7200
    job = world.job(key)
    assert job.state == "paused" and job.paused_until is not None and job.finished_at is None
    assert len(world.stored()) == 6  # the plays are in; only the catalog waits
    assert state.rate_limited_until(world.now) is not None  # polling defers too: one limit for the app
    [status] = status_for_user("alice", world.now)
    assert status["state"] == "paused" and status["tracks_to_resolve"] == 6 and status["eta_s"] >= 7100
    user_id, job_id = job_mod.job_for_key(key)
    assert world.importer().run(user_id, job_id, Budget.seconds(60)).status == job_mod.PAUSED  # still early
    world.now += timedelta(hours=2, seconds=5)
    assert world.importer().run(user_id, job_id, Budget.seconds(60)).status == job_mod.DONE
    assert world.job(key).tracks_resolved == 6
    assert world.state.request_counts()["track"] == 7  # the refused one again, then the rest: none twice


def test_unreadable_app_credentials_pause_the_catalog_lookups_and_fail_nothing(world, aws_env):
    from playvault.spotify import ssm_credentials

    world.spotify._credentials = ssm_credentials(aws_env.env["SPOTIFY_CLIENT_ID_PARAM"],
                                                 aws_env.env["SPOTIFY_CLIENT_SECRET_PARAM"])
    asked = ssm_refusing("ThrottlingException", "Rate exceeded")
    key = world.upload(zipped({"Streaming_History_Audio_2021.json": history(datetime(2021, 1, 1, tzinfo=UTC), 3)}))
    outcome = world.run(key)
    assert (outcome.status, outcome.delay_s) == (job_mod.PAUSED, 60)
    assert "SSM" in outcome.reason and "ThrottlingException" in outcome.reason and asked
    job = world.job(key)
    assert job.state == "paused" and job.finished_at is None and len(world.stored()) == 3
    assert world.state.request_counts().get("track", 0) == 0

    parameters.clear_caches()  # SSM answers again
    world.now += timedelta(seconds=61)
    user_id, job_id = job_mod.job_for_key(key)
    assert world.importer().run(user_id, job_id, Budget.seconds(60)).status == job_mod.DONE
    assert world.job(key).tracks_resolved == 3


def test_polling_comes_first_the_import_waits_for_the_gate(world):
    state.close_rate_gate(world.now + timedelta(minutes=20), world.now)  # a worker hit a 429
    key = world.upload(zipped({"Streaming_History_Audio_2021.json": history(datetime(2021, 1, 1, tzinfo=UTC), 2)}))
    outcome = world.run(key)
    assert outcome.status == job_mod.PAUSED
    assert world.state.request_counts().get("track", 0) == 0


def test_account_data_matches_polled_plays_by_name_and_is_kept_unresolved(world):
    moment = datetime(2026, 4, 2, 10, 15, 42, tzinfo=UTC)
    world.poll(moment, 3)
    t = track(3)
    rows = [{"endTime": "2026-04-02 10:15", "artistName": t["artists"][0]["name"], "trackName": t["name"],
             "msPlayed": 200_000},
            {"endTime": "2026-04-02 10:20", "artistName": "Someone", "trackName": "Else", "msPlayed": 100_000},
            {"endTime": "2026-04-02 10:20", "artistName": "Someone", "trackName": "Again", "msPlayed": 31_000},
            {"endTime": "2026-04-02 10:21", "artistName": "Someone", "trackName": "Skipped", "msPlayed": 5_000}]
    key = world.upload(json.dumps(rows).encode(), name="StreamingHistory_music_0.json")
    world.run(key)
    job = world.job(key)
    assert (job.plays_added, job.duplicates, job.skipped) == (2, 1, {"too_short": 1})
    imported = [p for p in world.stored() if p.source == "export"]
    assert {p.track_name for p in imported} == {"Else", "Again"}
    assert all(p.unresolved and p.track_id is None for p in imported)
    assert len({p.played_at for p in imported}) == 2  # same minute, two keys


def test_episodes_go_to_the_episode_catalog(world):
    episode = stream(datetime(2021, 1, 1, tzinfo=UTC), 0, spotify_track_uri=None, master_metadata_track_name=None,
                     spotify_episode_uri="spotify:episode:" + "E" * 22, episode_name="Ep 1",
                     episode_show_name="The Show")
    world.run(world.upload(zipped({"Streaming_History_Audio_2021.json": [episode]})))
    [play] = world.stored()
    assert (play.item_type, play.episode_id, play.track_id) == ("episode", "E" * 22, None)
    assert catalog.EpisodeModel.get("E" * 22).show_name == "The Show"


def test_rows_newer_than_the_polling_cursor_are_imported_too(world):
    """No cut-off: a cursor says nothing of what Spotify still shows (reconnects, episodes)."""
    cursor = datetime(2026, 4, 30, tzinfo=UTC)
    world.user(cursor_ms=clock.to_ms(cursor))
    key = world.upload(zipped({"Streaming_History_Audio_2026.json": [
        stream(cursor - timedelta(hours=1), 1), stream(cursor + timedelta(hours=1), 2)]}))
    world.run(key)
    assert not world.job(key).skipped and len(world.stored()) == 2
    assert users.get("alice").has_imports  # polls merge from now on


# ---------------------------------------------------------------- bad input
def assert_failed(world, key, message):
    job = world.job(key)
    assert job.state == "failed" and message in job.error, job.error
    assert world.stored() == []
    return job


def test_an_empty_upload(world):
    key = world.upload(b"", name="Streaming_History_Audio_2021.json")
    assert world.run(key).status == job_mod.FAILED
    assert_failed(world, key, "empty (0 bytes)")


def test_an_upload_over_the_cap_is_refused_unread(world):
    key = world.upload(b"[" + b" " * 5000 + b"]", name="Streaming_History_Audio_2021.json")
    world.run(key, world.importer(caps=Caps(max_upload_bytes=1000)))
    assert_failed(world, key, "over the cap of 1000")


def test_a_zip_bomb_is_refused_from_its_directory(world):
    key = world.upload(zipped({"Streaming_History_Audio_2021.json": b"[" + b" " * 20_000_000 + b"]"}))
    world.run(key)
    assert_failed(world, key, "zip bomb")
    key = world.upload(zipped({"Streaming_History_Audio_2021.json": history(datetime(2021, 1, 1, tzinfo=UTC), 50)}))
    world.run(key, world.importer(caps=Caps(max_uncompressed_bytes=1000)))
    assert_failed(world, key, "over the cap of 1000")


def test_a_damaged_zip_and_a_zip_without_history(world):
    key = world.upload(b"PK\x03\x04" + b"\x00" * 100)
    world.run(key)
    assert_failed(world, key, "damaged")
    key = world.upload(zipped({"MyData/Playlist1.json": {"playlists": []}}))
    world.run(key)
    assert_failed(world, key, "no Spotify streaming history")


def file_status(world, key):
    job = world.job(key)
    assert job.state == "failed" and world.stored() == []  # its only file rejected: nothing could be read
    [entry] = job.files
    return job, entry


def test_a_non_json_file(world):
    key = world.upload(b"\x89PNG\r\n\x1a\n not json", name="Streaming_History_Audio_2021.json")
    world.run(key)
    job, entry = file_status(world, key)
    assert entry["state"] == "rejected" and "not JSON" in entry["error"]
    assert job.error.startswith("Streaming_History_Audio_2021.json: ") and job.error_file == entry["name"]


def test_json_of_another_shape(world):
    key = world.upload(json.dumps({"playlists": []}).encode(), name="Streaming_History_Audio_2021.json")
    world.run(key)
    _, entry = file_status(world, key)
    assert "found an object" in entry["error"]
    key = world.upload(json.dumps([{"name": "My playlist", "items": []}]).encode(), name="history.json")
    world.run(key)
    job = world.job(key)
    assert "not a Spotify streaming history" in job.files[0]["error"] and job.error_row == 0


def test_a_file_of_another_persons_export_writes_nothing(world):
    rows = [stream(datetime(2016, 1, 1, tzinfo=UTC), k, username="bob") for k in range(6)]
    key = world.upload(zipped({"MyData/endsong_0.json": rows}))
    world.run(key)
    _, entry = file_status(world, key)
    assert entry["state"] == "rejected" and "another Spotify account" in entry["error"]


def test_bad_rows_are_counted_by_reason_and_never_fail_the_file(world):
    good = stream(datetime(2021, 1, 1, tzinfo=UTC), 1)
    rows = [good, 17, {**good, "ts": "not a time"}, {**good, "ms_played": -1}, {**good, "ts": None},
            {**good, "spotify_track_uri": "spotify:track:nope"}, {**good, "incognito_mode": True},
            {**good, "ms_played": 12_000}, stream(datetime(2021, 1, 2, tzinfo=UTC), 2)]
    key = world.upload(zipped({"Streaming_History_Audio_2021.json": rows}))
    world.run(key)
    job = world.job(key)
    assert job.state == "done" and job.rows_read == 9 and job.plays_added == 2
    assert job.skipped == {"not_an_object": 1, "bad_time": 1, "bad_ms_played": 1, "missing_time": 1, "bad_uri": 1,
                           "incognito": 1, "too_short": 1}
    assert len(world.stored()) == 2


def test_invalid_json_mid_file_keeps_the_rows_before_and_names_the_row(world):
    body = json.dumps(history(datetime(2021, 1, 1, tzinfo=UTC), 5))[:-1] + ', {"ts": ]'
    key = world.upload(body.encode(), name="Streaming_History_Audio_2021.json")
    world.run(key)
    job = world.job(key)
    assert job.files[0]["state"] == "failed" and job.error_row == 5 and "invalid JSON in item 5" in job.error
    assert len(world.stored()) == 5


def test_video_history_is_skipped(world):
    key = world.upload(zipped({"Streaming_History_Video_2021.json": [{"ts": "2021-01-01T00:00:00Z"}],
                               "Streaming_History_Audio_2021.json": history(datetime(2021, 1, 1, tzinfo=UTC), 1)}))
    world.run(key)
    states = {f["name"]: f["state"] for f in world.job(key).files}
    assert states == {"Streaming_History_Video_2021.json": "skipped", "Streaming_History_Audio_2021.json": "done"}


def test_a_key_outside_the_import_layout_is_ignored(world):
    world.s3.put_object(Bucket=world.bucket, Key="imports/alice/x.json", Body=b"[]")
    assert world.importer().start("imports/alice/x.json", 2, Budget.seconds(10)).status == job_mod.NOTHING


def test_sparse_rows_cost_at_most_four_queries_per_chunk_before_and_four_after_the_writes(world, monkeypatch):
    calls, merges = [], []
    real, real_reconcile = plays.plays_between, plays.reconcile
    monkeypatch.setattr(plays, "plays_between", lambda *a: calls.append(a) or real(*a))
    monkeypatch.setattr(plays, "reconcile", lambda *a: merges.append(a) or real_reconcile(*a))
    rows = [stream(datetime(2015, 1, 1, tzinfo=UTC) + timedelta(days=40 * k), k) for k in range(8)]
    world.run(world.upload(zipped({"Streaming_History_Audio_2015.json": rows})), world.importer(chunk_rows=8))
    assert len(world.stored()) == 8
    assert len(calls) == 4
    assert len(merges) == 4  # the same ranges read again after the writes (the merge with polled plays)


# ---------------------------------------------------------------- uploads not issued to the key's user
def _planted(world, key: str, body: bytes, reads: list[str]) -> job_mod.RunOutcome:
    """The object as a mis-set policy would let it in; every S3 read of the importer recorded."""
    world.s3.put_object(Bucket=world.bucket, Key=key, Body=body, Metadata={"file-name": "evil.json"})
    s3 = world.s3

    class Recording:
        def __getattr__(self, name):
            if name in ("get_object", "head_object"):
                def call(**kwargs):
                    reads.append(f"{name} {kwargs['Key']}")
                    return getattr(s3, name)(**kwargs)
                return call
            return getattr(s3, name)

    importer = Importer(Recording(), world.bucket, world.spotify, world.settings, continue_later=lambda *a: None,
                        sleep=lambda s: None, upload_id_key=lambda: UPLOAD_ID_KEY)
    return importer.start(key, len(body), Budget.seconds(60))


@pytest.mark.parametrize("upload_id", [
    "20260501T120000Z-0a1b2c3d",  # the layout of before: no MAC at all
    "20260501T120000Z-0a1b2c3d-" + "0" * 32,  # a MAC that is not this user's
    "bob's",  # B's genuine upload id, moved under A's prefix (filled in below)
])
def test_an_object_planted_under_another_users_prefix_fails_its_job_and_writes_nothing(world, upload_id):
    world.user("bob")
    if upload_id == "bob's":
        upload_id = issue_upload_id("bob", world.now, UPLOAD_ID_KEY)
    key = f"imports/alice/{upload_id}/export"
    body = json.dumps(history(datetime(2021, 1, 1, tzinfo=UTC), 3)).encode()
    reads: list[str] = []
    outcome = _planted(world, key, body, reads)
    assert outcome.status == job_mod.FAILED and "not issued to this user" in outcome.reason
    assert reads == []  # the object is not read at all
    [job] = status_for_user("alice", world.now)
    assert job["state"] == "failed" and "was not issued to this user" in job["error"]["message"]
    assert job["plays_added"] == 0 and job["rows_read"] == 0 and job["finished_at"]
    assert world.stored("alice") == [] and world.stored("bob") == []
    assert world.continued == []  # nothing to continue: not an error that retries or pages anyone
    assert list(catalog.TrackModel.scan()) == []
    # The same event again (EventBridge delivers at least once): one failed job, still nothing written.
    assert _planted(world, key, body, reads).status == job_mod.FAILED
    assert len(status_for_user("alice", world.now)) == 1 and world.stored("alice") == []


@pytest.mark.parametrize("name", ["my export (1).json", "other.json"])
def test_only_the_issued_key_of_an_upload_id_is_imported(world, name):
    """alice's genuine upload id with another last segment (characters an encoding changes, or just
    another name) is not the key presigned_upload issued."""
    upload_id = issue_upload_id("alice", world.now, UPLOAD_ID_KEY)
    reads: list[str] = []
    outcome = _planted(world, f"imports/alice/{upload_id}/{name}", b"[]", reads)
    assert outcome.status == job_mod.FAILED and reads == [] and world.stored() == []


def test_the_file_name_comes_from_the_metadata_and_decides_the_kind(world):
    video = world.upload(json.dumps([{"ts": "2021-01-01T00:00:00Z"}]).encode(),
                         name="Streaming_History_Video_2021.json")
    world.run(video)
    job = world.job(video)
    assert job.file_name == "Streaming_History_Video_2021.json"
    assert [(f["name"], f["state"]) for f in job.files] == [("Streaming_History_Video_2021.json", "skipped")]
    assert status_for_user("alice", world.now)[0]["file_name"] == "Streaming_History_Video_2021.json"


def test_upload_ids_are_bound_to_their_user_and_key():
    other_key = upload_id_key("another client secret")
    issued = issue_upload_id("alice", NOW, UPLOAD_ID_KEY)
    assert import_ids.upload_issued_to("alice", issued, UPLOAD_ID_KEY)
    assert not import_ids.upload_issued_to("bob", issued, UPLOAD_ID_KEY)
    assert not import_ids.upload_issued_to("alice", issued, other_key)  # a rotated secret
    tampered = issued[:-1] + ("0" if issued[-1] != "0" else "1")
    assert not import_ids.upload_issued_to("alice", tampered, UPLOAD_ID_KEY)
    assert not import_ids.upload_issued_to("alice", issued.upper(), UPLOAD_ID_KEY)
    assert import_ids.SAFE_KEY.fullmatch(f"imports/alice/{issued}/export")
    with pytest.raises(import_ids.BadUserId):
        issue_upload_id("../bob", NOW, UPLOAD_ID_KEY)


def test_hkdf_sha256_matches_rfc_5869():
    # RFC 5869, A.1 (basic test case with SHA-256)
    okm = import_ids.hkdf_sha256(bytes.fromhex("0b" * 22), bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"), 42,
                                 salt=bytes.fromhex("000102030405060708090a0b0c"))
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                         "34007208d5b887185865")
    # A.3: no salt, no info
    assert import_ids.hkdf_sha256(bytes.fromhex("0b" * 22), b"", 42).hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8")
    assert upload_id_key("s3cret") == upload_id_key("s3cret") != upload_id_key("s3cret2")


@pytest.mark.parametrize(("in_event", "key"), [
    ("imports/alice/20260501T120000Z-0a1b2c3d-abc/export", "imports/alice/20260501T120000Z-0a1b2c3d-abc/export"),
    ("imports/alice/my+spotify+data+%281%29.zip", "imports/alice/my spotify data (1).zip"),
    ("imports/alice/M%C3%BCller%2BS%C3%B8n+100%25.json", "imports/alice/Müller+Søn 100%.json"),
])
def test_event_keys_are_read_in_either_encoding(in_event, key):
    assert import_ids.event_key(in_event) == key


@pytest.mark.parametrize(("metadata", "name"), [
    ({"file-name": "my_spotify_data (1).zip"}, "my_spotify_data (1).zip"),
    ({"file-name": "=?UTF-8?B?" + __import__("base64").b64encode("Müller+Søn (1) 100%.json".encode()).decode() + "?="},
     "Müller+Søn (1) 100%.json"),
    ({"file-name": "C:\\Users\\me\\Downloads\\export.zip"}, "export.zip"),
    ({}, ""),
])
def test_the_file_name_from_metadata(metadata, name):
    assert import_ids.file_name_from_metadata(metadata) == name
