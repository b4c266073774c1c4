"""The functions' event sources, as AWS runs them: SQS event source mappings (SqsEventSource),
EventBridge rules on S3 "Object Created" events (S3EventRule) and asynchronous invocations of one
function by another (AsyncInvocations).

SQS, as Lambda's event source mapping runs it.

Receive up to the mapping's BatchSize, invoke the function with a real SQS event, then:
- the function returned {"batchItemFailures": [...]} (ReportBatchItemFailures): delete every
  message not listed; the listed ones stay and reappear after the queue's visibility timeout;
- the function raised (or the runtime died): delete nothing, the whole batch reappears;
- SQS itself moves a message to the dead-letter queue once its receive count passes the redrive
  policy's maxReceiveCount (moto does this on receive, as SQS does).
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from playvault_local.events import s3_object_created_event, sqs_event
from playvault_local.lambda_runtime import function_arn
from playvault_local.system import LocalSystem, S3RuleSpec, StartupError


@dataclass
class Delivery:
    message_id: str
    body: str
    receive_count: int
    at: float  # simulated epoch seconds


@dataclass
class EventSourceStats:
    invocations: int = 0
    messages_received: int = 0
    messages_deleted: int = 0
    item_failures: int = 0
    function_errors: Counter[str] = field(default_factory=Counter)


class SqsEventSource:
    def __init__(self, system: LocalSystem, *, on_receive: Callable[[list[dict[str, Any]]], None] | None = None,
                 spec: Any = None):
        spec = spec or system.event_source
        assert spec is not None
        self.system = system
        self.spec = spec
        self.queue_url = system.queue_url(spec.queue_logical_id)
        self.queue_arn = system.queue_arn(spec.queue_logical_id)
        self.queue_name = system.queue_name(spec.queue_logical_id)
        self.handler = system.handlers[spec.function]
        self.stats = EventSourceStats()
        self.deliveries: list[Delivery] = []
        self.on_receive = on_receive

    def poll_once(self) -> int:
        """One receive + invoke + delete cycle; returns the number of messages received."""
        answer = self.system.sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=min(10, self.spec.batch_size),
            AttributeNames=["All"], WaitTimeSeconds=0,
        )
        messages = answer.get("Messages") or []
        if not messages:
            return 0
        now = self.system.clock.timestamp()
        for message in messages:
            count = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
            self.deliveries.append(Delivery(message["MessageId"], message["Body"], count, now))
        if self.on_receive is not None:
            self.on_receive(messages)
        self.stats.messages_received += len(messages)
        self.stats.invocations += 1
        event = sqs_event(messages, self.queue_arn)
        try:
            result = self.handler(event, self.system.context(self.spec.function))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - a function error or a dead runtime: nothing is deleted
            self.stats.function_errors[type(exc).__name__] += 1
            return len(messages)
        failed = self._failed_ids(result, messages)
        self.stats.item_failures += len(failed)
        done = [m for m in messages if m["MessageId"] not in failed]
        for start in range(0, len(done), 10):
            chunk = done[start:start + 10]
            reply = self.system.sqs.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)])
            self.stats.messages_deleted += len(reply.get("Successful") or [])
        return len(messages)

    def _failed_ids(self, result: Any, messages: list[dict[str, Any]]) -> set[str]:
        if not self.spec.report_batch_item_failures:
            return set()
        if not isinstance(result, dict):
            return set()
        failures = result.get("batchItemFailures")
        if failures is None:
            return set()
        ids = {m["MessageId"] for m in messages}
        failed = set()
        for item in failures:
            identifier = item.get("itemIdentifier") if isinstance(item, dict) else None
            if identifier not in ids:
                # Lambda treats an unknown or empty identifier as a failure of the whole batch.
                return ids
            failed.add(identifier)
        return failed

    def users_of(self, delivery: Delivery) -> list[str]:
        try:
            users = json.loads(delivery.body).get("users")
        except (ValueError, AttributeError):
            return []
        return [u for u in users if isinstance(u, str)] if isinstance(users, list) else []


class S3EventRule:
    """An EventBridge rule on S3 "Object Created", as a bucket with EventBridge notifications and the
    rule deliver it. moto sends no S3 events, so new objects are found by listing the buckets the
    rule's pattern names (under its key prefix); each new (key, ETag) becomes the event S3 would send,
    and the function gets it when the rule's whole pattern matches. EventBridge invokes Lambda
    asynchronously: a function error is Lambda's to retry, twice, a minute and then two minutes
    later (its defaults), after which Lambda sends an invocation record (the event and the error) to
    the function's on-failure destination (EventInvokeConfig; dropped without one). The rule's
    RetryPolicy covers delivery to Lambda, which cannot fail here. `failures` says what failed,
    `dead_lettered` which keys went to the destination, for the runner.
    """

    def __init__(self, system: LocalSystem, spec: S3RuleSpec):
        assert system.stack is not None
        self.system = system
        self.spec = spec
        self.pattern = system.stack.resolver.value(spec.pattern)
        check_pattern(self.pattern)  # an operator we cannot evaluate fails the start, not every poll
        self.handler = system.handlers[spec.function]
        detail = self.pattern.get("detail") or {}
        self.buckets = [b for b in (detail.get("bucket") or {}).get("name") or [] if isinstance(b, str)]
        if not self.buckets:
            raise StartupError(f"{spec.function}: the S3 rule's pattern names no bucket (detail.bucket.name)")
        prefixes = [k.get("prefix") for k in (detail.get("object") or {}).get("key") or [] if isinstance(k, dict)]
        self.list_prefix = prefixes[0] if len(prefixes) == 1 and isinstance(prefixes[0], str) else ""
        self.s3 = system.s3
        self.seen: set[tuple[str, str, str]] = set()
        self.attempts: Counter[tuple[str, str, str]] = Counter()
        self.retry_at: dict[tuple[str, str, str], float] = {}
        self.failures: list[str] = []  # "<key>: <error>" per failed invocation
        self.dead_lettered: list[str] = []  # keys whose event went to the dead-letter queue
        self.dead_letter_url: str | None = None
        if spec.on_failure_target is not None:
            arn = str(system.stack.resolver.value(spec.on_failure_target))
            self.dead_letter_url = system.sqs.get_queue_url(QueueName=arn.rsplit(":", 1)[-1])["QueueUrl"]
        self.stats = EventSourceStats()
        for bucket, key, _size, etag in self._objects():  # what was there before the rule existed: no event
            self.seen.add((bucket, key, etag))

    def _objects(self):
        paginator = self.s3.get_paginator("list_objects_v2")
        for bucket in self.buckets:
            for page in paginator.paginate(Bucket=bucket, Prefix=self.list_prefix):
                for obj in page.get("Contents") or []:
                    yield bucket, obj["Key"], int(obj["Size"]), str(obj["ETag"]).strip('"')

    def poll_once(self) -> int:
        """Invoke the function for every object created since the last poll (and every retry now
        due); returns how many invocations succeeded."""
        succeeded = 0
        now = self.system.now().timestamp()
        for bucket, key, size, etag in list(self._objects()):
            identity = (bucket, key, etag)
            if identity in self.seen or self.retry_at.get(identity, now) > now:
                continue
            event = s3_object_created_event(bucket, key, size, etag, self.system.now())
            if not matches(self.pattern, event):
                self.seen.add(identity)
                continue
            self.stats.invocations += 1
            self.attempts[identity] += 1
            try:
                self.handler(event, self.system.context(self.spec.function))
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - a function error: Lambda retries the async event
                self.stats.function_errors[type(exc).__name__] += 1
                self.failures.append(f"{key}: {type(exc).__name__}: {exc}")
                attempt = self.attempts[identity]
                if attempt <= len(ASYNC_RETRY_DELAYS_S):
                    self.retry_at[identity] = now + ASYNC_RETRY_DELAYS_S[attempt - 1]
                    continue
                if self.dead_letter_url is not None:
                    record = on_failure_record(event, exc, attempt, self.spec.function)
                    self.system.sqs.send_message(QueueUrl=self.dead_letter_url, MessageBody=json.dumps(record))
                    self.dead_lettered.append(key)
            else:
                succeeded += 1
            self.seen.add(identity)
            self.retry_at.pop(identity, None)
        return succeeded


def on_failure_record(event: dict[str, Any], error: BaseException, attempts: int, function: str) -> dict[str, Any]:
    """The invocation record Lambda sends an on-failure destination once an async event's retries are spent."""
    return {
        "version": "1.0",
        "timestamp": event.get("time", ""),
        "requestContext": {"requestId": event.get("id", ""), "condition": "RetriesExhausted",
                           "approximateInvokeCount": attempts,
                           "functionArn": f"{function_arn(function)}:$LATEST"},
        "requestPayload": event,
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "responsePayload": {"errorMessage": str(error), "errorType": type(error).__name__},
    }


# Lambda's asynchronous invocation retries a function error twice (MaximumRetryAttempts 2), about a
# minute and then two minutes later.
ASYNC_RETRY_DELAYS_S = (60.0, 120.0)
OPERATORS = ("prefix", "suffix", "exists", "anything-but")


def check_pattern(pattern: Any, where: str = "event pattern") -> None:
    """StartupError for a pattern `matches` cannot evaluate (an operator it does not know)."""
    if not isinstance(pattern, dict):
        raise StartupError(f"{where}: {pattern!r} is not an object")
    for name, rule in pattern.items():
        if isinstance(rule, dict):
            check_pattern(rule, f"{where}.{name}")
        elif not isinstance(rule, list):
            raise StartupError(f"{where}.{name}: {rule!r} is neither an object nor a list of values")
        else:
            for condition in rule:
                if isinstance(condition, dict) and (len(condition) != 1 or next(iter(condition)) not in OPERATORS):
                    raise StartupError(f"{where}.{name}: {condition!r} is not supported locally "
                                       f"(operators: {', '.join(OPERATORS)})")
                if isinstance(condition, dict) and "anything-but" in condition:
                    operand = condition["anything-but"]
                    if isinstance(operand, dict) or (isinstance(operand, list)
                                                     and any(isinstance(o, dict) for o in operand)):
                        raise StartupError(f"{where}.{name}: anything-but with an operator is not supported locally")


def matches(pattern: Any, event: Any) -> bool:
    """EventBridge's content filtering for the forms our templates use: nested objects, lists of
    exact values, {"prefix"}, {"suffix"}, {"exists"} and {"anything-but"} (a value or a list)."""
    if isinstance(pattern, dict):
        if not isinstance(event, dict):
            return False
        return all(_field_matches(rule, event.get(name), name in event) for name, rule in pattern.items())
    return False


def _field_matches(rule: Any, value: Any, present: bool) -> bool:
    if isinstance(rule, dict):
        return present and matches(rule, value)
    if not isinstance(rule, list):
        raise StartupError(f"event pattern: {rule!r} is neither an object nor a list of values")
    values = value if isinstance(value, list) else [value]
    for condition in rule:
        if isinstance(condition, dict):
            (operator, operand), = condition.items()
            if operator == "exists":
                if bool(operand) == present:
                    return True
                continue
            if not present:
                continue
            if operator == "prefix" and any(isinstance(v, str) and v.startswith(operand) for v in values):
                return True
            if operator == "suffix" and any(isinstance(v, str) and v.endswith(operand) for v in values):
                return True
            if operator == "anything-but":
                excluded = operand if isinstance(operand, list) else [operand]
                if any(v not in excluded for v in values):  # on an array: one value outside is enough
                    return True
            if operator not in OPERATORS:
                raise StartupError(f"event pattern: operator {operator!r} is not supported locally")
        elif present and condition in values:
            return True
    return False


@dataclass
class Invocation:
    function: str  # logical id
    event: dict[str, Any]
    due: float  # simulated epoch seconds
    attempts: int = 0


class AsyncInvocations:
    """Lambda's asynchronous invocations (InvocationType=Event) that the functions make, as Lambda
    runs them: accepted at once (202) into the function's event queue, run later (`poll_once`, one at
    a time like everything here), a function error retried twice, a minute and then two minutes
    later, then the invocation record sent to the function's on-failure destination
    (EventInvokeConfig; dropped without one). moto cannot run a function: the telemetry hook hands
    every Invoke here (AwsCallHooks.invoke). Functions are named as Lambda names them: the template's
    FunctionName (the physical name) or their ARN.
    """

    def __init__(self, system: LocalSystem):
        assert system.stack is not None
        self.system = system
        self.names: dict[str, str] = {}
        for logical in system.stack.functions:
            ids = system.stack.physical[logical]
            self.names[ids["Ref"]] = self.names[ids["Arn"]] = logical
        self.pending: list[Invocation] = []
        self.stats = EventSourceStats()
        self.failures: list[str] = []  # "<function>: <error>" per failed invocation
        self.dead_lettered: list[dict[str, Any]] = []  # the events whose record went to a destination
        self._lock = threading.Lock()

    def accept(self, name: str, invocation_type: str, payload: bytes) -> int:
        """The hook's side: queue the event; 202 as Lambda answers an accepted asynchronous event."""
        from botocore.exceptions import ClientError

        logical = self.names.get(name) or self.names.get(name.split(":$LATEST")[0])
        if logical is None:
            raise ClientError({"Error": {"Code": "ResourceNotFoundException", "Message": f"Function not found: {name}"},
                               "ResponseMetadata": {"HTTPStatusCode": 404}}, "Invoke")
        if invocation_type != "Event":
            raise RuntimeError(f"Invoke of {logical} as {invocation_type}: the local run emulates asynchronous "
                               "invocations (InvocationType=Event) only")
        event = json.loads(payload or b"{}")
        with self._lock:
            self.pending.append(Invocation(logical, event, self.system.now().timestamp()))
        return 202

    def next_due(self) -> float | None:
        with self._lock:
            return min((i.due for i in self.pending), default=None)

    def poll_once(self) -> int:
        """Run every invocation due now (and the ones they queue that are due too); returns how many ran."""
        ran = 0
        while True:
            now = self.system.now().timestamp()
            with self._lock:
                due = [i for i in self.pending if i.due <= now]
                if not due:
                    return ran
                invocation = min(due, key=lambda i: i.due)
                self.pending.remove(invocation)
            ran += 1
            self._run(invocation, now)

    def _run(self, invocation: Invocation, now: float) -> None:
        invocation.attempts += 1
        self.stats.invocations += 1
        try:
            self.system.handlers[invocation.function](invocation.event, self.system.context(invocation.function))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - a function error: Lambda retries the async event
            self.stats.function_errors[type(exc).__name__] += 1
            self.failures.append(f"{invocation.function}: {type(exc).__name__}: {exc}")
            if invocation.attempts <= len(ASYNC_RETRY_DELAYS_S):
                invocation.due = now + ASYNC_RETRY_DELAYS_S[invocation.attempts - 1]
                with self._lock:
                    self.pending.append(invocation)
                return
            target = self.system.on_failure_target(invocation.function)
            if target is not None:
                record = on_failure_record(invocation.event, exc, invocation.attempts, invocation.function)
                self.system.sqs.send_message(QueueUrl=target, MessageBody=json.dumps(record))
                self.dead_lettered.append(invocation.event)
