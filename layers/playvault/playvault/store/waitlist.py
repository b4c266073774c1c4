"""Waitlist: item `waitlist#<sha256 hex of the normalized email>` on the state table.

The key is a hash so that the table's keys (which show up in metrics, logs and exports) carry no
address; the address itself is stored in `email` because the operators must contact these people.
A second submission of the same address hits the conditional put and writes nothing.

The waitlist keeps no address it cannot use: an entry expires 90 days after it was made (TTL
`expires_at`; DynamoDB deletes it some time later, so readers check the date too), and it is
deleted when that person signs up (onboarding knows the address from /me).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from playvault.store.base import put_if_absent
from playvault.store.state import StateModel

PREFIX = "waitlist#"
KEEP_FOR = timedelta(days=90)


def waitlist_key(normalized_email: str) -> str:
    return PREFIX + hashlib.sha256(normalized_email.encode()).hexdigest()


def add(normalized_email: str, now: datetime) -> bool:
    """Store the address once; True if this call added it, False if it was already listed."""
    return put_if_absent(StateModel(waitlist_key(normalized_email), email=normalized_email, created_at=now,
                                    expires_at=now + KEEP_FOR))


def is_listed(normalized_email: str, now: datetime) -> bool:
    try:
        entry = StateModel.get(waitlist_key(normalized_email), consistent_read=True,
                               attributes_to_get=["name", "expires_at"])
    except StateModel.DoesNotExist:
        return False
    return entry.expires_at is None or entry.expires_at > now


def remove(normalized_email: str) -> None:
    """The person signed up: their address leaves the waitlist (a no-op if it was not listed)."""
    StateModel(waitlist_key(normalized_email)).delete()
