"""bench/cost.py prices lines and allowances as AWS publishes them (synthetic inputs: the
arithmetic and the allowance rules, not the bench's figures; the template's facts as counted)."""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest

from bench import cost
from bench import template_facts as tf


def synthetic_inputs(**overrides: Any) -> dict[str, Any]:
    """Measured inputs of the shape bench/__main__.py builds (`cost_inputs`), with round figures."""
    zero = {"dynamodb_requests": 0.0, "dynamodb_wru": 0.0, "dynamodb_rru": 0.0}
    m = {
        "per_poll": {"per_user": {"dynamodb_requests": 2.0, "dynamodb_wru": 1.0, "dynamodb_rru": 1.0},
                     "per_message": {"dynamodb_requests": 3.0, "dynamodb_wru": 2.0, "dynamodb_rru": 0.5}},
        "per_play": {"dynamodb_requests": 0.0, "dynamodb_wru": 1.0, "dynamodb_rru": 0.5},
        "per_poll_with_plays": {**zero, "dynamodb_requests": 1.0},
        "per_unknown_track": {"dynamodb_requests": 2.0, "dynamodb_wru": 2.0, "dynamodb_rru": 1.0},
        "users_per_message": 50, "worker_seconds_per_message": 1.5, "worker_memory_gb": 0.5,
        "worker_init_seconds": 0.6, "dispatcher_memory_gb": 0.5, "dispatcher_init_seconds": 0.4,
        "account_memory_gb": 0.25, "jobs_memory_gb": 0.5, "importer_memory_gb": 0.5,
        "log_bytes_per_message": 1200, "log_bytes_per_dispatch": 2000,
        "dispatcher_seconds_per_user": 0.002, "dispatcher_seconds_fixed": 0.1, "dispatcher_scans_per_run": 2.0,
        "play_item_bytes": 260, "user_item_bytes": 900, "catalog_bytes_per_track": 300,
        "rollup_day_bytes_per_play": 80, "rollup_other_bytes_per_user": 40_000, "rollup_recompute_wru_per_play": 0.3,
        "page_view_rru_by_history": {"1000": 3.0, "20000": 6.5, "200000": 12.5}, "page_view_ms": 100,
        "import_wru_per_play": 1.25, "import_rows_per_s": 700, "export_plays_per_s": 700,
        "export_bytes_per_play": 300, "export_part_bytes": 6_000_000,
        "custom_metrics": 7, "custom_metrics_detailed": 22,
        "code_facts": {"data_key_max_age_s": 3600.0, "data_key_cache_size": 256, "ssm_max_age_s": 300.0},
    }
    m.update(overrides)
    return m


@cache
def template_facts() -> dict[str, Any]:
    return tf.facts()


def line(deployment: dict[str, Any], prefix: str) -> dict[str, Any]:
    (found,) = [x for x in deployment["lines"] if x["line"].startswith(prefix)]
    return found


def _personal(month: int = 1, with_allowances: bool = True, facts: dict[str, Any] | None = None,
              **overrides: Any) -> dict[str, Any]:
    return cost.deployment(synthetic_inputs(**overrides), facts or template_facts(), 5, month,
                           with_allowances=with_allowances, kind="personal")


def test_the_always_free_allowances_take_the_metric_and_dashboard_lines_to_zero():
    with_, without = _personal(), _personal(with_allowances=False)
    for prefix in ("CloudWatch custom metrics", "CloudWatch dashboards"):
        assert line(with_, prefix)["usd"] == 0, prefix
        assert line(without, prefix)["usd"] > 0, prefix
        assert line(with_, prefix)["allowance"], prefix  # named
    assert line(without, "CloudWatch custom metrics")["usd"] == pytest.approx(7 * 0.30)
    assert line(without, "CloudWatch dashboards")["usd"] == pytest.approx(3.00)
    assert with_["total_usd"] < without["total_usd"]


def test_alarm_metrics_past_the_free_ten_are_billed_even_with_allowances():
    facts = {**template_facts(), "alarm_metrics": 15}
    assert line(_personal(facts=facts), "CloudWatch alarm metrics")["usd"] == pytest.approx(5 * 0.10)
    assert line(_personal(facts={**facts, "alarm_metrics": 10}), "CloudWatch alarm metrics")["usd"] == 0


def test_what_has_no_allowance_is_billed_either_way():
    with_ = _personal()
    assert line(with_, "KMS customer managed keys")["usd"] == pytest.approx(1.00 * len(template_facts()["kms_keys"]))
    # On-demand DynamoDB: no always-free request allowance (25 WCU/RCU are for provisioned capacity).
    wru = line(with_, "DynamoDB write units: polls")
    assert wru["allowance"] is None and wru["usd"] > 0
    # 12-month offers are not always-free allowances.
    assert line(with_, "API Gateway HTTP API")["allowance"] is None
    assert line(with_, "SES reminder e-mails")["allowance"] is None


def test_dynamodb_units_follow_the_measured_split():
    one = cost.deployment(synthetic_inputs(), template_facts(), 1000, 1, with_allowances=False, kind="fleet")
    a = cost.ASSUMPTIONS
    polls = 1000 * 24 * cost.DAYS
    runs = tf.dispatcher_runs_per_month(template_facts())
    due = 1000 * (cost.HOURS * 60 / runs) / a["poll_cadence_minutes"]
    messages = runs * -(-due // 50)
    plays = 1000 * a["plays_per_day"] * cost.DAYS
    expected = polls * 1 + messages * 2 + plays * 1 + plays * a["unknown_track_share"] * 2
    assert line(one, "DynamoDB write units: polls")["quantity"] == pytest.approx(expected)
    cheaper = cost.deployment(synthetic_inputs(per_poll={
        "per_user": {"dynamodb_requests": 4.0, "dynamodb_wru": 3.0, "dynamodb_rru": 1.0},
        "per_message": {"dynamodb_requests": 1.0, "dynamodb_wru": 0.0, "dynamodb_rru": 0.5}}),
        template_facts(), 1000, 1, with_allowances=False, kind="fleet")
    assert cheaper["variable_usd"] > one["variable_usd"]  # idempotency per user costs more than per message


def test_storage_and_page_reads_grow_with_history_and_pitr_only_on_pitr_tables():
    months = {m: _personal(m, with_allowances=False) for m in (1, 12, 36)}
    storage = [line(months[m], "DynamoDB storage")["quantity"] for m in (12, 36)]
    assert storage[0] < storage[1]
    pages = [line(months[m], "DynamoDB read units: page views")["quantity"] for m in (1, 12, 36)]
    assert pages[0] < pages[1] < pages[2]
    # No PITR anywhere: the PITR line is zero while storage is not.
    bare = {**template_facts(), "tables": {k: {**t, "pitr": False} for k, t in template_facts()["tables"].items()}}
    d = _personal(36, with_allowances=False, facts=bare)
    assert line(d, "DynamoDB point-in-time recovery")["quantity"] == 0
    assert line(d, "DynamoDB storage")["quantity"] == pytest.approx(line(months[36], "DynamoDB storage")["quantity"])
    assert line(months[36], "DynamoDB point-in-time recovery")["quantity"] > 0


def test_more_scans_per_dispatcher_run_cost_more_read_units():
    one = _personal(dispatcher_scans_per_run=1.0)
    two = _personal(dispatcher_scans_per_run=2.0)
    assert line(two, "DynamoDB read units: dispatcher")["quantity"] > line(one, "DynamoDB read units: dispatcher")[
        "quantity"]


def test_fleet_variable_cost_is_per_1000_users_per_month_and_names_its_dominant_line():
    fleet = cost.fleet(synthetic_inputs(), template_facts())
    assert set(fleet) == {"1", "12", "36"}
    for sizes in fleet.values():
        assert set(sizes) == {"1000", "10000", "100000"}
        for size, c in sizes.items():
            d = c["without_allowances"]
            assert c["variable_per_1000_usd"] == pytest.approx(d["variable_usd"] * 1000 / int(size), abs=1e-3)
            assert c["dominant_variable_line"]
            assert c["total_per_1000_usd_with_allowances"] <= c["total_per_1000_usd_without_allowances"]
    assert fleet["36"]["1000"]["variable_per_1000_usd"] > fleet["12"]["1000"]["variable_per_1000_usd"]


def test_personal_is_priced_at_months_1_12_36_at_both_ends_of_the_documented_ranges():
    personal = cost.personal(synthetic_inputs(), template_facts())
    assert set(personal) == {"1", "12", "36"}
    for month in personal.values():
        for d in month.values():
            assert d["total_usd_low"] <= d["total_usd"]
