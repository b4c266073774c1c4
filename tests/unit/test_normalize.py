"""normalize: one canonical played_at, exact milliseconds, synthetic ids for local files, page dedup."""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime

import pytest

from playvault import clock, normalize
from playvault.normalize import (
    LOCAL_PREFIX,
    PayloadError,
    canonical_played_at,
    parse_page,
    parse_play,
    parse_played_at,
)
from spotify_emulator import catalog

CANONICAL = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def history(played_at: str, track: dict) -> dict:
    return {"played_at": played_at, "track": copy.deepcopy(track), "context": None}


def canonical(value: str) -> str:
    return canonical_played_at(parse_played_at(value))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2016-12-13T20:44:04.589Z", "2016-12-13T20:44:04.589Z"),
        ("2016-12-13T20:44:04Z", "2016-12-13T20:44:04.000Z"),
        ("2016-12-13T20:44:04.000Z", "2016-12-13T20:44:04.000Z"),
        ("2016-12-13T20:44:04.5Z", "2016-12-13T20:44:04.500Z"),
        ("2016-12-13T20:44:04.589123Z", "2016-12-13T20:44:04.589Z"),
        ("2016-12-13T21:44:04.589+01:00", "2016-12-13T20:44:04.589Z"),
    ],
)
def test_played_at_has_one_canonical_form(raw, expected):
    assert canonical(raw) == expected
    assert CANONICAL.match(canonical(raw))


def test_with_and_without_milliseconds_are_the_same_key():
    assert canonical("2016-12-13T20:44:04Z") == canonical("2016-12-13T20:44:04.000Z")
    assert canonical("2016-12-13T20:44:04Z") != canonical("2016-12-13T20:44:04.001Z")


def test_played_at_ms_is_exact_for_every_millisecond():
    # Floats would turn .589 into .58899... and lose a millisecond for some values: check them all.
    base_s = 1_481_661_844
    for millis in range(1000):
        raw = f"{datetime.fromtimestamp(base_s, UTC):%Y-%m-%dT%H:%M:%S}.{millis:03d}Z"
        play = parse_play(history(raw, catalog.track(1, 0)))
        assert play.played_at_ms == base_s * 1000 + millis
        assert play.played_at == raw
        assert clock.to_ms(clock.from_ms(play.played_at_ms)) == play.played_at_ms


def test_known_example_value():
    play = parse_play(history("2016-12-13T20:44:04.589Z", catalog.track(1, 0)))
    assert play.played_at_ms == 1481661844589
    whole = parse_play(history("2016-12-13T20:44:04Z", catalog.track(1, 0)))
    assert whole.played_at_ms == 1481661844000


@pytest.mark.parametrize("raw", [None, "", "yesterday", "2016-13-45T99:00:00Z", 1481661844589])
def test_unreadable_played_at_is_a_payload_error_naming_the_field(raw):
    with pytest.raises(PayloadError, match="played_at"):
        parse_played_at(raw)


def test_local_file_without_ids_gets_stable_synthetic_ids():
    raw = catalog.local_track(1, 3)
    assert raw["id"] is None and raw["album"]["id"] is None and raw["artists"][0]["id"] is None
    first = parse_play(history("2026-01-01T00:00:00.000Z", raw)).track
    again = parse_play(history("2026-01-02T00:00:00Z", copy.deepcopy(raw))).track
    assert first.is_local
    for track in (first, again):
        assert track.track_id.startswith(LOCAL_PREFIX)
        assert track.album.album_id.startswith(LOCAL_PREFIX)
        assert all(a.artist_id.startswith(LOCAL_PREFIX) for a in (*track.artists, *track.album.artists))
    assert again.track_id == first.track_id
    assert again.album.album_id == first.album.album_id
    assert again.artists[0].artist_id == first.artists[0].artist_id
    # Kinds never collide: a track, its album and its artist have different ids.
    assert len({first.track_id, first.album.album_id, first.artists[0].artist_id}) == 3


def test_different_local_tracks_get_different_ids():
    tracks = [parse_play(history("2026-01-01T00:00:00Z", catalog.local_track(1, i))).track for i in range(40)]
    keys = {(t.name, t.uri) for t in tracks}
    assert len({t.track_id for t in tracks}) == len(keys) == 40


def test_local_tracks_with_same_names_but_no_uri_differ_by_title():
    raw = copy.deepcopy(catalog.local_track(1, 5))
    raw["uri"] = None
    other = copy.deepcopy(raw)
    other["name"] = raw["name"] + " (take 2)"
    one = parse_play(history("2026-01-01T00:00:00Z", raw)).track
    two = parse_play(history("2026-01-01T00:00:00Z", other)).track
    assert one.track_id != two.track_id
    assert one.album.album_id == two.album.album_id  # same album, same artist: one album row


def test_spotify_ids_are_kept_as_they_are():
    raw = catalog.track(1, 2)
    track = parse_play(history("2026-01-01T00:00:00Z", raw)).track
    assert track.track_id == raw["id"]
    assert track.album.album_id == raw["album"]["id"]
    assert [a.artist_id for a in track.artists] == [a["id"] for a in raw["artists"]]
    assert not track.is_local


def test_parse_page_deduplicates_by_played_at_and_sorts_oldest_first():
    body = {
        "items": [
            history("2026-01-01T10:00:02.000Z", catalog.track(1, 1)),
            history("2026-01-01T10:00:01Z", catalog.track(1, 2)),
            history("2026-01-01T10:00:01.000Z", catalog.track(1, 2)),  # the same play, other form
            history("2026-01-01T10:00:02.000Z", catalog.track(1, 1)),  # exact repeat
            history("2026-01-01T10:00:00.123Z", catalog.local_track(1, 1)),
        ],
        "next": None,
    }
    page = parse_page(body)
    assert [p.played_at for p in page.plays] == [
        "2026-01-01T10:00:00.123Z",
        "2026-01-01T10:00:01.000Z",
        "2026-01-01T10:00:02.000Z",
    ]
    assert page.next_url is None


def test_parse_page_keeps_next_and_accepts_an_empty_page():
    page = parse_page({"items": [], "next": "http://x/next", "cursors": {}})
    assert page.plays == [] and page.next_url == "http://x/next"


@pytest.mark.parametrize("body", [None, [], {}, {"items": None}, "not json"])
def test_parse_page_rejects_a_body_without_items(body):
    with pytest.raises(PayloadError):
        parse_page(body)


def test_milliseconds_convert_exactly_both_ways():
    """A float timestamp turns .589 into .58899... and loses a millisecond: every ms -> time -> key
    conversion goes through clock.from_ms and normalize.canonical_played_at_ms, both exact."""
    for ms in (1_700_000_000_589, 1_700_000_000_001, 1_700_000_000_999, 0, 1_600_000_000_589):
        assert clock.to_ms(clock.from_ms(ms)) == ms
        key = normalize.canonical_played_at_ms(ms)
        assert key.endswith(f".{ms % 1000:03d}Z")
        assert key == normalize.canonical_played_at(clock.from_ms(ms))
