"""Faults a chaos run injects, each where the real one would happen.

- Spotify: 5xx, 429 with Retry-After, 401 on stale tokens (the emulator's FaultConfig), timeouts
  (requests held past the worker's read timeout, then dropped: playvault_local.spotify), plus one
  long app-wide 429 window (rate_limit_app) in the middle of the run.
- The worker dies in the middle of writing a user's plays: once as an exception between the plays
  write and the cursor advance ("raise"), once as the runtime dying half-way through the write
  ("kill": InjectedCrash, a BaseException no handler code catches; the invocation fails).
- SQS delivers some messages twice (a copy of the body is sent again when first received).
- DynamoDB throttles some calls: a botocore before-call hook raises
  ProvisionedThroughputExceededException (no SDK retry: the error reaches the code) on some calls a
  worker makes before its Spotify fetch, and a before-send hook answers some data-plane calls with a
  throttling error the SDK retries (see telemetry.AwsCallHooks for why the split).
- SSM throttles some GetParameter calls (ssm_throttle_rate; see telemetry.AwsCallHooks): the
  functions' 5-minute parameter cache runs on the simulated clock, so the client id and secret are
  read as often as on AWS, and some of those reads fail with ThrottlingException.
- One malformed (poison) message: it must end in the dead-letter queue, and only it.
- A client-secret rotation (`secret_rotation_hour`, None to switch it off): the operator rotates
  the client secret at Spotify mid-run; Spotify answers invalid_client until the new secret is in
  SSM (`secret_rotation_ssm_minutes` later) and the functions' 5-minute parameter cache has
  expired. The worker treats it as the app's failure: no user is charged.

AppFaultLedger checks that last claim for the AWS faults: every poll is traced with the app-level
faults it met (a throttle that reached the code in its thread, a credentials read that failed in
it), and the report counts the users charged for them: polls that met one and still recorded a
failure against the user.
"""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from playvault_local.telemetry import InjectedCrash

POISON_BODY = '{"users": "not-a-list", "poison": true}'


@dataclass
class ChaosConfig:
    error_5xx_rate: float = 0.10
    rate_429_rate: float = 0.03
    retry_after_s: int = 1
    timeout_rate: float = 0.02
    client_read_timeout_s: float = 0.6  # the worker's Spotify read timeout, shortened so timeouts are cheap
    expire_token_rate: float = 0.05
    app_rate_limit_hour: int | None = None  # default: a third into the run
    app_rate_limit_minutes: int = 50  # spans several 15-minute dispatch runs
    quota_exceeded: bool = True  # the long 429 says QUOTA_EXCEEDED in its body
    bad_item_share: float = 0.02  # damaged recently-played items (track null, artists [null], ...)
    episode_share: float = 0.02  # podcast episodes listened to (never listed in recently-played)
    crashes: tuple[str, ...] = ("raise", "kill")
    crash_after_hour: int = 2
    duplicate_rate: float = 0.15
    throttle_rate: float = 0.02  # of the calls before the Spotify fetch: the error reaches the code
    throttle_limit: int = 40
    retried_throttle_rate: float = 0.03  # of all data-plane calls: answered 400, retried by the SDK
    ssm_throttle_rate: float = 0.10  # of GetParameter calls: ThrottlingException reaches the code
    poison_messages: int = 1
    secret_rotation_hour: int | None = 5  # None: no client-secret rotation
    secret_rotation_ssm_minutes: int = 20  # the operator puts the new secret in SSM this much later


@dataclass
class CrashHook:
    """Wraps playvault.store.plays.write_plays; fires each configured crash once."""

    pending: list[str]
    armed: bool = False
    fired: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _original: Any = None

    def install(self) -> None:
        from playvault.store import plays as plays_module

        self._original = plays_module.write_plays
        original = self._original
        hook = self

        def write_plays(user_id: str, plays: Any) -> int:
            plays = list(plays)
            kind = None
            with hook._lock:
                if hook.armed and hook.pending and len(plays) >= 2:
                    kind = hook.pending.pop(0)
                    hook.armed = False
                    hook.fired.append({"kind": kind, "user_id": user_id, "plays": len(plays)})
            if kind == "kill":
                original(user_id, plays[: len(plays) // 2])
                raise InjectedCrash(f"runtime died while writing {user_id}'s plays (injected)")
            if kind == "raise":
                original(user_id, plays)
                raise RuntimeError(f"worker died after writing {user_id}'s plays, before the cursor (injected)")
            return original(user_id, plays)

        plays_module.write_plays = write_plays

    def uninstall(self) -> None:
        from playvault.store import plays as plays_module

        if self._original is not None:
            plays_module.write_plays = self._original
            self._original = None


@dataclass
class Duplicator:
    """At-least-once delivery: some messages are sent again when first received. Every other copy
    is the same body (a duplicate delivery); the others carry another run id, as an old message
    redriven from the DLQ would: they reach the worker at the same moment as the original, so
    two polls of one user run at once."""

    sqs: Any
    queue_url: str
    rate: float
    seed: int
    sent: int = 0
    _rng: random.Random = field(init=False)
    _copies: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._rng = random.Random(f"duplicates:{self.seed}")

    def __call__(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            first = message.get("Attributes", {}).get("ApproximateReceiveCount") == "1"
            if not first or message["MessageId"] in self._copies or message["Body"] == POISON_BODY:
                continue
            if self._rng.random() < self.rate:
                body = message["Body"]
                if self.sent % 2:
                    try:
                        parsed = json.loads(body)
                        parsed["window_id"] = "redriven-" + str(parsed.get("window_id", ""))[:40]
                        body = json.dumps(parsed)
                    except (ValueError, TypeError):
                        pass
                answer = self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=body)
                self._copies.add(answer["MessageId"])
                self.sent += 1


@dataclass
class PollTrace:
    user_id: str
    at: float  # simulated epoch seconds
    faults: set[str] = field(default_factory=set)  # "ssm", "dynamodb"
    outcome: str = "running"  # an ArchiveResult status ("failed:<TYPE>" when charged), or "raised:<error>"


@dataclass
class AppFaultLedger:
    """The worker's polls and the app-level AWS faults each met, from the threads they ran in.

    A poll meets a fault when a throttle reaches the code in its thread (AwsCallHooks.on_fault) or
    when a credentials read fails in it (the worker's loader wrapped: threads that shared a failed
    read meet it too). A user is charged for an app failure when such a poll still ended `failed`:
    a failure, cooldown or needs_reauth written to the user's record."""

    clock: Any
    polls: list[PollTrace] = field(default_factory=list)
    outside_polls: Counter[str] = field(default_factory=Counter)  # before or after any poll: the message's
    _local: threading.local = field(default_factory=threading.local)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wrap_poll(self, archive_user: Any) -> Any:
        def traced(user_id: str, *args: Any, **kwargs: Any) -> Any:
            trace = PollTrace(user_id, self.clock().timestamp())
            with self._lock:
                self.polls.append(trace)
            self._local.poll = trace
            try:
                result = archive_user(user_id, *args, **kwargs)
            except BaseException as exc:
                trace.outcome = f"raised:{type(exc).__name__}"
                raise
            finally:
                self._local.poll = None
            status = getattr(result, "status", "unknown")
            trace.outcome = f"failed:{result.failure_type}" if status == "failed" else status
            return result

        return traced

    def wrap_credentials(self, credentials: Any) -> Any:
        def traced() -> Any:
            try:
                return credentials()
            except Exception:
                self.fault("ssm")
                raise

        return traced

    def fault(self, kind: str) -> None:
        trace = getattr(self._local, "poll", None)
        if trace is not None:
            trace.faults.add(kind)
        else:
            with self._lock:
                self.outside_polls[kind] += 1

    def report(self) -> dict[str, Any]:
        hit = [p for p in self.polls if p.faults]
        charged = sorted({p.user_id for p in hit if p.outcome.startswith("failed:")})
        return {
            "polls_hit": {kind: sum(1 for p in hit if kind in p.faults) for kind in ("ssm", "dynamodb")},
            "outcomes_of_polls_hit": dict(Counter(p.outcome for p in hit)),
            "faults_outside_polls": dict(self.outside_polls),
            "users_charged_for_app_failures": charged,
            "charges": [{"user_id": p.user_id, "faults": sorted(p.faults), "outcome": p.outcome}
                        for p in hit if p.outcome.startswith("failed:")],
        }


def summary(config: ChaosConfig, crash: CrashHook | None, duplicator: Duplicator | None,
            throttled: Counter[str], timeouts: int = 0, retried: int = 0, late_answers: int = 0) -> dict[str, Any]:
    return {
        "spotify_timeouts": timeouts,
        "spotify_answers_not_received": late_answers,  # the client had given up (machine load): nothing exposed
        "spotify": {"error_5xx_rate": config.error_5xx_rate, "rate_429_rate": config.rate_429_rate,
                    "retry_after_s": config.retry_after_s, "timeout_rate": config.timeout_rate,
                    "expire_token_rate": config.expire_token_rate,
                    "app_rate_limit_minutes": config.app_rate_limit_minutes},
        "crashes": crash.fired if crash else [],
        "duplicates_sent": duplicator.sent if duplicator else 0,
        "dynamodb_throttled": dict(throttled),
        "ssm_throttle_rate": config.ssm_throttle_rate,
        "dynamodb_throttles_retried_by_the_sdk": retried,
        "poison_messages": config.poison_messages,
        "client_secret_rotated_at_hour": config.secret_rotation_hour,
    }
