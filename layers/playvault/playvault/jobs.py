"""Account jobs (export, delete, rebuild of the rollups): the message schema, the queue they travel
on, and the one entry point that runs a message's next chunk. functions/jobs drives it from SQS;
tests and the local runner call the same `run`.

Import continuations travel on the same queue (kind "import"): one queue polled by Lambda instead of
two. The jobs function does not import; it holds a continuation until its `not_before` and then hands
it to the importer (`continue_import`: an asynchronous invocation), which keeps its own role,
timeout and concurrency limit.

A job is a status item (store/exports.py, store/deletions.py) plus a message naming it. Each run
does a bounded chunk and checkpoints; when it is not finished it answers `Continue` and the
message is sent again (with a delay when the job must wait), so no invocation runs long, and a
crash re-runs only the last chunk (SQS redelivers the message).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from playvault import clock

MAX_DELAY_S = 900  # SQS's DelaySeconds cap; a job that must wait longer checks again
NOT_BEFORE_SLACK_S = 2  # an import continuation this close to its not_before is handed over


class JobMessage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["export", "delete", "rollups", "import"]
    user_id: str = Field(min_length=1, max_length=256)
    export_id: str | None = Field(default=None, pattern=r"^[0-9TZ]{16}-[0-9a-f]{8}$")
    receipt_key: str | None = Field(default=None, pattern=r"^deletion#[0-9a-f]{64}$")
    # rollups: the generation to rebuild; absent: start a rebuild of the user (the migration)
    rollup_gen: int | None = Field(default=None, ge=1)
    # import: the import job to continue, not before this Unix time (pauses outlast SQS's 15-minute delay)
    import_job_id: str | None = Field(default=None, min_length=1, max_length=80)
    not_before: int | None = Field(default=None, ge=0)


@dataclass(frozen=True)
class Continue:
    """Not finished: run the job again after `delay_s` seconds (`message`: the message to send
    instead of the one that ran, when the job learnt something it must carry on)."""

    delay_s: int = 0
    message: JobMessage | None = None


class JobQueue:
    def __init__(self, sqs: Any, queue_url: str):
        self.sqs = sqs
        self.queue_url = queue_url

    def send(self, message: JobMessage, delay_s: int = 0) -> None:
        self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=json.dumps(message.model_dump(exclude_none=True)),
                              DelaySeconds=max(0, min(MAX_DELAY_S, int(delay_s))))


def run(message: JobMessage, *, exporter: Any, deleter: Any, budget: Any,
        continue_import: Callable[[str, str], None] | None = None) -> Continue | None:
    """The next chunk of the job; None when it is finished (or there is nothing left to do)."""
    if message.kind == "import":
        if message.import_job_id is None or message.not_before is None:
            raise ValueError("an import message needs import_job_id and not_before")
        wait_s = message.not_before - clock.now().timestamp()
        if wait_s > NOT_BEFORE_SLACK_S:
            return Continue(math.ceil(wait_s))  # sent again, at most MAX_DELAY_S later: it checks again then
        if continue_import is None:
            raise ValueError("an import message needs the importer (continue_import)")
        continue_import(message.user_id, message.import_job_id)
        return None
    if message.kind == "export":
        if message.export_id is None:
            raise ValueError("an export message needs export_id")
        return exporter.run(message.user_id, message.export_id, budget)
    if message.kind == "rollups":
        from playvault import rollups  # the rollups read the plays and the catalog: only this job needs them

        if message.rollup_gen is None:
            # "Rebuild this user" (the migration, an operator's repair): a new generation, then its steps.
            gen = rollups.start_rebuild(message.user_id, None)
            if gen is None:
                return None
            message = message.model_copy(update={"rollup_gen": gen})
        outcome = rollups.rebuild(message.user_id, message.rollup_gen, budget)
        return None if outcome is None else Continue(outcome.delay_s, message)
    if message.receipt_key is None:
        raise ValueError("a delete message needs receipt_key")
    return deleter.run(message.user_id, message.receipt_key, budget)
