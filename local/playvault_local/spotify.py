"""The built-in Spotify emulator, served for a local run.

spotify_emulator's EmulatorServer with its app behind a wrapper and its own request handler, for:
- keep-alive (HTTP/1.1 with TCP_NODELAY): thousands of polls would otherwise each open a connection;
- timeouts that have no side effect: the emulator's own timeout fault sleeps and then answers,
  so a request the client gave up on still marks its plays as exposed (and may rotate a refresh
  token nobody receives). For the report, exposed must mean "Spotify delivered it", so chaos runs
  inject timeouts here instead: the request is held past the client's timeout and then dropped
  (504) without reaching the emulator;
- answers too late to be received: a recently-played answer ready only after half the client's read
  timeout (`client_read_timeout_s`: the worker's, shortened in chaos runs) is dropped (504) and
  exposes nothing, since under a loaded machine the client may already have given up on it (half:
  the slack for the answer's own way back);
- an in-flight count: the runner waits for held requests before it moves the simulated clock.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from werkzeug.serving import WSGIRequestHandler

from playvault_local.keepalive import KeepAliveQuiet
from spotify_emulator.server import EmulatorServer


class _Handler(KeepAliveQuiet, WSGIRequestHandler):
    pass


class LocalSpotify(EmulatorServer):
    request_handler = _Handler

    def __init__(self, state: Any, host: str = "127.0.0.1", port: int = 0):
        self._in_flight = 0
        self.timeout_rate = 0.0
        self.timeout_s = 1.0
        self.timeouts_injected = 0
        self.client_read_timeout_s = 10.0  # the worker's Spotify read timeout (playvault.spotify)
        self.late_answers_dropped = 0
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
                return self._answer_in_time(environ, start_response)
            return list(self.app(environ, start_response))
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def _answer_in_time(self, environ: dict[str, Any], start_response: Any) -> Any:
        started = time.monotonic()
        answer: list[Any] = []
        self.state.hold_exposures()
        delivered = False
        try:
            body = list(self.app(environ, lambda status, headers, exc_info=None: answer.extend((status, headers))))
            delivered = time.monotonic() - started <= self.client_read_timeout_s / 2
        finally:
            self.state.release_exposures(delivered)
        if not delivered:
            with self._rng_lock:
                self.late_answers_dropped += 1
            start_response("504 Gateway Timeout", [("Content-Type", "application/json"), ("Content-Length", "2")])
            return [b"{}"]
        start_response(*answer)
        return body

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
