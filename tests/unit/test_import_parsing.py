"""The export parsers (pure): streaming JSON arrays, the two formats, validation reasons, the
listening rule, and the de-duplication rule's edges."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest

from playvault.imports import dedup, formats
from playvault.imports.jsonstream import NotJsonArray, iter_array
from playvault.normalize import canonical_played_at_ms

NOW = datetime(2026, 6, 1, tzinfo=UTC)
RULE = formats.ListeningRule()
TRACK_A = "4uLU6hMCjMI75M1A2tKUQC"
TRACK_B = "7ouMYWpwJ422jRcDASZB7P"


def items(data: bytes, **kwargs):
    return list(iter_array(io.BytesIO(data), **kwargs))


# ---------------------------------------------------------------- streaming JSON
def test_items_come_out_one_by_one_across_chunk_boundaries():
    rows = [{"ts": f"2020-01-01T00:00:{i:02d}Z", "ms_played": 10 ** i, "name": "é" * i} for i in range(40)]
    data = json.dumps(rows, ensure_ascii=False).encode()
    for chunk in (1, 2, 3, 7, 64):  # boundaries inside numbers, strings and multi-byte characters
        assert items(data, chunk_bytes=chunk) == rows


def test_top_level_numbers_split_by_a_chunk_boundary_are_not_cut():
    assert items(b"[12345, 678]", chunk_bytes=3) == [12345, 678]


def test_memory_is_bounded_by_one_item_not_the_file():
    class Source(io.RawIOBase):
        """200,000 rows generated on the fly: the reader never holds more than a chunk."""

        def __init__(self):
            self.parts = iter([b"[", *(b'{"ts":"2020-01-01T00:00:00Z","ms_played":31000},' for _ in range(199_999)),
                               b'{"ts":"2020-01-01T00:00:00Z","ms_played":31000}]'])
            self.largest = 0

        def read(self, size=-1):
            out = next(self.parts, b"")
            self.largest = max(self.largest, len(out))
            return out

    source = Source()
    count = sum(1 for _ in iter_array(source))
    assert count == 200_000
    assert source.largest < 100


@pytest.mark.parametrize(("data", "message"), [
    (b"", "no JSON value"),
    (b"   ", "no JSON value"),
    (b'{"ts": 1}', "found an object"),
    (b"hello", "found not JSON"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b'[{"a": 1}, {"b": ]', "invalid JSON in item 1"),
    (b'[{"a": 1} {"b": 2}]', "expected ',' or ']'"),
    (b'[{"a": 1}', "breaks off"),
    (b'[{"a": 1}] trailing', "text after the end"),
])
def test_not_a_json_array_is_named(data, message):
    with pytest.raises(NotJsonArray, match=message):
        items(data, chunk_bytes=4)


def test_an_oversized_item_is_refused():
    with pytest.raises(NotJsonArray, match="larger than"):
        items(b'[{"a": "' + b"x" * 5000, chunk_bytes=512, max_item_chars=1000)


def test_utf8_bom_and_empty_array():
    assert items(b"\xef\xbb\xbf[]") == []
    assert items(b"\xef\xbb\xbf [ {\"a\": 1} ] \n") == [{"a": 1}]


# ---------------------------------------------------------------- formats
@pytest.mark.parametrize(("name", "kind"), [
    ("Spotify Extended Streaming History/Streaming_History_Audio_2019-2021_3.json", formats.EXTENDED),
    ("MyData/endsong_0.json", formats.EXTENDED),
    ("Spotify Extended Streaming History/Streaming_History_Video_2020-2024.json", formats.VIDEO),
    ("MyData/StreamingHistory0.json", formats.ACCOUNT_MUSIC),
    ("StreamingHistory_music_2.json", formats.ACCOUNT_MUSIC),
    ("StreamingHistory_podcast_0.json", formats.ACCOUNT_PODCAST),
    ("MyData/Userdata.json", None),
    ("ReadMeFirst_ExtendedStreamingHistory.pdf", None),
])
def test_file_names(name, kind):
    assert formats.classify(name) == kind


def extended(**fields):
    row = {"ts": "2021-03-04T05:06:07Z", "platform": "android", "ms_played": 180_000, "conn_country": "SE",
           "ip_addr": "192.0.2.1", "master_metadata_track_name": "Song", "master_metadata_album_artist_name": "Band",
           "master_metadata_album_album_name": "Album", "spotify_track_uri": f"spotify:track:{TRACK_A}",
           "episode_name": None, "episode_show_name": None, "spotify_episode_uri": None, "reason_start": "trackdone",
           "reason_end": "trackdone", "shuffle": False, "skipped": False, "offline": False,
           "offline_timestamp": 1614834367, "incognito_mode": False}
    row.update(fields)
    return row


def parse_ext(row, user_id="alice", rule=RULE):
    return formats.parse_extended(row, 0, user_id=user_id, now=NOW, rule=rule)


def test_an_extended_track_row_is_the_stream_end_with_its_names():
    row = parse_ext(extended())
    assert row.ended_ms == int(datetime(2021, 3, 4, 5, 6, 7, tzinfo=UTC).timestamp() * 1000)
    assert (row.item_type, row.track_id, row.track_name, row.artist_name, row.album_name) == (
        "track", TRACK_A, "Song", "Band", "Album")
    assert row.precision_ms == 1000 and row.resolved


def test_an_extended_episode_row():
    row = parse_ext(extended(spotify_track_uri=None, master_metadata_track_name=None,
                             spotify_episode_uri=f"spotify:episode:{TRACK_B}", episode_name="Ep 1",
                             episode_show_name="The Show"))
    assert (row.item_type, row.episode_id, row.episode_name, row.show_name) == ("episode", TRACK_B, "Ep 1", "The Show")


@pytest.mark.parametrize(("fields", "reason"), [
    ({"ts": None}, formats.Skip.MISSING_TIME),
    ({"ts": "yesterday"}, formats.Skip.BAD_TIME),
    ({"ts": "1999-01-01T00:00:00Z"}, formats.Skip.IMPLAUSIBLE_TIME),
    ({"ts": "2030-01-01T00:00:00Z"}, formats.Skip.IMPLAUSIBLE_TIME),
    ({"ms_played": "lots"}, formats.Skip.BAD_MS_PLAYED),
    ({"ms_played": -5}, formats.Skip.BAD_MS_PLAYED),
    ({"ms_played": True}, formats.Skip.BAD_MS_PLAYED),
    ({"spotify_track_uri": "spotify:track:short"}, formats.Skip.BAD_URI),
    ({"spotify_track_uri": 12}, formats.Skip.BAD_URI),
    ({"username": "bob"}, formats.Skip.OTHER_ACCOUNT),
    ({"incognito_mode": True}, formats.Skip.INCOGNITO),
    ({"ms_played": 29_999}, formats.Skip.TOO_SHORT),
    ({"spotify_track_uri": None, "master_metadata_track_name": None}, formats.Skip.NO_ITEM),
    ({"spotify_track_uri": None, "audiobook_uri": "spotify:show:x"}, formats.Skip.AUDIOBOOK),
])
def test_bad_extended_rows_are_named(fields, reason):
    with pytest.raises(formats.RowError) as caught:
        parse_ext(extended(**fields))
    assert caught.value.reason == reason


def test_not_an_object():
    with pytest.raises(formats.RowError) as caught:
        parse_ext(["ts", 1])
    assert caught.value.reason == formats.Skip.NOT_AN_OBJECT


def test_the_listening_rule_counts_30_seconds_and_is_a_parameter():
    assert parse_ext(extended(ms_played=30_000)).ms_played == 30_000  # a track skipped at 30 s counts
    assert parse_ext(extended(ms_played=31_000)).ms_played == 31_000
    strict = formats.ListeningRule(min_ms_played=60_000, skip_incognito=False)
    with pytest.raises(formats.RowError):
        parse_ext(extended(ms_played=31_000), rule=strict)
    assert parse_ext(extended(incognito_mode=True, ms_played=60_000), rule=strict).track_id == TRACK_A


def test_own_username_is_fine():
    assert parse_ext(extended(username="alice")).track_id == TRACK_A


def test_account_data_rows_are_minute_precision_and_unresolved():
    row = formats.parse_account({"endTime": "2019-02-03 04:05", "artistName": "Band", "trackName": "Song",
                                 "msPlayed": 200_000}, 3, kind=formats.ACCOUNT_MUSIC, now=NOW, rule=RULE)
    assert row.ended_ms == int(datetime(2019, 2, 3, 4, 5, tzinfo=UTC).timestamp() * 1000)
    assert row.precision_ms == 60_000 and not row.resolved and row.name_key == "song\x1fband"
    podcast = formats.parse_account({"endTime": "2019-02-03 04:05", "podcastName": "Show", "episodeName": "Ep",
                                     "msPlayed": 900_000}, 0, kind=formats.ACCOUNT_PODCAST, now=NOW, rule=RULE)
    assert podcast.item_type == "episode" and podcast.name_key == "ep\x1fshow"


@pytest.mark.parametrize(("row", "reason"), [
    ({"endTime": "2019-02-03T04:05", "trackName": "x", "msPlayed": 40_000}, formats.Skip.BAD_TIME),
    ({"endTime": "2019-13-03 04:05", "trackName": "x", "msPlayed": 40_000}, formats.Skip.BAD_TIME),
    ({"trackName": "x", "msPlayed": 40_000}, formats.Skip.MISSING_TIME),
    ({"endTime": "2019-02-03 04:05", "trackName": "", "msPlayed": 40_000}, formats.Skip.MISSING_NAME),
    ({"endTime": "2019-02-03 04:05", "trackName": "x", "msPlayed": None}, formats.Skip.BAD_MS_PLAYED),
    ({"endTime": "2019-02-03 04:05", "trackName": "x", "msPlayed": 1000}, formats.Skip.TOO_SHORT),
])
def test_bad_account_rows_are_named(row, reason):
    with pytest.raises(formats.RowError) as caught:
        formats.parse_account(row, 0, kind=formats.ACCOUNT_MUSIC, now=NOW, rule=RULE)
    assert caught.value.reason == reason


def test_shape_of_another_json():
    assert formats.shape_problem(formats.EXTENDED, {"endTime": "x", "msPlayed": 1}) is not None
    assert "lacks ts, ms_played" in formats.shape_problem(formats.EXTENDED, {"name": "playlist"})
    assert formats.shape_problem(formats.EXTENDED, extended()) is None
    assert formats.sniff({"endTime": "x", "msPlayed": 1, "trackName": "y"}) == formats.ACCOUNT_MUSIC
    assert formats.sniff({"playlists": []}) is None


# ---------------------------------------------------------------- de-duplication
T = 1_600_000_000_000
TOL = 90_000


def row(ms, track=TRACK_A, index=0, precision=1000, name=None):
    if name is not None:
        return formats.ImportRow(index, ms, precision, "track", 60_000, track_name=name, artist_name="Band")
    return formats.ImportRow(index, ms, precision, "track", 60_000, track_id=track)


def polled(ms, track=TRACK_A, name_key=None, ref=None):
    return dedup.ExistingPlay(canonical_played_at_ms(ms), ms, "track", track, None, name_key, ref)


def decide(rows, existing, context=()):
    return [d.outcome for d in dedup.decide(rows, list(context), existing, tolerance_ms=TOL,
                                            ref_of=lambda r: f"job:0:{r.index}")]


def test_a_stream_polled_already_is_a_duplicate_within_the_tolerance():
    assert decide([row(T + 1500)], [polled(T)]) == ["duplicate"]
    assert decide([row(T + TOL)], [polled(T)]) == ["duplicate"]  # the boundary is inside
    assert decide([row(T + TOL + 1)], [polled(T)]) == ["new"]
    assert decide([row(T - TOL - 1)], [polled(T)]) == ["new"]
    assert decide([row(T)], [polled(T, track=TRACK_B)]) == ["new"]  # another track at the same time


def test_same_track_twice_in_a_row_stays_two_plays():
    # Played twice 40 s apart (a skip at 31 s, then again): two polled plays absorb the two rows.
    assert decide([row(T, index=0), row(T + 40_000, index=1)], [polled(T), polled(T + 40_000)]) == [
        "duplicate", "duplicate"]
    # Only one of them was polled: the other is new, whichever the row order.
    assert sorted(decide([row(T + 40_000, index=1), row(T, index=0)], [polled(T + 39_000)])) == ["duplicate", "new"]


def test_closest_pairs_match_first():
    decisions = dedup.decide([row(T, index=0), row(T + 60_000, index=1)], [], [polled(T + 55_000)],
                             tolerance_ms=TOL, ref_of=lambda r: f"j:0:{r.index}")
    assert [d.outcome for d in decisions] == ["new", "duplicate"]


def test_minute_precision_rows_cover_their_minute():
    minute = T - T % 60_000
    assert decide([row(minute, precision=60_000, name="Song")], [polled(minute + 59_000, name_key="song\x1fband")]) \
        == ["duplicate"]
    assert decide([row(minute, precision=60_000, name="Song")],
                  [polled(minute + 59_999 + TOL, name_key="song\x1fband")]) == ["duplicate"]
    assert decide([row(minute, precision=60_000, name="Song")],
                  [polled(minute + 60_000 + TOL, name_key="song\x1fband")]) == ["new"]
    assert decide([row(minute, precision=60_000, name="Other")], [polled(minute, name_key="song\x1fband")]) == ["new"]


def test_two_streams_in_the_same_minute_get_two_keys():
    minute = T - T % 60_000
    decisions = dedup.decide([row(minute, index=0, precision=60_000, name="A"),
                              row(minute, index=1, precision=60_000, name="B")], [], [], tolerance_ms=TOL,
                             ref_of=lambda r: f"j:0:{r.index}")
    assert [d.outcome for d in decisions] == ["new", "new"]
    assert decisions[0].played_at != decisions[1].played_at
    assert decisions[1].played_at_ms == minute + 1


def test_a_key_taken_by_another_play_is_never_overwritten():
    decisions = dedup.decide([row(T, track=TRACK_B)], [], [polled(T, track=TRACK_A)], tolerance_ms=TOL,
                             ref_of=lambda r: "j:0:0")
    assert decisions[0].outcome == "new" and decisions[0].played_at_ms == T + 1


def test_a_retried_chunk_recognises_its_own_rows():
    assert decide([row(T, index=5)], [polled(T, ref="job:0:5")]) == ["already"]
    # a row of an earlier import at the same place is a duplicate, not "already"
    assert decide([row(T, index=5)], [polled(T, ref="other-job:0:5")]) == ["duplicate"]


def test_context_rows_keep_their_claims_across_a_chunk_boundary():
    # The previous chunk's last row absorbed the polled play; this chunk's row (same track, 50 s
    # later) must not absorb it a second time.
    previous = row(T, index=9)
    assert decide([row(T + 50_000, index=10)], [polled(T + 20_000)], context=[previous]) == ["new"]
    assert decide([row(T + 50_000, index=10)], [polled(T + 20_000)]) == ["duplicate"]
