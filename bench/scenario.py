"""Users in a known state, and the worker invoked the way Lambda does (shared by the bench and its test).

A user here is signed in at the Spotify emulator by the real authorization-code + PKCE flow
(`login_as` consents at once), stored with its tokens sealed by the stack's KMS key, given a cursor
and a chosen number of new plays on chosen catalog tracks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

REDIRECT_URI = "http://127.0.0.1:8765/auth/callback"  # registered at the emulator (tests/conftest.py too)
SCOPE = "user-read-recently-played"


@dataclass
class Grant:
    access_token: str
    refresh_token: str
    expires_at: datetime


def sign_in(accounts_url: str, user_id: str, client_id: str, client_secret: str) -> Grant:
    verifier = secrets.token_urlsafe(64)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    answer = requests.get(
        f"{accounts_url}/authorize",
        params={"client_id": client_id, "response_type": "code", "redirect_uri": REDIRECT_URI, "scope": SCOPE,
                "code_challenge_method": "S256", "code_challenge": challenge, "login_as": user_id},
        allow_redirects=False, timeout=10,
    )
    if answer.status_code != 302:
        raise RuntimeError(f"authorize answered {answer.status_code}: {answer.text[:200]}")
    code = parse_qs(urlsplit(answer.headers["Location"]).query)["code"][0]
    token = requests.post(
        f"{accounts_url}/api/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
              "code_verifier": verifier},
        auth=(client_id, client_secret), timeout=10,
    )
    token.raise_for_status()
    body = token.json()
    return Grant(body["access_token"], body["refresh_token"],
                 datetime.now(UTC) + timedelta(seconds=int(body["expires_in"])))


@dataclass
class UserSpec:
    user_id: str
    new_plays: int = 0
    track_indexes: list[int] = field(default_factory=list)  # cycled over the new plays
    cached_token: bool = True  # False: the container holds no access token for the user, the poll refreshes
    new_container: bool = False  # True: the worker has not met any catalog id yet (a fresh container)


def create_user(spec: UserSpec, *, accounts_url: str, control: Any, cipher: Any, client_id: str,
                client_secret: str, now: datetime | None = None) -> Grant:
    """Sign in, store the user (last polled 1 h ago; only the refresh token at rest), add `new_plays`
    plays since. Returns the grant: a warm container would hold its access token in memory."""
    from playvault.store import users

    now = now or datetime.now(UTC)
    grant = sign_in(accounts_url, spec.user_id, client_id, client_secret)
    cursor = now - timedelta(hours=1)
    cursor_ms = int(cursor.timestamp() * 1000)
    fields: dict[str, Any] = {
        "status": users.ACTIVE, "created_at": now - timedelta(days=7), "authorized_at": now - timedelta(days=7),
        "display_name": spec.user_id, "cursor_ms": cursor_ms, "last_polled_at": cursor,
        "plays_archived": 100,
        **{k: v for k, v in asdict(cipher.seal_new(spec.user_id, grant.refresh_token, None)).items() if v is not None},
    }
    users.UserModel(spec.user_id, **fields).save()
    indexes = spec.track_indexes or [0]
    for i in range(spec.new_plays):
        # Newest play 2 minutes ago, 3 minutes apart: all after the cursor, all visible now.
        played_at = now - timedelta(minutes=2 + 3 * (spec.new_plays - 1 - i))
        control.add_play(spec.user_id, played_at, track_index=indexes[i % len(indexes)])
    return grant


def sqs_event(user_ids: list[str], *, not_before: int | None = None, window_id: str = "bench") -> dict[str, Any]:
    body = {"users": user_ids, "not_before": int(time.time()) if not_before is None else not_before,
            "window_id": window_id}
    return {"Records": [{
        "messageId": str(uuid.uuid4()),
        "receiptHandle": "bench-receipt",
        "body": json.dumps(body),
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": str(int(time.time() * 1000)),
                       "SenderId": "123456789012", "ApproximateFirstReceiveTimestamp": str(int(time.time() * 1000))},
        "messageAttributes": {},
        "md5OfBody": hashlib.md5(json.dumps(body).encode()).hexdigest(),  # noqa: S324 - SQS's own checksum
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:bench",
        "awsRegion": "us-east-1",
    }]}


@dataclass
class Invocation:
    response: Any
    seconds: float
    log_bytes: int
    log_lines: list[str]

    def batch_report(self) -> dict[str, Any] | None:
        for line in self.log_lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("message") == "batch archived":
                return record.get("batch")
        return None

    def emf_metrics(self) -> set[tuple[str, tuple[str, ...]]]:
        """(metric name, dimension names) of every EMF blob written."""
        out = set()
        for line in self.log_lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict) or "_aws" not in record:
                continue
            for directive in record["_aws"].get("CloudWatchMetrics", []):
                for dims in directive.get("Dimensions", [[]]):
                    for metric in directive.get("Metrics", []):
                        out.add((metric["Name"], tuple(dims)))
        return out


def invoke_captured(handler: Callable[[dict, Any], Any], event: dict[str, Any], context: Any) -> Invocation:
    """Call the handler with file descriptor 1 redirected: what Lambda would ship to CloudWatch Logs."""
    import sys

    sys.stdout.flush()
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(1)
        os.dup2(sink.fileno(), 1)
        try:
            started = time.perf_counter()
            response = handler(event, context)
            seconds = time.perf_counter() - started
            sys.stdout.flush()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        sink.seek(0)
        data = sink.read()
    return Invocation(response, seconds, len(data), data.decode(errors="replace").splitlines())


# ---------------------------------------------------------------- request counts per poll
POLL_SCENARIOS: list[tuple[str, UserSpec]] = [
    # name, user (ids are suffixed per run)
    ("idle", UserSpec("idle", new_plays=0)),
    ("1_play_known_track", UserSpec("one", new_plays=1, track_indexes=[3])),
    ("20_plays_known_tracks", UserSpec("twenty", new_plays=20, track_indexes=list(range(20)))),
    ("20_plays_known_tracks_new_container",
     UserSpec("twentynew", new_plays=20, track_indexes=list(range(20)), new_container=True)),
    ("20_plays_unknown_tracks", UserSpec("fresh", new_plays=20, track_indexes=list(range(400, 420)))),
    ("idle_token_expired", UserSpec("expired", new_plays=0, cached_token=False)),
]
# The container is warmed first by a user whose plays make tracks 0..19 known and whose expired
# token makes the worker refresh once (so the SSM client-credentials cache and the KMS data-key
# cache are warm, as in any container after its first poll).
WARMUP = UserSpec("warmup", new_plays=20, track_indexes=list(range(20)), cached_token=False)


def poll_counts(*, recorder: Any, spotify_counter: Any, handler: Callable[[dict, Any], Any],
                context_factory: Callable[[], Any], make_user: Callable[[UserSpec], Grant],
                per_message_tables: set[str], remember_token: Callable[[str, Grant], None],
                suffix: str = "") -> dict[str, dict[str, Any]]:
    """Each scenario: a fresh user, one worker invocation with a one-user message; exact counts.

    The per-message work (the rate-gate GetItem on the state table, the message's Powertools
    idempotency record) is reported apart from the per-user path, which is everything else.
    `remember_token` hands a user's access token to the worker's memory (a warm container).
    """
    def run(spec: UserSpec) -> tuple[Invocation, dict[str, Any]]:
        with recorder.paused():
            grant = make_user(spec)
            if spec.cached_token:
                remember_token(spec.user_id, grant)
            if spec.new_container:
                from playvault.store import catalog

                catalog.forget_known_ids()
        recorder.reset()
        spotify_counter.reset()
        invocation = invoke_captured(handler, sqs_event([spec.user_id]), context_factory())
        snapshot = recorder.snapshot()
        failures = (invocation.response or {}).get("batchItemFailures")
        with recorder.paused():
            from playvault.store import users

            stored = users.get(spec.user_id)
        # (Log lines are not a reliable witness here: under pytest they go to pytest's capture.)
        if failures or stored is None or int(stored.plays_archived) != 100 + spec.new_plays:
            raise RuntimeError(f"poll of {spec.user_id} did not succeed: {failures} {invocation.batch_report()}")
        return invocation, snapshot

    run(replace(WARMUP, user_id=WARMUP.user_id + suffix))
    results: dict[str, dict[str, Any]] = {}
    for name, template in POLL_SCENARIOS:
        spec = replace(template, user_id=template.user_id + suffix)
        invocation, snap = run(spec)
        calls = snap["calls"]
        per_message = {k: n for k, n in calls.items() if k[0] == "dynamodb" and k[2] in per_message_tables}
        ddb_user = {f"{op} {table}": n for (svc, op, table), n in calls.items()
                    if svc == "dynamodb" and (svc, op, table) not in per_message}
        results[name] = {
            "spotify_requests": spotify_counter.total(),
            "spotify_by_endpoint": dict(spotify_counter.counts),
            "dynamodb_requests": sum(ddb_user.values()),
            "dynamodb_by_operation": dict(sorted(ddb_user.items())),
            "dynamodb_requests_per_message": sum(per_message.values()),
            "dynamodb_wru": float(sum(snap["wru"].values())),
            "dynamodb_wru_by_table": {t: float(u) for t, u in sorted(snap["wru"].items())},
            "dynamodb_rru": float(sum(snap["rru"].values())),
            "kms_requests": sum(n for (svc, _, _), n in calls.items() if svc == "kms"),
            "ssm_requests": sum(n for (svc, _, _), n in calls.items() if svc == "ssm"),
            "sqs_requests": sum(n for (svc, _, _), n in calls.items() if svc == "sqs"),
            "log_bytes": invocation.log_bytes,
            "seconds": round(invocation.seconds, 4),
        }
    return results


def simplify_table_names(results: dict[str, dict[str, Any]], names: dict[str, str]) -> None:
    """Physical table names -> logical ids, for a stable, readable report."""
    def rename(text: str) -> str:
        for physical, logical in names.items():
            text = text.replace(physical, logical)
        return text

    for result in results.values():
        for key in ("dynamodb_by_operation", "dynamodb_wru_by_table"):
            result[key] = {rename(k): v for k, v in result[key].items()}


def table_names(stack: Any) -> dict[str, str]:
    return {stack.name(logical): logical for logical, res in stack.template["Resources"].items()
            if res.get("Type") == "AWS::DynamoDB::Table"}


def chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
