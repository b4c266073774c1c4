"""The built-in Spotify emulator, served for a local run.

spotify_emulator's EmulatorApp behind a werkzeug server of our own, for two reasons:
- keep-alive (HTTP/1.1 with TCP_NODELAY): thousands of polls would otherwise each open a connection;
- timeouts that have no side effect: the emulator's own timeout fault sleeps and then answers,
  so a request the client gave up on still marks its plays as exposed (and may rotate a refresh
  token nobody receives). For the report, exposed must mean "Spotify delivered it", so chaos runs
  inject timeouts here instead: the request is held past the client's timeout and then dropped
  (504) without reaching the emulator;
- an in-flight count: the runner waits for held requests before it moves the simulated clock.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from typing import Any

from werkzeug.serving import WSGIRequestHandler, make_server


class _Handler(WSGIRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


class LocalSpotify:
    def __init__(self, state: Any, host: str = "127.0.0.1", port: int = 0):
        from spotify_emulator.app import EmulatorApp

        self.state = state
        self.app = EmulatorApp(state)
        self._in_flight = 0
        self.timeout_rate = 0.0
        self.timeout_s = 1.0
        self.timeouts_injected = 0
        self._rng = random.Random(f"timeouts:{getattr(state, 'seed', 0)}")
        self._rng_lock = threading.Lock()
        self._idle = threading.Condition()
        self._server = make_server(host, port, self._count, threaded=True, request_handler=_Handler)
        self._server.daemon_threads = True  # type: ignore[attr-defined]
        self.host, self.port = host, self._server.server_port
        self._thread: threading.Thread | None = None

    def _count(self, environ: dict[str, Any], start_response: Any) -> Any:
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
            return list(self.app(environ, start_response))
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return self.url + "/v1"

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

    def start(self) -> LocalSpotify:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="spotify-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()
