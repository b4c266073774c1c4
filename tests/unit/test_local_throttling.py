"""The local run's SSM throttling (telemetry.AwsCallHooks) and its ledger of who was charged for it
(chaos.AppFaultLedger)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace

import boto3
import pytest
from botocore.exceptions import ClientError

from playvault_local.chaos import AppFaultLedger
from playvault_local.simclock import SimClock
from playvault_local.telemetry import AwsCallHooks


@pytest.fixture
def hooks(monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsCallHooks]:
    from moto import mock_aws

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    installed = AwsCallHooks(ssm_throttle_rate=1.0, seed=1, clock=lambda: 1000.4)
    installed.install()
    try:
        with mock_aws():
            yield installed
    finally:
        installed.uninstall()


def test_get_parameter_is_throttled_as_ssm_answers_only_while_enabled(hooks):
    faults: list[str] = []
    hooks.on_fault = faults.append
    ssm = boto3.client("ssm", region_name="us-east-1")
    ssm.put_parameter(Name="/p", Value="v", Type="String")
    assert ssm.get_parameter(Name="/p")["Parameter"]["Value"] == "v", "not enabled yet: no throttling"

    hooks.enabled = True
    with pytest.raises(ClientError) as caught:
        ssm.get_parameter(Name="/p")
    assert caught.value.response["Error"] == {"Code": "ThrottlingException", "Message": "Rate exceeded"}
    ssm.put_parameter(Name="/q", Value="w", Type="String")  # only GetParameter is throttled
    assert hooks.ssm_throttled == 1
    assert hooks.ssm_calls == {"PutParameter": 2, "GetParameter": 2}
    assert hooks.ssm_calls_per_second == {1000: 2}
    assert faults == ["ssm"]  # the ledger learns it in the calling thread


def test_the_ledger_charges_only_polls_that_met_an_app_fault_and_still_failed():
    ledger = AppFaultLedger(SimClock(datetime(2025, 1, 1, tzinfo=UTC)))

    def read_credentials() -> None:
        raise RuntimeError("SSM throttled")

    credentials = ledger.wrap_credentials(read_credentials)

    def archive_user(user_id: str) -> SimpleNamespace:
        if user_id == "own-fault":  # Spotify failed this user: their own failure, not the app's
            return SimpleNamespace(status="failed", failure_type="NETWORK")
        try:
            credentials()
        except RuntimeError:
            if user_id == "charged":
                return SimpleNamespace(status="failed", failure_type="UNKNOWN")
            return SimpleNamespace(status="deferred", failure_type="APP")
        raise AssertionError("unreachable")

    poll = ledger.wrap_poll(archive_user)
    for user_id in ("own-fault", "deferred", "charged"):
        poll(user_id)
    ledger.fault("dynamodb")  # between polls (the message's idempotency record): nobody's poll

    report = ledger.report()
    assert report["users_charged_for_app_failures"] == ["charged"]
    assert report["charges"] == [{"user_id": "charged", "faults": ["ssm"], "outcome": "failed:UNKNOWN"}]
    assert report["polls_hit"] == {"ssm": 2, "dynamodb": 0}
    assert report["outcomes_of_polls_hit"] == {"deferred": 1, "failed:UNKNOWN": 1}
    assert report["faults_outside_polls"] == {"dynamodb": 1}
