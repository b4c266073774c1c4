"""Dispatcher: the EventBridge schedule -> playvault.dispatch (pick due users, batch, spread, send),
then playvault.lifecycle once per run (authorization expiry counts and reminders, seat reclaim), both
from one Scan of the users table."""

from __future__ import annotations

from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel

from playvault import clock, store
from playvault.aws import LazyClient
from playvault.config import DispatcherSettings
from playvault.dispatch import dispatch
from playvault.lifecycle import Lifecycle
from playvault.metrics import metrics
from playvault.store import users

settings = DispatcherSettings.from_env()  # a missing/malformed setting fails the cold start, naming it
store.bind(settings)
logger = Logger()  # service from POWERTOOLS_SERVICE_NAME
sqs = boto3.client("sqs")
LIFECYCLE_RESERVE_MS = 30_000  # stop sending reminders with this much left; the next run sends the rest
# SES and KMS only when a NotificationSender is set (the template grants them only then).
lifecycle = Lifecycle.from_settings(settings, ses_client=LazyClient("ses"), kms_client=LazyClient("kms"))


@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE)
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    scheduled = parse(event=event, model=EventBridgeModel)
    logger.info("scheduled dispatch", extra={"event_time": scheduled.time.isoformat(),
                                             "rule": scheduled.resources[:1]})
    now = clock.now()
    for_lifecycle: list[users.PollingState] = []
    report = dispatch(now, settings, sqs, lifecycle.set_aside(now, users.scan_polling_state(), for_lifecycle))
    # After the dispatch: a lifecycle failure must not keep anyone from being polled this run.
    lifecycle_report = lifecycle.run(now, for_lifecycle,
                                     out_of_time=lambda: context.get_remaining_time_in_millis() < LIFECYCLE_RESERVE_MS)
    return {**report.to_dict(), "lifecycle": lifecycle_report.to_dict()}
