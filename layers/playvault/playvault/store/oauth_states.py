"""One-time OAuth states: item `oauth_state#<sha256 hex of the state>` on the state table.

The state value itself is never stored (only its hash), so a read of the table cannot replay a
sign-in. The item holds the PKCE verifier (server side only) and a TTL (`expires_at`). DynamoDB's
TTL deletion is lazy (it may lag by days), so consuming a state checks the expiry in the delete's
condition: a state is consumed exactly once, by one conditional DeleteItem with ReturnValues=ALL_OLD.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from pynamodb.constants import ALL_OLD
from pynamodb.exceptions import DeleteError

from playvault.store.base import condition_failed, put_if_absent
from playvault.store.state import StateModel

PREFIX = "oauth_state#"
TTL = timedelta(minutes=10)


class StateCollision(RuntimeError):
    """The hash of a fresh random state already exists (practically impossible; retry)."""


def state_key(state: str) -> str:
    return PREFIX + hashlib.sha256(state.encode()).hexdigest()


@dataclass(frozen=True)
class PendingLogin:
    code_verifier: str
    created_at: datetime | None
    browser_hash: str | None = None  # sha256 of the login cookie of the browser that started the sign-in

    def __repr__(self) -> str:  # the verifier never reaches a log line or a traceback
        return f"PendingLogin(created_at={self.created_at})"


def put_state(state: str, code_verifier: str, now: datetime, browser_hash: str | None = None) -> datetime:
    """Store a new one-time state (conditional put); returns when it expires."""
    expires = now + TTL
    item = StateModel(state_key(state), code_verifier=code_verifier, created_at=now, expires_at=expires,
                      browser_hash=browser_hash)
    if not put_if_absent(item):
        raise StateCollision("a one-time state collided with an existing one")
    return expires


def consume_state(state: str, now: datetime) -> PendingLogin | None:
    """Delete the state if it exists and has not expired; None for unknown, replayed or expired.

    One conditional delete: two concurrent callbacks with the same state cannot both succeed.
    """
    condition = StateModel.name.exists() & (StateModel.expires_at > now)
    try:
        answer = StateModel._get_connection().delete_item(state_key(state), condition=condition, return_values=ALL_OLD)
    except DeleteError as exc:
        if condition_failed(exc):
            return None
        raise
    item = StateModel.from_raw_data(answer.get("Attributes") or {})
    if not item.code_verifier:
        return None
    return PendingLogin(code_verifier=item.code_verifier, created_at=item.created_at, browser_hash=item.browser_hash)
