"""Metric names, namespace and dimensions: the one list the dashboard, the alarms and their test read.

Every metric is core or detailed. Core metrics are always emitted; detailed ones only when the
stack's `DetailedMetrics` parameter is "true" (env DETAILED_METRICS). CloudWatch bills each custom
metric (name + dimension values) past the always-free 10, so the core set stays at most 10 of
them; what a detailed metric says is in the structured log lines either way (the worker's "batch
archived", the dispatcher's "dispatch report", the sign-up function's), which the dashboard's Logs
Insights widgets read.
"""

from __future__ import annotations

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit

from playvault.config import MetricsSettings

NAMESPACE = "PlayVault"
FAILURE_TYPE_DIMENSION = "FailureType"

# dispatcher
USERS_CONSIDERED = "UsersConsidered"
USERS_DISPATCHED = "UsersDispatched"
USERS_IN_COOLDOWN = "UsersInCooldown"
USERS_NEEDING_REAUTH = "UsersNeedingReauth"
MESSAGES_SENT = "MessagesSent"
# dispatcher, authorization lifecycle (playvault.lifecycle): users whose 6-month authorization
# ends within 14 days / has ended while they still hold a seat (reminders and lapses: log lines)
AUTHORIZATIONS_EXPIRING_SOON = "AuthorizationsExpiringSoon"
AUTHORIZATIONS_EXPIRED = "AuthorizationsExpired"
# worker
USERS_ARCHIVED = "UsersArchived"
USERS_SKIPPED = "UsersSkipped"
USERS_FAILED = "UsersFailed"  # with dimension FailureType
PLAYS_ARCHIVED = "PlaysArchived"
NEW_TRACKS = "NewTracks"
GAPS_DETECTED = "GapsDetected"  # from a log metric filter (FROM_LOGS), not EMF
RATE_LIMITED = "RateLimited"
QUOTA_EXCEEDED = "QuotaExceeded"  # users deferred by a quota 429 (told apart from RateLimited)
SPOTIFY_APP_FAILURES = "SpotifyAppFailures"  # invalid_client, outage, credentials unreadable: the app's
LATE_PLAYS = "LatePlays"  # plays archived that appeared after newer ones
BAD_ITEMS = "BadItemsSkipped"  # recently-played items that could not be read
USERS_REQUEUED = "UsersRequeued"  # out of time, or an AWS error: requeued as a new message
MALFORMED_MESSAGES = "MalformedMessages"  # moved straight to the DLQ
MESSAGES_NOT_YET_DUE = "MessagesNotYetDue"  # requeued: its slot in the spread window is ahead
BATCH_DURATION = "BatchDuration"
# auth
SIGN_UPS = "SignUps"
RE_AUTHORIZATIONS = "ReAuthorizations"
WAITLISTED = "Waitlisted"

# name -> (unit, dimension names besides the service dimension)
CATALOG: dict[str, tuple[MetricUnit, tuple[str, ...]]] = {
    USERS_CONSIDERED: (MetricUnit.Count, ()),
    USERS_DISPATCHED: (MetricUnit.Count, ()),
    USERS_IN_COOLDOWN: (MetricUnit.Count, ()),
    USERS_NEEDING_REAUTH: (MetricUnit.Count, ()),
    MESSAGES_SENT: (MetricUnit.Count, ()),
    AUTHORIZATIONS_EXPIRING_SOON: (MetricUnit.Count, ()),
    AUTHORIZATIONS_EXPIRED: (MetricUnit.Count, ()),
    USERS_ARCHIVED: (MetricUnit.Count, ()),
    USERS_SKIPPED: (MetricUnit.Count, ()),
    USERS_FAILED: (MetricUnit.Count, (FAILURE_TYPE_DIMENSION,)),
    PLAYS_ARCHIVED: (MetricUnit.Count, ()),
    NEW_TRACKS: (MetricUnit.Count, ()),
    RATE_LIMITED: (MetricUnit.Count, ()),
    QUOTA_EXCEEDED: (MetricUnit.Count, ()),
    SPOTIFY_APP_FAILURES: (MetricUnit.Count, ()),
    LATE_PLAYS: (MetricUnit.Count, ()),
    BAD_ITEMS: (MetricUnit.Count, ()),
    USERS_REQUEUED: (MetricUnit.Count, ()),
    MALFORMED_MESSAGES: (MetricUnit.Count, ()),
    MESSAGES_NOT_YET_DUE: (MetricUnit.Count, ()),
    BATCH_DURATION: (MetricUnit.Milliseconds, ()),
    SIGN_UPS: (MetricUnit.Count, ()),
    RE_AUTHORIZATIONS: (MetricUnit.Count, ()),
    WAITLISTED: (MetricUnit.Count, ()),
}

# Metrics counted by a CloudWatch Logs metric filter (template.yaml) on a log line: name -> the
# line's message. The line is written the moment the fact is durable, so no crash before an EMF flush
# can lose the datapoint.
GAP_LOG_MESSAGE = "play-history gap"
FROM_LOGS: dict[str, str] = {GAPS_DETECTED: GAP_LOG_MESSAGE}

# Always emitted. UsersFailed is one custom metric per FailureType value: only the values in
# CORE_FAILURE_TYPES are core (AUTH_REVOKED has an alarm); the others are detailed.
CORE: frozenset[str] = frozenset({
    USERS_DISPATCHED,  # dispatcher-missed-run alarm
    USERS_ARCHIVED,
    USERS_FAILED,
    PLAYS_ARCHIVED,
    GAPS_DETECTED,  # gaps-detected alarm (counted from the worker's log line, FROM_LOGS)
    RATE_LIMITED,  # rate-limited-sustained alarm
    SPOTIFY_APP_FAILURES,  # spotify-app-auth alarm
    AUTHORIZATIONS_EXPIRING_SOON,  # who must reconnect soon (6-month expiry)
    AUTHORIZATIONS_EXPIRED,
    SIGN_UPS,
})
CORE_FAILURE_TYPES: frozenset[str] = frozenset({"AUTH_REVOKED"})  # auth-revoked alarm
DETAILED: frozenset[str] = frozenset(CATALOG) - CORE

# Built at import like every settings model: a malformed DETAILED_METRICS fails the cold start.
detailed = MetricsSettings.from_env().detailed_metrics


def enabled(name: str, failure_type: str | None = None) -> bool:
    """Whether this metric (and, for UsersFailed, this FailureType) is emitted in this stack."""
    if detailed:
        return True
    if name == USERS_FAILED:
        return failure_type in CORE_FAILURE_TYPES
    return name in CORE


def custom_metrics(failure_types: list[str], *, detailed_on: bool) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """The custom metrics (name + dimensions besides `service`) a stack can emit: what CloudWatch bills."""
    out: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    for name in sorted((set(CATALOG) | set(FROM_LOGS)) if detailed_on else CORE):
        if name == USERS_FAILED:
            kept = failure_types if detailed_on else sorted(CORE_FAILURE_TYPES)
            out += [(name, ((FAILURE_TYPE_DIMENSION, t),)) for t in kept]
        else:
            out.append((name, ()))
    return out


# Powertools Metrics share their buffer per namespace: every module records into this one and the
# handler's @metrics.log_metrics flushes it once per invocation as EMF.
metrics = Metrics(namespace=NAMESPACE)


def count(name: str, value: float = 1) -> None:
    unit, dims = CATALOG[name]
    if dims:
        raise ValueError(f"metric {name} needs its dimensions {dims}: use count_failure")
    if not enabled(name):
        return
    metrics.add_metric(name=name, unit=unit, value=value)


def count_failure(failure_type: str, value: float = 1) -> None:
    """UsersFailed by FailureType: its own EMF blob, so the dimension does not leak onto other metrics."""
    from aws_lambda_powertools.metrics import single_metric

    if not enabled(USERS_FAILED, failure_type):
        return
    with single_metric(
        name=USERS_FAILED, unit=MetricUnit.Count, value=value, namespace=NAMESPACE
    ) as metric:
        metric.add_dimension(name=FAILURE_TYPE_DIMENSION, value=failure_type)


def record_duration_ms(name: str, value_ms: float) -> None:
    unit, _ = CATALOG[name]
    if not enabled(name):
        return
    metrics.add_metric(name=name, unit=unit, value=value_ms)
