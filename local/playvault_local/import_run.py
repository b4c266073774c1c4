"""`run --import`: emulated users upload Spotify data exports consistent with the emulator's history,
and the importer takes them in, in three orders (scenarios):

- before_first_poll: some users upload right after signing up, before the first dispatch (the
  sign-up page invites it): their first poll then meets plays an import already wrote;
- after_reconnect: one user disconnects (revokes access), listens while disconnected, signs in again
  ("reconnect") and uploads before the next poll: the export holds the disconnected period;
- after_the_hours: every user uploads after the simulated hours; one more hour of polling follows.

Each export holds: years of listening before sign-up (catalog tracks, a few podcast episodes,
skips under 30 s and private-session streams the listening rule drops), every play of the polled
period (ts = the play's end, whole seconds, as Spotify's export has it), so also the plays polling
lost (gap plays, the revoked user's plays) and those after the last poll. Every tenth user sends the
quick "Account data" format instead (minute precision, names only), one user adds a video file.

The upload goes the way a browser's does: playvault.imports.presigned_upload, then a multipart POST
to the S3 emulator. moto emits no S3 events, so the template's EventBridge rule is played by
eventsource.S3EventRule (the new object, the "Object Created" event a real bucket sends, the rule's
pattern), and the importer's continuations are delivered as on AWS: the jobs queue drained like its
event source mapping, the jobs function's asynchronous invocations of the importer run in-process
(eventsource.AsyncInvocations).
The accounting (section()) is computed from the emulator's truth and the table, independently of the
importer and of the rule of identity: every qualifying stream (a play polling saw, a kept export row;
one stream however many exports or planes report it) must be in the table exactly once, and every
imported play must have a name through history.best_names, the function the readers use.
"""

from __future__ import annotations

import io
import json
import random
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3
import requests
from botocore.config import Config

from playvault_local.eventsource import S3EventRule, SqsEventSource
from spotify_emulator.state import UNREADABLE_KINDS

HISTORY_YEARS = 2
HISTORY_ROWS = 60  # streams per user before sign-up
MIN_MS = 30_000
MAX_QUEUE_ROUNDS = 100_000


@dataclass
class ExportFile:
    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    # per row: the stream it reports, ("play", truth ms) or ("history", ms) for listening before
    # sign-up (the same key in every export of the user), and whether the listening rule keeps it
    provenance: list[tuple[tuple[str, int], bool]] = field(default_factory=list)


def _ts(ms: int) -> str:
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _end_time(ms: int) -> str:
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%d %H:%M")


def _extended_row(ms: int, track: dict[str, Any], ms_played: int, incognito: bool = False) -> dict[str, Any]:
    uri = track.get("uri")
    return {"ts": _ts(ms), "username": None, "platform": "linux", "ms_played": ms_played, "conn_country": "SE",
            "ip_addr": "192.0.2.10", "master_metadata_track_name": track["name"],
            "master_metadata_album_artist_name": (track["artists"] or [{}])[0].get("name"),
            "master_metadata_album_album_name": (track.get("album") or {}).get("name"), "spotify_track_uri": uri,
            "episode_name": None, "episode_show_name": None, "spotify_episode_uri": None,
            "reason_start": "trackdone", "reason_end": "trackdone" if ms_played >= MIN_MS else "fwdbtn",
            "shuffle": False, "skipped": ms_played < MIN_MS, "offline": False, "offline_timestamp": ms // 1000,
            "incognito_mode": incognito}


def _extended_episode_row(ms: int, episode: dict[str, Any], ms_played: int) -> dict[str, Any]:
    return {**_extended_row(ms, {"name": None, "artists": [{}], "uri": None}, ms_played),
            "master_metadata_track_name": None, "spotify_episode_uri": episode["uri"],
            "episode_name": episode["name"], "episode_show_name": episode["show"]["name"]}


def build_export(state: Any, user_id: str, index: int, start: datetime, now: datetime, seed: int) -> list[ExportFile]:
    from spotify_emulator import catalog

    rng = random.Random(f"export:{seed}:{user_id}")
    account_format = index % 10 == 9
    with state._lock:  # development code reading the emulator's own records
        truth = [(p.ms, p.track) for p in state._users[user_id].plays if p.ms <= int(now.timestamp() * 1000)]
    history: list[tuple[int, dict[str, Any] | None, int, bool]] = []  # (ms, track or None=episode, played, incognito)
    span_ms = HISTORY_YEARS * 365 * 86_400_000
    first = int(start.timestamp() * 1000) - span_ms
    for _ in range(HISTORY_ROWS):
        ms = first + rng.randrange(span_ms - 2 * 86_400_000)
        ms -= ms % 1000
        draw = rng.random()
        track = catalog.track(seed, rng.randrange(catalog.CATALOG_SIZE))
        if draw < 0.1:
            history.append((ms, track, rng.randrange(1_000, 29_000), False))  # skipped: under the rule
        elif draw < 0.15:
            history.append((ms, track, 200_000, True))  # private session
        elif draw < 0.2 and not account_format:
            history.append((ms, None, 1_500_000, False))  # a podcast episode
        else:
            history.append((ms, track, rng.randrange(60_000, 300_000), False))
    history.sort(key=lambda h: h[0])
    files: list[ExportFile] = []
    if account_format:
        music = ExportFile("MyData/StreamingHistory_music_0.json")
        for ms, track, played, incognito in history:
            if incognito:  # the quick export does not say; it has no private streams in it either
                continue
            assert track is not None
            music.rows.append({"endTime": _end_time(ms), "artistName": track["artists"][0]["name"],
                               "trackName": track["name"], "msPlayed": played})
            music.provenance.append((("history", ms), played >= MIN_MS))
        podcast = ExportFile("MyData/StreamingHistory_podcast_0.json")
        for ms, track in truth:
            if track.get("type") == "episode":  # never in recently-played: only the export has it
                podcast.rows.append({"endTime": _end_time(ms), "podcastName": track["show"]["name"],
                                     "episodeName": track["name"], "msPlayed": 1_500_000})
                podcast.provenance.append((("play", ms), True))
                continue
            music.rows.append({"endTime": _end_time(ms), "artistName": (track["artists"] or [{}])[0].get("name"),
                               "trackName": track["name"], "msPlayed": 180_000})
            music.provenance.append((("play", ms), True))
        files.append(music)
        if podcast.rows:
            files.append(podcast)
        return files
    audio = ExportFile("Spotify Extended Streaming History/Streaming_History_Audio_2023-2025_0.json")
    for ms, track, played, incognito in history:
        if track is None:
            episode_id = catalog.base62_id(random.Random(f"episode:{seed}:{ms}"))
            episode = {"uri": f"spotify:episode:{episode_id}", "name": f"Episode {ms % 997}",
                       "show": {"name": "The Local Show"}}
            audio.rows.append(_extended_episode_row(ms, episode, played))
        else:
            audio.rows.append(_extended_row(ms, track, played, incognito))
        audio.provenance.append((("history", ms), played >= MIN_MS and not incognito))
    for ms, track in truth:
        if track.get("type") == "episode":
            audio.rows.append(_extended_episode_row(ms - ms % 1000, track, 1_500_000))
        else:
            audio.rows.append(_extended_row(ms - ms % 1000, track, 180_000))
        audio.provenance.append((("play", ms), True))
    files.append(audio)
    if index == 0:
        files.insert(0, ExportFile("Spotify Extended Streaming History/Streaming_History_Video_2023-2025.json",
                                   [{"ts": _ts(first), "ms_played": 60_000, "spotify_track_uri": None}], []))
    return files


def _zip(files: list[ExportFile]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for export in files:
            archive.writestr(export.name, json.dumps(export.rows))
        archive.writestr("Spotify Extended Streaming History/ReadMeFirst_ExtendedStreamingHistory.pdf", b"%PDF-1.4")
    return buffer.getvalue()


BEFORE_FIRST_POLL = "before_first_poll"
AFTER_RECONNECT = "after_reconnect"
AFTER_THE_HOURS = "after_the_hours"
SCENARIOS = (BEFORE_FIRST_POLL, AFTER_RECONNECT, AFTER_THE_HOURS)
EXAMPLES = 8  # of each problem, in the report


def early_importers(population: list[Any]) -> list[Any]:
    """The users who upload right after signing up: every fifth, from the third (at least one)."""
    return [u for i, u in enumerate(population) if i % 5 == 2] or population[:1]


def pick_reconnecting_user(population: list[Any], hours: int) -> tuple[Any, int, int] | None:
    """(user, hour it disconnects, hour it reconnects and uploads): the listener with the most plays
    in the disconnected hours among users with no other role; None when the run is too short for a
    poll before, two disconnected hours and a poll after."""
    disconnect = max(1, hours // 4)
    reconnect = disconnect + 2
    if reconnect >= hours:
        return None
    early = {u.user_id for u in early_importers(population)}
    candidates = [u for u in population if not u.tags and u.revoke_at_hour is None and u.burst_hour is None
                  and u.user_id not in early]
    if not candidates:
        return None
    user = max(candidates, key=lambda u: (sum(u.plays_per_hour[disconnect:reconnect + 1]), u.user_id))
    return user, disconnect, reconnect


@dataclass
class Upload:
    user_id: str
    scenario: str
    job_id: str
    files: list[ExportFile]


class Imports:
    """The uploads of one run and their accounting. Each upload goes the way a browser's does."""

    def __init__(self, sim: Any):
        self.sim = sim
        self.uploads: list[Upload] = []
        self.by_job: dict[str, Upload] = {}
        self.continuations = 0
        self.reconnects: dict[str, str] = {}  # user id -> the sign-in's outcome
        self._browser: tuple[Any, str, S3EventRule, bytes, requests.Session] | None = None

    def _connect(self) -> tuple[Any, str, S3EventRule, bytes, requests.Session]:
        """(S3 client, bucket, the importer's S3 rule, the upload-id key, an HTTP session), made once."""
        from playvault.imports import upload_id_key

        if self._browser is None:
            system = self.sim.system
            if system.import_function is None or system.import_source is None:
                raise RuntimeError("template: no importer (EventBridge rule on S3 + the queue of its continuations)")
            # Signed as the account function signs its forms (SigV4); the local S3 checks the policy.
            s3 = boto3.session.Session().client("s3", endpoint_url=system.aws.url,
                                                config=Config(signature_version="s3v4"))
            rule = S3EventRule(system, next(r for r in system.s3_rules if r.function == system.import_function))
            self._browser = (s3, system.stack.name("UserFilesBucket"), rule,
                             upload_id_key(system.config.client_secret), requests.Session())
        return self._browser

    def upload(self, user_id: str, scenario: str) -> Upload:
        """Build the user's export as of now, upload it, let the importer take it in (its
        continuations included)."""
        from playvault.imports import presigned_upload
        from playvault.imports.job import job_for_key

        s3, bucket, rule, upload_key, session = self._connect()
        sim = self.sim
        index = next(i for i, u in enumerate(sim.population) if u.user_id == user_id)
        now = sim.clock()
        files = build_export(sim.system.emulator_state, user_id, index, sim.config.start, now, sim.config.seed)
        upload = presigned_upload(s3, bucket, user_id, now, upload_key=upload_key)
        found = job_for_key(upload["key"])
        assert found is not None
        record = Upload(user_id, scenario, found[1], files)
        self.uploads.append(record)
        self.by_job[record.job_id] = record
        # Browsers name a second download "... (1).zip": the key never carries the name, the job does.
        name = "my_spotify_data (1).zip" if index % 2 else "my_spotify_data.zip"
        answer = session.post(upload["url"], data=upload["fields"], files={"file": (name, _zip(files))}, timeout=60)
        if answer.status_code not in (200, 201, 204):
            raise RuntimeError(f"upload for {user_id} refused: {answer.status_code} {answer.text[:200]}")
        failed_before = len(rule.failures)
        succeeded = rule.poll_once()  # the template's rule matched the upload and the importer ran
        while not succeeded and rule.retry_at:
            # A function error (AWS throttled under --faults chaos): Lambda retries the async event
            # 1 and then 2 minutes later; the simulated clock moves on to each retry.
            sim._advance(datetime.fromtimestamp(min(rule.retry_at.values()), UTC))
            succeeded = rule.poll_once()
        if succeeded != 1:
            failures = rule.failures[failed_before:]
            raise RuntimeError(f"the importer failed on {user_id}'s upload: {failures[-1]}" if failures else
                               f"the upload for {user_id} raised no import event (the importer's S3 rule)")
        return record

    def upload_all(self, users: list[Any], scenario: str) -> None:
        for user in users:
            self.upload(user.user_id, scenario)
        self.continuations += _drain(self.sim)

    def reconnect_and_upload(self, user_id: str) -> None:
        """Sign in again through the real routes ("reconnect"), then upload before the next poll."""
        self.reconnects[user_id] = self.sim.sign_up(user_id, requests.Session(), reconnect=True)
        self.upload_all([u for u in self.sim.population if u.user_id == user_id], AFTER_RECONNECT)

    # -- accounting --------------------------------------------------------------------------------
    def stream_of(self, import_ref: str | None) -> tuple[str, int] | None:
        """The stream an import_ref (<job>:<file>:<row>) reports, None when no upload of this run wrote it."""
        if not import_ref:
            return None
        job_id, file_index, row_index = import_ref.rsplit(":", 2)
        upload = self.by_job.get(job_id)
        if upload is None or int(file_index) >= len(upload.files):
            return None
        provenance = upload.files[int(file_index)].provenance
        return provenance[int(row_index)][0] if int(row_index) < len(provenance) else None

    def section(self, before: Counter[str]) -> dict[str, Any]:
        """The import section of the report: uploads, the importer's own figures, and the accounting."""
        from playvault.imports import status_for_user

        sim = self.sim
        system = sim.system
        plays_table = system.stack.name("PlaysTable")
        statuses = {u.user_id: status_for_user(u.user_id, sim.clock()) for u in sim.population}
        jobs = [job for items in statuses.values() for job in items]
        skipped: Counter[str] = Counter()
        for job in jobs:
            skipped.update(job["skipped"])
        rows = system.aws.table_items(plays_table, [*PLAY_ATTRIBUTES])
        accounting = self.accounting(rows)
        after = Counter(row["user_id"] for row in rows)
        first = next(iter(statuses.values()))[0] if statuses and next(iter(statuses.values())) else None
        return {
            "users": len(sim.population),
            "uploads": len(jobs),
            "uploads_by_scenario": {s: sum(1 for u in self.uploads if u.scenario == s) for s in SCENARIOS},
            "reconnects": self.reconnects,
            "jobs_by_state": dict(Counter(job["state"] for job in jobs)),
            "rows_in_exports": sum(len(f.rows) for u in self.uploads for f in u.files),
            "rows_read": sum(job["rows_read"] for job in jobs),
            # the importer's own figures (what its jobs say)
            "plays_added": sum(job["plays_added"] for job in jobs),
            "duplicates_avoided": sum(job["duplicates"] for job in jobs),
            "skipped_by_reason": dict(sorted(skipped.items())),
            "episodes_added": sum(job["episodes_added"] for job in jobs),
            "tracks_resolved": sum(job["tracks_resolved"] for job in jobs),
            "tracks_still_to_resolve": sum(job["tracks_to_resolve"] for job in jobs),
            "errors": [job["error"] for job in jobs if job["error"]][:5],
            "plays_in_table_before": sum(before.values()),
            "plays_in_table_after": sum(after.values()),
            "continuations": self.continuations,
            "example_job": first,
            **accounting,
        }

    def accounting(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Every qualifying stream once, with a name; computed from the emulator's truth and the table."""
        state = self.sim.system.emulator_state
        rows_by_user: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            rows_by_user.setdefault(row["user_id"], []).append(row)
        scenarios_of: dict[str, set[str]] = {}
        exported: dict[str, set[tuple[str, int]]] = {}
        for upload in self.uploads:
            scenarios_of.setdefault(upload.user_id, set()).add(upload.scenario)
            exported.setdefault(upload.user_id, set()).update(
                stream for f in upload.files for stream, kept in f.provenance if kept)
        totals: Counter[str] = Counter()
        by_scenario = {s: Counter() for s in SCENARIOS}
        examples: dict[str, list[str]] = {"lost": [], "duplicated": [], "without_name": []}
        for user in self.sim.population:
            user_id = user.user_id
            truth = state.ground_truth(user_id)
            truth_ms = {p["played_at_ms"] for p in truth}
            unreadable = {p["played_at_ms"] for p in truth if p.get("bad_kind") in UNREADABLE_KINDS}
            exposed = {("play", m) for m in state.exposed_play_ms(user_id) - unreadable}
            window = {("play", m) for m in state.visible_window_ms(user_id)}
            expected = exposed | exported.get(user_id, set())
            seen: dict[tuple[str, int], list[dict[str, Any]]] = {}
            phantom = 0
            for row in rows_by_user.get(user_id, []):
                stream = self.stream_of(row.get("import_ref"))
                if stream is None and int(row["played_at_ms"]) in truth_ms:
                    stream = ("play", int(row["played_at_ms"]))
                if stream is None or (stream not in expected and stream[0] != "play"):
                    phantom += 1  # a row for no stream, or for a stream the listening rule drops
                    _example(examples["duplicated"], f"{user_id} {row['played_at']} (no such stream)")
                    continue
                seen.setdefault(stream, []).append(row)
            for stream, copies in seen.items():
                if len(copies) > 1:
                    _example(examples["duplicated"], f"{user_id} {stream[0]} {_ms_text(stream[1])} as " + ", ".join(
                        f"{r['played_at']} ({r.get('source', 'api')}, track {r.get('track_id')} "
                        f"{r.get('track_name')!r} by {r.get('artist_name')!r}, ms_played {r.get('ms_played')}, "
                        f"import {r.get('import_ref')})" for r in copies))
            # Exposed plays no export holds, still in Spotify's window: the next poll fetches them.
            recoverable = {s for s in exposed - exported.get(user_id, set()) - set(seen) if s in window}
            lost = expected - set(seen) - recoverable
            for stream in sorted(lost)[:EXAMPLES]:
                planes = "+".join(p for p, streams in (("polled", exposed), ("exported", exported.get(user_id, set())))
                                  if stream in streams)
                _example(examples["lost"], f"{user_id} {stream[0]} {_ms_text(stream[1])} ({planes})")
            duplicated = sum(len(copies) - 1 for copies in seen.values()) + phantom
            counts = Counter(streams=len(expected), archived=len(expected & set(seen)), lost=len(lost),
                             duplicated=duplicated, recoverable=len(recoverable))
            totals.update(counts)
            for scenario in scenarios_of.get(user_id, ()):
                by_scenario[scenario].update(users=1, **counts)
        names = self._names(rows, examples["without_name"])
        return {
            "streams_expected": totals["streams"],
            "streams_archived": totals["archived"],
            "plays_lost": totals["lost"],
            "plays_recoverable": totals["recoverable"],
            "plays_duplicated": totals["duplicated"],
            "imported_plays": names["imported"],
            "imported_plays_without_name": names["without_name"],
            # users of each scenario (a user is in every scenario it uploaded in)
            "by_scenario": {s: {k: int(c.get(k, 0)) for k in ("users", "streams", "lost", "duplicated")}
                            for s, c in by_scenario.items()},
            "examples": {k: v for k, v in examples.items() if v},
        }

    def _names(self, rows: list[dict[str, Any]], examples: list[str]) -> Counter[str]:
        """Imported plays (source export, or holding an import) and how many have no name through
        history.best_names, the function every reader names a play with."""
        from playvault import history
        from playvault.store.catalog import AlbumModel, ArtistModel, EpisodeModel, TrackModel
        from playvault.store.plays import PlayModel

        aws, stack = self.sim.system.aws, self.sim.system.stack

        def table(logical_id: str, model: type, key: str, attributes: list[str]) -> dict[str, Any]:
            return {item[key]: model(**item) for item in aws.table_items(stack.name(logical_id), attributes)}

        tracks = table("TracksTable", TrackModel, "track_id", ["track_id", "name", "album_id", "artist_ids"])
        albums = table("AlbumsTable", AlbumModel, "album_id", ["album_id", "name"])
        artists = table("ArtistsTable", ArtistModel, "artist_id", ["artist_id", "name"])
        episodes = table("EpisodesTable", EpisodeModel, "episode_id", ["episode_id", "name", "show_name"])
        out: Counter[str] = Counter()
        for row in rows:
            if row.get("source") != "export" and not row.get("import_ref"):
                continue
            play = PlayModel(**{k: v for k, v in row.items() if v is not None})
            track = tracks.get(play.track_id) if play.track_id else None
            album = albums.get(track.album_id) if track else None
            episode = episodes.get(play.episode_id) if play.episode_id else None
            out["imported"] += 1
            if not history.best_names(play, track, album, artists, episode).title(play.item_type):
                out["without_name"] += 1
                _example(examples, f"{play.user_id} {play.played_at} {play.item_type} {play.import_ref}")
        return out


PLAY_ATTRIBUTES = ("user_id", "played_at", "played_at_ms", "item_type", "track_id", "episode_id", "source",
                   "track_name", "artist_name", "album_name", "episode_name", "show_name", "import_ref", "ms_played")


def _example(examples: list[str], text: str) -> None:
    if len(examples) < EXAMPLES:
        examples.append(text)


def _ms_text(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _drain(sim: Any) -> int:
    """Deliver the importer's continuations as AWS would: the jobs queue like its event source (the
    template's BatchSize), the importer invocations the jobs function makes, jumping the simulated
    clock to the next delayed message or retry. Returns the importer invocations that continued a job."""
    system = sim.system
    source = SqsEventSource(system, spec=system.import_source)
    invocations = system.invocations
    handed_over = invocations.stats.invocations
    for _ in range(MAX_QUEUE_ROUNDS):
        if source.poll_once() or invocations.poll_once():
            continue
        state = system.aws.queue_state(source.queue_name)
        due = [t for t in (state["next_visible_at"] if state["messages"] else None, invocations.next_due())
               if t is not None]
        if not due:
            return invocations.stats.invocations - handed_over
        sim._advance(datetime.fromtimestamp(max(min(due) + 0.001, sim.clock().timestamp() + 0.001), UTC))
    raise RuntimeError("the importer's continuations do not drain")
