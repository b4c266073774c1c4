"""The authorization lifecycle: Spotify's 6-month refresh-token expiry, handled before it bites, and
seats given back by users who stay signed out.

Facts it works from: a refresh token dies `AuthorizationLifetimeDays` (182) after the sign-in,
whatever the refreshes (then `invalid_grant`, and only a new sign-in helps). Each sign-in and
reconnect records `authorized_at` and `authorization_expires_at` on the user; the dispatcher calls
`Lifecycle.run` once per run with the polling states `set_aside` kept from the dispatch's own Scan
(the users `concerns` names: every other user is one the run would skip), which:

- counts the users whose authorization ends within 14 days (`AuthorizationsExpiringSoon`) and
  those whose authorization has ended and who still hold a seat (`AuthorizationsExpired`);
- when the operator set a sender (`NotificationSender`), e-mails each user 14 days and 2 days before
  the end, and once when it has ended, with the reconnect link. Each stage is claimed on the user
  item (`reminders_sent`, a conditional write that also checks the authorization is still the one
  scanned) before the e-mail is handed to SES: a retried or concurrent run never sends one twice, a
  reconnect in between sends nothing stale. If SES refuses, the claim is released for the next run;
  a crash between the claim and the send loses that one e-mail (at most once, never twice).
  A reconnect clears `reminders_sent`: the clock and the reminders start again;
- gives the seat back for users `needs_reauth` for longer than `ReclaimSeatAfterDays`: status
  `lapsed` and the seat counter decremented in one transaction (store/seats.py). Their plays and
  cursor stay; signing in again resumes them if a seat is free.

Without a sender nothing is sent and nothing about e-mail is written; the counts are the same.
The e-mail address (from /me, scope user-read-email) is sealed with the user's token key like the
tokens (purpose EMAIL in the associated data) and is opened here only to send.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from playvault import metrics
from playvault.crypto import TokenCipher, TokenDecryptError
from playvault.store import seats, users

logger = Logger(child=True)

# What the sealed e-mail address is for (part of its associated data, as crypto's token purposes).
EMAIL = "email"
# Reminder stages, as recorded in the user's `reminders_sent`.
REMIND_14_DAYS = "14d"
REMIND_2_DAYS = "2d"
ENDED = "ended"
SOON = timedelta(days=14)
LAST_CALL = timedelta(days=2)


class Mailer(Protocol):
    def send(self, to: str, subject: str, text: str) -> None: ...


class SesMailer:
    """SES SendEmail from the operator's verified sender address."""

    def __init__(self, ses_client: Any, sender: str):
        self._ses = ses_client
        self.sender = sender

    def send(self, to: str, subject: str, text: str) -> None:
        self._ses.send_email(
            Source=self.sender,
            Destination={"ToAddresses": [to]},
            Message={"Subject": {"Data": subject, "Charset": "UTF-8"},
                     "Body": {"Text": {"Data": text, "Charset": "UTF-8"}}},
        )


@dataclass
class LifecycleReport:
    expiring_soon: int = 0  # active, authorization ends within 14 days
    expired: int = 0  # authorization ended, still holding a seat (active or needs_reauth)
    reminders_sent: dict[str, int] = field(default_factory=dict)  # by stage
    reminders_without_address: int = 0  # due, but no (usable) address stored
    reminders_failed: int = 0  # SES refused: released for the next run
    lapsed: int = 0  # gave their seat back in this run
    notifications: bool = False  # a sender is configured
    reminders_deferred: int = 0  # due, but the run's time was up: the next run sends them

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reminder_stage(expires_at: datetime, now: datetime) -> str | None:
    """The reminder due at `now` for an authorization ending at `expires_at` (only the latest
    applies: a 14-day reminder is never sent after the 2-day one was due)."""
    left = expires_at - now
    if left <= timedelta(0):
        return ENDED
    if left <= LAST_CALL:
        return REMIND_2_DAYS
    if left <= SOON:
        return REMIND_14_DAYS
    return None


def _message(stage: str, expires_at: datetime, reconnect_url: str) -> tuple[str, str]:
    day = expires_at.strftime("%Y-%m-%d")
    if stage == ENDED:
        subject = "PlayVault stopped archiving your Spotify plays: please reconnect"
        lead = (f"Spotify ended PlayVault's access to your listening history on {day} (Spotify lets an "
                "app keep access for 6 months after you sign in). Your archive is kept, but new plays "
                "are not saved until you reconnect; Spotify itself only remembers your last 50 plays.")
    else:
        left = "14 days" if stage == REMIND_14_DAYS else "2 days"
        subject = f"PlayVault: reconnect Spotify within {left} to keep your archive growing"
        lead = (f"Spotify ends PlayVault's access to your listening history on {day}, in {left} (Spotify "
                "lets an app keep access for 6 months after you sign in). Reconnecting takes one click "
                "and starts another 6 months.")
    text = f"{lead}\n\nReconnect: {reconnect_url}\n\nYou get at most three of these e-mails per sign-in.\n"
    return subject, text


class Lifecycle:
    def __init__(self, *, lifetime: timedelta, reclaim_after: timedelta, reconnect_url: str,
                 mailer: Mailer | None = None, cipher: TokenCipher | None = None):
        if mailer is not None and cipher is None:
            raise ValueError("sending reminders needs the token cipher to open the addresses")
        self.lifetime = lifetime
        self.reclaim_after = reclaim_after
        self.reconnect_url = reconnect_url
        self.mailer = mailer
        self.cipher = cipher

    @classmethod
    def from_settings(cls, settings: Any, *, ses_client: Any, kms_client: Any) -> Lifecycle:
        sender = settings.notification_sender
        return cls(
            lifetime=timedelta(days=settings.authorization_lifetime_days),
            reclaim_after=timedelta(days=settings.reclaim_seat_after_days),
            reconnect_url=f"{settings.public_api_url}/auth/login?reconnect=1",
            mailer=SesMailer(ses_client, sender) if sender else None,
            cipher=TokenCipher(kms_client, settings.token_key_id) if sender else None,
        )

    def expires_at(self, state: users.PollingState) -> datetime | None:
        """Recorded at sign-in; for users signed up before it was recorded, derived the same way."""
        if state.authorization_expires_at is not None:
            return state.authorization_expires_at
        return state.authorized_at + self.lifetime if state.authorized_at is not None else None

    def concerns(self, state: users.PollingState, now: datetime) -> bool:
        """Whether `run` acts on or counts this user at `now`: needs_reauth (the reclaim clock), or
        active with the authorization ending within 14 days or ended."""
        if state.status == users.NEEDS_REAUTH:
            return True
        expires_at = self.expires_at(state) if state.status == users.ACTIVE else None
        return expires_at is not None and reminder_stage(expires_at, now) is not None

    def set_aside(self, now: datetime, states: Iterable[users.PollingState],
                  into: list[users.PollingState]) -> Iterator[users.PollingState]:
        """Pass `states` through (to the dispatch), appending to `into` those `run` concerns at `now`:
        one Scan of the users table serves both, and only the few users near expiry or signed out
        are kept in memory."""
        for state in states:
            if self.concerns(state, now):
                into.append(state)
            yield state

    def run(self, now: datetime, states: Iterable[users.PollingState],
            out_of_time: Callable[[], bool] = lambda: False) -> LifecycleReport:
        """`out_of_time`: True when the invocation must stop sending (counting goes on; reminders not
        sent stay due and go out with the next run)."""
        report = LifecycleReport(notifications=self.mailer is not None)
        for state in states:
            if state.status == users.NEEDS_REAUTH and self._reclaim(state, now, report):
                continue  # lapsed now: no seat, nothing to remind
            if state.status not in (users.ACTIVE, users.NEEDS_REAUTH):
                continue  # lapsed (no seat) or another status: nothing to remind, nothing to count
            expires_at = self.expires_at(state)
            stage = reminder_stage(expires_at, now) if expires_at is not None else None
            if stage is None:
                continue
            if stage == ENDED:
                report.expired += 1
            elif state.status == users.ACTIVE:
                report.expiring_soon += 1
            else:
                continue  # needs_reauth before the end: revoked, a reminder cannot help
            if self.mailer is not None and stage not in state.reminders_sent:
                assert expires_at is not None
                if out_of_time():
                    report.reminders_deferred += 1
                    continue
                self._remind(state, stage, expires_at, report)
        metrics.count(metrics.AUTHORIZATIONS_EXPIRING_SOON, report.expiring_soon)
        metrics.count(metrics.AUTHORIZATIONS_EXPIRED, report.expired)
        logger.info("lifecycle report", extra={"lifecycle": report.to_dict()})
        return report

    # -- reminders --------------------------------------------------------------------------------
    def _remind(self, state: users.PollingState, stage: str, expires_at: datetime, report: LifecycleReport) -> None:
        assert self.mailer is not None and self.cipher is not None
        address = self._address(state.user_id)
        if address is None:
            report.reminders_without_address += 1
            return
        if not users.claim_reminder(state.user_id, stage, state.authorized_at):
            return  # sent by another run, or the user reconnected meanwhile
        subject, text = _message(stage, expires_at, self.reconnect_url)
        try:
            self.mailer.send(address, subject, text)
        except ClientError as exc:
            # Refused (address, sender not verified, sandbox) or throttled: either way the next hourly
            # run tries again; the dispatch this run already made is not undone.
            users.release_reminder(state.user_id, stage, state.authorized_at)
            report.reminders_failed += 1
            # The address is personal data: the log names the user and SES's error code only.
            logger.warning("reminder not accepted by SES", extra={
                "user_id": state.user_id, "stage": stage, "error_code": exc.response.get("Error", {}).get("Code")})
            return
        report.reminders_sent[stage] = report.reminders_sent.get(stage, 0) + 1
        logger.info("reminder sent", extra={"user_id": state.user_id, "stage": stage,
                                            "authorization_expires_at": expires_at.isoformat()})

    def _address(self, user_id: str) -> str | None:
        assert self.cipher is not None
        user = users.get(user_id)
        if user is None or user.email_enc is None:
            return None
        try:
            return self.cipher.open(user.token_key, user.email_enc, user_id, EMAIL)
        except TokenDecryptError:
            logger.warning("stored e-mail address does not open", extra={"user_id": user_id})
            return None

    # -- seats --------------------------------------------------------------------------------------
    def _reclaim(self, state: users.PollingState, now: datetime, report: LifecycleReport) -> bool:
        """True if the user gave its seat back in this call."""
        since = state.needs_reauth_since
        if since is None:
            users.start_reclaim_clock(state.user_id, now)
            return False
        if now - since < self.reclaim_after or not seats.lapse_user(state.user_id, since, now):
            return False
        report.lapsed += 1
        logger.info("seat reclaimed: user lapsed", extra={"user_id": state.user_id,
                                                          "needs_reauth_since": since.isoformat()})
        return True
