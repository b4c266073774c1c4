"""Importer: an uploaded Spotify export -> plays (playvault.imports.job).

Invoked asynchronously with one of two events, both only parsed here:
- S3 "Object Created" through EventBridge (the bucket's notification, rule on `imports/`): start
  the object's import job (created once; a redelivered event finds it);
- a continuation (playvault.imports.job.ContinueMessage) from the jobs function, which holds the
  job's message on the jobs queue until it is due: continue the job (more chunks, or a pause that is
  over). One that arrives before its not_before is sent on again.
Anything else fails the invocation with the parser's error naming what was wrong (Lambda retries it
twice, then its on-failure record goes to the dead-letter queue).
"""

from __future__ import annotations

from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.parser.models import S3EventNotificationEventBridgeModel

from playvault import clock, jobs, rollups, store
from playvault.aws import LazyClient
from playvault.config import ImporterSettings
from playvault.failures import import_retries
from playvault.imports import event_key, formats, upload_id_key
from playvault.imports.job import ContinueMessage, Importer, ImportSettings, continuation_sender
from playvault.imports.sources import Caps
from playvault.spotify import Budget, SpotifyClient, ssm_credentials

NOT_BEFORE_SLACK_S = jobs.NOT_BEFORE_SLACK_S
# A continuation AWS interrupted (the job noted the attempt: the JOB_ATTEMPTS-th fails it) is tried
# again this much later through the jobs queue, not by Lambda's retries a minute or two apart: a
# DynamoDB or S3 blip then fails a job only when it lasts most of half an hour, as the queue's
# visibility timeout gave when continuations had their own queue.
AWS_RETRY_DELAY_S = 600

settings = ImporterSettings.from_env()  # a missing/malformed setting fails the cold start, naming it
store.bind(settings)
logger = Logger()
s3 = boto3.client("s3")
jobs_queue = jobs.JobQueue(LazyClient("sqs"), settings.jobs_queue_url)
send_later = continuation_sender(jobs_queue)
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
    after_import=lambda user_id: rollups.start_rebuild(user_id, jobs_queue),
)


def _start(event: dict[str, Any], lambda_context: Any) -> dict[str, Any]:
    created = parse(event=event, model=S3EventNotificationEventBridgeModel)
    # EventBridge sends the key as is; a classic S3 notification would URL-encode it: either works.
    key, size = event_key(created.detail.object.key), int(created.detail.object.size or 0)
    outcome = importer.start(key, size, Budget(lambda_context.get_remaining_time_in_millis))
    logger.info("import started", extra={"key": key, "outcome": vars(outcome)})
    return vars(outcome)


def _continue(message: ContinueMessage, lambda_context: Any) -> dict[str, Any]:
    now = clock.now().timestamp()
    if message.not_before - now > NOT_BEFORE_SLACK_S:
        send_later(message.user_id, message.job_id, message.not_before - now)
        return {"status": "not yet due"}
    try:
        outcome = importer.run(message.user_id, message.job_id, Budget(lambda_context.get_remaining_time_in_millis))
    except Exception as exc:
        if not import_retries(exc):
            raise
        send_later(message.user_id, message.job_id, AWS_RETRY_DELAY_S)  # if SQS fails too, Lambda retries
        logger.warning("import interrupted by AWS: continued later",
                       extra={"user_id": message.user_id, "job_id": message.job_id, "delay_s": AWS_RETRY_DELAY_S})
        return {"status": "retry", "delay_s": AWS_RETRY_DELAY_S}
    logger.info("import run", extra={"user_id": message.user_id, "job_id": message.job_id, "outcome": vars(outcome)})
    return vars(outcome)


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if isinstance(event, dict) and event.get("source") == "aws.s3":
        return _start(event, context)
    return _continue(parse(event=event, model=ContinueMessage), context)
