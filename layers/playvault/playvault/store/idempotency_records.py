"""The worker's Powertools idempotency records, from the side of delete-my-data.

A record's id is `<key prefix>#md5(json(idempotency key))` (Powertools' format; a unit test checks
it against Powertools itself) and its cached result names the user. Records expire after 24 h by
TTL, but TTL deletion lags: a deletion removes the user's records of the last LOOKBACK hours by key.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any

LOOKBACK = timedelta(hours=72)


def record_id(prefix: str, idempotency_key: str) -> str:
    return f"{prefix}#{hashlib.md5(json.dumps(idempotency_key).encode(), usedforsecurity=False).hexdigest()}"


def delete_for_user(ddb: Any, table: str, user_id: str, now: datetime) -> int:
    """Delete the user's records of every dispatch window in the last LOOKBACK; returns how many existed."""
    from playvault.batch import IDEMPOTENCY_KEY_PREFIX, idempotency_key
    from playvault.clock import hour_key

    deleted = 0
    hours = int(LOOKBACK.total_seconds() // 3600) + 1
    for back in range(hours):
        key = record_id(IDEMPOTENCY_KEY_PREFIX, idempotency_key(user_id, hour_key(now - timedelta(hours=back))))
        answer = ddb.delete_item(TableName=table, Key={"id": {"S": key}}, ReturnValues="ALL_OLD")
        deleted += bool(answer.get("Attributes"))
    return deleted
