"""Failure types and the single mapping from Spotify/AWS errors to them.

Spotify: the client (spotify.py) retries what can be retried and then asks token_endpoint_failure /
web_api_failure what a final answer means; transport errors after retries are NETWORK.

Two families:
- user failures (the user's own problem: AUTH, AUTH_REVOKED, NETWORK, UNKNOWN) are recorded in the
  circuit breaker and never fail the SQS message;
- infrastructure failures (DynamoDB throttling/unavailable, running out of time) fail the message so
  SQS redelivers it; RATE_LIMITED defers the work app-wide, and so do the app's own failures (APP:
  rejected or unreadable client credentials, a Spotify outage).
"""

from __future__ import annotations

from enum import StrEnum

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError, PartialCredentialsError
from pynamodb.exceptions import PynamoDBException


class FailureType(StrEnum):
    AUTH = "AUTH"
    AUTH_REVOKED = "AUTH_REVOKED"
    NETWORK = "NETWORK"
    RATE_LIMITED = "RATE_LIMITED"
    APP = "APP"  # the app's own failure (credentials, outage): never a user's
    UNKNOWN = "UNKNOWN"


# The failure types a user's poll can end in (UsersFailed's FailureType values): rate limits and the
# app's own failures are deferred app-wide and never charged to a user.
USER_FAILURE_TYPES: tuple[FailureType, ...] = (FailureType.AUTH, FailureType.AUTH_REVOKED, FailureType.NETWORK,
                                               FailureType.UNKNOWN)


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


class CredentialsUnavailable(AppFailure):
    """The app's Spotify client id or secret could not be read from SSM Parameter Store (throttled,
    access denied, missing, SSM unavailable). Nothing was sent to Spotify. `transient`: a retry soon
    may succeed (throttling, SSM's own 5xx, network); otherwise the operator must act (IAM, the
    parameter itself), so the gate stays closed as long as for rejected credentials."""

    transient_defer_s = 60.0

    def __init__(self, message: str, *, transient: bool):
        super().__init__(message)
        self.transient = transient
        if transient:
            self.defer_s = self.transient_defer_s


# SSM answers worth retrying in a minute (any other code needs the operator: IAM, the parameter, its key).
_TRANSIENT_READ_CODES = frozenset({"ThrottlingException", "InternalServerError", "ServiceUnavailable",
                                   "RequestTimeout"})


# No client could be built (the function's configuration): waiting a minute will not fix it.
_CLIENT_SETUP_ERRORS = (NoRegionError, NoCredentialsError, PartialCredentialsError)


def credentials_read_failure(parameter: str, exc: BaseException) -> CredentialsUnavailable:
    """What a failed read of an app-credentials parameter means. Powertools wraps every error of the
    fetch in GetParameterError with the AWS error (a ClientError, or a BotoCoreError when nothing
    answered) as its context. The message names the parameter and the AWS error code, never a value."""
    code, transient = None, True
    link: BaseException | None = exc
    while link is not None:
        if isinstance(link, BotoCoreError):  # no answer at all: unreachable, timed out, or no client
            code = type(link).__name__
            transient = not isinstance(link, _CLIENT_SETUP_ERRORS)
            break
        code = aws_error_code(link)
        if code is not None:
            transient = code in _TRANSIENT_READ_CODES
            break
        link = link.__cause__ or link.__context__
    return CredentialsUnavailable(
        f"cannot read the Spotify app credentials from SSM parameter {parameter} ({code or type(exc).__name__})",
        transient=transient)


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
        # Not PynamoDB's cause_response_code: it raises when the cause's `response` is None.
        response = getattr(exc.cause, "response", None)
        code = (response.get("Error") or {}).get("Code") if isinstance(response, dict) else None
        return str(code) if code is not None else None
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


# S3 answers for an object that is not there (HeadObject has no body, hence "404"): an upload past its
# 7-day expiry. Waiting brings it back no more than a redelivery does.
_OBJECT_GONE_CODES = frozenset({"NoSuchKey", "404"})


def import_retries(exc: BaseException) -> bool:
    """True when an import job that `exc` interrupted should be retried (AWS failed), False when it
    ends `failed` (the upload, or a bug: a retry would fail the same way)."""
    return is_infrastructure_error(exc) and aws_error_code(exc) not in _OBJECT_GONE_CODES


def import_failure_reason(exc: BaseException) -> str:
    """What an import job that an exception ended says about it (shown on /me): readable, and never
    the exception's own text, which may quote a request (keys, URLs) or a value from the upload."""
    code = aws_error_code(exc)
    if isinstance(exc, PynamoDBException) and code is None and "max_retry_attempts" in str(exc):
        # BatchWriteItem left items unprocessed through pynamodb's retries: the table throttled the writes.
        return "DynamoDB kept throttling the writes of this import"
    if code in _OBJECT_GONE_CODES:
        return "the uploaded file is gone (uploads are kept 7 days): upload it again"
    if code == "ValidationException" and "size" in str(exc):
        return "the import's status grew past DynamoDB's 400 KB item limit"
    if is_infrastructure_error(exc):
        return f"AWS failed ({code or type(exc).__name__})"
    if isinstance(exc, RecursionError):
        return "data nested too deeply"
    return f"internal error ({type(exc).__name__})"


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
