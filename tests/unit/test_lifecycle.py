"""The authorization lifecycle (playvault.lifecycle) on template.yaml's resources (moto in-process),
with users signed in through the real auth function and the Spotify emulator: the 6-month expiry
counted and reminded (SES in moto records what was sent), seats reclaimed from users who stay
signed out, and what those users see when they come back.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto.ses.models import ses_backends

from playvault import clock
from playvault.crypto import TokenCipher
from playvault.lifecycle import EMAIL, ENDED, REMIND_2_DAYS, REMIND_14_DAYS, Lifecycle, SesMailer, reminder_stage
from playvault.store import seats, users
from playvault_local import provision as prov
from tests.unit.test_auth import Auth, assert_html, assert_signed_in

T0 = datetime.fromisoformat("2026-07-01T09:00:00+00:00")
SENDER = "reminders@playvault.example"
RECONNECT = "https://api.example/auth/login?reconnect=1"


@pytest.fixture
def stack_overrides() -> dict[str, str]:
    return {"NotificationSender": SENDER}


@pytest.fixture
def auth(load_function, lambda_context, emulator) -> Auth:
    clock.set_clock(lambda: T0)
    return Auth(load_function("AuthFunction"), lambda_context("AuthFunction"), emulator)


def scheduled_event(moment: datetime) -> dict[str, Any]:
    event = json.loads((Path(__file__).resolve().parents[1] / "events" / "eventbridge_scheduled.json").read_text())
    event["time"] = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return event


def at(days: float, hours: float = 0) -> datetime:
    return T0 + timedelta(days=days, hours=hours)


def sent() -> list[Any]:
    return list(ses_backends[prov.LOCAL_ACCOUNT][prov.LOCAL_REGION].sent_messages)


def lifecycle(aws_env, *, mailer: Any = "ses", reclaim_days: int = 30) -> Lifecycle:
    if mailer == "ses":
        mailer = SesMailer(boto3.client("ses"), SENDER)
    return Lifecycle(lifetime=timedelta(days=182), reclaim_after=timedelta(days=reclaim_days),
                     reconnect_url=RECONNECT, mailer=mailer,
                     cipher=TokenCipher(boto3.client("kms"), aws_env.env["TOKEN_KEY_ID"]))


def run(life: Lifecycle, now: datetime):
    return life.run(now, list(users.scan_polling_state()))


def test_reminder_stage_boundaries() -> None:
    end = at(182)
    assert reminder_stage(end, end - timedelta(days=14, seconds=1)) is None
    assert reminder_stage(end, end - timedelta(days=14)) == REMIND_14_DAYS
    assert reminder_stage(end, end - timedelta(days=2, seconds=1)) == REMIND_14_DAYS
    assert reminder_stage(end, end - timedelta(days=2)) == REMIND_2_DAYS
    assert reminder_stage(end, end - timedelta(seconds=1)) == REMIND_2_DAYS
    assert reminder_stage(end, end) == ENDED


# ------------------------------------------------------------------------------------ sign-in records
def test_sign_in_records_the_authorization_and_the_sealed_address(auth: Auth, aws_env, caplog) -> None:
    caplog.set_level("DEBUG")
    response = auth.sign_in("alice")
    logs = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    assert "user signed up" in logs and "alice@example.com" not in logs + str(response)
    user = users.get("alice")
    assert user.authorized_at == T0 and user.authorization_expires_at == at(182)
    assert user.email_enc is not None and b"alice@example.com" not in user.email_enc
    cipher = TokenCipher(boto3.client("kms"), aws_env.env["TOKEN_KEY_ID"])
    assert cipher.open(user.token_key, user.email_enc, "alice", EMAIL) == "alice@example.com"
    seats.remove_user("alice")  # deleted with the user: the item (address included) is gone
    assert users.get("alice") is None


# ------------------------------------------------------------------------------------ reminders
def test_reminders_are_sent_once_each_at_14_and_2_days_and_on_expiry(auth: Auth, aws_env) -> None:
    auth.sign_in("alice")
    life = lifecycle(aws_env)
    timeline = [(0, 0), (167, 0), (168, 1), (168.5, 1), (175, 1), (180, 2), (181, 2), (182, 3), (183, 3),
                (200, 3)]
    for day, expected in timeline:
        report = run(life, at(day))
        assert len(sent()) == expected, (day, report)
    messages = sent()
    assert [m.destinations["ToAddresses"] for m in messages] == [["alice@example.com"]] * 3
    assert all(m.source == SENDER and RECONNECT in m.body for m in messages)
    assert ["14 days" in messages[0].subject, "2 days" in messages[1].subject, "stopped" in messages[2].subject] \
        == [True, True, True]
    assert users.get("alice").reminders_sent == {REMIND_14_DAYS, REMIND_2_DAYS, ENDED}


def test_two_runs_on_the_same_scan_send_a_reminder_once(auth: Auth, aws_env) -> None:
    auth.sign_in("alice")
    states = list(users.scan_polling_state())  # a retried / concurrent dispatcher run sees the same
    first = lifecycle(aws_env).run(at(170), states)
    second = lifecycle(aws_env).run(at(170), states)
    assert first.reminders_sent == {REMIND_14_DAYS: 1} and second.reminders_sent == {}
    assert len(sent()) == 1


def test_a_claim_racing_another_runs_claim_loses(auth: Auth, monkeypatch) -> None:
    """Between this run's read and its write another run claimed the stage: the conditional write
    refuses, however stale the read."""
    auth.sign_in("alice")
    stale = users.get("alice")
    assert users.claim_reminder("alice", REMIND_14_DAYS, stale.authorized_at)  # the other run
    monkeypatch.setattr(users, "get", lambda user_id: stale)  # this run read before it
    assert not users.claim_reminder("alice", REMIND_14_DAYS, stale.authorized_at)


def test_without_a_sender_nothing_is_sent_but_the_counts_are_the_same(auth: Auth, aws_env, capsys) -> None:
    auth.sign_in("alice")
    auth.sign_in("bob")
    clock.set_clock(lambda: at(10))
    auth.sign_in("carol")  # authorized 10 days later: not due yet
    silent = lifecycle(aws_env, mailer=None)
    for day in (170, 181, 183):
        silent.run(at(day), list(users.scan_polling_state()))
    report = silent.run(at(172), list(users.scan_polling_state()))
    assert (report.expiring_soon, report.expired, report.reminders_sent) == (2, 0, {})
    from playvault.metrics import metrics

    metrics.clear_metrics()
    capsys.readouterr()
    report = silent.run(at(183), list(users.scan_polling_state()))
    assert (report.expiring_soon, report.expired) == (1, 2)
    assert sent() == []
    assert all(u.reminders_sent is None for u in users.UserModel.scan())
    metrics.flush_metrics()
    out = capsys.readouterr().out
    assert '"AuthorizationsExpiringSoon":[1.0]' in out and '"AuthorizationsExpired":[2.0]' in out


def test_reconnecting_resets_the_clock_and_the_reminders(auth: Auth, aws_env) -> None:
    auth.sign_in("alice")
    life = lifecycle(aws_env)
    run(life, at(170))
    assert len(sent()) == 1
    stale = list(users.scan_polling_state())
    clock.set_clock(lambda: at(171))
    assert_signed_in(auth.sign_in("alice", reconnect=True), "back")
    user = users.get("alice")
    assert user.authorized_at == at(171) and user.authorization_expires_at == at(171 + 182)
    assert user.reminders_sent is None
    assert life.run(at(181), stale).reminders_sent == {}  # a scan from before the reconnect sends nothing
    report = run(life, at(181))
    assert (report.expiring_soon, report.reminders_sent) == (0, {})
    run(life, at(171 + 168))
    assert len(sent()) == 2  # the new authorization's own 14-day reminder


def test_reminders_left_when_the_time_is_up_go_out_with_the_next_run(auth: Auth, aws_env) -> None:
    auth.sign_in("alice")
    auth.sign_in("bob")
    budget = iter([False, True])  # time for one e-mail
    report = lifecycle(aws_env).run(at(170), list(users.scan_polling_state()), out_of_time=lambda: next(budget))
    assert (report.reminders_sent, report.reminders_deferred, report.expiring_soon) == ({"14d": 1}, 1, 2)
    assert run(lifecycle(aws_env), at(171)).reminders_sent == {"14d": 1}
    assert sorted(m.destinations["ToAddresses"][0] for m in sent()) == ["alice@example.com", "bob@example.com"]


def test_an_address_ses_refuses_is_tried_again_next_run(auth: Auth, aws_env) -> None:
    auth.sign_in("alice")

    class Refusing:
        def send(self, to: str, subject: str, text: str) -> None:
            raise ClientError({"Error": {"Code": "MessageRejected", "Message": "nope"}}, "SendEmail")

    report = lifecycle(aws_env, mailer=Refusing()).run(at(170), list(users.scan_polling_state()))
    assert report.reminders_failed == 1 and not users.get("alice").reminders_sent
    assert run(lifecycle(aws_env), at(170)).reminders_sent == {REMIND_14_DAYS: 1}


def test_revoked_users_get_no_countdown_but_an_expired_one_hears_once(auth: Auth, aws_env) -> None:
    auth.sign_in("alice")
    users.mark_needs_reauth(users.get("alice"), at(100))  # revoked at day 100
    life = lifecycle(aws_env, reclaim_days=400)
    assert run(life, at(170)).expiring_soon == 0 and sent() == []
    assert run(life, at(183)).expired == 1
    assert len(sent()) == 1 and "stopped" in sent()[0].subject


# ------------------------------------------------------------------------------------ seats
@pytest.mark.parametrize("stack_overrides", [{"MaxUsers": "1"}])
def test_a_lapsed_users_seat_goes_to_the_next_sign_up_and_the_lapsed_user_then_meets_the_waitlist(
    auth: Auth, aws_env
) -> None:
    auth.sign_in("alice")
    users.get("alice").update(actions=[users.UserModel.cursor_ms.set(1_780_000_000_000)])
    users.mark_needs_reauth(users.get("alice"), at(1))
    assert_html(auth.login(), 200, "PlayVault is full")
    life = lifecycle(aws_env, mailer=None)

    assert run(life, at(30, 23)).lapsed == 0  # not yet 30 days
    assert seats.seats_taken() == 1
    assert run(life, at(31)).lapsed == 1
    alice = users.get("alice")
    assert alice.status == users.LAPSED and alice.cursor_ms == 1_780_000_000_000  # archive kept
    assert seats.seats_taken() == 0
    assert run(life, at(32)).lapsed == 0  # once

    assert_signed_in(auth.sign_in("bob"), "new")  # the freed seat
    assert seats.seats_taken() == 1
    assert_html(auth.sign_in("alice", reconnect=True), 200, "PlayVault is full", 'action="/auth/waitlist"')
    assert users.get("alice").status == users.LAPSED
    assert seats.seats_taken() == 1


@pytest.mark.parametrize("stack_overrides", [{"MaxUsers": "2"}])
def test_a_lapsed_user_with_a_seat_free_continues_where_it_stopped(auth: Auth, aws_env) -> None:
    auth.sign_in("alice")
    users.get("alice").update(actions=[users.UserModel.cursor_ms.set(1_780_000_000_000),
                                       users.UserModel.plays_archived.set(321)])
    users.mark_needs_reauth(users.get("alice"), at(1))
    run(lifecycle(aws_env, mailer=None), at(40))
    assert users.get("alice").status == users.LAPSED and seats.seats_taken() == 0
    clock.set_clock(lambda: at(41))
    assert_signed_in(auth.sign_in("alice"), "back")
    alice = users.get("alice")
    assert alice.status == users.ACTIVE and seats.seats_taken() == 1
    assert (alice.cursor_ms, alice.plays_archived) == (1_780_000_000_000, 321)
    assert alice.needs_reauth_since is None and alice.lapsed_at is None
    assert alice.authorization_expires_at == at(41 + 182)


def test_a_reconnect_before_the_reclaim_keeps_the_seat(auth: Auth, aws_env) -> None:
    auth.sign_in("alice")
    users.mark_needs_reauth(users.get("alice"), at(1))
    stale = list(users.scan_polling_state())
    assert_signed_in(auth.sign_in("alice", reconnect=True), "back")
    assert lifecycle(aws_env, mailer=None).run(at(40), stale).lapsed == 0  # the transaction's condition
    assert users.get("alice").status == users.ACTIVE and seats.seats_taken() == 1


def test_needs_reauth_from_before_the_clock_existed_starts_it_at_the_next_run(auth: Auth, aws_env) -> None:
    auth.sign_in("alice")
    users.get("alice").update(actions=[users.UserModel.status.set(users.NEEDS_REAUTH)])  # no needs_reauth_since
    life = lifecycle(aws_env, mailer=None)
    assert run(life, at(50)).lapsed == 0
    assert users.get("alice").needs_reauth_since == at(50)
    assert run(life, at(79)).lapsed == 0
    assert run(life, at(80)).lapsed == 1


# ------------------------------------------------------------------------------------ the dispatcher
def test_the_dispatcher_runs_the_lifecycle_once_per_run(auth: Auth, load_function, lambda_context, caplog) -> None:
    caplog.set_level("INFO")
    auth.sign_in("alice")
    clock.set_clock(lambda: at(170))
    dispatcher = load_function("DispatcherFunction")
    answer = dispatcher(scheduled_event(at(170)), lambda_context("DispatcherFunction"))
    assert answer["dispatched"] == 1
    assert answer["lifecycle"]["expiring_soon"] == 1 and answer["lifecycle"]["reminders_sent"] == {"14d": 1}
    assert answer["lifecycle"]["notifications"] is True
    assert dispatcher(scheduled_event(at(170)), lambda_context("DispatcherFunction"))["lifecycle"][
        "reminders_sent"] == {}
    (message,) = sent()
    assert "/auth/login?reconnect=1" in message.body and message.body.startswith("Spotify ends")
    logs = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    assert "reminder sent" in logs and "alice@example.com" not in logs  # the address never reaches a log


@pytest.mark.parametrize("stack_overrides", [{}])  # the template's default: no NotificationSender
def test_the_dispatcher_without_a_sender_sends_nothing_and_still_counts(
    auth: Auth, load_function, lambda_context
) -> None:
    auth.sign_in("alice")
    clock.set_clock(lambda: at(170))
    dispatcher = load_function("DispatcherFunction")
    answer = dispatcher(scheduled_event(at(170)), lambda_context("DispatcherFunction"))["lifecycle"]
    assert answer["notifications"] is False and answer["expiring_soon"] == 1
    assert (answer["reminders_sent"], answer["reminders_failed"]) == ({}, 0)
    assert sent() == [] and users.get("alice").reminders_sent is None


@pytest.mark.parametrize("stack_overrides", [{"NotificationSender": SENDER, "MaxUsers": "5"}])
def test_one_dispatcher_run_scans_the_users_table_once_for_the_dispatch_and_the_lifecycle(
    auth: Auth, aws_env, load_function, lambda_context, monkeypatch
) -> None:
    from pynamodb.connection.base import Connection

    auth.sign_in("alice")  # authorization ends at day 182: the 14-day reminder is due at day 170
    auth.sign_in("bob")
    users.mark_needs_reauth(users.get("bob"), at(100))  # signed out for 70 days at day 170: lapses
    clock.set_clock(lambda: at(100))
    auth.sign_in("carol")  # ends at day 282: nothing for the lifecycle at day 170
    clock.set_clock(lambda: at(170))
    requests: list[tuple[str, str]] = []
    make_api_call = Connection._make_api_call

    def counted(self: Connection, operation_name: str, operation_kwargs: dict) -> dict:
        requests.append((operation_name, operation_kwargs.get("TableName", "")))
        return make_api_call(self, operation_name, operation_kwargs)

    monkeypatch.setattr(Connection, "_make_api_call", counted)
    dispatcher = load_function("DispatcherFunction")
    answer = dispatcher(scheduled_event(at(170)), lambda_context("DispatcherFunction"))

    assert [request for request in requests if request[0] == "Scan"] == [("Scan", aws_env.env["USERS_TABLE"])]
    assert (answer["considered"], answer["dispatched"], answer["needs_reauth"]) == (3, 2, 1)
    lifecycle_report = answer["lifecycle"]
    assert (lifecycle_report["expiring_soon"], lifecycle_report["lapsed"]) == (1, 1)
    assert lifecycle_report["reminders_sent"] == {REMIND_14_DAYS: 1}
    assert [message.destinations["ToAddresses"] for message in sent()] == [["alice@example.com"]]
    assert users.get("bob").status == users.LAPSED and users.get("carol").reminders_sent is None
