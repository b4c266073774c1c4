"""EmulatorControl: a tiny requests wrapper for the emulator's /_emulator control API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import requests


def _iso(value: datetime | str) -> str:
    return value if isinstance(value, str) else value.isoformat()


class EmulatorControl:
    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    def _call(self, method: str, path: str, json: Any = None) -> Any:
        resp = self.session.request(method, f"{self.base_url}/_emulator/{path}", json=json, timeout=self.timeout)
        resp.raise_for_status()
        return resp.json()

    def register_client(self, client_id: str, client_secret: str, redirect_uris: list[str]) -> None:
        self._call("POST", "clients", {"client_id": client_id, "client_secret": client_secret,
                                       "redirect_uris": list(redirect_uris)})

    def rotate_client_secret(self, client_id: str, client_secret: str) -> None:
        self._call("POST", "clients/secret", {"client_id": client_id, "client_secret": client_secret})

    def set_allow_list(self, client_id: str, user_ids: list[str] | None) -> None:
        self._call("POST", "clients/allow-list", {"client_id": client_id, "user_ids": user_ids})

    def lose_rotation_responses(self, times: int = 1) -> None:
        self._call("POST", "lose-rotations", {"times": times})

    def add_user(self, user_id: str, display_name: str | None = None, rotate_refresh_tokens: bool = False) -> None:
        self._call("POST", "users", {"user_id": user_id, "display_name": display_name,
                                     "rotate_refresh_tokens": rotate_refresh_tokens})

    def add_play(self, user_id: str, played_at: datetime | str, *, local: bool = False,
                 track_index: int | None = None, whole_second: bool = False) -> dict:
        return self._call("POST", "plays", {"user_id": user_id, "played_at": _iso(played_at), "local": local,
                                            "track_index": track_index, "whole_second": whole_second})

    def listen(self, user_id: str, start: datetime | str, end: datetime | str, plays_per_hour: float,
               **kwargs: float) -> int:
        body = {"user_id": user_id, "start": _iso(start), "end": _iso(end), "plays_per_hour": plays_per_hour,
                **kwargs}
        return int(self._call("POST", "listen", body)["count"])

    def truth(self, user_id: str) -> list[dict]:
        return self._call("GET", f"truth/{user_id}")

    def exposed(self, user_id: str) -> set[int]:
        return set(self._call("GET", f"exposed/{user_id}"))

    def revoke(self, user_id: str) -> None:
        self._call("POST", f"revoke/{user_id}")

    def faults(self, **fields: Any) -> None:
        self._call("POST", "faults", fields)

    def inject(self, path_prefix: str, status: int | None = None, times: int = 1, retry_after: int | None = None,
               body: Any = None, delay_s: float | None = None) -> None:
        self._call("POST", "inject", {"path_prefix": path_prefix, "status": status, "times": times,
                                      "retry_after": retry_after, "body": body, "delay_s": delay_s})

    def rate_limit_app(self, until: datetime | str) -> None:
        self._call("POST", "rate-limit", {"until": _iso(until)})

    def counts(self) -> dict[str, int]:
        return self._call("GET", "counts")

    def reset_counts(self) -> None:
        self._call("POST", "counts/reset")

    def now(self) -> datetime:
        return datetime.fromisoformat(self._call("GET", "clock")["now"])

    def advance_clock(self, seconds: float) -> datetime:
        return datetime.fromisoformat(self._call("POST", "clock/advance", {"seconds": seconds})["now"])
