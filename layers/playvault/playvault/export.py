"""Full export of a user's archive: every play with played_at, track, album, artists (names and ids),
duration and source, in one of four formats:

- `csv`, `jsonl`: PlayVault's own rows (history.PlayRow).
- `listenbrainz`: ListenBrainz's listens, one JSON object a line, as its own export holds them and its
  importer reads them (`listened_at` = start of playback, `track_metadata`, `additional_info`), in a
  ZIP as `listens/playvault.jsonl` (the ZIP is what ListenBrainz's and Koito's importers take).
- `spotify`: Spotify's extended streaming history, one JSON array (`Streaming_History_Audio_*.json`).
Both portable formats are read back by PlayVault's importer (imports/formats.py); README, Exports,
says which tools import which and what each field holds.

The file goes to the user-files bucket (exports/<user_id>/<export_id>.<fmt>, expiring after a day)
as an S3 multipart upload written while the plays are read: one part (PART_BYTES) in memory at a
time, however large the archive. After each part the job checkpoints (store/exports.py), so a crash
or the end of an invocation's time resumes after the last uploaded play. The user gets it through
a short-lived presigned URL.
"""

from __future__ import annotations

import csv
import io
import json
import secrets
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError
from pynamodb.exceptions import UpdateError

from playvault import clock, history
from playvault.clock import to_ms
from playvault.jobs import Continue, JobMessage, JobQueue
from playvault.normalize import LOCAL_PREFIX
from playvault.store import exports, plays, users
from playvault.store.base import condition_failed
from playvault.store.exports import ExportModel, Part

logger = Logger(child=True)

PART_BYTES = 6 * 1024 * 1024  # S3 parts are at least 5 MiB, except the last
MIN_REMAINING_S = 20.0  # stop after a part when less than this remains
URL_SECONDS = 300
CSV_COLUMNS = ["played_at", "item_type", "track_id", "track_name", "album_id", "album_name", "artist_ids",
               "artist_names", "duration_ms", "source", "episode_id", "episode_name", "show_name"]


def csv_header() -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(CSV_COLUMNS)
    return out.getvalue().encode()


def csv_line(row: history.PlayRow) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow([
        row.played_at, row.item_type, row.track_id or "", row.track_name or "", row.album_id or "",
        row.album_name or "", ";".join(i or "" for i in row.artist_ids), ";".join(row.artist_names),
        "" if row.duration_ms is None else row.duration_ms, row.source, row.episode_id or "",
        row.episode_name or "", row.show_name or "",
    ])
    return out.getvalue().encode()


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def jsonl_line(row: history.PlayRow, user_id: str = "") -> bytes:
    return _json(row.as_dict()) + b"\n"


SUBMISSION_CLIENT = "PlayVault"
SPOTIFY_SERVICE = "spotify.com"  # ListenBrainz's music_service: the service's domain
OPEN_SPOTIFY = "https://open.spotify.com"  # ListenBrainz's spotify_* fields hold these URLs, not bare ids


def spotify_id(catalog_id: str | None) -> str | None:
    """A catalog id when it is Spotify's: local files' ids are PlayVault's own (normalize.LOCAL_PREFIX),
    never written where another tool expects a Spotify id (the play keeps its names)."""
    return None if not catalog_id or catalog_id.startswith(LOCAL_PREFIX) else catalog_id


def _played_ms(row: history.PlayRow) -> int:
    return to_ms(datetime.fromisoformat(row.played_at.replace("Z", "+00:00")))


def listenbrainz_listen(row: history.PlayRow) -> dict[str, Any]:
    """One play as a ListenBrainz listen (the shape of its export's listens/<year>/<month>.jsonl lines).

    PlayVault's played_at is the stream's end; ListenBrainz's listened_at its start: played_at minus
    ms_played where an export said it, else minus the item's duration (Spotify lists a play once it
    is over), else played_at itself. `playvault_played_at` keeps the exact end, so a re-import into
    PlayVault restores it to the millisecond. Episodes have no place in ListenBrainz's model: the
    episode is the track, the show the artist, no release, marked `playvault_item_type: episode`.
    """
    episode = row.item_type == "episode"
    played = row.ms_played if row.ms_played is not None else row.duration_ms
    info: dict[str, Any] = {}
    if episode:
        title, by, release = row.episode_name, row.show_name, None
        info["playvault_item_type"] = "episode"
        if row.episode_id:
            info["origin_url"] = f"{OPEN_SPOTIFY}/episode/{row.episode_id}"
    else:
        title, by, release = row.track_name, ", ".join(row.artist_names), row.album_name
        if row.artist_names:
            info["artist_names"] = list(row.artist_names)
        if track_id := spotify_id(row.track_id):
            info["spotify_id"] = info["origin_url"] = f"{OPEN_SPOTIFY}/track/{track_id}"
        if album_id := spotify_id(row.album_id):
            info["spotify_album_id"] = f"{OPEN_SPOTIFY}/album/{album_id}"
        if row.artist_ids and all(spotify_id(a) for a in row.artist_ids):
            info["spotify_artist_ids"] = [f"{OPEN_SPOTIFY}/artist/{a}" for a in row.artist_ids]
    if row.duration_ms:
        info["duration_ms"] = row.duration_ms
    if row.ms_played is not None:
        info["ms_played"] = row.ms_played  # the key ListenBrainz's own Spotify importer writes
    info.update(music_service=SPOTIFY_SERVICE, submission_client=SUBMISSION_CLIENT,
                playvault_played_at=row.played_at)
    metadata: dict[str, Any] = {"artist_name": by or "", "track_name": title or ""}
    if release:
        metadata["release_name"] = release
    metadata["additional_info"] = info
    return {"listened_at": (_played_ms(row) - (played or 0)) // 1000, "track_metadata": metadata}


def listenbrainz_line(row: history.PlayRow, user_id: str = "") -> bytes:
    return _json(listenbrainz_listen(row)) + b"\n"


def spotify_stream(row: history.PlayRow, user_id: str) -> dict[str, Any]:
    """One play as a row of Spotify's extended streaming history, every field of Spotify's in its order.

    `ts` is the stream's end in whole seconds, which is what PlayVault's played_at is (README,
    Import: played_at = the stream's end), so ts = played_at, truncated. `ms_played` is the export's
    where an import brought it and null for a polled play (Spotify's recently-played does not say
    how long a play lasted). What PlayVault never knows (country, IP address, start and end reasons,
    shuffle, skipped, offline, incognito) is null; `username` is the user's Spotify id, which the
    old format's `username` holds and PlayVault's importer checks.
    """
    episode = row.item_type == "episode"
    return {
        "ts": row.played_at[:19] + "Z",
        "username": user_id,
        "platform": row.platform,
        "ms_played": row.ms_played,
        "conn_country": None,
        "ip_addr": None,
        "master_metadata_track_name": None if episode else row.track_name,
        "master_metadata_album_artist_name": None if episode or not row.artist_names else row.artist_names[0],
        "master_metadata_album_album_name": None if episode else row.album_name,
        "spotify_track_uri": f"spotify:track:{spotify_id(row.track_id)}" if spotify_id(row.track_id) and not episode
        else None,
        "episode_name": row.episode_name if episode else None,
        "episode_show_name": row.show_name if episode else None,
        "spotify_episode_uri": f"spotify:episode:{row.episode_id}" if row.episode_id and episode else None,
        "audiobook_title": None,
        "audiobook_uri": None,
        "audiobook_chapter_uri": None,
        "audiobook_chapter_title": None,
        "reason_start": None,
        "reason_end": None,
        "shuffle": None,
        "skipped": None,
        "offline": None,
        "offline_timestamp": None,
        "incognito_mode": None,
    }


def spotify_line(row: history.PlayRow, user_id: str) -> bytes:
    return _json(spotify_stream(row, user_id))


# -- a ZIP of one member, written part by part ----------------------------------------------
# ListenBrainz's and Koito's importers take a ZIP of `listens/*.jsonl`: the listens are written as
# its one member, stored (not deflated: a compressor's state cannot be checkpointed between
# invocations, a CRC-32 can), sizes and CRC in a data descriptor after the data (bit 3), so the
# member is streamed like any export. No Zip64: up to 4 GiB, millions of plays.
_ZIP_FLAGS = 0x0808  # bit 3: sizes and CRC follow the data; bit 11: the name is UTF-8
_ZIP_VERSION = 20


def _dos_time(moment: datetime) -> tuple[int, int]:
    return (moment.hour << 11 | moment.minute << 5 | moment.second // 2,
            (moment.year - 1980) << 9 | moment.month << 5 | moment.day)


def zip_local_header(name: str, moment: datetime) -> bytes:
    raw = name.encode()
    dos_time, dos_date = _dos_time(moment)
    return struct.pack("<IHHHHHIIIHH", 0x04034B50, _ZIP_VERSION, _ZIP_FLAGS, 0, dos_time, dos_date, 0, 0, 0,
                       len(raw), 0) + raw


def zip_trailer(name: str, moment: datetime, crc: int, data_bytes: int, data_end: int) -> bytes:
    """Data descriptor, central directory and its end, for the member whose data ends at `data_end`."""
    if data_end > 0xFFFFFFFF:
        raise ValueError("an export ZIP over 4 GiB needs Zip64, which this writer does not write")
    raw = name.encode()
    dos_time, dos_date = _dos_time(moment)
    descriptor = struct.pack("<IIII", 0x08074B50, crc, data_bytes, data_bytes)
    directory = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, _ZIP_VERSION, _ZIP_VERSION, _ZIP_FLAGS, 0, dos_time,
                            dos_date, crc, data_bytes, data_bytes, len(raw), 0, 0, 0, 0, 0, 0) + raw
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(directory), data_end + len(descriptor), 0)
    return descriptor + directory + end


@dataclass(frozen=True)
class Encoding:
    """How one format writes a file: a header, one piece per play (separated), a footer; optionally
    all of it as the one member of a ZIP."""

    header: bytes
    line: Callable[[history.PlayRow, str], bytes]  # (play, user id)
    file_name: Callable[[str], str]  # export id -> the download's file name
    separator: bytes = b""  # between two plays (a JSON array's comma)
    footer: bytes = b""
    zip_member: str | None = None  # the file's name inside the ZIP it is written as


ENCODINGS: dict[str, Encoding] = {
    "csv": Encoding(csv_header(), lambda row, _user: csv_line(row), lambda i: f"playvault-{i}.csv"),
    "jsonl": Encoding(b"", jsonl_line, lambda i: f"playvault-{i}.jsonl"),
    # ListenBrainz's importer reads every *.jsonl of the ZIP it is given, Koito's every listens/*.jsonl.
    "listenbrainz": Encoding(b"", listenbrainz_line, lambda i: f"playvault-{i}-listenbrainz.zip",
                             zip_member="listens/playvault.jsonl"),
    # Named as Spotify names its files: importers pick streaming history by this name.
    "spotify": Encoding(b"[\n", spotify_line, lambda i: f"Streaming_History_Audio_playvault-{i}.json",
                        separator=b",\n", footer=b"\n]\n"),
}


def new_export_id(now: datetime) -> str:
    return f"{now:%Y%m%dT%H%M%S}Z-{secrets.token_hex(4)}"


class Exporter:
    def __init__(self, s3: Any, bucket: str, queue: JobQueue | None = None, *, part_bytes: int = PART_BYTES,
                 min_remaining_s: float = MIN_REMAINING_S):
        self.s3 = s3
        self.bucket = bucket
        self.queue = queue
        self.part_bytes = part_bytes
        self.min_remaining_s = min_remaining_s

    # -- request side -------------------------------------------------------------------------
    def start(self, user_id: str, fmt: str) -> ExportModel:
        if fmt not in exports.FORMATS:
            raise ValueError(f"unknown export format {fmt!r}")
        now = clock.now()
        job = exports.create(user_id, new_export_id(now), fmt, now)
        if self.queue is not None:
            self.queue.send(JobMessage(kind="export", user_id=user_id, export_id=job.export_id))
        logger.info("export requested", extra={"user_id": user_id, "export_id": job.export_id, "format": fmt})
        return job

    def download_url(self, job: ExportModel) -> str:
        filename = ENCODINGS[job.format].file_name(job.export_id)
        return self.s3.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": job.object_key,
                    "ResponseContentDisposition": f'attachment; filename="{filename}"',
                    "ResponseContentType": exports.FORMATS[job.format]},
            ExpiresIn=URL_SECONDS,
        )

    # -- the job ------------------------------------------------------------------------------
    def run(self, user_id: str, export_id: str, budget: Any) -> Continue | None:
        job = exports.get(user_id, export_id)
        if job is None or job.status in (exports.DONE, exports.FAILED):
            return None
        user = users.get(user_id)
        if user is None or user.status == users.DELETING:
            self._abandon(job)
            return None
        if job.upload_id is None and not self._begin(job):
            return None
        if job.upload_id is not None and self._file_exists(job):
            return self._settle(job)  # the upload was completed just before a crash
        try:
            return self._continue(job, budget)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise
            # Completed just before a crash (or aborted): the file is there, or the job is lost.
            return self._settle(job)

    def _file_exists(self, job: ExportModel) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=job.object_key)
        except ClientError:
            return False
        return True

    def _settle(self, job: ExportModel) -> None:
        try:
            size = self.s3.head_object(Bucket=self.bucket, Key=job.object_key)["ContentLength"]
        except ClientError:
            self._abandon(job)
            return None
        self._finish(job, [ExportModel.status.set(exports.DONE), ExportModel.finished_at.set(clock.now()),
                           ExportModel.rows.set(int(job.total or job.rows)), ExportModel.size_bytes.set(size)])
        return None

    @staticmethod
    def _finish(job: ExportModel, actions: list[Any]) -> None:
        # On the row as it is: a row a deletion removed meanwhile is not written back (UpdateItem would).
        try:
            job.update(actions=actions, condition=ExportModel.export_id.exists())
        except UpdateError as exc:
            if not condition_failed(exc):
                raise

    def _begin(self, job: ExportModel) -> bool:
        upload = self.s3.create_multipart_upload(Bucket=self.bucket, Key=job.object_key,
                                                 ContentType=exports.FORMATS[job.format])
        try:
            job.update(actions=[ExportModel.upload_id.set(upload["UploadId"]),
                                ExportModel.status.set(exports.RUNNING),
                                ExportModel.total.set(plays.count(job.user_id))],
                       condition=ExportModel.export_id.exists() & ExportModel.upload_id.does_not_exist())
        except UpdateError as exc:
            self.s3.abort_multipart_upload(Bucket=self.bucket, Key=job.object_key, UploadId=upload["UploadId"])
            if condition_failed(exc):
                return False  # a duplicate delivery began it (that one carries on), or a deletion removed the row
            raise
        return True

    def _continue(self, job: ExportModel, budget: Any) -> Continue | None:
        encoding = ENCODINGS[job.format]
        member = encoding.zip_member
        lead = zip_local_header(member, job.created_at) if member else b""
        parts = [{"PartNumber": int(p.number), "ETag": p.etag} for p in job.parts]
        rows, size, cursor = int(job.rows), int(job.size_bytes), job.cursor
        crc = int(job.crc32 or 0)  # of the ZIP member's data in the uploaded parts
        buffer = bytearray(lead if not parts else b"")
        pending = 0
        part_started = time.monotonic()

        def add(data: bytes) -> None:
            nonlocal crc
            buffer.extend(data)
            if member:
                crc = zlib.crc32(data, crc)

        if not parts:
            add(encoding.header)
        for row in history.enriched(plays.plays_after(job.user_id, cursor)):
            add((encoding.separator if rows + pending else b"") + encoding.line(row, job.user_id))
            pending += 1
            cursor = row.played_at
            if len(buffer) >= self.part_bytes:
                parts.append(self._upload(job, len(parts) + 1, bytes(buffer)))
                if not self._checkpoint(job, parts, rows, rows + pending, size + len(buffer), cursor, crc):
                    return None
                rows, size = rows + pending, size + len(buffer)
                buffer, pending = bytearray(), 0
                # Another part fits only if the time left exceeds what the last one took, with margin:
                # a part cut by the timeout is redone from the checkpoint (safe, but wasted).
                part_s, part_started = time.monotonic() - part_started, time.monotonic()
                if budget.remaining_s() < max(self.min_remaining_s, 1.5 * part_s):
                    return Continue(0)
        add(encoding.footer)
        if member:
            end = size + len(buffer)
            buffer += zip_trailer(member, job.created_at, crc, end - len(lead), end)
        if buffer or not parts:
            parts.append(self._upload(job, len(parts) + 1, bytes(buffer)))
            rows, size = rows + pending, size + len(buffer)
        self.s3.complete_multipart_upload(Bucket=self.bucket, Key=job.object_key, UploadId=job.upload_id,
                                          MultipartUpload={"Parts": parts})
        self._finish(job, [ExportModel.status.set(exports.DONE), ExportModel.finished_at.set(clock.now()),
                           ExportModel.rows.set(rows), ExportModel.size_bytes.set(size),
                           ExportModel.cursor.set(cursor) if cursor else ExportModel.cursor.remove(),
                           ExportModel.parts.set([])])
        logger.info("export done", extra={"user_id": job.user_id, "export_id": job.export_id, "rows": rows})
        return None

    def _upload(self, job: ExportModel, number: int, body: bytes) -> dict[str, Any]:
        answer = self.s3.upload_part(Bucket=self.bucket, Key=job.object_key, UploadId=job.upload_id,
                                     PartNumber=number, Body=body)
        return {"PartNumber": number, "ETag": answer["ETag"]}

    def _checkpoint(self, job: ExportModel, parts: list[dict[str, Any]], rows_before: int, rows: int, size: int,
                    cursor: str, crc: int) -> bool:
        """Record the uploaded parts; False if another delivery of this job got there first."""
        try:
            job.update(actions=[ExportModel.parts.set([Part(number=p["PartNumber"], etag=p["ETag"]) for p in parts]),
                                ExportModel.rows.set(rows), ExportModel.size_bytes.set(size),
                                ExportModel.cursor.set(cursor), ExportModel.crc32.set(crc)],
                       condition=ExportModel.rows == rows_before)
        except UpdateError as exc:
            if condition_failed(exc):
                return False
            raise
        return True

    def _abandon(self, job: ExportModel) -> None:
        if job.upload_id:
            try:
                self.s3.abort_multipart_upload(Bucket=self.bucket, Key=job.object_key, UploadId=job.upload_id)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                    raise  # NoSuchUpload: aborted already (a deletion's sweep) or completed and settled
        try:
            job.update(actions=[ExportModel.status.set(exports.FAILED)], condition=ExportModel.export_id.exists())
        except UpdateError as exc:
            if not condition_failed(exc):
                raise
