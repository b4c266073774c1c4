"""What a deployment costs a month, line by line, at a month of history (us-east-1).

Two deployments: a personal one (5 users, 30 plays a day each, 10 page views per user a month:
Spotify gives a development-mode app 5 users) and a fleet (1,000, 10,000 and 100,000 users, the
same listening and page views), each priced at month 1, 12 and 36 of history (the archive never
deletes plays: storage, point-in-time recovery and page reads grow with it; the token key's
rotations add to its price) with and without the always-free allowances an AWS account has every
month (not the 12-month offers for new accounts).

Where each figure comes from:
- the template (bench/template_facts.py, never typed here): alarm metrics, dashboards, keys and
  their rotation, triggered queues and their MaximumConcurrency, PITR / SSEEnabled tables and table
  classes, the dispatcher's schedule, the functions that read an SSM SecureString;
- measured by the bench (`cost_inputs` in results.json): DynamoDB requests and units per poll, per
  message, per play, per unknown track; Scans and read units of one dispatcher run and the item
  sizes of a real local run (bench/real_items.py); read units of a page view by history size
  (bench/rollups.py); write units per imported play (bench/imports.py); an export's time and parts
  (bench/export.py); worker seconds, log bytes;
- from AWS's documentation where nothing here can measure it, as a range priced at both ends
  (`low`/`high`; goals are judged on `high`): idle Lambda pollers per triggered queue (2..5; 5 when
  MaximumConcurrency is set), DynamoDB's own KMS calls per SSEEnabled table (0..12 an hour);
- assumed (`ASSUMPTIONS`, reported with each deployment): listening, page views, imports, exports.

Prices and allowances (us-east-1, as each AWS pricing page publishes them; checked 2026-12):
- Lambda https://aws.amazon.com/lambda/pricing/ : $0.20 per 1M requests, arm64 $0.0000133334 per
  GB-s; always free 1M requests and 400,000 GB-s a month.
- DynamoDB https://aws.amazon.com/dynamodb/pricing/on-demand/ : $0.625 per 1M write request units,
  $0.125 per 1M read request units (Standard-IA tables: 25 % more), storage $0.25 per GB-month
  (Standard-IA $0.10), PITR $0.20 per GB-month; always free 25 GB of storage, and 25 WCU + 25 RCU of
  *provisioned* capacity only: on-demand tables (all of PlayVault's) have no free request allowance.
  A Scan is billed on the size of the items it reads, whatever its projection.
- SQS https://aws.amazon.com/sqs/pricing/ : $0.40 per 1M standard requests (64 KB each); always free
  1M requests a month. Lambda's pollers long-poll (20 s) each triggered queue all month:
  https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-scaling.html (standard mode starts 5
  pollers and scales down to 2 when traffic is low, not when MaximumConcurrency is set).
- CloudWatch https://aws.amazon.com/cloudwatch/pricing/ : custom metric $0.30 a month, standard
  alarm $0.10 per alarm metric (a metric-math alarm pays for each metric it reads), high-resolution
  $0.30, composite $0.50, dashboard $3.00, Logs ingestion $0.50 per GB, storage $0.03 per GB-month,
  Logs Insights $0.005 per GB scanned; always free 10 custom metrics, 10 alarm metrics, 3 dashboards
  of up to 50 metrics each, 5 GB of Logs data (ingestion, archive storage and Insights scans).
- KMS https://aws.amazon.com/kms/pricing/ : customer managed key $1.00 a month, plus $1 a month for
  each of its first and second rotation (automatic or on demand; later rotations are free), $0.03
  per 10,000 requests (also the requests DynamoDB and SSM make to AWS managed keys for you); always
  free 20,000 requests a month. DynamoDB with an AWS managed key caches each table's key and calls
  KMS about every 5 minutes per table in use:
  https://docs.aws.amazon.com/kms/latest/developerguide/services-dynamodb.html . An SSM SecureString
  read with decryption is a KMS Decrypt (Powertools caches it per container, `max_age`).
- SES https://aws.amazon.com/ses/pricing/ : $0.10 per 1,000 e-mails (its free offer is 12 months only).
- SNS https://aws.amazon.com/sns/pricing/ : $0.50 per 1M publishes, e-mail $2.00 per 100,000;
  always free 1M publishes and 1,000 e-mail deliveries.
- X-Ray https://aws.amazon.com/xray/pricing/ : $5.00 per 1M traces; off by default (parameter Tracing).
- API Gateway HTTP API https://aws.amazon.com/api-gateway/pricing/ : $1.00 per 1M requests; its free
  tier is for 12 months only, so it is not applied here.
- S3 https://aws.amazon.com/s3/pricing/ : $0.023 per GB-month, PUT $0.005 per 1,000, GET $0.0004 per
  1,000; data transfer out $0.09 per GB, always free 100 GB a month (the storage free tier is for 12
  months only, not applied).
- EventBridge scheduled rules and AWS service events, SSM standard parameters: no charge.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

from bench import template_facts as tf

PRICES_AS_OF = "AWS pricing pages (us-east-1), checked 2026-12 against the pages cited in bench/cost.py"
PRICES = {
    "lambda_request": 0.20 / 1e6,
    "lambda_gb_s_arm64": 0.0000133334,
    "ddb_wru": 0.625 / 1e6,
    "ddb_rru": 0.125 / 1e6,
    "ddb_storage_gb_month": 0.25,
    "ddb_storage_ia_gb_month": 0.10,
    "ddb_pitr_gb_month": 0.20,
    "sqs_request": 0.40 / 1e6,
    "cw_metric_month": 0.30,
    "cw_alarm_metric_month": 0.10,
    "cw_alarm_metric_high_res_month": 0.30,
    "cw_composite_alarm_month": 0.50,
    "cw_dashboard_month": 3.00,
    "logs_ingest_gb": 0.50,
    "logs_storage_gb_month": 0.03,
    "logs_insights_gb_scanned": 0.005,
    "kms_key_month": 1.00,
    "kms_rotation_month": 1.00,
    "kms_request": 0.03 / 10_000,
    "ses_email": 0.10 / 1000,
    "sns_publish": 0.50 / 1e6,
    "sns_email": 2.00 / 100_000,
    "xray_trace": 5.00 / 1e6,
    "http_api_request": 1.00 / 1e6,
    "s3_gb_month": 0.023,
    "s3_put": 0.005 / 1000,
    "s3_get": 0.0004 / 1000,
    "data_transfer_out_gb": 0.09,
    "free": 0.0,
}
IA_REQUEST_MARKUP = 1.25  # Standard-IA tables: request units cost 25 % more

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
    "cw_alarms_other": None,
    "cw_dashboards": ("CloudWatch: 3 dashboards of up to 50 metrics each (always free)", 3),
    "logs_data": ("CloudWatch Logs: 5 GB of data: ingestion, storage and Logs Insights scans (always free)", 5),
    "kms_key": None,
    "kms_requests": ("KMS: 20,000 requests a month (always free)", 20_000),
    "ses": None,  # its free offer is for 12 months only
    "sns_publishes": ("SNS: 1M publishes a month (always free)", 1_000_000),
    "sns_email": ("SNS: 1,000 e-mail deliveries a month (always free)", 1_000),
    "xray_traces": ("X-Ray: 100,000 traces recorded a month (always free)", 100_000),
    "http_api": None,  # 1M requests a month for 12 months only
    "s3": None,  # 5 GB and 20,000 GET / 2,000 PUT for 12 months only
    "data_transfer": ("Data transfer out to the internet: 100 GB a month (always free)", 100),
    "free": None,
}

GB = 1024**3
DAYS = 30
HOURS = DAYS * 24
MONTHS = (1, 12, 36)
ITEM_OVERHEAD = 100  # DynamoDB adds 100 bytes of index overhead per item to the storage it bills

# What is assumed, not measured (each deployment reports the ones it used).
ASSUMPTIONS: dict[str, Any] = {
    "plays_per_day": 30,
    "poll_cadence_minutes": 60,  # the template's PollCadenceMinutes default (a user polled hourly)
    "polls_with_plays_per_day": 12,  # plays fall in about 12 of the 24 hourly polls (waking hours)
    "unknown_track_share": 0.3,  # share of plays whose track the catalog does not hold yet
    "page_views_per_user_per_month": 10,  # the account page (/me, the default period) each time
    "platform_log_bytes_per_invocation": 350,  # Lambda's START/END/REPORT lines
    "dashboard_views_per_month": 30,  # each view runs the Logs Insights widgets over 24 h of logs
    "alarm_notifications_per_month": 10,
    "signups_per_user_per_month": 1 / 12,  # a sign-in again: login + consent + callback, about 3 requests
    "http_requests_per_signup": 3,
    "artifact_bucket_gb": 0.05,  # the SAM artifact bucket (code and layer zips)
    # Imports: a personal deployment's users each import one year of history in month 1; in a fleet
    # 1 % of the users import one a month (newcomers). Imported plays are stored from then on.
    "import_plays_per_import": 30 * 365,
    "imports_share_per_month": {"personal": 0.0, "fleet": 0.01},
    "imports_in_month_1_share": {"personal": 1.0, "fleet": 0.01},
    "exports_per_user_per_month": 1 / 12,  # each user exports the whole history once a year
    "reminder_emails_per_user_per_month": 2 * DAYS / 182,  # 14 and 2 days before each 182-day authorization ends
    # KMS: a worker container opens each data key once per cache age (crypto.TokenCipher); an auth
    # container seals the users who sign up in one container-hour with one data key.
    "users_per_data_key": {"personal": 1, "fleet": 100},
    # None: as many as the worker's trigger allows (its MaximumConcurrency in the template; 5 without one)
    "worker_containers": {"personal": 1, "fleet": None},
    "worker_recycled_every_hours": {"personal": None, "fleet": 2},  # None: cold at every invocation
    "account_page_ms": 150,  # when the rollups bench gave no time (its moto time is an upper bound)
}


def _default_of(callable_: Any, name: str) -> Any:
    return inspect.signature(callable_).parameters[name].default


def code_facts() -> dict[str, Any]:
    """Cache ages the code sets (read from it, not typed here): the data-key cache of TokenCipher and
    the SSM parameters' cache of the credentials loader."""
    from playvault.crypto import TokenCipher
    from playvault.spotify import CredentialsLoader

    return {"data_key_max_age_s": float(_default_of(TokenCipher.__init__, "data_key_max_age_s")),
            "data_key_cache_size": int(_default_of(TokenCipher.__init__, "cache_size")),
            "ssm_max_age_s": float(_default_of(CredentialsLoader.__init__, "max_age_s"))}


def _line(name: str, quantity: float, price_key: str, allowance: str, scales: str, note: str = "",
          price: float | None = None) -> dict[str, Any]:
    return {"line": name, "quantity": quantity, "unit_price_usd": PRICES[price_key] if price is None else price,
            "allowance_key": allowance, "scales": scales, "note": note}


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


def _interpolate(points: dict[str, float], x: float) -> float:
    """Linear in log(x) between the measured history sizes; the end values beyond them."""
    pts = sorted((float(k), v) for k, v in points.items())
    if not pts:
        return 0.0
    if x <= pts[0][0]:
        return pts[0][1]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if x <= x1:
            t = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return y0 + t * (y1 - y0)
    return pts[-1][1]


def deployment(m: dict[str, Any], facts: dict[str, Any], users: int, month: int = 1, *, with_allowances: bool,
               kind: str, end: str = "high", assumptions: dict[str, Any] | None = None) -> dict[str, Any]:
    """One deployment's month `month` of history: lines (quantity, unit price, allowance used, USD),
    totals, dominant line.

    m: the measured inputs (`cost_inputs` in results.json); facts: template_facts.facts();
    kind: "personal" or "fleet" (picks the kind-specific assumptions); end: "low" or "high" end of the
    documented ranges (idle pollers, DynamoDB's KMS calls)."""
    a = {**ASSUMPTIONS, **(assumptions or {})}
    pick = {k: (v[kind] if isinstance(v, dict) else v) for k, v in a.items()}
    code = m.get("code_facts") or code_facts()
    high = end == "high"
    tables = facts["tables"]

    def table(logical: str) -> dict[str, Any]:
        return tables.get(logical) or {"pitr": False, "sse_kms": False, "table_class": "STANDARD"}

    # -- listening and polling
    runs = tf.dispatcher_runs_per_month(facts)
    period_minutes = HOURS * 60 / runs if runs else pick["poll_cadence_minutes"]
    polls_per_user_day = 24 * 60 / pick["poll_cadence_minutes"]
    polls = users * polls_per_user_day * DAYS
    polls_with_plays = users * min(pick["polls_with_plays_per_day"], polls_per_user_day) * DAYS
    plays = users * pick["plays_per_day"] * DAYS
    unknown = plays * pick["unknown_track_share"]
    due_per_run = users * min(1.0, period_minutes / pick["poll_cadence_minutes"])
    messages = runs * math.ceil(due_per_run / m["users_per_message"]) if users else 0

    # -- imports (one-off per importing user) and the history every later month stores
    import_share_now = pick["imports_in_month_1_share"] if month == 1 else pick["imports_share_per_month"]
    imports_now = users * import_share_now
    imported_so_far = users * (pick["imports_in_month_1_share"] + pick["imports_share_per_month"] * (month - 1))
    imported_plays_now = imports_now * pick["import_plays_per_import"]
    history_plays = plays * month + imported_so_far * pick["import_plays_per_import"]  # all users, at month end
    history_per_user = history_plays / max(1, users)

    per_play, per_poll_with_plays, per_unknown = m["per_play"], m["per_poll_with_plays"], m["per_unknown_track"]
    split = m["per_poll"]

    def units(key: str) -> float:
        return (polls * split["per_user"][key] + messages * split["per_message"][key]
                + polls_with_plays * per_poll_with_plays[key] + plays * per_play[key] + unknown * per_unknown[key])

    plays_markup = IA_REQUEST_MARKUP if table("PlaysTable")["table_class"] == "STANDARD_INFREQUENT_ACCESS" else 1.0
    poll_wru = units("dynamodb_wru") + plays * (plays_markup - 1) * per_play["dynamodb_wru"]
    rollup_wru = plays * m.get("rollup_recompute_wru_per_play", 0.0)
    poll_rru = units("dynamodb_rru")
    scans = m["dispatcher_scans_per_run"]
    scan_rru = runs * scans * max(0.5, math.ceil(users * m["user_item_bytes"] / 4096) * 0.5)
    gate_rru = runs * 0.5  # the dispatcher's GetItem of the rate gate
    page_views = users * pick["page_views_per_user_per_month"]
    page_rru = page_views * _interpolate(m.get("page_view_rru_by_history") or {"1": 1.0}, history_per_user)
    import_wru = imported_plays_now * m["import_wru_per_play"]
    exports = users * pick["exports_per_user_per_month"]
    export_rru = exports * history_per_user * max(m["play_item_bytes"], 1) / 4096 * 0.5

    # -- Lambda
    worker_invocations = messages
    trigger_cap = next((q["maximum_concurrency"] for q in facts["triggered_queues"].values()
                        if q.get("function") == "WorkerFunction" and q.get("maximum_concurrency")), 5)
    containers = pick["worker_containers"] or trigger_cap
    recycled = pick["worker_recycled_every_hours"]
    cold_starts = worker_invocations if recycled is None else min(containers * HOURS / recycled, worker_invocations)
    worker_gb_s = (messages * m["worker_seconds_per_message"] + cold_starts * m["worker_init_seconds"]) \
        * m["worker_memory_gb"]
    dispatcher_gb_s = runs * (m["dispatcher_seconds_fixed"] + m["dispatcher_seconds_per_user"] * users
                              + m["dispatcher_init_seconds"]) * m["dispatcher_memory_gb"]
    signups = users * pick["signups_per_user_per_month"]
    auth_invocations = signups * pick["http_requests_per_signup"]
    page_s = (m.get("page_view_ms") or pick["account_page_ms"]) / 1000
    account_gb_s = page_views * page_s * m["account_memory_gb"]
    import_s = imported_plays_now / m["import_rows_per_s"]
    export_s = exports * history_per_user / m["export_plays_per_s"]
    jobs_gb_s = export_s * m["jobs_memory_gb"]
    importer_gb_s = import_s * m["importer_memory_gb"]
    # Jobs and imports run in chunks of at most a function timeout: an invocation per chunk.
    export_invocations = exports * max(1.0, export_s / max(1, exports) / 300)
    import_invocations = imports_now * max(1.0, import_s / max(1e-9, imports_now) / 300) if imports_now else 0.0
    invocations = worker_invocations + runs + auth_invocations + page_views + export_invocations + import_invocations

    # -- SQS: sends (batches of 10), a receive and a delete per delivery; the idle pollers
    sqs_requests = messages / 10 + 2 * messages + 3 * (export_invocations + import_invocations)
    pollers = [tf.pollers(q)[1 if high else 0] for q in facts["triggered_queues"].values()]
    poller_requests = sum(pollers) * 3 * 60 * HOURS  # a 20 s long poll: 3 ReceiveMessage a poller-minute

    # -- logs
    log_bytes = (messages * m["log_bytes_per_message"] + runs * m["log_bytes_per_dispatch"]
                 + invocations * pick["platform_log_bytes_per_invocation"])
    log_gb = log_bytes / GB
    insights_gb = pick["dashboard_views_per_month"] * facts["logs_insights_widgets"] * (log_gb / DAYS)

    # -- storage at the end of the month: plays, users, catalog, rollups (by table, for PITR and class)
    catalog_tracks = unknown * month
    items = m.get("rollup_item_bytes_by_plays") or {}
    user_plays_month = pick["plays_per_day"] * DAYS
    if items.get("all"):
        rollup_other = (month * _interpolate(items.get("month") or {}, user_plays_month)
                        + math.ceil(month / 12) * _interpolate(items.get("year") or {}, user_plays_month * 12)
                        + _interpolate(items["all"], history_per_user))
    else:  # no page bench: the other items of the real run's users
        rollup_other = m["rollup_other_bytes_per_user"]
    by_table = {
        "PlaysTable": history_plays * (m["play_item_bytes"] + ITEM_OVERHEAD),
        "UsersTable": users * (m["user_item_bytes"] + ITEM_OVERHEAD),
        "TracksTable": catalog_tracks * (m["catalog_bytes_per_track"] + ITEM_OVERHEAD),
        "RollupsTable": users * (history_per_user * m["rollup_day_bytes_per_play"] + rollup_other),
    }
    storage_usd = 0.0
    storage_gb = sum(by_table.values()) / GB
    for logical, size in by_table.items():
        ia = table(logical)["table_class"] == "STANDARD_INFREQUENT_ACCESS"
        storage_usd += size / GB * PRICES["ddb_storage_ia_gb_month" if ia else "ddb_storage_gb_month"]
    storage_price = storage_usd / storage_gb if storage_gb else PRICES["ddb_storage_gb_month"]
    pitr_gb = sum(size for logical, size in by_table.items() if table(logical)["pitr"]) / GB

    # -- KMS
    keys = facts["kms_keys"]
    rotations = sum(tf.key_rotations_billed(k, month) for k in keys.values())
    data_keys = max(1, math.ceil(users / pick["users_per_data_key"]))
    cache = code["data_key_cache_size"]
    opens_per_hour = 3600 / code["data_key_max_age_s"]
    data_key_decrypts = min(polls, containers * min(data_keys, cache) * HOURS * opens_per_hour) \
        + max(0.0, 1 - cache / data_keys) * polls + signups / 10
    ssm_cap = HOURS * 3600 / code["ssm_max_age_s"]  # one read per container per cache age at most
    readers = facts["secure_parameter_reads"]
    ssm_decrypts = 0.0
    for function, invoked, count in (("WorkerFunction", worker_invocations, containers),
                                     ("AccountFunction", page_views, 1), ("AuthFunction", auth_invocations, 1),
                                     ("ImporterFunction", import_invocations, 1)):
        if function in readers:
            ssm_decrypts += min(invoked, count * ssm_cap) * len(readers[function])
    sse_tables = facts["sse_kms_tables"]
    sse_requests = len(sse_tables) * 12 * HOURS if high else 0.0
    reminders = users * pick["reminder_emails_per_user_per_month"]

    # -- exports: S3 parts and the download
    export_bytes = exports * history_per_user * m["export_bytes_per_play"]
    export_parts = exports * max(1.0, history_per_user * m["export_bytes_per_play"] / m["export_part_bytes"])

    alarm_metrics = facts["alarm_metrics"]
    dashboard_metrics = facts["dashboard_metrics"]
    dashboards = len(facts["dashboards"])
    queue_names = ", ".join(f"{q} ({p})" for q, p in zip(facts["triggered_queues"], pollers, strict=True))
    lines = [
        _line("Lambda requests: worker (work messages)", worker_invocations, "lambda_request", "lambda_requests",
              "per user"),
        _line(f"Lambda requests: dispatcher ({runs:,.0f} runs, the template's schedule)", runs, "lambda_request",
              "lambda_requests", "fixed"),
        _line("Lambda requests: auth, account pages, export and import chunks",
              auth_invocations + page_views + export_invocations + import_invocations, "lambda_request",
              "lambda_requests", "per user"),
        _line("Lambda duration: worker incl. cold-start init (arm64 GB-s)", worker_gb_s, "lambda_gb_s_arm64",
              "lambda_gb_s", "per user"),
        _line("Lambda duration: dispatcher (arm64 GB-s)", dispatcher_gb_s, "lambda_gb_s_arm64", "lambda_gb_s",
              "per user"),
        _line("Lambda duration: account pages, exports, imports (arm64 GB-s)",
              account_gb_s + jobs_gb_s + importer_gb_s, "lambda_gb_s_arm64", "lambda_gb_s", "per user"),
        _line("DynamoDB write units: polls and new plays (on-demand)", poll_wru, "ddb_wru", "ddb_requests",
              "per user"),
        _line("DynamoDB write units: rollups recomputed for new plays", rollup_wru, "ddb_wru", "ddb_requests",
              "per user"),
        _line("DynamoDB write units: imported plays", import_wru, "ddb_wru", "ddb_requests", "per user",
              f"{imported_plays_now:,.0f} plays imported this month"),
        _line("DynamoDB read units: polls", poll_rru, "ddb_rru", "ddb_requests", "per user"),
        _line(f"DynamoDB read units: dispatcher, {scans:g} Scan(s) of the users per run + the rate gate",
              scan_rru + gate_rru, "ddb_rru", "ddb_requests", "per user"),
        _line(f"DynamoDB read units: page views ({pick['page_views_per_user_per_month']} per user a month)",
              page_rru, "ddb_rru", "ddb_requests", "per user", f"{history_per_user:,.0f} plays of history per user"),
        _line("DynamoDB read units: exports (Query of the whole history)", export_rru, "ddb_rru", "ddb_requests",
              "per user"),
        _line(f"DynamoDB storage at month {month} (GB-month: plays, users, catalog, rollups)", storage_gb,
              "ddb_storage_gb_month", "ddb_storage", "per user", f"{history_plays:,.0f} plays stored",
              price=storage_price),
        _line(f"DynamoDB point-in-time recovery, the PITR tables' data (GB-month, {len(facts['pitr_tables'])} "
              f"tables have PITR)", pitr_gb, "ddb_pitr_gb_month", "ddb_pitr", "per user"),
        _line("SQS requests (send, receive, delete)", sqs_requests, "sqs_request", "sqs_requests", "per user"),
        _line(f"SQS: Lambda's idle pollers on {len(pollers)} triggered queue(s), {'high' if high else 'low'} end",
              poller_requests, "sqs_request", "sqs_requests", "fixed", queue_names),
        _line("CloudWatch custom metrics (DetailedMetrics off)", m["custom_metrics"], "cw_metric_month",
              "cw_metrics", "fixed"),
        _line(f"CloudWatch alarm metrics ({len(facts['alarms'])} alarms read {alarm_metrics})", alarm_metrics,
              "cw_alarm_metric_month", "cw_alarms", "fixed"),
        _line("CloudWatch high-resolution alarm metrics", facts["alarm_metrics_high_resolution"],
              "cw_alarm_metric_high_res_month", "cw_alarms_other", "fixed"),
        _line("CloudWatch composite alarms", facts["composite_alarms"], "cw_composite_alarm_month",
              "cw_alarms_other", "fixed"),
        _line(f"CloudWatch dashboards ({dashboard_metrics} metrics)", dashboards, "cw_dashboard_month",
              "cw_dashboards" if dashboard_metrics <= 50 * max(1, dashboards) else "free", "fixed",
              "free only with at most 50 metrics each"),
        _line("CloudWatch Logs ingestion (GB)", log_gb, "logs_ingest_gb", "logs_data", "per user"),
        _line("CloudWatch Logs storage (GB-month)", log_gb, "logs_storage_gb_month", "logs_data", "per user"),
        _line("CloudWatch Logs Insights: the dashboard's log widgets (GB scanned)", insights_gb,
              "logs_insights_gb_scanned", "logs_data", "per user"),
        _line(f"KMS customer managed keys ({len(keys)})", len(keys), "kms_key_month", "kms_key", "fixed"),
        _line(f"KMS key rotations billed at month {month} (first and second rotation, $1 a month each)",
              rotations, "kms_rotation_month", "kms_key", "fixed"),
        _line(f"KMS requests: data-key Decrypt in worker containers (cache {code['data_key_max_age_s']:.0f} s)",
              data_key_decrypts, "kms_request", "kms_requests", "per user", f"{data_keys} data keys, LRU of {cache}"),
        _line(f"KMS requests: SSM SecureString reads (Powertools cache {code['ssm_max_age_s']:.0f} s)",
              ssm_decrypts, "kms_request", "kms_requests", "per user"),
        _line(f"KMS requests: DynamoDB's table keys, {len(sse_tables)} SSEEnabled tables, {'high' if high else 'low'}"
              f" end", sse_requests, "kms_request", "kms_requests", "fixed", "0 (idle) .. 12 an hour per table"),
        _line("KMS requests: reminder e-mails open the sealed address", reminders, "kms_request", "kms_requests",
              "per user"),
        _line("SES reminder e-mails (NotificationSender set)", reminders, "ses_email", "ses", "per user"),
        _line("SNS alarm publishes", pick["alarm_notifications_per_month"], "sns_publish", "sns_publishes", "fixed"),
        _line("SNS alarm e-mails", pick["alarm_notifications_per_month"], "sns_email", "sns_email", "fixed"),
        _line("X-Ray traces (Tracing off by default)", 0, "xray_trace", "xray_traces", "per user"),
        _line("API Gateway HTTP API requests: sign-ins and page views", auth_invocations + page_views,
              "http_api_request", "http_api", "per user"),
        _line("S3 PUT requests: export parts", export_parts + 2 * exports, "s3_put", "s3", "per user"),
        _line("Data transfer out: export downloads (GB)", export_bytes / GB, "data_transfer_out_gb", "data_transfer",
              "per user"),
        _line("S3: SAM artifact bucket (GB-month)", pick["artifact_bucket_gb"], "s3_gb_month", "s3", "fixed"),
        _line("EventBridge schedule and S3 events", runs, "free", "free", "fixed"),
    ]
    _apply_allowances(lines, with_allowances)
    total = sum(line["usd"] for line in lines)
    variable = sum(line["usd"] for line in lines if line["scales"] == "per user")
    dominant = max(lines, key=lambda line: line["usd"])
    dominant_variable = max((line for line in lines if line["scales"] == "per user"), key=lambda line: line["usd"])
    return {
        "users": users, "month": month, "end": end, "with_allowances": with_allowances,
        "lines": lines,
        "total_usd": round(total, 4),
        "variable_usd": round(variable, 4),
        "fixed_usd": round(total - variable, 4),
        "dominant_line": dominant["line"] if dominant["usd"] > 0 else None,
        "dominant_variable_line": dominant_variable["line"] if dominant_variable["usd"] > 0 else None,
        "polls_per_month": round(polls), "plays_per_month": round(plays), "messages_per_month": round(messages),
        "dispatcher_runs_per_month": round(runs), "history_plays": round(history_plays),
        "storage_gb_by_table": {k: round(v / GB, 4) for k, v in by_table.items()},
        "assumptions": pick,
        "prices_as_of": PRICES_AS_OF,
    }


PERSONAL_USERS = 5
FLEET_SIZES = (1_000, 10_000, 100_000)


def _ranged(m: dict[str, Any], facts: dict[str, Any], users: int, month: int, **kw: Any) -> dict[str, Any]:
    """The high end with the low end's total beside it (goals are judged on the high end)."""
    high = deployment(m, facts, users, month, end="high", **kw)
    low = deployment(m, facts, users, month, end="low", **kw)
    high["total_usd_low"] = low["total_usd"]
    high["variable_usd_low"] = low["variable_usd"]
    for line, other in zip(high["lines"], low["lines"], strict=True):
        if other["usd"] != line["usd"]:
            line["usd_low"] = other["usd"]
    return high


def personal(m: dict[str, Any], facts: dict[str, Any], months: tuple[int, ...] = MONTHS) -> dict[str, Any]:
    return {str(month): {
        "with_allowances": _ranged(m, facts, PERSONAL_USERS, month, with_allowances=True, kind="personal"),
        "without_allowances": _ranged(m, facts, PERSONAL_USERS, month, with_allowances=False, kind="personal")}
        for month in months}


def fleet(m: dict[str, Any], facts: dict[str, Any], sizes: tuple[int, ...] = FLEET_SIZES,
          months: tuple[int, ...] = MONTHS) -> dict[str, Any]:
    """Per month and fleet size: variable cost per 1,000 users without any allowance (the goal's
    figure), and the total per 1,000 users with fixed lines amortized, with and without allowances."""
    out: dict[str, Any] = {}
    for month in months:
        out[str(month)] = {}
        for users in sizes:
            without = _ranged(m, facts, users, month, with_allowances=False, kind="fleet")
            with_ = _ranged(m, facts, users, month, with_allowances=True, kind="fleet")
            scale = 1000 / users
            out[str(month)][str(users)] = {
                "variable_per_1000_usd": round(without["variable_usd"] * scale, 4),
                "variable_per_1000_usd_low": round(without["variable_usd_low"] * scale, 4),
                "total_per_1000_usd_without_allowances": round(without["total_usd"] * scale, 4),
                "total_per_1000_usd_with_allowances": round(with_["total_usd"] * scale, 4),
                "dominant_variable_line": without["dominant_variable_line"],
                "without_allowances": without,
            }
    return out
