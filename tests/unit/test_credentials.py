"""The app's Spotify credentials from SSM (playvault.spotify.CredentialsLoader): one read at a time per
container, shared by the threads that wait for it, and a failed read is the app's failure."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.parameters import base as parameters_base
from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError
from aws_lambda_powertools.utilities.parameters.ssm import SSMProvider
from botocore.exceptions import ClientError, EndpointConnectionError

from playvault.failures import AppFailure, CredentialsUnavailable, FailureType, credentials_read_failure
from playvault.spotify import Credentials, CredentialsLoader, ssm_credentials

ID_PARAM, SECRET_PARAM = "/test/spotify/client-id", "/test/spotify/client-secret"
SECRET = "s3cr3t-value-never-shown"  # noqa: S105 - a test value
THREADS = 12


class SSM:
    """moto's SSM behind Powertools' default provider, every GetParameter counted (botocore hook);
    `gate` holds the first call until the test lets it go; `refuse` makes calls fail with that code."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.refuse: str | None = None
        self.hold: threading.Event | None = None
        self.before_answer: Any = None
        self.client = boto3.client("ssm", region_name="us-east-1")
        self.client.put_parameter(Name=ID_PARAM, Value="the-client-id", Type="String")
        self.client.put_parameter(Name=SECRET_PARAM, Value=SECRET, Type="SecureString")
        self.client.meta.events.register("before-parameter-build.ssm.GetParameter", self._called)
        parameters.clear_caches()
        parameters_base.DEFAULT_PROVIDERS["ssm"] = SSMProvider(boto3_client=self.client)

    def _called(self, params: dict[str, Any], **_: Any) -> None:
        self.calls[params["Name"]] += 1
        if self.before_answer is not None:
            self.before_answer()
        if self.refuse:
            raise ClientError({"Error": {"Code": self.refuse, "Message": "Rate exceeded"},
                               "ResponseMetadata": {"HTTPStatusCode": 400}}, "GetParameter")


@pytest.fixture
def ssm(monkeypatch: pytest.MonkeyPatch) -> Iterator[SSM]:
    from moto import mock_aws

    for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        yield SSM()
    parameters.clear_caches()


def later(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Powertools' cache clock `seconds` ahead: entries older than max_age have expired."""
    real = datetime

    class Later(real):
        @classmethod
        def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
            return real.now(tz) + timedelta(seconds=seconds)

    monkeypatch.setattr(parameters_base, "datetime", Later)


def all_at_once(loader: CredentialsLoader, ssm: SSM) -> list[Credentials | BaseException]:
    """THREADS callers at once; SSM answers the first one only once all the others are waiting for it."""
    def everyone_waiting() -> None:
        deadline = time.monotonic() + 10  # a safety net for a broken loader, not a timing assertion
        while loader.waiting < THREADS - 1 and time.monotonic() < deadline:
            time.sleep(0.001)

    ssm.before_answer = everyone_waiting
    results: list[Credentials | BaseException] = [None] * THREADS  # type: ignore[list-item]

    def call(i: int) -> None:
        try:
            results[i] = loader()
        except BaseException as exc:  # noqa: BLE001 - the test looks at what each caller got
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ssm.before_answer = None
    return results


def test_threads_asking_at_once_after_the_cache_expired_make_one_read_per_parameter(ssm, monkeypatch):
    loader = ssm_credentials(ID_PARAM, SECRET_PARAM, max_age_s=300)
    assert loader() == Credentials("the-client-id", SECRET)
    assert ssm.calls == {ID_PARAM: 1, SECRET_PARAM: 1}
    loader()
    assert ssm.calls == {ID_PARAM: 1, SECRET_PARAM: 1}, "within max_age: Powertools' cache answers"

    later(monkeypatch, 301)  # the 5-minute cache has expired
    results = all_at_once(loader, ssm)
    assert results == [Credentials("the-client-id", SECRET)] * THREADS
    assert ssm.calls == {ID_PARAM: 2, SECRET_PARAM: 2}, "one GetParameter per parameter for all the threads"


def test_threads_waiting_for_a_throttled_read_share_its_failure(ssm, monkeypatch):
    loader = ssm_credentials(ID_PARAM, SECRET_PARAM)
    ssm.refuse = "ThrottlingException"
    results = all_at_once(loader, ssm)
    assert all(isinstance(r, CredentialsUnavailable) for r in results), results
    assert ssm.calls == {ID_PARAM: 1}, "the waiting threads did not each ask SSM again"
    failure = results[0]
    assert isinstance(failure, AppFailure) and failure.failure_type == FailureType.APP
    assert failure.transient and failure.defer_s == CredentialsUnavailable.transient_defer_s
    assert str(failure) == (f"cannot read the Spotify app credentials from SSM parameter {ID_PARAM} "
                            "(ThrottlingException)")
    assert len({id(r) for r in results}) == THREADS, "each caller raises its own exception object"

    ssm.refuse = None  # no negative cache: the next caller reads again
    assert loader() == Credentials("the-client-id", SECRET)
    assert ssm.calls == {ID_PARAM: 2, SECRET_PARAM: 1}


def test_a_missing_parameter_is_the_operators_to_fix_and_names_no_secret(ssm):
    ssm.client.delete_parameter(Name=SECRET_PARAM)
    loader = ssm_credentials(ID_PARAM, SECRET_PARAM)
    with pytest.raises(CredentialsUnavailable) as caught:
        loader()
    assert not caught.value.transient and caught.value.defer_s == AppFailure.defer_s
    assert str(caught.value) == (f"cannot read the Spotify app credentials from SSM parameter {SECRET_PARAM} "
                                 "(ParameterNotFound)")
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def _wrapped(exc: BaseException) -> GetParameterError:
    """As Powertools raises it: GetParameterError raised while handling the AWS error."""
    try:
        try:
            raise exc
        except Exception as inner:  # noqa: BLE001 - any AWS error, as Powertools catches it
            raise GetParameterError(str(inner))  # noqa: B904 - exactly as Powertools does
    except GetParameterError as wrapped:
        return wrapped


@pytest.mark.parametrize(("error", "code", "transient"), [
    (ClientError({"Error": {"Code": "AccessDeniedException", "Message": "not authorized"}}, "GetParameter"),
     "AccessDeniedException", False),
    (ClientError({"Error": {"Code": "InternalServerError", "Message": "oops"}}, "GetParameter"),
     "InternalServerError", True),
    (EndpointConnectionError(endpoint_url="https://ssm.us-east-1.amazonaws.com"), "EndpointConnectionError", True),
])
def test_what_a_failed_read_means(error, code, transient):
    failure = credentials_read_failure(SECRET_PARAM, _wrapped(error))
    assert (failure.transient, failure.defer_s) == (transient, 60.0 if transient else 900.0)
    assert str(failure).endswith(f"{SECRET_PARAM} ({code})")


def test_a_client_that_cannot_even_be_built_is_one_failure_shared_not_a_read_per_thread(ssm, monkeypatch):
    """Powertools builds its SSM client outside its own error wrapping: a NoRegionError (or no
    credentials) arrives bare. It is still the app's failure, read once, shared by the waiting threads."""
    from botocore.exceptions import NoRegionError

    def no_region(*_: Any, **__: Any) -> Any:
        ssm.calls["built"] += 1
        ssm.before_answer()
        raise NoRegionError()

    provider = parameters_base.DEFAULT_PROVIDERS["ssm"]
    ssm.before_answer = lambda: None
    monkeypatch.setattr(provider, "get", no_region)
    loader = ssm_credentials(ID_PARAM, SECRET_PARAM)
    results = all_at_once(loader, ssm)
    assert all(isinstance(r, CredentialsUnavailable) for r in results), results
    assert ssm.calls["built"] == 1, "the waiting threads did not each try again in turn"
    assert "(NoRegionError)" in str(results[0]) and not results[0].transient
