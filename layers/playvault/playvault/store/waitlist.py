"""Waitlist: item `waitlist#<sha256 hex of the normalized email>` on the state table.

The key is a hash so that the table's keys (which show up in metrics, logs and exports) carry no
address; the address itself is stored in `email` because the operators must contact these people.
A second submission of the same address hits the conditional put and writes nothing.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from playvault.store.base import put_if_absent
from playvault.store.state import StateModel

PREFIX = "waitlist#"


def waitlist_key(normalized_email: str) -> str:
    return PREFIX + hashlib.sha256(normalized_email.encode()).hexdigest()


def add(normalized_email: str, now: datetime) -> bool:
    """Store the address once; True if this call added it, False if it was already listed."""
    return put_if_absent(StateModel(waitlist_key(normalized_email), email=normalized_email, created_at=now))


def is_listed(normalized_email: str) -> bool:
    try:
        StateModel.get(waitlist_key(normalized_email), consistent_read=True, attributes_to_get=["name"])
    except StateModel.DoesNotExist:
        return False
    return True
