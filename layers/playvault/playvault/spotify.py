"""Spotify accounts + Web API client (requests): token grants, /me, recently-played.

Retries live here and nowhere else: 5xx, timeouts, connection errors and malformed JSON are retried
with exponential backoff and full jitter inside the caller's time budget, then become NETWORK; a 429
is waited out in-process only when Retry-After is short and fits the budget, otherwise it surfaces
as RateLimited so the caller defers the work app-wide (a quota 429, whose JSON body says
`QUOTA_EXCEEDED`, is told apart). Token and secret values never appear in a log line or an
exception message.

A refresh grant is never sent twice blindly: Spotify may rotate the refresh token, so once a refresh
request may have reached Spotify (read timeout, connection dropped after sending) its answer may
hold the only valid token. Such a refresh fails as RefreshOutcomeUnknown (a NETWORK failure: a
short cooldown, never needs_reauth) and the next poll starts again from the stored token. Only a
refresh that certainly did nothing (connect timeout, a 500 or 503 answer) is retried at once.

recently-played is read whole every poll: Spotify keeps the last 50 plays, so one request with
`limit=50` and no cursor returns everything it still has, late plays included. `next` links are
therefore never followed (there is nothing beyond the 50).
"""

from __future__ import annotations

import base64
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from playvault import clock
from playvault.failures import (
    AuthFailed,
    CredentialsUnavailable,
    NetworkFailure,
    OutOfTime,
    RateLimited,
    RefreshOutcomeUnknown,
    UnknownFailure,
    credentials_read_failure,
    token_endpoint_failure,
    web_api_failure,
)
from playvault.normalize import Page, PayloadError, parse_page

MAX_PAGE = 50  # Spotify keeps the last 50 plays; limit is 1..50


class AccountNotAllowListed(AuthFailed):
    """/me answered 403: a development-mode app serves only the accounts on its allow-list (Spotify
    dashboard > User Management). The operator's to fix, not the visitor's and not a Spotify outage."""


@dataclass(frozen=True)
class Credentials:
    client_id: str
    client_secret: str

    def __repr__(self) -> str:  # never print the secret, even in a traceback's locals
        return f"Credentials(client_id={self.client_id!r}, client_secret=***)"


@dataclass(frozen=True)
class TokenGrant:
    access_token: str
    expires_at: datetime
    refresh_token: str | None  # None when Spotify did not rotate it: keep the old one
    scope: str = ""

    def __repr__(self) -> str:
        return f"TokenGrant(expires_at={self.expires_at.isoformat()}, rotated={self.refresh_token is not None})"


class Budget:
    """Time left for this piece of work, from Lambda's get_remaining_time_in_millis or a deadline."""

    def __init__(self, remaining_ms: Callable[[], int], reserve_ms: int = 0):
        self._remaining_ms = remaining_ms
        self._reserve_ms = reserve_ms

    @classmethod
    def seconds(cls, seconds: float) -> Budget:
        deadline = time.monotonic() + seconds
        return cls(lambda: int((deadline - time.monotonic()) * 1000))

    def remaining_s(self) -> float:
        return max(0.0, (self._remaining_ms() - self._reserve_ms) / 1000)


class _Retry(Exception):
    """Internal: this attempt failed in a retryable way."""

    def __init__(self, reason: str, wait_s: float | None = None, *, maybe_delivered: bool = True,
                 quota: bool = False):
        super().__init__(reason)
        self.wait_s = wait_s
        self.maybe_delivered = maybe_delivered  # the request may have reached Spotify
        self.quota = quota


class SpotifyClient:
    def __init__(
        self,
        *,
        api_url: str,
        accounts_url: str,
        credentials: Callable[[], Credentials],
        pool_size: int = 16,
        connect_timeout_s: float = 3.05,
        read_timeout_s: float = 10.0,
        max_attempts: int = 3,
        backoff_base_s: float = 0.25,
        max_inline_wait_s: float = 5.0,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.api_url = api_url.rstrip("/")
        self.accounts_url = accounts_url.rstrip("/")
        self._credentials = credentials
        self._timeouts = (connect_timeout_s, read_timeout_s)
        self._max_attempts = max_attempts
        self._backoff_base_s = backoff_base_s
        self._max_inline_wait_s = max_inline_wait_s
        self._sleep = sleep
        self._random = random.Random()
        if session is None:
            session = requests.Session()
            # One pool sized to the worker's thread pool: connections are reused, never queued.
            adapter = HTTPAdapter(pool_connections=2, pool_maxsize=pool_size, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
        self.session = session

    # -- accounts -------------------------------------------------------------------------------
    @property
    def call_timeout_s(self) -> float:
        """The longest one attempt of a call may wait for Spotify (connect + read timeout)."""
        return sum(self._timeouts)

    def refresh(self, refresh_token: str, budget: Budget) -> TokenGrant:
        return self._token({"grant_type": "refresh_token", "refresh_token": refresh_token}, budget,
                           resend_if_maybe_delivered=False)

    def exchange_code(self, code: str, code_verifier: str, redirect_uri: str, budget: Budget) -> TokenGrant:
        return self._token(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": code_verifier,
            },
            budget,
        )

    def app_token(self, budget: Budget) -> TokenGrant:
        """An app access token (client credentials): catalog lookups need no user."""
        return self._token({"grant_type": "client_credentials"}, budget)

    def _token(self, form: dict[str, str], budget: Budget, *, resend_if_maybe_delivered: bool = True) -> TokenGrant:
        creds = self._credentials()
        basic = base64.b64encode(f"{creds.client_id}:{creds.client_secret}".encode()).decode()
        response = self._send(
            "POST",
            f"{self.accounts_url}/api/token",
            budget,
            data=form,
            headers={"Authorization": f"Basic {basic}"},
            what="token",
            resend_if_maybe_delivered=resend_if_maybe_delivered,
        )
        if response.status_code != 200:
            raise token_endpoint_failure(response.status_code, _oauth_error(response))
        body = self._json(response)
        try:
            return TokenGrant(
                access_token=str(body["access_token"]),
                expires_at=clock.now() + timedelta(seconds=int(body.get("expires_in", 3600))),
                refresh_token=body.get("refresh_token") or None,
                scope=str(body.get("scope", "")),
            )
        except (KeyError, TypeError, ValueError):
            raise UnknownFailure("token endpoint answered without an access_token") from None

    # -- Web API ----------------------------------------------------------------------------------
    def me(self, access_token: str, budget: Budget) -> dict[str, Any]:
        response = self._send(
            "GET", f"{self.api_url}/me", budget, headers={"Authorization": f"Bearer {access_token}"}, what="api"
        )
        if response.status_code == 403:
            raise AccountNotAllowListed("Spotify answered 403 to /me (account not on the app's allow-list)")
        if response.status_code != 200:
            raise web_api_failure(response.status_code)
        body = self._json(response)
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise UnknownFailure("/me answered without a user id")
        return body

    def recently_played(self, access_token: str, budget: Budget) -> Page:
        """Every play Spotify still has for the user (its window is the last 50 plays), one request."""
        url = f"{self.api_url}/me/player/recently-played"
        response = self._api("GET", url, access_token, budget, params={"limit": MAX_PAGE})
        try:
            return parse_page(self._json(response))
        except PayloadError as exc:  # the envelope itself is unreadable; single items never get here
            raise UnknownFailure(f"recently-played payload: {exc}") from None

    def track(self, access_token: str, track_id: str, budget: Budget) -> dict[str, Any] | None:
        """GET /tracks/{id}: one track's TrackObject, or None when Spotify does not know the id."""
        response = self._send("GET", f"{self.api_url}/tracks/{track_id}", budget,
                              headers={"Authorization": f"Bearer {access_token}"}, what="api")
        if response.status_code in (400, 404):
            return None
        if response.status_code != 200:
            raise web_api_failure(response.status_code)
        body = self._json(response)
        if not isinstance(body, dict) or body.get("id") != track_id:
            raise UnknownFailure("GET /tracks answered without the track asked for")
        return body

    def _api(self, method: str, url: str, access_token: str, budget: Budget, **kwargs: Any) -> requests.Response:
        response = self._send(
            method, url, budget, headers={"Authorization": f"Bearer {access_token}"}, what="api", **kwargs
        )
        if response.status_code != 200:
            raise web_api_failure(response.status_code)
        return response

    # -- transport --------------------------------------------------------------------------------
    def _send(self, method: str, url: str, budget: Budget, *, what: str, resend_if_maybe_delivered: bool = True,
              **kwargs: Any) -> requests.Response:
        for attempt in range(1, self._max_attempts + 1):
            try:
                return self._attempt(method, url, budget, **kwargs)
            except _Retry as retry:
                if retry.maybe_delivered and retry.wait_s is None and not resend_if_maybe_delivered:
                    raise RefreshOutcomeUnknown(f"{what}: {retry}; not resent (Spotify may have rotated the token)"
                                                ) from None
                wait = retry.wait_s
                if wait is None:
                    wait = self._random.uniform(0, self._backoff_base_s * 2 ** (attempt - 1))
                if attempt == self._max_attempts or wait >= budget.remaining_s():
                    if retry.wait_s is not None:  # still rate limited: the app's problem, not the user's
                        raise RateLimited(retry.wait_s, quota=retry.quota) from None
                    raise NetworkFailure(f"{what}: {retry} (after {attempt} attempts)",
                                         server_error=str(retry).startswith("server error")) from None
                self._sleep(wait)
        raise AssertionError("unreachable")

    def _attempt(self, method: str, url: str, budget: Budget, **kwargs: Any) -> requests.Response:
        remaining = budget.remaining_s()
        if remaining <= 0.05:
            # The invocation is ending: the message comes back, the user is not to blame.
            raise OutOfTime("no time left for a Spotify call")
        timeout = (min(self._timeouts[0], remaining), min(self._timeouts[1], remaining))
        try:
            response = self.session.request(method, url, timeout=timeout, **kwargs)
        except requests.ConnectTimeout:  # never connected: nothing was sent
            raise _Retry("timed out connecting", maybe_delivered=False) from None
        except requests.Timeout:
            raise _Retry("timed out") from None
        except requests.ConnectionError:
            raise _Retry("connection failed") from None
        if response.status_code >= 500:
            # 500/503 come from Spotify itself: it did not act on the request. 502/504 come from a
            # gateway that lost Spotify's answer: the request may have been acted on (a rotation).
            raise _Retry(f"server error {response.status_code}", maybe_delivered=response.status_code in (502, 504))
        if response.status_code == 429:
            retry_after = _retry_after_s(response)
            quota = _is_quota(response)
            if not quota and retry_after <= self._max_inline_wait_s and retry_after < budget.remaining_s():
                raise _Retry("rate limited briefly", wait_s=retry_after)
            raise RateLimited(retry_after, quota=quota)
        if response.status_code == 200:
            try:
                response.parsed = response.json()  # type: ignore[attr-defined]
            except ValueError:
                raise _Retry("malformed JSON") from None
        return response

    @staticmethod
    def _json(response: requests.Response) -> Any:
        return response.parsed  # type: ignore[attr-defined]  # validated in _attempt


def _retry_after_s(response: requests.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "1")))
    except ValueError:
        return 1.0


def _is_quota(response: requests.Response) -> bool:
    """A quota 429 (since July 2026) says so in its JSON body: {"reason": "QUOTA_EXCEEDED", ...}."""
    try:
        body = response.json()
    except ValueError:
        return False
    if not isinstance(body, dict):
        return False
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    return "QUOTA_EXCEEDED" in (str(body.get("reason", "")), str(error.get("reason", "")))


def _oauth_error(response: requests.Response) -> str:
    try:
        return str(response.json().get("error", ""))[:64]
    except (ValueError, AttributeError):
        return ""


class _Flight:
    """One read of the credentials; callers arriving while it runs wait for it and share its outcome."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.followers = 0
        self.credentials: Credentials | None = None
        self.failure: CredentialsUnavailable | None = None
        self.crash = ""  # the type of an unexpected exception the read died of


class CredentialsLoader:
    """The app's client id and secret from SSM Parameter Store, through Powertools Parameters (cached
    `max_age_s` per container). Calling it returns Credentials or raises CredentialsUnavailable (an
    app-level failure: no user is to blame).

    Single flight: one read runs at a time per container. When the cache has expired and every user
    thread of the worker asks at once, one thread calls SSM (one GetParameter per parameter) and the
    others wait for it and share its credentials or its failure, instead of spending SSM's throughput
    (40 GetParameter per second, shared by the whole account and region) on the same answer.
    A caller arriving after a read has ended starts a new one (from the cache, or SSM again).
    """

    def __init__(self, client_id_param: str, client_secret_param: str, max_age_s: int = 300):
        self.client_id_param = client_id_param
        self.client_secret_param = client_secret_param
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._flight: _Flight | None = None

    @property
    def waiting(self) -> int:
        """Callers waiting for the read in flight now (0 when none runs)."""
        with self._lock:
            return self._flight.followers if self._flight is not None else 0

    def __call__(self) -> Credentials:
        with self._lock:
            flight, leader = self._flight, self._flight is None
            if flight is None:
                flight = self._flight = _Flight()
            else:
                flight.followers += 1
        if not leader:
            flight.done.wait()
            if flight.failure is not None:  # a copy each: one exception object raised in many threads tangles
                raise CredentialsUnavailable(str(flight.failure), transient=flight.failure.transient)
            if flight.credentials is None:  # the reader died of a bug: share that, don't each read again
                raise CredentialsUnavailable(f"cannot read the Spotify app credentials ({flight.crash})",
                                             transient=False)
            return flight.credentials
        try:
            flight.credentials = self._read()
            return flight.credentials
        except CredentialsUnavailable as failure:
            flight.failure = failure
            raise
        except BaseException as crash:
            flight.crash = type(crash).__name__
            raise
        finally:
            with self._lock:
                self._flight = None
            flight.done.set()

    def _read(self) -> Credentials:
        from aws_lambda_powertools.utilities import parameters
        from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError
        from botocore.exceptions import BotoCoreError

        values = []
        for name, decrypt in ((self.client_id_param, False), (self.client_secret_param, True)):
            try:
                values.append(str(parameters.get_parameter(name, decrypt=decrypt, max_age=self.max_age_s)))
            except (GetParameterError, BotoCoreError) as exc:  # BotoCoreError: Powertools built no client
                raise credentials_read_failure(name, exc) from None
        return Credentials(client_id=values[0], client_secret=values[1])

    def __repr__(self) -> str:
        return f"CredentialsLoader({self.client_id_param!r}, {self.client_secret_param!r})"


def ssm_credentials(client_id_param: str, client_secret_param: str, max_age_s: int = 300) -> CredentialsLoader:
    """The app's credentials loader for one container (see CredentialsLoader): build it once, at cold start."""
    return CredentialsLoader(client_id_param, client_secret_param, max_age_s)
