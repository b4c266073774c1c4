"""Import benchmark: throughput (rows/s) on moto_server + the Spotify emulator, DynamoDB write units
per imported play, and the importer's memory high-water mark for a 150,000-row export.

- units: a 3,000-row export imported in this process with the bench's Recorder (request units by
  item size, AWS's rules): WRU per imported play, split into plays, catalog rows and job bookkeeping.
- throughput and memory: the big export is built and uploaded here; a child process (the importer
  alone, as a Lambda container would hold it) imports it and reports rows/s and its peak RSS
  (VmHWM) next to its RSS before the import began (the runtime and libraries).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import zipfile
from datetime import UTC, datetime, timedelta
from typing import Any

USER = "benchuser"
SEED = 7  # the bench's emulator seed


def build_export(rows: int, start: datetime) -> bytes:
    """A ZIP like Spotify's: Audio files of up to 15,000 streams each (as Spotify splits them)."""
    from spotify_emulator import catalog

    tracks = [catalog.track(SEED, i) for i in range(catalog.CATALOG_SIZE)]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        per_file = 15_000
        for part in range(0, rows, per_file):
            items = []
            for k in range(part, min(rows, part + per_file)):
                t = tracks[(k * 7919) % len(tracks)]
                moment = start + timedelta(seconds=200 * k)
                items.append({"ts": moment.strftime("%Y-%m-%dT%H:%M:%SZ"), "platform": "android", "ms_played": 180_000,
                              "conn_country": "SE", "ip_addr": "192.0.2.1", "master_metadata_track_name": t["name"],
                              "master_metadata_album_artist_name": t["artists"][0]["name"],
                              "master_metadata_album_album_name": t["album"]["name"], "spotify_track_uri": t["uri"],
                              "episode_name": None, "episode_show_name": None, "spotify_episode_uri": None,
                              "reason_start": "trackdone", "reason_end": "trackdone", "shuffle": False,
                              "skipped": False, "offline": False, "offline_timestamp": int(moment.timestamp()),
                              "incognito_mode": False})
            archive.writestr(f"Spotify Extended Streaming History/Streaming_History_Audio_{part // per_file}.json",
                             json.dumps(items))
    return buffer.getvalue()


def _stack(aws_url: str, spotify_url: str, prefix: str) -> Any:
    import playvault.imports.job  # noqa: F401 - registers every model the importer uses before bind()
    from playvault import store
    from playvault.config import ImporterSettings
    from playvault_local.provision import provision

    stack = provision(endpoint_url=aws_url, prefix=prefix, parameters={
        "SpotifyApiUrl": f"{spotify_url}/v1", "SpotifyAccountsUrl": spotify_url,
        "RedirectUri": "http://127.0.0.1:8765/auth/callback", "Stage": prefix[-8:].replace("-", "")[:15] or "bench"})
    os.environ.update(stack.env)
    store.bind(ImporterSettings.from_env())
    return stack


def _upload(stack: Any, body: bytes, name: str = "my_spotify_data.zip") -> tuple[str, int]:
    import boto3

    from playvault.imports import issue_upload_id, upload_id_key
    from playvault.store import users
    from playvault_local.provision import DEV_CLIENT_SECRET

    users.UserModel(USER, status=users.ACTIVE, created_at=datetime.now(UTC)).save()
    upload_id = issue_upload_id(USER, datetime.now(UTC), upload_id_key(DEV_CLIENT_SECRET))
    key = f"imports/{USER}/{upload_id}/export"
    boto3.client("s3").put_object(Bucket=stack.name("UserFilesBucket"), Key=key, Body=body,
                                  Metadata={"file-name": name})
    return key, len(body)


def _importer(stack: Any, continued: list[Any]) -> Any:
    import boto3

    from playvault.imports import upload_id_key
    from playvault.imports.job import Importer, ImportSettings
    from playvault.spotify import Credentials, SpotifyClient
    from playvault_local.provision import DEV_CLIENT_ID, DEV_CLIENT_SECRET

    api = os.environ["SPOTIFY_API_URL"]
    spotify = SpotifyClient(api_url=api, accounts_url=os.environ["SPOTIFY_ACCOUNTS_URL"],
                            credentials=lambda: Credentials(DEV_CLIENT_ID, DEV_CLIENT_SECRET))
    return Importer(boto3.client("s3"), stack.name("UserFilesBucket"), spotify,
                    ImportSettings(resolve_interval_s=0), continue_later=lambda u, j, d: continued.append(d),
                    upload_id_key=lambda: upload_id_key(DEV_CLIENT_SECRET))


def _import_all(stack: Any, key: str, size: int) -> dict[str, Any]:
    from playvault.imports.job import DONE, job_for_key
    from playvault.spotify import Budget

    continued: list[float] = []
    importer = _importer(stack, continued)
    started = time.perf_counter()
    outcome = importer.start(key, size, Budget.seconds(900))
    user_id, job_id = job_for_key(key)
    runs = 1
    while outcome.status != DONE and runs < 1000:
        outcome = importer.run(user_id, job_id, Budget.seconds(900))
        runs += 1
    from playvault.store import imports

    job = imports.get(user_id, job_id)
    return {"seconds": round(time.perf_counter() - started, 2), "state": job.state, "runs": runs,
            "rows_read": int(job.rows_read), "plays_added": int(job.plays_added),
            "tracks_resolved": int(job.tracks_resolved)}


def units(recorder: Any, aws_url: str, spotify_url: str, rows: int = 3000) -> dict[str, Any]:
    """WRU per imported play, from the Recorder's item-size accounting."""
    stack = _stack(aws_url, spotify_url, "bench-import-units")
    with recorder.paused():
        key, size = _upload(stack, build_export(rows, datetime(2019, 1, 1, tzinfo=UTC)))
    from playvault.store import catalog

    catalog.forget_known_ids()
    recorder.probe = recorder.uncounted_client("dynamodb", endpoint_url=aws_url, region_name="us-east-1")
    recorder.reset()
    result = _import_all(stack, key, size)
    wru = dict(recorder.snapshot()["wru"])
    recorder.probe = None
    by_table = {name: wru.get(stack.name(name), 0) for name in
                ("PlaysTable", "TracksTable", "AlbumsTable", "ArtistsTable", "EpisodesTable", "ImportsTable")}
    catalog_wru = sum(by_table[t] for t in ("TracksTable", "AlbumsTable", "ArtistsTable", "EpisodesTable"))
    plays = max(1, result["plays_added"])
    return {**result, "wru_by_table": by_table,
            "plays_wru_per_play": round(by_table["PlaysTable"] / plays, 3),
            "catalog_wru": catalog_wru,
            "job_bookkeeping_wru_per_play": round(by_table["ImportsTable"] / plays, 4),
            "total_wru_per_play": round(sum(by_table.values()) / plays, 3)}


def throughput_and_memory(aws_url: str, spotify_url: str, rows: int = 150_000) -> dict[str, Any]:
    """The big export, imported by a child process: rows/s and its memory high-water mark."""
    stack = _stack(aws_url, spotify_url, "bench-import-big")
    body = build_export(rows, datetime(2012, 1, 1, tzinfo=UTC))
    key, size = _upload(stack, body)
    del body
    env = {**os.environ, **stack.env}
    child = subprocess.run([sys.executable, "-m", "bench.imports", "--child", key, str(size), "bench-import-big"],
                           env=env, capture_output=True, text=True, timeout=3600, check=False)
    if child.returncode != 0:
        raise RuntimeError(f"import child failed: {child.stderr[-2000:]}")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    result["upload_bytes"] = size
    result["rows_per_s"] = round(result["rows_read"] / max(result["seconds"], 1e-9), 1)
    return result


def _memory_mb(field: str) -> int:
    """VmRSS (now) or VmHWM (high-water mark) of this process. Not ru_maxrss: that survives
    fork+exec, so a child would report its parent's peak."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) // 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _child(key: str, size: int, prefix: str) -> None:
    import playvault.imports.job  # noqa: F401 - registers every model the importer uses before bind()
    from playvault import store
    from playvault.config import ImporterSettings

    store.bind(ImporterSettings.from_env())

    class _Stack:  # the names the importer needs, from the environment the parent passed
        def name(self, logical: str) -> str:
            return {"UserFilesBucket": os.environ["USER_FILES_BUCKET"]}[logical]

    before = _memory_mb("VmRSS")
    result = _import_all(_Stack(), key, size)
    print(json.dumps({**result, "rss_before_mb": before, "peak_rss_mb": _memory_mb("VmHWM")}))


def run(recorder: Any, aws_url: str, spotify_url: str, rows: int = 150_000) -> dict[str, Any]:
    return {"units": units(recorder, aws_url, spotify_url),
            "big": throughput_and_memory(aws_url, spotify_url, rows)}


def summary(result: dict[str, Any]) -> str:
    u, b = result["units"], result["big"]
    return (f"import {b['rows_read']:,} rows: {b['rows_per_s']:,.0f} rows/s ({b['seconds']} s), peak RSS "
            f"{b['peak_rss_mb']} MB (before the import {b['rss_before_mb']} MB; goal < 256 MB); "
            f"WRU per imported play {u['plays_wru_per_play']} (goal 1) + catalog {u['catalog_wru']} WRU for "
            f"{u['tracks_resolved']} new tracks + job {u['job_bookkeeping_wru_per_play']}/play")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        print("python -m bench runs this (make bench); --child is its import process", file=sys.stderr)
        sys.exit(2)
