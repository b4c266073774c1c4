"""Cost per 1,000 users per month from the measured counts and durations (us-east-1 list prices).

Prices: the published on-demand list prices of the AWS pricing pages (us-east-1) as known to the
author; they could not be re-checked from this offline machine on the run date, so they are dated
with the date they are known for. Free tiers are excluded.
"""

from __future__ import annotations

import math
from typing import Any

PRICES_AS_OF = "AWS pricing pages, us-east-1 list prices as published 2025 (not re-verified offline in 2026)"
PRICES = {
    "lambda_gb_s_arm64": 0.0000133334,  # USD per GB-second, arm64, first 7.5 B GB-s tier
    "lambda_request": 0.20 / 1e6,
    "sqs_request": 0.40 / 1e6,  # standard queue, per request (64 KB chunk), after the free 1 M
    "ddb_wru": 0.625 / 1e6,  # on-demand write request unit (price since 2024-11-01)
    "ddb_rru": 0.125 / 1e6,  # on-demand read request unit
    "ddb_storage_gb_month": 0.25,
    "ddb_pitr_gb_month": 0.20,
    "kms_key_month": 1.00,  # customer managed key; each of its first two rotations adds 1.00 / month
    "kms_request": 0.03 / 10_000,
    "cw_metric_month": 0.30,  # custom metric (name + dimensions), first 10,000 metrics
    "cw_alarm_month": 0.10,  # standard-resolution alarm
    "cw_dashboard_month": 3.00,
    "logs_ingest_gb": 0.50,
    "logs_storage_gb_month": 0.03,
    "xray_trace": 5.00 / 1e6,  # traces recorded
    "eventbridge_schedule": 0.0,  # scheduled rules on the default bus: no charge
    "ssm_standard_parameter": 0.0,  # standard parameters and standard throughput: no charge
}

GB = 1024**3


def model(m: dict[str, Any], users: int = 1000, *, polls_per_day: float = 24, wru_saved_per_poll: float = 0
          ) -> dict[str, Any]:
    """m: measured inputs (see bench.__main__._cost_inputs). Returns lines, totals and assumptions.
    polls_per_day / wru_saved_per_poll model product rules that were not built (see `decisions`)."""
    a = m["assumptions"]
    days = 30
    polls_per_user = polls_per_day * days  # 24: the hourly schedule as built
    plays_per_user = a["plays_per_day"] * days
    polls = users * polls_per_user
    plays = users * plays_per_user
    unknown_plays = plays * a["unknown_track_share"]
    p = m["polls"]  # scenario -> counts

    def per_play(key: str, with_: str, without: str, n: int = 20) -> float:
        return (p[with_][key] - p[without][key]) / n

    # Units: every poll pays the idle poll's (the realistic one at an hourly schedule refreshes
    # the token); each play adds (20 known - idle)/20; a play of an unknown track adds (unknown-known)/20.
    # "Known" is the new-container case (the tracks are looked up): conservative, the warm case is cheaper.
    known = "20_plays_known_tracks_new_container"
    base = p["idle_token_expired"]
    wru = polls * (base["dynamodb_wru"] - wru_saved_per_poll) \
        + plays * per_play("dynamodb_wru", known, "idle") \
        + unknown_plays * per_play("dynamodb_wru", "20_plays_unknown_tracks", known)
    rru = polls * (base["dynamodb_rru"] + m["rru_per_message"] / m["users_per_message"]) \
        + plays * per_play("dynamodb_rru", known, "idle") \
        + unknown_plays * per_play("dynamodb_rru", "20_plays_unknown_tracks", known)
    dispatches = 24 * days
    rru += dispatches * m["dispatcher_rru_per_user"] * users

    messages = polls / m["users_per_message"]
    hops = messages * m["requeue_hops_per_message"]
    worker_invocations = messages + hops
    worker_gb_s = messages * m["worker_seconds_per_message"] * m["worker_memory_gb"] \
        + hops * m["requeue_seconds"] * m["worker_memory_gb"]
    dispatcher_gb_s = dispatches * (m["dispatcher_seconds_fixed"] + m["dispatcher_seconds_per_user"] * users) \
        * m["dispatcher_memory_gb"]
    # SQS: SendMessageBatch (10 messages each), one SendMessage per hop, one receive and one delete
    # per delivery, and the event source's pollers long-polling an idle queue (fixed, see below).
    sqs_requests = messages / 10 + hops + 2 * (messages + hops)
    log_bytes = messages * m["log_bytes_per_message"] + hops * m["log_bytes_per_requeue"] \
        + dispatches * m["log_bytes_per_dispatch"]
    storage_gb = (plays * (m["play_item_bytes"] + 100) + users * (m["user_item_bytes"] + 100)) / GB
    kms_requests = m["kms_decrypts_per_month"] * users / 1000

    lines = [
        ("Lambda worker duration (arm64 GB-s)", worker_gb_s, PRICES["lambda_gb_s_arm64"], "per user"),
        ("Lambda worker requests", worker_invocations, PRICES["lambda_request"], "per user"),
        ("Lambda dispatcher duration (GB-s)", dispatcher_gb_s, PRICES["lambda_gb_s_arm64"], "per user"),
        ("Lambda dispatcher requests", dispatches, PRICES["lambda_request"], "fixed"),
        ("SQS requests (send, hops, receive, delete)", sqs_requests, PRICES["sqs_request"], "per user"),
        ("SQS idle long-polling by the event source", m["sqs_idle_polls_per_month"], PRICES["sqs_request"], "fixed"),
        ("DynamoDB write request units", wru, PRICES["ddb_wru"], "per user"),
        ("DynamoDB read request units", rru, PRICES["ddb_rru"], "per user"),
        ("DynamoDB storage, 1st month of plays (GB-month)", storage_gb, PRICES["ddb_storage_gb_month"], "per user"),
        ("DynamoDB PITR backup (GB-month)", storage_gb, PRICES["ddb_pitr_gb_month"], "per user"),
        ("KMS requests (data-key Decrypt on cold containers)", kms_requests, PRICES["kms_request"], "per user"),
        ("KMS customer managed key (+rotations, up to 3.00)", 1, PRICES["kms_key_month"], "fixed"),
        ("CloudWatch custom metrics (EMF)", m["custom_metrics"], PRICES["cw_metric_month"], "fixed"),
        ("CloudWatch alarms", m["alarms"], PRICES["cw_alarm_month"], "fixed"),
        ("CloudWatch dashboards", m["dashboards"], PRICES["cw_dashboard_month"], "fixed"),
        ("CloudWatch Logs ingestion (GB)", log_bytes / GB, PRICES["logs_ingest_gb"], "per user"),
        ("CloudWatch Logs storage, 30-day retention (GB-month)", log_bytes / GB, PRICES["logs_storage_gb_month"],
         "per user"),
        ("X-Ray traces (Tracing: Active, 1 per invocation)", worker_invocations + dispatches, PRICES["xray_trace"],
         "per user"),
        ("EventBridge schedule", dispatches, PRICES["eventbridge_schedule"], "fixed"),
        ("SSM standard parameters", 2, PRICES["ssm_standard_parameter"], "fixed"),
    ]
    out = [{"line": name, "quantity": round(q, 4), "unit_price_usd": price, "usd": round(q * price, 4),
            "scales": scales} for name, q, price, scales in lines]
    variable = sum(line["usd"] for line in out if line["scales"] == "per user")
    fixed = sum(line["usd"] for line in out if line["scales"] == "fixed")
    dominant = max(out, key=lambda line: line["usd"])
    dominant_variable = max((line for line in out if line["scales"] == "per user"), key=lambda line: line["usd"])
    return {
        "users": users,
        "lines": out,
        "variable_usd": round(variable, 4),
        "fixed_usd": round(fixed, 4),
        "total_usd": round(variable + fixed, 4),
        "dominant_line": dominant["line"],
        "dominant_variable_line": dominant_variable["line"],
        "polls_per_month": polls,
        "plays_per_month": plays,
        "prices_as_of": PRICES_AS_OF,
    }


def per_thousand(m: dict[str, Any], fleet_sizes: tuple[int, ...] = (1_000, 10_000, 100_000)) -> dict[str, Any]:
    """Cost per 1,000 users per month: variable lines scale with users, fixed lines are amortized."""
    out = {}
    for users in fleet_sizes:
        result = model(m, users)
        scale = 1000 / users
        out[str(users)] = {
            "variable_per_1000_usd": round(result["variable_usd"] * scale, 4),
            "fixed_amortized_per_1000_usd": round(result["fixed_usd"] * scale, 4),
            "total_per_1000_usd": round(result["total_usd"] * scale, 4),
        }
    return out


def break_even_users(m: dict[str, Any], goal_usd: float = 1.50) -> int | None:
    """Smallest fleet at which the all-lines cost per 1,000 users is under the goal."""
    one = model(m, 1000)
    variable_per_1000 = one["variable_usd"]
    if variable_per_1000 >= goal_usd:
        return None
    return math.ceil(one["fixed_usd"] * 1000 / (goal_usd - variable_per_1000))


# Product rules the cost goal would need, priced from the same measured inputs. None is built: each
# changes a rule the product owner set (hourly polls; Powertools idempotency with its own record).
DECISIONS = [
    ("as built: hourly polls, Powertools idempotency record (PutItem + UpdateItem)", 24, 0),
    ("hourly, idempotency as one conditional put (no completion update)", 24, 1),
    ("hourly, idempotency by a condition on the user's own update (no record)", 24, 2),
    ("every 2 h, Powertools idempotency record", 12, 0),
    ("every 2 h, idempotency by a condition on the user's own update", 12, 2),
]


def decisions(m: dict[str, Any], goal_usd: float = 1.50) -> list[dict[str, Any]]:
    """Variable cost per 1,000 users per month under each rule of DECISIONS."""
    out = []
    for rule, polls_per_day, saved in DECISIONS:
        result = model(m, 1000, polls_per_day=polls_per_day, wru_saved_per_poll=saved)
        out.append({"rule": rule, "polls_per_day": polls_per_day, "wru_saved_per_poll": saved,
                    "variable_per_1000_usd": result["variable_usd"],
                    "meets_goal_at_large_fleet": result["variable_usd"] < goal_usd})
    return out
