"""Account deletions: item `deletion#<sha256 hex of the receipt>` on the state table.

The receipt is a random value only the deleting browser gets (in the URL of its status page); the
item holds the user id while the deletion runs and the counts of what was deleted. When the
deletion is done the user id is removed: what stays (counts, times; TTL 7 days) names nobody.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from playvault.store.base import put_if_absent
from playvault.store.state import StateModel

PREFIX = "deletion#"
RUNNING, DONE = "running", "done"
KEEP_RECEIPT = timedelta(days=7)
COUNTS = ("plays", "gaps", "sessions", "exports", "files", "imports")


def receipt_key(receipt: str) -> str:
    return PREFIX + hashlib.sha256(receipt.encode()).hexdigest()


@dataclass(frozen=True)
class Deletion:
    key: str
    user_id: str | None
    status: str
    created_at: datetime | None
    finished_at: datetime | None
    counts: dict[str, int]


def _view(item: StateModel) -> Deletion:
    counts = {name: int(getattr(item, f"deleted_{name}") or 0) for name in COUNTS}
    return Deletion(item.name, item.user_id, item.job_status or RUNNING, item.created_at, item.finished_at, counts)


def create(key: str, user_id: str, now: datetime) -> None:
    item = StateModel(key, user_id=user_id, job_status=RUNNING, created_at=now, expires_at=now + KEEP_RECEIPT,
                      **{f"deleted_{name}": 0 for name in COUNTS})
    if not put_if_absent(item):
        raise RuntimeError("a deletion receipt collided with an existing one")


def get(key: str) -> Deletion | None:
    if not key.startswith(PREFIX):
        return None
    try:
        return _view(StateModel.get(key, consistent_read=True))
    except StateModel.DoesNotExist:
        return None


def add_counts(key: str, **deleted: int) -> None:
    actions = [getattr(StateModel, f"deleted_{name}").add(n) for name, n in deleted.items() if n]
    if actions:
        StateModel(key).update(actions=actions, condition=StateModel.name.exists())


def finish(key: str, now: datetime) -> None:
    StateModel(key).update(
        actions=[StateModel.job_status.set(DONE), StateModel.finished_at.set(now), StateModel.user_id.remove()],
        condition=StateModel.name.exists(),
    )
