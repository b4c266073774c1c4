"""`run`: the whole system through simulated hours, then a report of what was lost or duplicated.

One SimClock drives everything: the domain (playvault.clock), the Spotify emulator (plays appear,
tokens expire), SQS on the AWS emulator (DelaySeconds, visibility timeouts, redrive), Powertools
idempotency expiry. Nothing is scaled: a 720 s visibility timeout is 720 simulated seconds. The
clock stands still while functions run and jumps to the next moment something is due: the next
message to become visible (the AWS emulator reports it) or the next schedule tick (the
dispatcher's period, read from its Schedule event in the template: 15 minutes by default).
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import parse_qsl, urlsplit

import requests

from playvault_local import chaos as chaos_mod
from playvault_local import template as tpl
from playvault_local.events import http_api_event_for_url, http_response, scheduled_event
from playvault_local.eventsource import SqsEventSource
from playvault_local.population import SimUser, build_lifecycle_population, build_population, simulate
from playvault_local.progress import Progress, note
from playvault_local.simclock import SimClock
from playvault_local.system import LocalSystem, SystemConfig

DEFAULT_START = datetime(2025, 6, 2, 0, 0, tzinfo=UTC)
SIGNUP_LEAD = timedelta(minutes=10)
MAX_DRAIN = timedelta(hours=12)
EVENTBRIDGE_ATTEMPTS = 3  # asynchronous invocation: the first try plus two retries
LOCAL_SENDER = "reminders@playvault.local"  # --days: the NotificationSender, verified in moto's SES


@dataclass
class RunConfig:
    users: int = 100
    hours: int = 24
    seed: int = 0
    faults: str = "none"
    time_scale: float = 0.0  # simulated seconds per real second; 0: as fast as possible
    template_path: Path = tpl.TEMPLATE_PATH
    parameters: dict[str, str] = field(default_factory=dict)
    chaos: chaos_mod.ChaosConfig | None = None
    start: datetime = DEFAULT_START
    log_file: TextIO | None = None
    progress: TextIO | None = None
    on_ready: Callable[[LocalSystem], None] | None = None  # tests: patch things once the stack is up
    # Share of plays Spotify shows late (1-90 min after played_at, out of order), as the real feed does.
    late_share: float = 0.10
    # --days N: months of the authorization lifecycle (see Simulation._lifecycle_setup)
    days: int = 0
    tick_hours: int = 0  # the dispatcher every tick_hours simulated hours; 0: the template's period (24 with --days)
    import_export: bool = False  # --import: after the hours, every user imports a data export
    # --ssm-throttle: share of SSM GetParameter calls throttled (None: the chaos config's, 0 without chaos)
    ssm_throttle_rate: float | None = None
    translated_template: dict[str, Any] | None = None  # tests: the roles to check against (see SystemConfig)


class RunError(RuntimeError):
    pass


class Simulation:
    def __init__(self, config: RunConfig):
        self.config = config
        if config.faults == "chaos" and config.chaos is None:
            config.chaos = chaos_mod.ChaosConfig()
        self.chaos = config.chaos if config.faults == "chaos" else None
        if config.ssm_throttle_rate is None:
            config.ssm_throttle_rate = self.chaos.ssm_throttle_rate if self.chaos else 0.0
        elif self.chaos is not None:
            self.chaos.ssm_throttle_rate = config.ssm_throttle_rate
        self.clock = SimClock(config.start - SIGNUP_LEAD)
        # DetailedMetrics on: the report and the SVG dashboard read the full set of metrics.
        parameters = {"MaxUsers": str(max(config.users + 5, 5)), "DetailedMetrics": "true", **self._lifecycle_setup(),
                      **config.parameters}
        if config.import_export:
            # Catalog lookups are throttled in real time; the emulator needs no 5-a-second pace.
            parameters.setdefault("CatalogLookupIntervalMs", "2")
        self.system = LocalSystem(SystemConfig(
            template_path=config.template_path, parameters=parameters, seed=config.seed, clock=self.clock,
            throttle_rate=self.chaos.throttle_rate if self.chaos else 0.0,
            throttle_limit=self.chaos.throttle_limit if self.chaos else 0,
            retried_throttle_rate=self.chaos.retried_throttle_rate if self.chaos else 0.0,
            ssm_throttle_rate=config.ssm_throttle_rate,
            log_file=config.log_file, translated_template=config.translated_template,
        ))
        self.app_faults = chaos_mod.AppFaultLedger(self.clock)
        self.system.hooks.on_fault = self.app_faults.fault
        self.population: list[SimUser] = []
        self.source: SqsEventSource | None = None
        self.crash: chaos_mod.CrashHook | None = None
        self.duplicator: chaos_mod.Duplicator | None = None
        self.dispatch_reports: list[dict[str, Any]] = []
        self.dispatch_errors: Counter[str] = Counter()
        self.polls_by_user: Counter[str] = Counter()  # successful polls
        self.sign_ups: Counter[str] = Counter()
        self.timings: dict[str, float] = {}
        self._pace_origin: tuple[float, float] | None = None
        self._rate_limit_from: datetime | None = None
        self._rate_limit_until: datetime | None = None
        self.drained = True
        self.lifecycle_events: list[dict[str, Any]] = []  # sign-ins during the run (--days)
        self._secret_steps: list[tuple[datetime, str]] = []  # chaos: (when, "ssm") after a rotation
        self.imports: Any = None  # --import: import_run.Imports, the uploads and their accounting
        self._reconnect_uploads: dict[int, str] = {}  # --import: hour -> the user who reconnects and uploads

    # ------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        from playvault_local.report import build_report

        started = time.monotonic()
        note(self.config.progress, f"starting moto_server and the Spotify emulator; provisioning "
                                   f"{self.config.template_path.name}")
        self.system.start()
        try:
            self.timings["startup_s"] = time.monotonic() - started
            self._populate()
            mark = time.monotonic()
            self._sign_up_everyone()
            self.timings["sign_up_s"] = time.monotonic() - mark
            self.source = SqsEventSource(self.system)
            self._count_polls()
            self._arm_chaos()
            if self.config.on_ready is not None:
                self.config.on_ready(self.system)
            if self.config.import_export:
                self._import_before_first_poll()
            baseline = self._request_counts()
            mark = time.monotonic()
            self._hours()
            self.timings["hours_s"] = time.monotonic() - mark
            self.system.hooks.enabled = False
            if self.crash is not None:
                self.crash.armed = False
            counts = self._request_counts()
            mark = time.monotonic()
            report = build_report(self, baseline, counts)
            self.timings["report_s"] = time.monotonic() - mark
            if self.config.import_export:
                report["import"] = self._import_exports()
            assert self.system.iam is not None
            report["iam"] = self.system.iam.summary()
            self.timings["total_s"] = time.monotonic() - started
            report["timings_s"] = {k: round(v, 2) for k, v in self.timings.items()}
            return report
        finally:
            if self.crash is not None:
                self.crash.uninstall()
            self.system.stop()

    def _populate(self) -> None:
        state = self.system.emulator_state
        state.listening.update(late_share=self.config.late_share)
        if self.chaos is not None:
            state.listening.update(bad_share=self.chaos.bad_item_share, episode_share=self.chaos.episode_share)
        if self.config.days:
            # The quitter's lapse and the newcomer are timed on the stack's own ReclaimSeatAfterDays.
            reclaim_days = int(self.system.stack.resolver.parameters["ReclaimSeatAfterDays"])
            self.population = build_lifecycle_population(self.config.users, self.config.days, self.config.seed,
                                                         reclaim_days=reclaim_days)
        else:
            self.population = build_population(self.config.users, self.config.hours, self.config.seed)
        for user in self.population:
            state.add_user(user.user_id, display_name=f"Listener {user.user_id[4:]}",
                           rotate_refresh_tokens=user.rotate_refresh_tokens)
        if self.config.import_export and not self.config.days:
            from playvault_local.import_run import pick_reconnecting_user

            plan = pick_reconnecting_user(self.population, self.config.hours)
            if plan is not None:
                user, disconnect, reconnect = plan
                user.revoke_at_hour = disconnect
                user.tags.append("reconnects-and-imports")
                self._reconnect_uploads[reconnect] = user.user_id
        simulate(state, self.population, self.config.start)

    # ------------------------------------------------------------------ sign-up through the real route
    def _sign_up_everyone(self) -> None:
        session = requests.Session()
        first = [user for user in self.population if user.sign_up_at_hour is None]
        progress = Progress(len(first), self.config.progress, label="sign-ups")
        last_line = time.monotonic()
        for done, user in enumerate(first, 1):
            outcome = self.sign_up(user.user_id, session)
            self.sign_ups[outcome] += 1
            if done == len(first) or time.monotonic() - last_line >= 1.0:
                progress.update(done, {"users signed up": self.sign_ups.get("signed_up", 0)})
                last_line = time.monotonic()
        progress.close()
        if self.sign_ups.get("signed_up", 0) != len(first):
            raise RunError(f"sign-up failed for some users: {dict(self.sign_ups)}")

    def sign_up(self, user_id: str, session: requests.Session, *, reconnect: bool = False) -> str:
        auth = self._auth_function()
        login = "/auth/login?reconnect=1" if reconnect else "/auth/login"
        status, headers, body, set_cookies = http_response(
            self.system.invoke(auth, http_api_event_for_url("GET", login, now=self.clock())))
        # The browser's login cookie goes back with the callback (the sign-in is bound to it).
        cookies = [c.split(";", 1)[0] for c in set_cookies]
        location = _header(headers, "location")
        if status != 302 or not location:
            return "waitlisted" if status == 200 and b"waitlist" in body.lower() else f"login_{status}"
        consent = session.get(f"{location}&login_as={user_id}", allow_redirects=False, timeout=30)
        back = consent.headers.get("Location", "")
        if consent.status_code != 302 or "code=" not in back:
            return f"authorize_{consent.status_code}"
        status, headers, body, _ = http_response(self.system.invoke(
            auth, http_api_event_for_url("GET", back, now=self.clock(), cookies=cookies or None)))
        if status == 200 and b"waitlist" in body.lower():  # the cap was reached between login and callback
            return "waitlisted"
        signed_in = status == 303 and (_header(headers, "location") or "").startswith("/me")
        if signed_in and reconnect:
            return "reconnected"
        return "signed_up" if signed_in else f"callback_{status}"

    def _auth_function(self) -> str:
        for route in self.system.routes:
            if route.path.endswith("/login"):
                return route.function
        raise RunError("template: no HttpApi route for the login")

    # ------------------------------------------------------------------ chaos
    def _arm_chaos(self) -> None:
        chaos = self.chaos
        if chaos is None:
            return
        state = self.system.emulator_state
        state.faults.update(error_5xx_rate=chaos.error_5xx_rate, rate_429_rate=chaos.rate_429_rate,
                            retry_after_s=chaos.retry_after_s, expire_token_rate=chaos.expire_token_rate)
        # Timeouts are dropped requests (see playvault_local.spotify), held past the client's timeout.
        self.system.emulator.timeout_rate = chaos.timeout_rate
        self.system.emulator.timeout_s = chaos.client_read_timeout_s + 0.4
        worker = self._worker_module()
        spotify = getattr(worker, "spotify", None)
        if spotify is not None and hasattr(spotify, "_timeouts"):
            spotify._timeouts = (1.0, chaos.client_read_timeout_s)
        self.crash = chaos_mod.CrashHook(pending=list(chaos.crashes))
        self.crash.install()
        assert self.source is not None
        self.duplicator = chaos_mod.Duplicator(self.system.sqs, self.source.queue_url, chaos.duplicate_rate,
                                               self.config.seed)
        self.source.on_receive = self.duplicator
        for _ in range(chaos.poison_messages):
            self.system.sqs.send_message(QueueUrl=self.source.queue_url, MessageBody=chaos_mod.POISON_BODY)

    def _count_polls(self) -> None:
        """Successful polls per user, and the app-level faults each poll met, for the report (wraps
        the worker's archiver and its credentials loader)."""
        worker = self._worker_module()
        spotify = getattr(worker, "spotify", None)
        if spotify is not None and hasattr(spotify, "_credentials"):
            spotify._credentials = self.app_faults.wrap_credentials(spotify._credentials)
        archiver = getattr(worker, "archiver", None)
        if archiver is None:
            return
        inner = self.app_faults.wrap_poll(archiver.archive_user)

        def counted(user_id: str, *args: Any, **kwargs: Any) -> Any:
            result = inner(user_id, *args, **kwargs)
            if getattr(result, "status", None) == "success":
                self.polls_by_user[user_id] += 1
            return result

        archiver.archive_user = counted

    def _worker_module(self) -> Any:
        import sys

        assert self.source is not None
        handler = self.source.handler
        return sys.modules.get(handler.__module__)

    def _chaos_for_hour(self, hour: int) -> None:
        for user in self.population:
            if user.revoke_at_hour == hour:
                self.system.emulator_state.revoke(user.user_id)
        self.system.hooks.enabled = hour >= 1  # DynamoDB and SSM throttling (see telemetry.AwsCallHooks)
        chaos = self.chaos
        if chaos is None:
            return
        limit_hour = chaos.app_rate_limit_hour if chaos.app_rate_limit_hour is not None else self.config.hours // 3
        if hour == limit_hour:
            until = self.clock() + timedelta(minutes=5 + chaos.app_rate_limit_minutes)
            # Opens 5 minutes after the tick: the first batch is archived, the later ones are deferred.
            # It lasts several dispatch runs and is a quota 429 (its body says QUOTA_EXCEEDED).
            self._rate_limit_from = self.clock() + timedelta(minutes=5)
            self._rate_limit_until = until
            self.system.emulator_state.quota_exceeded = chaos.quota_exceeded
        if chaos.secret_rotation_hour is not None and hour == chaos.secret_rotation_hour:
            self._rotate_client_secret(chaos.secret_rotation_ssm_minutes)
        if self.crash is not None and hour >= chaos.crash_after_hour:
            self.crash.armed = True  # at most one crash an hour: two in one invocation would hide one

    def _rotate_client_secret(self, ssm_minutes: int) -> None:
        """The operator rotates the secret at Spotify now, puts it in SSM `ssm_minutes` later; the
        functions' cached copy (Powertools Parameters, 5 minutes on the simulated clock) expires
        within 5 minutes after that."""
        config = self.system.config
        new_secret = f"{config.client_secret}-rotated"
        self._new_secret = new_secret
        self.system.emulator_state.rotate_client_secret(config.client_id, new_secret)
        in_ssm = self.clock() + timedelta(minutes=ssm_minutes)
        self._secret_steps = [(in_ssm, "ssm")]

    def _secret_steps_due(self, moment: datetime) -> None:
        while self._secret_steps and self._secret_steps[0][0] <= moment:
            self._secret_steps.pop(0)
            import boto3

            assert self.system.aws is not None and self.system.stack is not None
            ssm = boto3.session.Session().client("ssm", endpoint_url=self.system.aws.url)
            ssm.put_parameter(Name=self.system.stack.env["SPOTIFY_CLIENT_SECRET_PARAM"], Value=self._new_secret,
                              Type="SecureString", Overwrite=True)

    # ------------------------------------------------------------------ hours
    def _hours(self) -> None:
        progress = Progress(self.config.hours, self.config.progress)
        # The dispatcher's period from the template; --days ticks once per tick_hours instead.
        period = (timedelta(hours=self.config.tick_hours) if self.config.tick_hours
                  else timedelta(seconds=self.system.schedule_seconds()))
        end = self.config.start + timedelta(hours=self.config.hours)
        tick = self.config.start
        hour_seen = -1
        while tick < end:
            hour = int((tick - self.config.start).total_seconds() // 3600)
            self.system.output.hour = hour
            self._advance(tick)
            if hour != hour_seen:
                if hour_seen >= 0:
                    progress.update(hour, self._progress_fields())
                self._chaos_for_hour(hour)
                if hour in self._reconnect_uploads:  # --import: before this tick's dispatch
                    self.imports.reconnect_and_upload(self._reconnect_uploads[hour])
                hour_seen = hour
            self._dispatch(tick)
            next_tick = min(tick + period, end)
            self._drain(until=next_tick)
            self._lifecycle_sign_ins(tick, next_tick)
            tick = next_tick
        progress.update(self.config.hours, self._progress_fields())
        self.system.output.hour = self.config.hours  # the drain after the last tick
        self._advance(max(end, self.clock()))
        self.drained = self._drain(until=end + MAX_DRAIN)
        progress.done(self._progress_fields())

    def _advance(self, moment: datetime) -> None:
        if moment <= self.clock():
            return
        # Late answers to timed-out Spotify calls are computed at the instant they were asked.
        self.system.emulator.wait_idle()
        if self._rate_limit_from is not None and self._rate_limit_from <= moment:
            self.system.emulator_state.rate_limit_app(self._rate_limit_until)
            self._rate_limit_from = None
        self._secret_steps_due(moment)
        scale = self.config.time_scale
        if scale > 0:
            if self._pace_origin is None:
                self._pace_origin = (time.monotonic(), self.clock().timestamp())
            real0, sim0 = self._pace_origin
            wait = real0 + (moment.timestamp() - sim0) / scale - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        self.clock.set(moment)

    def _dispatch(self, tick: datetime) -> None:
        function = self.system.schedule_function
        assert function is not None
        for _attempt in range(EVENTBRIDGE_ATTEMPTS):
            try:
                report = self.system.invoke(function, scheduled_event(tick, f"{function}-schedule"))
            except Exception as exc:  # noqa: BLE001 - a failed async invocation is retried, as EventBridge does
                self.dispatch_errors[type(exc).__name__] += 1
                continue
            self.dispatch_reports.append(report if isinstance(report, dict) else {"answer": report})
            return
        self.dispatch_errors["gave_up"] += 1

    def _drain(self, until: datetime) -> bool:
        """Deliver every message due before `until`, jumping the clock from one due moment to the
        next. True when the queue is empty."""
        assert self.source is not None
        source = self.source
        aws = self.system.aws
        assert aws is not None
        stalls = 0
        while True:
            received = 0
            while True:
                got = source.poll_once()
                if not got:
                    break
                received += got
            state = aws.queue_state(source.queue_name)
            if not state["messages"]:
                return True
            due = state["next_visible_at"]
            if due is None:
                return True
            target = max(due + 0.001, self.clock().timestamp() + 0.001)
            if target >= until.timestamp():
                return False
            stalls = stalls + 1 if not received and target - self.clock().timestamp() < 0.01 else 0
            if stalls > 1000:
                raise RunError("the work queue holds visible messages that cannot be received")
            self._advance(datetime.fromtimestamp(target, UTC))

    # ------------------------------------------------------------------ the authorization lifecycle (--days)
    def _lifecycle_setup(self) -> dict[str, str]:
        """--days N: N simulated days, the dispatcher every tick_hours (default 24: the lifecycle's
        deadlines are days, and the lifecycle population listens under Spotify's 50-play window a
        day, so a daily poll loses nothing while a 200-day run stays a few minutes); every seat
        taken by the users who sign up at the start; reminders sent from a (moto-verified) sender."""
        config = self.config
        if not config.tick_hours and config.days:
            config.tick_hours = 24
        if not config.days:
            return {}
        config.hours = config.days * 24
        return {"MaxUsers": str(config.users), "NotificationSender": LOCAL_SENDER}

    def _lifecycle_sign_ins(self, start: datetime, end: datetime) -> None:
        """Late sign-ups and sign-ins again that fall in [start, end), through the real routes."""
        due: list[tuple[int, SimUser, str]] = []
        for user in self.population:
            if user.sign_up_at_hour is not None:
                due.append((user.sign_up_at_hour, user, "sign_up"))
            due += [(at, user, "sign_in_again") for at in user.sign_in_again_at_hours]
        due = sorted((e for e in due if start <= self.config.start + timedelta(hours=e[0]) < end),
                     key=lambda e: (e[0], e[1].user_id))
        for at, user, kind in due:
            self._advance(self.config.start + timedelta(hours=at))
            outcome = self.sign_up(user.user_id, requests.Session(), reconnect=kind == "sign_in_again")
            self.lifecycle_events.append({"day": round(at / 24, 2), "user_id": user.user_id, "action": kind,
                                          "outcome": outcome})

    # ------------------------------------------------------------------ --import
    def _import_before_first_poll(self) -> None:
        """Right after signing up, before the first dispatch, some users upload their export."""
        from playvault_local.import_run import BEFORE_FIRST_POLL, Imports, early_importers

        mark = time.monotonic()
        self.imports = Imports(self)
        self.imports.upload_all(early_importers(self.population), BEFORE_FIRST_POLL)
        self.timings["import_s"] = time.monotonic() - mark

    def _import_exports(self) -> dict[str, Any]:
        """After the polled hours (and their report): every user who has not uploaded yet uploads a
        data export, then one more hour of polling (the polls after the uploads); see import_run."""
        from playvault_local.import_run import AFTER_THE_HOURS, Imports

        mark = time.monotonic()
        assert self.system.aws is not None and self.system.stack is not None
        before = Counter(row["user_id"] for row in
                         self.system.aws.table_items(self.system.stack.name("PlaysTable"), ["user_id"]))
        self.imports = self.imports or Imports(self)
        uploaded = {upload.user_id for upload in self.imports.uploads}
        self.imports.upload_all([u for u in self.population if u.user_id not in uploaded], AFTER_THE_HOURS)
        self._poll_for(timedelta(hours=1))
        section = self.imports.section(before)
        self.timings["import_s"] = self.timings.get("import_s", 0.0) + time.monotonic() - mark
        return section

    def _poll_for(self, duration: timedelta) -> None:
        """The dispatcher on its schedule for `duration` from now, every message delivered."""
        period = timedelta(seconds=self.system.schedule_seconds())
        tick = self.clock()
        end = tick + duration
        while tick < end:
            self._advance(tick)
            self._dispatch(tick)
            self._drain(until=tick + period)
            tick += period
        self._advance(max(end, self.clock()))
        self._drain(until=self.clock() + MAX_DRAIN)

    # ------------------------------------------------------------------ helpers
    def _request_counts(self) -> dict[str, Any]:
        assert self.system.aws is not None
        server = self.system.aws.counts()
        spotify = self.system.emulator_state.request_counts()
        return {"server": server, "spotify": spotify, "client_dynamodb": dict(self.system.hooks.calls)}

    def _progress_fields(self) -> dict[str, Any]:
        out = self.system.output
        return {
            "user polls archived": int(out.total("UsersArchived")),
            "user polls failed": int(out.total("UsersFailed")),
            "plays archived": int(out.total("PlaysArchived")),
            "gaps detected": int(out.total("GapsDetected")),
            # RateLimited counts quota 429s too, and 1 per dispatcher run the closed gate held.
            "rate limited (users, held runs)": int(out.total("RateLimited") + out.total("SpotifyAppFailures")),
        }


def _header(headers: dict[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def rng_for(seed: int, what: str) -> random.Random:
    return random.Random(f"{what}:{seed}")


def dump(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
