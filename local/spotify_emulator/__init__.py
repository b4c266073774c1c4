"""A small, faithful emulator of Spotify's accounts service and Web API (recently-played, /me).

    state = EmulatorState(clock=..., seed=0)
    with EmulatorServer(state) as server:   # accounts: server.url, API: server.url + "/v1"
        ...
"""

from .server import EmulatorServer
from .state import EmulatorState, FaultConfig, OffsetClock

__all__ = ["EmulatorServer", "EmulatorState", "FaultConfig", "OffsetClock"]
