"""Importer: an uploaded Spotify export -> plays (playvault.imports.job).

Two event shapes, both only parsed here:
- S3 "Object Created" through EventBridge (the bucket's notification, rule on `imports/`): start
  the object's import job (created once; a redelivered event finds it);
- SQS messages of the import queue: continue a job (more chunks, or a pause that is over). A
  message that arrives before its not_before (pauses longer than SQS's 15-minute delay) is sent on.
  A message holding Lambda's on-failure record of an "Object Created" event (an upload event whose
  retries were spent, redriven from the dead-letter queue by an operator) starts the job as the
  event would have.
"""

from __future__ import annotations

import json
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.parser.models import S3EventNotificationEventBridgeModel

from playvault import clock, jobs, rollups, store
from playvault.aws import LazyClient
from playvault.config import ImporterSettings
from playvault.imports import event_key, formats, upload_id_key
from playvault.imports.job import ContinueMessage, Importer, ImportSettings, continuation_sender
from playvault.imports.sources import Caps
from playvault.spotify import Budget, SpotifyClient, ssm_credentials

NOT_BEFORE_SLACK_S = 2

settings = ImporterSettings.from_env()  # a missing/malformed setting fails the cold start, naming it
store.bind(settings)
logger = Logger()
s3 = boto3.client("s3")
sqs = LazyClient("sqs")
send_later = continuation_sender(sqs, settings.import_queue_url)
credentials = ssm_credentials(settings.spotify_client_id_param, settings.spotify_client_secret_param)
importer = Importer(
    s3,
    settings.user_files_bucket,
    SpotifyClient(api_url=settings.spotify_api_url, accounts_url=settings.spotify_accounts_url,
                  credentials=credentials, pool_size=2),
    ImportSettings(rule=formats.ListeningRule(settings.min_ms_played, settings.skip_incognito),
                   tolerance_s=settings.dedup_tolerance_s, chunk_rows=settings.import_chunk_rows,
                   caps=Caps(max_upload_bytes=settings.import_max_bytes),
                   resolve_interval_s=settings.resolve_interval_ms / 1000, min_remaining_ms=settings.min_remaining_ms),
    continue_later=send_later,
    upload_id_key=lambda: upload_id_key(credentials().client_secret),  # checks each upload was issued to its user
    # The rollups are rebuilt from the plays by a job (with the names, albums and artists looked up).
    after_import=lambda user_id: rollups.start_rebuild(user_id, jobs.JobQueue(sqs, settings.jobs_queue_url)),
)
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


def _start(event: dict[str, Any], lambda_context: Any) -> dict[str, Any]:
    created = parse(event=event, model=S3EventNotificationEventBridgeModel)
    # EventBridge sends the key as is; a classic S3 notification would URL-encode it: either works.
    key, size = event_key(created.detail.object.key), int(created.detail.object.size or 0)
    outcome = importer.start(key, size, Budget(lambda_context.get_remaining_time_in_millis))
    logger.info("import started", extra={"key": key, "outcome": vars(outcome)})
    return vars(outcome)


def _continue(record: SQSRecord, lambda_context: Any) -> str:
    body = json.loads(record.body)  # not JSON: this record fails (and, past maxReceiveCount, is dead-lettered)
    failed_event = body.get("requestPayload") if isinstance(body, dict) else None
    if isinstance(failed_event, dict) and failed_event.get("source") == "aws.s3":  # redriven from the DLQ
        return str(_start(failed_event, lambda_context)["status"])
    message = ContinueMessage.model_validate(body)  # parsed once, above
    now = clock.now().timestamp()
    if message.not_before - now > NOT_BEFORE_SLACK_S:
        send_later(message.user_id, message.job_id, message.not_before - now)
        return "not yet due"
    outcome = importer.run(message.user_id, message.job_id, Budget(lambda_context.get_remaining_time_in_millis))
    logger.info("import run", extra={"user_id": message.user_id, "job_id": message.job_id, "outcome": vars(outcome)})
    return outcome.status


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if event.get("source") == "aws.s3":
        return _start(event, context)
    return process_partial_response(event=event, record_handler=_continue, processor=processor, context=context)
