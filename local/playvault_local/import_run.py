"""`run --import`: after the simulated hours, every emulated user uploads a Spotify data export
consistent with the emulator's history, and the importer takes it in.

Each export holds: years of listening before sign-up (catalog tracks, a few podcast episodes,
skips under 30 s and private-session streams the listening rule drops), every play of the polled
period (ts = the play's end, whole seconds, as Spotify's export has it), so also the plays polling
lost (gap plays, the revoked user's plays) and those after the last poll. Every tenth user sends the
quick "Account data" format instead (minute precision, names only), one user adds a video file.

The upload goes the way a browser's does: playvault.imports.presigned_upload, then a multipart POST
to the S3 emulator. moto emits no S3 events, so the template's EventBridge rule is played by
eventsource.S3EventRule (the new object, the "Object Created" event a real bucket sends, the rule's
pattern), and the importer's continuation queue is drained like an event source mapping. Expected
figures are computed here from the emulator's truth, independently of the importer: plays it should
add, the overlap with polling it should recognise, 0 duplicated plays. Then everyone is polled once
more: the rows after the last poll (imported too: nothing is left to polling) meet the plays that
poll writes, and the worker merges them; again nothing may be duplicated or lost.
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

from playvault_local.events import sqs_event
from playvault_local.eventsource import S3EventRule

HISTORY_YEARS = 2
HISTORY_ROWS = 60  # streams per user before sign-up
MIN_MS = 30_000
MAX_QUEUE_ROUNDS = 100_000


@dataclass
class ExportFile:
    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    # per row: the truth play it reports (ms) or None (history before sign-up), and whether the
    # listening rule keeps it
    provenance: list[tuple[int | None, bool]] = field(default_factory=list)


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
            music.provenance.append((None, played >= MIN_MS))
        for ms, track in truth:
            music.rows.append({"endTime": _end_time(ms), "artistName": (track["artists"] or [{}])[0].get("name"),
                               "trackName": track["name"], "msPlayed": 180_000})
            music.provenance.append((ms, True))
        files.append(music)
        return files
    audio = ExportFile("Spotify Extended Streaming History/Streaming_History_Audio_2023-2025_0.json")
    for ms, track, played, incognito in history:
        if track is None:
            episode_id = catalog.base62_id(random.Random(f"episode:{seed}:{ms}"))
            audio.rows.append({**_extended_row(ms, {"name": None, "artists": [{}], "uri": None}, played),
                               "master_metadata_track_name": None,
                               "spotify_episode_uri": f"spotify:episode:{episode_id}",
                               "episode_name": f"Episode {ms % 997}", "episode_show_name": "The Local Show"})
        else:
            audio.rows.append(_extended_row(ms, track, played, incognito))
        audio.provenance.append((None, played >= MIN_MS and not incognito))
    for ms, track in truth:
        audio.rows.append(_extended_row(ms - ms % 1000, track, 180_000))
        audio.provenance.append((ms, True))
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


def run_imports(sim: Any) -> dict[str, Any]:
    """Upload and import every user's export; returns the import section of the report."""
    from playvault.imports import presigned_upload, status_for_user, upload_id_key

    system = sim.system
    stack = system.stack
    if system.import_function is None or system.import_source is None:
        raise RuntimeError("template: no importer (EventBridge rule on S3 + its SQS queue)")
    bucket = stack.name("UserFilesBucket")
    # Signed as the account function signs its forms (SigV4); the local S3 checks the policy.
    s3 = boto3.session.Session().client("s3", endpoint_url=system.aws.url, config=Config(signature_version="s3v4"))
    plays_table = stack.name("PlaysTable")
    now = sim.clock()
    before = Counter(row["user_id"] for row in system.aws.table_items(plays_table, ["user_id"]))
    api_ms: dict[str, set[int]] = {}
    for row in system.aws.table_items(plays_table, ["user_id", "played_at_ms"]):
        api_ms.setdefault(row["user_id"], set()).add(int(row["played_at_ms"]))

    uploaded = S3EventRule(system, next(r for r in system.s3_rules if r.function == system.import_function))
    exports: dict[str, list[ExportFile]] = {}
    expected = Counter()
    session = requests.Session()
    for index, user in enumerate(sim.population):
        files = build_export(system.emulator_state, user.user_id, index, sim.config.start, now, sim.config.seed)
        exports[user.user_id] = files
        for export in files:
            for row_ms, kept in export.provenance:
                expected["rows"] += 1
                if not kept:
                    continue
                # Every kept row is imported, whatever the user's cursor or status (nothing is left to polling).
                if row_ms is not None and row_ms in api_ms.get(user.user_id, set()):
                    expected["overlap_with_polling"] += 1
                else:
                    expected["to_add"] += 1
        upload = presigned_upload(s3, bucket, user.user_id, now,
                                  upload_key=upload_id_key(system.config.client_secret))
        # Browsers name a second download "... (1).zip": the key never carries the name, the job does.
        name = "my_spotify_data (1).zip" if index % 2 else "my_spotify_data.zip"
        answer = session.post(upload["url"], data=upload["fields"], files={"file": (name, _zip(files))}, timeout=60)
        if answer.status_code not in (200, 201, 204):
            raise RuntimeError(f"upload for {user.user_id} refused: {answer.status_code} {answer.text[:200]}")
        failed_before = len(uploaded.failures)
        if uploaded.poll_once() != 1:  # the template's rule matched the upload and the importer ran
            failures = uploaded.failures[failed_before:]
            raise RuntimeError(f"the importer failed on {user.user_id}'s upload: {failures[0]}" if failures else
                               f"the upload for {user.user_id} raised no import event (the importer's S3 rule)")
    continuations = _drain(sim)

    statuses = {u.user_id: status_for_user(u.user_id, sim.clock()) for u in sim.population}
    jobs = [job for items in statuses.values() for job in items]
    skipped: Counter[str] = Counter()
    for job in jobs:
        skipped.update(job["skipped"])
    duplicated, added_rows, filled = _duplicated(system, plays_table, exports, api_ms)
    after = Counter(row["user_id"] for row in system.aws.table_items(plays_table, ["user_id"]))
    first = next(iter(statuses.values()))[0] if statuses and next(iter(statuses.values())) else None
    after_poll = _poll_after_import(sim, plays_table, exports)
    return {
        "users": len(sim.population),
        "uploads": len(jobs),
        "jobs_by_state": dict(Counter(job["state"] for job in jobs)),
        "rows_in_exports": expected["rows"],
        "rows_read": sum(job["rows_read"] for job in jobs),
        "plays_added": sum(job["plays_added"] for job in jobs),
        "plays_added_expected": expected["to_add"],
        "rows_written": added_rows,
        # plays of the polled period that polling did not have (gap plays, a revoked user's plays)
        "polled_period_plays_filled": filled,
        "duplicates_avoided": sum(job["duplicates"] for job in jobs),
        "overlap_with_polling": expected["overlap_with_polling"],
        "skipped_by_reason": dict(sorted(skipped.items())),
        "episodes_added": sum(job["episodes_added"] for job in jobs),
        "tracks_resolved": sum(job["tracks_resolved"] for job in jobs),
        "tracks_still_to_resolve": sum(job["tracks_to_resolve"] for job in jobs),
        "errors": [job["error"] for job in jobs if job["error"]][:5],
        "plays_duplicated": duplicated,
        "plays_in_table_before": sum(before.values()),
        "plays_in_table_after": sum(after.values()),
        "continuations": continuations,
        # every user polled once more after the import: the worker merges the export rows of plays it
        # writes now (those after the last poll), and nothing may end twice or go missing
        "after_poll": after_poll,
        "example_job": first,
    }


def _poll_after_import(sim: Any, plays_table: str, exports: dict[str, list[ExportFile]]) -> dict[str, int]:
    """One more dispatch an hour later (every user due), then: export rows whose play polling also
    holds (duplicated), and kept export rows in no play at all (lost)."""
    from datetime import timedelta

    system = sim.system
    tick = sim.clock() + timedelta(minutes=61)
    sim._advance(tick)
    sim._dispatch(tick)
    sim._drain(until=tick + timedelta(minutes=15))
    api_ms: dict[str, set[int]] = {}
    refs: set[tuple[str, int, int]] = set()
    merged = 0
    for row in system.aws.table_items(plays_table, ["user_id", "played_at_ms", "source", "import_ref"]):
        if row.get("source") != "export":
            api_ms.setdefault(row["user_id"], set()).add(int(row["played_at_ms"]))
            merged += bool(row.get("import_ref"))
        if row.get("import_ref"):
            _job, file_index, row_index = row["import_ref"].rsplit(":", 2)
            refs.add((row["user_id"], int(file_index), int(row_index)))
    duplicated, _written, _filled = _duplicated(system, plays_table, exports, api_ms)
    lost = 0
    for user_id, files in exports.items():
        for file_index, export in enumerate(files):
            for row_index, (truth_ms, kept) in enumerate(export.provenance):
                if kept and (user_id, file_index, row_index) not in refs and truth_ms not in api_ms.get(user_id, ()):
                    lost += 1
    return {"plays_duplicated": duplicated, "plays_lost": lost, "polled_plays_holding_an_import": merged}


def _drain(sim: Any) -> int:
    """Deliver the importer's continuation messages like its event source (BatchSize from the
    template), jumping the simulated clock to the next delayed one."""
    system = sim.system
    source = system.import_source
    url, arn, name = (system.queue_url(source.queue_logical_id), system.queue_arn(source.queue_logical_id),
                      system.queue_name(source.queue_logical_id))
    delivered = 0
    for _ in range(MAX_QUEUE_ROUNDS):
        got = system.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=source.batch_size,
                                         AttributeNames=["All"], WaitTimeSeconds=0).get("Messages") or []
        if not got:
            state = system.aws.queue_state(name)
            if not state["messages"] or state["next_visible_at"] is None:
                return delivered
            sim._advance(datetime.fromtimestamp(max(state["next_visible_at"] + 0.001,
                                                    sim.clock().timestamp() + 0.001), UTC))
            continue
        answer = system.invoke(source.function, sqs_event(got, arn)) or {}
        failed = {f["itemIdentifier"] for f in answer.get("batchItemFailures", [])}
        for message in got:
            delivered += 1
            if message["MessageId"] not in failed:
                system.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    raise RuntimeError("the import queue does not drain")


def _duplicated(system: Any, plays_table: str, exports: dict[str, list[ExportFile]],
                api_ms: dict[str, set[int]]) -> tuple[int, int, int]:
    """Plays in the table twice: an imported row for a play polling had archived, or two imported
    rows for one exported stream. Read straight from the rows' import_ref (job:file:row)."""
    duplicated = 0
    written = 0
    filled = 0
    seen: Counter[tuple[str, str, int]] = Counter()
    for row in system.aws.table_items(plays_table, ["user_id", "source", "import_ref"]):
        if row.get("source") != "export" or not row.get("import_ref"):
            continue
        written += 1
        _job, file_index, row_index = row["import_ref"].rsplit(":", 2)
        files = exports.get(row["user_id"], [])
        export = files[int(file_index)]
        truth_ms, _kept = export.provenance[int(row_index)]
        seen[(row["user_id"], export.name, int(row_index))] += 1
        if truth_ms is not None and truth_ms in api_ms.get(row["user_id"], set()):
            duplicated += 1
        elif truth_ms is not None:
            filled += 1
    duplicated += sum(count - 1 for count in seen.values() if count > 1)
    return duplicated, written, filled
