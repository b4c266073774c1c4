"""Failure types and the single mapping from Spotify/AWS errors to them.

Two families:
- user failures (the user's own problem: AUTH, AUTH_REVOKED, NETWORK, UNKNOWN) are recorded in the
  circuit breaker and never fail the SQS message;
- infrastructure failures (DynamoDB throttling/unavailable, running out of time) fail the message so
  SQS redelivers it; RATE_LIMITED defers the work app-wide.
"""

from __future__ import annotations

from enum import StrEnum

import requests
from botocore.exceptions import BotoCoreError, ClientError
from pynamodb.exceptions import PynamoDBException


class FailureType(StrEnum):
    AUTH = "AUTH"
    AUTH_REVOKED = "AUTH_REVOKED"
    NETWORK = "NETWORK"
    RATE_LIMITED = "RATE_LIMITED"
    UNKNOWN = "UNKNOWN"


class SpotifyFailure(Exception):
    failure_type: FailureType = FailureType.UNKNOWN


class AuthFailed(SpotifyFailure):
    failure_type = FailureType.AUTH


class AuthRevoked(SpotifyFailure):
    """invalid_grant: the refresh token is revoked or expired; only a new sign-in cures it."""

    failure_type = FailureType.AUTH_REVOKED


class NetworkFailure(SpotifyFailure):
    failure_type = FailureType.NETWORK


class UnknownFailure(SpotifyFailure):
    failure_type = FailureType.UNKNOWN


class RateLimited(SpotifyFailure):
    """429 whose Retry-After is too long to wait in-process: defer the work app-wide."""

    failure_type = FailureType.RATE_LIMITED

    def __init__(self, retry_after_s: float):
        super().__init__(f"rate limited by Spotify for {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s


class InfrastructureError(Exception):
    """AWS failed in a way the next delivery can fix: the message must come back."""


class OutOfTime(InfrastructureError):
    """The invocation is about to time out; unstarted work goes back to the queue."""


# AWS errors that are a bug in a request, not a state of AWS: redelivery cannot fix them.
_REQUEST_BUG_CODES = frozenset({"ConditionalCheckFailedException", "ValidationException"})


def aws_error_code(exc: BaseException) -> str | None:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code"))
    if isinstance(exc, PynamoDBException):
        return exc.cause_response_code
    return None


def is_infrastructure_error(exc: BaseException) -> bool:
    """True when AWS, not the user, failed: throttling, unavailability, timeouts, missing permissions.

    Such a failure fails the SQS message, so it is redelivered and, if it persists, lands in the DLQ
    where an operator sees it, instead of counting against every user of the batch.
    """
    if isinstance(exc, InfrastructureError):
        return True
    if isinstance(exc, ClientError | PynamoDBException | BotoCoreError):
        return aws_error_code(exc) not in _REQUEST_BUG_CODES
    return False


def classify_http_status(status: int) -> FailureType:
    if status == 401:
        return FailureType.AUTH
    if status == 429:
        return FailureType.RATE_LIMITED
    if status >= 500:
        return FailureType.NETWORK
    return FailureType.UNKNOWN


def failure_type_of(exc: BaseException) -> FailureType:
    """The failure type of any exception raised while archiving one user."""
    if isinstance(exc, SpotifyFailure):
        return exc.failure_type
    if isinstance(exc, requests.Timeout | requests.ConnectionError):
        return FailureType.NETWORK
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return classify_http_status(exc.response.status_code)
    return FailureType.UNKNOWN
