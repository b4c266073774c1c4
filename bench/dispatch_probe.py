"""One dispatcher run in a fresh process: `python -m bench.dispatch_probe` (environment set by the caller).

Loads functions/dispatcher/app.py as Lambda would, invokes it with a scheduled event, and prints one
JSON line: handler wall time, peak RSS (VmHWM) before/after; no tracemalloc (it would distort the timing),
and the AWS calls counted by the client hooks (Scan pages, SendMessageBatch calls).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from bench.instrument import Recorder


def _peak_rss_mb() -> float:
    """VmHWM of this process (ru_maxrss would carry the parent's peak across exec on Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    from playvault_local.lambda_runtime import LambdaContext, load_handler
    from playvault_local.template import FunctionSpec

    code_uri, layer = Path(sys.argv[1]), Path(sys.argv[2])
    recorder = Recorder().install()
    spec = FunctionSpec("DispatcherFunction", code_uri, "app.handler", 300, 512, {})
    handler = load_handler(spec, [layer])
    # moto's Scan walks the whole table for every page (O(n) per page): at 100,000 users one page
    # takes longer than the models' 5 s read timeout. Bench-only: DynamoDB answers a page in ~0.1 s.
    from playvault.store.users import UserModel

    UserModel.Meta.read_timeout_seconds = 600
    UserModel._connection = None
    event = json.loads((Path(__file__).resolve().parents[1] / "tests/events/eventbridge_scheduled.json").read_text())
    event["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    rss_before = _peak_rss_mb()
    recorder.reset()
    import contextlib
    import io
    import os

    sink = io.StringIO()
    started = time.perf_counter()
    # Powertools writes logs to fd 1 through sys.stdout: keep them out of our one JSON line.
    saved = os.dup(1)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 1)
        try:
            with contextlib.redirect_stdout(sink):
                report = handler(event, LambdaContext("DispatcherFunction", 512, 300))
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
    seconds = time.perf_counter() - started
    rss_after = _peak_rss_mb()
    print(json.dumps({
        "seconds": seconds,
        "report": report,
        "max_rss_mb_before": rss_before,
        "max_rss_mb_after": rss_after,
        "scan_pages": recorder.total("dynamodb", "Scan"),
        "send_message_batch_calls": recorder.total("sqs", "SendMessageBatch"),
        "aws_calls": {f"{s}:{o}": n for (s, o, _), n in recorder.calls.items()},
    }))


if __name__ == "__main__":
    main()
