"""The portable formats (pure): a play as a ListenBrainz listen and as a row of Spotify's extended
streaming history, ListenBrainz listens read back (times, ids, names, episodes, bad rows named), and
JSON Lines read line by line with errors naming the line."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest

from playvault.export import listenbrainz_listen, spotify_stream
from playvault.history import PlayRow
from playvault.imports import formats
from playvault.imports.jsonstream import NotJsonArray, iter_items, iter_lines

NOW = datetime(2026, 6, 1, tzinfo=UTC)
RULE = formats.ListeningRule()
TRACK = "4uLU6hMCjMI75M1A2tKUQC"
ALBUM = "1DFixLWuPkv3KT3TnV35m3"
ARTISTS = ("0OdUWJ0sBjDrqHygGUXeCF", "3WrFJ7ztbogyGnTHbHJFl2")
EPISODE = "512ojhOuo1ktJprKbVcKyQ"
END = "2024-03-05T10:00:00.500Z"  # played_at: the stream's end
END_MS = int(datetime(2024, 3, 5, 10, 0, tzinfo=UTC).timestamp()) * 1000 + 500


def track_row(**fields) -> PlayRow:
    row = {"played_at": END, "item_type": "track", "track_id": TRACK, "track_name": "Velvet Garden",
           "album_id": ALBUM, "album_name": "Greenhouse", "artist_ids": ARTISTS, "artist_names": ("Ivy", "Moss"),
           "duration_ms": 240_000, "source": "api"}
    row.update(fields)
    return PlayRow(**row)


def episode_row(**fields) -> PlayRow:
    row = {"played_at": END, "item_type": "episode", "track_id": None, "track_name": None, "album_id": None,
           "album_name": None, "artist_ids": (), "artist_names": (), "duration_ms": 1_800_000, "source": "api",
           "episode_id": EPISODE, "episode_name": "Pilot", "show_name": "The Show"}
    row.update(fields)
    return PlayRow(**row)


def read_back(listen: dict, rule=RULE) -> formats.ImportRow:
    return formats.parse_listenbrainz(json.loads(json.dumps(listen)), 0, now=NOW, rule=rule)


# ---------------------------------------------------------------- ListenBrainz: writing
def test_a_polled_track_starts_its_duration_before_its_end_with_spotify_urls():
    listen = listenbrainz_listen(track_row())
    assert listen["listened_at"] == (END_MS - 240_000) // 1000  # no ms_played known: the track's length
    meta = listen["track_metadata"]
    assert (meta["artist_name"], meta["track_name"], meta["release_name"]) == ("Ivy, Moss", "Velvet Garden",
                                                                                "Greenhouse")
    info = meta["additional_info"]
    assert info["spotify_id"] == info["origin_url"] == f"https://open.spotify.com/track/{TRACK}"
    assert info["spotify_album_id"] == f"https://open.spotify.com/album/{ALBUM}"
    assert info["spotify_artist_ids"] == [f"https://open.spotify.com/artist/{a}" for a in ARTISTS]
    assert info["artist_names"] == ["Ivy", "Moss"] and info["duration_ms"] == 240_000
    assert (info["music_service"], info["submission_client"], info["playvault_played_at"]) == (
        "spotify.com", "PlayVault", END)
    assert "ms_played" not in info  # not known for a polled play: absent, never guessed


def test_an_imported_play_starts_ms_played_before_its_end():
    listen = listenbrainz_listen(track_row(ms_played=61_000, source="export"))
    assert listen["listened_at"] == (END_MS - 61_000) // 1000
    assert listen["track_metadata"]["additional_info"]["ms_played"] == 61_000


def test_a_play_known_only_by_name_has_no_ids():
    listen = listenbrainz_listen(track_row(track_id=None, album_id=None, artist_ids=(None,), artist_names=("Ivy",),
                                           duration_ms=None, ms_played=90_000))
    info = listen["track_metadata"]["additional_info"]
    assert not {"spotify_id", "origin_url", "spotify_album_id", "spotify_artist_ids", "duration_ms"} & set(info)
    assert listen["track_metadata"]["artist_name"] == "Ivy"


def test_a_local_files_ids_are_playvaults_own_and_never_written_as_spotifys():
    local = track_row(track_id="local:0a1b2c", album_id="local:3d4e5f", artist_ids=("local:6a7b8c",),
                      artist_names=("Home Recording",))
    info = listenbrainz_listen(local)["track_metadata"]["additional_info"]
    assert not {"spotify_id", "origin_url", "spotify_album_id", "spotify_artist_ids"} & set(info)
    assert spotify_stream(local, "alice")["spotify_track_uri"] is None
    assert spotify_stream(local, "alice")["master_metadata_track_name"] == "Velvet Garden"


def test_an_episode_is_the_track_its_show_the_artist_and_it_says_so():
    listen = listenbrainz_listen(episode_row())
    meta = listen["track_metadata"]
    assert (meta["track_name"], meta["artist_name"]) == ("Pilot", "The Show") and "release_name" not in meta
    info = meta["additional_info"]
    assert info["playvault_item_type"] == "episode" and "spotify_id" not in info  # spotify_id is a track's URL
    assert info["origin_url"] == f"https://open.spotify.com/episode/{EPISODE}"


# ---------------------------------------------------------------- ListenBrainz: reading
@pytest.mark.parametrize("row", [
    track_row(), track_row(ms_played=61_000, source="export"), episode_row(),
    episode_row(episode_id=None), track_row(track_id=None, album_id=None, artist_ids=(None,), artist_names=("Ivy",),
                                            duration_ms=None, album_name=None, ms_played=45_000),
])
def test_playvaults_listens_read_back_to_the_same_play(row):
    back = read_back(listenbrainz_listen(row))
    assert back.ended_ms == END_MS and back.item_type == row.item_type and back.ms_played == row.ms_played
    if row.item_type == "episode":
        assert (back.episode_id, back.episode_name, back.show_name) == (row.episode_id, "Pilot", "The Show")
    else:
        assert (back.track_id, back.track_name, back.album_name) == (row.track_id, row.track_name, row.album_name)
        assert back.artist_name == row.artist_names[0]  # the first artist, as polled plays carry it


def test_a_listen_of_listenbrainz_spotify_reader_ends_at_listened_at():
    # ListenBrainz's Spotify reader puts recently-played's played_at (the end) into listened_at.
    listen = {"listened_at": 1709632800, "track_metadata": {
        "artist_name": "Ivy, Moss", "track_name": "Velvet Garden", "release_name": "Greenhouse",
        "additional_info": {"spotify_id": f"https://open.spotify.com/track/{TRACK}", "duration_ms": 240_000,
                            "artist_names": ["Ivy", "Moss"], "submission_client": "listenbrainz",
                            "music_service": "spotify.com"}}}
    back = read_back(listen)
    assert back.ended_ms == 1709632800_000 and back.track_id == TRACK and back.artist_name == "Ivy"


def test_an_older_listen_of_listenbrainz_spotify_reader_ends_at_listened_at_too():
    listen = {"listened_at": 1609459200, "track_metadata": {
        "artist_name": "Ivy", "track_name": "Velvet Garden",
        "additional_info": {"listening_from": "spotify", "duration_ms": 240_000}}}
    assert read_back(listen).ended_ms == 1609459200_000


def test_listenbrainz_import_of_spotifys_export_ends_at_listened_at():
    listen = {"listened_at": 1609459200, "track_metadata": {
        "artist_name": "Ivy", "track_name": "Velvet Garden",
        "additional_info": {"submission_client": "ListenBrainz Archive Importer", "music_service": "spotify.com",
                            "ms_played": 200_000, "origin_url": f"https://open.spotify.com/track/{TRACK}"}}}
    back = read_back(listen)
    assert back.ended_ms == 1609459200_000 and back.ms_played == 200_000 and back.track_id == TRACK


def test_a_listen_of_another_player_ends_its_length_after_it_started():
    listen = {"listened_at": 1709632800, "track_metadata": {
        "artist_name": "Ivy", "track_name": "Velvet Garden",
        "additional_info": {"duration": 200, "submission_client": "Rhythmbox"}}}
    back = read_back(listen)
    assert back.ended_ms == 1709632800_000 + 200_000 and back.track_id is None and back.ms_played is None
    assert back.name_key == formats.name_key("Velvet Garden", "Ivy")  # kept by name, matched by name


@pytest.mark.parametrize(("listen", "reason"), [
    ([1, 2], formats.Skip.NOT_AN_OBJECT),
    ({"track_metadata": {"track_name": "x", "artist_name": "y"}}, formats.Skip.MISSING_TIME),
    ({"listened_at": "yesterday", "track_metadata": {}}, formats.Skip.BAD_TIME),
    ({"listened_at": True, "track_metadata": {}}, formats.Skip.BAD_TIME),
    ({"listened_at": 1_000_000, "track_metadata": {"track_name": "x"}}, formats.Skip.IMPLAUSIBLE_TIME),
    ({"listened_at": 10 ** 30, "track_metadata": {"track_name": "x"}}, formats.Skip.IMPLAUSIBLE_TIME),
    ({"listened_at": 1709632800, "track_metadata": "Velvet Garden"}, formats.Skip.NO_ITEM),
    ({"listened_at": 1709632800, "track_metadata": {"artist_name": "Ivy"}}, formats.Skip.MISSING_NAME),
    ({"listened_at": 1709632800, "track_metadata": {"track_name": "x", "additional_info": {
        "spotify_id": "https://open.spotify.com/track/short"}}}, formats.Skip.BAD_URI),
    ({"listened_at": 1709632800, "track_metadata": {"track_name": "x", "additional_info": {
        "ms_played": -1}}}, formats.Skip.BAD_MS_PLAYED),
    ({"listened_at": 1709632800, "track_metadata": {"track_name": "x", "additional_info": {
        "ms_played": 12_000}}}, formats.Skip.TOO_SHORT),
    ({"listened_at": 1709632800, "track_metadata": {"track_name": "x", "additional_info": {
        "playvault_played_at": "2020-01-01T00:00:00.000Z"}}}, formats.Skip.BAD_TIME),  # years from listened_at
    ({"listened_at": 1709632800, "track_metadata": {"track_name": "x", "additional_info": {
        "playvault_played_at": "soon"}}}, formats.Skip.BAD_TIME),
])
def test_bad_listens_are_named(listen, reason):
    with pytest.raises(formats.RowError) as caught:
        formats.parse_listenbrainz(listen, 0, now=NOW, rule=RULE)
    assert caught.value.reason == reason


@pytest.mark.parametrize(("name", "kind"), [
    ("listens/2024/3.jsonl", formats.LISTENBRAINZ),
    ("playvault-20261203T070000Z-0a1b2c3d-listens.jsonl", formats.LISTENBRAINZ),
    ("feedback.jsonl", None),  # ListenBrainz's export: no listens in these two
    ("pinned_recording.jsonl", None),
    ("user.json", None),
    ("Streaming_History_Audio_playvault-20261203T070000Z-0a1b2c3d.json", formats.EXTENDED),
])
def test_file_names(name, kind):
    assert formats.classify(name) == kind


def test_the_first_line_tells_listens_from_other_json():
    assert formats.sniff({"listened_at": 1, "track_metadata": {}}) == formats.LISTENBRAINZ
    problem = formats.shape_problem(formats.LISTENBRAINZ, {"played_at": "2024-01-01", "track": {}})
    assert problem == "not ListenBrainz listens: the first item lacks listened_at, track_metadata (its keys: " \
                      "played_at, track)"


# ---------------------------------------------------------------- Spotify's extended streaming history
SPOTIFY_FIELDS = ["ts", "username", "platform", "ms_played", "conn_country", "ip_addr", "master_metadata_track_name",
                  "master_metadata_album_artist_name", "master_metadata_album_album_name", "spotify_track_uri",
                  "episode_name", "episode_show_name", "spotify_episode_uri", "audiobook_title", "audiobook_uri",
                  "audiobook_chapter_uri", "audiobook_chapter_title", "reason_start", "reason_end", "shuffle",
                  "skipped", "offline", "offline_timestamp", "incognito_mode"]
UNKNOWN = ["conn_country", "ip_addr", "audiobook_title", "audiobook_uri", "audiobook_chapter_uri",
           "audiobook_chapter_title", "reason_start", "reason_end", "shuffle", "skipped", "offline",
           "offline_timestamp", "incognito_mode"]


def test_a_polled_track_as_spotify_writes_it_unknowns_null():
    stream = spotify_stream(track_row(), "alice")
    assert list(stream) == SPOTIFY_FIELDS
    assert stream["ts"] == "2024-03-05T10:00:00Z"  # played_at is the end already: ts = played_at, whole seconds
    assert (stream["ms_played"], stream["platform"]) == (None, None)  # a polled play: not known
    assert (stream["master_metadata_track_name"], stream["master_metadata_album_artist_name"],
            stream["master_metadata_album_album_name"], stream["spotify_track_uri"]) == (
        "Velvet Garden", "Ivy", "Greenhouse", f"spotify:track:{TRACK}")
    assert all(stream[k] is None for k in UNKNOWN) and stream["username"] == "alice"
    assert stream["spotify_episode_uri"] is None and stream["episode_name"] is None


def test_an_imported_episode_as_spotify_writes_it():
    stream = spotify_stream(episode_row(ms_played=1_000_000, platform="ios", source="export"), "alice")
    assert (stream["ms_played"], stream["platform"], stream["spotify_episode_uri"], stream["episode_name"],
            stream["episode_show_name"]) == (1_000_000, "ios", f"spotify:episode:{EPISODE}", "Pilot", "The Show")
    assert stream["spotify_track_uri"] is None and stream["master_metadata_track_name"] is None


def test_spotify_rows_read_back_with_ms_played_null_as_unknown():
    back = formats.parse_extended(json.loads(json.dumps(spotify_stream(track_row(), "alice"))), 0, user_id="alice",
                                  now=NOW, rule=RULE)
    assert back.ended_ms == END_MS - 500 and back.ms_played is None and back.track_id == TRACK
    with pytest.raises(formats.RowError) as caught:  # absent is not null: Spotify's files always say
        formats.parse_extended({k: v for k, v in spotify_stream(track_row(), "alice").items() if k != "ms_played"},
                               0, user_id="alice", now=NOW, rule=RULE)
    assert caught.value.reason == formats.Skip.BAD_MS_PLAYED


# ---------------------------------------------------------------- JSON Lines
def lines(data: bytes, **kwargs) -> list:
    return list(iter_lines(io.BytesIO(data), **kwargs))


def test_json_lines_across_chunk_boundaries_blank_lines_and_a_bom():
    values = [{"listened_at": i, "name": "é" * i} for i in range(30)]
    data = b"\xef\xbb\xbf" + b"\n\n".join(json.dumps(v, ensure_ascii=False).encode() for v in values) + b"\r\n"
    for chunk in (1, 2, 5, 64, 65536):
        assert lines(data, chunk_bytes=chunk) == values


@pytest.mark.parametrize(("data", "message", "index"), [
    (b"", "no JSON value", 0),
    (b"\n  \n", "no JSON value", 0),
    (b'{"a": 1}\n{"a": \n{"a": 3}\n', "invalid JSON on line 2", 1),
    (b'{"a": 1}\n\n{"a": "\xff"}\n', "not UTF-8 text on line 3", 1),
    (b'{"a": 1}\n' + b"[" * 100_000 + b"\n", "line 2: nested too deeply", 1),
])
def test_unreadable_json_lines_name_the_line(data, message, index):
    with pytest.raises(NotJsonArray, match=message) as caught:
        lines(data)
    assert caught.value.item_index == index


def test_an_overlong_line_is_refused():
    with pytest.raises(NotJsonArray, match="line 1 is longer than 100 characters"):
        lines(b'{"a": "' + b"x" * 500 + b'"}\n', max_item_chars=100, chunk_bytes=16)


def test_a_file_of_unknown_kind_is_read_as_what_it_starts_with():
    assert list(iter_items(io.BytesIO(b' \n{"a": 1}\n{"a": 2}'))) == [{"a": 1}, {"a": 2}]
    assert list(iter_items(io.BytesIO(b'\xef\xbb\xbf [{"a": 1}, {"a": 2}]'))) == [{"a": 1}, {"a": 2}]
    with pytest.raises(NotJsonArray, match="found an object"):  # a named Spotify file must be an array
        list(iter_items(io.BytesIO(b'{"a": 1}'), lines=False))
