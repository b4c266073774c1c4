"""The chaos run: every fault the archive must survive, at once, and the guarantees checked on the
emulator's ground truth. Then the same run with one guarantee broken, to show the report catches it."""

from __future__ import annotations

import types
from typing import Any

import pytest

from playvault_local.chaos import POISON_BODY, ChaosConfig
from playvault_local.report import verdict
from playvault_local.runner import RunConfig, Simulation

USERS, HOURS = 20, 8


def chaos_run(seed: int = 11, on_ready: Any = None, chaos: ChaosConfig | None = None, users: int = USERS,
              hours: int = HOURS) -> dict[str, Any]:
    config = RunConfig(users=users, hours=hours, seed=seed, faults="chaos",
                       chaos=chaos or ChaosConfig(app_rate_limit_hour=4),
                       # smaller work messages than production's 50 users: more messages, more redeliveries
                       parameters={"BatchSize": "5"}, on_ready=on_ready)
    return Simulation(config).run()


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return chaos_run()


def test_nothing_is_lost_or_duplicated(report):
    assert report["plays_archived"] > 0
    assert report["plays_lost"] == 0, {u: d for u, d in report["per_user"].items() if d["lost"]}
    assert report["plays_duplicated"] == 0, {u: d for u, d in report["per_user"].items() if d["duplicated"]}
    assert verdict(report)


def test_every_aws_call_was_allowed_by_its_functions_role(report):
    assert report["iam"]["checked_calls"] > 0
    assert report["iam"]["denied"] == []


def test_the_faults_really_happened(report):
    chaos = report["chaos"]
    assert {c["kind"] for c in chaos["crashes"]} == {"raise", "kill"}
    assert report["worker"]["function_errors"].get("InjectedCrash") == 1
    assert chaos["duplicates_sent"] > 0
    assert sum(chaos["dynamodb_throttled"].values()) > 0
    assert report["deferrals"]["rate_limited"] > 0  # the app-wide 429 window deferred users
    assert report["failures_by_type"], "5xx/timeouts/401s left no failure at all?"
    assert report["spotify_requests_by_endpoint"]["recently_played"] > report["polls"] // 2


def test_aws_throttling_is_the_apps_failure_and_charges_nobody(report):
    """SSM throttled the credentials reads, DynamoDB throttles reached the code: the polls they hit were
    deferred or redelivered, and no user's record got a failure for them."""
    faults = report["app_faults"]
    assert faults["ssm_throttled"] > 0 and faults["polls_hit"]["ssm"] > 0, faults
    assert faults["dynamodb_throttled"] == sum(report["chaos"]["dynamodb_throttled"].values()) > 0
    assert faults["polls_hit"]["dynamodb"] + faults["faults_outside_polls"].get("dynamodb", 0) \
        == faults["dynamodb_throttled"], "every DynamoDB throttle that reached the code is accounted for"
    assert faults["users_charged_for_app_failures"] == [] and faults["charges"] == []
    assert not any(outcome.startswith("failed:") for outcome in faults["outcomes_of_polls_hit"]), faults
    assert faults["outcomes_of_polls_hit"].get("deferred", 0) >= faults["polls_hit"]["ssm"] > 0
    assert report["deferrals"]["app_failure_users"] > 0  # counted for the spotify-app-auth alarm
    # One read per container at a time: PlayVault alone stays far below SSM's 40 GetParameter a second.
    assert 0 < faults["ssm_get_parameter_max_per_simulated_second"] < 40


def test_every_gap_is_detected(report):
    assert report["gap_plays"] > 0, "the burst listener should have overflowed Spotify's 50-play window"
    assert report["users_with_undetected_gaps"] == []
    for user_id, data in report["per_user"].items():
        if data["gap_plays"]:
            assert data["gaps_detected"] > 0, user_id


def test_revoked_users_need_reauth_and_are_no_longer_dispatched(report):
    assert report["revoked_users"], "the population has a user who revokes access"
    for user_id, data in report["revoked_users"].items():
        assert data["status"] == "needs_reauth", user_id
        assert data["dispatched_after_needs_reauth"] == 0, user_id
    assert report["needs_reauth_at_last_dispatch"] >= 1


def test_nothing_in_flight_and_only_the_poison_message_in_the_dlq(report):
    assert report["drained"] and report["in_flight_at_end"] == 0
    assert report["dlq_bodies"] == [POISON_BODY]
    assert report["dlq_messages"] == 1


def test_rotating_refresh_tokens_keep_working(report):
    (data,) = report["rotating_refresh_token_users"].values()
    assert data["status"] == "active" and data["archived"] > 0


def test_the_report_catches_a_cursor_advanced_before_the_plays(monkeypatch):
    """Break the archive's one ordering rule (plays first, cursor second) and crash mid-write."""

    def break_ordering(system) -> None:
        from playvault import archive
        from playvault.store import plays as store_plays
        from playvault.store import users as store_users

        def cursor_first_then_plays(user_id: str, plays: Any) -> int:
            plays = list(plays)
            if plays:  # the bug: the cursor moves past plays not yet durable
                newest = max(p.played_at_ms for p in plays)
                store_users.UserModel(user_id).update(actions=[store_users.UserModel.cursor_ms.set(newest)])
            return store_plays.write_plays(user_id, plays)  # the chaos crash hook fires in here

        monkeypatch.setattr(archive, "plays", types.SimpleNamespace(write_plays=cursor_first_then_plays))

    # Smaller than the module's run: the kill crash (armed from hour 2) needs only a few users and hours.
    broken = chaos_run(on_ready=break_ordering, chaos=ChaosConfig(app_rate_limit_hour=2, crashes=("kill",)),
                       users=5, hours=4)
    assert broken["plays_lost"] > 0
    assert not verdict(broken)


def test_the_report_catches_users_charged_for_a_throttled_ssm(monkeypatch):
    """Break the mapping of an unreadable SSM parameter (GetParameterError left as it is, the way it
    was charged UNKNOWN before): the report names the users charged and the run fails."""

    def leave_the_error_unmapped(system) -> None:
        from playvault import spotify

        monkeypatch.setattr(spotify, "credentials_read_failure", lambda name, exc: exc)

    broken = Simulation(RunConfig(users=5, hours=3, seed=3, ssm_throttle_rate=0.5,
                                  on_ready=leave_the_error_unmapped)).run()
    faults = broken["app_faults"]
    assert faults["ssm_throttled"] > 0
    assert faults["users_charged_for_app_failures"], faults
    assert {c["outcome"] for c in faults["charges"]} == {"failed:UNKNOWN"}
    assert all("ssm" in c["faults"] for c in faults["charges"])
    assert not verdict(broken)
