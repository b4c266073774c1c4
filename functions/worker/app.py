"""Worker: SQS work messages -> archive every user of each message (playvault.batch).

Thin on purpose: settings, clients and the Powertools processor are built once per container; the
handler reports partial batch failures so only failed messages come back. Per message:
- malformed body: the record fails with a message naming what is wrong (DLQ after maxReceiveCount);
- not_before still ahead (a spread past SQS's 15-minute delay cap): requeued with the rest of the
  delay, the original deleted;
- Spotify rate-limits the app (gate closed, or closed mid-batch): the users not done are requeued
  for the gate's deadline; not a failure, never the DLQ;
- out of time: the record fails, SQS redelivers it, idempotency skips the users already done;
- infrastructure error (DynamoDB throttled...): the record fails.
"""

from __future__ import annotations

import math
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer
from botocore.config import Config

from playvault import clock, store
from playvault import metrics as m
from playvault.archive import Archiver
from playvault.aws import LazyClient
from playvault.batch import BatchAborted, BatchOutcome, archive_batch
from playvault.config import WorkerSettings
from playvault.crypto import TokenCipher
from playvault.failures import OutOfTime
from playvault.metrics import metrics
from playvault.queue import MalformedMessage, parse_body, requeue, window_hour
from playvault.spotify import Budget, SpotifyClient, ssm_credentials

# A message this close to its not_before is processed rather than bounced for a second or two.
NOT_BEFORE_SLACK_S = 2

settings = WorkerSettings.from_env()  # a missing/malformed setting fails the cold start, naming it
store.bind(settings)
logger = Logger()  # service from POWERTOOLS_SERVICE_NAME
sqs = LazyClient("sqs")  # only requeues use it
spotify = SpotifyClient(
    api_url=settings.spotify_api_url,
    accounts_url=settings.spotify_accounts_url,
    credentials=ssm_credentials(settings.spotify_client_id_param, settings.spotify_client_secret_param),
    pool_size=settings.user_concurrency,
)
cipher = TokenCipher(LazyClient("kms"), settings.token_key_id)  # data keys are cached
archiver = Archiver(spotify, cipher)
# Its boto3 client is shared by the user threads: one pooled connection per thread, not botocore's 10.
persistence = DynamoDBPersistenceLayer(
    table_name=settings.idempotency_table, boto_config=Config(max_pool_connections=settings.user_concurrency)
)
# Every record is answered in batchItemFailures, even when all fail: one uniform contract.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


def _record_metrics(outcome: BatchOutcome) -> None:
    m.count(m.USERS_ARCHIVED, outcome.successful)
    m.count(m.USERS_SKIPPED, outcome.skipped)
    for failure_type, count in sorted(outcome.failures_by_type.items()):
        m.count_failure(failure_type, count)
    m.count(m.PLAYS_ARCHIVED, outcome.plays_archived)
    m.count(m.NEW_TRACKS, outcome.new_tracks)
    m.count(m.GAPS_DETECTED, outcome.gaps)
    if outcome.deferred:
        m.count(m.RATE_LIMITED, len(outcome.deferred))
    m.record_duration_ms(m.BATCH_DURATION, outcome.duration_ms)


def record_handler(record: SQSRecord, lambda_context: Any) -> str:
    logger.remove_keys(["window_id"])
    logger.append_keys(message_id=record.message_id)
    try:
        message = parse_body(record.body)
    except MalformedMessage as exc:
        logger.error(str(exc), extra={"receive_count": record.attributes.approximate_receive_count})
        raise
    logger.append_keys(window_id=message.window_id)
    now = clock.now()

    if message.not_before - now.timestamp() > NOT_BEFORE_SLACK_S:
        delay = requeue(sqs, settings.work_queue_url, message.users, not_before=message.not_before,
                        window_id=message.window_id, now=now)
        m.count(m.MESSAGES_NOT_YET_DUE)
        logger.info("not due yet: requeued", extra={"users": len(message.users), "delay_s": delay,
                                                    "not_before": message.not_before})
        return "requeued"

    budget = Budget(lambda_context.get_remaining_time_in_millis)
    try:
        outcome = archive_batch(
            message.users,
            archiver=archiver,
            budget=budget,
            hour_key=window_hour(message.window_id, now),
            persistence=persistence,
            concurrency=settings.user_concurrency,
            min_remaining_ms=settings.min_remaining_ms,
        )
    except BatchAborted as aborted:
        _record_metrics(aborted.outcome)
        logger.error("batch aborted by an infrastructure error; the message will be redelivered",
                     extra={"batch": aborted.outcome.report(), "error": str(aborted.__cause__)})
        raise

    _record_metrics(outcome)
    logger.info("batch archived", extra={"batch": outcome.report()})

    if outcome.deferred and outcome.deferred_until is not None:
        delay = requeue(sqs, settings.work_queue_url, outcome.deferred,
                        not_before=math.ceil(outcome.deferred_until.timestamp()),
                        window_id=message.window_id, now=clock.now())
        m.count(m.DEFERRED_MESSAGES)
        logger.warning("Spotify rate-limits the app: users requeued for the gate's deadline",
                       extra={"users": len(outcome.deferred), "delay_s": delay,
                              "deferred_until": outcome.deferred_until.isoformat()})
    if outcome.unstarted:
        raise OutOfTime(f"{len(outcome.unstarted)} of {len(message.users)} users not started: out of time; "
                        "the message will be redelivered")
    return "archived"


@logger.inject_lambda_context(correlation_id_path="Records[0].messageId")
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                    context=context)
