"""Jobs: SQS job messages -> the next chunk of an account job (playvault.jobs: export, delete, rollups).

Thin: parse the message (Powertools parser, playvault.jobs.JobMessage), run one bounded chunk,
and send the message again when the job is not finished (with its delay). Partial batch failures:
a malformed message or an error fails only its record (redelivered; DLQ after maxReceiveCount).
An import continuation that is due is handed to the importer: an asynchronous invocation (the
importer keeps its own role, timeout and ReservedConcurrentExecutions; an invocation over that limit
waits in Lambda's asynchronous queue).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.parser import parse
from botocore.config import Config

from playvault import jobs, store
from playvault.aws import LazyClient
from playvault.config import JobsFunctionSettings
from playvault.deletion import Deleter
from playvault.export import Exporter
from playvault.imports.job import ContinueMessage
from playvault.metrics import metrics
from playvault.spotify import Budget

settings = JobsFunctionSettings.from_env()
store.bind(settings)
logger = Logger()
s3 = LazyClient("s3", config=Config(signature_version="s3v4"))
queue = jobs.JobQueue(LazyClient("sqs"), settings.jobs_queue_url)
exporter = Exporter(s3, settings.user_files_bucket, queue)
deleter = Deleter(s3, settings.user_files_bucket, queue, settings.deletion_grace_seconds)
lambda_client = LazyClient("lambda")
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
RESERVE_MS = 5000


def continue_import(user_id: str, job_id: str) -> None:
    lambda_client.invoke(FunctionName=settings.importer_function_name, InvocationType="Event",
                         Payload=ContinueMessage(user_id=user_id, job_id=job_id).model_dump_json())


def record_handler(record: SQSRecord, lambda_context: Any) -> str:
    message = parse(event=record.body, model=jobs.JobMessage)
    budget = Budget(lambda_context.get_remaining_time_in_millis, reserve_ms=RESERVE_MS)
    outcome = jobs.run(message, exporter=exporter, deleter=deleter, budget=budget, continue_import=continue_import)
    if outcome is None:
        return "done"
    queue.send(outcome.message or message, delay_s=outcome.delay_s)
    return "continued"


@logger.inject_lambda_context(log_event=False)
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                    context=context)
