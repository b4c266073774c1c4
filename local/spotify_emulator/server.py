"""EmulatorServer: runs the emulator app in a daemon thread on a loopback port."""

from __future__ import annotations

import threading
from typing import Any

from werkzeug.serving import WSGIRequestHandler, make_server

from .app import EmulatorApp
from .state import EmulatorState


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:  # no per-request access log
        pass


class EmulatorServer:
    # A subclass may serve the app through a wrapper (`serve`) and with its own request handler.
    request_handler: type[WSGIRequestHandler] = _QuietHandler

    def __init__(self, state: EmulatorState, host: str = "127.0.0.1", port: int = 0, quiet: bool = True) -> None:
        self.state = state
        self.app = EmulatorApp(state)
        self._server = make_server(host, port, self.serve, threaded=True,
                                   request_handler=self.request_handler if quiet else None)
        self._server.daemon_threads = True  # type: ignore[attr-defined]  # ThreadingMixIn
        self.host = host
        self.port = self._server.server_port
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return self.url + "/v1"

    def serve(self, environ: dict[str, Any], start_response: Any) -> Any:
        """The WSGI callable the server runs."""
        return self.app(environ, start_response)

    def start(self) -> EmulatorServer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                            name="spotify-emulator", daemon=True)
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.05)

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
