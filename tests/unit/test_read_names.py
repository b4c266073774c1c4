"""Names on every read path (issue 20): /me, /me/plays and the CSV and JSON Lines exports show each
play with the best names known: the catalog's when it has the track (or episode), else the names the
play itself stores (imported rows kept by name: Account data rows without ids, local files, tracks
Spotify answers 404 for or not looked up yet, podcast rows without ids).

The imported rows are written as the importer writes them (imports/job.py: source "export", the
export's names on the row); the expected names are literals, not what the read code computes.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from playvault import clock, rollups
from playvault.store import plays
from playvault.store.catalog import AlbumModel, ArtistModel, TrackModel
from tests.unit.test_account import Site, _export, listen_and_archive, signed_in

GONE_ID = "0gone0gone0gone0gone00"  # a track id the catalog does not hold (404, or not looked up yet)


@pytest.fixture
def site(load_function, lambda_context, aws_env) -> Site:
    return Site(load_function, lambda_context, aws_env)


def _at(moment: datetime) -> tuple[str, int]:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z"), int(moment.timestamp()) * 1000


def _imported(user_id: str, moment: datetime, index: int, **fields: Any) -> None:
    played_at, played_at_ms = _at(moment)
    plays.PlayModel(user_id, played_at, played_at_ms=played_at_ms, source=plays.SOURCE_EXPORT,
                    ms_played=180_000, import_ref=f"job-1:0:{index}", **fields).save()


def _a_catalog_track() -> tuple[str, str, str, str]:
    """(track id, name, album name, first artist's name) of a track polling put in the catalog."""
    track = next(t for t in TrackModel.scan() if not t.is_local and t.artist_ids)
    album = AlbumModel.get(track.album_id)
    artist = ArtistModel.get(track.artist_ids[0])
    return track.track_id, track.name, album.name, artist.name


def add_imported_plays(user_id: str, start: datetime) -> dict[str, dict[str, Any]]:
    """One play of each kind an import keeps; returns played_at -> the names each read path must show."""
    track_id, track_name, album_name, artist_name = _a_catalog_track()
    kinds = [
        # Account data (no ids): kept by name
        ({"item_type": "track", "track_name": "Only A Name", "artist_name": "Named Artist", "unresolved": True},
         {"item_type": "track", "track": {"id": None, "name": "Only A Name"}, "album": {"id": None, "name": None},
          "artists": [{"id": None, "name": "Named Artist"}]}),
        # a local file (Extended history without a track URI)
        ({"item_type": "track", "track_name": "My Local File", "artist_name": "Home Recording",
          "album_name": "Local Album", "unresolved": True},
         {"item_type": "track", "track": {"id": None, "name": "My Local File"},
          "album": {"id": None, "name": "Local Album"}, "artists": [{"id": None, "name": "Home Recording"}]}),
        # a track id the catalog does not hold: the export's names, the id kept
        ({"item_type": "track", "track_id": GONE_ID, "track_name": "Gone Song", "artist_name": "Gone Artist",
          "album_name": "Gone Album"},
         {"item_type": "track", "track": {"id": GONE_ID, "name": "Gone Song"},
          "album": {"id": None, "name": "Gone Album"}, "artists": [{"id": None, "name": "Gone Artist"}]}),
        # a resolved track: the catalog's names win over the export's
        ({"item_type": "track", "track_id": track_id, "track_name": "Export Spelling", "artist_name": "Export Artist",
          "album_name": "Export Album"},
         {"item_type": "track", "track": {"id": track_id, "name": track_name}, "album_name": album_name,
          "artist_name": artist_name}),
        # Account data podcast row (no episode id): episode and show names
        ({"item_type": "episode", "episode_name": "Episode Without Id", "show_name": "Named Show",
          "unresolved": True},
         {"item_type": "episode", "episode": {"id": None, "name": "Episode Without Id", "show": "Named Show"}}),
    ]
    expected = {}
    for index, (fields, want) in enumerate(kinds):
        moment = start + timedelta(minutes=3 * index)
        _imported(user_id, moment, index, **fields)
        expected[_at(moment)[0]] = want
    return expected


def _check(got: dict[str, Any], want: dict[str, Any]) -> None:
    """`got` is a play as /me/plays and the JSON Lines export give it."""
    assert got["item_type"] == want["item_type"]
    for key in ("track", "album", "artists", "episode"):
        if key in want:
            assert got[key] == want[key], (key, got)
    if "album_name" in want:  # a resolved track: the catalog's album and first artist
        assert got["album"]["name"] == want["album_name"] and got["album"]["id"]
        assert got["artists"][0]["name"] == want["artist_name"] and got["artists"][0]["id"]
    assert got["source"] == "export"


def test_json_lines_export_names_every_imported_play(site, aws_env, emulator):
    browser = signed_in(site, aws_env, emulator, "alice")
    listen_and_archive(aws_env, emulator, "alice")
    expected = add_imported_plays("alice", datetime(2020, 1, 1, tzinfo=UTC))

    lines = [json.loads(line) for line in _export(browser, site, "jsonl").decode().splitlines()]
    assert len(lines) == plays.count("alice")
    by_time = {line["played_at"]: line for line in lines}
    for played_at, want in expected.items():
        _check(by_time[played_at], want)
    polled = [line for line in lines if line["source"] == "api"]
    assert polled and all(line["track"]["name"] and line["artists"][0]["id"] for line in polled)


def test_csv_export_names_every_imported_play(site, aws_env, emulator):
    browser = signed_in(site, aws_env, emulator, "alice")
    listen_and_archive(aws_env, emulator, "alice")
    expected = add_imported_plays("alice", datetime(2020, 1, 1, tzinfo=UTC))

    rows = {r["played_at"]: r for r in csv.DictReader(io.StringIO(_export(browser, site, "csv").decode()))}
    assert len(rows) == plays.count("alice")
    for played_at, want in expected.items():
        row = rows[played_at]
        assert row["item_type"] == want["item_type"] and row["source"] == "export"
        if want["item_type"] == "episode":
            assert (row["episode_name"], row["show_name"]) == (want["episode"]["name"], want["episode"]["show"])
            assert row["track_name"] == "" and row["episode_id"] == ""
            continue
        assert row["track_id"] == (want["track"]["id"] or "") and row["track_name"] == want["track"]["name"]
        if "album_name" in want:
            assert row["album_name"] == want["album_name"]
            assert row["artist_names"].split(";")[0] == want["artist_name"] and row["artist_ids"]
        else:
            assert row["album_name"] == (want["album"]["name"] or "")
            assert row["artist_names"] == want["artists"][0]["name"] and row["artist_ids"] == ""
    assert not [r for r in rows.values() if not (r["track_name"] or r["episode_name"])]


def test_plays_api_names_every_imported_play(site, aws_env, emulator):
    browser = signed_in(site, aws_env, emulator, "alice")
    listen_and_archive(aws_env, emulator, "alice")
    expected = add_imported_plays("alice", datetime(2020, 1, 1, tzinfo=UTC))

    answer = browser.get("/me/plays", {"to": "2020-01-02T00:00:00Z", "limit": "50"})
    assert answer["statusCode"] == 200, answer
    got = json.loads(answer["body"])["plays"]
    assert [p["played_at"] for p in got] == sorted(expected)
    for play in got:
        _check(play, expected[play["played_at"]])


def _bars(body: str, element_id: str) -> dict[str, int]:
    """name -> count of one top list on /me."""
    table = body.split(f'id="{element_id}"', 1)[1].split("</table>", 1)[0]
    return {html.unescape(name): int(n) for n, name in
            re.findall(r'data-plays="(\d+)"><td>\d+</td><td>(?:<a href="[^"]*">)?([^<]*)', table)}


def test_me_top_lists_name_imported_plays(site, aws_env, emulator):
    """The week's top tracks and artists name imported plays (never a raw track id), and a play kept
    by name counts with the catalog track of the same name and artist."""
    browser = signed_in(site, aws_env, emulator, "alice")
    listen_and_archive(aws_env, emulator, "alice")
    track_id, track_name, _album, artist_name = _a_catalog_track()
    polled = sum(1 for p in plays.all_plays("alice") if p.track_id == track_id)
    start = datetime.now(UTC) - timedelta(days=2)
    index = 0
    for n, fields in ((6, {"track_id": GONE_ID, "track_name": "Gone Song", "artist_name": "Gone Artist"}),
                      (5, {"track_name": "Only A Name", "artist_name": "Named Artist", "unresolved": True}),
                      (4, {"track_name": track_name, "artist_name": artist_name, "unresolved": True}),
                      (3, {"item_type": "episode", "episode_name": "Episode Without Id", "show_name": "Named Show",
                           "unresolved": True})):
        for _ in range(n):
            _imported("alice", start + timedelta(minutes=5 * index), index, **fields)
            index += 1

    # as the importer marks the dates it writes
    rollups.mark("alice", [clock.to_ms(start + timedelta(minutes=5 * i)) for i in range(index)])
    body = browser.get("/me", {"period": "all"})["body"]
    tracks = _bars(body, "top-tracks")
    assert GONE_ID not in re.sub(r"<[^>]+>", "", body)  # never shown as a name (links and data keys hold it)
    assert tracks["Gone Song"] == 6 and tracks["Only A Name"] == 5
    assert tracks[track_name[:60]] == polled + 4  # one bar: the catalog track and the plays kept by its name
    assert "Episode Without Id" not in tracks  # episodes are not tracks
    artists = _bars(body, "top-artists")
    assert artists["Gone Artist"] == 6 and artists["Named Artist"] == 5
    assert artists[artist_name[:60]] >= polled + 4
