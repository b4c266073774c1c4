"""The full-export job on a large archive: memory stays flat (streamed), time and requests per play.

One user with N plays (default 100,000) over a catalog of 2,000 tracks on moto_server; the export
job (playvault.export.Exporter, exactly as functions/jobs runs it, 6 MiB parts) writes the JSON
Lines and the CSV file. Measured: wall time, rows, bytes, parts, and the Python heap's peak during
the job (tracemalloc) against the size of the file: bounded memory means the peak stays near one
part plus the catalog cache, far below the file. Standalone: `python -m bench.export --plays N`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from typing import Any

USER = "bench-exporter"
TRACKS = 2_000


class _Unlimited:
    """A budget that never runs out: one invocation exports it all (the worst case for memory)."""

    def remaining_s(self) -> float:
        return 1e9


def _seed(plays: int) -> None:
    from bench import catalog
    from playvault.store.plays import PlayModel

    catalog.seed(TRACKS)
    start = datetime(2020, 1, 1, tzinfo=UTC)
    with PlayModel.batch_write() as batch:
        for i in range(plays):
            at = start + timedelta(seconds=200 * i)
            batch.save(PlayModel(USER, at.strftime("%Y-%m-%dT%H:%M:%S.000Z"), played_at_ms=int(at.timestamp() * 1000),
                                 track_id=f"track{(i * 31) % TRACKS:05d}"))


def run(aws_url: str, plays: int = 100_000) -> dict[str, Any]:
    import boto3
    from botocore.config import Config

    from playvault import store
    from playvault.config import AccountSettings
    from playvault.export import Exporter
    from playvault.store import exports, users
    from playvault_local.provision import provision

    stack = provision(endpoint_url=aws_url, prefix="bench-export", parameters={"Stage": "export"})
    os.environ.update(stack.env)
    store.bind(AccountSettings.from_env())
    # moto's Query walks the whole partition for every page (O(n) per page): at 100,000 plays a page
    # takes longer than the models' 5 s read timeout. Bench-only; DynamoDB answers a page in ~0.1 s.
    for model in store.ALL_MODELS.values():
        model.Meta.read_timeout_seconds = 600
        model._connection = None
    users.UserModel(USER, status=users.ACTIVE).save()
    seeded = time.perf_counter()
    _seed(plays)
    seed_s = time.perf_counter() - seeded
    s3 = boto3.client("s3", endpoint_url=aws_url, config=Config(signature_version="s3v4"))
    bucket = stack.name("UserFilesBucket")
    exporter = Exporter(s3, bucket)
    out: dict[str, Any] = {"plays": plays, "seed_seconds": round(seed_s, 1)}
    for fmt in ("jsonl", "csv"):
        job = exporter.start(USER, fmt)
        tracemalloc.start()
        began = time.perf_counter()
        assert exporter.run(USER, job.export_id, _Unlimited()) is None
        seconds = time.perf_counter() - began
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        done = exports.get(USER, job.export_id)
        size = s3.head_object(Bucket=bucket, Key=done.object_key)["ContentLength"]
        out[fmt] = {
            "rows": int(done.rows), "bytes": size, "parts": -(-size // exporter.part_bytes),
            "seconds": round(seconds, 1), "plays_per_s": round(plays / seconds),
            "peak_python_heap_mb": round(peak / 2**20, 1), "file_mb": round(size / 2**20, 1),
            "peak_over_file": round(peak / size, 3),
        }
        assert out[fmt]["rows"] == plays, out
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.export", description=__doc__)
    parser.add_argument("--plays", type=int, default=100_000)
    args = parser.parse_args(argv)
    from bench.__main__ import LAYER, ROOT, _start_moto

    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"})
    for path in (str(LAYER), str(ROOT / "local"), str(ROOT)):
        if path not in sys.path:
            sys.path.insert(0, path)
    moto, url = _start_moto()
    try:
        result = run(url, args.plays)
    finally:
        moto.stop()
    import json

    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
