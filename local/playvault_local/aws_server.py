"""The AWS emulator of a local run: moto's server in a child process whose SQS runs on the run's clock.

    python -m playvault_local.aws_server --host 127.0.0.1 --port 0 [--parent PID]

prints one line `listening on http://HOST:PORT` and serves moto's API plus a small control API:

    POST /_playvault/clock        {"epoch": <unix seconds>} freezes SQS time there; {"epoch": null}: real time
    GET  /_playvault/counts       requests served, by service and operation
    GET  /_playvault/queue?name=  messages held by a queue and the next moment one becomes visible
    GET  /_playvault/items?table=&attributes=a,b   attributes of every item (end-of-run report)
    GET  /_playvault/mail         the e-mails SES (moto) accepted: source, to, subject, body

A browser's POST upload to a bucket is held to its policy before moto sees it (s3_post.py: the
signature under the credentials the local stack signs with, taken from this process's
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; expiration; every condition): moto would store anything.

Why a clock: SQS DelaySeconds and visibility timeouts are real seconds in moto. The local runner
drives a simulated clock (hours in seconds); patching moto's SQS time source to that clock keeps
every delay and timeout exactly as the template and the dispatcher set them (no scaling), and lets
the runner jump straight to the next moment a message becomes visible.

The server exits by itself when its parent process goes away, so an interrupted run leaves nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import requests

_sim_epoch: float | None = None
_counts: Counter[str] = Counter()
_counts_lock = threading.Lock()


def _patch_moto_sqs_time() -> None:
    import moto.sqs.models as sqs_models

    real_unix_time = sqs_models.unix_time

    def unix_time(dt: Any = None) -> float:
        if dt is None and _sim_epoch is not None:
            return _sim_epoch
        return real_unix_time(dt)

    def unix_time_millis(dt: Any = None) -> float:
        return unix_time(dt) * 1000.0

    sqs_models.unix_time = unix_time
    sqs_models.unix_time_millis = unix_time_millis


def _speed_up_moto() -> None:
    """moto lists its own package directory on every request to route it (~1/3 of its time per
    call): the list never changes while the server runs, so compute it once."""
    from moto import backends
    from moto.moto_server import werkzeug_app

    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules
    werkzeug_app.backends.list_of_moto_modules = backends.list_of_moto_modules
    # Likewise the handler methods of a response class (inspect.getmembers on every call).
    import functools

    from moto.core import responses, utils

    cached = functools.lru_cache(maxsize=None)(utils.method_names_from_class)
    utils.method_names_from_class = cached
    responses.method_names_from_class = cached
    _query_one_partition()


def _query_one_partition() -> None:
    """moto answers a Query of a table (no index) by sorting every item of the table and keeping the
    partition's: a user's window of plays cost a sort of everyone's (tens of thousands in an import
    run). The partition alone, sorted the same way (by range key), gives the same answer."""
    import threading

    from moto.dynamodb.models.table import Table

    queried = threading.local()
    every_item, query = Table.all_items, Table.query

    def all_items(self: Any) -> Any:
        hash_key = getattr(queried, "hash_key", None)
        if hash_key is None or not self.range_key_attr:
            return every_item(self)
        return sorted(self.items.get(hash_key, {}).values(), key=lambda item: item.range_key)

    def query_partition(self: Any, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
        on_index = kwargs.get("index_name") or (len(args) > 6 and args[6])
        queried.hash_key = None if on_index else hash_key
        try:
            return query(self, hash_key, *args, **kwargs)
        finally:
            queried.hash_key = None

    Table.all_items, Table.query = all_items, query_partition


def _operation(environ: dict[str, Any]) -> str:
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:  # JSON protocols: DynamoDB_20120810.GetItem, AmazonSQS.ReceiveMessage, TrentService.Decrypt...
        service, _, op = target.partition(".")
        service = {"DynamoDB_20120810": "dynamodb", "AmazonSQS": "sqs", "TrentService": "kms",
                   "AmazonSSM": "ssm"}.get(service, service)
        return f"{service}.{op}"
    return f"other.{environ.get('REQUEST_METHOD', '?')}"


def _queue_state(name: str) -> dict[str, Any]:
    from moto.sqs.models import sqs_backends

    for account in list(sqs_backends.keys()):
        for region in list(sqs_backends[account].keys()):
            queue = sqs_backends[account][region].queues.get(name)
            if queue is None:
                continue
            messages = list(queue._messages)
            moments = [max(m.delayed_until, m.visible_at) / 1000.0 for m in messages]
            return {"messages": len(messages), "next_visible_at": min(moments) if moments else None}
    return {"messages": 0, "next_visible_at": None}


def _table_items(name: str, attributes: list[str]) -> list[dict[str, Any]] | None:
    """Attributes of every item of a table, read from moto's memory in one go. For the
    runner's end-of-run report only: moto serializes Query/Scan answers slowly (about 1 ms an item),
    which made reading the plays back the slowest part of a run."""
    from moto.dynamodb.models import dynamodb_backends

    for account in list(dynamodb_backends.keys()):
        for region in list(dynamodb_backends[account].keys()):
            table = dynamodb_backends[account][region].tables.get(name)
            if table is None:
                continue
            rows = []
            for entry in list(table.items.values()):
                for item in (list(entry.values()) if table.has_range_key else [entry]):
                    rows.append({a: _plain(item.attrs[a].value) for a in attributes if a in item.attrs})
            return rows
    return None


def _plain(value: Any) -> Any:
    """A moto attribute value as JSON: lists and maps hold moto values themselves (numbers stay strings)."""
    if isinstance(value, list):
        return [_plain(getattr(v, "value", v)) for v in value]
    if isinstance(value, dict):
        return {k: _plain(getattr(v, "value", v)) for k, v in value.items()}
    return value


def _sent_mail() -> list[dict[str, Any]]:
    """What the functions sent through SES: moto keeps every accepted message in its backend."""
    from moto.ses.models import ses_backends

    mail = []
    for account in list(ses_backends.keys()):
        for region in list(ses_backends[account].keys()):
            for message in list(ses_backends[account][region].sent_messages):
                to = (getattr(message, "destinations", None) or {}).get("ToAddresses", [])
                mail.append({"source": message.source, "to": list(to), "subject": getattr(message, "subject", ""),
                             "body": getattr(message, "body", "")})
    return mail


def _json_response(start_response: Any, body: Any, status: str = "200 OK") -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def make_app() -> Any:
    _speed_up_moto()
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    from playvault_local import moto_transactions, s3_post

    moto_transactions.install()  # transactions rolled back item by item, not by copying whole tables
    # The stack signs with these (provision.py gives the functions the same); moto accepts any key.
    signer = {os.environ.get("AWS_ACCESS_KEY_ID", "testing"): os.environ.get("AWS_SECRET_ACCESS_KEY", "testing")}
    moto_app = s3_post.enforce(DomainDispatcherApplication(create_backend_app), signer)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        global _sim_epoch
        path = environ.get("PATH_INFO", "")
        if path.startswith("/_playvault/"):
            if path == "/_playvault/clock" and environ["REQUEST_METHOD"] == "POST":
                length = int(environ.get("CONTENT_LENGTH") or 0)
                body = json.loads(environ["wsgi.input"].read(length) or b"{}")
                _sim_epoch = None if body.get("epoch") is None else float(body["epoch"])
                return _json_response(start_response, {"epoch": _sim_epoch})
            if path == "/_playvault/counts":
                with _counts_lock:
                    return _json_response(start_response, dict(_counts))
            if path == "/_playvault/queue":
                from urllib.parse import parse_qs

                name = parse_qs(environ.get("QUERY_STRING", "")).get("name", [""])[0]
                return _json_response(start_response, _queue_state(name))
            if path == "/_playvault/mail":
                return _json_response(start_response, _sent_mail())
            if path == "/_playvault/items":
                from urllib.parse import parse_qs

                query = parse_qs(environ.get("QUERY_STRING", ""))
                rows = _table_items(query.get("table", [""])[0], query.get("attributes", [""])[0].split(","))
                if rows is None:
                    return _json_response(start_response, {"error": "no such table"}, "404 Not Found")
                return _json_response(start_response, rows)
            return _json_response(start_response, {"error": "not found"}, "404 Not Found")
        op = _operation(environ)
        with _counts_lock:
            _counts[op] += 1
        return moto_app(environ, start_response)

    return app


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="playvault_local.aws_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--parent", type=int, default=0, help="exit when this process is gone")
    args = parser.parse_args(argv)

    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import make_server

    from playvault_local.keepalive import KeepAliveQuiet

    class QuietHandler(KeepAliveQuiet, MotoRequestHandler):
        pass

    _patch_moto_sqs_time()
    _speed_up_moto()
    server = make_server(args.host, args.port, make_app(), threaded=True, request_handler=QuietHandler)
    if args.parent:
        threading.Thread(target=_watch_parent, args=(args.parent,), daemon=True).start()
    print(f"listening on http://{args.host}:{server.server_port}", flush=True)
    profile_path = os.environ.get("PLAYVAULT_AWS_PROFILE")  # development aid: where moto spends its time
    if profile_path:
        import cProfile
        import signal

        profiler = cProfile.Profile()
        profiler.enable()

        def dump(*_: Any) -> None:
            profiler.disable()
            profiler.dump_stats(profile_path)
            os._exit(0)

        signal.signal(signal.SIGTERM, dump)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0



def stop_process(process: subprocess.Popen, timeout_s: float = 10) -> None:
    """Stop a server we started, by its PID: SIGTERM, then SIGKILL if it does not exit in time."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

class AwsServer:
    """The runner's handle on the child process: start, clock, counts, stop (by PID)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, startup_timeout_s: float = 60):
        self.host = host
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen[str] | None = None
        self.url = ""
        self.stderr_tail: list[str] = []
        self._session = requests.Session()

    def start(self) -> AwsServer:
        local_dir = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (local_dir, env.get("PYTHONPATH", "")) if p)
        for key in ("AWS_ENDPOINT_URL",):
            env.pop(key, None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "playvault_local.aws_server", "--host", self.host, "--port", str(self.port),
             "--parent", str(os.getpid())],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        threading.Thread(target=self._drain, args=(self.process.stderr,), daemon=True).start()
        ready, _, _ = select.select([self.process.stdout], [], [], self.startup_timeout_s)
        line = self.process.stdout.readline() if ready else ""
        if not line.startswith("listening on "):
            self.stop()
            time.sleep(0.2)
            tail = " | ".join(self.stderr_tail[-3:])
            raise RuntimeError(f"the AWS emulator (moto) did not start: {line.strip() or 'no answer'} {tail}")
        self.url = line.split("listening on ", 1)[1].strip()
        return self

    def _drain(self, stream: Any) -> None:  # keep the child's pipe from filling up; keep its last words
        for line in stream:
            self.stderr_tail = (self.stderr_tail + [line.rstrip()])[-20:]

    def set_clock(self, epoch: float | None) -> None:
        self._session.post(f"{self.url}/_playvault/clock", json={"epoch": epoch}, timeout=10).raise_for_status()

    def counts(self) -> dict[str, int]:
        return self._session.get(f"{self.url}/_playvault/counts", timeout=10).json()

    def queue_state(self, name: str) -> dict[str, Any]:
        return self._session.get(f"{self.url}/_playvault/queue", params={"name": name}, timeout=10).json()

    def table_items(self, table: str, attributes: list[str]) -> list[dict[str, Any]]:
        answer = self._session.get(f"{self.url}/_playvault/items",
                                   params={"table": table, "attributes": ",".join(attributes)}, timeout=60)
        answer.raise_for_status()
        return answer.json()

    def sent_mail(self) -> list[dict[str, Any]]:
        return self._session.get(f"{self.url}/_playvault/mail", timeout=30).json()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        stop_process(process)
        if process.stdout is not None:
            process.stdout.close()
        self._session.close()

    def __enter__(self) -> AwsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    sys.exit(main())
