"""bench/cost.py prices lines and allowances as AWS publishes them (synthetic inputs: the
arithmetic and the allowance rules, not the bench's figures)."""

from __future__ import annotations

from typing import Any

import pytest

from bench import cost


def _inputs(**overrides: Any) -> dict[str, Any]:
    zero = {"dynamodb_requests": 0.0, "dynamodb_wru": 0.0, "dynamodb_rru": 0.0}
    m = {
        "per_poll": {"per_user": {"dynamodb_requests": 2.0, "dynamodb_wru": 1.0, "dynamodb_rru": 1.0},
                     "per_message": {"dynamodb_requests": 3.0, "dynamodb_wru": 2.0, "dynamodb_rru": 0.5}},
        "per_play": {"dynamodb_requests": 0.0, "dynamodb_wru": 1.0, "dynamodb_rru": 0.5},
        "per_poll_with_plays": {**zero, "dynamodb_requests": 1.0},
        "per_unknown_track": {"dynamodb_requests": 2.0, "dynamodb_wru": 2.0, "dynamodb_rru": 1.0},
        "users_per_message": 50, "worker_seconds_per_message": 1.5, "worker_memory_gb": 0.5,
        "worker_init_seconds": 0.6, "dispatcher_memory_gb": 0.5, "dispatcher_init_seconds": 0.4,
        "requeue_hops_per_message": 1.5, "requeue_seconds": 0.01, "log_bytes_per_message": 1200,
        "log_bytes_per_requeue": 700, "log_bytes_per_dispatch": 2000, "dispatcher_rru_per_user": 0.1,
        "dispatcher_seconds_per_user": 0.002, "dispatcher_seconds_fixed": 0.1, "play_item_bytes": 160,
        "user_item_bytes": 770, "catalog_bytes_per_unknown_track": 700, "sqs_idle_polls_per_month": 648_000,
        "custom_metrics": 7, "custom_metrics_detailed": 22, "alarms": 9, "dashboards": 1, "dashboard_metrics": 43,
        "logs_insights_widgets": 2,
    }
    m.update(overrides)
    return m


def _line(deployment: dict[str, Any], prefix: str) -> dict[str, Any]:
    (line,) = [x for x in deployment["lines"] if x["line"].startswith(prefix)]
    return line


def test_the_always_free_allowances_take_the_fixed_observability_lines_to_zero():
    with_ = cost.deployment(_inputs(), 5, with_allowances=True, kind="personal")
    without = cost.deployment(_inputs(), 5, with_allowances=False, kind="personal")
    for prefix in ("CloudWatch custom metrics", "CloudWatch alarms", "CloudWatch dashboard"):
        assert _line(with_, prefix)["usd"] == 0, prefix
        assert _line(without, prefix)["usd"] > 0, prefix
        assert _line(with_, prefix)["allowance"], prefix  # named
    assert _line(without, "CloudWatch custom metrics")["usd"] == pytest.approx(7 * 0.30)
    assert _line(without, "CloudWatch dashboard")["usd"] == pytest.approx(3.00)
    assert with_["total_usd"] < without["total_usd"]


def test_what_has_no_allowance_is_billed_either_way():
    with_ = cost.deployment(_inputs(), 5, with_allowances=True, kind="personal")
    assert _line(with_, "KMS customer managed key")["usd"] == pytest.approx(1.00)
    # On-demand DynamoDB: no always-free request allowance (25 WCU/RCU are for provisioned capacity).
    wru = _line(with_, "DynamoDB write request units")
    assert wru["allowance"] is None and wru["usd"] > 0
    # 12-month offers are not always-free allowances.
    assert _line(with_, "API Gateway HTTP API")["allowance"] is None


def test_allowances_have_limits():
    over = cost.deployment(_inputs(custom_metrics=12, alarms=11, dashboard_metrics=51), 5, with_allowances=True,
                           kind="personal")
    assert _line(over, "CloudWatch custom metrics")["usd"] == pytest.approx(2 * 0.30)
    assert _line(over, "CloudWatch alarms")["usd"] == pytest.approx(0.10)
    assert _line(over, "CloudWatch dashboard")["usd"] == pytest.approx(3.00)  # free only up to 50 metrics


def test_dynamodb_units_follow_the_measured_split():
    one = cost.deployment(_inputs(), 1000, with_allowances=False, kind="fleet")
    a = cost.ASSUMPTIONS
    polls = 1000 * a["polls_per_day"] * cost.DAYS
    messages = a["polls_per_day"] * cost.DAYS * 20  # 1,000 users, 50 a message
    plays = 1000 * a["plays_per_day"] * cost.DAYS
    expected = polls * 1 + messages * 2 + plays * 1 + plays * a["unknown_track_share"] * 2
    assert _line(one, "DynamoDB write request units")["quantity"] == pytest.approx(expected)
    cheaper = cost.deployment(_inputs(per_poll={"per_user": {"dynamodb_requests": 4.0, "dynamodb_wru": 3.0,
                                                             "dynamodb_rru": 1.0},
                                                "per_message": {"dynamodb_requests": 1.0, "dynamodb_wru": 0.0,
                                                                "dynamodb_rru": 0.5}}),
                              1000, with_allowances=False, kind="fleet")
    assert cheaper["variable_usd"] > one["variable_usd"]  # idempotency per user costs more than per message


def test_fleet_variable_cost_is_per_1000_users_and_names_its_dominant_line():
    fleet = cost.fleet(_inputs())
    assert set(fleet) == {"1000", "10000", "100000"}
    for size, c in fleet.items():
        d = c["without_allowances"]
        assert c["variable_per_1000_usd"] == pytest.approx(d["variable_usd"] * 1000 / int(size), abs=1e-3)
        assert c["dominant_variable_line"]
        assert c["total_per_1000_usd_with_allowances"] <= c["total_per_1000_usd_without_allowances"]
