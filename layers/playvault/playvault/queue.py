"""The work queue: the message schema and the two ways a message enters the queue.

A work message names a few users and the earliest moment they may be polled:

    {"users": ["alice", "bob"], "not_before": 1714568400, "window_id": "20240501T1300Z"}

`not_before` (Unix seconds) carries the dispatcher's spread across the window past SQS's 900 s
DelaySeconds cap: a worker receiving a message early puts it back (`requeue`) with the remaining
delay instead of processing it. `window_id` names the dispatch run that created the message: the
run stamp each user's poll records (a user is archived at most once per run), kept through requeues.

A body that is not JSON, names an empty user id, or is due more than a day ahead is malformed:
redelivery cannot fix it, so the worker moves it to the dead-letter queue at once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from playvault.failures import InfrastructureError

MAX_DELAY_S = 900  # SQS caps DelaySeconds at 15 minutes
MAX_ENTRIES = 10  # SendMessageBatch takes at most 10 entries
MAX_BATCH_BYTES = 256 * 1024  # conservative cap on the summed payload of one SendMessageBatch
SEND_ATTEMPTS = 4


WINDOW_ID_FORMAT = "%Y%m%dT%H%M%SZ"


def window_id_of(dispatched_at: datetime) -> str:
    """A dispatch window's id: the dispatch time, UTC, to the second."""
    return dispatched_at.astimezone(UTC).strftime(WINDOW_ID_FORMAT)


def dispatched_at_of(window_id: str) -> datetime | None:
    """When the dispatch run named `window_id` ran (None for an unparseable id)."""
    try:
        return datetime.strptime(window_id, WINDOW_ID_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


MAX_AHEAD_S = 86_400  # a message due more than a day ahead is a bug, not a plan

UserId = Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=r"\S")]


class WorkMessage(BaseModel):
    """The body of one work-queue message (also the worker's Powertools parser model)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    users: list[UserId] = Field(min_length=1, max_length=500)
    not_before: StrictInt = Field(ge=0)
    window_id: StrictStr = Field(min_length=1, max_length=64)
    # Bumped when users run out of time and come back as a new message: a new body, so message-level
    # idempotency does not take it for a duplicate of the one that sent it.
    attempt: StrictInt = Field(default=0, ge=0, le=100)

    def body(self) -> str:
        return self.model_dump_json(exclude_defaults=True)

    def remaining_delay_s(self, now: datetime) -> int:
        """Whole seconds until not_before (0 when due)."""
        return max(0, math.ceil(self.not_before - now.timestamp()))


def delay_for(remaining_s: float) -> int:
    """SQS DelaySeconds for a message due in remaining_s: never negative, never over the cap."""
    return max(0, min(MAX_DELAY_S, math.ceil(remaining_s)))


@dataclass(frozen=True)
class _Entry:
    entry_id: str
    body: str
    delay_s: int


def _chunks(entries: Iterable[_Entry]) -> Iterable[list[_Entry]]:
    chunk: list[_Entry] = []
    size = 0
    for entry in entries:
        entry_size = len(entry.body.encode())
        if chunk and (len(chunk) == MAX_ENTRIES or size + entry_size > MAX_BATCH_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(entry)
        size += entry_size
    if chunk:
        yield chunk


def _send_chunk(
    sqs_client, queue_url: str, chunk: list[_Entry], attempts: int, sleep: Callable[[float], None]
) -> None:
    pending = {entry.entry_id: entry for entry in chunk}
    problems: list[str] = []
    for attempt in range(1, attempts + 1):
        try:
            answer = sqs_client.send_message_batch(
                QueueUrl=queue_url,
                Entries=[
                    {"Id": e.entry_id, "MessageBody": e.body, "DelaySeconds": e.delay_s} for e in pending.values()
                ],
            )
        except (ClientError, BotoCoreError) as exc:  # the whole call failed: every entry is still pending
            problems = [type(exc).__name__ if isinstance(exc, BotoCoreError) else str(exc)]
        else:
            failed = answer.get("Failed", [])
            retryable = {}
            problems = []
            for failure in failed:
                entry = pending[failure["Id"]]
                problems.append(f"{failure.get('Code')}")
                if failure.get("SenderFault"):
                    # The request itself is wrong (too big, bad delay): sending it again cannot help.
                    raise InfrastructureError(
                        f"SQS refused a work message ({failure.get('Code')}: {failure.get('Message')}); "
                        f"{len(failed)} of {len(chunk)} messages of this batch left unsent"
                    )
                retryable[entry.entry_id] = entry
            pending = retryable
        if not pending:
            return
        if attempt < attempts:
            sleep(min(1.0, 0.05 * 2**attempt))
    raise InfrastructureError(
        f"{len(pending)} work message(s) left unsent after {attempts} SendMessageBatch attempts "
        f"({', '.join(sorted(set(problems))) or 'unknown error'})"
    )


def send_batches(
    sqs_client,
    queue_url: str,
    messages: Iterable[WorkMessage],
    delays: Iterable[int],
    *,
    attempts: int = SEND_ATTEMPTS,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Send the messages (message i with DelaySeconds delays[i]) with SendMessageBatch.

    Streams: at most one SendMessageBatch worth of entries (10) is held. Entries SQS reports failed
    are retried alone, a bounded number of times; what is still unsent then raises
    InfrastructureError naming how many were left. Returns the number of messages sent.
    """
    sent = 0

    def entries() -> Iterable[_Entry]:
        for index, (message, delay) in enumerate(zip(messages, delays, strict=True)):
            if not 0 <= delay <= MAX_DELAY_S:
                raise ValueError(f"DelaySeconds must be within 0..{MAX_DELAY_S}, got {delay}")
            yield _Entry(str(index), message.body(), int(delay))

    for chunk in _chunks(entries()):
        _send_chunk(sqs_client, queue_url, chunk, attempts, sleep)
        sent += len(chunk)
    return sent


def requeue(
    sqs_client,
    queue_url: str,
    users: Sequence[str],
    *,
    not_before: int,
    window_id: str,
    now: datetime,
    attempt: int = 0,
) -> int:
    """Put users back on the queue, due at not_before; returns the DelaySeconds used (<= 900).

    When not_before is more than 15 minutes away the message comes back early and the worker puts
    it back again with what remains, so any deadline is honoured.
    """
    message = WorkMessage(users=list(users), not_before=int(not_before), window_id=window_id, attempt=attempt)
    delay = delay_for(message.not_before - now.timestamp())
    try:
        sqs_client.send_message(QueueUrl=queue_url, MessageBody=message.body(), DelaySeconds=delay)
    except (ClientError, BotoCoreError) as exc:
        raise InfrastructureError(f"could not requeue {len(message.users)} user(s): {exc}") from exc
    return delay


def parse_body(body: str, now: datetime) -> WorkMessage:
    """Validate a message body; a malformed one raises MalformedMessage naming what is wrong."""
    from aws_lambda_powertools.utilities.parser import ValidationError, parse

    try:
        message = parse(event=body, model=WorkMessage)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()[:5]
        )
        raise MalformedMessage(f"malformed work message: {problems}") from None
    if message.not_before - now.timestamp() > MAX_AHEAD_S:
        raise MalformedMessage(f"malformed work message: not_before is more than {MAX_AHEAD_S} s ahead")
    return message


class MalformedMessage(ValueError):
    """A work message body that is not JSON or does not match WorkMessage; redelivery cannot fix it."""
