"""The SQS event source mapping of the worker, as Lambda runs it.

Receive up to the mapping's BatchSize, invoke the function with a real SQS event, then:
- the function returned {"batchItemFailures": [...]} (ReportBatchItemFailures): delete every
  message not listed; the listed ones stay and reappear after the queue's visibility timeout;
- the function raised (or the runtime died): delete nothing, the whole batch reappears;
- SQS itself moves a message to the dead-letter queue once its receive count passes the redrive
  policy's maxReceiveCount (moto does this on receive, as SQS does).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from playvault_local.events import sqs_event
from playvault_local.system import LocalSystem


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
