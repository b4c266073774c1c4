"""Worker: SQS work messages -> archive every user of each message (playvault.batch).

Thin on purpose: settings, clients and the Powertools processor are built once per container; the
handler reports partial batch failures so only failed messages come back. Per message:
- malformed (not JSON, an empty user id, due more than a day ahead): moved to the dead-letter queue
  at once with the reason (redelivery cannot fix it), counted, and deleted here;
- a duplicate delivery of a message already processed: Powertools Idempotency (one lookup) answers
  with the first delivery's report;
- not_before still ahead (a spread past SQS's 15-minute delay cap): requeued with the rest of the
  delay, the original deleted;
- Spotify limits the app (rate limit, quota, rejected credentials, outage): the users not done stay
  due and the dispatcher sends them after the gate opens; not a failure, never the DLQ;
- out of time: the users not done are requeued as a new message; the message succeeds;
- infrastructure error (DynamoDB throttled...): the users not done are requeued as a new message
  after a short backoff (15 s, doubling; the message succeeds); past INFRA_REQUEUES attempts the
  record fails and SQS redelivers it (then the DLQ and its alarm).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)

from playvault import clock, store
from playvault import metrics as m
from playvault.archive import Archiver, Cadence
from playvault.aws import LazyClient
from playvault.batch import BatchAborted, BatchOutcome, archive_batch
from playvault.config import WorkerSettings
from playvault.crypto import TokenCipher
from playvault.metrics import metrics
from playvault.queue import MalformedMessage, WorkMessage, parse_body, requeue
from playvault.spotify import Budget, SpotifyClient, ssm_credentials

# A message this close to its not_before is processed rather than bounced for a second or two.
NOT_BEFORE_SLACK_S = 2
# An infrastructure error requeues the users not done, INFRA_BACKOFF_S * 2**attempt later, this many
# times (15 s .. 2 min); then the message fails and SQS's redelivery and maxReceiveCount take over.
INFRA_REQUEUES = 4
INFRA_BACKOFF_S = 15
MESSAGE_IDEMPOTENCY_EXPIRY_S = 86_400

settings = WorkerSettings.from_env()  # a missing/malformed setting fails the cold start, naming it
store.bind(settings)
logger = Logger()  # service from POWERTOOLS_SERVICE_NAME
sqs = LazyClient("sqs")  # requeues and dead-lettering only
spotify = SpotifyClient(
    api_url=settings.spotify_api_url,
    accounts_url=settings.spotify_accounts_url,
    credentials=ssm_credentials(settings.spotify_client_id_param, settings.spotify_client_secret_param),
    pool_size=settings.user_concurrency,
)
cipher = TokenCipher(LazyClient("kms"), settings.token_key_id)  # data keys are cached (at most an hour)
archiver = Archiver(spotify, cipher, Cadence(
    default_s=settings.poll_cadence_minutes * 60,
    max_s=settings.max_poll_cadence_minutes * 60,
    min_s=settings.dispatch_period_minutes * 60,
    busy_plays=settings.busy_plays,
), dedup_tolerance_s=settings.dedup_tolerance_s)
# Whole messages are idempotent: a duplicate delivery costs one conditional put and returns the
# first delivery's report. (Each user's poll is stamped with its run on the user item itself.)
persistence = DynamoDBPersistenceLayer(table_name=settings.idempotency_table)
idempotency = IdempotencyConfig(expires_after_seconds=MESSAGE_IDEMPOTENCY_EXPIRY_S, raise_on_no_idempotency_key=True)
# Every record is answered in batchItemFailures, even when all fail: one uniform contract.
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


def _record_metrics(outcome: BatchOutcome) -> None:
    m.count(m.USERS_ARCHIVED, outcome.successful)
    m.count(m.USERS_SKIPPED, outcome.skipped)
    for failure_type, count in sorted(outcome.failures_by_type.items()):
        m.count_failure(failure_type, count)
    app_failures = sum(1 for r in outcome.results if r.failure_type == "APP")
    if app_failures:
        m.count(m.SPOTIFY_APP_FAILURES, app_failures)
    m.count(m.PLAYS_ARCHIVED, outcome.plays_archived)
    m.count(m.NEW_TRACKS, outcome.new_tracks)
    m.count(m.LATE_PLAYS, outcome.late_plays)
    m.count(m.BAD_ITEMS, outcome.bad_items)
    if outcome.deferred:
        # A quota 429 is a rate limit too (core, alarmed); QuotaExceeded (detailed) tells it apart.
        m.count(m.RATE_LIMITED, len(outcome.deferred))
        if outcome.quota_exceeded:
            m.count(m.QUOTA_EXCEEDED, len(outcome.deferred))
    m.record_duration_ms(m.BATCH_DURATION, outcome.duration_ms)


@idempotent_function(data_keyword_argument="message", persistence_store=persistence, config=idempotency,
                     output_serializer=None)
def archive_message(*, message: dict[str, Any], lambda_context: Any) -> dict[str, Any]:
    """One work message's users; raises (so the record fails and the message is redelivered) only on an
    infrastructure error that outlasts INFRA_REQUEUES requeues."""
    work = WorkMessage.model_validate(message)
    budget = Budget(lambda_context.get_remaining_time_in_millis)
    try:
        outcome = archive_batch(
            work.users,
            archiver=archiver,
            budget=budget,
            run_id=work.window_id,
            due_by=datetime.fromtimestamp(work.not_before, UTC),
            concurrency=settings.user_concurrency,
            min_remaining_ms=settings.min_remaining_ms,
            writes_reserve_ms=settings.writes_reserve_ms,
            poll_worst_case_ms=int(archiver.poll_worst_case_s() * 1000),
        )
    except BatchAborted as aborted:
        _record_metrics(aborted.outcome)
        if work.attempt >= INFRA_REQUEUES:  # AWS keeps failing: SQS redelivers, then the DLQ and its alarm
            logger.error("batch aborted by an infrastructure error; the message will be redelivered",
                         extra={"batch": aborted.outcome.report(), "error": str(aborted.__cause__)})
            raise
        # A throttle or blip: the users not done come back in seconds as a new message (attempt + 1), not
        # after the 12-minute visibility timeout of a redelivery, which five blips would turn into a DLQ
        # message of healthy users and an hour without polls for heavy listeners.
        delay_s = INFRA_BACKOFF_S * 2 ** work.attempt
        _requeue_not_done(work, aborted.outcome.unstarted, delay_s)
        logger.warning("batch aborted by an infrastructure error; users not done requeued",
                       extra={"batch": aborted.outcome.report(), "error": str(aborted.__cause__),
                              "users": len(aborted.outcome.unstarted), "delay_s": delay_s})
        return aborted.outcome.report()
    _record_metrics(outcome)
    logger.info("batch archived", extra={"batch": outcome.report()})
    if outcome.deferred:
        logger.warning("Spotify cannot be polled now (app-wide gate): users left due for the dispatcher",
                       extra={"users": len(outcome.deferred), "quota_exceeded": outcome.quota_exceeded,
                              "deferred_until": outcome.deferred_until.isoformat() if outcome.deferred_until else None})
    if outcome.unstarted:
        # Out of time: the users not done come back as a new message, due now; this one succeeds.
        _requeue_not_done(work, outcome.unstarted, delay_s=0)
        logger.warning("out of time: users not done requeued", extra={"users": len(outcome.unstarted)})
    return outcome.report()


def _requeue_not_done(work: WorkMessage, users: list[str], delay_s: float) -> None:
    """The users a message did not get to, as a new message of the same run due `delay_s` from now."""
    now = clock.now()
    requeue(sqs, settings.work_queue_url, users, not_before=math.ceil(now.timestamp() + delay_s),
            window_id=work.window_id, now=now, attempt=work.attempt + 1)
    m.count(m.USERS_REQUEUED, len(users))


def _dead_letter(record: SQSRecord, reason: str) -> None:
    """Straight to the DLQ with the reason: a malformed message is never retried five times."""
    sqs.send_message(
        QueueUrl=settings.dead_letter_queue_url,
        MessageBody=record.body,
        MessageAttributes={"rejected_because": {"DataType": "String", "StringValue": reason[:1000]}},
    )


def record_handler(record: SQSRecord, lambda_context: Any) -> str:
    logger.remove_keys(["window_id"])
    logger.append_keys(message_id=record.message_id)
    now = clock.now()
    try:
        message = parse_body(record.body, now)
    except MalformedMessage as exc:
        _dead_letter(record, str(exc))
        m.count(m.MALFORMED_MESSAGES)
        logger.error(f"{exc}: moved to the dead-letter queue",
                     extra={"receive_count": record.attributes.approximate_receive_count})
        return "dead-lettered"
    logger.append_keys(window_id=message.window_id)

    if message.not_before - now.timestamp() > NOT_BEFORE_SLACK_S:
        delay = requeue(sqs, settings.work_queue_url, message.users, not_before=message.not_before,
                        window_id=message.window_id, now=now, attempt=message.attempt)
        m.count(m.MESSAGES_NOT_YET_DUE)
        logger.info("not due yet: requeued", extra={"users": len(message.users), "delay_s": delay,
                                                    "not_before": message.not_before})
        return "requeued"

    idempotency.register_lambda_context(lambda_context)
    archive_message(message=message.model_dump(), lambda_context=lambda_context)
    return "archived"


@logger.inject_lambda_context(correlation_id_path="Records[0].messageId")
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                    context=context)
