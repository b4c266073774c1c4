"""`serve`: the local stack kept up behind a small API gateway on 127.0.0.1.

The gateway serves the template's HttpApi routes (the functions' HttpApi events): an HTTP request
becomes an API Gateway payload 2.0 event, the function's answer becomes the HTTP response. Routes
are chosen as HttpApi chooses them: an exact path first, then paths with {parameters}, then a
greedy {proxy+}; a route's method must match (ANY matches every method). Requests no route takes
answer 404 {"message": "Not Found"}, as HttpApi does. The RedirectUri parameter is this
gateway's /auth/callback. In the background the schedule ticks the dispatcher (its Schedule event,
or --dispatch-every; serve sets DispatchPeriodMinutes and the poll cadence to 2 minutes, and a
sign-in dispatches at once), the SQS event sources feed the worker and the jobs function (which
hands import continuations to the importer: asynchronous invocations, run in-process), and an
upload to the user-files bucket starts the importer (the template's EventBridge rule on S3,
eventsource.S3EventRule), on the real clock. One function runs at a time (the functions share the Powertools
metrics buffer of this one process).

Listening: with the built-in emulator, every user who signs up in the browser listens steadily on
the real clock (LISTEN_PER_HOUR plays an hour, seeded; the hour before the sign-up too), so /me
fills up. The functions' log lines go to a file (ServeConfig.log_path), not the terminal.
Development-only routes of this gateway: POST /_local/dispatch runs the dispatcher now;
GET /_local/iam answers what the local IAM check found so far (calls checked, denied, grants unused).
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from playvault_local import provision as prov
from playvault_local import template as tpl
from playvault_local.events import http_api_event, http_response, scheduled_event
from playvault_local.eventsource import AsyncInvocations, S3EventRule, SqsEventSource
from playvault_local.simclock import RealClock
from playvault_local.system import LocalSystem, StartupError, SystemConfig

# serve polls often, so what a browser user listens to shows on /me within minutes (override with
# --parameter): the dispatcher every 2 minutes, every user's next poll 2 minutes after the last.
SERVE_PARAMETERS = {"DispatchPeriodMinutes": "2", "PollCadenceMinutes": "2", "MaxPollCadenceMinutes": "2"}


@dataclass
class ServeConfig:
    port: int = 0
    host: str = "127.0.0.1"
    template_path: Path = tpl.TEMPLATE_PATH
    parameters: dict[str, str] = field(default_factory=dict)
    spotify_api_url: str | None = None
    spotify_accounts_url: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    seed: int = 0
    poll_seconds: float = 1.0
    dispatch_every_s: float | None = None
    quiet: bool = False
    listening: bool = True
    log_path: Path | None = None  # the functions' log lines; None: a new file in the temporary directory


class Gateway:
    """WSGI app: HTTP <-> HttpApi payload 2.0 for the template's routes."""

    def __init__(self, system: LocalSystem, lock: threading.Lock, kick: threading.Event | None = None):
        self.system = system
        self.lock = lock
        self.kick = kick or threading.Event()  # set: the schedule thread dispatches now
        self.routes = sorted((_CompiledRoute(r) for r in system.routes), key=lambda r: r.rank)

    def match(self, method: str, path: str) -> tuple[Any, dict[str, str]] | None:
        for route in self.routes:
            if route.method not in (method, "ANY"):
                continue
            found = route.pattern.fullmatch(path)
            if found:
                return route, found.groupdict()
        return None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        if request.path == "/_local/dispatch" and request.method == "POST":
            with self.lock:
                function = self.system.schedule_function
                answer = self.system.invoke(function, scheduled_event(self.system.now(), f"{function}-by-hand"))
            return Response(json.dumps(answer, default=str), mimetype="application/json")(environ, start_response)
        if request.path == "/_local/iam" and request.method == "GET":  # the local IAM check's findings so far
            summary = self.system.iam.summary() if self.system.iam is not None else None
            return Response(json.dumps(summary), mimetype="application/json")(environ, start_response)
        matched = self.match(request.method, request.path)
        function = matched[0].route.function if matched else None
        if matched is None:
            response = Response('{"message":"Not Found"}', status=404, mimetype="application/json")
            return response(environ, start_response)
        headers: dict[str, str] = {}
        for key, value in request.headers.items():
            key = key.lower()
            if key == "cookie":
                continue
            headers[key] = f"{headers[key]},{value}" if key in headers else value
        # What API Gateway adds: the functions build their own URLs from these (S3's redirect after an upload).
        headers["x-forwarded-proto"] = request.scheme
        headers["x-forwarded-port"] = str(environ.get("SERVER_PORT", ""))
        client = request.remote_addr or "127.0.0.1"
        forwarded = headers.get("x-forwarded-for")
        headers["x-forwarded-for"] = f"{forwarded}, {client}" if forwarded else client
        cookies = [c.strip() for c in request.headers.get("Cookie", "").split(";") if c.strip()]
        body = request.get_data()
        route, path_parameters = matched
        event = http_api_event(request.method, request.path, query=environ.get("QUERY_STRING", ""),
                               headers=headers, body=body or None, source_ip=request.remote_addr or "127.0.0.1",
                               cookies=cookies or None, route_key=f"{route.route.method} {route.route.path}")
        if path_parameters:
            event["pathParameters"] = path_parameters
        with self.lock:
            try:
                answer = self.system.invoke(function, event)
                if request.path == "/auth/callback" and isinstance(answer, dict) and answer.get("statusCode") == 303:
                    self.kick.set()  # a new sign-in is polled at once, not at the next scheduled run
            except Exception:  # noqa: BLE001 - what API Gateway answers when the integration fails
                answer = {"statusCode": 500, "headers": {"content-type": "application/json"},
                          "body": '{"message":"Internal Server Error"}'}
        status, out_headers, raw, set_cookies = http_response(answer)
        response = Response(raw, status=status)
        for key, value in out_headers.items():
            response.headers[key] = value
        for cookie in set_cookies:
            response.headers.add("Set-Cookie", cookie)
        return response(environ, start_response)


class _CompiledRoute:
    """A template route as a regex; rank: exact paths, then {parameters}, then greedy {proxy+}."""

    def __init__(self, route: Any):
        self.route = route
        self.method = route.method
        parts = re.split(r"(\{[^}]+\})", route.path)
        regex = ""
        greedy = False
        for part in parts:
            if part.startswith("{") and part.endswith("+}"):
                regex += f"(?P<{part[1:-2]}>.+)"
                greedy = True
            elif part.startswith("{") and part.endswith("}"):
                regex += f"(?P<{part[1:-1]}>[^/]+)"
            else:
                regex += re.escape(part)
        self.pattern = re.compile(regex)
        self.rank = (2 if greedy else 1 if "{" in route.path else 0, -len(route.path))


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


def reserve_port(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def serve(config: ServeConfig, ready: threading.Event | None = None, stop: threading.Event | None = None) -> int:
    # The gateway's port first: RedirectUri must name it, and a taken port must fail before anything starts.
    probe = reserve_port(config.host, config.port)
    port = probe.getsockname()[1]
    probe.close()
    redirect_uri = f"http://{config.host}:{port}/auth/callback"
    # The functions' JSON log lines go to a file: on the terminal they would bury the sign-in URL.
    log_file = None if config.quiet else _log_file(config.log_path)
    system = LocalSystem(SystemConfig(
        template_path=config.template_path, parameters={**SERVE_PARAMETERS, **config.parameters},
        redirect_uri=redirect_uri,
        seed=config.seed, clock=RealClock(), spotify_api_url=config.spotify_api_url,
        spotify_accounts_url=config.spotify_accounts_url,
        client_id=config.client_id or prov.DEV_CLIENT_ID, client_secret=config.client_secret or prov.DEV_CLIENT_SECRET,
        log_file=log_file,
    ))
    stop = stop or threading.Event()
    lock = threading.Lock()
    kick = threading.Event()
    server = None
    threads: list[threading.Thread] = []
    try:
        try:
            server = make_server(config.host, port, Gateway(_started(system), lock, kick), threaded=True,
                                 request_handler=_QuietHandler)
        except OSError as exc:
            raise StartupError(f"cannot listen on {config.host}:{port}: {exc.strerror or exc}") from None
        if system.iam is not None:  # a call a role would refuse on AWS is said at once, not only at /_local/iam
            system.iam.on_denial = lambda denial: print(f"playvault_local: IAM denied: {denial}", file=sys.stderr)
        threads.append(threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="gateway", daemon=True))
        sources: list[SqsEventSource | S3EventRule | AsyncInvocations] = [SqsEventSource(system, spec=spec)
                                                       for spec in system.event_sources]
        sources += [S3EventRule(system, spec) for spec in system.s3_rules]  # uploads start the importer
        sources.append(system.invocations)  # the jobs function hands import continuations to the importer
        every = config.dispatch_every_s or system.schedule_seconds()
        threads.append(threading.Thread(target=_poll, args=(system, sources, lock, stop, config.poll_seconds),
                                        name="sqs-event-sources", daemon=True))
        listening = Listening(system.emulator.state) if config.listening and system.emulator is not None else None
        if listening is not None:
            threads.append(threading.Thread(target=listening.run, args=(stop,), name="listening", daemon=True))
        threads.append(threading.Thread(target=_schedule, args=(system, lock, stop, every, kick, listening),
                                        name="schedule", daemon=True))
        for thread in threads:
            thread.start()
        real = system._stdout.real
        listening_line = f"{LISTEN_PER_HOUR:g} plays/hour for every emulator user" if listening else "off"
        base = f"http://{config.host}:{port}"
        spotify = f"{system.emulator.url} (built-in emulator)" if system.emulator else config.spotify_accounts_url
        lines = [
            "PlayVault local stack is up (Ctrl-C stops everything).",
            f"  sign in        : {base}/auth/login",
            f"  routes         : {', '.join(f'{r.method} {base}{r.path}' for r in system.routes)}",
            f"  Spotify        : {spotify}",
            f"  AWS (moto)     : {system.aws.url if system.aws else '?'}",
            f"  redirect URI   : {redirect_uri}",
            f"  schedule       : dispatcher every {every:g} s; worker polls the queue every {config.poll_seconds:g} s",
            f"  listening      : {listening_line}",
            f"  IAM check      : every AWS call checked against its function's role; findings: {base}/_local/iam",
            f"  function logs  : {log_file.name if log_file else 'off'} (JSON lines; tail -f it)",
            f"  poll by hand   : curl -X POST {base}/_local/dispatch",
        ]
        print("\n".join(lines), file=real, flush=True)
        if ready is not None:
            ready.set()
        while not stop.is_set():
            stop.wait(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        stop.set()
        kick.set()  # the schedule thread waits on it between runs: wake it to see the stop
        if server is not None:
            server.shutdown()
            server.server_close()
        for thread in threads:
            thread.join(timeout=5)
        system.stop()
        if log_file is not None:
            log_file.close()


def _log_file(path: Path | None) -> TextIO:
    if path is None:
        handle, name = tempfile.mkstemp(prefix="playvault-serve-", suffix=".log")
        return os.fdopen(handle, "w", encoding="utf-8", buffering=1)
    return path.open("w", encoding="utf-8", buffering=1)  # line-buffered: tail -f shows each line


def _started(system: LocalSystem) -> LocalSystem:
    system.start()
    return system


def _poll(system: LocalSystem, sources: list[SqsEventSource | S3EventRule | AsyncInvocations],
          lock: threading.Lock, stop: threading.Event, every: float) -> None:
    while not stop.is_set():
        got = 0
        for source in sources:
            failed_before = len(getattr(source, "failures", []))
            try:
                with lock:
                    got += source.poll_once()
            except Exception as exc:  # noqa: BLE001 - keep polling; say why
                print(f"playvault_local: event source poll failed: {exc}", file=sys.stderr)
            for failure in getattr(source, "failures", [])[failed_before:]:  # the importer raised
                if isinstance(source, AsyncInvocations):  # "<function>: <error>"
                    print(f"playvault_local: asynchronous invocation failed: {failure}", file=sys.stderr)
                else:
                    print(f"playvault_local: {source.spec.function} failed on {failure}", file=sys.stderr)
        if not got:
            stop.wait(every)


LISTEN_PER_HOUR = 15.0  # about a song every 4 minutes
LISTEN_TICK_S = 5.0
# Listening is planned in whole hours (one simulate_listening call each, so the emulator's own gaps
# between plays hold): a call over a 5-second tick would place a play in every tick (its first play
# falls inside the window it is given), ~720 an hour. Planned plays lie ahead of the clock; the
# emulator lists a play only from its played_at on.
LISTEN_PLAN = timedelta(hours=1)


class Listening:
    """Steady listening on the real clock for every emulator user (new ones get the last hour too)."""

    def __init__(self, state: Any):
        self.state = state
        self.planned_until: dict[str, datetime] = {}
        self.lock = threading.Lock()

    def tick(self) -> None:
        with self.lock:
            now = self.state.now()
            for user_id in self.state.user_ids():
                until = self.planned_until.get(user_id, now - LISTEN_PLAN)
                while until <= now:  # always an hour planned ahead of the clock
                    self.state.simulate_listening(user_id, until, until + LISTEN_PLAN, LISTEN_PER_HOUR)
                    until += LISTEN_PLAN
                self.planned_until[user_id] = until

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.tick()
            stop.wait(LISTEN_TICK_S)


def _schedule(system: LocalSystem, lock: threading.Lock, stop: threading.Event, every: float,
              kick: threading.Event, listening: Listening | None) -> None:
    function = system.schedule_function
    while not stop.is_set():
        try:
            if listening is not None:  # a user who just signed up has their last hour to archive
                listening.tick()
            with lock:
                system.invoke(function, scheduled_event(system.now(), f"{function}-schedule"))
        except Exception as exc:  # noqa: BLE001
            print(f"playvault_local: scheduled dispatch failed: {exc}", file=sys.stderr)
        kick.wait(every)
        kick.clear()
