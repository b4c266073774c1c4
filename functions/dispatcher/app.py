"""Dispatcher: the EventBridge schedule -> playvault.dispatch (pick due users, batch, spread, send)."""

from __future__ import annotations

from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel

from playvault import clock, store
from playvault.config import DispatcherSettings
from playvault.dispatch import dispatch
from playvault.metrics import metrics

settings = DispatcherSettings.from_env()  # a missing/malformed setting fails the cold start, naming it
store.bind(settings)
logger = Logger()  # service from POWERTOOLS_SERVICE_NAME
sqs = boto3.client("sqs")


@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE)
@metrics.log_metrics
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    scheduled = parse(event=event, model=EventBridgeModel)
    logger.info("scheduled dispatch", extra={"event_time": scheduled.time.isoformat(),
                                             "rule": scheduled.resources[:1]})
    report = dispatch(clock.now(), settings, sqs)
    return report.to_dict()
