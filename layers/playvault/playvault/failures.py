"""Failure types and the single mapping from Spotify/AWS errors to them.

Spotify: the client (spotify.py) retries what can be retried and then asks token_endpoint_failure /
web_api_failure what a final answer means; transport errors after retries are NETWORK.

Two families:
- user failures (the user's own problem: AUTH, AUTH_REVOKED, NETWORK, UNKNOWN) are recorded in the
  circuit breaker and never fail the SQS message;
- infrastructure failures (DynamoDB throttling/unavailable, running out of time) fail the message so
  SQS redelivers it; RATE_LIMITED defers the work app-wide.
"""

from __future__ import annotations

from enum import StrEnum

from botocore.exceptions import BotoCoreError, ClientError
from pynamodb.exceptions import PynamoDBException


class FailureType(StrEnum):
    AUTH = "AUTH"
    AUTH_REVOKED = "AUTH_REVOKED"
    NETWORK = "NETWORK"
    RATE_LIMITED = "RATE_LIMITED"
    APP = "APP"  # the app's own failure (credentials, outage): never a user's
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

    def __init__(self, message: str, server_error: bool = False):
        super().__init__(message)
        self.server_error = server_error  # Spotify answered 5xx (rather than a timeout or a reset)


class UnknownFailure(SpotifyFailure):
    failure_type = FailureType.UNKNOWN


class RefreshOutcomeUnknown(NetworkFailure):
    """A refresh request may have reached Spotify but its answer was lost: it is not resent (a
    rotated refresh token may have been in it); the next poll starts from the stored token."""


class RateLimited(SpotifyFailure):
    """429 whose Retry-After is too long to wait in-process: defer the work app-wide.
    `quota`: the 429's body said QUOTA_EXCEEDED (the app's quota, not the rolling rate limit)."""

    failure_type = FailureType.RATE_LIMITED

    def __init__(self, retry_after_s: float, quota: bool = False):
        kind = "quota exceeded" if quota else "rate limited"
        super().__init__(f"{kind} by Spotify for {retry_after_s:.0f} s")
        self.retry_after_s = retry_after_s
        self.quota = quota


class AppFailure(SpotifyFailure):
    """The app, not the user, is failing (wrong or rotated client secret, unusable client id,
    Spotify failing every user): never counted against a user; the work is deferred app-wide."""

    failure_type = FailureType.APP
    defer_s: float = 900.0


class AppCredentialsRejected(AppFailure):
    """invalid_client: the client id or secret in SSM is wrong (rotated?)."""


class SpotifyUnavailable(AppFailure):
    """Spotify answered several users in a row with server errors: an outage, not a user's problem."""

    defer_s = 300.0


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


def token_endpoint_failure(status: int, oauth_error: str) -> SpotifyFailure:
    """What a final non-200 answer of the accounts service's /api/token means (after retries)."""
    if status == 400 and oauth_error == "invalid_grant":
        return AuthRevoked("Spotify refused the grant (invalid_grant): the user must sign in again")
    if oauth_error in ("invalid_client", "unauthorized_client"):
        return AppCredentialsRejected(f"Spotify rejected the app's credentials ({oauth_error}): check the "
                                      "client id and secret in SSM")
    if status in (400, 401):
        return AuthFailed(f"token endpoint answered {status} {oauth_error}".rstrip())
    return UnknownFailure(f"token endpoint answered {status}")


def web_api_failure(status: int) -> SpotifyFailure:
    """What a final non-200 answer of the Web API means (5xx and 429 are handled by the retries)."""
    if status == 401:
        return AuthFailed("Spotify answered 401 to the access token")
    if status == 403:
        return AuthFailed("Spotify answered 403 (scope missing or user not allow-listed)")
    if status >= 500:
        return NetworkFailure(f"Spotify answered {status}")
    return UnknownFailure(f"Spotify answered {status}")
