"""The built-in Spotify emulator, served for a local run.

spotify_emulator's EmulatorServer with its app behind a wrapper and its own request handler, for:
- keep-alive (HTTP/1.1 with TCP_NODELAY): thousands of polls would otherwise each open a connection;
- timeouts that have no side effect: the emulator's own timeout fault sleeps and then answers,
  so a request the client gave up on still marks its plays as exposed (and may rotate a refresh
  token nobody receives). For the report, exposed must mean "Spotify delivered it", so chaos runs
  inject timeouts here instead: the request is held past the client's timeout and then dropped
  (504) without reaching the emulator;
- exposure on receipt: a recently-played answer marks its plays exposed only when the client has
  received it (the run's clients are in this process: `requests.Session.send` is wrapped to confirm
  the answers carrying this server's answer header). Under a loaded machine the worker's read
  timeout (0.6 s in chaos runs) can pass before an answer arrives; the worker has given up on it,
  and plays it listed must not count as exposed (the report would call them lost);
- an in-flight count: the runner waits for held requests before it moves the simulated clock.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from typing import Any

import requests
from werkzeug.serving import WSGIRequestHandler

from playvault_local.keepalive import KeepAliveQuiet
from spotify_emulator.server import EmulatorServer

ANSWER_HEADER = "X-Emulator-Answer"
_SERVERS: dict[str, LocalSpotify] = {}  # by port: the answer id starts with it
_SERVERS_LOCK = threading.Lock()
_installed = False


def _confirm_receipts_in_this_process() -> None:
    """Wrap requests.Session.send once: a response that reached its caller (body read, no timeout)
    confirms the answer it carries. Responses without the header pass untouched."""
    global _installed
    with _SERVERS_LOCK:
        if _installed:
            return
        _installed = True
    send = requests.Session.send

    def send_and_confirm(session: requests.Session, request: Any, **kwargs: Any) -> Any:
        response = send(session, request, **kwargs)
        answer_id = response.headers.get(ANSWER_HEADER)
        if answer_id:
            with _SERVERS_LOCK:
                server = _SERVERS.get(answer_id.split("-", 1)[0])
            if server is not None:
                server.confirm_received(answer_id)
        return response

    requests.Session.send = send_and_confirm  # type: ignore[method-assign]


class _Handler(KeepAliveQuiet, WSGIRequestHandler):
    pass


class LocalSpotify(EmulatorServer):
    request_handler = _Handler

    def __init__(self, state: Any, host: str = "127.0.0.1", port: int = 0):
        self._in_flight = 0
        self.timeout_rate = 0.0
        self.timeout_s = 1.0
        self.timeouts_injected = 0
        self._not_received: dict[str, list[Any]] = {}  # answer id -> exposures held until received
        self._answers_lock = threading.Lock()
        self._rng = random.Random(f"timeouts:{getattr(state, 'seed', 0)}")
        self._rng_lock = threading.Lock()
        self._idle = threading.Condition()
        super().__init__(state, host, port)

    def serve(self, environ: dict[str, Any], start_response: Any) -> Any:
        with self._idle:
            self._in_flight += 1
        try:
            path = environ.get("PATH_INFO", "")
            if self.timeout_rate > 0 and (path.startswith("/v1/") or path == "/api/token"):
                with self._rng_lock:
                    drop = self._rng.random() < self.timeout_rate
                    self.timeouts_injected += drop
                if drop:
                    time.sleep(self.timeout_s)
                    start_response("504 Gateway Timeout", [("Content-Type", "application/json"),
                                                           ("Content-Length", "2")])
                    return [b"{}"]
            if path.endswith("/player/recently-played"):
                return self._answer_exposed_on_receipt(environ, start_response)
            return list(self.app(environ, start_response))
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def start(self) -> LocalSpotify:
        _confirm_receipts_in_this_process()
        with _SERVERS_LOCK:
            _SERVERS[str(self.port)] = self
        super().start()
        return self

    def stop(self) -> None:
        with _SERVERS_LOCK:
            _SERVERS.pop(str(self.port), None)
        super().stop()

    @property
    def answers_not_received(self) -> int:
        """Recently-played answers sent that no client received (it had given up)."""
        with self._answers_lock:
            return len(self._not_received)

    def _answer_exposed_on_receipt(self, environ: dict[str, Any], start_response: Any) -> Any:
        answer: list[Any] = []
        self.state.hold_exposures()
        try:
            body = list(self.app(environ, lambda status, headers, exc_info=None: answer.extend((status, headers))))
        finally:
            held = self.state.take_held_exposures()
        answer_id = f"{self.port}-{uuid.uuid4().hex}"
        with self._answers_lock:
            self._not_received[answer_id] = held
        status, headers = answer
        start_response(status, [*headers, (ANSWER_HEADER, answer_id)])
        return body

    def confirm_received(self, answer_id: str) -> None:
        with self._answers_lock:
            held = self._not_received.pop(answer_id, None)
        if held:
            self.state.expose_held(held)

    def wait_idle(self, timeout_s: float = 15.0) -> bool:
        """Block until no request is being answered (late answers to timed-out requests included)."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True
