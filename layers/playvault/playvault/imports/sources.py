"""An uploaded export in S3: a ZIP as Spotify sent it, or one JSON file. Caps are checked before a
byte of content is trusted.

- The upload's size comes from S3 (HeadObject), not from the browser: 0 bytes or more than the cap
  is refused before reading.
- A ZIP is read in place through HTTP range requests (its directory is at the end), never
  downloaded whole. Zip bombs are refused from the directory: total uncompressed size over the cap,
  or any member whose compression ratio is over the cap. zipfile never inflates a member past its
  declared size, so the directory's figures bound what is actually decompressed.
- A plain JSON object is streamed with one GET.
"""

from __future__ import annotations

import io
import posixpath
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from playvault.imports import formats

ZIP_MAGIC = b"PK\x03\x04"
MAX_ZIP_MEMBERS = 5000
# The job lists each streaming-history file (name, state, error) on its status item, which DynamoDB
# caps at 400 KB: an export has a few dozen files with short names.
MAX_HISTORY_FILES = 200
MAX_MEMBER_NAME_CHARS = 300


class UploadRejected(ValueError):
    """The upload as a whole cannot be imported; the message says why (shown on the job)."""


@dataclass(frozen=True)
class UploadFile:
    name: str
    kind: str | None  # formats.EXTENDED / ACCOUNT_* / VIDEO, or None (sniffed from content)
    size: int  # bytes of JSON (uncompressed)


@dataclass(frozen=True)
class Caps:
    max_upload_bytes: int = 200 * 1024 * 1024
    max_uncompressed_bytes: int = 2 * 1024 * 1024 * 1024
    max_ratio: int = 100


class S3RangeReader(io.RawIOBase):
    """A seekable read-only view of an S3 object (range GETs), for zipfile."""

    def __init__(self, s3: Any, bucket: str, key: str, size: int):
        self._s3, self._bucket, self._key, self._size = s3, bucket, key, size
        self._pos = 0
        self.requests = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        if self._pos >= self._size or len(buffer) == 0:
            return 0
        end = min(self._size, self._pos + len(buffer)) - 1
        body = self._s3.get_object(Bucket=self._bucket, Key=self._key, Range=f"bytes={self._pos}-{end}")["Body"]
        data = body.read()
        self.requests += 1
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


class Upload:
    """The files of one uploaded object and a way to stream each."""

    def __init__(self, s3: Any, bucket: str, key: str, size: int, caps: Caps, name: str | None = None):
        self._s3, self._bucket, self._key = s3, bucket, key
        self.size = size
        head = s3.get_object(Bucket=bucket, Key=key, Range="bytes=0-3")["Body"].read()
        self.is_zip = head == ZIP_MAGIC
        self._zip: zipfile.ZipFile | None = None
        if self.is_zip:
            self._zip = self._open_zip(caps)
            self.files = self._zip_files(caps)
        else:
            name = name or posixpath.basename(key)  # the browser's file name (the key ends in "export")
            self.files = [UploadFile(name, formats.classify(name), size)]

    def _open_zip(self, caps: Caps) -> zipfile.ZipFile:
        raw = S3RangeReader(self._s3, self._bucket, self._key, self.size)
        try:
            return zipfile.ZipFile(io.BufferedReader(raw, buffer_size=1024 * 1024))  # type: ignore[arg-type]
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise UploadRejected(f"the ZIP file is damaged ({exc})") from None

    def _zip_files(self, caps: Caps) -> list[UploadFile]:
        assert self._zip is not None
        members = [m for m in self._zip.infolist() if not m.is_dir()]
        if len(members) > MAX_ZIP_MEMBERS:
            raise UploadRejected(f"the ZIP holds {len(members)} files (at most {MAX_ZIP_MEMBERS})")
        chosen = [m for m in members if formats.classify(m.filename) is not None]
        if len(chosen) > MAX_HISTORY_FILES:
            raise UploadRejected(f"the ZIP holds {len(chosen)} streaming-history files (at most {MAX_HISTORY_FILES})")
        for member in chosen:
            if len(member.filename) > MAX_MEMBER_NAME_CHARS:
                raise UploadRejected(f"a file in the ZIP has a name of {len(member.filename)} characters "
                                     f"(at most {MAX_MEMBER_NAME_CHARS})")
        total = sum(m.file_size for m in chosen)
        if total > caps.max_uncompressed_bytes:
            raise UploadRejected(f"the ZIP would unpack to {total} bytes, over the cap of "
                                 f"{caps.max_uncompressed_bytes}: refused as a possible zip bomb")
        for member in chosen:
            if member.flag_bits & 0x1:
                raise UploadRejected(f"{member.filename}: the ZIP is encrypted")
            ratio = member.file_size / max(member.compress_size, 1)
            if ratio > caps.max_ratio:
                raise UploadRejected(f"{member.filename}: compression ratio {ratio:.0f}:1 is over "
                                     f"{caps.max_ratio}:1: refused as a possible zip bomb")
        if not chosen:
            names = ", ".join(m.filename for m in members[:5]) or "nothing"
            raise UploadRejected(f"the ZIP holds no Spotify streaming history (found: {names})")
        return [UploadFile(m.filename, formats.classify(m.filename), m.file_size) for m in chosen]

    def open(self, name: str) -> BinaryIO:
        if self._zip is not None:
            try:
                return self._zip.open(name)  # type: ignore[return-value]
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
                raise UploadRejected(f"{name}: cannot be unpacked ({exc})") from None
        return self._s3.get_object(Bucket=self._bucket, Key=self._key)["Body"]  # type: ignore[no-any-return]


def open_upload(s3: Any, bucket: str, key: str, caps: Caps, name: str | None = None) -> Upload:
    size = int(s3.head_object(Bucket=bucket, Key=key)["ContentLength"])
    if size == 0:
        raise UploadRejected("the upload is empty (0 bytes)")
    if size > caps.max_upload_bytes:
        raise UploadRejected(f"the upload is {size} bytes, over the cap of {caps.max_upload_bytes}")
    return Upload(s3, bucket, key, size, caps, name)


def iter_names(upload: Upload) -> Iterator[str]:
    return (f.name for f in upload.files)
