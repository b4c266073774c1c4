"""What the functions emit, captured the way CloudWatch would see it, and AWS calls counted.

- FunctionOutput replaces sys.stdout while the functions run: Powertools prints EMF blobs and JSON
  log lines there. EMF blobs become metric samples (tagged with the simulated hour they were
  emitted in); log lines are counted by level and optionally written to a file.
- AwsCallHooks registers botocore event hooks on every client any session creates (boto3's
  default session, Powertools' own sessions, pynamodb's per-thread sessions): it counts DynamoDB
  and SSM calls, can inject faults (DynamoDB and SSM throttling) before a call is sent, and hands
  every call (and every presigned URL or POST) to the local IAM check (playvault_local.iam) when one is set.
  A Lambda Invoke never reaches the emulator (moto cannot run the functions): it goes to `invoke`
  (the local system's asynchronous invocations, eventsource.AsyncInvocations).
"""

from __future__ import annotations

import json
import random
import re
import sys
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

DATA_PLANE = frozenset({"GetItem", "PutItem", "UpdateItem", "DeleteItem", "BatchGetItem", "BatchWriteItem",
                        "Query", "Scan", "TransactWriteItems", "TransactGetItems"})


@dataclass
class MetricSample:
    hour: int
    name: str
    unit: str
    dimensions: dict[str, str]
    values: list[float]


@dataclass(frozen=True)
class LogMetricFilter:
    """A CloudWatch Logs metric filter of the template, `{ $.message = "..." }` patterns only."""

    message: str
    metric: str
    value: float = 1.0

    @classmethod
    def from_template(cls, template: dict[str, Any]) -> list[LogMetricFilter]:
        found = []
        for resource in template.get("Resources", {}).values():
            if resource.get("Type") != "AWS::Logs::MetricFilter":
                continue
            props = resource.get("Properties") or {}
            match = re.fullmatch(r'\{\s*\$\.message\s*=\s*"([^"]+)"\s*\}', str(props.get("FilterPattern", "")))
            if not match:
                raise ValueError("the local runner reads only message-equality filter patterns: "
                                 f"{props.get('FilterPattern')}")
            for transformation in props.get("MetricTransformations", []):
                found.append(cls(match.group(1), transformation["MetricName"],
                                 float(transformation.get("MetricValue", 1))))
        return found


@dataclass
class FunctionOutput:
    """A stdout stand-in: whole lines only (per thread), parsed as EMF or log records."""

    log_file: TextIO | None = None
    hour: int = -1  # set by the runner: the simulated hour samples belong to
    samples: list[MetricSample] = field(default_factory=list)
    log_levels: Counter[str] = field(default_factory=Counter)
    other_lines: int = 0
    log_metric_filters: list[LogMetricFilter] = field(default_factory=list)  # set from the template
    _local: threading.local = field(default_factory=threading.local)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- the file interface print() and logging.StreamHandler use
    def write(self, text: str) -> int:
        buffered = getattr(self._local, "buffer", "") + text
        *lines, rest = buffered.split("\n")
        self._local.buffer = rest
        for line in lines:
            if line.strip():
                self._line(line)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return "utf-8"

    def _line(self, line: str) -> None:
        record: Any = None
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                record = None
        with self._lock:
            if self.log_file is not None:
                self.log_file.write(line + "\n")
            if isinstance(record, dict) and "_aws" in record:
                self._emf(record)
            elif isinstance(record, dict) and "level" in record:
                self.log_levels[str(record["level"])] += 1
                for metric_filter in self.log_metric_filters:  # what CloudWatch Logs would count
                    if record.get("message") == metric_filter.message:
                        self.samples.append(MetricSample(self.hour, metric_filter.metric, "Count",
                                                         {"service": str(record.get("service", ""))},
                                                         [metric_filter.value]))
            else:
                self.other_lines += 1

    def _emf(self, blob: dict[str, Any]) -> None:
        for directive in blob["_aws"].get("CloudWatchMetrics", []):
            dimension_names = [name for group in directive.get("Dimensions", []) for name in group]
            dims = {name: str(blob.get(name, "")) for name in dimension_names}
            for metric in directive.get("Metrics", []):
                name = metric["Name"]
                value = blob.get(name)
                values = value if isinstance(value, list) else [value]
                self.samples.append(MetricSample(self.hour, name, metric.get("Unit", "None"), dims,
                                                 [float(v) for v in values if v is not None]))

    # -- reading back
    def total(self, name: str, **dims: str) -> float:
        return sum(sum(s.values) for s in self.samples
                   if s.name == name and all(s.dimensions.get(k) == v for k, v in dims.items()))

    def by_dimension(self, name: str, dimension: str) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for s in self.samples:
            if s.name == name and dimension in s.dimensions:
                out[s.dimensions[dimension]] += sum(s.values)
        return dict(out)


class Stdout:
    """Install a FunctionOutput as sys.stdout (before the functions' modules are imported, so their
    loggers bind to it) and put the real stdout back afterwards."""

    def __init__(self, output: FunctionOutput):
        self.output = output
        self.real: TextIO = sys.stdout

    def install(self) -> None:
        self.real = sys.stdout
        sys.stdout = self.output  # type: ignore[assignment]

    def restore(self) -> None:
        if sys.stdout is self.output:
            sys.stdout = self.real


class InjectedCrash(BaseException):  # noqa: N818 - it stands for the process dying, not an error
    """Raised inside a function to emulate the runtime dying mid-invocation (not an Exception: no
    handler code catches it, exactly as no code runs after a real crash)."""


# Throttles that outlive the SDK's retries reach the code; they are injected only on calls a worker
# makes before it fetches from Spotify (reading the user, the idempotency record), so a failed batch
# never holds plays it already fetched. Throttles after the fetch are answered at the HTTP level and
# retried by the SDK, as DynamoDB's are. (A throttle surviving the retries after the fetch, during a
# burst of listening, loses plays: the redelivery comes a visibility timeout later, after the plays
# fell out of Spotify's 50-play window. Reported to the archive's owners.)
_SURFACING = {"GetItem": None, "PutItem": "Idempotency", "UpdateItem": "Idempotency", "DeleteItem": "Idempotency"}


@dataclass
class AwsCallHooks:
    """botocore hooks on every client: counts DynamoDB and SSM calls, injects throttling when enabled,
    and checks every call against the calling function's role when `iam` is set.

    throttle_rate: share of eligible calls that raise ProvisionedThroughputExceededException from a
    before-call hook (no SDK retry: the error reaches the code). retried_throttle_rate: share of
    data-plane calls whose HTTP answer is a throttling error (the SDK retries it).
    ssm_throttle_rate: share of SSM GetParameter calls that fail with ThrottlingException ("Rate
    exceeded", as SSM answers), raised from a before-call hook: the SDK's retries are spent, the error
    reaches the code. A rate rather than SSM's own limit (40 GetParameter a second per account and
    region): that limit is shared with every other function and application in the account, which
    the local run does not have, so PlayVault alone cannot reach it here; the rate stands for the
    others' load. `ssm_calls_per_second` (GetParameter calls per simulated second, from `clock`)
    shows how close PlayVault itself comes to the limit.
    on_fault: told "dynamodb" or "ssm" in the calling thread whenever a throttle reaches the code."""

    throttle_rate: float = 0.0
    throttle_limit: int = 0  # at most this many surfacing throttles (0: no limit)
    retried_throttle_rate: float = 0.0
    ssm_throttle_rate: float = 0.0
    seed: int = 0
    clock: Callable[[], float] | None = None  # simulated epoch seconds, for ssm_calls_per_second
    on_fault: Callable[[str], None] | None = None
    enabled: bool = False  # throttling only while the simulated hours run
    iam: Any = None  # playvault_local.iam.IamCheck: every call checked against its function's role
    # Where a Lambda Invoke goes: (function name, invocation type, payload) -> the HTTP status Lambda
    # answers (202 for an accepted asynchronous event). None: an Invoke is an error (nothing runs it).
    invoke: Callable[[str, str, bytes], int] | None = None
    calls: Counter[str] = field(default_factory=Counter)
    throttled: Counter[str] = field(default_factory=Counter)
    retried_throttles: int = 0
    ssm_calls: Counter[str] = field(default_factory=Counter)
    ssm_calls_per_second: Counter[int] = field(default_factory=Counter)
    ssm_throttled: int = 0
    _rng: random.Random = field(init=False)
    _ssm_rng: random.Random = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _original_create_client: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        self._rng = random.Random(f"throttle:{self.seed}")
        self._ssm_rng = random.Random(f"ssm-throttle:{self.seed}")  # its own: DynamoDB's draws don't shift it

    def install(self) -> None:
        import botocore.session

        original = botocore.session.Session.create_client
        hooks = self

        def create_client(session_self: Any, service_name: str, *args: Any, **kwargs: Any) -> Any:
            client = original(session_self, service_name, *args, **kwargs)
            if service_name == "dynamodb":
                client.meta.events.register("before-call.dynamodb", hooks.before_call)
                client.meta.events.register("before-send.dynamodb", hooks.before_send)
            elif service_name == "ssm":
                client.meta.events.register("before-call.ssm", hooks.before_call_ssm)
            elif service_name == "lambda":
                client.meta.events.register("before-call.lambda", hooks.before_call_lambda)
            # The API parameters (before serialization) of every call and every presigned URL.
            client.meta.events.register("before-parameter-build", hooks.before_parameter_build)
            if service_name == "s3":
                _check_presigned_posts(client, hooks)
            return client

        self._original_create_client = original
        botocore.session.Session.create_client = create_client  # type: ignore[method-assign]

    def uninstall(self) -> None:
        import botocore.session

        if self._original_create_client is not None:
            botocore.session.Session.create_client = self._original_create_client  # type: ignore[method-assign]
            self._original_create_client = None

    def before_parameter_build(self, params: Any, model: Any, context: Any = None, **kwargs: Any) -> None:
        if self.iam is None:
            return
        presign = bool((context or {}).get("is_presign_request"))
        if presign and model.name == "CreateBucket":  # generate_presigned_post: checked by its wrapper
            return
        self.iam.check_call(model.service_model.signing_name, model.name, params or {}, presign=presign)

    def _eligible(self, operation: str, params: Any) -> bool:
        if operation not in _SURFACING:
            return False
        table_hint = _SURFACING[operation]
        return table_hint is None or table_hint in str((params or {}).get("TableName", ""))

    def before_call(self, model: Any, params: Any, **kwargs: Any) -> None:
        operation = model.name
        with self._lock:
            self.calls[operation] += 1
            throttle = (self.enabled and self.throttle_rate > 0 and self._eligible(operation, params)
                        and (not self.throttle_limit or sum(self.throttled.values()) < self.throttle_limit)
                        and self._rng.random() < self.throttle_rate)
            if throttle:
                self.throttled[operation] += 1
        if throttle:
            from botocore.exceptions import ClientError

            if self.on_fault is not None:
                self.on_fault("dynamodb")
            raise ClientError(
                {"Error": {"Code": "ProvisionedThroughputExceededException",
                           "Message": "The level of configured provisioned throughput for the table was exceeded "
                                      "(injected by the local runner)"},
                 "ResponseMetadata": {"HTTPStatusCode": 400}},
                operation,
            )

    def before_call_ssm(self, model: Any, params: Any, **kwargs: Any) -> None:
        operation = model.name
        with self._lock:
            self.ssm_calls[operation] += 1
            if operation != "GetParameter":
                return
            if self.clock is not None:
                self.ssm_calls_per_second[int(self.clock())] += 1
            throttle = self.enabled and self.ssm_throttle_rate > 0 and self._ssm_rng.random() < self.ssm_throttle_rate
            if throttle:
                self.ssm_throttled += 1
        if throttle:
            from botocore.exceptions import ClientError

            if self.on_fault is not None:
                self.on_fault("ssm")
            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"},
                               "ResponseMetadata": {"HTTPStatusCode": 400}}, operation)

    def before_call_lambda(self, model: Any, params: Any, **kwargs: Any) -> Any:
        """Answer a Lambda Invoke here, after the IAM check (before-parameter-build), without sending it."""
        from urllib.parse import unquote

        from botocore.awsrequest import AWSResponse

        if model.name != "Invoke":
            raise RuntimeError(f"lambda {model.name}: the local run emulates only Invoke")
        if self.invoke is None:
            raise RuntimeError("a Lambda Invoke with nothing local to run it (no LocalSystem's asynchronous "
                               "invocations, or a test that does not collect them)")
        name = unquote(str(params["url_path"]).split("/functions/", 1)[1].split("/", 1)[0])
        headers = params.get("headers") or {}
        kind = headers.get("X-Amz-Invocation-Type", "RequestResponse")
        body = params.get("body") or b""
        status = self.invoke(name, kind, body.encode() if isinstance(body, str) else bytes(body))
        response = AWSResponse(f"local://lambda/{name}", status, {}, _RawBody(b""))
        return response, {"StatusCode": status, "Payload": _streaming_body(b""),
                          "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": {}}}

    def before_send(self, request: Any, **kwargs: Any) -> Any:
        if not self.enabled or self.retried_throttle_rate <= 0:
            return None
        target = request.headers.get("X-Amz-Target", b"")
        operation = (target.decode() if isinstance(target, bytes) else str(target)).rpartition(".")[2]
        if operation not in DATA_PLANE:
            return None
        with self._lock:
            if self._rng.random() >= self.retried_throttle_rate:
                return None
            self.retried_throttles += 1
        from botocore.awsrequest import AWSResponse

        body = (b'{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",'
                b'"message":"Rate of requests exceeds the allowed throughput (injected)"}')
        return AWSResponse(request.url, 400, {"Content-Type": "application/x-amz-json-1.0",
                                              "x-amzn-RequestId": "injected"}, _RawBody(body))


def _check_presigned_posts(client: Any, hooks: AwsCallHooks) -> None:
    """A presigned POST makes no call, but S3 authorizes the upload as the signer's PutObject on the
    key: check that at signing time (the key as the form gives it, `${filename}` included)."""
    sign = client.generate_presigned_post

    def generate_presigned_post(Bucket: str, Key: str, *args: Any, **kwargs: Any) -> Any:  # noqa: N803
        if hooks.iam is not None:
            hooks.iam.check_call("s3", "PutObject", {"Bucket": Bucket, "Key": Key}, presign=True)
        return sign(Bucket, Key, *args, **kwargs)

    client.generate_presigned_post = generate_presigned_post


def _streaming_body(data: bytes) -> Any:
    import io

    from botocore.response import StreamingBody

    return StreamingBody(io.BytesIO(data), len(data))


class _RawBody:
    def __init__(self, body: bytes):
        self._body = body

    def stream(self, **kwargs: Any) -> Any:
        yield self._body

    def read(self, *args: Any) -> bytes:
        body, self._body = self._body, b""
        return body
