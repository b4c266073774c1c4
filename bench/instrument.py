"""Counting every AWS call and every Spotify request, from the clients themselves.

AWS: `Recorder.install()` wraps botocore's `Session.create_client`, so every client created after it
(boto3 clients, pynamodb's connections, the Powertools idempotency and parameters clients) gets a
`before-call` hook (one count per API call, retries not counted twice) and an `after-call` hook.
With a `probe` (an uninstrumented DynamoDB client on the same endpoint) the recorder also computes
DynamoDB request units from item sizes, by AWS's published rules (see itemsize.py):
- writes: each written item costs ceil(max(size before, size after) / 1 KB) WRU (min 1), whether the
  write changed it or its condition failed; the probe reads the item just before and just after;
- GetItem / BatchGetItem: per key ceil(full item size / 4 KB), x1 strongly / x0.5 eventually
  consistent, min one unit for a missing key; projections do not reduce it.
moto's own ConsumedCapacity is not used: it answers fixed figures regardless of item size.

Spotify: `spotify_hook` is a requests response hook counting requests by endpoint.
"""

from __future__ import annotations

import copy
import json
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import botocore.session

from bench.itemsize import item_size
from playvault_local import iam

_WRITE_OPS = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem"}
_READ_OPS = {"GetItem", "BatchGetItem"}


class Recorder:
    """Process-wide counters of AWS API calls: (service, operation, table) -> calls, and DynamoDB units."""

    _installed: Recorder | None = None
    _original_create_client: Callable[..., Any] | None = None

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[tuple[str, str, str]] = Counter()
        self.wru: Counter[str] = Counter()  # table -> write request units
        self.rru: Counter[str] = Counter()  # table -> read request units
        self.probe: Any = None  # uninstrumented dynamodb client: enables unit accounting
        self._keys: dict[str, list[str]] = {}
        self._local = threading.local()
        self.enabled = True
        # When a list: every DynamoDB call's (operation, API parameters), as the caller passed them,
        # for replaying the same request mix against an emulator without the worker (bare rate).
        self.captured: list[tuple[str, dict[str, Any]]] | None = None

    # -- installation ---------------------------------------------------------------------------
    def install(self) -> Recorder:
        if Recorder._installed is not None:
            raise RuntimeError("a Recorder is already installed")
        original = botocore.session.Session.create_client
        recorder = self

        def create_client(session: Any, *args: Any, **kwargs: Any) -> Any:
            client = original(session, *args, **kwargs)
            recorder.attach(client)
            return client

        Recorder._original_create_client = original
        botocore.session.Session.create_client = create_client  # type: ignore[method-assign]
        Recorder._installed = self
        return self

    def uninstall(self) -> None:
        if Recorder._installed is self and Recorder._original_create_client is not None:
            botocore.session.Session.create_client = Recorder._original_create_client  # type: ignore[method-assign]
            Recorder._installed = None

    def attach(self, client: Any) -> None:
        if getattr(client, "_bench_recorded", False):
            return
        client._bench_recorded = True
        service = client.meta.service_model.service_id.hyphenize()
        client.meta.events.register(f"before-call.{service}", self._before_call)
        client.meta.events.register(f"after-call.{service}", self._after_call)
        if service == "dynamodb":
            client.meta.events.register(f"provide-client-params.{service}", self._capture)

    def uncounted_client(self, service: str, **kwargs: Any) -> Any:
        """A client that is never counted (setup, probes)."""
        original = Recorder._original_create_client or botocore.session.Session.create_client
        return original(botocore.session.get_session(), service, **kwargs)

    # -- counters -------------------------------------------------------------------------------
    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.wru.clear()
            self.rru.clear()

    @contextmanager
    def paused(self) -> Iterator[None]:
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = True

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"calls": Counter(self.calls), "wru": Counter(self.wru), "rru": Counter(self.rru)}

    def total(self, service: str | None = None, operation: str | None = None, table: str | None = None) -> int:
        with self._lock:
            return sum(n for (s, o, t), n in self.calls.items()
                       if (service is None or s == service) and (operation is None or o == operation)
                       and (table is None or t == table))

    def by_operation(self, service: str) -> dict[str, int]:
        out: Counter[str] = Counter()
        with self._lock:
            for (s, o, t), n in self.calls.items():
                if s == service:
                    out[f"{o} {t}".strip()] += n
        return dict(sorted(out.items()))

    # -- hooks ----------------------------------------------------------------------------------
    def _capture(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        if self.enabled and self.captured is not None:
            with self._lock:
                self.captured.append((model.name, copy.deepcopy(params)))

    def _before_call(self, model: Any, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if not self.enabled:
            return
        service = model.service_model.service_id.hyphenize()
        operation = model.name
        body = _json_body(params) if service == "dynamodb" else {}
        tables = _tables(body) or [""]
        with self._lock:
            for table in tables:
                self.calls[(service, operation, table)] += 1
        if self.probe is not None and service == "dynamodb":
            if operation in _WRITE_OPS:
                context["bench_before"] = self._sizes(self._written_keys(operation, body))
            elif operation in _READ_OPS:
                context["bench_read_body"] = body

    def _after_call(self, model: Any, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if not self.enabled or self.probe is None or model.service_model.service_id.hyphenize() != "dynamodb":
            return
        operation = model.name
        if operation in _WRITE_OPS and "bench_before" in context:
            before = context.pop("bench_before")
            after = self._sizes(list(before))
            with self._lock:
                for (table, key), size in before.items():
                    biggest = max(size or 0, after.get((table, key)) or 0)
                    self.wru[table] += max(1, math.ceil(biggest / 1024))
        elif operation in _READ_OPS:
            body = context.get("bench_read_body")
            if body is None:
                return
            consistent = body.get("ConsistentRead", False)
            reads: list[tuple[str, str, bool]] = []
            if operation == "GetItem":
                reads.append((body["TableName"], _key_text(body["Key"]), consistent))
            else:
                for table, request in body.get("RequestItems", {}).items():
                    for key in request.get("Keys", []):
                        reads.append((table, _key_text(key), request.get("ConsistentRead", False)))
            sizes = self._sizes([(t, k) for t, k, _ in reads])
            with self._lock:
                for table, key, strong in reads:
                    units = max(1, math.ceil((sizes.get((table, key)) or 0) / 4096))
                    self.rru[table] += units * (1 if strong else 0.5)

    # -- probe helpers --------------------------------------------------------------------------
    def _key_names(self, table: str) -> list[str]:
        if table not in self._keys:
            with iam.unattributed():  # the bench's probe, not the function's call
                schema = self.probe.describe_table(TableName=table)["Table"]["KeySchema"]
            self._keys[table] = [k["AttributeName"] for k in schema]
        return self._keys[table]

    def _written_keys(self, operation: str, body: dict[str, Any]) -> list[tuple[str, str]]:
        if operation == "PutItem":
            names = self._key_names(body["TableName"])
            return [(body["TableName"], _key_text({n: body["Item"][n] for n in names}))]
        if operation in ("UpdateItem", "DeleteItem"):
            return [(body["TableName"], _key_text(body["Key"]))]
        keys = []
        for table, requests_ in body.get("RequestItems", {}).items():
            names = self._key_names(table)
            for request in requests_:
                if "PutRequest" in request:
                    keys.append((table, _key_text({n: request["PutRequest"]["Item"][n] for n in names})))
                else:
                    keys.append((table, _key_text(request["DeleteRequest"]["Key"])))
        return keys

    def _sizes(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], int | None]:
        out: dict[tuple[str, str], int | None] = {}
        for table, key in keys:
            with iam.unattributed():  # the bench's probe, not the function's call
                item = self.probe.get_item(TableName=table, Key=json.loads(key), ConsistentRead=True).get("Item")
            out[(table, key)] = item_size(item) if item is not None else None
        return out


def _json_body(params: dict[str, Any]) -> dict[str, Any]:
    body = params.get("body")
    if not body:
        return {}
    try:
        return json.loads(body)
    except (TypeError, ValueError):
        return {}


def _tables(body: dict[str, Any]) -> list[str]:
    if "TableName" in body:
        return [body["TableName"]]
    if "RequestItems" in body:
        return sorted(body["RequestItems"])
    if "TransactItems" in body:
        return sorted({next(iter(item.values()))["TableName"] for item in body["TransactItems"]})
    return []


def _key_text(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True)


# ---------------------------------------------------------------- Spotify
class SpotifyCounter:
    """A requests response hook: counts Spotify requests by endpoint (and connections opened)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def __call__(self, response: Any, *args: Any, **kwargs: Any) -> Any:
        path = response.request.path_url.split("?", 1)[0]
        endpoint = {"/api/token": "token", "/v1/me": "me", "/v1/me/player/recently-played": "recently_played"}.get(
            path, path)
        with self._lock:
            self.counts[endpoint] += 1
        return response

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()

    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())
