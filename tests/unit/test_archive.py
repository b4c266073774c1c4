"""Archiver.archive_user against moto (every table of template.yaml) and the in-process emulator.

The domain clock is frozen at NOW; plays are placed before NOW so the emulator (real clock) shows
them. Waits go through a fake sleep.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError

from playvault import archive, clock
from playvault.crypto import REFRESH_TOKEN
from playvault.failures import AuthRevoked, FailureType
from playvault.normalize import canonical_played_at, parse_play, parse_played_at
from playvault.spotify import Budget
from playvault.store import catalog, gaps, plays, state, users
from spotify_emulator import catalog as emulator_catalog
from tests.unit.helpers import make_archiver, make_cipher, make_spotify, make_user, open_token, sign_in

RP = "/v1/me/player/recently-played"
CANONICAL = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def now() -> datetime:
    frozen = datetime.now(UTC).replace(microsecond=0)
    clock.set_clock(lambda: frozen)  # reset by conftest's autouse fixture
    return frozen


class World:
    def __init__(self, aws_env, emulator, now: datetime, **client_kwargs) -> None:
        self.emulator = emulator
        self.state = emulator.state
        self.now = now
        self.sleeps: list[float] = []
        client_kwargs.setdefault("sleep", self.sleeps.append)
        self.archiver = make_archiver(aws_env, emulator, **client_kwargs)
        self.cipher = self.archiver.cipher

    def sign_up(self, user_id: str = "alice", *, rotate: bool = False) -> str:
        self.state.add_user(user_id, rotate_refresh_tokens=rotate)
        refresh_token = sign_in(self.emulator, user_id)
        make_user(user_id, refresh_token, self.cipher)
        return refresh_token

    def play(self, user_id: str, minutes_ago: float, **kwargs) -> int:
        item = self.state.add_play(user_id, self.now - timedelta(minutes=minutes_ago), **kwargs)
        return parse_play(item).played_at_ms

    def archive(self, user_id: str = "alice") -> archive.ArchiveResult:
        return self.archiver.archive_user(user_id, Budget.seconds(60))

    def user(self, user_id: str = "alice") -> users.UserModel:
        found = users.get(user_id)
        assert found is not None
        return found

    def stored(self, user_id: str = "alice") -> list[plays.PlayModel]:
        return list(plays.all_plays(user_id))

    def stored_ms(self, user_id: str = "alice") -> list[int]:
        return [int(p.played_at_ms) for p in self.stored(user_id)]

    def truth_ms(self, user_id: str = "alice") -> list[int]:
        return [t["played_at_ms"] for t in self.state.ground_truth(user_id)]

    def counts(self) -> dict[str, int]:
        return self.state.request_counts()


@pytest.fixture
def world(aws_env, emulator, now) -> World:
    return World(aws_env, emulator, now)


class RecordAfter:
    """Wraps the emulator's recently_played to record the `after` each request carried."""

    def __init__(self, emulator_state) -> None:
        self.afters: list[int | None] = []
        self._inner = emulator_state.recently_played
        emulator_state.recently_played = self

    def __call__(self, user_id, limit, after, before):
        self.afters.append(after)
        return self._inner(user_id, limit, after, before)


class DynamoCalls:
    """Counts DynamoDB operations per table on every model's client (botocore event hooks)."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        for model in (catalog.TrackModel, catalog.AlbumModel, catalog.ArtistModel, plays.PlayModel):
            model._get_connection().connection.client.meta.events.register(
                "provide-client-params.dynamodb.*", self._count
            )

    def _count(self, params, model, **_) -> None:
        tables = [params["TableName"]] if "TableName" in params else list(params.get("RequestItems", {}))
        for table in tables:
            self.calls[(model.name, table)] += 1

    def count(self, operation: str, model) -> int:
        return self.calls[(operation, model.Meta.table_name)]


# ---------------------------------------------------------------- the happy path
def test_first_poll_archives_all_visible_plays(world):
    world.sign_up()
    start = world.now - timedelta(hours=3)
    listened = world.state.simulate_listening("alice", start, world.now - timedelta(minutes=5), plays_per_hour=12)
    assert 20 <= listened <= 50
    result = world.archive()
    assert result.status == archive.SUCCESS and result.failure_type is None
    assert result.plays_archived == listened
    assert world.stored_ms() == world.truth_ms()
    truth = world.state.ground_truth("alice")
    stored = world.stored()
    for row, expected in zip(stored, truth, strict=True):
        if not expected["is_local"]:
            assert row.track_id == expected["track_id"]
        assert catalog.TrackModel.get(row.track_id).album_id
    assert result.new_tracks == len({p.track_id for p in stored})
    user = world.user()
    assert user.cursor_ms == max(world.truth_ms())
    assert user.plays_archived == listened
    assert user.last_polled_at == world.now and user.consecutive_failures == 0
    # The fresh access token is kept in the container's memory only, never at rest.
    assert user.access_token_enc is None and user.access_token_expires_at is None
    assert world.archiver.access_tokens.get("alice", world.now)


def test_catalog_rows_reference_their_album_and_artists(world):
    world.sign_up()
    for i in range(5):
        world.play("alice", 60 - i, track_index=i)
    world.archive()
    for row in world.stored():
        track = catalog.TrackModel.get(row.track_id)
        album = catalog.AlbumModel.get(track.album_id)
        assert album.name
        for artist_id in [*track.artist_ids, *album.artist_ids]:
            assert catalog.ArtistModel.get(artist_id).name


def test_second_poll_reads_the_whole_window_and_writes_only_unseen_plays(world):
    world.sign_up()
    first = [world.play("alice", 100 - i, track_index=i) for i in range(5)]
    assert world.archive().plays_archived == 5
    cursor = world.user().cursor_ms
    assert cursor == max(first)

    newer = [world.play("alice", 30 - i, track_index=10 + i) for i in range(3)]
    recorder = RecordAfter(world.state)
    world.state.reset_counts()
    calls = DynamoCalls()
    result = world.archive()
    assert recorder.afters == [None]  # no cursor: Spotify's whole window, late plays included
    assert calls.count("PutItem", plays.PlayModel) == 3  # one conditional put per unseen play
    assert calls.count("Query", plays.PlayModel) == 0  # no imports: nothing to merge
    assert result.plays_archived == 3
    assert world.counts()["recently_played"] == 1
    assert world.stored_ms() == sorted(first + newer)
    user = world.user()
    assert user.cursor_ms == max(newer)
    assert user.plays_archived == 8


def test_idle_poll_is_one_request_and_writes_no_play(world):
    world.sign_up()
    world.play("alice", 10)
    world.archive()
    before = world.user()
    world.state.reset_counts()
    result = world.archive()
    assert result.status == archive.SUCCESS and result.plays_archived == 0
    assert world.counts() == {"token": 0, "me": 0, "recently_played": 1, "authorize": 0}  # cached token
    after = world.user()
    assert after.cursor_ms == before.cursor_ms and after.plays_archived == 1


def test_overlapping_polls_store_each_play_once(world):
    world.sign_up()
    ms = [world.play("alice", 100 - i, track_index=i) for i in range(10)]
    world.archive()
    rows_before = {p.played_at: p.attribute_values for p in world.stored()}
    # Forget part of what was seen (as a crash before the user update would): the polls overlap.
    world.user().update(actions=[users.UserModel.recent_played.set(users.encode_played(ms[:4]))])
    result = world.archive()
    assert result.plays_archived == 6  # rewritten, not added
    rows_after = {p.played_at: p.attribute_values for p in world.stored()}
    assert rows_after == rows_before
    assert world.stored_ms() == ms
    assert world.user().cursor_ms == ms[-1]


def test_played_at_with_and_without_milliseconds_is_stored_canonical(world):
    world.sign_up()
    whole = world.play("alice", 20, whole_second=True)
    precise = world.play("alice", 10, whole_second=False)
    world.play("alice", 5, whole_second=True)
    exposed = [item["played_at"] for item in world.state.recently_played("alice", 50, None, None)[0]]
    assert any(re.match(r".*:\d\dZ$", p) for p in exposed) and any(CANONICAL.match(p) for p in exposed)
    world.archive()
    stored = world.stored()
    assert all(CANONICAL.match(p.played_at) for p in stored)
    assert [p.played_at for p in stored] == [canonical_played_at(clock.from_ms(m)) for m in world.truth_ms()]
    assert whole % 1000 == 0 and stored[0].played_at.endswith(".000Z")
    assert int(stored[1].played_at_ms) == precise


def test_local_files_are_stored_under_synthetic_ids(world):
    world.sign_up()
    world.play("alice", 30, local=True, track_index=1)
    world.play("alice", 20, local=True, track_index=2)
    world.play("alice", 10, local=True, track_index=1)  # the same local file again
    world.play("alice", 5, track_index=3)
    result = world.archive()
    assert result.plays_archived == 4 and result.new_tracks == 3
    ids = [p.track_id for p in world.stored()]
    assert ids[0] == ids[2] != ids[1]
    assert all(i.startswith("local:") for i in ids[:3]) and not ids[3].startswith("local:")
    track = catalog.TrackModel.get(ids[0])
    assert track.is_local and track.album_id.startswith("local:")
    assert catalog.AlbumModel.get(track.album_id).name == emulator_catalog.local_track(7, 1)["album"]["name"]
    assert all(catalog.ArtistModel.get(a).name for a in track.artist_ids)


# ---------------------------------------------------------------- catalog
def test_concurrent_upserts_of_the_same_new_tracks_give_one_row_each(world):
    world.sign_up()
    for i in range(12):
        world.play("alice", 60 - i, track_index=i, local=(i % 4 == 0))
    page = world.archiver.spotify.recently_played(
        world.archiver.spotify.refresh(sign_in(world.emulator, "alice"), Budget.seconds(30)).access_token,
        Budget.seconds(30))
    tracks = [p.track for p in page.plays]
    workers = 8
    barrier = threading.Barrier(workers)

    def upsert() -> int:
        barrier.wait(timeout=10)
        return catalog.upsert_tracks(tracks)

    with ThreadPoolExecutor(workers) as pool:
        results = [f.result(timeout=60) for f in [pool.submit(upsert) for _ in range(workers)]]
    assert all(isinstance(r, int) and r >= 0 for r in results)
    distinct = {t.track_id: t for t in tracks}
    rows = {t.track_id: t for t in catalog.TrackModel.scan()}
    assert set(rows) == set(distinct)
    for track_id, track in distinct.items():
        assert rows[track_id].name == track.name and rows[track_id].album_id == track.album.album_id
    assert {a.album_id for a in catalog.AlbumModel.scan()} == {t.album.album_id for t in tracks}
    artist_ids = {a.artist_id for t in tracks for a in (*t.artists, *t.album.artists)}
    assert {a.artist_id for a in catalog.ArtistModel.scan()} == artist_ids
    assert catalog.upsert_tracks(tracks) == 0  # all known now


def test_known_metadata_is_not_rewritten(world):
    world.sign_up()
    for i in range(6):
        world.play("alice", 120 - i, track_index=i, local=(i == 5))
    calls = DynamoCalls()
    first = world.archive()
    assert first.new_tracks == 6
    assert calls.count("PutItem", catalog.TrackModel) == 6
    assert calls.count("PutItem", catalog.AlbumModel) >= 1 and calls.count("PutItem", catalog.ArtistModel) >= 1

    for i in range(6):  # the same tracks played again
        world.play("alice", 30 - i, track_index=i, local=(i == 5))
    calls.calls.clear()
    second = world.archive()
    assert second.plays_archived == 6 and second.new_tracks == 0
    for model in (catalog.TrackModel, catalog.AlbumModel, catalog.ArtistModel):
        assert calls.count("PutItem", model) == 0
        assert calls.count("UpdateItem", model) == 0 and calls.count("BatchWriteItem", model) == 0
    assert calls.count("PutItem", plays.PlayModel) == 6


def test_tracks_this_container_met_are_not_looked_up_again(world):
    world.sign_up()
    for i in range(4):
        world.play("alice", 120 - i, track_index=i)
    calls = DynamoCalls()
    assert world.archive().new_tracks == 4
    for i in range(4):
        world.play("alice", 30 - i, track_index=i)
    calls.calls.clear()
    assert world.archive().plays_archived == 4
    assert calls.count("BatchGetItem", catalog.TrackModel) == 0  # remembered from the first poll
    assert calls.count("PutItem", plays.PlayModel) == 4

    catalog.forget_known_ids()  # a new container: it asks once, finds them, writes no metadata
    world.play("alice", 10, track_index=0)
    calls.calls.clear()
    result = world.archive()
    assert result.plays_archived == 1 and result.new_tracks == 0
    assert calls.count("BatchGetItem", catalog.TrackModel) == 1
    assert calls.count("PutItem", catalog.TrackModel) == 0


def test_remembered_ids_do_not_outlive_a_rebinding_to_other_tables(world, aws_env):
    from playvault import store
    from playvault.config import TableSettings

    world.sign_up()
    world.play("alice", 60, track_index=1)
    assert world.archive().new_tracks == 1
    for model in (catalog.TrackModel, catalog.AlbumModel, catalog.ArtistModel):  # as if bound to new tables
        for row in list(model.scan()):
            row.delete()
    store.bind(TableSettings.from_env())
    world.play("alice", 30, track_index=1)
    assert world.archive().new_tracks == 1  # looked up again and stored again, not trusted from memory
    assert catalog.TrackModel.count() == 1


def test_remembered_ids_are_bounded_least_recently_used_first():
    known = catalog._KnownIds(capacity=2)
    known.add(catalog.TrackModel, ["a", "b"])
    assert known.unknown(catalog.TrackModel, {"a"}) == set()  # "a" is now the most recently used
    known.add(catalog.TrackModel, ["c"])
    assert known.unknown(catalog.TrackModel, {"a", "b", "c"}) == {"b"}


# ---------------------------------------------------------------- crash safety
def _throttled(*_args, **_kwargs):
    raise ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}},
                      "UpdateItem")


@pytest.mark.parametrize("crash", ["infrastructure", "unexpected"])
def test_crash_between_plays_and_cursor_loses_and_duplicates_nothing(world, monkeypatch, crash):
    world.sign_up()
    world.state.simulate_listening("alice", world.now - timedelta(hours=2), world.now - timedelta(minutes=1), 15)
    real = users.record_success
    crashes = []

    def record_success_once(user, outcome):
        if not crashes:
            crashes.append(outcome)
            if crash == "infrastructure":
                _throttled()
            raise RuntimeError("the container died")
        return real(user, outcome)

    monkeypatch.setattr(users, "record_success", record_success_once)
    if crash == "infrastructure":
        with pytest.raises(ClientError):  # infrastructure: the message is redelivered
            world.archive()
    else:
        failed = world.archive()
        assert failed.status == archive.FAILED and failed.failure_type == FailureType.UNKNOWN
    assert world.stored_ms() == world.truth_ms()  # the plays are durable...
    assert world.user().cursor_ms is None  # ...and the cursor did not move past them

    retry = world.archive()
    assert retry.status == archive.SUCCESS
    assert world.stored_ms() == world.truth_ms()
    assert len(world.stored()) == len(set(world.truth_ms()))
    assert world.user().cursor_ms == max(world.truth_ms())
    assert world.user().consecutive_failures == 0


# ---------------------------------------------------------------- tokens
def test_rotated_refresh_token_is_stored(world):
    old = world.sign_up(rotate=True)
    world.play("alice", 10)
    assert world.archive().status == archive.SUCCESS
    user = world.user()
    new = open_token(world.cipher, user, REFRESH_TOKEN)
    assert new != old
    client = make_spotify(world.emulator)
    assert client.refresh(new, Budget.seconds(10)).access_token  # the stored one works...
    with pytest.raises(AuthRevoked):
        client.refresh(old, Budget.seconds(10))  # ...and once it is used the old one is dead


def test_rotated_refresh_token_survives_a_failed_poll(world):
    old = world.sign_up(rotate=True)
    world.play("alice", 10)
    world.state.inject(RP, status=503, times=3)
    failed = world.archive()
    assert failed.status == archive.FAILED and failed.failure_type == FailureType.NETWORK
    new = open_token(world.cipher, world.user(), REFRESH_TOKEN)
    assert new != old  # stored at once, before the API call failed
    world.archiver.access_tokens.drop("alice")  # a new container: it must refresh with the stored token
    assert world.archive().status == archive.SUCCESS


def test_refresh_token_not_rotated_is_kept(world):
    old = world.sign_up(rotate=False)
    blob = world.user().refresh_token_enc
    world.play("alice", 10)
    assert world.archive().status == archive.SUCCESS
    user = world.user()
    assert user.refresh_token_enc == blob
    assert open_token(world.cipher, user, REFRESH_TOKEN) == old


def test_invalid_grant_marks_the_user_needs_reauth(world):
    world.sign_up()
    world.play("alice", 10)
    world.state.revoke("alice")
    result = world.archive()
    assert result.status == archive.FAILED and result.failure_type == FailureType.AUTH_REVOKED
    user = world.user()
    assert user.status == users.NEEDS_REAUTH
    assert user.last_failure_type == "AUTH_REVOKED" and user.access_token_enc is None
    assert world.stored() == []
    world.state.reset_counts()
    assert world.archive().status == archive.SKIPPED
    assert world.counts()["token"] == 0


def test_undecryptable_token_is_auth_revoked_not_an_infrastructure_error(aws_env, world):
    world.sign_up()
    key = world.user().token_key
    world.user().update(actions=[users.UserModel.token_key.set(key[:-1] + bytes([key[-1] ^ 0x01]))])
    world.archiver.cipher = make_cipher(aws_env)  # a new container: the data key goes to KMS
    result = world.archive()
    assert result.status == archive.FAILED and result.failure_type == FailureType.AUTH_REVOKED
    assert world.user().status == users.NEEDS_REAUTH


def test_api_401_refreshes_once_and_retries_once(world):
    world.sign_up()
    world.play("alice", 20)
    world.archive()
    cached = world.archiver.access_tokens.get("alice", world.now)
    world.play("alice", 10)
    world.state.inject(RP, status=401)
    world.state.reset_counts()
    result = world.archive()
    assert result.status == archive.SUCCESS and result.plays_archived == 1
    assert world.counts()["token"] == 1 and world.counts()["recently_played"] == 2
    user = world.user()
    assert world.archiver.access_tokens.get("alice", world.now) not in (None, cached)  # the new one is kept
    assert user.consecutive_failures == 0


def test_second_401_is_an_auth_failure_in_the_breaker(world):
    world.sign_up()
    world.play("alice", 20)
    world.archive()
    cursor = world.user().cursor_ms
    world.play("alice", 10)
    world.state.inject(RP, status=401, times=2)
    world.state.reset_counts()
    result = world.archive()
    assert result.status == archive.FAILED and result.failure_type == FailureType.AUTH
    assert world.counts()["token"] == 1 and world.counts()["recently_played"] == 2
    user = world.user()
    assert user.consecutive_failures == 1
    assert user.last_failure_type == "AUTH"
    assert user.last_failed_at == world.now
    assert user.cooldown_until == world.now + timedelta(minutes=30)
    assert user.cursor_ms == cursor

    world.state.inject(RP, status=401, times=2)
    world.archive()
    assert world.user().consecutive_failures == 2
    assert world.user().cooldown_until == world.now + timedelta(minutes=60)

    assert world.archive().status == archive.SUCCESS  # a success resets the breaker
    user = world.user()
    assert user.consecutive_failures == 0 and user.cooldown_until is None and user.last_failure_type is None


def test_long_429_defers_and_closes_the_app_rate_gate(world):
    world.sign_up()
    world.play("alice", 10)
    world.state.inject(RP, status=429, retry_after=3600)
    assert state.rate_limited_until(world.now) is None
    result = world.archive()
    assert result.status == archive.DEFERRED
    assert result.failure_type == FailureType.RATE_LIMITED and result.retry_after_s == 3600
    assert state.rate_limited_until(world.now) == world.now + timedelta(seconds=3600)
    user = world.user()
    assert user.consecutive_failures == 0 and user.last_failure_type is None and user.cooldown_until is None
    assert world.stored() == []
    assert world.sleeps == []


def test_short_429_is_waited_out(world):
    world.sign_up()
    world.play("alice", 10)
    world.state.inject(RP, status=429, retry_after=1)
    result = world.archive()
    assert result.status == archive.SUCCESS and result.plays_archived == 1
    assert world.sleeps == [1.0]
    assert state.rate_limited_until(world.now) is None


def test_5xx_is_recorded_as_network(world):
    world.sign_up()
    world.play("alice", 10)
    world.state.inject(RP, status=503, times=3)
    world.state.reset_counts()
    result = world.archive()
    assert result.status == archive.FAILED and result.failure_type == FailureType.NETWORK
    assert world.counts()["recently_played"] == 3
    user = world.user()
    assert user.consecutive_failures == 1 and user.last_failure_type == "NETWORK"
    assert user.cooldown_until == world.now + timedelta(minutes=10)
    assert world.stored() == [] and user.cursor_ms is None


def test_timeout_is_recorded_as_network(aws_env, emulator, now):
    world = World(aws_env, emulator, now, read_timeout_s=0.1, max_attempts=2)
    world.sign_up()
    world.play("alice", 10)
    world.state.inject(RP, delay_s=0.4, times=2)
    result = world.archive()
    assert result.status == archive.FAILED and result.failure_type == FailureType.NETWORK
    assert world.user().last_failure_type == "NETWORK"


def test_deleted_user_is_skipped(world):
    result = world.archive("nobody")
    assert result.status == archive.SKIPPED


# ---------------------------------------------------------------- gaps
def test_more_than_50_plays_between_polls_is_a_detected_gap(world):
    world.sign_up()
    for i in range(10):
        world.play("alice", 500 - i, track_index=i)
    world.archive()
    cursor = world.user().cursor_ms
    for i in range(60):
        world.play("alice", 300 - 2 * i, track_index=20 + i)
    result = world.archive()
    assert result.status == archive.SUCCESS and result.gap_detected
    assert result.plays_archived == 50
    user = world.user()
    stored = set(world.stored_ms())
    truth = set(world.truth_ms())
    newest_fifty = sorted(truth)[-50:]
    assert user.gaps_detected == 1
    (gap,) = gaps.for_user("alice")
    assert (gap.from_ms, gap.to_ms) == (cursor, newest_fifty[0])
    assert gap.from_at == canonical_played_at(clock.from_ms(cursor)) and gap.detected_at == world.now
    missing = truth - stored
    assert missing == truth - world.state.exposed_play_ms("alice")  # exactly Spotify's lost plays
    assert len(missing) == 10
    assert all(gap.from_ms < m < gap.to_ms for m in missing)
    assert user.cursor_ms == max(truth)


def test_up_to_49_new_plays_is_no_gap(world):
    world.sign_up()
    world.play("alice", 500)
    world.archive()
    for i in range(49):
        world.play("alice", 300 - 2 * i, track_index=i)
    result = world.archive()
    assert result.plays_archived == 49 and not result.gap_detected
    assert world.user().gaps_detected == 0
    assert set(world.stored_ms()) == set(world.truth_ms())


def test_a_401_to_a_token_minted_this_poll_is_auth_without_a_second_refresh(aws_env, emulator):
    """No cached token: the poll refreshes; if Spotify still answers 401, refreshing again cannot help."""
    archiver = make_archiver(aws_env, emulator)
    refresh_token = sign_in(emulator, "fresh401")
    make_user("fresh401", refresh_token, archiver.cipher)
    emulator.state.reset_counts()
    emulator.state.inject("/v1/me/player/recently-played", status=401, times=2)
    result = archiver.archive_user("fresh401", Budget.seconds(30))
    assert (result.status, result.failure_type) == ("failed", "AUTH")
    assert emulator.state.request_counts()["token"] == 1


def test_a_gap_before_the_first_archived_play_is_detected_from_the_last_poll(world):
    """No cursor yet (the first poll found nothing): the last poll's time bounds what may be lost."""
    world.sign_up()
    first_poll = world.now - timedelta(minutes=200)
    clock.set_clock(lambda: first_poll)
    assert world.archive().plays_archived == 0
    assert world.user().cursor_ms is None
    for i in range(60):
        world.play("alice", 150 - 2 * i, track_index=i)
    clock.set_clock(lambda: world.now)
    result = world.archive()
    assert result.status == archive.SUCCESS and result.gap_detected
    (gap,) = gaps.for_user("alice")
    assert gap.from_ms == clock.to_ms(first_poll)
    missing = set(world.truth_ms()) - set(world.stored_ms())
    assert len(missing) == 10
    assert all(gap.from_ms < m < gap.to_ms for m in missing)


# ---------------------------------------------------------------- the real feed: late, bad, episodes
def test_a_play_that_shows_up_after_newer_ones_were_archived_is_archived(world):
    world.sign_up()
    early = [world.play("alice", 100 - i, track_index=i) for i in range(3)]
    newer = world.play("alice", 20, track_index=5)
    # Played 60 minutes ago on an offline device: it shows up in the feed only 61 minutes later.
    late = world.play("alice", 60, track_index=9, visible_after_s=61 * 60)
    first = world.archive()
    assert first.plays_archived == 4 and late not in world.stored_ms()
    assert world.user().cursor_ms == newer  # the newest archived play is past the late one's played_at
    later = datetime.now(UTC) + timedelta(minutes=2)
    world.state.clock = lambda: later  # the device synced: the late play is in the feed now
    second = world.archive()
    assert (second.plays_archived, second.late_plays) == (1, 1)
    assert world.stored_ms() == sorted([*early, newer, late])


@pytest.mark.parametrize("kind", ["track_null", "artists_null", "images_null", "duration_not_numeric"])
def test_a_bad_item_never_blocks_the_rest_of_the_page_or_later_polls(world, kind, caplog):
    world.sign_up()
    good = [world.play("alice", 50 - i, track_index=i) for i in range(3)]
    item = world.state.add_play("alice", world.now - timedelta(minutes=30), track_index=7, bad_kind=kind)
    bad = clock.to_ms(parse_played_at(item["played_at"]))
    result = world.archive()
    assert result.status == archive.SUCCESS
    stored = world.stored_ms()
    assert set(good) <= set(stored)
    if kind == "track_null":  # nothing to archive: skipped, counted, logged with the user and played_at
        assert bad not in stored and result.bad_items == 1
        line = next(r for r in caplog.records if r.getMessage() == "bad recently-played item skipped")
        assert line.user_id == "alice" and line.played_at and line.reason == "track is missing"
    else:  # still names a play: kept, with what could be read
        assert bad in stored and result.bad_items == 0
        row = next(p for p in world.stored() if int(p.played_at_ms) == bad)
        assert catalog.TrackModel.get(row.track_id).name
    newer = world.play("alice", 5, track_index=11)
    later = world.archive()
    assert later.status == archive.SUCCESS and newer in world.stored_ms()


def test_an_episode_spotify_never_lists_is_not_polled(world):
    """Spotify never lists podcast episodes in recently-played (shared notes): the emulator neither."""
    world.sign_up()
    song = world.play("alice", 40, track_index=1)
    world.play("alice", 20, track_index=2, episode=True)
    assert world.archive().plays_archived == 1
    assert [int(p.played_at_ms) for p in world.stored()] == [song]


def test_an_episode_is_an_episode_play_not_a_track(world):
    """Should recently-played ever list an episode (an EpisodeObject as `track`), it is kept as one."""
    world.state.listening.update(episodes_in_feed=1)
    world.sign_up()
    song = world.play("alice", 40, track_index=1)
    episode = world.play("alice", 20, track_index=2, episode=True)
    assert world.archive().plays_archived == 2
    rows = {int(p.played_at_ms): p for p in world.stored()}
    assert rows[song].item_type == "track" and rows[song].episode_id is None
    assert rows[episode].item_type == "episode" and rows[episode].track_id is None
    stored = catalog.EpisodeModel.get(rows[episode].episode_id)
    assert stored.name.startswith("Episode") and stored.show_name and stored.show_id
    assert rows[episode].source == "api"


# ---------------------------------------------------------------- concurrency and crashes
def test_two_concurrent_polls_of_one_user_count_once_and_never_move_the_cursor_back(world):
    world.sign_up()
    ms = [world.play("alice", 90 - 3 * i, track_index=i) for i in range(20)]
    barrier = threading.Barrier(2, timeout=10)
    real = users.record_success

    one_at_a_time = threading.Lock()  # DynamoDB applies conditional writes atomically; moto in-process does not

    def record_after_both_fetched(user, outcome):
        barrier.wait()  # both polls have read the user and written their plays
        with one_at_a_time:
            return real(user, outcome)

    import unittest.mock

    with unittest.mock.patch.object(users, "record_success", record_after_both_fetched):
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda run: world.archiver.archive_user("alice", Budget.seconds(60),
                                                                            run_id=run), ["old", "new"]))
    statuses = sorted(r.status for r in results)
    assert statuses == [archive.SKIPPED, archive.SUCCESS]  # one records, the other is refused
    user = world.user()
    assert user.plays_archived == 20  # counted once
    assert world.stored_ms() == ms and len(world.stored()) == 20  # no duplicate row
    assert user.cursor_ms == ms[-1]
    # The loser read an older version: it can never write the cursor (or anything) back.
    assert next(r for r in results if r.status == archive.SKIPPED).reason.startswith("changed meanwhile")


def test_the_gap_record_survives_a_crash_right_after_detection(world, monkeypatch):
    world.sign_up()
    for i in range(10):
        world.play("alice", 500 - i, track_index=i)
    world.archive()
    for i in range(60):
        world.play("alice", 300 - 2 * i, track_index=20 + i)

    def crash(user, outcome):
        raise _throttled_error()

    monkeypatch.setattr(users, "record_success", crash)
    with pytest.raises(ClientError):
        world.archive()
    (gap,) = gaps.for_user("alice")  # durable although the invocation died before the user update
    assert gap.to_ms > gap.from_ms
    monkeypatch.undo()
    retry = world.archive()  # the redelivery detects the same window: the same record, counted once
    assert retry.gap_detected and len(list(gaps.for_user("alice"))) == 1
    assert world.user().gaps_detected == 1


def _throttled_error() -> ClientError:
    return ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow"}}, "UpdateItem")


def test_a_user_already_polled_in_this_run_is_skipped_before_spotify_is_asked(world):
    world.sign_up()
    world.play("alice", 10)
    assert world.archiver.archive_user("alice", Budget.seconds(60), run_id="r1").status == archive.SUCCESS
    world.state.reset_counts()
    again = world.archiver.archive_user("alice", Budget.seconds(60), run_id="r1")
    assert (again.status, again.reason) == (archive.SKIPPED, "already archived in this run")
    assert world.counts()["recently_played"] == 0


# ---------------------------------------------------------------- token lifecycle races
def test_a_lost_rotation_answer_does_not_lock_the_user_out(aws_env, emulator, now):
    world = World(aws_env, emulator, now, read_timeout_s=0.2, max_attempts=3)
    world.sign_up(rotate=True)
    world.play("alice", 10)
    # Spotify rotates the refresh token, but its answer arrives after we stopped waiting.
    world.state.inject("/api/token", delay_s=0.5, times=1)
    world.state.reset_counts()
    lost = world.archive()
    assert (lost.status, lost.failure_type) == (archive.FAILED, FailureType.NETWORK)
    assert world.counts()["token"] == 1, "the grant was not sent again with the same refresh token"
    assert world.user().status == users.ACTIVE
    time.sleep(0.5)  # the lost answer's grant has been processed at Spotify by the time of the next poll
    retry = world.archive()  # the next poll starts again from the stored token
    assert retry.status == archive.SUCCESS and world.user().status == users.ACTIVE
    stored = open_token(world.cipher, world.user(), REFRESH_TOKEN)
    assert make_spotify(world.emulator).refresh(stored, Budget.seconds(10)).access_token


def test_two_concurrent_refreshes_of_a_rotating_token_leave_a_working_token(aws_env, emulator, now):
    world = World(aws_env, emulator, now)
    world.sign_up(rotate=True)
    world.play("alice", 10)
    # Two containers (no shared memory) poll the same user at the same moment.
    second = make_archiver(aws_env, emulator)
    barrier = threading.Barrier(2, timeout=10)
    real_refresh = world.archiver.spotify.refresh

    def refresh_together(client_refresh):
        def call(token, budget):
            barrier.wait()  # both read the same stored refresh token before either refreshed
            return client_refresh(token, budget)
        return call

    world.archiver.spotify.refresh = refresh_together(real_refresh)
    second.spotify.refresh = refresh_together(second.spotify.refresh)
    one_at_a_time = threading.Lock()
    real_store = users.store_rotated_refresh_token

    def store(user, sealed):
        with one_at_a_time:  # DynamoDB applies conditional writes atomically; moto in-process does not
            return real_store(user, sealed)

    import unittest.mock

    with unittest.mock.patch.object(users, "store_rotated_refresh_token", store), \
            ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda a: a.archive_user("alice", Budget.seconds(60)), [world.archiver, second]))
    assert all(r.status in (archive.SUCCESS, archive.SKIPPED) for r in results), results
    user = world.user()
    assert user.status == users.ACTIVE
    stored = open_token(world.cipher, user, REFRESH_TOKEN)
    assert make_spotify(world.emulator).refresh(stored, Budget.seconds(10)).access_token
    world.archiver.spotify.refresh = real_refresh
    world.archiver.access_tokens.drop("alice")
    last = world.archive()
    assert last.status == archive.SUCCESS, last


def test_a_reconnect_during_a_poll_leaves_the_user_active(world, monkeypatch):
    from playvault.store import seats

    world.sign_up(rotate=True)
    world.play("alice", 10)
    real_refresh = world.archiver.spotify.refresh

    def reconnect_meanwhile(token, budget):
        grant = real_refresh(token, budget)
        # The user signs in again while this poll is in flight: new data key, new refresh token.
        fresh = sign_in(world.emulator, "alice")
        seats.reauthorize("alice", tokens=world.cipher.seal_new("alice", fresh, None), access_token_expires_at=None,
                          display_name=None, now=world.now)
        return grant

    monkeypatch.setattr(world.archiver.spotify, "refresh", reconnect_meanwhile)
    world.archive()
    user = world.user()
    assert user.status == users.ACTIVE
    stored = open_token(world.cipher, user, REFRESH_TOKEN)  # opens with the new key: the reconnect was not undone
    monkeypatch.undo()
    world.archiver.access_tokens.drop("alice")
    assert make_spotify(world.emulator).refresh(stored, Budget.seconds(10)).access_token
    assert world.archive().status == archive.SUCCESS and world.user().status == users.ACTIVE


def test_invalid_grant_after_another_poll_rotated_the_token_retries_with_the_stored_one(aws_env, emulator, now):
    """Container A read the user (refresh token T0); meanwhile container B refreshed T0 to T1, used T1
    (so T0 is dead) and stored it. A's refresh with T0 gets invalid_grant: A reads the user again,
    finds T1 and retries once with it, instead of marking the user needs_reauth."""
    world = World(aws_env, emulator, now)
    world.sign_up(rotate=True)
    world.play("alice", 10)
    other = make_archiver(aws_env, emulator)
    real_refresh = world.archiver.spotify.refresh
    calls: list[str] = []

    def refresh_after_the_other_poll(token, budget):
        if not calls:
            calls.append("other")
            assert other.archive_user("alice", Budget.seconds(30)).status == archive.SUCCESS  # T0 -> T1, stored
            fresh = users.get("alice")
            t1 = open_token(world.cipher, fresh, REFRESH_TOKEN)
            make_spotify(world.emulator).refresh(t1, Budget.seconds(10))  # T1 used: T0 is dead now
        calls.append("mine")
        return real_refresh(token, budget)

    world.archiver.spotify.refresh = refresh_after_the_other_poll
    result = world.archive()
    assert result.status in (archive.SUCCESS, archive.SKIPPED), result  # skipped: the other poll recorded first
    assert calls == ["other", "mine", "mine"], "one retry with the stored token"
    assert world.user().status == users.ACTIVE


# ---------------------------------------------------------------- the cadence's rate estimate
def _cadence_user(last_polled_at=None, next_poll_at=None):
    from types import SimpleNamespace

    return SimpleNamespace(last_polled_at=last_polled_at, next_poll_at=next_poll_at)


def test_a_listener_who_just_started_a_heavy_session_is_polled_at_the_next_run():
    """First poll, 6 plays all in the last 6 minutes (a 60-an-hour session has begun): measured over
    an hour they look light, and an hourly next poll would find 60 plays, 10 past Spotify's window."""
    from playvault.archive import Cadence

    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    cadence = Cadence()
    started = clock.to_ms(now - timedelta(minutes=6))
    assert cadence.next_poll_at(_cadence_user(), now, 6, False, oldest_new_ms=started) == now + timedelta(minutes=14)
    # the same 6 plays spread over the hour: an ordinary listener, polled again in an hour
    spread = clock.to_ms(now - timedelta(minutes=55))
    assert cadence.next_poll_at(_cadence_user(), now, 6, False, oldest_new_ms=spread) == now + timedelta(minutes=59)
    # after an hourly poll, 12 plays of the last 10 minutes (a burst): the next run too
    last = now - timedelta(hours=1)
    burst = clock.to_ms(now - timedelta(minutes=10))
    assert cadence.next_poll_at(_cadence_user(last, now), now, 12, False,
                                oldest_new_ms=burst) == now + timedelta(minutes=14)
    # a steady 17 an hour (one song after another) stays hourly
    steady = clock.to_ms(now - timedelta(minutes=58))
    assert cadence.next_poll_at(_cadence_user(last, now), now, 17, False,
                                oldest_new_ms=steady) == now + timedelta(minutes=59)
    # one play a few seconds ago is no session: the rate is measured over 7.5 minutes at least
    assert cadence.next_poll_at(_cadence_user(last, now), now, 1, False,
                                oldest_new_ms=clock.to_ms(now) - 5000) == now + timedelta(minutes=59)


def test_a_late_play_among_the_new_ones_does_not_hide_a_session_that_just_began(world):
    """An hourly poll finds 12 plays of the last 10 minutes and one of 50 minutes ago that Spotify
    showed late (older than the newest play already archived): the rate is the session's, so the
    user is polled again at the next run, not in an hour."""
    world.sign_up()
    world.play("alice", 20)
    assert world.archive().status == archive.SUCCESS
    world.user().update(actions=[users.UserModel.last_polled_at.set(world.now - timedelta(hours=1))])
    world.play("alice", 50)  # late: shown only now
    for second in range(0, 600, 50):
        world.play("alice", 10 - second / 60)
    result = world.archive()
    assert (result.status, result.plays_archived, result.late_plays) == (archive.SUCCESS, 13, 1)
    assert world.user().next_poll_at == world.now + timedelta(minutes=14)


def test_a_full_window_with_a_damaged_item_still_reveals_a_gap():
    """Spotify's 50 items, one of them unreadable (skipped), all newer than the last play seen:
    the window is full, so plays in between may have fallen out of it."""
    from playvault.normalize import BadItem, Page, Play

    base = 1_764_000_000_000
    known = frozenset({base})
    good = [Play(canonical_played_at(datetime.fromtimestamp((base + 60_000 * (k + 10)) / 1000, UTC)),
                 base + 60_000 * (k + 10), None) for k in range(49)]
    damaged = Page(plays=good, bad_items=[BadItem("track has no name", "2025-11-24T16:40:00Z")])
    assert archive.detect_gap(known, base, damaged) == (base, base + 600_000)
    assert archive.detect_gap(known, base, Page(plays=good)) is None  # 49 items: the whole window
