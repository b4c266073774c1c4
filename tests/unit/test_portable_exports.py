"""Portable exports (issue 21, item 5): the ListenBrainz listens archive and Spotify's extended
streaming history, written by the export job from /me and read back by PlayVault's importer.

The round trip as a user makes it: export, delete my data, sign up again, import the export: the
same plays with the same names. And the identity rule: importing an export of plays the archive
holds (polled or imported) merges every row into its play, adding none.
"""

from __future__ import annotations

import io
import json
import zipfile
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from playvault import clock, store
from playvault.config import AccountSettings, ImporterSettings
from playvault.history import Catalog
from playvault.imports import issue_upload_id, upload_id_key
from playvault.imports import job as job_mod
from playvault.imports.job import Importer, ImportSettings
from playvault.normalize import LOCAL_PREFIX
from playvault.spotify import Budget
from playvault.store import catalog, exports, imports, plays, users
from playvault.store.catalog import EpisodeModel
from playvault_local.provision import DEV_CLIENT_SECRET
from tests.unit.helpers import make_spotify
from tests.unit.test_account import Browser, Site, _export, listen_and_archive, signed_in
from tests.unit.test_importer import World, zipped
from tests.unit.test_read_names import add_imported_plays

FORMATS = ["listenbrainz", "spotify"]


@pytest.fixture
def stack_overrides() -> dict[str, str]:
    return {"DeletionGraceSeconds": "0"}


@pytest.fixture
def site(load_function, lambda_context, aws_env) -> Site:
    return Site(load_function, lambda_context, aws_env)


def an_archive(site: Site, aws_env: Any, emulator: Any) -> Browser:
    """alice's archive with every kind of play: polled tracks, a polled episode, imported rows (with
    ms_played and platform, kept by name, a track the catalog lacks, an episode without id)."""
    browser = signed_in(site, aws_env, emulator, "alice")
    listen_and_archive(aws_env, emulator, "alice")
    EpisodeModel("6ep1ep1ep1ep1ep1ep1ep1", name="Episode One", duration_ms=1_800_000, show_id="sh1",
                 show_name="The Show").save()
    plays.PlayModel("alice", "2020-01-01T00:00:00.250Z", played_at_ms=1577836800250, item_type="episode",
                    episode_id="6ep1ep1ep1ep1ep1ep1ep1", source="api").save()
    add_imported_plays("alice", datetime(2020, 2, 1, tzinfo=UTC))
    plays.PlayModel("alice", "2020-03-01T00:00:00.000Z", played_at_ms=1583020800000, source=plays.SOURCE_EXPORT,
                    track_id=next(iter(catalog.TrackModel.scan())).track_id, ms_played=95_000, platform="ios",
                    import_ref="job-0:0:9", precision_ms=1000).save()
    return browser


def the_plays(user_id: str, *, to_the_second: bool, portable: bool = False) -> list[tuple]:
    """Every play as the reader shows it (best_names), oldest first: time, item, ids, names, ms_played.
    `portable`: a local file's synthetic ids are PlayVault's own, not Spotify's, so no export carries
    them: the play comes back by its names (without the catalog's duration)."""
    out = []
    for row in Catalog().rows(list(plays.all_plays(user_id))):
        played_at = row.played_at[:19] if to_the_second else row.played_at
        local = portable and (row.track_id or "").startswith(LOCAL_PREFIX)
        out.append((played_at, row.item_type, None if local else row.track_id, row.track_name, row.album_name,
                    row.artist_names, row.episode_id, row.episode_name, row.show_name,
                    None if local else row.duration_ms, row.ms_played))
    return out


def import_file(aws_env: Any, emulator: Any, body: bytes, name: str, user_id: str = "alice") -> imports.ImportModel:
    """As /me's upload form stores a file (a key issued to the user, the name in metadata), then the
    importer's runs until the job ends."""
    bucket = aws_env.name("UserFilesBucket")
    key = f"imports/{user_id}/{issue_upload_id(user_id, clock.now(), upload_id_key(DEV_CLIENT_SECRET))}/export"
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata={"file-name": name})
    store.bind(ImporterSettings.from_env())
    continued: list[tuple[str, str, float]] = []
    importer = Importer(s3, bucket, make_spotify(emulator, sleep=lambda s: None),
                        ImportSettings(resolve_interval_s=0, min_remaining_ms=1000),
                        continue_later=lambda u, j, d: continued.append((u, j, d)), sleep=lambda s: None,
                        upload_id_key=lambda: upload_id_key(DEV_CLIENT_SECRET))
    outcome = importer.start(key, len(body), Budget.seconds(120))
    while outcome.status == job_mod.CONTINUE and continued:
        outcome = importer.run(*continued.pop()[:2], Budget.seconds(120))
    store.bind(AccountSettings.from_env())
    user, job_id = job_mod.job_for_key(key)
    job = imports.get(user, job_id)
    assert job is not None and job.state == "done", (outcome, job and job.error)
    return job


def delete_my_data(browser: Browser, site: Site) -> None:
    done = browser.post("/me/delete", {"csrf": browser.csrf()})
    assert done["statusCode"] == 303, done
    site.run_jobs()
    assert users.get("alice") is None and plays.count("alice") == 0


# ---------------------------------------------------------------- the round trip
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_delete_sign_up_again_import_gives_the_same_plays_with_the_same_names(site, aws_env, emulator, fmt):
    browser = an_archive(site, aws_env, emulator)
    # ListenBrainz's listens carry PlayVault's exact played_at; Spotify's ts is whole seconds.
    to_the_second = fmt == "spotify"
    before = the_plays("alice", to_the_second=to_the_second, portable=True)
    assert len(before) >= 10 and {p[1] for p in before} == {"track", "episode"}
    assert any(p[10] is None for p in before) and any(p[10] is not None for p in before)  # ms_played both ways
    body = _export(browser, site, fmt)
    name = "playvault-listenbrainz.zip" if fmt == "listenbrainz" else "Streaming_History_Audio_playvault.json"

    delete_my_data(browser, site)
    browser = signed_in(site, aws_env, emulator, "alice")
    assert plays.count("alice") == 0
    job = import_file(aws_env, emulator, body, name)

    assert (int(job.plays_added), int(job.duplicates), job.skipped or {}) == (len(before), 0, {})
    assert the_plays("alice", to_the_second=to_the_second) == before
    assert {p.source for p in plays.all_plays("alice")} == {plays.SOURCE_EXPORT}


@pytest.mark.parametrize("fmt", FORMATS)
def test_importing_an_export_of_the_archive_merges_every_row_and_adds_no_play(site, aws_env, emulator, fmt):
    browser = an_archive(site, aws_env, emulator)
    before = the_plays("alice", to_the_second=False)
    polled = {p.played_at for p in plays.all_plays("alice") if p.source == plays.SOURCE_API}
    body = _export(browser, site, fmt)
    name = "playvault-listenbrainz.zip" if fmt == "listenbrainz" else "Streaming_History_Audio_playvault.json"

    job = import_file(aws_env, emulator, body, name)

    assert (int(job.plays_added), int(job.duplicates)) == (0, len(before))
    assert the_plays("alice", to_the_second=False) == before  # not one play more, none moved
    after = {p.played_at: p for p in plays.all_plays("alice")}
    assert all(after[at].source == plays.SOURCE_API and after[at].import_ref for at in polled)  # merged into them


# ---------------------------------------------------------------- the files
def listens_in(body: bytes) -> list[dict[str, Any]]:
    """The listens of a ListenBrainz export: a ZIP whose one member is listens/playvault.jsonl, its
    CRC right (zipfile checks it), as ListenBrainz's and Koito's importers read it."""
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert archive.namelist() == ["listens/playvault.jsonl"] and archive.testzip() is None
        [member] = archive.infolist()
        assert member.compress_type == zipfile.ZIP_STORED
        return [json.loads(line) for line in archive.read(member).decode().splitlines()]


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_file_is_whole_whatever_the_parts(site, aws_env, emulator, monkeypatch, fmt):
    import moto.s3.models

    from playvault.export import Exporter

    monkeypatch.setattr(moto.s3.models, "S3_UPLOAD_PART_MIN_SIZE", 256)
    an_archive(site, aws_env, emulator)
    exporter = Exporter(site.s3, site.bucket, None, part_bytes=700, min_remaining_s=30)
    job = exporter.start("alice", fmt)

    class NoTime:
        def remaining_s(self) -> float:
            return 0.0  # stop after every part: the file is written across invocations

    rounds = 0
    while exporter.run("alice", job.export_id, NoTime()) is not None:
        rounds += 1
        assert rounds < 100
    finished = exports.get("alice", job.export_id)
    body = site.s3.get_object(Bucket=site.bucket, Key=finished.object_key)["Body"].read()
    every = list(plays.all_plays("alice"))
    if fmt == "spotify":
        rows = json.loads(body)
        assert [r["ts"] for r in rows] == [p.played_at[:19] + "Z" for p in every]
        assert "Streaming_History_Audio_playvault-" in exporter.download_url(finished)
    else:
        rows = listens_in(body)
        assert [r["track_metadata"]["additional_info"]["playvault_played_at"] for r in rows] == [
            p.played_at for p in every]
        assert "-listenbrainz.zip" in exporter.download_url(finished)
    assert rounds >= 3 and len(rows) == int(finished.rows) == len(every)
    assert int(finished.size_bytes) == len(body)


def test_an_empty_archive_exports_an_empty_array_and_no_listens(site, aws_env, emulator):
    browser = signed_in(site, aws_env, emulator, "alice")
    assert json.loads(_export(browser, site, "spotify")) == []
    assert listens_in(_export(browser, site, "listenbrainz")) == []


def test_me_offers_both_formats_and_refuses_an_unknown_one_naming_the_choices(site, aws_env, emulator):
    browser = signed_in(site, aws_env, emulator, "alice")
    page = browser.get("/me")["body"]
    assert 'value="listenbrainz" id="export-listenbrainz"' in page and 'value="spotify" id="export-spotify"' in page
    refused = browser.post("/me/exports", {"csrf": browser.csrf(), "format": "lastfm"})
    assert refused["statusCode"] == 400
    assert "choose one of csv, jsonl, listenbrainz, spotify" in refused["body"]
    assert list(exports.for_user("alice")) == []  # a refused request starts nothing


# ---------------------------------------------------------------- ListenBrainz's own export, imported
@pytest.fixture
def world(aws_env, emulator, monkeypatch) -> World:
    w = World(aws_env, emulator, monkeypatch)
    w.user()
    return w


def listen(moment: datetime, i: int, **info: Any) -> dict[str, Any]:
    return {"listened_at": int(moment.timestamp()), "inserted_at": int(moment.timestamp()) + 5,
            "track_metadata": {"artist_name": f"Artist {i}", "track_name": f"Song {i}", "release_name": "Album",
                               "recording_msid": "0f0e2b53-46f7-4ec4-9d55-4bb5c0f6c1a5", "mbid_mapping": None,
                               "additional_info": {"duration_ms": 200_000, "submission_client": "Web Scrobbler",
                                                   **info}}}


def jsonl(rows: list[Any]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def test_listenbrainz_export_zip_imports_its_listens_and_ignores_its_other_files(world):
    start = datetime(2024, 3, 1, tzinfo=UTC)
    body = zipped({"user.json": {"user_id": 1, "username": "alice"},
                   "listens/2024/3.jsonl": jsonl([listen(start + timedelta(minutes=5 * k), k) for k in range(3)]),
                   "listens/2024/4.jsonl": jsonl([listen(start + timedelta(days=31), 3)]),
                   "feedback.jsonl": jsonl([{"recording_msid": "x", "score": 1, "created": 1}]),
                   "pinned_recording.jsonl": jsonl([{"recording_msid": "x", "blurb_content": "hi"}])})
    key = world.upload(body)
    world.run(key)
    job = world.job(key)
    assert (job.state, int(job.rows_read), int(job.plays_added)) == ("done", 4, 4)
    assert [f["name"] for f in job.files] == ["listens/2024/3.jsonl", "listens/2024/4.jsonl"]
    stored = world.stored()
    # listened_at is the start: the play ends its duration later
    assert stored[0].played_at == "2024-03-01T00:03:20.000Z" and stored[0].played_at_ms == clock.to_ms(
        start + timedelta(seconds=200))
    assert (stored[0].track_name, stored[0].artist_name, stored[0].album_name, stored[0].unresolved) == (
        "Song 0", "Artist 0", "Album", True)


def test_a_bad_line_fails_its_file_naming_it_and_keeps_the_listens_before(world):
    start = datetime(2024, 3, 1, tzinfo=UTC)
    good = jsonl([listen(start + timedelta(minutes=5 * k), k) for k in range(3)])
    key = world.upload(good + b'{"listened_at": 17\n' + jsonl([listen(start + timedelta(hours=1), 9)]),
                       name="listens.jsonl")
    world.run(key)
    job = world.job(key)
    assert job.files[0]["state"] == "failed" and job.error_file == "listens.jsonl" and job.error_row == 3
    assert job.error.startswith("listens.jsonl: invalid JSON on line 4")
    assert len(world.stored()) == 3


def test_bad_listens_are_counted_by_reason_and_never_fail_the_file(world):
    start = datetime(2024, 3, 1, tzinfo=UTC)
    good = listen(start, 1)
    rows = [good, 17, {**good, "listened_at": "noon"}, {"listened_at": 1709251200, "track_metadata": {}},
            listen(start + timedelta(hours=1), 2, spotify_id="https://open.spotify.com/track/nope"),
            listen(start + timedelta(hours=2), 3, ms_played=5_000), listen(start + timedelta(hours=3), 4)]
    key = world.upload(jsonl(rows), name="listens.jsonl")
    world.run(key)
    job = world.job(key)
    assert (job.state, int(job.rows_read), int(job.plays_added)) == ("done", 7, 2)
    assert job.skipped == {"not_an_object": 1, "bad_time": 1, "missing_name": 1, "bad_uri": 1, "too_short": 1}


def test_json_lines_of_another_shape_are_refused_naming_what_they_hold(world):
    key = world.upload(jsonl([{"played_at": "2024-03-01T00:00:00.000Z", "track": {"name": "x"}}]),
                       name="playvault-export.jsonl")
    world.run(key)
    job = world.job(key)
    assert job.state == "failed" and world.stored() == []
    assert "not ListenBrainz listens: the first item lacks listened_at, track_metadata" in job.files[0]["error"]


def test_a_single_file_of_another_name_is_read_by_its_content(world):
    key = world.upload(jsonl([listen(datetime(2024, 3, 1, tzinfo=UTC), 1)]), name="my listens (1).txt")
    world.run(key)
    assert int(world.job(key).plays_added) == 1 and world.job(key).files[0]["kind"] == "listenbrainz"


def test_playvaults_listens_re_imported_by_listenbrainz_and_exported_again_keep_their_exact_end(world):
    """ListenBrainz's archive importer keeps additional_info but for its msids and submission_client:
    a PlayVault listen that went through ListenBrainz still says where it ended."""
    rows = [listen(datetime(2024, 3, 1, tzinfo=UTC), 1, submission_client="ListenBrainz Archive Importer",
                   music_service="spotify.com", ms_played=240_000, playvault_played_at="2024-03-01T00:04:00.123Z")]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("listens/2024/3.jsonl", jsonl(rows))
    key = world.upload(buffer.getvalue())
    world.run(key)
    assert [p.played_at for p in world.stored()] == ["2024-03-01T00:04:00.123Z"]  # the exact end, kept
