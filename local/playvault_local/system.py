"""LocalSystem: the whole stack on this machine, shared by `run` and `serve`.

Start order (each step fails fast with a StartupError naming what went wrong, and start() undoes
what it had done before raising):
  template.yaml read -> AWS emulator (moto child process) -> Spotify emulator (thread) unless an
  external Spotify-compatible service is given -> provision from the template -> the functions'
  environment -> the functions' roles (playvault_local.iam) -> hooks (DynamoDB call counting/faults,
  every call checked against its function's role, EMF capture, the domain clock) -> the
  functions' modules imported from their CodeUri (their cold start).
Functions are found by their event sources in the template: a Schedule event (the dispatcher), an
SQS event (the worker, with the mapping's BatchSize), HttpApi events (routes of the local gateway).
A Lambda Invoke a function makes is queued in-process (`invocations`, eventsource.AsyncInvocations):
moto never runs a function.
"""

from __future__ import annotations

import os
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3

from playvault_local import provision as prov
from playvault_local import strict_dynamodb
from playvault_local import template as tpl
from playvault_local.aws_server import AwsServer
from playvault_local.iam import IamCheck, IamError
from playvault_local.lambda_runtime import LambdaContext, context_for, load_handler
from playvault_local.simclock import RealClock, SimClock
from playvault_local.telemetry import AwsCallHooks, FunctionOutput, LogMetricFilter, Stdout


class StartupError(RuntimeError):
    """The local stack cannot start (bad template, port taken, emulator down...)."""


@dataclass
class Route:
    method: str
    path: str
    function: str


@dataclass
class SystemConfig:
    template_path: Path = tpl.TEMPLATE_PATH
    parameters: dict[str, str] = field(default_factory=dict)
    redirect_uri: str = "http://127.0.0.1:9/auth/callback"  # run: nothing listens, the runner follows it
    seed: int = 0
    clock: SimClock | RealClock = field(default_factory=RealClock)
    # another Spotify-compatible service instead of the built-in emulator (serve)
    spotify_api_url: str | None = None
    spotify_accounts_url: str | None = None
    client_id: str = prov.DEV_CLIENT_ID
    client_secret: str = prov.DEV_CLIENT_SECRET
    throttle_rate: float = 0.0
    throttle_limit: int = 0
    retried_throttle_rate: float = 0.0
    ssm_throttle_rate: float = 0.0
    log_file: Any = None
    # The CloudFormation translation whose roles the functions' calls are checked against; None:
    # template_path translated as `sam deploy` would (tests pass an edited one).
    translated_template: dict[str, Any] | None = None


@dataclass
class S3RuleSpec:
    """A function's EventBridgeRule event on S3 (its pattern still holding the template's intrinsics)."""
    function: str
    pattern: dict[str, Any]
    # The function's EventInvokeConfig OnFailure destination (intrinsics kept): where Lambda puts the
    # record of an async event whose retries all failed. None: the event is dropped.
    on_failure_target: Any = None


@dataclass
class EventSourceSpec:
    function: str
    queue_logical_id: str
    batch_size: int
    batching_window_s: int
    max_concurrency: int | None
    report_batch_item_failures: bool


class LocalSystem:
    def __init__(self, config: SystemConfig):
        self.config = config
        self.clock = config.clock
        self.aws: AwsServer | None = None
        self.emulator: Any = None  # playvault_local.spotify.LocalSpotify when built in
        self.stack: prov.Stack | None = None
        self.handlers: dict[str, Callable[[dict, Any], Any]] = {}
        self.output = FunctionOutput(log_file=config.log_file)
        self.iam: IamCheck | None = None  # set at start: every function's calls checked against its role
        self.hooks = AwsCallHooks(throttle_rate=config.throttle_rate, throttle_limit=config.throttle_limit,
                                  retried_throttle_rate=config.retried_throttle_rate,
                                  ssm_throttle_rate=config.ssm_throttle_rate, seed=config.seed,
                                  clock=self.clock.timestamp)
        self._stdout = Stdout(self.output)
        self._saved_env: dict[str, str] | None = None
        self._undo: list[Callable[[], None]] = []
        self.sqs: Any = None
        self.ddb: Any = None
        self.s3: Any = None
        self.schedule_function: str | None = None
        self._schedule_node: Any = None
        self.event_source: EventSourceSpec | None = None  # the worker's (the first SQS event source)
        self.event_sources: list[EventSourceSpec] = []  # every SQS event source (the jobs function's too)
        self.routes: list[Route] = []
        # The importer: started by S3 "Object Created" (EventBridge rule); its continuations travel on a
        # queue it sends to (the jobs queue), whose function invokes it when they are due.
        self.import_function: str | None = None
        self.import_source: EventSourceSpec | None = None  # the event source of the importer's continuations
        self.invocations: Any = None  # eventsource.AsyncInvocations, set at start
        self.s3_rules: list[S3RuleSpec] = []  # EventBridge rules on S3 events (the importer's "Uploaded")

    # ------------------------------------------------------------------ start / stop
    def start(self) -> LocalSystem:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        cfg = self.config
        try:
            template = tpl.load(cfg.template_path)
        except tpl.TemplateError as exc:
            raise StartupError(f"template: {exc}") from None
        self._read_event_sources(template)

        self._saved_env = dict(os.environ)
        saved_filters = warnings.filters[:]
        # A function that emitted no metric in an invocation is normal here (e.g. a 404 route).
        warnings.filterwarnings("ignore", message="No application metrics to publish")
        self._undo.append(lambda: setattr(warnings, "filters", saved_filters))
        # Credentials and region for the emulators only; nothing here may reach AWS.
        os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": prov.LOCAL_REGION,
                           "AWS_REGION": prov.LOCAL_REGION})
        for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
            os.environ.pop(key, None)

        self.aws = AwsServer()
        try:
            self.aws.start()
        except RuntimeError as exc:
            raise StartupError(str(exc)) from None
        if isinstance(self.clock, SimClock):
            self.clock.subscribe(lambda moment: self.aws.set_clock(moment.timestamp()) if self.aws else None)

        if cfg.spotify_api_url or cfg.spotify_accounts_url:
            if not (cfg.spotify_api_url and cfg.spotify_accounts_url):
                raise StartupError("give both --spotify-api-url and --spotify-accounts-url")
            api_url, accounts_url = cfg.spotify_api_url.rstrip("/"), cfg.spotify_accounts_url.rstrip("/")
        else:
            from playvault_local.spotify import LocalSpotify
            from spotify_emulator import EmulatorState

            state = EmulatorState(clock=self.clock, seed=cfg.seed)
            state.register_client(cfg.client_id, cfg.client_secret, [cfg.redirect_uri])
            self.emulator = LocalSpotify(state).start()
            api_url, accounts_url = self.emulator.api_url, self.emulator.url

        parameters = {"SpotifyApiUrl": api_url, "SpotifyAccountsUrl": accounts_url,
                      "RedirectUri": cfg.redirect_uri, **cfg.parameters}
        try:
            self.stack = prov.provision(cfg.template_path, endpoint_url=self.aws.url, parameters=parameters,
                                        client_id=cfg.client_id, client_secret=cfg.client_secret)
        except tpl.TemplateError as exc:
            raise StartupError(f"template: {exc}") from None
        os.environ.update(self.stack.env)
        self.output.log_metric_filters = LogMetricFilter.from_template(self.stack.template)

        # The runner's own clients (reports, polling): created before the hooks, so never counted.
        runner_session = boto3.session.Session()
        self.sqs = runner_session.client("sqs", endpoint_url=self.aws.url)
        self.ddb = runner_session.client("dynamodb", endpoint_url=self.aws.url)
        self.s3 = runner_session.client("s3", endpoint_url=self.aws.url)

        strict_dynamodb.install()  # DynamoDB's refusals moto does not make (a reversed BETWEEN)
        try:
            self.iam = IamCheck.for_stack(self.stack, translated=cfg.translated_template,
                                          template_path=cfg.template_path)
        except (tpl.TemplateError, IamError) as exc:
            raise StartupError(f"template: the functions' roles: {exc}") from None
        self.hooks.iam = self.iam
        from playvault_local.eventsource import AsyncInvocations

        self.invocations = AsyncInvocations(self)
        self.hooks.invoke = self.invocations.accept
        self.hooks.install()
        self._undo.append(self.hooks.uninstall)
        boto3.setup_default_session()  # fresh default session: the functions' clients see the env above
        self._set_domain_clock()
        from aws_lambda_powertools.utilities import parameters as pt_parameters

        pt_parameters.clear_caches()
        self._stdout.install()
        self._undo.append(self._stdout.restore)
        for logical_id, spec in self.stack.functions.items():
            try:
                self.handlers[logical_id] = load_handler(spec, self.stack.layer_paths)
            except Exception as exc:  # noqa: BLE001 - a cold start failure is reported, with its cause
                raise StartupError(f"{logical_id}: cold start failed: {type(exc).__name__}: {exc}") from exc

    def _read_event_sources(self, template: dict[str, Any]) -> None:
        sqs_sources: list[EventSourceSpec] = []
        for logical_id, resource in tpl.resources_of_type(template, "AWS::Serverless::Function").items():
            for event in ((resource.get("Properties") or {}).get("Events") or {}).values():
                kind, props = event.get("Type"), event.get("Properties") or {}
                if kind == "EventBridgeRule" and "aws.s3" in ((props.get("Pattern") or {}).get("source") or []):
                    self.import_function = logical_id
                    invoke_config = (resource.get("Properties") or {}).get("EventInvokeConfig") or {}
                    on_failure = (invoke_config.get("DestinationConfig") or {}).get("OnFailure") or {}
                    self.s3_rules.append(S3RuleSpec(logical_id, props["Pattern"], on_failure.get("Destination")))
                if kind in ("Schedule", "ScheduleV2"):
                    self.schedule_function = logical_id
                    self._schedule_node = props.get("Schedule") or props.get("ScheduleExpression")
                elif kind == "SQS":
                    queue = props.get("Queue")
                    if not (isinstance(queue, dict) and "Fn::GetAtt" in queue):
                        raise StartupError(f"{logical_id}: SQS event Queue must be !GetAtt <Queue>.Arn")
                    target = queue["Fn::GetAtt"]
                    queue_id = target[0] if isinstance(target, list) else str(target).split(".")[0]
                    scaling = props.get("ScalingConfig") or {}
                    source = EventSourceSpec(
                        function=logical_id, queue_logical_id=queue_id, batch_size=int(props.get("BatchSize", 10)),
                        batching_window_s=int(props.get("MaximumBatchingWindowInSeconds", 0)),
                        max_concurrency=scaling.get("MaximumConcurrency"),
                        report_batch_item_failures="ReportBatchItemFailures" in (props.get("FunctionResponseTypes")
                                                                                 or []))
                    sqs_sources.append(source)
                elif kind == "HttpApi":
                    self.routes.append(Route(str(props.get("Method", "ANY")).upper(), str(props.get("Path", "/")),
                                             logical_id))
        self.event_sources = list(sqs_sources)  # every SQS event source (the jobs function's too)
        resources = template.get("Resources") or {}
        importer_env = ((resources.get(self.import_function or "", {}).get("Properties") or {}).get("Environment")
                        or {}).get("Variables") or {}
        importer_refs = {v["Ref"] for v in importer_env.values() if isinstance(v, dict) and "Ref" in v}
        for source in sqs_sources:
            if source.queue_logical_id in importer_refs:  # the queue the importer continues itself through
                self.import_source = source
            if self.event_source is None:  # the worker's: the first in the template
                self.event_source = source
        if self.schedule_function is None or self.event_source is None:
            raise StartupError("template: no Schedule-triggered function or no SQS-triggered function")

    def schedule_seconds(self) -> float:
        """The dispatcher's period, from its Schedule event in the template (parameters resolved)."""
        assert self.stack is not None
        return tpl.schedule_period_s(str(self.stack.resolver.value(self._schedule_node)))

    def _set_domain_clock(self) -> None:
        from playvault import clock as domain_clock

        domain_clock.set_clock(self.clock)
        self._undo.append(domain_clock.reset_clock)
        if isinstance(self.clock, SimClock):
            self._idempotency_on_sim_clock()
            self._parameters_on_sim_clock()

    def _idempotency_on_sim_clock(self) -> None:
        """Powertools idempotency reads datetime.now() for record expiry and in-progress expiry; in a
        simulated run those deadlines must live on the simulated clock, like SQS's timeouts."""
        import datetime as real_dt

        from aws_lambda_powertools.utilities.idempotency.persistence import base, datarecord, dynamodb

        sim = self.clock

        class SimDatetime(real_dt.datetime):
            @classmethod
            def now(cls, tz: Any = None) -> real_dt.datetime:  # type: ignore[override]
                return sim()

        shim = types.SimpleNamespace(datetime=SimDatetime, timedelta=real_dt.timedelta, timezone=real_dt.timezone,
                                     date=real_dt.date)
        for module in (base, datarecord, dynamodb):
            original = module.dt
            module.dt = shim  # type: ignore[attr-defined]
            self._undo.append(lambda m=module, o=original: setattr(m, "dt", o))

    def _parameters_on_sim_clock(self) -> None:
        """Powertools Parameters' cache (the functions' 5-minute max_age for the client id and secret)
        reads datetime.now() too: on the simulated clock it expires as it would in the simulated
        hours, so SSM is asked as often as on AWS (and a rotated secret is picked up in time)."""
        import datetime as real_dt

        from aws_lambda_powertools.utilities.parameters import base

        sim = self.clock

        class SimDatetime(real_dt.datetime):
            @classmethod
            def now(cls, tz: Any = None) -> real_dt.datetime:  # type: ignore[override]
                return sim()

        original = base.datetime
        base.datetime = SimDatetime  # type: ignore[misc]
        self._undo.append(lambda: setattr(base, "datetime", original))

    def stop(self) -> None:
        while self._undo:
            undo = self._undo.pop()
            try:
                undo()
            except Exception:  # noqa: BLE001, S110 - best effort: keep stopping the rest
                pass
        if self.emulator is not None:
            self.emulator.stop()
            self.emulator = None
        if self.aws is not None:
            self.aws.stop()
            self.aws = None
        if self._saved_env is not None:
            os.environ.clear()
            os.environ.update(self._saved_env)
            self._saved_env = None
        boto3.DEFAULT_SESSION = None

    def __enter__(self) -> LocalSystem:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers
    @property
    def emulator_state(self) -> Any:
        return self.emulator.state if self.emulator is not None else None

    def context(self, logical_id: str) -> LambdaContext:
        assert self.stack is not None
        return context_for(self.stack.functions[logical_id])

    def invoke(self, logical_id: str, event: dict[str, Any]) -> Any:
        return self.handlers[logical_id](event, self.context(logical_id))

    def on_failure_target(self, logical_id: str) -> str | None:
        """The URL of the queue where Lambda sends the record of an asynchronous invocation of this
        function whose retries all failed (EventInvokeConfig's OnFailure destination), None without one."""
        assert self.stack is not None
        props = self.stack.template["Resources"][logical_id].get("Properties") or {}
        destination = (((props.get("EventInvokeConfig") or {}).get("DestinationConfig") or {}).get("OnFailure")
                       or {}).get("Destination")
        if destination is None:
            return None
        arn = str(self.stack.resolver.value(destination))
        return str(self.sqs.get_queue_url(QueueName=arn.rsplit(":", 1)[-1])["QueueUrl"])

    def queue_url(self, logical_id: str) -> str:
        assert self.stack is not None
        return self.stack.queue_url(logical_id)

    def queue_name(self, logical_id: str) -> str:
        assert self.stack is not None
        return self.stack.physical[logical_id]["QueueName"]

    def queue_arn(self, logical_id: str) -> str:
        assert self.stack is not None
        return self.stack.physical[logical_id]["Arn"]

    def dead_letter_queue(self, logical_id: str) -> str | None:
        """The logical id of the queue this queue redrives to (from the template's RedrivePolicy)."""
        assert self.stack is not None
        props = self.stack.template["Resources"][logical_id].get("Properties") or {}
        target = (props.get("RedrivePolicy") or {}).get("deadLetterTargetArn")
        if isinstance(target, dict) and "Fn::GetAtt" in target:
            att = target["Fn::GetAtt"]
            return att[0] if isinstance(att, list) else str(att).split(".")[0]
        return None

    def now(self) -> datetime:
        return self.clock()
