"""The end-of-run report: Spotify's truth (the emulator) against what the archive holds.

- exposed: plays Spotify returned at least once (the emulator records every play in the window it served);
- lost: exposed plays with no row in the plays table (the archive's one unforgivable failure),
  except those the next poll will still fetch (in Spotify's window at the end: "recoverable", e.g.
  a last poll that failed after its fetch) and unreadable items (`track: null`: nothing to archive,
  counted as bad items);
- late plays: plays that showed up in the feed after their played_at (offline devices): exposed
  and archived are reported apart, and count in the totals like any other play;
- duplicated: rows beyond one per (user, played_at), plus rows for plays that never happened
  (--import: a row an import wrote counts for the play its export row reports; the rest, listening
  before sign-up, is the import section's to account: import_run.Imports.accounting);
  (the plays table is read in one go from the AWS emulator's memory: reading 25,000 rows back
  through moto's Query costs minutes, the archive itself never reads them);
- gap plays: plays never exposed although older plays and newer plays of the same user were
  (they fell out of the 50-play window between two polls). Plays newer than a user's last poll are
  pending (not yet due, or the user revoked access); plays older than the first poll are history
  Spotify no longer had;
- app faults: the AWS throttles that reached the code (SSM GetParameter, DynamoDB), the worker's
  polls they hit and how those ended, and the users charged for them (playvault_local.chaos.
  AppFaultLedger): a poll that met an app-level fault and still wrote a failure to the user's record.
"""

from __future__ import annotations

import statistics
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from playvault.normalize import canonical_played_at_ms
from spotify_emulator.state import UNREADABLE_KINDS, WINDOW

REQUIRED_KEYS = ("users", "hours", "plays_exposed", "plays_archived", "plays_lost", "plays_duplicated", "gap_plays",
                 "gaps_detected", "failures_by_type", "dlq_messages", "spotify_requests", "dynamodb_requests")


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def _window_time(window_id: str) -> float | None:
    try:
        return datetime.strptime(window_id, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC).timestamp()
    except (TypeError, ValueError):
        return None


def build_report(sim: Any, baseline: dict[str, Any], counts: dict[str, Any]) -> dict[str, Any]:
    import json

    system = sim.system
    stack = system.stack
    state = system.emulator_state
    ddb = system.ddb
    plays_table = stack.name("PlaysTable")
    users_table = stack.name("UsersTable")
    source = sim.source

    # who was delivered when, by dispatch window (to check revoked users are no longer dispatched)
    deliveries_by_user: dict[str, list[float]] = {}
    for delivery in source.deliveries:
        try:
            window = json.loads(delivery.body).get("window_id")
        except (ValueError, AttributeError):
            continue
        moment = _window_time(window)
        for user_id in source.users_of(delivery):
            deliveries_by_user.setdefault(user_id, []).append(moment if moment is not None else delivery.at)

    gap_records = sum(1 for _ in system.aws.table_items(stack.name("GapsTable"), ["user_id"]))
    polls_by_user: Counter[str] = Counter(sim.polls_by_user)

    rows_by_user: dict[str, list[dict[str, Any]]] = {}
    for row in system.aws.table_items(plays_table, ["user_id", "played_at", "played_at_ms", "source", "import_ref"]):
        rows_by_user.setdefault(row["user_id"], []).append(row)
    imports = getattr(sim, "imports", None)  # --import: uploads made during the hours (import_run)

    totals = Counter()
    per_user: dict[str, dict[str, Any]] = {}
    statuses: Counter[str] = Counter()
    undetected: list[str] = []
    revoked: dict[str, Any] = {}
    for user in sim.population:
        user_id = user.user_id
        # What recently-played lists (never a podcast episode: those only the data export has).
        truth_rows = [p for p in state.ground_truth(user_id) if p.get("in_feed", True)]
        truth = {p["played_at_ms"] for p in truth_rows}
        late_ms = {p["played_at_ms"] for p in truth_rows if p.get("late_s")}
        shown_ms = {p["played_at_ms"]: p["played_at_ms"] + int(p.get("late_s", 0) * 1000) for p in truth_rows}
        unreadable = {p["played_at_ms"] for p in truth_rows if p.get("bad_kind") in UNREADABLE_KINDS}
        exposed = state.exposed_play_ms(user_id)
        row_ms = [int(r["played_at_ms"]) for r in rows_by_user.get(user_id, [])]
        archived = {m for m in row_ms if m in truth}
        duplicate_rows = sum(1 for m in row_ms if m in truth) - len(archived)
        phantom = set()
        for row in rows_by_user.get(user_id, []):
            ms = int(row["played_at_ms"])
            stream = imports.stream_of(row.get("import_ref")) if imports is not None and ms not in truth else None
            if stream is not None:  # an imported row: the play it stands for is archived
                if stream[0] == "play":
                    archived.add(stream[1])
            elif ms not in truth and row.get("source") != "export":
                phantom.add(ms)
        # Imported rows of listening before sign-up, and their duplicates, are the import section's to count.
        item = ddb.get_item(TableName=users_table, Key={"user_id": {"S": user_id}}, ConsistentRead=True).get("Item")
        # Not archived yet, but the next poll will fetch them: still in Spotify's window now.
        window = state.visible_window_ms(user_id)
        recoverable = {m for m in exposed - archived - unreadable if m in window}
        lost = exposed - archived - recoverable - unreadable
        last_poll = _parse_time(item.get("last_polled_at", {}).get("S")) if item else None
        # Late plays Spotify had not shown yet at the user's last poll: pending, not a gap.
        not_shown_yet = {m for m in truth - exposed if m in late_ms
                         and (last_poll is None or shown_ms[m] > last_poll * 1000)}
        # Late plays never seen: shown by Spotify only once older than its 50 newest (no client sees
        # them), or in its window for less time than between two polls. Reported apart from gaps:
        # no poll found a full page, so nothing could tell they existed.
        late_missed = {m for m in truth - exposed - not_shown_yet if m in late_ms}
        outside_window = {m for m in late_missed
                          if sum(1 for o, v in shown_ms.items() if o > m and v <= shown_ms[m]) >= WINDOW}
        never = truth - exposed - not_shown_yet - late_missed
        if exposed:
            low, high = min(exposed), max(exposed)
            gap = {m for m in never if low < m < high}
            before = {m for m in never if m < low}
            pending = {m for m in never if m > high} | not_shown_yet
        else:
            gap, before, pending = set(), set(), set(never) | not_shown_yet
        status = item["status"]["S"] if item and "status" in item else "missing"
        gaps_detected = int(item["gaps_detected"]["N"]) if item and "gaps_detected" in item else 0
        statuses[status] += 1
        if gap and not gaps_detected:
            undetected.append(user_id)
        totals.update(late_exposed=len(late_ms & exposed), late_archived=len(late_ms & archived),
                      late_never_in_window=len(outside_window), late_missed=len(late_missed),
                      bad_exposed=len(unreadable & exposed))
        totals.update(truth=len(truth), exposed=len(exposed), archived=len(archived), rows=len(row_ms),
                      lost=len(lost), recoverable=len(recoverable), duplicated=duplicate_rows + len(phantom),
                      gap=len(gap), before=len(before),
                      pending=len(pending), gaps_detected=gaps_detected)
        per_user[user_id] = {"profile": user.profile, "tags": user.tags, "status": status, "truth": len(truth),
                             "polls": polls_by_user.get(user_id, 0),
                             "exposed": len(exposed), "archived": len(archived), "lost": len(lost),
                             "recoverable": len(recoverable),
                             "duplicated": duplicate_rows + len(phantom), "gap_plays": len(gap),
                             "gaps_detected": gaps_detected, "pending": len(pending),
                             "late_missed": len(late_missed),
                             # Where to start reading the logs (--log) when a play is lost.
                             "lost_examples": [canonical_played_at_ms(m) for m in sorted(lost)[:5]]}
        if user.revoke_at_hour is not None:
            flipped = item.get("last_failed_at", {}).get("S") if item else None
            flipped_at = _parse_time(flipped) if status == "needs_reauth" else None
            later = [t for t in deliveries_by_user.get(user_id, []) if flipped_at is not None and t > flipped_at]
            revoked[user_id] = {"revoked_at_hour": user.revoke_at_hour, "status": status,
                                "needs_reauth_since": flipped, "dispatched_after_needs_reauth": len(later)}
    rotating = {u.user_id: per_user[u.user_id] for u in sim.population if u.rotate_refresh_tokens}

    output = system.output
    failures = {k: int(v) for k, v in sorted(output.by_dimension("UsersFailed", "FailureType").items())}
    dlq_logical = system.dead_letter_queue(source.spec.queue_logical_id)
    dlq_bodies: list[str] = []
    if dlq_logical:
        dlq_url = system.queue_url(dlq_logical)
        while True:
            answer = system.sqs.receive_message(QueueUrl=dlq_url, MaxNumberOfMessages=10, VisibilityTimeout=600,
                                                WaitTimeSeconds=0)
            batch = answer.get("Messages") or []
            if not batch:
                break
            dlq_bodies.extend(m["Body"] for m in batch)
    in_flight = system.aws.queue_state(source.queue_name)["messages"]

    server_diff = _diff(counts["server"], baseline["server"])
    dynamodb_by_op = {k.split(".", 1)[1]: v for k, v in sorted(server_diff.items()) if k.startswith("dynamodb.")}
    spotify_diff = _diff(counts["spotify"], baseline["spotify"])
    chaos = sim.chaos
    from playvault_local import chaos as chaos_mod

    report: dict[str, Any] = {
        "users": len(sim.population),
        "hours": sim.config.hours,
        "seed": sim.config.seed,
        "faults": sim.config.faults,
        "sign_ups": dict(sim.sign_ups),
        "polls": int(output.total("UsersArchived") + output.total("UsersFailed")),
        "users_skipped": int(output.total("UsersSkipped")),
        "plays_played": totals["truth"],
        "plays_exposed": totals["exposed"],
        "plays_archived": totals["archived"],
        "plays_lost": totals["lost"],
        "plays_recoverable": totals["recoverable"],
        "plays_duplicated": totals["duplicated"],
        "gap_plays": totals["gap"],
        "gaps_detected": totals["gaps_detected"],
        "gaps_detected_metric": int(output.total("GapsDetected")),
        "gaps_recorded": gap_records,
        "late_plays_exposed": totals["late_exposed"],
        "late_plays_archived": totals["late_archived"],
        "late_plays_never_in_window": totals["late_never_in_window"],
        "late_plays_missed": totals["late_missed"],
        "bad_items_skipped": int(output.total("BadItemsSkipped")),
        "bad_items_exposed": totals["bad_exposed"],
        "polls_per_user": _spread([polls_by_user.get(u.user_id, 0) for u in sim.population]),
        "spotify_requests_per_user_hour": round(sum(spotify_diff.values()) / max(1, len(sim.population)
                                                                                 * sim.config.hours), 3),
        "users_with_gap_plays": sum(1 for u in per_user.values() if u["gap_plays"]),
        "users_with_undetected_gaps": undetected,
        "plays_pending": totals["pending"],
        "plays_before_first_poll": totals["before"],
        "failures_by_type": failures,
        # RateLimited: users a worker deferred (a quota 429 included) + dispatcher runs the closed gate held.
        "deferrals": {"rate_limited": int(output.total("RateLimited")),
                      "quota_exceeded_users": int(output.total("QuotaExceeded")),
                      "app_failure_users": int(output.total("SpotifyAppFailures")),
                      "requeued_out_of_time_or_aws_error": int(output.total("UsersRequeued"))},
        "malformed_messages": int(output.total("MalformedMessages")),
        "dlq_messages": len(dlq_bodies),
        "dlq_bodies": [b[:200] for b in dlq_bodies],
        "in_flight_at_end": in_flight,
        "drained": sim.drained,
        "users_by_status": dict(statuses),
        "revoked_users": revoked,
        "rotating_refresh_token_users": rotating,
        "spotify_requests": sum(spotify_diff.values()),
        "spotify_requests_by_endpoint": spotify_diff,
        "dynamodb_requests": sum(dynamodb_by_op.values()),
        "dynamodb_requests_by_operation": dynamodb_by_op,
        "dynamodb_calls_client_side": sum(_diff(counts["client_dynamodb"], baseline["client_dynamodb"]).values()),
        "other_aws_requests": {k: v for k, v in server_diff.items() if not k.startswith("dynamodb.")},
        "dispatches": len(sim.dispatch_reports),
        "dispatch_errors": dict(sim.dispatch_errors),
        "needs_reauth_at_last_dispatch": (sim.dispatch_reports[-1].get("needs_reauth")
                                          if sim.dispatch_reports else None),
        "worker": {"invocations": source.stats.invocations, "messages_received": source.stats.messages_received,
                   "messages_deleted": source.stats.messages_deleted,
                   "batch_item_failures": source.stats.item_failures,
                   "function_errors": dict(source.stats.function_errors)},
        "function_log_levels": dict(system.output.log_levels),
        "app_faults": app_faults_section(sim),
        "chaos": chaos_mod.summary(chaos, sim.crash, sim.duplicator, system.hooks.throttled,
                                    getattr(system.emulator, "timeouts_injected", 0),
                                    system.hooks.retried_throttles,
                                    getattr(system.emulator, "answers_not_received", 0)) if chaos else None,
        "time": {
            "clock": "one simulated clock for the domain, the Spotify emulator, SQS (moto) and idempotency expiry",
            "scaling": "none: DelaySeconds, visibility timeouts and the spread window are the template's, in "
                       "simulated seconds; the clock jumps to the next due message or schedule tick",
            "time_scale": sim.config.time_scale or "unpaced",
            "simulated_start": sim.config.start.isoformat(),
            "simulated_end": system.clock().isoformat(),
        },
        "per_user": per_user,
    }
    if sim.config.days:
        report["lifecycle"] = lifecycle_section(sim, statuses)
    return report


def app_faults_section(sim: Any) -> dict[str, Any]:
    hooks = sim.system.hooks
    return {
        "ssm_throttle_rate": sim.config.ssm_throttle_rate,
        "ssm_get_parameter_calls": hooks.ssm_calls.get("GetParameter", 0),
        # An upper bound of the real rate: the simulated clock stands still while functions run.
        "ssm_get_parameter_max_per_simulated_second": max(hooks.ssm_calls_per_second.values(), default=0),
        "ssm_throttled": hooks.ssm_throttled,
        "dynamodb_throttled": sum(hooks.throttled.values()),
        **sim.app_faults.report(),
    }


def app_faults_lines(report: dict[str, Any]) -> list[str]:
    faults = report.get("app_faults")
    if not faults:
        return []
    return [
        f"  app faults    : SSM throttled {faults['ssm_throttled']} of {faults['ssm_get_parameter_calls']} "
        f"GetParameter calls (at most {faults['ssm_get_parameter_max_per_simulated_second']} in one simulated "
        f"second), DynamoDB throttled {faults['dynamodb_throttled']}; worker polls they hit: "
        f"{words(faults['polls_hit'])}{_with_words(faults['outcomes_of_polls_hit'])}; outside any poll: "
        f"{words(faults['faults_outside_polls'])}",
        f"  users charged for app failures: {len(faults['users_charged_for_app_failures'])}"
        + (f" ({words(faults['users_charged_for_app_failures'])})" if faults["users_charged_for_app_failures"]
           else ""),
    ]


def _spread(values: list[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "median": 0, "max": 0}
    ordered = sorted(values)
    return {"min": ordered[0], "median": float(statistics.median(ordered)), "max": ordered[-1]}


# -- the authorization lifecycle (--days) --------------------------------------------------------------
def lifecycle_section(sim: Any, statuses: Counter[str]) -> dict[str, Any]:
    """Reminders, expiries, reconnects and lapses over the run: from the dispatcher's answers (its
    lifecycle report per run), the e-mails SES (moto) accepted, and the sign-ins the runner made."""
    runs = [r.get("lifecycle") or {} for r in sim.dispatch_reports]
    reminders: Counter[str] = Counter()
    for run in runs:
        reminders.update(run.get("reminders_sent") or {})
    mail = sim.system.aws.sent_mail()
    events = sim.lifecycle_events
    outcomes = Counter(f"{e['action']}:{e['outcome']}" for e in events)
    by_day: dict[str, list[str]] = {}
    for message in mail:
        by_day.setdefault(",".join(message["to"]), []).append(message["subject"])
    return {
        "days": sim.config.days,
        "tick_hours": sim.config.tick_hours,
        "reminders_sent": dict(reminders),
        "emails_captured": len(mail),
        "users_e_mailed": len(by_day),
        "expiring_soon_max": max((run.get("expiring_soon", 0) for run in runs), default=0),
        "expired_at_end": runs[-1].get("expired", 0) if runs else 0,
        "lapsed": sum(run.get("lapsed", 0) for run in runs),
        "reconnected": outcomes.get("sign_in_again:reconnected", 0),
        "late_sign_ups": outcomes.get("sign_up:signed_up", 0),
        "waitlisted_on_sign_in": outcomes.get("sign_in_again:waitlisted", 0) + outcomes.get("sign_up:waitlisted", 0),
        "users_by_status": dict(statuses),
        "events": events,
        "emails": [{"to": m["to"], "subject": m["subject"]} for m in mail],
    }


def lifecycle_lines(report: dict[str, Any]) -> list[str]:
    life = report.get("lifecycle")
    if not life:
        return []
    return [
        f"  lifecycle     : {life['days']} days, dispatcher every {life['tick_hours']} h; reminders "
        f"{life['reminders_sent'] or 'none'} ({life['emails_captured']} e-mails to {life['users_e_mailed']} users, "
        f"captured from SES); expiring within 14 days at most {life['expiring_soon_max']}; expired at end "
        f"{life['expired_at_end']}",
        f"  seats         : reconnected {life['reconnected']}, lapsed {life['lapsed']}, late sign-ups "
        f"{life['late_sign_ups']}, sent to the waitlist on sign-in {life['waitlisted_on_sign_in']}",
    ]


def _parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
    except ValueError:
        try:
            return datetime.fromisoformat(value).timestamp()
        except ValueError:
            return None


def verdict(report: dict[str, Any]) -> bool:
    return (report["plays_lost"] == 0 and report["plays_duplicated"] == 0 and import_verdict(report)
            and not charged_for_app_failures(report))


def charged_for_app_failures(report: dict[str, Any]) -> list[str]:
    return list((report.get("app_faults") or {}).get("users_charged_for_app_failures") or [])


def import_verdict(report: dict[str, Any]) -> bool:
    """--import: every qualifying stream archived once (none lost, none duplicated), every imported
    play named, every job done."""
    section = report.get("import")
    if section is None:
        return True
    return (section["plays_lost"] == 0 and section["plays_duplicated"] == 0
            and section["imported_plays_without_name"] == 0 and set(section["jobs_by_state"]) == {"done"})


def import_summary_lines(report: dict[str, Any]) -> list[str]:
    section = report.get("import")
    if section is None:
        return []
    named = section["imported_plays"] - section["imported_plays_without_name"]
    return [
        f"  import        : {section['uploads']} exports ({words(section['uploads_by_scenario'])}), "
        f"{section['rows_in_exports']} rows; plays added {section['plays_added']}, duplicates avoided "
        f"{section['duplicates_avoided']} (the importer's figures)",
        f"  import check  : {section['streams_expected']} streams (polled or in an export), archived "
        f"{section['streams_archived']}; lost {section['plays_lost']}, duplicated {section['plays_duplicated']}; "
        f"names present on {named} of {section['imported_plays']} imported plays"
        + ("" if section["imported_plays_without_name"] else " (every imported play)"),
        "  by scenario   : " + "; ".join(f"{s.replace('_', ' ')}: {c['users']} users, lost {c['lost']}, "
                                          f"duplicated {c['duplicated']}" for s, c in section["by_scenario"].items()),
        f"  import detail : skipped {section['skipped_by_reason']}; episodes {section['episodes_added']}; "
        f"tracks resolved {section['tracks_resolved']} (left {section['tracks_still_to_resolve']}); "
        f"jobs {section['jobs_by_state']}; plays in table {section['plays_in_table_before']} -> "
        f"{section['plays_in_table_after']}",
        *(f"  e.g. {kind.replace('_', ' '):12}: {'; '.join(found[:3])}" for kind, found in section["examples"].items()),
    ]


def words(value: Any) -> str:
    """A count, list or (nested) dict as words: {"AUTH": 2, "NETWORK": 1} -> "AUTH 2, NETWORK 1"."""
    if isinstance(value, dict):
        # snake_case field names become words; names such as AUTH_REVOKED stay searchable as they are.
        parts = [f"{key.replace('_', ' ') if str(key).islower() else key} {words(item)}"
                 for key, item in value.items() if item not in (None, {}, [])]
        return ", ".join(parts) if parts else "none"
    if isinstance(value, list | tuple):
        return ", ".join(words(item) for item in value) if value else "none"
    return str(value)


def _with_words(value: Any) -> str:
    """A dict in parentheses after its total ("5 (recently played 4, token 1)"), or nothing."""
    text = words(value)
    return "" if text == "none" else f" ({text})"


def iam_denied(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The AWS calls the functions' roles would refuse on AWS (see playvault_local.iam)."""
    return list((report.get("iam") or {}).get("denied") or [])


def iam_summary_lines(report: dict[str, Any]) -> list[str]:
    section = report.get("iam")
    if section is None:
        return []
    denied = section["denied"]
    lines = [f"  IAM           : {section['checked_calls']} AWS requests checked against their function's role "
             f"(template translated as sam deploy does), {sum(d['count'] for d in denied)} denied"]
    lines += [f"    DENIED      : {d['function']} may not {d['action']} on {d['resource']} (call {d['call']}, "
              f"{d['count']} time(s)); closest statement: {d['closest']}" for d in denied]
    for function, grants in section["granted_never_used"].items():
        lines.append(f"    never used  : {function}: {'; '.join(grants)}")
    return lines


def summary_lines(report: dict[str, Any]) -> list[str]:
    t = report.get("timings_s", {})
    lines = [
        f"PlayVault local run: {report['users']} users x {report['hours']} simulated hours "
        f"(faults: {report['faults']}, seed {report['seed']})",
        f"  time          : one simulated clock; no scaling (SQS delays/visibility timeouts in simulated seconds); "
        f"{t.get('total_s', '?')} s real ({t.get('hours_s', '?')} s for the hours)",
        f"  polls         : {report['polls']} user polls (skipped {report['users_skipped']}), "
        f"dispatches {report['dispatches']}",
        f"  plays         : played {report['plays_played']}, exposed by Spotify {report['plays_exposed']}, "
        f"archived {report['plays_archived']}",
        f"  lost          : {report['plays_lost']} of the plays Spotify exposed (recoverable by the next poll: "
        f"{report['plays_recoverable']})",
        f"  duplicated    : {report['plays_duplicated']}",
        f"  gaps          : {report['gap_plays']} plays fell out of Spotify's window before a poll "
        f"({report['users_with_gap_plays']} users; not counted as lost); gaps detected {report['gaps_detected']} "
        f"(recorded {report['gaps_recorded']}); undetected {len(report['users_with_undetected_gaps'])}",
        f"  late plays    : {report['late_plays_exposed']} shown late by Spotify, {report['late_plays_archived']} "
        f"archived; {report['late_plays_missed']} never seen ({report['late_plays_never_in_window']} shown only "
        f"once outside its 50-play window); "
        f"bad items skipped {report['bad_items_skipped']} (unreadable shown {report['bad_items_exposed']})",
        f"  polls per user: min {report['polls_per_user']['min']}, median {report['polls_per_user']['median']}, "
        f"max {report['polls_per_user']['max']}; Spotify requests per user-hour "
        f"{report['spotify_requests_per_user_hour']}",
        f"  pending       : {report['plays_pending']} plays after a user's last poll "
        f"(history before first poll: {report['plays_before_first_poll']})",
        f"  failures      : {words(report['failures_by_type'])}",
        f"  deferrals     : {words(report['deferrals'])}",
        f"  worker        : {words(report['worker'])}",
        f"  DLQ           : {report['dlq_messages']} message(s); in flight at end {report['in_flight_at_end']}",
        f"  users         : {words(report['users_by_status'])}",
        f"  requests      : Spotify {report['spotify_requests']}{_with_words(report['spotify_requests_by_endpoint'])}; "
        f"DynamoDB {report['dynamodb_requests']}",
    ]
    if report.get("chaos"):
        lines.append(f"  chaos         : {words(report['chaos'])}")
    lines += app_faults_lines(report)
    lines += lifecycle_lines(report)
    lines.extend(import_summary_lines(report))
    lines.extend(iam_summary_lines(report))
    lines.append("  verdict       : " + verdict_words(report))
    if iam_denied(report):
        lines.append("  IAM verdict   : FAILED (calls the functions' roles would refuse on AWS: see DENIED above)")
    return lines


def verdict_words(report: dict[str, Any]) -> str:
    if verdict(report):
        return "OK (nothing lost, nothing duplicated, nobody charged for the app's failures)"
    problems = []
    imported = report.get("import") or {}
    if (report["plays_lost"] or report["plays_duplicated"] or imported.get("plays_lost")
            or imported.get("plays_duplicated")):
        problems.append("plays lost or duplicated")
    if imported.get("imported_plays_without_name"):
        problems.append("imported plays without a name")
    if imported and set(imported["jobs_by_state"]) != {"done"}:
        problems.append(f"import jobs not all done: {words(imported['jobs_by_state'])}")
    if charged_for_app_failures(report):
        problems.append("users charged for the app's failures")
    return f"FAILED ({'; '.join(problems)})"
