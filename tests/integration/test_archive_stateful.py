"""A stateful property test of the whole archive (issue 20): random interleavings of sign-up,
listening, polls, disconnects and reconnects, imports of both export formats and delete-my-data, on
the real code in-process (moto with every resource of template.yaml, the Spotify emulator on one
simulated clock), checked after every step against a model of what each person really listened to.

The model, not the code under test, decides what must be in the archive:
- a stream counts when it lasted MIN_MS_PLAYED or more and was not a private session;
- polling could have seen it when it was in Spotify's last-50 window (what the emulator shows at
  that moment) during a poll of a connected, active user;
- an import must have brought it when it is in an export whose job finished.
Every such stream is archived exactly once, with its names on the read path (history's catalog
rows, which /me/plays and the CSV and JSON Lines exports render); nothing else is archived (a stream an
unfinished import or a poll may have written is allowed, once). After delete-my-data nothing of the
user is left in any table of template.yaml nor in the bucket; the seat counter equals the users
holding a seat; a user being deleted stays `deleting`.

The invariants read through public store and read-path functions and raw scans, never through the
importer's or the poller's own counters. Each example gets its own moto (template.yaml provisioned
again, ~0.3 s) and its own Spotify accounts on the test's emulator. Budget: the `archive-ci`
profile (`make test`: 8 examples of 25 steps, about 70 s on 2 busy cores when nothing fails); the
`archive-deep` profile runs from `make test-deep` (PLAYVAULT_STATEFUL_PROFILE=archive-deep).
"""

from __future__ import annotations

import io
import itertools
import json
import os
import secrets
import unicodedata
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from playvault import clock, history, store
from playvault.archive import SUCCESS, Archiver
from playvault.config import AccountSettings, ImporterSettings
from playvault.crypto import TokenCipher
from playvault.deletion import Deleter
from playvault.imports import formats, issue_upload_id, upload_id_key
from playvault.imports import job as job_mod
from playvault.imports.job import Importer, ImportSettings
from playvault.lifecycle import Lifecycle
from playvault.onboarding import Connected, LoginRedirect, Onboarding, OnboardingError
from playvault.spotify import Budget, Credentials
from playvault.store import catalog, deletions, imports, plays, seats, sessions, users
from playvault_local import provision as prov
from spotify_emulator import catalog as emulator_catalog
from tests.conftest import REDIRECT_URI, stack_parameters
from tests.unit.helpers import make_spotify

PROFILE_ENV = "PLAYVAULT_STATEFUL_PROFILE"
# `make test`: about a minute on 2 cores. Derandomized (no example database): CI runs the same examples.
settings.register_profile(
    "archive-ci", max_examples=8, stateful_step_count=25, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], print_blob=False,
)
# `make test-deep`: many more, longer interleavings (about 10 minutes on 2 cores).
settings.register_profile(
    "archive-deep", max_examples=60, stateful_step_count=40, deadline=None, derandomize=False, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], print_blob=True,
)

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
SEED = 7  # the conftest emulator's seed: its catalog
ACCOUNTS = 3  # Spotify accounts per example; each may sign up, leave and come back
POOL = 6  # catalog items listened to: small, so repeats and overlaps are common
MATCH_MS = 65_000  # an Account-data row says only its minute: a stream ends within 60 s of it
LEASE_LAPSE = timedelta(minutes=7)  # over the importer's 6-minute lease: a crashed holder's lease has lapsed
GRACE_S = 150
MAX_USERS = "50"
SCOPES = "user-read-recently-played user-read-email"
CHUNK_ROWS = 3  # a few rows span chunks

_examples = itertools.count()


class Crash(BaseException):
    """The process dies here (a Lambda timeout or an out-of-memory kill): nothing in the code under
    test may catch it, as nothing can catch a killed process."""


class FakeClock:
    """One clock for PlayVault (playvault.clock) and the emulator; moves only when told to."""

    def __init__(self, start: datetime):
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def fold(text: str | None) -> str:
    return unicodedata.normalize("NFKC", text or "").casefold().strip()


# ---------------------------------------------------------------- the model
@dataclass
class Stream:
    """One stream a person listened to, as it really happened."""

    sid: int
    account: int
    end_ms: int  # when it ended: played_at (whole seconds when the emulator reports it so)
    kind: str  # "track" | "local" | "episode"
    index: int  # catalog index of the item
    ms_played: int
    incognito: bool = False

    @property
    def item(self) -> dict[str, Any]:
        if self.kind == "episode":
            return emulator_catalog.episode(SEED, self.index)
        if self.kind == "local":
            return emulator_catalog.local_track(SEED, self.index)
        return emulator_catalog.track(SEED, self.index)

    def counts(self, min_ms: int) -> bool:
        return self.ms_played >= min_ms and not self.incognito

    @property
    def title(self) -> str:
        return self.item["name"]

    @property
    def by(self) -> str:
        item = self.item
        return item["show"]["name"] if self.kind == "episode" else item["artists"][0]["name"]

    def describe(self) -> str:
        return (f"{self.kind} {self.title!r} by {self.by!r} ended {clock.from_ms(self.end_ms).isoformat()} "
                f"(played {self.ms_played} ms{', private' if self.incognito else ''})")


@dataclass
class Account:
    """A Spotify account and, once signed up, its PlayVault user as the model expects it."""

    index: int
    user_id: str
    streams: list[Stream] = field(default_factory=list)
    status: str | None = None  # None: never signed up, or deleted; else users.ACTIVE etc.
    connected: bool = False  # Spotify still honours the user's authorization
    holds_seat: bool = False
    incarnation: int = 0  # sign-ups after a deletion start a new archive
    seen: set[int] = field(default_factory=set)  # sids a poll could see
    offered: set[int] = field(default_factory=set)  # sids in an uploaded export (its job may be unfinished)
    imported: set[int] = field(default_factory=set)  # sids in an export whose job finished
    deletion_key: str | None = None
    deleted: bool = False  # delete-my-data finished and not signed up again

    def by_emulator_ms(self) -> dict[int, Stream]:
        return {s.end_ms: s for s in self.streams if not s.incognito and s.ms_played >= 30_000}


@dataclass
class PendingJob:
    """An import whose invocation crashed: its lease lapses, then a retry resumes it."""

    account: int
    incarnation: int
    user_id: str
    job_id: str
    sids: set[int]


# ---------------------------------------------------------------- exports as Spotify writes them
def _ts(ms: int) -> str:
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _end_time(ms: int) -> str:
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%d %H:%M")


def extended_row(s: Stream) -> dict[str, Any]:
    item = s.item
    row = {"ts": _ts(s.end_ms), "platform": "linux", "ms_played": s.ms_played, "conn_country": "SE",
           "ip_addr": "192.0.2.7", "master_metadata_track_name": None, "master_metadata_album_artist_name": None,
           "master_metadata_album_album_name": None, "spotify_track_uri": None, "episode_name": None,
           "episode_show_name": None, "spotify_episode_uri": None, "reason_start": "trackdone",
           "reason_end": "trackdone" if s.ms_played >= 30_000 else "fwdbtn", "shuffle": False,
           "skipped": s.ms_played < 30_000, "offline": False, "offline_timestamp": s.end_ms // 1000,
           "incognito_mode": s.incognito}
    if s.kind == "episode":
        row.update(episode_name=item["name"], episode_show_name=item["show"]["name"], spotify_episode_uri=item["uri"])
    else:
        row.update(master_metadata_track_name=item["name"], master_metadata_album_artist_name=s.by,
                   master_metadata_album_album_name=item["album"]["name"], spotify_track_uri=item["uri"])
    return row


def export_files(streams: list[Stream], fmt: str) -> dict[str, list[dict[str, Any]]]:
    """The streaming-history files of an export holding these streams (both of Spotify's formats)."""
    if fmt == "extended":
        return {"Spotify Extended Streaming History/Streaming_History_Audio_2026_0.json":
                [extended_row(s) for s in streams]}
    music = [{"endTime": _end_time(s.end_ms), "artistName": s.by, "trackName": s.title, "msPlayed": s.ms_played}
             for s in streams if s.kind != "episode" and not s.incognito]  # the quick export has no private streams
    podcast = [{"endTime": _end_time(s.end_ms), "podcastName": s.by, "episodeName": s.title, "msPlayed": s.ms_played}
               for s in streams if s.kind == "episode" and not s.incognito]
    return {"MyData/StreamingHistory_music_0.json": music, "MyData/StreamingHistory_podcast_0.json": podcast}


def zipped(files: dict[str, list[dict[str, Any]]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, rows in files.items():
            archive.writestr(name, json.dumps(rows))
    return buffer.getvalue()


def in_export(s: Stream, fmt: str) -> bool:
    return fmt == "extended" or not s.incognito


# ---------------------------------------------------------------- matching stored plays to streams
def _identities_of_stream(s: Stream) -> set[tuple[str, ...]]:
    item = s.item
    keys = {("name", s.kind == "episode" and "episode" or "track", fold(s.title), fold(s.by))}
    if s.kind == "track":
        keys.add(("track", item["id"]))
    elif s.kind == "episode":
        keys.add(("episode", item["id"]))
    return keys


def _identities_of_play(play: plays.PlayModel, row: history.PlayRow) -> set[tuple[str, ...]]:
    """What a stored play says it is: its ids, and its names (stored on the play or in the catalog)."""
    keys: set[tuple[str, ...]] = set()
    if play.track_id:
        keys.add(("track", play.track_id))
    if play.episode_id:
        keys.add(("episode", play.episode_id))
    if (play.item_type or "track") == "episode":
        for title, by in ((play.episode_name, play.show_name), (row.episode_name, row.show_name)):
            if title:
                keys.add(("name", "episode", fold(title), fold(by)))
    else:
        artists = [a for a in row.artist_names if a]
        for title, by in ((play.track_name, play.artist_name), (row.track_name, artists[0] if artists else None)):
            if title:
                keys.add(("name", "track", fold(title), fold(by)))
    return keys


def match(streams: list[Stream], stored: list[tuple[plays.PlayModel, history.PlayRow]]) -> dict[int, int]:
    """A maximum one-to-one matching stream -> stored play (same item, played_at within MATCH_MS),
    built in the order of `streams` (Kuhn's augmenting paths never unmatch a stream once matched, so
    the streams listed first are matched as fully as possible)."""
    identities = [_identities_of_play(p, r) for p, r in stored]
    candidates: list[list[int]] = []
    for s in streams:
        mine = _identities_of_stream(s)
        near = [j for j, (p, _) in enumerate(stored)
                if abs(int(p.played_at_ms) - s.end_ms) <= MATCH_MS and mine & identities[j]]
        candidates.append(sorted(near, key=lambda j: abs(int(stored[j][0].played_at_ms) - s.end_ms)))
    owner: dict[int, int] = {}  # stored index -> stream index

    def augment(i: int, visited: set[int]) -> bool:
        for j in candidates[i]:
            if j in visited:
                continue
            visited.add(j)
            if j not in owner or augment(owner[j], visited):
                owner[j] = i
                return True
        return False

    for i in range(len(streams)):
        augment(i, set())
    return {i: j for j, i in owner.items()}


def names_problem(s: Stream, row: history.PlayRow) -> str | None:
    """Why the read path does not show this stream's names (None: it does)."""
    if s.kind == "episode":
        if fold(row.episode_name) != fold(s.title) or fold(row.show_name) != fold(s.by):
            return f"episode/show names {row.episode_name!r}/{row.show_name!r}"
        return None
    if fold(row.track_name) != fold(s.title) or fold(s.by) not in {fold(a) for a in row.artist_names}:
        return f"track/artists {row.track_name!r}/{list(row.artist_names)!r}"
    return None


# ---------------------------------------------------------------- the machine
class Harness:
    """What every example shares: the emulator (a thread) and the test's monkeypatch."""

    def __init__(self, emulator: Any, monkeypatch: pytest.MonkeyPatch):
        self.emulator = emulator
        self.monkeypatch = monkeypatch


@contextmanager
def patched(module: Any, name: str, replacement: Callable[..., Any]) -> Iterator[None]:
    original = getattr(module, name)
    setattr(module, name, replacement)
    try:
        yield
    finally:
        setattr(module, name, original)


def crash_on_call(real: Callable[..., Any], n: int) -> Callable[..., Any]:
    """`real`, except that its n-th call dies before doing anything."""
    calls = {"n": 0}

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == n:
            raise Crash(f"killed at call {n} of {real.__name__}")
        return real(*args, **kwargs)

    return wrapper


def _choose(items: list[Any], pick: int) -> Any:
    return items[pick % len(items)]


listen_plan = st.lists(
    st.tuples(
        st.integers(35_000, 400_000),  # ms since the previous stream ended
        st.sampled_from(["track", "track", "repeat", "local", "episode", "skip", "private"]),
        st.integers(0, POOL - 1),
        st.sampled_from([None, None, None, 900, 5400]),  # seconds until recently-played shows it (late)
        st.booleans(),  # Spotify reports played_at in whole seconds
    ),
    min_size=1, max_size=6,
)


class ArchiveMachine(RuleBasedStateMachine):
    harness: Harness  # set by the test

    def __init__(self) -> None:
        super().__init__()
        from moto import mock_aws

        self.example = next(_examples)
        self.mock = mock_aws()
        self.mock.start()
        try:
            self._provision()
        except BaseException:
            self.mock.stop()
            raise

    def _provision(self) -> None:
        h = self.harness
        self.emulator = h.emulator
        self.stack = prov.provision(parameters=stack_parameters(self.emulator.url, MaxUsers=MAX_USERS))
        for key, value in self.stack.env.items():
            h.monkeypatch.setenv(key, value)
        self.settings = ImporterSettings.from_env()
        store.bind(AccountSettings.from_env())  # every table: the account's, the importer's, polling's
        catalog.forget_known_ids()
        from aws_lambda_powertools.utilities import parameters

        parameters.clear_caches()
        self.clock = FakeClock(T0)
        clock.set_clock(self.clock)
        self.emulator.state.clock = self.clock
        self.s3 = boto3.client("s3")
        self.bucket = self.stack.name("UserFilesBucket")
        self.cipher = TokenCipher(boto3.client("kms"), self.stack.physical["TokenKey"]["Arn"])
        self.spotify = make_spotify(self.emulator, sleep=lambda s: None)
        self.archiver = self.new_archiver()  # the warm worker container
        self.importer = self.new_importer()  # the warm importer container
        self.upload_key = upload_id_key(prov.DEV_CLIENT_SECRET)
        self.min_ms = self.settings.min_ms_played
        # Unique in the process (one emulator serves every example) and no substring of another.
        self.accounts = [Account(i, f"listener-{self.example:06d}-{i}x") for i in range(ACCOUNTS)]
        for account in self.accounts:
            self.emulator.state.add_user(account.user_id)
        self.sids = itertools.count()
        self.pending: list[PendingJob] = []

    def teardown(self) -> None:
        clock.reset_clock()
        self.mock.stop()

    # -- the planes, as the functions build them ----------------------------------------------
    def new_archiver(self) -> Archiver:
        return Archiver(make_spotify(self.emulator, sleep=lambda s: None), self.cipher)

    def new_importer(self) -> Importer:
        s = self.settings
        return Importer(
            self.s3, self.bucket, make_spotify(self.emulator, sleep=lambda s: None),
            ImportSettings(rule=formats.ListeningRule(s.min_ms_played, s.skip_incognito),
                           tolerance_s=s.dedup_tolerance_s, chunk_rows=CHUNK_ROWS, resolve_interval_s=0,
                           min_remaining_ms=1000),
            continue_later=lambda *_: None, sleep=lambda s: None, upload_id_key=lambda: self.upload_key,
        )

    def onboarding(self) -> Onboarding:
        return Onboarding(spotify=self.spotify, cipher=self.cipher,
                          credentials=lambda: Credentials(prov.DEV_CLIENT_ID, prov.DEV_CLIENT_SECRET),
                          accounts_url=self.emulator.url, redirect_uri=REDIRECT_URI, scopes=SCOPES,
                          max_users=int(MAX_USERS))

    def _sign_in(self, account: Account, returning: bool) -> Connected | None:
        """The sign-in a browser makes: login, consent at Spotify, callback (and its session)."""
        flow = self.onboarding()
        start = flow.begin_login(returning=returning)
        assert isinstance(start, LoginRedirect), start
        query = parse_qs(urlsplit(start.url).query)
        code = self.emulator.state.issue_code(prov.DEV_CLIENT_ID, REDIRECT_URI, SCOPES,
                                              query["code_challenge"][0], account.user_id)
        try:
            result = flow.complete_login(state=query["state"][0], code=code, error=None, budget=Budget.seconds(30))
        except OnboardingError:
            return None
        if isinstance(result, Connected):
            sessions.create(secrets.token_urlsafe(32), account.user_id, self.clock.now,
                            timedelta(days=AccountSettings.from_env().session_idle_days))
            return result
        return None

    # -- rules: Spotify ------------------------------------------------------------------------
    @initialize(plans=st.lists(listen_plan, min_size=ACCOUNTS, max_size=ACCOUNTS),
                signed_up=st.lists(st.booleans(), min_size=ACCOUNTS - 1, max_size=ACCOUNTS - 1))
    def history_and_sign_ups(self, plans: list[Any], signed_up: list[bool]) -> None:
        """Every example starts with some listening history and the first person signed up (others
        maybe): whichever rules an example draws then meet users with plays before their sign-up."""
        for who, plan in enumerate(plans):
            self.listen(who, plan)
        for account, sign in zip(self.accounts, [True, *signed_up], strict=True):
            if sign:
                self._sign_up(account)

    @rule(who=st.integers(0, ACCOUNTS - 1), plan=listen_plan)
    def listen(self, who: int, plan: list[tuple[int, str, int, int | None, bool]]) -> None:
        """Streams end one after another (the clock moves to each end): late ones, repeats of the
        last item, local files, episodes, skips under the minimum and private-session streams."""
        account = self.accounts[who]
        for gap_ms, kind, index, late_s, whole_second in plan:
            previous_end_ms = clock.to_ms(self.clock.now)
            # Spotify's played_at has milliseconds: never let the simplest gaps fall on whole seconds.
            self.clock.advance(milliseconds=gap_ms + 1 + (len(account.streams) * 389) % 998)
            end_ms = clock.to_ms(self.clock.now)
            ms_played, incognito = 200_000, False
            if kind == "repeat":
                last = next((s for s in reversed(account.streams)), None)
                kind, index = (last.kind, last.index) if last else ("track", index)
            elif kind == "skip":
                kind, ms_played = "track", 30_000 - 1 - (index * 4_000)
            elif kind == "private":
                kind, incognito = "track", True
            if kind in ("track", "local", "episode") and ms_played >= 30_000 and not incognito:
                if whole_second:
                    end_ms -= end_ms % 1000
                # the minimum itself is a play; one stream at a time: never longer than since the last one ended
                ms_played = min(30_000 + (end_ms % 170_000), end_ms - previous_end_ms)
                self.emulator.state.add_play(account.user_id, clock.from_ms(end_ms), local=kind == "local",
                                             episode=kind == "episode", track_index=index,
                                             whole_second=whole_second, visible_after_s=late_s)
            account.streams.append(Stream(next(self.sids), who, end_ms, kind, index, ms_played, incognito))

    @rule(who=st.integers(0, ACCOUNTS - 1))
    def binge(self, who: int) -> None:
        """More than Spotify's window holds between two polls: the oldest are only in the export."""
        self.listen(who, [(40_000, "track", i % POOL, None, False) for i in range(53)])

    @rule(minutes=st.sampled_from([5, 61, 180]))
    def time_passes(self, minutes: int) -> None:
        self.clock.advance(minutes=minutes)

    # -- rules: sign-up, reconnect, disconnect -------------------------------------------------
    @precondition(lambda self: any(a.status is None for a in self.accounts))
    @rule(pick=st.integers(0, ACCOUNTS - 1))
    def sign_up(self, pick: int) -> None:
        self._sign_up(_choose([a for a in self.accounts if a.status is None], pick))

    def _sign_up(self, account: Account) -> None:
        result = self._sign_in(account, returning=False)
        assert result is not None, f"{account.user_id} could not sign up"
        self.pending = [j for j in self.pending if j.account != account.index]  # a deleted archive's jobs
        account.status, account.connected, account.holds_seat, account.deleted = users.ACTIVE, True, True, False
        account.incarnation += 1
        account.seen, account.offered, account.imported = set(), set(), set()

    @precondition(lambda self: any(a.status is not None for a in self.accounts))
    @rule(pick=st.integers(0, ACCOUNTS - 1))
    def reconnect(self, pick: int) -> None:
        """Sign in again (the reconnect link): a new authorization; refused while a deletion runs."""
        account = _choose([a for a in self.accounts if a.status is not None], pick)
        self._sign_in(account, returning=True)
        account.connected = True
        if account.status != users.DELETING:
            account.status = users.ACTIVE
            account.holds_seat = True

    @precondition(lambda self: any(a.connected for a in self.accounts))
    @rule(pick=st.integers(0, ACCOUNTS - 1))
    def disconnect(self, pick: int) -> None:
        """The person removes the app's access at Spotify: every token dies."""
        account = _choose([a for a in self.accounts if a.connected], pick)
        self.emulator.state.revoke(account.user_id)
        account.connected = False

    @precondition(lambda self: any(a.status == users.NEEDS_REAUTH for a in self.accounts))
    @rule()
    def seats_reclaimed(self) -> None:
        """The dispatcher's lifecycle run, 31 days on: users needing a reconnect since give their seat back."""
        later = self.clock.now + timedelta(days=31)
        Lifecycle(lifetime=timedelta(days=182), reclaim_after=timedelta(days=30),
                  reconnect_url="https://playvault.example/auth/login?reconnect=1").run(
            later, list(users.scan_polling_state()))
        for account in self.accounts:
            if account.status == users.NEEDS_REAUTH:
                account.status, account.holds_seat = users.LAPSED, False

    # -- rules: polling --------------------------------------------------------------------------
    # One rule per way (Hypothesis draws a subset of the rules for each example: polls stay common).
    @precondition(lambda self: any(a.status is not None for a in self.accounts))
    @rule(pick=st.integers(0, ACCOUNTS - 1))
    def poll(self, pick: int) -> None:
        self._poll(pick, "once")

    @precondition(lambda self: any(a.status is not None for a in self.accounts))
    @rule(pick=st.integers(0, ACCOUNTS - 1))
    def poll_twice_at_once(self, pick: int) -> None:
        self._poll(pick, "concurrent")

    @precondition(lambda self: any(a.status is not None for a in self.accounts))
    @rule(pick=st.integers(0, ACCOUNTS - 1))
    def poll_crashing_before_the_user_update(self, pick: int) -> None:
        self._poll(pick, "crash_then_retry")

    def _poll(self, pick: int, how: str) -> None:
        """A worker polls the user: once; or two workers at once (the second runs whole between the
        first's read of Spotify and its writes); or the worker dies between the play writes and the
        user update, and the message's redelivery polls again in a fresh container."""
        account = _choose([a for a in self.accounts if a.status is not None], pick)
        window = self.emulator.state.visible_window_ms(account.user_id)
        expect_success = account.status == users.ACTIVE and account.connected
        results = []
        if how == "once":
            results.append(self.archiver.archive_user(account.user_id, Budget.seconds(60)))
        elif how == "concurrent":
            first, second = self.new_archiver(), self.new_archiver()
            real = first.spotify.recently_played

            def read_then_let_the_other_run(*args: Any, **kwargs: Any) -> Any:
                page = real(*args, **kwargs)
                results.append(second.archive_user(account.user_id, Budget.seconds(60)))
                return page

            first.spotify.recently_played = read_then_let_the_other_run  # type: ignore[method-assign]
            results.append(first.archive_user(account.user_id, Budget.seconds(60)))
        else:
            with patched(users, "record_success", crash_on_call(users.record_success, 1)):
                try:
                    self.archiver.archive_user(account.user_id, Budget.seconds(60))
                except Crash:
                    pass
            self.archiver = self.new_archiver()  # the container died with it
            results.append(self.archiver.archive_user(account.user_id, Budget.seconds(60)))
        if expect_success:
            assert any(r.status == SUCCESS for r in results), f"a poll of a connected user failed: {results}"
            by_ms = account.by_emulator_ms()
            account.seen |= {by_ms[ms].sid for ms in window}
        elif account.status == users.ACTIVE:  # its authorization is gone: Spotify says invalid_grant
            account.status = users.NEEDS_REAUTH

    # -- rules: imports --------------------------------------------------------------------------
    @precondition(lambda self: any(a.status not in (None, users.DELETING) for a in self.accounts))
    @rule(pick=st.integers(0, ACCOUNTS - 1), first=st.integers(0, 100), last=st.integers(0, 100),
          crash_at=st.sampled_from([None, None, 2, 3, 4]), fresh=st.booleans())
    def import_extended_history(self, pick: int, first: int, last: int, crash_at: int | None, fresh: bool) -> None:
        self.import_export(pick, "extended", first, last, crash_at, fresh)

    @precondition(lambda self: any(a.status not in (None, users.DELETING) for a in self.accounts))
    @rule(pick=st.integers(0, ACCOUNTS - 1), first=st.integers(0, 100), last=st.integers(0, 100),
          crash_at=st.sampled_from([None, None, 2, 3, 4]), fresh=st.booleans())
    def import_account_data(self, pick: int, first: int, last: int, crash_at: int | None, fresh: bool) -> None:
        self.import_export(pick, "account", first, last, crash_at, fresh)

    def import_export(self, pick: int, fmt: str, first: int, last: int, crash_at: int | None, fresh: bool) -> None:
        """The person uploads an export (Extended streaming history or Account data) holding the
        streams between two points of their history (percent of it), so exports overlap, repeat and
        come before or after polls. `crash_at`: the invocation dies at that chunk's count update
        (its plays written), to be resumed later; `fresh`: it runs in a new container."""
        account = _choose([a for a in self.accounts if a.status not in (None, users.DELETING)], pick)
        if not account.streams:
            return
        lo, hi = sorted((first, last))
        n = len(account.streams)
        chosen = [s for s in account.streams[lo * n // 100:max(hi * n // 100, lo * n // 100 + 1)]
                  if in_export(s, fmt)]
        files = {name: rows for name, rows in export_files(chosen, fmt).items() if rows}
        if not files:
            return
        body = zipped(files)
        key = f"imports/{account.user_id}/{issue_upload_id(account.user_id, self.clock.now, self.upload_key)}/export"
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, Metadata={"file-name": "my_spotify_data.zip"})
        sids = {s.sid for s in chosen if s.counts(self.min_ms)}
        account.offered |= sids
        importer = self.new_importer() if fresh else self.importer
        parts = job_mod.job_for_key(key)
        assert parts is not None
        user_id, job_id = parts
        if crash_at is not None:
            with patched(imports, "advance", crash_on_call(imports.advance, crash_at)):
                try:
                    outcome = importer.start(key, len(body), Budget.seconds(300))
                except Crash:
                    self.pending.append(PendingJob(account.index, account.incarnation, user_id, job_id, sids))
                    return
        else:
            outcome = importer.start(key, len(body), Budget.seconds(300))
        self._finish(account, importer, user_id, job_id, outcome, sids)

    def _finish(self, account: Account, importer: Importer, user_id: str, job_id: str,
                outcome: job_mod.RunOutcome, sids: set[int]) -> None:
        for _ in range(50):
            if outcome.status not in (job_mod.CONTINUE, job_mod.WAITING, job_mod.BUSY):
                break
            if outcome.status != job_mod.CONTINUE:  # another job of the user (maybe a crashed one) holds it
                self.clock.advance(seconds=outcome.delay_s or 1)  # the queue's delayed message
            outcome = importer.run(user_id, job_id, Budget.seconds(300))
        job = imports.get(user_id, job_id)
        assert outcome.status == job_mod.DONE, (
            f"import of a valid export ended {outcome.status}: {outcome.reason} / {job and job.error}")
        account.imported |= sids

    @precondition(lambda self: bool(self.pending))
    @rule(pick=st.integers(0, 10), fresh=st.booleans())
    def resume_import(self, pick: int, fresh: bool) -> None:
        """The crashed import's retry, once its lease has lapsed: in the same warm container or a new one."""
        pending = _choose(self.pending, pick)
        self.pending.remove(pending)
        self.clock.advance(seconds=LEASE_LAPSE.total_seconds())
        account = self.accounts[pending.account]
        importer = self.new_importer() if fresh else self.importer
        outcome = importer.run(pending.user_id, pending.job_id, Budget.seconds(300))
        if account.status in (None, users.DELETING) or account.incarnation != pending.incarnation:
            return  # deleted meanwhile: the invariants check that it wrote nothing
        self._finish(account, importer, pending.user_id, pending.job_id, outcome, pending.sids)

    # -- rules: delete my data ------------------------------------------------------------------
    def deleter(self) -> Deleter:
        return Deleter(self.s3, self.bucket, None, grace_s=GRACE_S)

    @precondition(lambda self: any(a.status not in (None, users.DELETING) for a in self.accounts))
    @rule(pick=st.integers(0, ACCOUNTS - 1))
    def request_deletion(self, pick: int) -> None:
        account = _choose([a for a in self.accounts if a.status not in (None, users.DELETING)], pick)
        receipt = self.deleter().request(account.user_id)
        assert receipt is not None
        account.deletion_key = deletions.receipt_key(receipt)
        account.status = users.DELETING

    @precondition(lambda self: any(a.status == users.DELETING for a in self.accounts))
    @rule(pick=st.integers(0, ACCOUNTS - 1))
    def deletion_job_runs(self, pick: int) -> None:
        """The delayed job message arrives after the grace time and runs to the end."""
        account = _choose([a for a in self.accounts if a.status == users.DELETING], pick)
        assert account.deletion_key is not None
        self.clock.advance(seconds=GRACE_S + 1)
        for _ in range(20):
            more = self.deleter().run(account.user_id, account.deletion_key, Budget.seconds(300))
            if more is None:
                break
            self.clock.advance(seconds=more.delay_s + 1)
        else:
            raise AssertionError("the deletion job never finished")
        account.status, account.holds_seat, account.deleted = None, False, True
        account.seen, account.offered, account.imported = set(), set(), set()

    # -- invariants -------------------------------------------------------------------------------
    @invariant()
    def every_qualifying_stream_is_archived_once_with_its_names(self) -> None:
        if not hasattr(self, "accounts"):
            return
        problems: list[str] = []
        for account in self.accounts:
            if account.status in (None, users.DELETING):
                continue
            problems += self._archive_problems(account)
        assert not problems, "\n".join(problems)

    def _archive_problems(self, account: Account) -> list[str]:
        counted = {s.sid: s for s in account.streams if s.counts(self.min_ms)}
        must = [counted[i] for i in sorted((account.seen | account.imported) & set(counted))]
        may = [counted[i] for i in sorted((account.offered | account.seen) - set(s.sid for s in must))
               if i in counted]
        stored_plays = list(plays.all_plays(account.user_id))
        rows = list(history.enriched(stored_plays))
        stored = list(zip(stored_plays, rows, strict=True))
        matched = match(must + may, stored)
        problems = []
        who = account.user_id
        for i, s in enumerate(must):
            if i not in matched:
                how = ("polled" if s.sid in account.seen else "") + (" imported" if s.sid in account.imported else "")
                problems.append(f"{who}: LOST ({how.strip()}): {s.describe()}")
        used = set(matched.values())
        streams = must + may
        for j, (p, row) in enumerate(stored):
            if j not in used:
                twin = min((s for s in streams if _identities_of_stream(s) & _identities_of_play(p, row)),
                           key=lambda s: abs(s.end_ms - int(p.played_at_ms)), default=None)
                problems.append(
                    f"{who}: EXTRA play {p.played_at} {p.item_type} source={p.source} "
                    f"ids={p.track_id or p.episode_id} names={p.track_name or p.episode_name or row.track_name!r}: "
                    + (f"a second copy of {twin.describe()}" if twin else "no stream of the person"))
        for i, j in matched.items():
            s = streams[i]
            problem = names_problem(s, stored[j][1])
            if problem:
                problems.append(f"{who}: NAMES missing on the read path for {s.describe()}: {problem} "
                                f"(source={stored[j][0].source})")
        return problems

    @invariant()
    def nothing_of_a_deleted_user_is_left(self) -> None:
        if not hasattr(self, "accounts"):
            return
        gone = [a.user_id for a in self.accounts if a.deleted]
        if not gone:
            return
        left: list[str] = []
        ddb = boto3.client("dynamodb")
        for logical, resource in self.stack.template["Resources"].items():
            if resource["Type"] != "AWS::DynamoDB::Table":
                continue
            for page in ddb.get_paginator("scan").paginate(TableName=self.stack.name(logical)):
                for item in page["Items"]:
                    text = json.dumps(item, default=str)
                    left += [f"{logical}: {text[:300]}" for user_id in gone if user_id in text]
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            left += [f"UserFilesBucket: {o['Key']}" for o in page.get("Contents") or []
                     if any(user_id in o["Key"] for user_id in gone)]
        assert not left, "deleted users' data left:\n" + "\n".join(left)

    @invariant()
    def seats_equal_users_holding_one(self) -> None:
        if not hasattr(self, "accounts"):
            return
        holding = sum(a.holds_seat for a in self.accounts)
        assert seats.seats_taken() == holding, (
            f"seat counter {seats.seats_taken()}, users holding a seat {holding}: "
            + ", ".join(f"{a.user_id}={a.status}" for a in self.accounts))

    @invariant()
    def a_deletion_in_progress_stays_deleting(self) -> None:
        if not hasattr(self, "accounts"):
            return
        for account in self.accounts:
            if account.status == users.DELETING:
                stored = users.get(account.user_id)
                assert stored is not None and stored.status == users.DELETING, (
                    f"{account.user_id} is being deleted but stored as {stored and stored.status}")


def profile() -> settings:
    return settings.get_profile(os.environ.get(PROFILE_ENV, "archive-ci"))


def test_the_archive_keeps_every_play_once_in_every_order(emulator, monkeypatch):
    environment = dict(os.environ)
    ArchiveMachine.harness = Harness(emulator, monkeypatch)
    try:
        run_state_machine_as_test(ArchiveMachine, settings=profile())
    finally:
        clock.reset_clock()
        # Each example's mock_aws sets fake credentials (FOOBARKEY), and the harness's setenv saved
        # them as the values to restore: left behind, they reach the session's moto_server (started
        # later with this environment) and its S3 POST check refuses the stack's real key.
        monkeypatch.undo()  # its saved values were taken inside a mock: undone first, then the real ones
        os.environ.clear()
        os.environ.update(environment)
