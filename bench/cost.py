"""What a deployment costs a month, line by line, from the bench's measured counts (us-east-1).

Two deployments: a personal one (5 users, 30 plays a day each: Spotify gives a development-mode
app 5 users) and a fleet (1,000, 10,000 and 100,000 users). Each is priced with and without the
always-free allowances an AWS account has every month (not the 12-month offers for new accounts).

The request counts are inputs measured by the bench (bench/__main__.py `cost_inputs`): DynamoDB
requests and units per poll split into the per-user part and the per-message part (a message of
k users against one of 1 user), per new play, per unknown track; worker seconds per message; log
bytes; item sizes; custom metrics and alarms as the template and playvault.metrics define them
with DetailedMetrics off. A bench run after a code change therefore re-prices the new design: an
idle poll of 2 requests and 1 write unit with Powertools idempotency per SQS message (issue 11)
shows up as such in the inputs. What is assumed rather than measured is in `ASSUMPTIONS` and in
each deployment's "assumptions".

Prices and allowances (us-east-1, as each AWS pricing page publishes them; checked 2026-12):
- Lambda https://aws.amazon.com/lambda/pricing/ : $0.20 per 1M requests, arm64 $0.0000133334 per
  GB-s; always free 1M requests and 400,000 GB-s a month.
- DynamoDB https://aws.amazon.com/dynamodb/pricing/ : on-demand $0.625 per 1M write request units,
  $0.125 per 1M read request units, storage $0.25 per GB-month, PITR $0.20 per GB-month; always
  free 25 GB of storage, and 25 WCU + 25 RCU of *provisioned* capacity only: on-demand tables (all of
  PlayVault's) have no always-free request allowance.
- SQS https://aws.amazon.com/sqs/pricing/ : $0.40 per 1M standard requests (64 KB each); always free
  1M requests a month.
- CloudWatch https://aws.amazon.com/cloudwatch/pricing/ : custom metric $0.30 a month, standard alarm
  metric $0.10, dashboard $3.00, Logs ingestion $0.50 per GB, storage $0.03 per GB-month, Logs
  Insights $0.005 per GB scanned; always free 10 custom metrics, 10 alarm metrics, 3 dashboards of
  up to 50 metrics each, 5 GB of Logs data (ingestion, archive storage and Logs Insights scans together).
- KMS https://aws.amazon.com/kms/pricing/ : customer managed key $1.00 a month (no free allowance),
  $0.03 per 10,000 requests; always free 20,000 requests a month.
- SNS https://aws.amazon.com/sns/pricing/ : $0.50 per 1M publishes, e-mail $2.00 per 100,000;
  always free 1M publishes and 1,000 e-mail deliveries (as published there; not in the search
  corpus this was checked against).
- X-Ray https://aws.amazon.com/xray/pricing/ : $5.00 per 1M traces recorded; always free 100,000.
  Tracing is off by default (template parameter Tracing).
- API Gateway HTTP API https://aws.amazon.com/api-gateway/pricing/ : $1.00 per 1M requests; its free
  tier (1M a month) is for 12 months only, so it is not applied here.
- S3 (the SAM artifact bucket) https://aws.amazon.com/s3/pricing/ : $0.023 per GB-month; its 5 GB
  free tier is for 12 months only, so it is not applied here.
- EventBridge scheduled rules and SSM standard parameters: no charge.
"""

from __future__ import annotations

import math
from typing import Any

PRICES_AS_OF = "AWS pricing pages (us-east-1), checked 2026-12 against the pages cited in bench/cost.py"
PRICES = {
    "lambda_request": 0.20 / 1e6,
    "lambda_gb_s_arm64": 0.0000133334,
    "ddb_wru": 0.625 / 1e6,
    "ddb_rru": 0.125 / 1e6,
    "ddb_storage_gb_month": 0.25,
    "ddb_pitr_gb_month": 0.20,
    "sqs_request": 0.40 / 1e6,
    "cw_metric_month": 0.30,
    "cw_alarm_month": 0.10,
    "cw_dashboard_month": 3.00,
    "logs_ingest_gb": 0.50,
    "logs_storage_gb_month": 0.03,
    "logs_insights_gb_scanned": 0.005,
    "kms_key_month": 1.00,
    "kms_request": 0.03 / 10_000,
    "sns_publish": 0.50 / 1e6,
    "sns_email": 2.00 / 100_000,
    "xray_trace": 5.00 / 1e6,
    "http_api_request": 1.00 / 1e6,
    "s3_gb_month": 0.023,
    "eventbridge_schedule": 0.0,
    "ssm_standard_parameter": 0.0,
}

# Always-free allowances a month, each as AWS names it; None: nothing is free.
ALLOWANCES: dict[str, tuple[str, float] | None] = {
    "lambda_requests": ("Lambda: 1M requests a month (always free)", 1_000_000),
    "lambda_gb_s": ("Lambda: 400,000 GB-s a month (always free)", 400_000),
    "ddb_requests": None,  # on-demand: no always-free request allowance (25 WCU/RCU are provisioned only)
    "ddb_storage": ("DynamoDB: 25 GB of storage (always free)", 25),
    "ddb_pitr": None,
    "sqs_requests": ("SQS: 1M requests a month (always free)", 1_000_000),
    "cw_metrics": ("CloudWatch: 10 custom metrics (always free)", 10),
    "cw_alarms": ("CloudWatch: 10 alarm metrics, standard resolution (always free)", 10),
    "cw_dashboards": ("CloudWatch: 3 dashboards of up to 50 metrics each (always free)", 3),
    "logs_data": ("CloudWatch Logs: 5 GB of data: ingestion, storage and Logs Insights scans (always free)", 5),
    "kms_key": None,  # $1 a month: the price of tokens sealed at rest
    "kms_requests": ("KMS: 20,000 requests a month (always free)", 20_000),
    "sns_publishes": ("SNS: 1M publishes a month (always free)", 1_000_000),
    "sns_email": ("SNS: 1,000 e-mail deliveries a month (always free)", 1_000),
    "xray_traces": ("X-Ray: 100,000 traces recorded a month (always free)", 100_000),
    "http_api": None,  # 1M requests a month for 12 months only
    "s3": None,  # 5 GB for 12 months only
    "free": None,
}

GB = 1024**3
DAYS = 30

# What is assumed, not measured (each deployment reports the ones it used).
ASSUMPTIONS: dict[str, Any] = {
    "polls_per_day": 24,  # hourly: the template's ScheduleExpression
    "heavy_listener_share": 0.0,  # at 30 plays a day nobody fills Spotify's 50-play window within an hour
    "heavy_polls_per_day": 96,
    "plays_per_day": 30,
    "polls_with_plays_per_day": 12,  # plays fall in about 12 of the 24 hourly polls (waking hours)
    "unknown_track_share": 0.3,  # share of plays whose track the catalog does not hold yet
    # Plays are kept forever: storage is priced for the first month of plays (as the benchmark issue
    # did); `storage_growth_per_month` says what each further month of history adds.
    "storage_months": 1,
    "platform_log_bytes_per_invocation": 350,  # Lambda's START/END/REPORT lines
    "dashboard_views_per_month": 30,  # each view runs the Logs Insights widgets over 24 h of logs
    "alarm_notifications_per_month": 10,
    "signups_per_user_per_month": 1 / 12,  # HTTP API: login + consent + callback, about 3 requests
    "http_requests_per_signup": 3,
    "artifact_bucket_gb": 0.05,  # the SAM artifact bucket (code and layer zips)
    # KMS: a worker container opens each data key once (LRU of `kms_cache_size` keys). A personal
    # container is cold at each hourly run; a fleet's 5 are recycled about every 2 hours.
    "users_per_data_key": {"personal": 1, "fleet": 100},  # a data key per auth container-hour
    "worker_cold_starts_per_month": {"personal": 24 * DAYS, "fleet": 5 * 12 * DAYS},
    "kms_cache_size": 256,
}


def _line(name: str, quantity: float, price_key: str, allowance: str, scales: str, note: str = "") -> dict[str, Any]:
    return {"line": name, "quantity": quantity, "unit_price_usd": PRICES[price_key], "allowance_key": allowance,
            "scales": scales, "note": note}


def _apply_allowances(lines: list[dict[str, Any]], with_allowances: bool) -> None:
    """Each allowance covers the summed quantity of its lines (split in proportion); priced after it."""
    totals: dict[str, float] = {}
    for line in lines:
        totals[line["allowance_key"]] = totals.get(line["allowance_key"], 0.0) + line["quantity"]
    for line in lines:
        allowance = ALLOWANCES[line["allowance_key"]] if with_allowances else None
        free = 0.0
        if allowance is not None and totals[line["allowance_key"]] > 0:
            share = line["quantity"] / totals[line["allowance_key"]]
            free = min(line["quantity"], allowance[1] * share)
        line["allowance"] = f"{allowance[0]}" if allowance is not None else None
        line["free_quantity"] = round(free, 4)
        line["billed_quantity"] = round(line["quantity"] - free, 4)
        line["usd"] = round((line["quantity"] - free) * line["unit_price_usd"], 4)
        line["quantity"] = round(line["quantity"], 4)
        del line["allowance_key"]


def deployment(m: dict[str, Any], users: int, *, with_allowances: bool, kind: str,
               assumptions: dict[str, Any] | None = None) -> dict[str, Any]:
    """One deployment's month: lines (quantity, unit price, allowance used, USD), totals, dominant line.

    m: the measured inputs (bench/__main__.py builds them: see `cost_inputs` in results.json).
    kind: "personal" or "fleet" (picks the kind-specific assumptions)."""
    a = {**ASSUMPTIONS, **(assumptions or {})}
    split = m["per_poll"]  # measured: per user (an idle poll) and per message
    polls_per_user_day = a["polls_per_day"] * (1 - a["heavy_listener_share"]) \
        + a["heavy_polls_per_day"] * a["heavy_listener_share"]
    polls = users * polls_per_user_day * DAYS
    polls_with_plays = users * min(a["polls_with_plays_per_day"], polls_per_user_day) * DAYS
    plays = users * a["plays_per_day"] * DAYS
    unknown = plays * a["unknown_track_share"]
    users_per_message = min(users, m["users_per_message"])
    dispatches = a["polls_per_day"] * DAYS
    messages = dispatches * math.ceil(users / m["users_per_message"]) if users else 0
    messages += (polls - users * a["polls_per_day"] * DAYS) / max(1, users_per_message)  # heavy listeners' extra
    hops = messages * m["requeue_hops_per_message"]
    per_play, per_poll_with_plays, per_unknown = m["per_play"], m["per_poll_with_plays"], m["per_unknown_track"]

    def units(key: str) -> float:
        return (polls * split["per_user"][key] + messages * split["per_message"][key]
                + polls_with_plays * per_poll_with_plays[key] + plays * per_play[key] + unknown * per_unknown[key])

    wru = units("dynamodb_wru")
    rru = units("dynamodb_rru") + dispatches * users * m["dispatcher_rru_per_user"]
    ddb_requests = units("dynamodb_requests")

    worker_invocations = messages + hops
    cold_starts = min(a["worker_cold_starts_per_month"][kind], worker_invocations)
    worker_gb_s = (messages * m["worker_seconds_per_message"] + hops * m["requeue_seconds"]
                   + cold_starts * m["worker_init_seconds"]) * m["worker_memory_gb"]
    dispatcher_gb_s = dispatches * (m["dispatcher_seconds_fixed"] + m["dispatcher_seconds_per_user"] * users
                                    + m["dispatcher_init_seconds"]) * m["dispatcher_memory_gb"]
    signups = users * a["signups_per_user_per_month"]
    auth_invocations = signups * a["http_requests_per_signup"]

    # SQS: SendMessageBatch (10 messages each), a SendMessage per hop, a receive and a delete per
    # delivery; the event source's pollers long-poll the queue all month whatever the traffic.
    sqs_requests = messages / 10 + hops + 2 * (messages + hops)
    invocations = worker_invocations + dispatches + auth_invocations
    log_bytes = (messages * m["log_bytes_per_message"] + hops * m["log_bytes_per_requeue"]
                 + dispatches * m["log_bytes_per_dispatch"] + invocations * a["platform_log_bytes_per_invocation"])
    log_gb = log_bytes / GB
    insights_gb = a["dashboard_views_per_month"] * m["logs_insights_widgets"] * (log_gb / DAYS)
    storage_gb = (plays * a["storage_months"] * (m["play_item_bytes"] + 100)
                  + unknown * a["storage_months"] * m["catalog_bytes_per_unknown_track"]
                  + users * (m["user_item_bytes"] + 100)) / GB
    protected_gb = (plays * a["storage_months"] * (m["play_item_bytes"] + 100)
                    + users * (m["user_item_bytes"] + 100)) / GB
    keys = max(1, math.ceil(users / a["users_per_data_key"][kind]))
    cache = a["kms_cache_size"]
    # Uniform access to `keys` data keys through an LRU of `cache`: a poll misses with 1 - cache/keys.
    kms_requests = cold_starts * min(keys, cache) + max(0.0, 1 - cache / keys) * polls + signups / 10
    dashboard_metrics = m["dashboard_metrics"]

    lines = [
        _line("Lambda requests: worker (messages + requeue hops)", worker_invocations, "lambda_request",
              "lambda_requests", "per user"),
        _line("Lambda requests: dispatcher (hourly)", dispatches, "lambda_request", "lambda_requests", "fixed"),
        _line("Lambda requests: auth (sign-up routes)", auth_invocations, "lambda_request", "lambda_requests",
              "per user"),
        _line("Lambda duration: worker incl. cold-start init (arm64 GB-s)", worker_gb_s, "lambda_gb_s_arm64",
              "lambda_gb_s", "per user"),
        _line("Lambda duration: dispatcher (arm64 GB-s)", dispatcher_gb_s, "lambda_gb_s_arm64", "lambda_gb_s",
              "per user"),
        _line("DynamoDB write request units (on-demand)", wru, "ddb_wru", "ddb_requests", "per user",
              f"{ddb_requests:,.0f} requests"),
        _line("DynamoDB read request units (on-demand)", rru, "ddb_rru", "ddb_requests", "per user"),
        _line(f"DynamoDB storage, {a['storage_months']} month(s) of plays (GB-month)", storage_gb,
              "ddb_storage_gb_month", "ddb_storage", "per user"),
        _line("DynamoDB point-in-time recovery, users + plays (GB-month)", protected_gb, "ddb_pitr_gb_month",
              "ddb_pitr", "per user"),
        _line("SQS requests (send, hops, receive, delete)", sqs_requests, "sqs_request", "sqs_requests", "per user"),
        _line("SQS: the event source long-polling the queue", m["sqs_idle_polls_per_month"], "sqs_request",
              "sqs_requests", "fixed"),
        _line("CloudWatch custom metrics (DetailedMetrics off)", m["custom_metrics"], "cw_metric_month",
              "cw_metrics", "fixed"),
        _line("CloudWatch alarms (standard resolution)", m["alarms"], "cw_alarm_month", "cw_alarms", "fixed"),
        _line(f"CloudWatch dashboard ({dashboard_metrics} metrics)", m["dashboards"], "cw_dashboard_month",
              "cw_dashboards" if dashboard_metrics <= 50 else "free", "fixed",
              "free only with at most 50 metrics" if dashboard_metrics <= 50 else "over 50 metrics: billed"),
        _line("CloudWatch Logs ingestion (GB)", log_gb, "logs_ingest_gb", "logs_data", "per user"),
        _line("CloudWatch Logs storage, 30-day retention (GB-month)", log_gb, "logs_storage_gb_month", "logs_data",
              "per user"),
        _line("CloudWatch Logs Insights: the dashboard's log widgets (GB scanned)", insights_gb,
              "logs_insights_gb_scanned", "logs_data", "per user"),
        _line("KMS customer managed key (no allowance)", 1, "kms_key_month", "kms_key", "fixed"),
        _line("KMS requests (data-key Decrypt in worker containers)", kms_requests, "kms_request", "kms_requests",
              "per user", f"{keys} data keys, LRU of {cache}"),
        _line("SNS alarm publishes", a["alarm_notifications_per_month"], "sns_publish", "sns_publishes", "fixed"),
        _line("SNS alarm e-mails", a["alarm_notifications_per_month"], "sns_email", "sns_email", "fixed"),
        _line("X-Ray traces (Tracing off by default)", 0, "xray_trace", "xray_traces", "per user"),
        _line("API Gateway HTTP API requests (free tier is 12-month only)", auth_invocations, "http_api_request",
              "http_api", "per user"),
        _line("S3: SAM artifact bucket (free tier is 12-month only)", a["artifact_bucket_gb"], "s3_gb_month", "s3",
              "fixed"),
        _line("EventBridge schedule", dispatches, "eventbridge_schedule", "free", "fixed"),
        _line("SSM standard parameters", 2, "ssm_standard_parameter", "free", "fixed"),
    ]
    _apply_allowances(lines, with_allowances)
    total = sum(line["usd"] for line in lines)
    variable = sum(line["usd"] for line in lines if line["scales"] == "per user")
    dominant = max(lines, key=lambda line: line["usd"])
    dominant_variable = max((line for line in lines if line["scales"] == "per user"), key=lambda line: line["usd"])
    return {
        "users": users,
        "with_allowances": with_allowances,
        "lines": lines,
        "total_usd": round(total, 4),
        "variable_usd": round(variable, 4),
        "fixed_usd": round(total - variable, 4),
        "dominant_line": dominant["line"] if dominant["usd"] > 0 else None,
        "dominant_variable_line": dominant_variable["line"] if dominant_variable["usd"] > 0 else None,
        "storage_growth_per_month_usd": round(
            (plays * (m["play_item_bytes"] + 100) / GB) * (PRICES["ddb_storage_gb_month"] + PRICES["ddb_pitr_gb_month"])
            + (unknown * m["catalog_bytes_per_unknown_track"] / GB) * PRICES["ddb_storage_gb_month"], 4),
        "polls_per_month": round(polls),
        "plays_per_month": round(plays),
        "messages_per_month": round(messages),
        "assumptions": {k: (v[kind] if isinstance(v, dict) else v) for k, v in a.items()},
        "prices_as_of": PRICES_AS_OF,
    }


PERSONAL_USERS = 5
FLEET_SIZES = (1_000, 10_000, 100_000)


def personal(m: dict[str, Any]) -> dict[str, Any]:
    return {"with_allowances": deployment(m, PERSONAL_USERS, with_allowances=True, kind="personal"),
            "without_allowances": deployment(m, PERSONAL_USERS, with_allowances=False, kind="personal")}


def fleet(m: dict[str, Any], sizes: tuple[int, ...] = FLEET_SIZES) -> dict[str, Any]:
    """Per fleet size: variable cost per 1,000 users without any allowance (the goal's figure), and
    the total per 1,000 users with fixed lines amortized, with and without allowances."""
    out = {}
    for users in sizes:
        without = deployment(m, users, with_allowances=False, kind="fleet")
        with_ = deployment(m, users, with_allowances=True, kind="fleet")
        scale = 1000 / users
        out[str(users)] = {
            "variable_per_1000_usd": round(without["variable_usd"] * scale, 4),
            "total_per_1000_usd_without_allowances": round(without["total_usd"] * scale, 4),
            "total_per_1000_usd_with_allowances": round(with_["total_usd"] * scale, 4),
            "dominant_variable_line": without["dominant_variable_line"],
            "without_allowances": without,
        }
    return out


def max_custom_metrics_for(goal_usd: float, m: dict[str, Any]) -> int:
    """The most custom metrics the personal deployment may have, all else as measured, to stay
    under `goal_usd` a month without allowances."""
    base = deployment({**m, "custom_metrics": 0}, PERSONAL_USERS, with_allowances=False, kind="personal")
    return max(0, math.ceil((goal_usd - base["total_usd"]) / PRICES["cw_metric_month"]) - 1)


def projected_issue_11(m: dict[str, Any]) -> dict[str, Any]:
    """The inputs with the idle-poll split of the polling issue's design instead of the measured one:
    per user a GetItem of the user (1 RRU, strongly consistent) and one conditional UpdateItem
    (1 WRU); per message the rate gate's GetItem and Powertools idempotency's PutItem + UpdateItem.
    A projection, not a measurement: a bench run after that issue lands measures it."""
    return {**m, "per_poll": {
        "per_user": {"dynamodb_requests": 2.0, "dynamodb_wru": 1.0, "dynamodb_rru": 1.0},
        "per_message": {"dynamodb_requests": 3.0, "dynamodb_wru": 2.0, "dynamodb_rru": 0.5}}}
