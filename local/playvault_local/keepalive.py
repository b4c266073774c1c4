"""The request-handler behaviour both local servers (moto's, the Spotify emulator's) share."""

from __future__ import annotations

import socket
from typing import Any


class KeepAliveQuiet:
    """Request-handler mixin for the local servers: HTTP/1.1 keep-alive (thousands of calls would
    otherwise each open a connection), TCP_NODELAY (headers and body go out in separate writes:
    Nagle would hold the body), no per-request access log."""

    protocol_version = "HTTP/1.1"
    connection: socket.socket

    def setup(self) -> None:
        super().setup()  # type: ignore[misc]
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass
