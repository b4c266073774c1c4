"""App-wide state, one item per name: the Spotify rate-limit gate (and, from onboarding, the seat
counter, one-time OAuth states and the waitlist). Items that expire carry a TTL attribute.

Access pattern: get/update one item by name.
"""

from __future__ import annotations

from datetime import datetime

from pynamodb.attributes import NumberAttribute, TTLAttribute, UnicodeAttribute, UTCDateTimeAttribute
from pynamodb.exceptions import UpdateError
from pynamodb.models import Model

from playvault.store.base import BaseMeta, condition_failed, table

RATE_GATE = "rate_gate"


@table("state_table")
class StateModel(Model):
    class Meta(BaseMeta):
        pass

    name = UnicodeAttribute(hash_key=True)
    expires_at = TTLAttribute(null=True)  # DynamoDB deletes the item some time after this
    limited_until = UTCDateTimeAttribute(null=True)  # rate gate
    reason = UnicodeAttribute(null=True)  # rate gate: RATE_LIMITED, QUOTA_EXCEEDED, an app failure
    updated_at = UTCDateTimeAttribute(null=True)
    # onboarding (store/seats.py, store/oauth_states.py, store/waitlist.py)
    seats = NumberAttribute(null=True)  # item "seats": users holding a seat
    code_verifier = UnicodeAttribute(null=True)  # item "oauth_state#<sha256>": PKCE verifier, server side only
    browser_hash = UnicodeAttribute(null=True)  # and the sha256 of the login cookie of the browser that started it
    email = UnicodeAttribute(null=True)  # item "waitlist#<sha256>": the address to contact
    created_at = UTCDateTimeAttribute(null=True)
    # item "deletion#<sha256 of the receipt>" (store/deletions.py): an account deletion's progress.
    # user_id is removed when the deletion is done; the counts stay until the TTL.
    user_id = UnicodeAttribute(null=True)
    job_status = UnicodeAttribute(null=True)
    finished_at = UTCDateTimeAttribute(null=True)
    deleted_plays = NumberAttribute(null=True)
    deleted_gaps = NumberAttribute(null=True)
    deleted_sessions = NumberAttribute(null=True)
    deleted_exports = NumberAttribute(null=True)
    deleted_files = NumberAttribute(null=True)
    deleted_imports = NumberAttribute(null=True)


def rate_limited_until(now: datetime) -> datetime | None:
    """The end of the app-wide Spotify rate-limit window, if one is open at `now`."""
    try:
        gate = StateModel.get(RATE_GATE, attributes_to_get=["limited_until"])
    except StateModel.DoesNotExist:
        return None
    if gate.limited_until is None or gate.limited_until <= now:
        return None
    return gate.limited_until


def close_rate_gate(until: datetime, now: datetime, reason: str = "RATE_LIMITED") -> bool:
    """Record that Spotify rate-limits the app until `until`; the latest deadline wins.

    Returns False if an equal or later deadline was already stored (a concurrent worker won).
    """
    gate = StateModel(RATE_GATE)
    try:
        gate.update(
            actions=[StateModel.limited_until.set(until), StateModel.updated_at.set(now),
                     StateModel.reason.set(reason)],
            condition=StateModel.limited_until.does_not_exist() | (StateModel.limited_until < until),
        )
    except UpdateError as exc:
        if condition_failed(exc):
            return False
        raise
    return True
